//! The `gantry` command line: argument parsing (`Cli`), dispatch (`run`), and one module per
//! subcommand. The error type (`error`) and output helpers (`output`) sit below them all, so
//! nothing imports back up.
//!
//! Commands write to the `out` they are given (stdout in the binary, a buffer in tests) and
//! return the process exit status.

mod artifacts;
mod audit;
mod cancel;
mod demo;
mod error;
mod events;
mod job;
mod jobs;
mod keys;
mod log;
mod logs;
mod node;
mod nodes;
mod output;
mod pipeline;
mod projections;
mod receipt;
mod secrets;
mod server;
mod submit;
mod up;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::Error;
pub use log::{
    Access, ExportArgs, LogCommand, StoreArgs, TailArgs, VerifyArgs, open_log, verify_file,
};
pub use node::{NodeArgs, NodeChangeArgs, NodeCommand};
pub use projections::ProjectionsCommand;
pub use server::ServerArgs;
pub use submit::{SubmitArgs, parse_bytes, submit_request};
pub use up::UpArgs;

use crate::up::ExecutorChoice;

/// Exit status when the chain is broken.
pub const EXIT_BROKEN: u8 = 1;

/// Exit status when the command could not run (bad arguments, store or server unavailable).
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Run GPU/ML container jobs with a verifiable history"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system on this machine: log, projections, actors, a worker and the
    /// gateway (embedded: everything on local disk).
    Up(Box<UpArgs>),
    /// Start gantry, run three example jobs to their end, verify the log, and stop.
    Demo {
        #[arg(long, env = "GANTRY_DATA", default_value = "gantry-data")]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t = ExecutorChoice::Process)]
        executor: ExecutorChoice,
    },
    /// Submit a job (flags or a spec file).
    Submit {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: Box<SubmitArgs>,
    },
    /// List jobs.
    Jobs {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        /// KEY=VALUE
        #[arg(long)]
        label: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one job.
    Job {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Print a job's output.
    Logs {
        #[command(flatten)]
        server: ServerArgs,
        /// Keep printing until the job ends.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        attempt: Option<u32>,
        id: String,
    },
    /// List a job's stored outputs, or download one (`--get NAME [-o FILE]`).
    Artifacts {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        /// The artifact to download.
        #[arg(long)]
        get: Option<String>,
        /// Where to write it (default: its file name, here).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// How a job's results were made, each fact citing its event; `--verify` re-checks them
    /// against the log and re-hashes the stored outputs.
    Receipt {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        verify: bool,
        /// With `--verify`: check every fact against its stored entry and its inclusion proof
        /// against the checkpoint the Auditor signed, with `--key` alone (no server when
        /// `--file` is given).
        #[arg(long, requires = "verify", requires = "key")]
        offline: bool,
        /// The Auditor's verifier key (`gantry audit key`).
        #[arg(long)]
        key: Option<String>,
        /// A receipt saved earlier (`gantry receipt ID --json > FILE`) instead of the server's.
        #[arg(long, requires = "offline")]
        file: Option<PathBuf>,
    },
    /// Submit, show and cancel pipelines: stages of jobs that run in dependency order and
    /// pass outputs to inputs.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        reason: Option<String>,
        id: String,
    },
    /// Run a worker node that joins a fleet over NATS (`gantry node --nats URL --name NAME`),
    /// or change one (`gantry node drain|cordon|uncordon NAME`).
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        #[command(subcommand)]
        change: Option<NodeCommand>,
        #[command(flatten)]
        run: Box<NodeArgs>,
    },
    /// List nodes.
    Nodes {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print events from the gateway.
    Events {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, short)]
        follow: bool,
    },
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Store, list and delete secrets jobs name as `secret://NAME` in their env.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Manage the read-side views.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Inspect, verify and export the event log.
    #[command(subcommand)]
    Log(LogCommand),
    /// The provable history: the Auditor's key, signed checkpoints and Merkle proofs.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

/// Runs a parsed command.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Up(args) => up::up(*args).await,
        Command::Demo { data, executor } => demo::demo(data, executor, out).await,
        Command::Submit { server, args } => submit::submit(&server, *args, out).await,
        Command::Jobs {
            server,
            state,
            queue,
            label,
            limit,
        } => jobs::jobs(&server, state, queue, label, limit, out).await,
        Command::Job { server, id } => job::job(&server, id, out).await,
        Command::Logs {
            server,
            follow,
            attempt,
            id,
        } => logs::logs(&server, id, follow, attempt, out).await,
        Command::Cancel { server, reason, id } => cancel::cancel(&server, id, reason, out).await,
        Command::Receipt {
            server,
            id,
            verify: _,
            offline: true,
            key,
            file,
        } => receipt::offline(&server, id, key.unwrap_or_default(), file, out).await,
        Command::Receipt {
            server, id, verify, ..
        } => receipt::receipt(&server, id, verify, out).await,
        Command::Artifacts {
            server,
            id,
            get,
            output,
        } => artifacts::artifacts(&server, id, get, output, out).await,
        Command::Nodes { server } => nodes::nodes(&server, out).await,
        Command::Node { change, run } => {
            let Some(change) = change else {
                return node::node(*run).await;
            };
            let (args, action) = match change {
                NodeCommand::Drain(a) => (a, "drain"),
                NodeCommand::Cordon(a) => (a, "cordon"),
                NodeCommand::Uncordon(a) => (a, "uncordon"),
            };
            node::change_node(&args.server, args.name, action, args.reason, out).await
        }
        Command::Events {
            server,
            after,
            follow,
        } => events::events(&server, after, follow, out).await,
        Command::Keys(command) => keys::keys(command, out).await,
        Command::Pipeline(command) => pipeline::pipeline(command, out).await,
        Command::Secrets(command) => secrets::secrets(command, out).await,
        Command::Projections(ProjectionsCommand::Rebuild { data }) => {
            projections::rebuild(data, out).await
        }
        Command::Log(LogCommand::Status { store }) => log::status(&store, out).await,
        Command::Log(LogCommand::Verify(args)) => log::verify(args, out).await,
        Command::Log(LogCommand::Tail(args)) => log::tail(args, out).await,
        Command::Log(LogCommand::Export(args)) => log::export(args, out).await,
        Command::Audit(command) => audit::audit(command, out).await,
    }
}

/// The `gantry` process: logging, arguments, one actix System, the command.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // One actix System: the actors, the gateway and every command run inside it.
    actix_rt::System::new().block_on(async move {
        let mut stdout = std::io::stdout();
        match run(cli, &mut stdout).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("gantry: {error}");
                ExitCode::from(EXIT_ERROR)
            }
        }
    })
}

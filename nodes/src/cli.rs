//! The `gantry` command line: argument parsing and the commands themselves.
//!
//! Commands write to the `out` they are given (stdout in the binary, a buffer in tests) and
//! return the process exit status.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use gantry_events::file::{FLAG_BATCH_END, FrameEnd, FrameReader, HEADER_LEN, Header};
use gantry_events::{
    Break, EmbeddedLog, Entry, EventLog, Fault, Hash, Verified, Verifier, verify_log,
};

use crate::commands::{self, ServerArgs, SubmitArgs};
use crate::jetstream::{JetStreamLog, JetStreamOptions};
use crate::up::{ExecutorChoice, UpOptions};

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
    Up(UpArgs),
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
    /// Manage the read-side views.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Inspect, verify and export the event log.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// No new work; what runs there finishes.
    Drain(NodeChangeArgs),
    /// No new work until uncordoned; what runs there goes on.
    Cordon(NodeChangeArgs),
    /// Takes work again.
    Uncordon(NodeChangeArgs),
}

#[derive(Debug, Args)]
pub struct NodeChangeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long)]
    pub reason: Option<String>,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub nats: crate::nats::NatsArgs,
    /// The node's name in the fleet (letters, digits, '-', '_').
    #[arg(long, env = "GANTRY_NODE_NAME")]
    pub name: Option<String>,
    #[arg(long, env = "GANTRY_DATA", default_value = "gantry-node-data")]
    pub data: PathBuf,
    #[arg(long, value_enum, env = "GANTRY_EXECUTOR", default_value_t = ExecutorChoice::Auto)]
    pub executor: ExecutorChoice,
    /// Report these GPUs (JSON list) instead of asking NVML.
    #[arg(long, env = "GANTRY_FAKE_GPUS")]
    pub fake_gpus: Option<String>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// On Ctrl-C: let running attempts finish, or hand them back to run elsewhere.
    #[arg(long, value_enum, default_value_t = crate::fleet::OnStop::Finish)]
    pub on_stop: crate::fleet::OnStop,
    /// On Ctrl-C, how long running attempts may take to finish before the node leaves.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Delete the views and rebuild them from the log (with `gantry up` stopped).
    Rebuild {
        #[arg(long, env = "GANTRY_DATA", default_value = "gantry-data")]
        data: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long, env = "GANTRY_DATA", default_value = "gantry-data")]
    pub data: PathBuf,
    /// Address of the gateway.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: std::net::SocketAddr,
    #[arg(long, value_enum, env = "GANTRY_EXECUTOR", default_value_t = ExecutorChoice::Auto)]
    pub executor: ExecutorChoice,
    /// Report these GPUs (JSON list) instead of asking NVML.
    #[arg(long, env = "GANTRY_FAKE_GPUS")]
    pub fake_gpus: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Fleet mode: keep the log on this NATS JetStream server and run as a control plane
    /// (no local worker: nodes join with `gantry node`).
    #[command(flatten)]
    pub nats: crate::nats::NatsArgs,
    /// Fleet mode: a node silent this long is lost and its attempts re-placed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub node_timeout: std::time::Duration,
    /// Fleet mode: the leader lease's time to live (a follower takes over this long after the
    /// leader's last renewal).
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub lease_ttl: std::time::Duration,
    /// Fleet mode: copies JetStream keeps of gantry's streams when it creates them (3 on a
    /// three-server cluster).
    #[arg(long, env = "GANTRY_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Head, size and health of the log.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check the hash chain. Exits 0 and prints the count and head hash when it holds,
    /// 1 and the first bad sequence when it does not.
    Verify(VerifyArgs),
    /// Print events from a sequence on.
    Tail(TailArgs),
    /// Write the log (or its tail) to a file that `gantry log verify --file` checks offline.
    Export(ExportArgs),
}

/// Which log to use: the embedded store (default) or a NATS JetStream server.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory of the embedded store.
    #[arg(long, env = "GANTRY_DATA", default_value = "gantry-data")]
    pub data: PathBuf,
    /// Use the JetStream log on this NATS server instead of the embedded store.
    #[arg(long, env = "GANTRY_NATS_URL")]
    pub nats: Option<String>,
    /// JetStream stream holding the log.
    #[arg(long, env = "GANTRY_STREAM", default_value = "GANTRY_EVENTS")]
    pub stream: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Verify an exported log file offline instead (no server, no store).
    #[arg(long, conflicts_with = "nats")]
    pub file: Option<PathBuf>,
    /// First sequence to check.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Last sequence to check (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// First sequence to print.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Keep printing new events as they are appended.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// File to write.
    #[arg(long)]
    pub out: PathBuf,
    /// First sequence to export.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] gantry_events::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Runs a parsed command.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Demo { data, executor } => crate::demo::demo(data, executor, out).await,
        Command::Submit { server, args } => commands::submit(&server, *args, out).await,
        Command::Jobs {
            server,
            state,
            queue,
            label,
            limit,
        } => commands::jobs(&server, state, queue, label, limit, out).await,
        Command::Job { server, id } => commands::job(&server, id, out).await,
        Command::Logs {
            server,
            follow,
            attempt,
            id,
        } => commands::logs(&server, id, follow, attempt, out).await,
        Command::Cancel { server, reason, id } => commands::cancel(&server, id, reason, out).await,
        Command::Nodes { server } => commands::nodes(&server, out).await,
        Command::Node { change, run } => {
            let Some(change) = change else {
                return node(*run).await;
            };
            let (args, action) = match change {
                NodeCommand::Drain(a) => (a, "drain"),
                NodeCommand::Cordon(a) => (a, "cordon"),
                NodeCommand::Uncordon(a) => (a, "uncordon"),
            };
            commands::change_node(&args.server, args.name, action, args.reason, out).await
        }
        Command::Events {
            server,
            after,
            follow,
        } => commands::events(&server, after, follow, out).await,
        Command::Projections(ProjectionsCommand::Rebuild { data }) => rebuild(data, out).await,
        Command::Log(LogCommand::Status { store }) => status(&store, out).await,
        Command::Log(LogCommand::Verify(args)) => verify(args, out).await,
        Command::Log(LogCommand::Tail(args)) => tail(args, out).await,
        Command::Log(LogCommand::Export(args)) => export(args, out).await,
    }
}

/// Whether a command appends to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Appends: takes the embedded store's lock.
    ReadWrite,
    /// Only reads: works beside a running `gantry up`.
    ReadOnly,
}

/// Opens the log the arguments name.
pub async fn open_log(store: &StoreArgs, access: Access) -> Result<Arc<dyn EventLog>, Error> {
    Ok(match &store.nats {
        Some(url) => Arc::new(
            JetStreamLog::connect(JetStreamOptions {
                url: url.clone(),
                stream: store.stream.clone(),
                ..JetStreamOptions::default()
            })
            .await?,
        ),
        None if access == Access::ReadOnly => {
            Arc::new(EmbeddedLog::open_read_only(&store.data).await?)
        }
        None => Arc::new(EmbeddedLog::open(&store.data).await?),
    })
}

fn describe(store: &StoreArgs) -> String {
    match &store.nats {
        Some(url) => format!("JetStream stream {} on {url}", store.stream),
        None => format!("embedded store {}", store.data.display()),
    }
}

fn write_out(out: &mut (dyn Write + Send), text: std::fmt::Arguments<'_>) -> Result<(), Error> {
    out.write_fmt(text).map_err(io_context("writing output"))
}

fn fake_gpus(json: Option<&str>) -> Result<Option<Vec<gantry_events::event::Gpu>>, Error> {
    json.map(|json| {
        serde_json::from_str(json)
            .map_err(|e| Error::Usage(format!("--fake-gpus is not a JSON list of GPUs: {e}")))
    })
    .transpose()
}

async fn node(args: NodeArgs) -> Result<ExitCode, Error> {
    let Some(name) = args.name else {
        return Err(Error::Usage(
            "gantry node needs --name NAME (and --nats URL)".into(),
        ));
    };
    if args.nats.url.is_none() {
        return Err(Error::Usage("gantry node needs --nats URL".into()));
    }
    let mut labels = std::collections::BTreeMap::new();
    for label in &args.labels {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--label {label:?} is not KEY=VALUE")))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let options = crate::fleet::NodeRunOptions {
        nats: args.nats,
        name,
        data: args.data,
        executor: args.executor,
        fake_gpus: fake_gpus(args.fake_gpus.as_deref())?,
        labels,
        on_stop: args.on_stop,
        drain_timeout: args.drain_timeout,
    };
    crate::fleet::node(options, crate::up::shutdown_signal())
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

async fn up(args: UpArgs) -> Result<ExitCode, Error> {
    if args.nats.url.is_some() {
        let options = crate::fleet::ControlPlaneOptions {
            nats: args.nats,
            data: args.data,
            listen: args.listen,
            max_body_bytes: args.max_body_bytes,
            node_timeout: args.node_timeout,
            lease_ttl: args.lease_ttl,
            replicas: args.nats_replicas,
        };
        crate::fleet::control_plane(options, None, crate::up::shutdown_signal())
            .await
            .map_err(|e| Error::Usage(e.to_string()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let fake_gpus = fake_gpus(args.fake_gpus.as_deref())?;
    let options = UpOptions {
        data: args.data,
        listen: args.listen,
        executor: args.executor,
        fake_gpus,
        max_body_bytes: args.max_body_bytes,
    };
    crate::up::up(options, None, crate::up::shutdown_signal())
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

async fn rebuild(data: PathBuf, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    // The writable open takes the lock: refuses while `gantry up` runs on this data.
    let log = EmbeddedLog::open(&data).await?;
    let views = gantry_projections::Projections::open(data.join("views"))
        .map_err(|e| Error::Usage(e.to_string()))?;
    views.clear().map_err(|e| Error::Usage(e.to_string()))?;
    let head = log.head().await?.seq;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let checkpoint = views
        .catch_up(&log, |seq, _| bar.set_position(seq))
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    bar.finish_and_clear();
    log.close().await?;
    write_out(
        out,
        format_args!(
            "rebuilt the views from {} events in {:.2?}, checkpoint {} = {}\n",
            checkpoint.seq,
            started.elapsed(),
            checkpoint.seq,
            checkpoint.hash
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn exit_for(verified: &Result<Verified, Break>) -> ExitCode {
    match verified {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_BROKEN),
    }
}

fn print_verified(
    out: &mut (dyn Write + Send),
    verified: &Result<Verified, Break>,
) -> Result<(), Error> {
    match verified {
        Ok(v) => write_out(
            out,
            format_args!(
                "  chain     ok: {} events verified, head {} = {}\n",
                v.count, v.last_seq, v.head
            ),
        ),
        Err(b) => write_out(
            out,
            format_args!("  chain     BROKEN at sequence {}: {}\n", b.seq, b.fault),
        ),
    }
}

async fn status(store: &StoreArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let log = open_log(store, Access::ReadOnly).await?;
    let head = log.head().await?;
    let verified = verify_log(&*log, 1, None).await?;
    write_out(out, format_args!("log       {}\n", describe(store)))?;
    write_out(
        out,
        format_args!("head      {} = {}\n", head.seq, head.hash),
    )?;
    print_verified(out, &verified)?;
    Ok(exit_for(&verified))
}

async fn verify(args: VerifyArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let verified = match &args.file {
        Some(file) => verify_file(file, args.from, args.to)?,
        None => {
            let log = open_log(&args.store, Access::ReadOnly).await?;
            verify_log(&*log, args.from, args.to).await?
        }
    };
    if args.json {
        let json = match &verified {
            Ok(v) => serde_json::json!({ "ok": true, "count": v.count, "first_seq": v.first_seq,
                "last_seq": v.last_seq, "head": v.head }),
            Err(b) => serde_json::json!({ "ok": false, "seq": b.seq, "fault": b.fault,
                "message": b.to_string() }),
        };
        write_out(out, format_args!("{json}\n"))?;
    } else {
        match &verified {
            Ok(v) => write_out(
                out,
                format_args!(
                    "ok: {} events verified (sequences {}..={}), head {}\n",
                    v.count, v.first_seq, v.last_seq, v.head
                ),
            )?,
            Err(b) => write_out(
                out,
                format_args!("BROKEN at sequence {}: {}\n", b.seq, b.fault),
            )?,
        }
    }
    Ok(exit_for(&verified))
}

/// Verifies an exported file (or a copy of an embedded store's `events.log`) offline.
pub fn verify_file(
    path: &Path,
    from: u64,
    to: Option<u64>,
) -> Result<Result<Verified, Break>, Error> {
    let file =
        std::fs::File::open(path).map_err(io_context(format!("opening {}", path.display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN];
    std::io::Read::read_exact(&mut reader, &mut header).map_err(io_context(format!(
        "reading the header of {}",
        path.display()
    )))?;
    // Exports written before frame checksums (format 1) still verify.
    let (header, format) =
        Header::decode_any(&header).map_err(|reason| gantry_events::Error::NotALog {
            path: path.to_owned(),
            reason,
        })?;
    let mut frames = FrameReader::with_format(reader, HEADER_LEN as u64, format);
    let to = to.unwrap_or(u64::MAX);
    // Entries before `from` are skipped; the last one skipped anchors the check.
    let mut anchor = header.anchor;
    let mut verifier: Option<Verifier> = None;
    let mut seq = header.first_seq;
    while seq <= to {
        let Some(frame) = frames
            .next_frame()
            .map_err(io_context(format!("reading {}", path.display())))?
        else {
            break;
        };
        let entry = Entry {
            seq,
            bytes: frame.entry,
        };
        seq += 1;
        if entry.seq < from {
            anchor = entry.stored_hash().unwrap_or(Hash::GENESIS);
            continue;
        }
        let verifier = verifier.get_or_insert_with(|| Verifier::anchored(entry.seq, anchor));
        if let Err(broken) = verifier.push(&entry) {
            return Ok(Err(broken));
        }
    }
    match frames.end() {
        Some(FrameEnd::Torn { offset }) | Some(FrameEnd::Corrupt { offset, .. }) if seq <= to => {
            Ok(Err(Break {
                seq,
                fault: Fault::Undecodable {
                    reason: format!("frame at byte {offset} is cut short or impossible"),
                },
            }))
        }
        _ => Ok(verifier.map_or(
            Ok(Verified {
                count: 0,
                first_seq: 0,
                last_seq: 0,
                head: anchor,
            }),
            |v| v.finish(),
        )),
    }
}

async fn tail(args: TailArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let log = open_log(&args.store, Access::ReadOnly).await?;
    let from = args.from.max(1);
    if args.follow {
        let mut events = log.subscribe(from).await?;
        while let Some(entry) = events.next().await {
            print_entry(out, &entry?, args.json)?;
            out.flush().map_err(io_context("writing output"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let head = log.head().await?;
    let mut next = from;
    while next <= head.seq {
        let entries = log.read(next, 1000).await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in &entries {
            print_entry(out, entry, args.json)?;
        }
        next = last + 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entry(out: &mut (dyn Write + Send), entry: &Entry, json: bool) -> Result<(), Error> {
    let envelope = match entry.open() {
        Ok(envelope) => envelope,
        Err(e) => {
            return write_out(out, format_args!("{:>8} <undecodable: {e}>\n", entry.seq));
        }
    };
    if json {
        let line =
            serde_json::to_string(&envelope).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        write_out(out, format_args!("{line}\n"))
    } else {
        let payload = serde_json::to_string(&envelope.event).unwrap_or_default();
        write_out(
            out,
            format_args!(
                "{:>8} {} {:<22} {}/{} {}\n",
                envelope.seq,
                envelope.time_rfc3339(),
                envelope.type_name,
                envelope.source.node,
                envelope.source.actor,
                payload
            ),
        )
    }
}

async fn export(args: ExportArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let log = open_log(&args.store, Access::ReadOnly).await?;
    let from = args.from.max(1);
    let anchor = if from == 1 {
        Hash::GENESIS
    } else {
        let before = log.read(from - 1, 1).await?;
        let entry = before
            .first()
            .ok_or_else(|| Error::Usage(format!("the log has no sequence {}", from - 1)))?;
        entry
            .stored_hash()
            .map_err(|e| Error::Usage(format!("sequence {}: {e}", from - 1)))?
    };
    let head = log.head().await?;
    let tmp = args.out.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(io_context(format!("creating {}", tmp.display())))?,
    );
    let write_err = io_context(format!("writing {}", tmp.display()));
    let mut buf = Header {
        first_seq: from,
        anchor,
    }
    .encode()
    .to_vec();
    let mut next = from;
    let mut count = 0u64;
    let mut last_hash = anchor;
    while next <= head.seq {
        let entries = log.read(next, 4096).await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in entries.iter().filter(|e| e.seq <= head.seq) {
            gantry_events::file::write_frame(&mut buf, &entry.bytes, FLAG_BATCH_END);
            last_hash = entry.stored_hash().unwrap_or(Hash::GENESIS);
            count += 1;
        }
        file.write_all(&buf).map_err(|e| Error::Io {
            context: "writing export".into(),
            source: e,
        })?;
        buf.clear();
        next = last + 1;
    }
    file.write_all(&buf).map_err(write_err)?;
    let file = file.into_inner().map_err(|e| Error::Io {
        context: "flushing export".into(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_context("syncing export"))?;
    std::fs::rename(&tmp, &args.out)
        .map_err(io_context(format!("renaming to {}", args.out.display())))?;
    write_out(
        out,
        format_args!(
            "exported {count} events ({from}..={}) to {}, head {last_hash}\n",
            from + count.saturating_sub(1),
            args.out.display()
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The `gantry` process: logging, arguments, one actix System, the command.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
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

//! `gantry node`: run a worker node, or change one (`drain`, `cordon`, `uncordon`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::error::Error;
use super::server::{ServerArgs, post_with_reason};
use super::up::fake_gpus;
use crate::up::ExecutorChoice;

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
    /// Where jobs' outputs go: the fleet's S3 bucket (without one, outputs are not kept).
    #[command(flatten)]
    pub s3: crate::s3::S3Options,
}

pub(crate) async fn node(args: NodeArgs) -> Result<ExitCode, Error> {
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
        s3: args.s3,
    };
    crate::fleet::node(options, crate::up::shutdown_signal())
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// `gantry node drain|cordon|uncordon NAME`.
pub async fn change_node(
    server: &ServerArgs,
    name: String,
    action: &'static str,
    reason: Option<String>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    post_with_reason(
        server,
        format!("/v1/nodes/{name}/{action}"),
        reason,
        "status",
        out,
    )
    .await
}

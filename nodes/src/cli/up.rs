//! `gantry up`: the whole system embedded, or a fleet control plane with `--nats`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use gantry_actors::spec::ResourceRequest;

use super::error::Error;
use crate::up::{ExecutorChoice, UpOptions};

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
    /// API keys, the secret key, allowed origins and hosts, rate and stream limits.
    #[command(flatten)]
    pub edge: crate::edge::EdgeOptions,
    /// Where jobs' outputs go: an S3 bucket (default: `DATA/artifacts` embedded; a fleet
    /// needs the bucket to keep outputs at all).
    #[command(flatten)]
    pub s3: crate::s3::S3Options,
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
    /// Named resource profiles jobs and pipeline stages may ask for (`"profile": "h100"`): a
    /// JSON file mapping each name to resources, e.g.
    /// `{"h100": {"cpus": 8, "memory_bytes": 68719476736, "gpus": {"count": 1, "model": "H100"}}}`.
    #[arg(long, env = "GANTRY_PROFILES")]
    pub profiles: Option<PathBuf>,
    /// How long outputs of ended jobs are kept.
    #[command(flatten)]
    pub retention: crate::retention::RetentionOptions,
    /// The Scheduler saves its state in the data dir each time the log has grown by this many
    /// events, so a start replays only the log after it (0: never).
    #[arg(long, env = "GANTRY_SNAPSHOT_EVERY", default_value_t = crate::up::SNAPSHOT_EVERY_EVENTS)]
    pub snapshot_every: u64,
    /// MiB of the views kept in memory (more: faster reads of many jobs, more memory).
    #[arg(long, env = "GANTRY_VIEWS_CACHE_MB", default_value_t = gantry_projections::DEFAULT_CACHE_BYTES >> 20)]
    pub views_cache_mb: u64,
    /// The Auditor's signing key, checkpoints and re-checks.
    #[command(flatten)]
    pub audit: crate::audit::AuditOptions,
}

/// Reads `--profiles`: a JSON map of profile names to resources.
pub(crate) fn read_profiles(
    path: Option<&std::path::Path>,
) -> Result<BTreeMap<String, ResourceRequest>, Error> {
    let Some(path) = path else {
        return Ok(BTreeMap::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("--profiles {}: {e}", path.display())))?;
    let profiles: BTreeMap<String, ResourceRequest> = serde_json::from_str(&text)
        .map_err(|e| Error::Usage(format!("--profiles {}: {e}", path.display())))?;
    for name in profiles.keys() {
        gantry_actors::spec::check_name("profile", name, 64)
            .map_err(|e| Error::Usage(format!("--profiles {}: {name:?}: {e}", path.display())))?;
    }
    Ok(profiles)
}

pub(crate) fn fake_gpus(
    json: Option<&str>,
) -> Result<Option<Vec<gantry_events::event::Gpu>>, Error> {
    json.map(|json| {
        serde_json::from_str(json)
            .map_err(|e| Error::Usage(format!("--fake-gpus is not a JSON list of GPUs: {e}")))
    })
    .transpose()
}

pub(crate) async fn up(args: UpArgs) -> Result<ExitCode, Error> {
    if args.nats.url.is_some() {
        let options = crate::fleet::ControlPlaneOptions {
            nats: args.nats,
            data: args.data,
            listen: args.listen,
            max_body_bytes: args.max_body_bytes,
            edge: args.edge.clone(),
            s3: args.s3.clone(),
            node_timeout: args.node_timeout,
            lease_ttl: args.lease_ttl,
            replicas: args.nats_replicas,
            profiles: read_profiles(args.profiles.as_deref())?,
            retention: args.retention.clone(),
            snapshot_every: args.snapshot_every,
            views_cache_bytes: args.views_cache_mb << 20,
            audit: args.audit,
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
        edge: args.edge,
        s3: args.s3,
        profiles: read_profiles(args.profiles.as_deref())?,
        retention: args.retention,
        snapshot_every: args.snapshot_every,
        views_cache_bytes: args.views_cache_mb << 20,
        audit: args.audit,
    };
    crate::up::up(options, None, crate::up::shutdown_signal())
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

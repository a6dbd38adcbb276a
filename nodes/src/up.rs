//! `gantry up`: the whole system in one process on the embedded default — the log on local
//! disk, the projections, the five actors, a local worker and the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};
use gantry_actors::actor::scheduler::SnapshotOptions;
use gantry_actors::actor::supervisor::{Drain, NodeOptions, Supervisor};
use gantry_actors::control::{Control, Local};
use gantry_actors::executor::{Executor, GpuInventory};
use gantry_actors::spec::Limits;
use gantry_events::event::Gpu;
use gantry_events::{EmbeddedLog, EventLog};
use gantry_gateway::{Gateway, LocalOutput};
use gantry_projections::Projections;
use tokio::sync::watch;

use crate::artifacts::LocalArtifactStore;
use crate::executor::process::{ProcessExecutor, ProcessOptions};
use crate::gpu::{FakeInventory, NvmlInventory};
use crate::node;
use crate::secrets::{FileSecretStore, Sealer};
use gantry_actors::artifacts::ArtifactStore;
use gantry_actors::secrets::SecretStore;

/// Which executor runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorChoice {
    /// Docker when an engine answers, else local processes.
    Auto,
    /// Docker only: fail to start without an engine.
    Docker,
    /// Local processes (no sandbox).
    Process,
}

/// Settings of `gantry up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub executor: ExecutorChoice,
    /// GPUs to report instead of asking NVML (tests, or GPUs NVML cannot see).
    pub fake_gpus: Option<Vec<Gpu>>,
    pub max_body_bytes: usize,
    /// Keys, origins, hosts and limits at the gateway.
    pub edge: crate::edge::EdgeOptions,
    /// An S3 bucket for jobs' outputs (default: a folder of the data dir).
    pub s3: crate::s3::S3Options,
    /// Named resource profiles submissions may use.
    pub profiles: std::collections::BTreeMap<String, gantry_actors::spec::ResourceRequest>,
    /// How long outputs of ended jobs are kept.
    pub retention: crate::retention::RetentionOptions,
    /// Events between two snapshots of the Scheduler's state (0: none).
    pub snapshot_every: u64,
    /// How much of the views is kept in memory.
    pub views_cache_bytes: u64,
    /// The Auditor's key, checkpoints and re-checks.
    pub audit: crate::audit::AuditOptions,
}

/// The artifact store `s3` names, or, without a bucket, `local` when given.
pub async fn artifact_store(
    s3: &crate::s3::S3Options,
    local: Option<&std::path::Path>,
) -> Result<Option<Arc<dyn ArtifactStore>>, Error> {
    if s3.s3_bucket.is_some() {
        let store = crate::s3::S3ArtifactStore::connect(s3)
            .await
            .map_err(|e| Error::Setup(e.to_string()))?;
        store
            .ensure_bucket()
            .await
            .map_err(|e| Error::Setup(format!("the artifact bucket: {e}")))?;
        return Ok(Some(Arc::new(store)));
    }
    match local {
        Some(dir) => Ok(Some(Arc::new(LocalArtifactStore::open(dir)?))),
        None => Ok(None),
    }
}

/// Why `gantry up` could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] gantry_events::Error),
    #[error(transparent)]
    Views(#[from] gantry_projections::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Edge(#[from] crate::edge::Error),
}

/// Picks the executor: Docker when asked or when one answers, else local processes.
/// The Docker executor's options on this node: job outputs in `data/outputs`, bind-mounted
/// into containers. The engine resolves that path on its own host, so where gantry runs in a
/// container of that engine, `GANTRY_DOCKER_OUTPUTS` must name a folder mounted at the same
/// path on the host, or `off`.
fn docker_options(data: &std::path::Path) -> crate::executor::docker::DockerOptions {
    let outputs_root = match std::env::var_os("GANTRY_DOCKER_OUTPUTS") {
        Some(dir) if dir == "off" => None,
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None => Some(data.join("outputs")),
    };
    crate::executor::docker::DockerOptions {
        outputs_root: outputs_root.map(|d| std::path::absolute(&d).unwrap_or(d)),
        ..Default::default()
    }
}

pub async fn choose_executor(
    choice: ExecutorChoice,
    data: &std::path::Path,
) -> Result<Arc<dyn Executor>, Error> {
    let process = || -> Result<Arc<dyn Executor>, Error> {
        match ProcessExecutor::open(data, ProcessOptions::default()) {
            Ok(executor) => Ok(Arc::new(executor)),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
                ) =>
            {
                // The data dir cannot be sealed for jobs of their own users (it lies under a
                // directory others cannot enter, or is a shared one): run jobs as gantry's own
                // user rather than not at all, and say so loudly.
                tracing::warn!(%error, "jobs will run as gantry's own user, not as users of their own");
                eprintln!("warning: {error}; jobs will run as gantry's own user");
                let options = ProcessOptions {
                    job_uids: None,
                    ..ProcessOptions::default()
                };
                Ok(Arc::new(ProcessExecutor::open(data, options)?))
            }
            Err(error) => Err(error.into()),
        }
    };
    match choice {
        ExecutorChoice::Process => process(),
        ExecutorChoice::Docker => {
            crate::executor::docker::DockerExecutor::connect_with(docker_options(data))
                .await
                .map(|d| Arc::new(d) as Arc<dyn Executor>)
                .map_err(|e| Error::Setup(format!("no Docker engine: {e}")))
        }
        ExecutorChoice::Auto => {
            match crate::executor::docker::DockerExecutor::connect_with(docker_options(data)).await
            {
                Ok(d) => Ok(Arc::new(d)),
                Err(e) => {
                    tracing::info!(error = %e, "no Docker engine answered; using the local process executor");
                    process()
                }
            }
        }
    }
}

/// Where a control plane keeps its Scheduler's snapshot: in its data dir, taken each time the
/// log grew by `every` events (`None` for 0: no snapshots).
pub fn scheduler_snapshots(data: &std::path::Path, every: u64) -> Option<SnapshotOptions> {
    (every > 0).then(|| SnapshotOptions {
        file: gantry_actors::snapshot::SnapshotFile::new(
            data.join("snapshots").join("scheduler.snapshot"),
        ),
        every_events: every,
    })
}

/// How many events the log grows by between two snapshots of the Scheduler's state, unless
/// told otherwise.
pub const SNAPSHOT_EVERY_EVENTS: u64 = 100_000;

/// Runs until `shutdown` resolves (the CLI passes Ctrl-C or SIGTERM). `started` receives the
/// bound address once serving.
pub async fn up(
    options: UpOptions,
    started: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    // Before any actor records: `/metrics` renders what this process recorded.
    let _ = gantry_gateway::metrics::handle();
    let data = options.data.clone();
    std::fs::create_dir_all(&data)?;
    let opening = std::time::Instant::now();
    let log: Arc<dyn EventLog> = Arc::new(open_embedded(&data).await?);
    tracing::info!(
        elapsed_ms = opening.elapsed().as_millis() as u64,
        "event log opened"
    );
    if let Some(fault) = log.fault() {
        // Damage to acknowledged events is never repaired silently: stop here and let the
        // operator look (`gantry log verify` names the first bad sequence).
        return Err(Error::Setup(format!(
            "the event log takes no appends: {fault}; inspect it with `gantry log verify --data {}`",
            data.display()
        )));
    }
    let opening = std::time::Instant::now();
    let views = Projections::open_with_cache(data.join("views"), options.views_cache_bytes)?;
    tracing::info!(
        elapsed_ms = opening.elapsed().as_millis() as u64,
        "views opened"
    );

    // The projector follows the log into the views.
    let (views_tx, views_seq) = watch::channel(0u64);
    actix_rt::spawn(project(log.clone(), views.clone(), views_tx));

    let audit = options
        .audit
        .settings(Vec::new())
        .map_err(|e| Error::Setup(e.to_string()))?;
    if options.audit.checkpoint_file.is_none() {
        tracing::info!(
            "signed checkpoints go into the log only: --checkpoint-file also publishes them outside it, where a cut or rewritten log is caught at the next start"
        );
    }
    let executor = choose_executor(options.executor, &data).await?;
    let inventory: Arc<dyn GpuInventory> = match options.fake_gpus.clone() {
        Some(gpus) => Arc::new(FakeInventory::new(gpus)),
        None => Arc::new(NvmlInventory::detect()),
    };
    let this = node::this_node(&data)?;
    let secret_key = crate::edge::secret_key(options.edge.secret_key_file.as_deref())?;
    let secrets: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(
        &data.join("secrets"),
        Sealer::new(&secret_key),
    )?);
    let artifacts = artifact_store(&options.s3, Some(&data.join("artifacts"))).await?;
    let actors = Supervisor::start(
        log.clone(),
        executor.clone(),
        inventory,
        NodeOptions {
            node_id: this.id.clone(),
            hostname: this.hostname.clone(),
            cpu_millis: this.cpu_millis,
            memory_bytes: this.memory_bytes,
            labels: Default::default(),
            logs_dir: data.join("logs"),
            limits: Limits {
                profiles: options.profiles.clone(),
                ..Limits::default()
            },
            gpu_probe_every: Duration::from_secs(30),
            join_patience: Duration::from_secs(30),
            artifacts: artifacts.clone(),
            snapshots: scheduler_snapshots(&data, options.snapshot_every),
            audit,
        },
        Some(secrets.clone()),
    )
    .await?;

    let edge = crate::edge::build(
        &options.edge,
        secret_key,
        options.listen,
        &data,
        log.as_ref(),
        &views,
        &views_seq,
    )
    .await?;
    let control: Arc<dyn Control> = Arc::new(Local(actors.scheduler.clone()));
    if let Some(store) = &artifacts {
        actix_rt::spawn(crate::retention::run(
            views.clone(),
            views_seq.clone(),
            control.clone(),
            store.clone(),
            options.retention.clone(),
            None,
        ));
    }
    let gateway = Gateway {
        control,
        supervisor: Some(actors.supervisor.clone()),
        views,
        log: log.clone(),
        output: Arc::new(LocalOutput(data.join("logs"))),
        views_seq,
        max_body_bytes: options.max_body_bytes,
        telemetry: actors.telemetry.clone(),
        leading: None,
        allowed_origins: edge.allowed_origins,
        auth: edge.auth,
        streams: edge.streams,
        rendered: Default::default(),
        bootstrap_file: edge.bootstrap_file,
        secrets,
        artifacts,
    };
    actix_rt::spawn(gantry_gateway::webhooks::run(gateway.clone(), None));
    let (addr, server) = bind_gateway(gateway, options.listen)?;
    let handle = server.handle();
    tracing::info!(%addr, node = %this.id, executor = executor.kind(), sandboxed = executor.sandboxed(), "gantry is up");
    eprintln!(
        "gantry is up: gateway on http://{addr}, node {} (executor {}{}), data in {}",
        this.id,
        executor.kind(),
        if executor.sandboxed() {
            ""
        } else {
            ", NOT a sandbox"
        },
        data.display()
    );
    if let Some(started) = started {
        let _ = started.send(addr);
    }
    let server_task = actix_rt::spawn(server);
    shutdown.await;
    tracing::info!("gantry: stopping");
    let _ = actors.supervisor.send(Drain("shutdown".into())).await;
    handle.stop(true).await;
    let _ = server_task.await;
    Ok(())
}

/// Binds the REST gateway on `listen`; the server runs once spawned.
pub fn bind_gateway(
    gateway: Gateway,
    listen: SocketAddr,
) -> Result<(SocketAddr, actix_web::dev::Server), Error> {
    let server = HttpServer::new(move || {
        let gateway = gateway.clone();
        App::new()
            .wrap(actix_web::middleware::from_fn(
                gantry_gateway::metrics::track,
            ))
            .configure(move |cfg| gantry_gateway::routes(cfg, gateway))
    })
    .workers(2)
    .disable_signals()
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| Error::Setup("the gateway bound no address".into()))?;
    Ok((addr, server.run()))
}

/// How long a start waits for a gantry that is still exiting on the same data dir (after a
/// `kill -9` the kernel releases its lock only once every thread is gone).
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// Opens the embedded log, waiting a bounded time while another process still holds it.
async fn open_embedded(data: &std::path::Path) -> Result<EmbeddedLog, Error> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        match EmbeddedLog::open(data).await {
            Err(gantry_events::Error::Locked(path)) if tokio::time::Instant::now() < deadline => {
                if !said {
                    tracing::warn!(path = %path.display(), "the data dir is locked by another process; waiting for it to exit");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Follows the log into the views for as long as gantry runs: a failure (the log or the store)
/// is logged and retried with backoff, never the end of the projector.
pub async fn project(log: Arc<dyn EventLog>, views: Projections, progress: watch::Sender<u64>) {
    let mut pause = Duration::from_millis(100);
    loop {
        match views.follow(&*log, &progress).await {
            Ok(()) => tracing::warn!("the log subscription ended; projections follow again"),
            Err(error) => {
                tracing::error!(%error, retry_in_ms = pause.as_millis() as u64, "projections failed to follow the log; retrying");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
        if progress.is_closed() {
            return;
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

//! Fleet mode: `gantry up --nats` (a control plane) and `gantry node` (a worker node), the
//! same actors as embedded mode with NATS between them.
//!
//! A control plane keeps the log of record on JetStream, its own sled views and gateway, and
//! campaigns for the leader lease; while it leads it runs the Scheduler and Auditor, serves
//! node and gateway messages, and declares silent nodes lost. A worker node follows the log
//! (read-only: nodes never append), keeps a replica of it, runs what is placed on it, and
//! sends reports, records and heartbeats.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::actor::scheduler::Stop;
use gantry_actors::actor::supervisor::{
    ControlActors, Drain, NodeOptions, start_control_plane, start_node,
};
use gantry_actors::actor::worker::{GetWorkerStats, HandBack};
use gantry_actors::control::Control;
use gantry_actors::executor::GpuInventory;
use gantry_actors::secrets::SecretStore;
use gantry_actors::spec::Limits;
use gantry_actors::telemetry::Telemetry;
use gantry_events::event::Gpu;
use gantry_events::{Appended, Entry, EventLog, Head, NewEvent, Source, Subscription};
use gantry_gateway::Gateway;
use gantry_projections::Projections;
use tokio::sync::watch;

use crate::gpu::{FakeInventory, NvmlInventory};
use crate::jetstream::{JetStreamLog, JetStreamOptions};
use crate::nats::lease::{Lease, Validity};
use crate::nats::output::{self, ShippedOutput};
use crate::nats::remote::Remote;
use crate::nats::replica::Replica;
use crate::nats::{NatsArgs, heartbeat, serve, wire};
use crate::secrets::{KvSecretStore, Sealer};
use crate::up::{Error, ExecutorChoice, bind_gateway, choose_executor, project};

/// Settings of a fleet control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    pub nats: NatsArgs,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Keys, origins, hosts and limits at the gateway.
    pub edge: crate::edge::EdgeOptions,
    /// The fleet's S3 bucket, where nodes store jobs' outputs and the gateway reads them.
    pub s3: crate::s3::S3Options,
    /// Silence after which a node is lost.
    pub node_timeout: Duration,
    /// The leader lease's time to live.
    pub lease_ttl: Duration,
    /// Copies JetStream keeps of gantry's streams (3 on a three-server cluster).
    pub replicas: usize,
    /// Named resource profiles submissions may use.
    pub profiles: std::collections::BTreeMap<String, gantry_actors::spec::ResourceRequest>,
    /// How long outputs of ended jobs are kept.
    pub retention: crate::retention::RetentionOptions,
    /// Events between two snapshots of the Scheduler's state (0: none).
    pub snapshot_every: u64,
    /// How much of the views is kept in memory.
    pub views_cache_bytes: u64,
    /// The Auditor's key, checkpoints and re-checks (signed checkpoints also go to the NATS
    /// KV bucket `gantry_checkpoints`).
    pub audit: crate::audit::AuditOptions,
}

/// Settings of a worker node.
#[derive(Debug, Clone)]
pub struct NodeRunOptions {
    pub nats: NatsArgs,
    pub name: String,
    pub data: PathBuf,
    pub executor: ExecutorChoice,
    pub fake_gpus: Option<Vec<Gpu>>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// On Ctrl-C: what becomes of the attempts running here.
    pub on_stop: OnStop,
    /// On Ctrl-C: how long attempts may take to finish (or to be handed back) before the node
    /// leaves.
    pub drain_timeout: Duration,
    /// The fleet's S3 bucket for jobs' outputs (none: outputs are not kept).
    pub s3: crate::s3::S3Options,
}

/// What a node leaving does with the attempts running on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStop {
    /// Let them finish (up to the drain timeout).
    Finish,
    /// Stop them now and hand them back: each fails as `node_lost` and runs again elsewhere,
    /// without using the job's own retries.
    HandBack,
}

fn setup(e: impl std::fmt::Display) -> Error {
    Error::Setup(e.to_string())
}

/// The log as a leader writes it: appends only while its lease holds, so a deposed leader
/// cannot append (the chain's expected-last-sequence fences it besides).
struct FencedLog {
    log: Arc<JetStreamLog>,
    lease: Validity,
}

impl EventLog for FencedLog {
    fn append(
        &self,
        batch: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, gantry_events::Error>> {
        if !self.lease.is_valid() {
            return futures::future::ready(Err(gantry_events::Error::backend(
                "appending",
                "this control plane no longer leads",
            )))
            .boxed();
        }
        self.log.append(batch)
    }

    fn read(
        &self,
        from: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Entry>, gantry_events::Error>> {
        self.log.read(from, max)
    }

    fn head(&self) -> BoxFuture<'_, Result<Head, gantry_events::Error>> {
        self.log.head()
    }

    fn subscribe(&self, from: u64) -> BoxFuture<'_, Result<Subscription, gantry_events::Error>> {
        self.log.subscribe(from)
    }
}

/// `gantry up --nats`: runs a control plane until `shutdown` resolves.
pub async fn control_plane(
    options: ControlPlaneOptions,
    started: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    // Before any actor records: `/metrics` renders what this process recorded.
    let _ = gantry_gateway::metrics::handle();
    let data = options.data.clone();
    std::fs::create_dir_all(&data)?;
    let this = crate::node::this_node(&data)?;
    let client = options
        .nats
        .connect(&format!("gantry control plane {}", this.id), None)
        .await
        .map_err(setup)?;
    // A JetStream cluster that is still electing its leader refuses for a moment: wait.
    let log = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let opened = JetStreamLog::open(
                client.clone(),
                JetStreamOptions {
                    replicas: options.replicas,
                    ..JetStreamOptions::default()
                },
                true,
            )
            .await;
            match opened {
                Ok(log) => break Arc::new(log),
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "the event log cannot be opened yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    output::ensure_stream(&js, options.replicas)
        .await
        .map_err(setup)?;
    let lease = Lease::open(&js, &this.id, options.lease_ttl, options.replicas)
        .await
        .map_err(setup)?;

    let views = Projections::open_with_cache(data.join("views"), options.views_cache_bytes)?;
    let (views_tx, views_seq) = watch::channel(0u64);
    actix_rt::spawn(project(log.clone(), views.clone(), views_tx));

    let telemetry = Telemetry::default();
    let (leading_tx, leading) = watch::channel(false);
    heartbeat::listen(client.clone(), telemetry.clone())
        .await
        .map_err(setup)?;

    let secret_key =
        crate::edge::secret_key(options.edge.secret_key_file.as_deref()).map_err(setup)?;
    let secrets: Arc<dyn SecretStore> = Arc::new(
        KvSecretStore::open(&js, options.replicas, Sealer::new(&secret_key))
            .await
            .map_err(setup)?,
    );
    let checkpoints = crate::audit::KvSink::open(&js, options.replicas)
        .await
        .map_err(|e| Error::Setup(format!("the checkpoint bucket: {e}")))?;
    let audit = options
        .audit
        .settings(vec![Arc::new(checkpoints)])
        .map_err(setup)?;
    let edge = crate::edge::build(
        &options.edge,
        secret_key,
        options.listen,
        &data,
        log.as_ref(),
        &views,
        &views_seq,
    )
    .await
    .map_err(setup)?;
    let control: Arc<dyn Control> = Arc::new(Remote::gateway(client.clone()));
    let artifacts = crate::up::artifact_store(&options.s3, None).await?;
    if let Some(store) = &artifacts {
        // Retention runs on the leading control plane only.
        actix_rt::spawn(crate::retention::run(
            views.clone(),
            views_seq.clone(),
            control.clone(),
            store.clone(),
            options.retention.clone(),
            Some(leading.clone()),
        ));
    }
    let gateway = Gateway {
        control,
        supervisor: None,
        views,
        log: log.clone(),
        output: Arc::new(ShippedOutput::new(js.clone())),
        views_seq,
        max_body_bytes: options.max_body_bytes,
        telemetry: telemetry.clone(),
        leading: Some(leading),
        allowed_origins: edge.allowed_origins,
        auth: edge.auth,
        streams: edge.streams,
        rendered: Default::default(),
        bootstrap_file: edge.bootstrap_file,
        secrets: secrets.clone(),
        // Nodes' outputs are readable here only through the fleet's bucket.
        artifacts,
    };
    actix_rt::spawn(gantry_gateway::webhooks::run(
        gateway.clone(),
        gateway.leading.clone(),
    ));
    let (addr, server) = bind_gateway(gateway, options.listen)?;
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    tracing::info!(%addr, me = lease.me(), "gantry control plane is up; campaigning to lead");
    eprintln!(
        "gantry control plane is up: gateway on http://{addr}, log on NATS JetStream, data in {}",
        data.display()
    );
    if let Some(started) = started {
        let _ = started.send(addr);
    }

    let campaign = lead(
        client,
        log,
        secrets,
        lease,
        telemetry,
        &this.id,
        options.node_timeout,
        Limits {
            profiles: options.profiles.clone(),
            ..Limits::default()
        },
        leading_tx,
        crate::up::scheduler_snapshots(&data, options.snapshot_every),
        audit,
    );
    tokio::pin!(campaign);
    tokio::select! {
        () = shutdown => {}
        result = &mut campaign => result?,
    }
    tracing::info!("gantry control plane: stopping");
    handle.stop(true).await;
    let _ = server_task.await;
    Ok(())
}

/// Campaigns, leads while the lease holds, and campaigns again after losing it. Never returns
/// `Ok`; dropping it gives up a lease held (a follower takes over at once).
#[allow(clippy::too_many_arguments)]
async fn lead(
    client: async_nats::Client,
    log: Arc<JetStreamLog>,
    secrets: Arc<dyn SecretStore>,
    lease: Lease,
    telemetry: Telemetry,
    name: &str,
    node_timeout: Duration,
    limits: Limits,
    leading: watch::Sender<bool>,
    snapshots: Option<gantry_actors::actor::scheduler::SnapshotOptions>,
    audit: gantry_actors::actor::auditor::AuditSettings,
) -> Result<(), Error> {
    loop {
        let held = lease.acquire().await;
        let began = std::time::Instant::now();
        let fenced: Arc<dyn EventLog> = Arc::new(FencedLog {
            log: log.clone(),
            lease: held.validity(),
        });
        let ControlActors { scheduler, auditor } = match start_control_plane(
            fenced,
            limits.clone(),
            Source::new(name, "scheduler"),
            audit.clone(),
            Some(secrets.clone()),
            snapshots.clone(),
        )
        .await
        {
            Ok(actors) => actors,
            Err(error) => {
                tracing::error!(%error, "could not rebuild the scheduler; giving the lease up");
                drop(held);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let services = serve::serve(client.clone(), scheduler.clone())
            .await
            .map_err(setup)?;
        let tracker = actix_rt::spawn(heartbeat::track(
            scheduler.clone(),
            telemetry.clone(),
            node_timeout,
        ));
        tracing::info!(
            me = lease.me(),
            took_ms = began.elapsed().as_millis() as u64,
            "this control plane leads"
        );
        eprintln!("gantry control plane {} leads", lease.me());
        leading.send_replace(true);
        // Dropped with this future on shutdown, `held` gives the lease up.
        let mut held = held;
        held.lost().await;
        tracing::error!(
            "leadership lost; the scheduler stops and this control plane follows again"
        );
        for task in services {
            task.abort();
        }
        tracker.abort();
        scheduler.do_send(Stop);
        auditor.do_send(gantry_actors::actor::auditor::Retire);
        drop(auditor);
    }
}

/// `gantry node`: runs a worker node until `shutdown` resolves, then drains.
pub async fn node(
    options: NodeRunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    if !wire::valid_node_name(&options.name) {
        return Err(Error::Setup(format!(
            "node name {:?}: use 1 to 64 letters, digits, '-' or '_'",
            options.name
        )));
    }
    let data = options.data.clone();
    std::fs::create_dir_all(&data)?;
    let this = crate::node::this_node(&data)?;
    let client = options
        .nats
        .connect(
            &format!("gantry node {}", options.name),
            Some(crate::nats::wire::node_inbox_prefix(&options.name)),
        )
        .await
        .map_err(setup)?;
    // Nodes read the log their control plane made; they never append to it.
    let log: Arc<dyn EventLog> = Arc::new(open_existing(client.clone()).await?);
    let replica = Replica::follow(log.clone());
    let control: Arc<dyn Control> =
        Arc::new(Remote::node(client.clone(), options.name.clone(), replica));

    let executor = choose_executor(options.executor, &data).await?;
    let inventory: Arc<dyn GpuInventory> = match options.fake_gpus.clone() {
        Some(gpus) => Arc::new(FakeInventory::new(gpus)),
        None => Arc::new(NvmlInventory::detect()),
    };
    let logs_dir = data.join("logs");
    let actors = start_node(
        control,
        log,
        executor.clone(),
        inventory,
        NodeOptions {
            node_id: options.name.clone(),
            hostname: this.hostname.clone(),
            cpu_millis: this.cpu_millis,
            memory_bytes: this.memory_bytes,
            labels: options.labels.clone(),
            logs_dir: logs_dir.clone(),
            limits: Limits::default(),
            gpu_probe_every: Duration::from_secs(30),
            join_patience: Duration::from_secs(60),
            artifacts: crate::up::artifact_store(&options.s3, None).await?,
            // A worker node runs no Scheduler and no Auditor.
            snapshots: None,
            audit: Default::default(),
        },
        None,
    )
    .await
    .map_err(|e| Error::Setup(format!("joining the fleet: {e}")))?;
    let beats = actix_rt::spawn(heartbeat::send(
        client.clone(),
        options.name.clone(),
        actors.worker.clone(),
        actors.telemetry.clone(),
    ));
    let js = async_nats::jetstream::new(client.clone());
    let shipping = actix_rt::spawn(output::ship(js, options.name.clone(), logs_dir));
    tracing::info!(node = %options.name, executor = executor.kind(), sandboxed = executor.sandboxed(), "gantry node is up");
    eprintln!(
        "gantry node {} joined (executor {}{}), data in {}",
        options.name,
        executor.kind(),
        if executor.sandboxed() {
            ""
        } else {
            ", NOT a sandbox"
        },
        data.display()
    );
    shutdown.await;
    // Drain: no new work; what runs here finishes (up to the drain timeout) or is handed
    // back, its end reported and its output shipped; then leave.
    eprintln!("gantry node {}: draining", options.name);
    let _ = actors.supervisor.send(Drain("node stopping".into())).await;
    if options.on_stop == OnStop::HandBack {
        let handed = actors.worker.send(HandBack).await.unwrap_or(0);
        tracing::info!(handed, "running attempts handed back");
    }
    let deadline = tokio::time::Instant::now() + options.drain_timeout;
    loop {
        let running = actors
            .worker
            .send(GetWorkerStats)
            .await
            .map(|s| s.running)
            .unwrap_or(0);
        if running == 0 || tokio::time::Instant::now() >= deadline {
            if running > 0 {
                tracing::warn!(
                    running,
                    "drain timeout: leaving with attempts still running"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more round of output shipping and heartbeats for what just ended.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    beats.abort();
    shipping.abort();
    Ok(())
}

async fn open_existing(client: async_nats::Client) -> Result<JetStreamLog, Error> {
    // The control plane makes the stream; a node started first waits for it.
    let mut said = false;
    loop {
        match JetStreamLog::open(client.clone(), JetStreamOptions::default(), false).await {
            Ok(log) => return Ok(log),
            Err(error) => {
                if !said {
                    tracing::warn!(%error, "the event log is not there yet; waiting for a control plane");
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

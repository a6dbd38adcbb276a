//! The Supervisor: starts the other actors in order, lets actix restart the ones that stop
//! (Worker, Auditor, GpuProbe are `Supervised`), records this node joining, and answers health:
//! degraded when the log, the container engine or the audit is not right.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::{NodeDrained, NodeJoined};
use gantry_events::{Event, EventLog, Source};
use serde::Serialize;

use crate::actor::auditor::{AuditSettings, AuditStatus, Auditor, GetAudit};
use crate::actor::gpu_probe::GpuProbe;
use crate::actor::scheduler::{CommandError, Scheduler, SnapshotOptions};
use crate::actor::worker::{Rejoin, Worker};
use crate::artifacts::ArtifactStore;
use crate::control::{Control, Local, until_answered};
use crate::executor::{Executor, GpuInventory};
use crate::secrets::SecretStore;
use crate::spec::Limits;
use crate::telemetry::Telemetry;

/// What a node is started with.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: String,
    pub hostname: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// Where attempts' output is kept.
    pub logs_dir: PathBuf,
    pub limits: Limits,
    pub gpu_probe_every: Duration,
    /// How long joining waits for a control plane to answer.
    pub join_patience: Duration,
    /// Where attempts' outputs are stored (`None`: outputs are not collected on this node).
    pub artifacts: Option<Arc<dyn ArtifactStore>>,
    /// Where the Scheduler saves its state, when this process runs it (`None`: every start
    /// replays the whole log).
    pub snapshots: Option<SnapshotOptions>,
    /// How the Auditor checkpoints, signs and re-checks, when this process runs it.
    pub audit: AuditSettings,
}

/// Addresses of the running actors.
#[derive(Debug, Clone)]
pub struct Actors {
    pub scheduler: Addr<Scheduler>,
    pub worker: Addr<Worker>,
    pub auditor: Addr<Auditor>,
    pub gpu_probe: Addr<GpuProbe>,
    pub supervisor: Addr<Supervisor>,
    /// The latest GPU samples.
    pub telemetry: Telemetry,
}

/// One check of `/readyz` and `gantry nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// The node's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    pub log: Check,
    pub executor: Check,
    pub gpus: Check,
    pub audit: Check,
}

pub struct Supervisor {
    options: NodeOptions,
    log: Arc<dyn EventLog>,
    executor: Arc<dyn Executor>,
    inventory: Arc<dyn GpuInventory>,
    control: Arc<dyn Control>,
    /// The auditor, where this process runs one (a control plane, or embedded).
    auditor: Option<Addr<Auditor>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("node", &self.options.node_id)
            .finish()
    }
}

/// The actors of a worker node: Worker, GpuProbe and the Supervisor answering health.
#[derive(Debug, Clone)]
pub struct NodeActors {
    pub worker: Addr<Worker>,
    pub gpu_probe: Addr<GpuProbe>,
    pub supervisor: Addr<Supervisor>,
    pub telemetry: Telemetry,
}

/// The control plane's actors: the Scheduler (the one appender) and the Auditor.
#[derive(Debug, Clone)]
pub struct ControlActors {
    pub scheduler: Addr<Scheduler>,
    pub auditor: Addr<Auditor>,
}

/// Rebuilds the Scheduler from the log and starts it with the Auditor. Must run inside an
/// actix System.
pub async fn start_control_plane(
    log: Arc<dyn EventLog>,
    limits: Limits,
    source: Source,
    audit: AuditSettings,
    secrets: Option<Arc<dyn SecretStore>>,
    snapshots: Option<SnapshotOptions>,
) -> Result<ControlActors, gantry_events::Error> {
    let scheduler = Scheduler::rebuild(log.clone(), limits, source, snapshots)
        .await?
        .with_secrets(secrets)
        .start();
    let auditor = {
        let scheduler = scheduler.clone();
        actix::Supervisor::start(move |_| Auditor::new(log, scheduler, audit))
    };
    Ok(ControlActors { scheduler, auditor })
}

/// Records this node joining (retried until a control plane answers) and starts its Worker
/// and GpuProbe. `auditor`: the control plane's, when it runs in this process.
pub async fn start_node(
    control: Arc<dyn Control>,
    log: Arc<dyn EventLog>,
    executor: Arc<dyn Executor>,
    inventory: Arc<dyn GpuInventory>,
    options: NodeOptions,
    auditor: Option<Addr<Auditor>>,
) -> Result<NodeActors, CommandError> {
    let gpus = match inventory.gpus() {
        Ok(gpus) => crate::executor::inventory_only(gpus),
        Err(error) => {
            tracing::warn!(%error, "GPU inventory failed; joining as a CPU-only node");
            Vec::new()
        }
    };
    if !executor.sandboxed() {
        tracing::warn!(
            executor = executor.kind(),
            "no container engine: jobs run as local processes, NOT in a sandbox"
        );
    }
    let joined = {
        let (options, executor, inventory) = (options.clone(), executor.clone(), inventory.clone());
        move || -> Event {
            let gpus = inventory
                .gpus()
                .map(crate::executor::inventory_only)
                .unwrap_or_default();
            NodeJoined {
                node_id: options.node_id.clone(),
                hostname: options.hostname.clone(),
                cpu_millis: options.cpu_millis,
                memory_bytes: options.memory_bytes,
                gpus,
                executor: executor.kind().to_owned(),
                labels: options.labels.clone(),
            }
            .into()
        }
    };
    let first = NodeJoined {
        node_id: options.node_id.clone(),
        hostname: options.hostname.clone(),
        cpu_millis: options.cpu_millis,
        memory_bytes: options.memory_bytes,
        gpus: gpus.clone(),
        executor: executor.kind().to_owned(),
        labels: options.labels.clone(),
    };
    let first: Event = first.into();
    until_answered("joining", Some(options.join_patience), || {
        control.record(first.clone())
    })
    .await?;

    let rejoin: Rejoin = Arc::new(joined);
    let worker = {
        let (node, executor, control, log, dir, artifacts) = (
            options.node_id.clone(),
            executor.clone(),
            control.clone(),
            log.clone(),
            options.logs_dir.clone(),
            options.artifacts.clone(),
        );
        actix::Supervisor::start(move |_| {
            Worker::new(node, executor, control, log, dir)
                .rejoin_with(rejoin.clone())
                .with_artifacts(artifacts.clone())
        })
    };
    let telemetry = Telemetry::default();
    let gpu_probe = {
        let (node, inventory, control, every) = (
            options.node_id.clone(),
            inventory.clone(),
            control.clone(),
            options.gpu_probe_every,
        );
        let telemetry = telemetry.clone();
        actix::Supervisor::start(move |_| {
            GpuProbe::new(node, inventory, control, every, telemetry.clone(), gpus)
        })
    };
    let supervisor = Supervisor {
        options,
        log,
        executor,
        inventory,
        control,
        auditor,
    }
    .start();
    Ok(NodeActors {
        worker,
        gpu_probe,
        supervisor,
        telemetry,
    })
}

impl Supervisor {
    /// Embedded: rebuilds state from the log and starts every actor in this process. Must run
    /// inside an actix System.
    pub async fn start(
        log: Arc<dyn EventLog>,
        executor: Arc<dyn Executor>,
        inventory: Arc<dyn GpuInventory>,
        options: NodeOptions,
        secrets: Option<Arc<dyn SecretStore>>,
    ) -> Result<Actors, gantry_events::Error> {
        let source = Source::new(&options.node_id, "scheduler");
        let ControlActors { scheduler, auditor } = start_control_plane(
            log.clone(),
            options.limits.clone(),
            source,
            options.audit.clone(),
            secrets,
            options.snapshots.clone(),
        )
        .await?;
        let control: Arc<dyn Control> = Arc::new(Local(scheduler.clone()));
        let node = start_node(
            control,
            log,
            executor,
            inventory,
            options,
            Some(auditor.clone()),
        )
        .await
        .map_err(|e| gantry_events::Error::backend("recording the node", e.to_string()))?;
        Ok(Actors {
            scheduler,
            worker: node.worker,
            auditor,
            gpu_probe: node.gpu_probe,
            supervisor: node.supervisor,
            telemetry: node.telemetry,
        })
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// The node's health now.
#[derive(Debug, Message)]
#[rtype(result = "Health")]
pub struct GetHealth;

impl Handler<GetHealth> for Supervisor {
    type Result = ResponseFuture<Health>;

    fn handle(&mut self, _: GetHealth, _: &mut Context<Self>) -> Self::Result {
        let log = self.log.clone();
        let executor = self.executor.clone();
        let inventory = self.inventory.clone();
        let auditor = self.auditor.clone();
        Box::pin(async move {
            let log = match (log.fault(), log.head().await) {
                // Poisoned by a failed fsync, or damaged: it takes no appends.
                (Some(fault), _) => Check {
                    ok: false,
                    detail: fault,
                },
                (None, Ok(head)) => Check {
                    ok: true,
                    detail: format!("head {}", head.seq),
                },
                (None, Err(e)) => Check {
                    ok: false,
                    detail: e.to_string(),
                },
            };
            let executor = match executor.ping().await {
                Ok(()) if executor.sandboxed() => Check {
                    ok: true,
                    detail: format!("{} (sandboxed)", executor.kind()),
                },
                Ok(()) => Check {
                    ok: true,
                    detail: format!("{} (not a sandbox)", executor.kind()),
                },
                Err(e) => Check {
                    ok: false,
                    detail: format!("{}: {e}", executor.kind()),
                },
            };
            let gpus = match (inventory.source(), inventory.gpus()) {
                (source, Ok(gpus)) => Check {
                    ok: true,
                    detail: format!("{source}: {} GPUs", gpus.len()),
                },
                (source, Err(e)) => Check {
                    ok: false,
                    detail: format!("{source}: {e}"),
                },
            };
            let audit = match auditor {
                Some(a) => match a.send(GetAudit).await {
                    Ok(AuditStatus {
                        broken: Some(b), ..
                    }) => Check {
                        ok: false,
                        detail: b.to_string(),
                    },
                    Ok(status) => Check {
                        ok: true,
                        detail: format!("verified through {}", status.verified_seq),
                    },
                    Err(e) => Check {
                        ok: false,
                        detail: e.to_string(),
                    },
                },
                None => Check {
                    ok: true,
                    detail: "runs on the control plane".into(),
                },
            };
            let all_ok = log.ok && executor.ok && gpus.ok && audit.ok;
            Health {
                status: if all_ok { "ok" } else { "degraded" },
                log,
                executor,
                gpus,
                audit,
            }
        })
    }
}

/// Records the node leaving before shutdown.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain(pub String);

impl Handler<Drain> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) -> Self::Result {
        let control = self.control.clone();
        let node_id = self.options.node_id.clone();
        Box::pin(async move {
            let drained = NodeDrained {
                node_id,
                reason: msg.0,
                by: None,
            };
            if let Err(e) = control.record(drained.into()).await {
                tracing::warn!(error = %e, "could not record the node draining");
            }
        })
    }
}

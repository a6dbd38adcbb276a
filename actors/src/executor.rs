//! How a worker runs an attempt: the `Executor` trait. Implementations live in `gantry-nodes`
//! (Docker through bollard, and a local process executor for machines without an engine).

use std::path::PathBuf;

use futures::future::BoxFuture;
use gantry_events::event::{JobId, JobSpec};

/// One attempt to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub job_id: JobId,
    pub attempt: u32,
    pub spec: JobSpec,
    /// GPUs reserved for this attempt (UUIDs).
    pub gpu_uuids: Vec<String>,
    /// Where the attempt's stdout and stderr go, one timestamped line each, in order.
    pub log_path: PathBuf,
    /// When the log recorded this attempt's start (`job.started`), if it has: a timeout
    /// counts from there, not from a re-attach after a restart.
    pub started_at_ms: Option<u64>,
    /// The values of `spec.secrets`, read from the store for this attempt: set in the job's
    /// environment at start (never in a container's configuration) and masked in its output.
    pub secrets: crate::secrets::SecretValues,
}

/// How an attempt ended, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited (0 is success).
    Exited { code: i64, oom_killed: bool },
    /// The image is not there and could not be pulled.
    ImageUnavailable { reason: String },
    /// Pulling the image took longer than the executor's pull timeout.
    PullTimedOut { after_secs: u64 },
    /// The executor failed to run it at all.
    Failed { message: String },
}

/// An attempt found after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Still running: wait for it with this handle.
    Running(String),
    /// It ended while gantry was down; [`Executor::wait`] on this handle reads how.
    Exited(String),
}

impl Found {
    pub fn handle(&self) -> &str {
        match self {
            Found::Running(h) | Found::Exited(h) => h,
        }
    }
}

/// Runs attempts somewhere. Every method is safe to call concurrently for different attempts.
pub trait Executor: Send + Sync + 'static {
    /// `docker` or `process`.
    fn kind(&self) -> &'static str;

    /// Whether attempts are isolated (containers) or run as plain local processes.
    fn sandboxed(&self) -> bool;

    /// Whether the memory, CPU and pids limits of the attempts this executor starts are
    /// enforced (the process executor needs writable cgroups for that). Recorded with every
    /// attempt's start, so a job that ran without its limits says so.
    fn limits_enforced(&self) -> bool {
        true
    }

    /// Creates and starts the attempt; returns its handle (container or process id), or the
    /// outcome if it could not start. A failed start leaves nothing running. The future may be
    /// dropped at any await (a cancel or timeout during an image pull or a container start):
    /// the worker then calls [`Executor::discard`], which removes whatever it had made.
    fn start<'a>(&'a self, run: &'a RunSpec) -> BoxFuture<'a, Result<String, Outcome>>;

    /// Waits for the attempt to end, writing its output to `run.log_path`, then cleans up
    /// (containers are always removed). Also for an attempt [`Executor::find`] found already
    /// exited: its real exit code and output are read, then it is removed. One attempt's
    /// output is collected by one task, even when `wait` is called again after a re-attach.
    fn wait<'a>(&'a self, handle: &'a str, run: &'a RunSpec) -> BoxFuture<'a, Outcome>;

    /// Removes everything of this attempt (container or process group), running or not:
    /// after a start that was abandoned half way.
    fn discard<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, ()>;

    /// Stops the attempt now (SIGKILL to the container or the whole process group).
    fn kill<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, ()>;

    /// What the started attempt runs, resolved (an image id, an executable's path and hash),
    /// for its record; `None` when it cannot be told.
    fn resolve<'a>(&'a self, _run: &'a RunSpec, _handle: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }

    /// Where the ended attempt's outputs (`$GANTRY_OUTPUT_DIR`) can be read on this machine,
    /// if this executor gives jobs one (`None`: outputs are not collected).
    fn outputs(&self, _job_id: JobId, _attempt: u32) -> Option<PathBuf> {
        None
    }

    /// Where the worker puts an attempt's inputs before it starts; the executor shows that
    /// folder to the job, read-only, as `$GANTRY_INPUT_DIR` when the spec has inputs (`None`:
    /// this executor cannot give jobs inputs).
    fn inputs(&self, _job_id: JobId, _attempt: u32) -> Option<PathBuf> {
        None
    }

    /// Whether the engine answers (`/readyz`, health).
    fn ping(&self) -> BoxFuture<'_, Result<(), String>>;

    /// After a restart: the attempt as the executor still has it — running, or exited while
    /// nobody watched (its exit and output not yet collected) — or `None` when it is gone
    /// (a local process cannot be re-attached: it is stopped and `None` returned).
    fn find<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, Option<Found>>;
}

/// The inventory part of GPUs, as the log records it: utilisation is telemetry, which moves all
/// the time and never goes into the log.
pub fn inventory_only(gpus: Vec<gantry_events::event::Gpu>) -> Vec<gantry_events::event::Gpu> {
    gpus.into_iter()
        .map(|g| gantry_events::event::Gpu {
            utilisation_pct: None,
            ..g
        })
        .collect()
}

/// A node's GPUs: NVML on real nodes, a fixed list in tests.
pub trait GpuInventory: Send + Sync + 'static {
    /// Where the list comes from: `nvml`, `none` (no NVIDIA library: a CPU-only node) or
    /// `fake`.
    fn source(&self) -> &'static str;

    /// The GPUs now, with utilisation. An error means the library is there but failed. A GPU
    /// the library reports as lost (fallen off the bus) is left out, so it disappears from the
    /// inventory.
    fn gpus(&self) -> Result<Vec<gantry_events::event::Gpu>, String>;

    /// A telemetry sample of every GPU. By default only what [`GpuInventory::gpus`] says.
    fn samples(&self) -> Result<Vec<crate::telemetry::GpuSample>, String> {
        let now = gantry_events::record::now_ns();
        Ok(self
            .gpus()?
            .into_iter()
            .map(|g| crate::telemetry::GpuSample {
                uuid: g.uuid,
                utilisation_pct: g.utilisation_pct,
                memory_used_bytes: None,
                temperature_c: None,
                power_watts: None,
                sampled_ns: now,
            })
            .collect())
    }
}

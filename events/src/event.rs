//! The typed events: one enum per stream, one struct per event type.
//!
//! Every event type has a stable name (`job.submitted`) and an explicit version. The name and
//! version are written into the record next to the payload, so a reader picks the decoder for
//! exactly the shape that was written; a version it does not know is refused
//! (`unknown type`), never guessed at. Today every type is at version 1. When a payload
//! changes shape:
//!
//! - adding a field with a default (`#[serde(default)]`), or a variant to an enum inside a
//!   payload, keeps old records decoding: no new version is needed;
//! - anything else (renaming, removing, changing a field's meaning) will need a new version and
//!   an upcast from the old one in [`decode`]'s table. No type has needed one yet, so the table
//!   has no upcast path today. Golden files in `events/testdata/golden` check that old records
//!   keep decoding and hashing the same.
//!
//! Payloads are encoded as MessagePack maps with field names as keys (see `events/FORMAT.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Hash;

/// Identifies a job. UUID v7, so ids sort by submission time.
pub type JobId = Uuid;

/// Identifies a pipeline. UUID v7, like job ids.
pub type PipelineId = Uuid;

/// Every event gantry records, grouped by stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    Job(JobEvent),
    Node(NodeEvent),
    Artifact(ArtifactEvent),
    Audit(AuditEvent),
    Key(KeyEvent),
    Secret(SecretEvent),
    Pipeline(PipelineEvent),
    Webhook(WebhookEvent),
}

/// The job lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum JobEvent {
    Submitted(JobSubmitted),
    Placed(JobPlaced),
    Started(JobStarted),
    Succeeded(JobSucceeded),
    Failed(JobFailed),
    RetryScheduled(JobRetryScheduled),
    CancelRequested(JobCancelRequested),
    Cancelled(JobCancelled),
    DeadLettered(JobDeadLettered),
    Waiting(JobWaiting),
}

/// Worker nodes joining, changing and leaving.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NodeEvent {
    Joined(NodeJoined),
    GpusObserved(NodeGpusObserved),
    Lost(NodeLost),
    Drained(NodeDrained),
    Cordoned(NodeCordoned),
    Uncordoned(NodeUncordoned),
}

/// Files produced by jobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ArtifactEvent {
    Stored(ArtifactStored),
    Pruned(ArtifactPruned),
}

/// Webhooks: where events are POSTed as they happen.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WebhookEvent {
    Created(WebhookCreated),
    Deleted(WebhookDeleted),
}

/// Pipelines: stages of jobs that run in dependency order and pass outputs to inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PipelineEvent {
    Submitted(PipelineSubmitted),
    StageSkipped(PipelineStageSkipped),
    Cancelled(PipelineCancelled),
}

/// API keys of the gateway: who may do what.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum KeyEvent {
    Created(KeyCreated),
    Revoked(KeyRevoked),
}

/// Secrets kept for jobs: names and keyed hashes, never values.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SecretEvent {
    Set(SecretSet),
    Deleted(SecretDeleted),
}

/// The auditor's own records.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AuditEvent {
    Checkpointed(AuditCheckpointed),
}

// ---------------------------------------------------------------------------------------------
// Job payloads

/// A job was accepted. Carries the whole, validated specification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubmitted {
    pub job_id: JobId,
    /// Boxed: specs are large and every other event is small.
    pub spec: Box<JobSpec>,
    /// The API key (its id, never the key) that submitted the job; absent when the gateway
    /// ran without authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The group the job belongs to: only keys of this group (and admins) see or touch it.
    /// Absent: the `default` group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The pipeline stage this job runs, when a pipeline started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<StageOf>,
}

/// A pipeline's stage, as a job names the stage it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageOf {
    #[schema(value_type = String, format = Uuid)]
    pub pipeline_id: PipelineId,
    pub stage: String,
}

/// What a user asked to run. Validation happens at the edge (gateway, CLI) before this is
/// recorded; a recorded spec is always valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// Wall-clock limit of one attempt, in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Environment variables whose values are secrets: the name of each in the secret store
    /// and a keyed hash of its value at submission, never the value. The node reads the
    /// values from the store when it starts an attempt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Artifacts of earlier jobs this job reads, fetched (and their SHA-256 checked) before
    /// it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputRef>,
    /// How long the job's stored outputs are kept after it ends, in seconds (absent: its
    /// queue's retention, else kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_ttl_secs: Option<u64>,
}

/// An earlier job's artifact a job reads, as resolved when it was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputRef {
    /// The job that stored it, and its name there.
    #[schema(value_type = String, format = Uuid)]
    pub from: JobId,
    pub artifact: String,
    /// Where the job finds it, relative to `$GANTRY_INPUT_DIR`.
    pub path: String,
    pub sha256: Hash,
    pub size_bytes: u64,
    /// Where the bytes are in the artifact store.
    pub location: String,
}

/// Where a secret environment value is kept, and a keyed hash (HMAC-SHA256 under a key
/// derived from the server's secret key) of the value it had when the job was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretRef {
    /// The secret's name in the store, e.g. `vision/hf-token` (a stored secret of group
    /// `vision`) or `vision/job-<id>/TOKEN` (a value given with the job).
    pub name: String,
    pub hash: Hash,
}

fn default_queue() -> String {
    "default".to_owned()
}

/// Resources one attempt reserves on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Resources {
    /// Thousandths of a CPU core.
    #[serde(default)]
    pub cpu_millis: u32,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: GpuRequest,
}

/// GPUs one attempt needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct GpuRequest {
    #[serde(default)]
    pub count: u32,
    /// Substring the GPU's product name must contain, e.g. `A100`.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub min_memory_bytes: Option<u64>,
}

/// When and how often a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means never retry.
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Retry failures caused by the job itself (non-zero exit, OOM, timeout), not only
    /// infrastructure failures.
    #[serde(default)]
    pub retry_user_failures: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            retry_user_failures: false,
        }
    }
}

/// Network access of a job's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all (the default).
    #[default]
    None,
    /// The container engine's default bridge network.
    Bridge,
}

/// An attempt of a job was placed on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPlaced {
    pub job_id: JobId,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub node_id: String,
    /// UUIDs of the GPUs reserved for this attempt.
    #[serde(default)]
    pub gpu_uuids: Vec<String>,
}

/// An attempt's process or container started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: JobId,
    pub attempt: u32,
    pub node_id: String,
    /// Container id, or process id for the local executor.
    #[serde(default)]
    pub handle: Option<String>,
    /// Whether the node enforced the attempt's memory, CPU and pids limits (the local process
    /// executor cannot without writable cgroups). Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_enforced: Option<bool>,
    /// What ran, resolved by the node: Docker, the image id (`sha256:…`) the container was
    /// made from; the process executor, the executable's path and SHA-256 (`/bin/sh@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// An attempt exited with status 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSucceeded {
    pub job_id: JobId,
    pub attempt: u32,
    pub duration_ms: u64,
}

/// An attempt ended without success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailed {
    pub job_id: JobId,
    pub attempt: u32,
    pub cause: FailureCause,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureCause {
    /// The job's process exited with a non-zero status.
    NonZeroExit { code: i64 },
    /// The kernel killed the job for exceeding its memory limit.
    OomKilled,
    /// The attempt ran past its timeout and was stopped.
    Timeout { after_secs: u64 },
    /// The image could not be found or pulled.
    ImageUnavailable { image: String, reason: String },
    /// The node running the attempt went away.
    NodeLost { node_id: String },
    /// The executor itself failed (engine error, bad mount, …).
    ExecutorError { message: String },
    /// The attempt was stopped because the job was cancelled.
    Cancelled,
    /// Pulling the image took longer than the node's pull timeout.
    ImagePullTimedOut { image: String, after_secs: u64 },
    /// The node did not start the placed attempt within the placement lease; the attempt was
    /// taken back and the job queued again.
    PlacementExpired { node_id: String, after_secs: u64 },
    /// The attempt left more outputs than a job may (files or bytes); the ones within the
    /// limit were stored.
    OutputsTooLarge { limit: String },
    /// An input's bytes did not hash to the SHA-256 recorded for it (or could not be read);
    /// the job was not started.
    InputCorrupt { artifact: String, reason: String },
}

/// A failed job will run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRetryScheduled {
    pub job_id: JobId,
    /// The attempt that will run next.
    pub next_attempt: u32,
    /// Unix time in milliseconds before which the next attempt is not placed.
    pub not_before_ms: u64,
}

/// Someone asked for a job to be cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCancelRequested {
    pub job_id: JobId,
    #[serde(default)]
    pub reason: Option<String>,
    /// The API key (its id) whose request caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A job was cancelled; it will not run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCancelled {
    pub job_id: JobId,
    /// The attempt that was running when the job was cancelled, if any.
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// A job failed for the last time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDeadLettered {
    pub job_id: JobId,
    pub attempts: u32,
    pub last_cause: FailureCause,
}

/// Why a queued job is not placed, recorded when the reason changes (not on every scheduling
/// pass). A placement ends the wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWaiting {
    pub job_id: JobId,
    pub reason: PendingReason,
}

/// A pending reason, in the manner of Slurm's: a stable code, a sentence for people, and
/// whether the job can never fit any node that has ever joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingReason {
    /// `no_nodes`, `no_gpu_model`, `gpu_memory`, `too_many_gpus`, `too_many_cpus`,
    /// `too_much_memory`, `nodes_unavailable` or `resources_busy`.
    pub code: String,
    pub message: String,
    /// No node that has ever joined could run it, even empty.
    #[serde(default)]
    pub unschedulable: bool,
}

// ---------------------------------------------------------------------------------------------
// Node payloads

/// A GPU as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Gpu {
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
    #[serde(default)]
    pub utilisation_pct: Option<u8>,
    #[serde(default)]
    pub driver_version: Option<String>,
}

/// A node joined the fleet with this capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeJoined {
    pub node_id: String,
    pub hostname: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// How the node runs jobs, e.g. `docker` or `process` (no sandbox).
    pub executor: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A node's GPU inventory changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeGpusObserved {
    pub node_id: String,
    pub gpus: Vec<Gpu>,
}

/// A node stopped answering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLost {
    pub node_id: String,
    pub reason: String,
}

/// A node takes no more work (shutdown or maintenance); the attempts running there finish
/// or are handed back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDrained {
    pub node_id: String,
    pub reason: String,
    /// The API key (its id) whose request caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An operator stopped new work going to a node; what runs there goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCordoned {
    pub node_id: String,
    pub reason: String,
    /// The API key (its id) whose request caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A cordoned or drained node takes work again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeUncordoned {
    pub node_id: String,
    /// The API key (its id) whose request caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Artifact and audit payloads

/// A job's output file was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactStored {
    pub job_id: JobId,
    pub attempt: u32,
    pub name: String,
    /// Where the bytes are: an object key or a path under the artifact root.
    pub location: String,
    pub sha256: Hash,
    pub size_bytes: u64,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// A stored artifact's bytes were deleted from the artifact store by retention. Its
/// `artifact.stored` stays in the log (which is never pruned) and still names its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactPruned {
    pub job_id: JobId,
    pub attempt: u32,
    pub name: String,
    pub sha256: Hash,
    /// Why, e.g. `ttl 7d after the job ended`.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Webhook payloads

/// A webhook was registered: events of `group` that match its filters are POSTed to `url`,
/// signed with its secret (kept in the secret store; the log has only a keyed hash of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookCreated {
    pub webhook_id: String,
    pub url: String,
    /// Event types (`job.succeeded`) or streams (`job.*`); empty: every type.
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    pub group: String,
    /// HMAC-SHA256 of the signing secret under the server's secret key.
    pub secret_hash: Hash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A webhook was deleted: nothing more is delivered to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDeleted {
    pub webhook_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Pipeline payloads

/// A pipeline was accepted: every stage, validated, with its dependencies. Stages start as
/// `job.submitted` events (carrying [`StageOf`]) once their dependencies have ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSubmitted {
    pub pipeline_id: PipelineId,
    pub name: String,
    /// In an order where every stage comes after its dependencies.
    pub stages: Vec<PipelineStage>,
    /// The API key (its id) that submitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The group its jobs belong to; absent: the `default` group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineStage {
    pub name: String,
    /// Stages that must end first (those it reads inputs from included).
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub run_if: RunIf,
    /// Outputs of earlier stages this stage reads, resolved to stored artifacts when it starts.
    #[serde(default)]
    pub inputs: Vec<StageInput>,
    /// The job the stage runs (its own `inputs` resolved at submission).
    pub spec: Box<JobSpec>,
}

/// When a stage runs once its dependencies have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunIf {
    /// Only if every dependency succeeded; otherwise it is skipped (the default).
    #[default]
    OnSuccess,
    /// Whatever the dependencies' outcome (e.g. a report or a clean-up stage).
    Always,
}

/// An output of an earlier stage that a stage reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageInput {
    pub stage: String,
    pub artifact: String,
    /// Where the job finds it, relative to `$GANTRY_INPUT_DIR`.
    pub path: String,
}

/// A stage will not run: a dependency did not succeed, an input it reads was not stored, or
/// the pipeline was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineStageSkipped {
    pub pipeline_id: PipelineId,
    pub stage: String,
    pub reason: String,
}

/// A pipeline was cancelled: no stage starts any more; its running jobs are cancelled in the
/// same batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineCancelled {
    pub pipeline_id: PipelineId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Key payloads

/// An API key was created. The key itself is never recorded: only its id and a keyed hash
/// (HMAC-SHA256 under the server's secret key), which the gateway compares in constant time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key_id: String,
    pub name: String,
    /// `admin`, `operator`, `submitter` or `viewer`.
    pub role: String,
    pub group: String,
    pub hash: Hash,
    /// The key whose request created this one (absent: created with the bootstrap token or
    /// without authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An API key was revoked; requests with it are refused from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRevoked {
    pub key_id: String,
    /// The API key (its id) whose request caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Secret payloads

/// A secret was stored (or replaced) under `name`. The value is kept encrypted in the secret
/// store; the log has only a keyed hash of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretSet {
    /// The name in the store, `<group>/<secret>`.
    pub name: String,
    pub hash: Hash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A secret was deleted; jobs that name it fail to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretDeleted {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The auditor re-verified the chain up to and including `through_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditCheckpointed {
    pub through_seq: u64,
    pub through_hash: Hash,
    /// Events verified since the previous checkpoint.
    pub events_verified: u64,
    /// The Merkle root of entries 1 to `through_seq` (`events/FORMAT.md` §6). Absent from
    /// checkpoints recorded before gantry kept the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Hash>,
    /// The checkpoint (origin, size `through_seq`, `root`) as a note signed by the Auditor's
    /// key, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Names, versions and the decoding table

/// Declares, for every event type: its enum path, stable name, current version and payload.
/// Generates `Event::type_name`, `Event::version`, `Event::encode_payload`, the decoding table
/// and the list of all types.
macro_rules! event_types {
    ($( $stream:ident ( $senum:ident ) :: $variant:ident ( $payload:ident ) = $name:literal v $version:literal ; )*) => {
        impl Event {
            /// The stable type name, e.g. `job.submitted`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Event::$stream($senum::$variant(_)) => $name, )*
                }
            }

            /// The version of the payload's shape this build writes.
            pub fn version(&self) -> u32 {
                match self {
                    $( Event::$stream($senum::$variant(_)) => $version, )*
                }
            }

            /// Appends the payload to `buf` as a MessagePack map (field names as keys).
            pub fn encode_payload_into(&self, buf: &mut Vec<u8>) -> Result<(), rmp_serde::encode::Error> {
                match self {
                    $( Event::$stream($senum::$variant(p)) => rmp_serde::encode::write_named(buf, p), )*
                }
            }
        }

        $(
            impl From<$payload> for Event {
                fn from(payload: $payload) -> Event {
                    Event::$stream($senum::$variant(payload))
                }
            }
        )*

        /// Every `(type name, current version)` this build knows.
        pub const ALL_TYPES: &[(&str, u32)] = &[ $( ($name, $version), )* ];

        /// Decodes a payload written as `type_name` at `version` (today every type is at
        /// version 1; any other version is refused).
        pub fn decode(type_name: &str, version: u32, payload: &[u8]) -> Result<Event, DecodeError> {
            match (type_name, version) {
                $( ($name, $version) => {
                    let p: $payload = decode_exact(payload)
                        .map_err(|reason| DecodeError::Payload { type_name: $name, version, reason })?;
                    Ok(Event::from(p))
                } )*
                _ => Err(DecodeError::UnknownType { type_name: type_name.to_owned(), version }),
            }
        }
    };
}

/// Decodes one MessagePack value that must fill `payload` exactly.
fn decode_exact<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let mut rd = payload;
    let value =
        T::deserialize(&mut rmp_serde::Deserializer::new(&mut rd)).map_err(|e| e.to_string())?;
    if !rd.is_empty() {
        return Err(format!("{} bytes after the payload", rd.len()));
    }
    Ok(value)
}

event_types! {
    Job(JobEvent)::Submitted(JobSubmitted) = "job.submitted" v 1;
    Job(JobEvent)::Placed(JobPlaced) = "job.placed" v 1;
    Job(JobEvent)::Started(JobStarted) = "job.started" v 1;
    Job(JobEvent)::Succeeded(JobSucceeded) = "job.succeeded" v 1;
    Job(JobEvent)::Failed(JobFailed) = "job.failed" v 1;
    Job(JobEvent)::RetryScheduled(JobRetryScheduled) = "job.retry_scheduled" v 1;
    Job(JobEvent)::CancelRequested(JobCancelRequested) = "job.cancel_requested" v 1;
    Job(JobEvent)::Cancelled(JobCancelled) = "job.cancelled" v 1;
    Job(JobEvent)::DeadLettered(JobDeadLettered) = "job.dead_lettered" v 1;
    Job(JobEvent)::Waiting(JobWaiting) = "job.waiting" v 1;
    Node(NodeEvent)::Joined(NodeJoined) = "node.joined" v 1;
    Node(NodeEvent)::GpusObserved(NodeGpusObserved) = "node.gpus_observed" v 1;
    Node(NodeEvent)::Lost(NodeLost) = "node.lost" v 1;
    Node(NodeEvent)::Drained(NodeDrained) = "node.drained" v 1;
    Node(NodeEvent)::Cordoned(NodeCordoned) = "node.cordoned" v 1;
    Node(NodeEvent)::Uncordoned(NodeUncordoned) = "node.uncordoned" v 1;
    Artifact(ArtifactEvent)::Stored(ArtifactStored) = "artifact.stored" v 1;
    Artifact(ArtifactEvent)::Pruned(ArtifactPruned) = "artifact.pruned" v 1;
    Audit(AuditEvent)::Checkpointed(AuditCheckpointed) = "audit.checkpointed" v 1;
    Key(KeyEvent)::Created(KeyCreated) = "key.created" v 1;
    Key(KeyEvent)::Revoked(KeyRevoked) = "key.revoked" v 1;
    Secret(SecretEvent)::Set(SecretSet) = "secret.set" v 1;
    Secret(SecretEvent)::Deleted(SecretDeleted) = "secret.deleted" v 1;
    Pipeline(PipelineEvent)::Submitted(PipelineSubmitted) = "pipeline.submitted" v 1;
    Pipeline(PipelineEvent)::StageSkipped(PipelineStageSkipped) = "pipeline.stage_skipped" v 1;
    Pipeline(PipelineEvent)::Cancelled(PipelineCancelled) = "pipeline.cancelled" v 1;
    Webhook(WebhookEvent)::Created(WebhookCreated) = "webhook.created" v 1;
    Webhook(WebhookEvent)::Deleted(WebhookDeleted) = "webhook.deleted" v 1;
}

impl Event {
    /// The stream this event belongs to: the part of the type name before the dot.
    pub fn stream(&self) -> &'static str {
        match self {
            Event::Job(_) => "job",
            Event::Node(_) => "node",
            Event::Artifact(_) => "artifact",
            Event::Audit(_) => "audit",
            Event::Key(_) => "key",
            Event::Secret(_) => "secret",
            Event::Pipeline(_) => "pipeline",
            Event::Webhook(_) => "webhook",
        }
    }

    /// The job this event is about, for job events and artifacts.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Event::Job(e) => Some(e.job_id()),
            Event::Artifact(ArtifactEvent::Stored(p)) => Some(p.job_id),
            Event::Artifact(ArtifactEvent::Pruned(p)) => Some(p.job_id),
            Event::Node(_)
            | Event::Audit(_)
            | Event::Key(_)
            | Event::Secret(_)
            | Event::Pipeline(_)
            | Event::Webhook(_) => None,
        }
    }
}

impl JobEvent {
    /// The job this event is about.
    pub fn job_id(&self) -> JobId {
        match self {
            JobEvent::Submitted(p) => p.job_id,
            JobEvent::Placed(p) => p.job_id,
            JobEvent::Started(p) => p.job_id,
            JobEvent::Succeeded(p) => p.job_id,
            JobEvent::Failed(p) => p.job_id,
            JobEvent::RetryScheduled(p) => p.job_id,
            JobEvent::CancelRequested(p) => p.job_id,
            JobEvent::Cancelled(p) => p.job_id,
            JobEvent::DeadLettered(p) => p.job_id,
            JobEvent::Waiting(p) => p.job_id,
        }
    }
}

/// A payload that could not be turned into an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type or version is not one this build knows (written by a newer gantry?).
    #[error("unknown event type {type_name} v{version}")]
    UnknownType { type_name: String, version: u32 },
    /// The payload does not match the type's shape.
    #[error("payload of {type_name} v{version} does not decode: {reason}")]
    Payload {
        type_name: &'static str,
        version: u32,
        reason: String,
    },
}

//! gantry's read side: views of jobs, queues, nodes and artifacts, rebuilt from the event log
//! into sled.
//!
//! Every batch of events is gathered in memory and written with one atomic sled batch together
//! with the checkpoint (the sequence and hash of the last event applied), so a view and its
//! checkpoint never disagree. Views are stored as MessagePack maps.
//! Events at or below the checkpoint are skipped, so applying an event twice changes nothing;
//! an event that does not follow the checkpoint is refused. Projections only read the log:
//! they never append, and everything here can be deleted and rebuilt (`gantry projections
//! rebuild`). A job's state is folded with the domain's own [`gantry_actors::job::Job::apply`],
//! so the views and the scheduler cannot disagree about what an event means.
//!
//! Must not depend on: `gantry-gateway`, `gantry-nodes`.

mod merkle;

use std::collections::BTreeMap;
use std::path::Path;

use gantry_actors::job::Job;
use gantry_events::event::{
    ArtifactEvent, AuditEvent, FailureCause, Gpu, JobEvent, JobId, JobSpec, KeyEvent, NodeEvent,
    PendingReason, PipelineEvent, PipelineId, RunIf, StageInput, StageOf, WebhookEvent,
};
use gantry_events::{Entry, Envelope, Event, EventLog, Hash};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use merkle::{CheckpointView, FLOOR as TREE_FLOOR, ProofError};

/// What can go wrong with the views.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed. 503.
    #[error("projection store: {0}")]
    Store(#[from] sled::Error),
    /// A stored view does not decode (written by another version?). 500.
    #[error("projection data: {0}")]
    Corrupt(String),
    /// An event was offered out of order. 500 (a bug in the caller).
    #[error("event {got} does not follow checkpoint {checkpoint}")]
    OutOfOrder { checkpoint: u64, got: u64 },
    /// The log failed while catching up. 503.
    #[error(transparent)]
    Log(#[from] gantry_events::Error),
}

/// Where the views stand in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Hash,
}

/// A job as the gateway shows it: one shape, each fact once. What the user asked for is in
/// `spec`; where the job stands is at the top level; every attempt, ended or not, in
/// `attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// `queued`, `placed`, `running`, `succeeded`, `cancelled` or `dead_lettered`.
    pub state: String,
    /// The current (or last) attempt's number; 0 before the first placement.
    pub attempt: u32,
    /// Node and GPUs of the current attempt while it is placed or running (each attempt keeps
    /// its own in `attempts`).
    pub node: Option<String>,
    pub gpu_uuids: Vec<String>,
    pub cancel_requested: bool,
    pub last_cause: Option<FailureCause>,
    /// Why a queued job is not placed (the last `job.waiting`), while it waits.
    pub pending: Option<PendingReason>,
    /// Unix ns of submission and of the last change.
    pub submitted_ns: u64,
    pub updated_ns: u64,
    /// Sequence of the last event about this job.
    pub updated_seq: u64,
    pub spec: JobSpec,
    pub attempts: Vec<AttemptView>,
    /// The group the job belongs to.
    pub group: String,
    /// The API key (its id) that submitted it; absent without authentication.
    pub submitted_by: Option<String>,
    /// The pipeline stage it runs, when a pipeline started it.
    pub pipeline: Option<StageOf>,
}

/// One attempt of a job: where it ran, on which GPUs, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub node: String,
    pub gpus: Vec<AttemptGpu>,
    /// `placed`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub placed_ns: u64,
    pub started_ns: Option<u64>,
    pub ended_ns: Option<u64>,
    /// The process's exit status, when it exited.
    pub exit_code: Option<i64>,
    /// Why it failed.
    pub cause: Option<FailureCause>,
    pub duration_ms: Option<u64>,
    /// Whether the node enforced its memory, CPU and pids limits (`None`: not reported).
    pub limits_enforced: Option<bool>,
}

/// A GPU an attempt held, as its node described it when the attempt was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptGpu {
    pub uuid: String,
    pub name: Option<String>,
    pub memory_bytes: Option<u64>,
    pub driver_version: Option<String>,
}

/// What the views store per job: the domain job folded with the domain's own `apply`, and what
/// only the views keep (times, attempts). [`JobView`] is made from it on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobRecord {
    job: Job,
    #[serde(default)]
    attempts: Vec<AttemptView>,
    /// Every event about the job (its outputs' included), where the log has it.
    #[serde(default)]
    history: Vec<EventRef>,
    submitted_ns: u64,
    updated_ns: u64,
    updated_seq: u64,
}

impl JobRecord {
    fn view(self) -> JobView {
        let job = self.job;
        let group = job.group().to_owned();
        JobView {
            id: job.id,
            state: job.state.as_str().to_owned(),
            attempt: job.attempt,
            node: job.node,
            gpu_uuids: job.gpu_uuids,
            cancel_requested: job.cancel_requested,
            last_cause: job.last_cause,
            pending: job.waiting,
            submitted_ns: self.submitted_ns,
            updated_ns: self.updated_ns,
            updated_seq: self.updated_seq,
            group,
            submitted_by: job.by,
            pipeline: job.pipeline,
            spec: job.spec,
            attempts: self.attempts,
        }
    }

    /// Folds an event into the attempt history.
    fn record_attempt(&mut self, env: &Envelope, event: &JobEvent, gpus: Vec<AttemptGpu>) {
        let at = env.time_ns;
        let find = |attempts: &[AttemptView], n: u32| attempts.iter().rposition(|a| a.attempt == n);
        match event {
            JobEvent::Placed(p) => self.attempts.push(AttemptView {
                attempt: p.attempt,
                node: p.node_id.clone(),
                gpus,
                state: "placed".into(),
                placed_ns: at,
                started_ns: None,
                ended_ns: None,
                exit_code: None,
                cause: None,
                duration_ms: None,
                limits_enforced: None,
            }),
            JobEvent::Started(e) => {
                if let Some(i) = find(&self.attempts, e.attempt) {
                    let a = &mut self.attempts[i];
                    a.state = "running".into();
                    a.started_ns = Some(at);
                    a.limits_enforced = e.limits_enforced;
                }
            }
            JobEvent::Succeeded(e) => {
                if let Some(i) = find(&self.attempts, e.attempt) {
                    let a = &mut self.attempts[i];
                    a.state = "succeeded".into();
                    a.ended_ns = Some(at);
                    a.exit_code = Some(0);
                    a.duration_ms = Some(e.duration_ms);
                }
            }
            JobEvent::Failed(e) => {
                if let Some(i) = find(&self.attempts, e.attempt) {
                    let a = &mut self.attempts[i];
                    a.state = if e.cause == FailureCause::Cancelled {
                        "cancelled"
                    } else {
                        "failed"
                    }
                    .into();
                    a.ended_ns = Some(at);
                    if let FailureCause::NonZeroExit { code } = e.cause {
                        a.exit_code = Some(code);
                    }
                    a.cause = Some(e.cause.clone());
                    a.duration_ms = e.duration_ms;
                }
            }
            JobEvent::Cancelled(e) => {
                if let Some(n) = e.attempt
                    && let Some(i) = find(&self.attempts, n)
                    && self.attempts[i].ended_ns.is_none()
                {
                    let a = &mut self.attempts[i];
                    a.state = "cancelled".into();
                    a.ended_ns = Some(at);
                }
            }
            _ => {}
        }
    }
}

/// A node as the gateway shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub executor: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// `ready`, `cordoned`, `draining` or `lost`.
    pub status: String,
    pub reason: Option<String>,
    pub updated_ns: u64,
}

/// A stored artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    pub attempt: u32,
    pub name: String,
    pub location: String,
    pub sha256: Hash,
    pub size_bytes: u64,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Unix ns it was recorded.
    #[serde(default)]
    pub stored_ns: u64,
    /// When retention deleted its bytes (Unix ns) and why; the record stays.
    #[serde(default)]
    pub pruned_ns: Option<u64>,
    #[serde(default)]
    pub pruned_reason: Option<String>,
}

/// A pipeline as the views keep it; [`PipelineView`] adds its stages' jobs' states on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PipelineRecord {
    id: PipelineId,
    name: String,
    group: String,
    submitted_by: Option<String>,
    submitted_ns: u64,
    updated_ns: u64,
    updated_seq: u64,
    cancelled: Option<PipelineCancel>,
    stages: Vec<StageView>,
}

/// Who cancelled a pipeline, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineCancel {
    pub reason: Option<String>,
    pub by: Option<String>,
    pub cancelled_ns: u64,
}

/// A pipeline and where each stage stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineView {
    #[schema(value_type = String, format = Uuid)]
    pub id: PipelineId,
    pub name: String,
    /// `running` while a stage waits or its job has not ended; then `succeeded` (every stage
    /// succeeded), `cancelled` or `failed`.
    pub state: String,
    pub group: String,
    pub submitted_by: Option<String>,
    pub submitted_ns: u64,
    pub updated_ns: u64,
    pub updated_seq: u64,
    pub cancelled: Option<PipelineCancel>,
    /// In the order they can run.
    pub stages: Vec<StageView>,
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageView {
    pub name: String,
    /// `waiting` (for its dependencies), `skipped`, or its job's state.
    pub state: String,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub job_id: Option<JobId>,
    pub after: Vec<String>,
    pub run_if: RunIf,
    pub inputs: Vec<StageInput>,
    /// Why it was skipped.
    pub skipped: Option<String>,
    pub spec: JobSpec,
}

impl PipelineRecord {
    /// The view, with each started stage's state read through `state_of`.
    fn view(self, state_of: impl Fn(&JobId) -> Option<String>) -> PipelineView {
        let mut stages = self.stages;
        for stage in &mut stages {
            if let Some(id) = &stage.job_id {
                stage.state = state_of(id).unwrap_or_else(|| "unknown".into());
            }
        }
        let ended = |s: &str| ["skipped", "succeeded", "cancelled", "dead_lettered"].contains(&s);
        let state = if !stages.iter().all(|s| ended(&s.state)) {
            "running"
        } else if self.cancelled.is_some() {
            "cancelled"
        } else if stages.iter().all(|s| s.state == "succeeded") {
            "succeeded"
        } else {
            "failed"
        };
        PipelineView {
            id: self.id,
            name: self.name,
            state: state.to_owned(),
            group: self.group,
            submitted_by: self.submitted_by,
            submitted_ns: self.submitted_ns,
            updated_ns: self.updated_ns,
            updated_seq: self.updated_seq,
            cancelled: self.cancelled,
            stages,
        }
    }
}

/// Where the log has one event: its sequence, hash and type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRef {
    pub seq: u64,
    pub hash: Hash,
    #[serde(rename = "type")]
    pub type_name: String,
}

impl EventRef {
    fn of(env: &Envelope) -> EventRef {
        EventRef {
            seq: env.seq,
            hash: env.hash,
            type_name: env.type_name.clone(),
        }
    }
}

/// One stored row: key kind, key, value.
pub type DumpRow = (String, Vec<u8>, Vec<u8>);

/// An API key as the views keep it: never the key, only its id and keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: String,
    pub name: String,
    pub role: String,
    pub group: String,
    /// HMAC-SHA256 of the key under the server's secret key.
    pub hash: Hash,
    pub created_ns: u64,
    pub created_by: Option<String>,
    pub revoked_ns: Option<u64>,
}

/// A webhook as the views keep it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub types: Vec<String>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub job: Option<JobId>,
    pub queue: Option<String>,
    pub group: String,
    pub created_by: Option<String>,
    pub created_ns: u64,
    /// The sequence of its `webhook.created`: it is sent the events after it.
    pub created_seq: u64,
    pub deleted_ns: Option<u64>,
}

/// One attempt to deliver an event to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub seq: u64,
    #[serde(rename = "type")]
    pub type_name: String,
    pub attempt: u32,
    /// Unix ns it was made.
    pub at_ns: u64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it failed (no answer, or a status outside 2xx).
    pub error: Option<String>,
    /// `delivered`, `retrying` or `failed` (no more attempts).
    pub outcome: String,
}

/// Webhook deliveries: every attempt, and the sequence each webhook has been served through.
#[derive(Debug, Clone)]
pub struct Deliveries {
    tree: sled::Tree,
}

/// Most attempts kept per webhook (older ones are dropped).
const KEPT_DELIVERIES: usize = 1000;

impl Deliveries {
    fn prefix(webhook: &str) -> Vec<u8> {
        let mut key = b"d".to_vec();
        key.extend_from_slice(webhook.as_bytes());
        key.push(0);
        key
    }

    /// Records an attempt, durably.
    pub fn record(&self, webhook: &str, delivery: &Delivery) -> Result<(), Error> {
        let mut key = Self::prefix(webhook);
        key.extend_from_slice(&delivery.seq.to_be_bytes());
        key.extend_from_slice(&delivery.attempt.to_be_bytes());
        self.tree.insert(key, encode(delivery)?)?;
        let kept = self.tree.scan_prefix(Self::prefix(webhook)).count();
        if kept > KEPT_DELIVERIES {
            for old in self
                .tree
                .scan_prefix(Self::prefix(webhook))
                .keys()
                .take(kept - KEPT_DELIVERIES)
            {
                self.tree.remove(old?)?;
            }
        }
        self.tree.flush()?;
        Ok(())
    }

    /// The latest attempts, newest first.
    pub fn list(&self, webhook: &str, limit: usize) -> Result<Vec<Delivery>, Error> {
        self.tree
            .scan_prefix(Self::prefix(webhook))
            .values()
            .rev()
            .take(limit)
            .map(|v| decode(&v?))
            .collect()
    }

    /// The last sequence this webhook was served (delivered or given up on).
    pub fn cursor(&self, webhook: &str) -> Result<Option<u64>, Error> {
        let mut key = b"c".to_vec();
        key.extend_from_slice(webhook.as_bytes());
        Ok(self
            .tree
            .get(key)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    pub fn set_cursor(&self, webhook: &str, seq: u64) -> Result<(), Error> {
        let mut key = b"c".to_vec();
        key.extend_from_slice(webhook.as_bytes());
        self.tree.insert(key, &seq.to_be_bytes())?;
        self.tree.flush()?;
        Ok(())
    }
}

/// Filters for listing jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this group's jobs (`None`: every group, for admins and the unauthenticated
    /// loopback gateway).
    pub group: Option<String>,
    pub state: Option<String>,
    pub queue: Option<String>,
    /// `key=value`.
    pub label: Option<String>,
    /// Jobs with an attempt placed on this node (any attempt, not only the last).
    pub node: Option<String>,
}

/// The sled-backed views: one tree, keys prefixed by kind, so one batch of events is written
/// with one atomic `apply_batch` together with its checkpoint.
#[derive(Debug, Clone)]
pub struct Projections {
    db: sled::Db,
    tree: sled::Tree,
}

/// Key kinds (first byte of every key).
mod kind {
    pub const JOB: u8 = b'j';
    pub const BY_STATE: u8 = b's';
    pub const BY_QUEUE: u8 = b'q';
    pub const BY_LABEL: u8 = b'l';
    pub const NODE: u8 = b'n';
    pub const ARTIFACT: u8 = b'a';
    pub const COUNT: u8 = b'c';
    pub const KEY: u8 = b'k';
    pub const BY_GROUP: u8 = b'g';
    pub const PIPELINE: u8 = b'p';
    /// Artifacts by SHA-256: `h` + sha256 + job + name.
    pub const BY_SHA256: u8 = b'h';
    pub const WEBHOOK: u8 = b'w';
    /// Jobs by the nodes their attempts were placed on: `o` + node + 0 + job.
    pub const BY_NODE: u8 = b'o';
}

/// How much of the views sled keeps in memory unless told otherwise (sled's own default is
/// 1 GiB): bounds what the views cost in memory however many jobs they hold; reads of what is
/// not cached go to the disk (and the kernel's page cache).
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// The checkpoint's key (kind `m`, metadata).
const CHECKPOINT: &[u8] = b"mcheckpoint";
/// The key of the layout version of the stored views.
const FORMAT: &[u8] = b"mformat";
/// The layout of the stored views; views of another layout are rebuilt. 2: jobs stored as a
/// domain job with its attempt history. 7: jobs indexed by node. 8: the Merkle tree over the
/// log and the Auditor's checkpoints.
const VIEWS_FORMAT: u32 = 8;

fn key_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(kind::KEY);
    k.extend_from_slice(id.as_bytes());
    k
}

fn artifact_key(job: &JobId, name: &str) -> Vec<u8> {
    let mut key = vec![kind::ARTIFACT];
    key.extend_from_slice(job.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn sha256_key(sha256: &Hash, job: &JobId, name: &str) -> Vec<u8> {
    let mut key = vec![kind::BY_SHA256];
    key.extend_from_slice(&sha256.0);
    key.extend_from_slice(job.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn pipeline_key(id: &PipelineId) -> Vec<u8> {
    let mut key = vec![kind::PIPELINE];
    key.extend_from_slice(id.as_bytes());
    key
}

fn job_key(id: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(kind::JOB);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `kind ‖ text ‖ 0 ‖ id`: an index entry.
fn index_key(kind: u8, text: &str, id: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(text.len() + 18);
    k.push(kind);
    k.extend_from_slice(text.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn index_prefix(kind: u8, text: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(text.len() + 2);
    k.push(kind);
    k.extend_from_slice(text.as_bytes());
    k.push(0);
    k
}

fn count_key(queue: &str, state: &str) -> Vec<u8> {
    let mut k = index_prefix(kind::COUNT, queue);
    k.extend_from_slice(state.as_bytes());
    k
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(raw).map_err(|e| Error::Corrupt(e.to_string()))
}

/// What one batch changes, gathered in memory and written at once.
#[derive(Default)]
struct Overlay {
    jobs: HashMap<JobId, JobRecord>,
    pipelines: HashMap<PipelineId, PipelineRecord>,
    artifacts: HashMap<Vec<u8>, ArtifactView>,
    nodes: HashMap<String, NodeView>,
    keys: HashMap<String, KeyView>,
    webhooks: HashMap<String, WebhookView>,
    counts: HashMap<Vec<u8>, i64>,
    tree: merkle::TreeOverlay,
    batch: sled::Batch,
}

impl Projections {
    /// Opens (or creates) the views in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Projections, Error> {
        Projections::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens the views keeping at most about `cache_bytes` of them in memory (sled's cache;
    /// what is not cached is read from the disk).
    pub fn open_with_cache(dir: impl AsRef<Path>, cache_bytes: u64) -> Result<Projections, Error> {
        let db = sled::Config::new()
            .path(dir.as_ref())
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(Projections {
            tree: db.open_tree("views")?,
            db,
        })
    }

    /// The webhook deliveries kept beside the views (in the same store, a tree of its own:
    /// they are not rebuilt from the log and a rebuild of the views leaves them).
    pub fn deliveries(&self) -> Result<Deliveries, Error> {
        Ok(Deliveries {
            tree: self.db.open_tree("webhook-deliveries")?,
        })
    }

    /// Where the views stand.
    pub fn checkpoint(&self) -> Result<Checkpoint, Error> {
        Ok(decode_checkpoint(self.tree.get(CHECKPOINT)?.as_deref()))
    }

    /// Applies a batch of consecutive entries atomically with the checkpoint. Entries already
    /// applied are skipped; one that does not follow the checkpoint is refused and nothing of
    /// the batch is written.
    pub fn apply(&self, entries: &[Entry]) -> Result<Checkpoint, Error> {
        let mut checkpoint = self.checkpoint()?;
        let mut overlay = Overlay::default();
        for entry in entries {
            if entry.seq <= checkpoint.seq {
                continue;
            }
            if entry.seq != checkpoint.seq + 1 {
                return Err(Error::OutOfOrder {
                    checkpoint: checkpoint.seq,
                    got: entry.seq,
                });
            }
            let env = entry
                .open()
                .map_err(|err| Error::Corrupt(format!("seq {}: {err}", entry.seq)))?;
            overlay.tree.push(self, env.seq, &env.hash)?;
            match &env.event {
                Event::Job(e) => self.apply_job(&env, e, &mut overlay)?,
                Event::Node(e) => self.apply_node(&env, e, &mut overlay)?,
                Event::Artifact(ArtifactEvent::Stored(a)) => {
                    let view = ArtifactView {
                        job_id: a.job_id,
                        attempt: a.attempt,
                        name: a.name.clone(),
                        location: a.location.clone(),
                        sha256: a.sha256,
                        size_bytes: a.size_bytes,
                        content_type: a.content_type.clone(),
                        stored_ns: env.time_ns,
                        pruned_ns: None,
                        pruned_reason: None,
                    };
                    let key = artifact_key(&a.job_id, &a.name);
                    // An earlier attempt's output of the same name is replaced: its SHA-256
                    // no longer names this job's artifact.
                    if let Some(old) = self.take_artifact(&key, &mut overlay)? {
                        overlay
                            .batch
                            .remove(sha256_key(&old.sha256, &old.job_id, &old.name));
                    }
                    overlay
                        .batch
                        .insert(sha256_key(&a.sha256, &a.job_id, &a.name), &[]);
                    overlay.artifacts.insert(key, view);
                    self.note_job_event(&env, a.job_id, &mut overlay)?;
                }
                Event::Artifact(ArtifactEvent::Pruned(p)) => {
                    let key = artifact_key(&p.job_id, &p.name);
                    if let Some(mut view) = self.take_artifact(&key, &mut overlay)? {
                        if view.sha256 == p.sha256 && view.pruned_ns.is_none() {
                            view.pruned_ns = Some(env.time_ns);
                            view.pruned_reason = Some(p.reason.clone());
                        }
                        overlay.artifacts.insert(key, view);
                    }
                    self.note_job_event(&env, p.job_id, &mut overlay)?;
                }
                Event::Pipeline(e) => self.apply_pipeline(&env, e, &mut overlay)?,
                Event::Key(e) => self.apply_key(&env, e, &mut overlay)?,
                Event::Webhook(WebhookEvent::Created(w)) => {
                    overlay.webhooks.insert(
                        w.webhook_id.clone(),
                        WebhookView {
                            id: w.webhook_id.clone(),
                            url: w.url.clone(),
                            types: w.types.clone(),
                            job: w.job,
                            queue: w.queue.clone(),
                            group: w.group.clone(),
                            created_by: w.by.clone(),
                            created_ns: env.time_ns,
                            created_seq: env.seq,
                            deleted_ns: None,
                        },
                    );
                }
                Event::Webhook(WebhookEvent::Deleted(w)) => {
                    let known = match overlay.webhooks.remove(&w.webhook_id) {
                        Some(view) => Some(view),
                        None => self.webhook(&w.webhook_id)?,
                    };
                    if let Some(mut view) = known {
                        view.deleted_ns.get_or_insert(env.time_ns);
                        overlay.webhooks.insert(view.id.clone(), view);
                    }
                }
                Event::Audit(AuditEvent::Checkpointed(c)) => {
                    overlay.tree.checkpointed(env.seq, c);
                }
                Event::Secret(_) => {}
            }
            checkpoint = Checkpoint {
                seq: env.seq,
                hash: env.hash,
            };
        }
        let Overlay {
            jobs,
            pipelines,
            artifacts,
            nodes,
            keys,
            webhooks,
            counts,
            tree,
            mut batch,
        } = overlay;
        tree.write(&mut batch)?;
        for (id, view) in &webhooks {
            let mut key = vec![kind::WEBHOOK];
            key.extend_from_slice(id.as_bytes());
            batch.insert(key, encode(view)?);
        }
        for (id, record) in &pipelines {
            batch.insert(pipeline_key(id), encode(record)?);
        }
        for (key, view) in &artifacts {
            batch.insert(key.as_slice(), encode(view)?);
        }
        for (id, view) in &keys {
            batch.insert(key_key(id), encode(view)?);
        }
        for (id, view) in &jobs {
            batch.insert(job_key(id), encode(view)?);
        }
        for (id, view) in &nodes {
            let mut key = vec![kind::NODE];
            key.extend_from_slice(id.as_bytes());
            batch.insert(key, encode(view)?);
        }
        for (key, delta) in counts {
            let current = self
                .tree
                .get(&key)?
                .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
                .unwrap_or(0);
            match current.saturating_add_signed(delta) {
                0 => batch.remove(key),
                n => batch.insert(key, &n.to_be_bytes()),
            }
        }
        let mut raw = checkpoint.seq.to_be_bytes().to_vec();
        raw.extend_from_slice(&checkpoint.hash.0);
        batch.insert(CHECKPOINT, raw);
        batch.insert(FORMAT, &VIEWS_FORMAT.to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(checkpoint)
    }

    fn apply_key(
        &self,
        env: &Envelope,
        event: &KeyEvent,
        overlay: &mut Overlay,
    ) -> Result<(), Error> {
        let view = match event {
            KeyEvent::Created(k) => KeyView {
                key_id: k.key_id.clone(),
                name: k.name.clone(),
                role: k.role.clone(),
                group: k.group.clone(),
                hash: k.hash,
                created_ns: env.time_ns,
                created_by: k.by.clone(),
                revoked_ns: None,
            },
            KeyEvent::Revoked(r) => {
                let known = match overlay.keys.remove(&r.key_id) {
                    Some(view) => Some(view),
                    None => self.key(&r.key_id)?,
                };
                let Some(mut view) = known else {
                    return Ok(());
                };
                view.revoked_ns.get_or_insert(env.time_ns);
                view
            }
        };
        overlay.keys.insert(view.key_id.clone(), view);
        Ok(())
    }

    /// Adds an event about a job (an output stored or pruned) to the job's history.
    fn note_job_event(
        &self,
        env: &Envelope,
        id: JobId,
        overlay: &mut Overlay,
    ) -> Result<(), Error> {
        if let Some(mut record) = self.take_job(&id, overlay)? {
            record.history.push(EventRef::of(env));
            overlay.jobs.insert(id, record);
        }
        Ok(())
    }

    fn take_artifact(
        &self,
        key: &[u8],
        overlay: &mut Overlay,
    ) -> Result<Option<ArtifactView>, Error> {
        match overlay.artifacts.remove(key) {
            Some(view) => Ok(Some(view)),
            None => self.tree.get(key)?.map(|v| decode(&v)).transpose(),
        }
    }

    fn take_pipeline(
        &self,
        id: &PipelineId,
        overlay: &mut Overlay,
    ) -> Result<Option<PipelineRecord>, Error> {
        match overlay.pipelines.remove(id) {
            Some(record) => Ok(Some(record)),
            None => self
                .tree
                .get(pipeline_key(id))?
                .map(|v| decode(&v))
                .transpose(),
        }
    }

    fn apply_pipeline(
        &self,
        env: &Envelope,
        event: &PipelineEvent,
        overlay: &mut Overlay,
    ) -> Result<(), Error> {
        let record = match event {
            PipelineEvent::Submitted(p) => PipelineRecord {
                id: p.pipeline_id,
                name: p.name.clone(),
                group: p
                    .group
                    .clone()
                    .unwrap_or_else(|| gantry_actors::world::DEFAULT_GROUP.to_owned()),
                submitted_by: p.by.clone(),
                submitted_ns: env.time_ns,
                updated_ns: env.time_ns,
                updated_seq: env.seq,
                cancelled: None,
                stages: p
                    .stages
                    .iter()
                    .map(|stage| StageView {
                        name: stage.name.clone(),
                        state: "waiting".into(),
                        job_id: None,
                        after: stage.after.clone(),
                        run_if: stage.run_if,
                        inputs: stage.inputs.clone(),
                        skipped: None,
                        spec: (*stage.spec).clone(),
                    })
                    .collect(),
            },
            PipelineEvent::StageSkipped(s) => {
                let Some(mut record) = self.take_pipeline(&s.pipeline_id, overlay)? else {
                    return Ok(());
                };
                if let Some(stage) = record.stages.iter_mut().find(|st| st.name == s.stage) {
                    stage.state = "skipped".into();
                    stage.skipped = Some(s.reason.clone());
                }
                record
            }
            PipelineEvent::Cancelled(c) => {
                let Some(mut record) = self.take_pipeline(&c.pipeline_id, overlay)? else {
                    return Ok(());
                };
                record.cancelled.get_or_insert(PipelineCancel {
                    reason: c.reason.clone(),
                    by: c.by.clone(),
                    cancelled_ns: env.time_ns,
                });
                record
            }
        };
        let mut record = record;
        record.updated_ns = env.time_ns;
        record.updated_seq = env.seq;
        overlay.pipelines.insert(record.id, record);
        Ok(())
    }

    /// Takes a job's record out of the batch in progress, or reads it from the store.
    fn take_job(&self, id: &JobId, overlay: &mut Overlay) -> Result<Option<JobRecord>, Error> {
        match overlay.jobs.remove(id) {
            Some(record) => Ok(Some(record)),
            None => self.record(id),
        }
    }

    fn record(&self, id: &JobId) -> Result<Option<JobRecord>, Error> {
        self.tree.get(job_key(id))?.map(|v| decode(&v)).transpose()
    }

    /// The GPUs of `node` named by `uuids`, as the node's view describes them now.
    fn attempt_gpus(
        &self,
        node: &str,
        uuids: &[String],
        overlay: &Overlay,
    ) -> Result<Vec<AttemptGpu>, Error> {
        let known = match overlay.nodes.get(node) {
            Some(view) => Some(view.gpus.clone()),
            None => {
                let mut key = vec![kind::NODE];
                key.extend_from_slice(node.as_bytes());
                self.tree
                    .get(key)?
                    .map(|raw| decode::<NodeView>(&raw))
                    .transpose()?
                    .map(|v| v.gpus)
            }
        }
        .unwrap_or_default();
        Ok(uuids
            .iter()
            .map(|uuid| {
                let gpu = known.iter().find(|g| &g.uuid == uuid);
                AttemptGpu {
                    uuid: uuid.clone(),
                    name: gpu.map(|g| g.name.clone()),
                    memory_bytes: gpu.map(|g| g.memory_bytes),
                    driver_version: gpu.and_then(|g| g.driver_version.clone()),
                }
            })
            .collect())
    }

    fn apply_job(
        &self,
        env: &Envelope,
        event: &JobEvent,
        overlay: &mut Overlay,
    ) -> Result<(), Error> {
        let (mut record, old_state) = match event {
            JobEvent::Submitted(s) => {
                let job = Job::submitted(s);
                for (k, v) in &job.spec.labels {
                    overlay
                        .batch
                        .insert(index_key(kind::BY_LABEL, &format!("{k}={v}"), &job.id), &[]);
                }
                overlay
                    .batch
                    .insert(index_key(kind::BY_QUEUE, &job.spec.queue, &job.id), &[]);
                overlay
                    .batch
                    .insert(index_key(kind::BY_GROUP, job.group(), &job.id), &[]);
                if let Some(of) = &s.pipeline
                    && let Some(mut pipeline) = self.take_pipeline(&of.pipeline_id, overlay)?
                {
                    if let Some(stage) = pipeline.stages.iter_mut().find(|st| st.name == of.stage) {
                        stage.job_id = Some(job.id);
                        stage.state = job.state.as_str().to_owned();
                    }
                    pipeline.updated_ns = env.time_ns;
                    pipeline.updated_seq = env.seq;
                    overlay.pipelines.insert(pipeline.id, pipeline);
                }
                let record = JobRecord {
                    job,
                    attempts: Vec::new(),
                    history: Vec::new(),
                    submitted_ns: env.time_ns,
                    updated_ns: env.time_ns,
                    updated_seq: env.seq,
                };
                (record, None)
            }
            other => {
                let id = other.job_id();
                let Some(record) = self.take_job(&id, overlay)? else {
                    tracing::warn!(job = %id, seq = env.seq, "projection: event for an unknown job");
                    return Ok(());
                };
                let state = record.job.state;
                (record, Some(state))
            }
        };
        let gpus = match event {
            JobEvent::Placed(p) => {
                overlay
                    .batch
                    .insert(index_key(kind::BY_NODE, &p.node_id, &p.job_id), &[]);
                self.attempt_gpus(&p.node_id, &p.gpu_uuids, overlay)?
            }
            _ => Vec::new(),
        };
        record.record_attempt(env, event, gpus);
        record.job.apply_at(event, env.time_ns / 1_000_000);
        let job = &record.job;
        let queue = job.spec.queue.clone();
        let new_state = job.state;
        if old_state != Some(new_state) {
            if let Some(old) = old_state {
                overlay
                    .batch
                    .remove(index_key(kind::BY_STATE, old.as_str(), &job.id));
                *overlay
                    .counts
                    .entry(count_key(&queue, old.as_str()))
                    .or_default() -= 1;
            }
            overlay
                .batch
                .insert(index_key(kind::BY_STATE, new_state.as_str(), &job.id), &[]);
            *overlay
                .counts
                .entry(count_key(&queue, new_state.as_str()))
                .or_default() += 1;
        }
        record.updated_ns = env.time_ns;
        record.updated_seq = env.seq;
        record.history.push(EventRef::of(env));
        overlay.jobs.insert(record.job.id, record);
        Ok(())
    }

    fn apply_node(
        &self,
        env: &Envelope,
        event: &NodeEvent,
        overlay: &mut Overlay,
    ) -> Result<(), Error> {
        let existing = |id: &str, overlay: &Overlay| -> Result<Option<NodeView>, Error> {
            if let Some(view) = overlay.nodes.get(id) {
                return Ok(Some(view.clone()));
            }
            let mut key = vec![kind::NODE];
            key.extend_from_slice(id.as_bytes());
            self.tree.get(key)?.map(|raw| decode(&raw)).transpose()
        };
        let status = |id: &str, status: &str, reason: Option<&String>, overlay: &Overlay| {
            existing(id, overlay).map(|view| {
                view.map(|mut v| {
                    v.status = status.into();
                    v.reason = reason.cloned();
                    v.updated_ns = env.time_ns;
                    v
                })
            })
        };
        let view = match event {
            NodeEvent::Joined(j) => {
                // A cordon outlives the node's restarts; lost and draining end with a join.
                let cordoned = existing(&j.node_id, overlay)?
                    .filter(|v| v.status == "cordoned")
                    .map(|v| v.reason);
                Some(NodeView {
                    id: j.node_id.clone(),
                    hostname: j.hostname.clone(),
                    executor: j.executor.clone(),
                    cpu_millis: j.cpu_millis,
                    memory_bytes: j.memory_bytes,
                    gpus: j.gpus.clone(),
                    status: if cordoned.is_some() {
                        "cordoned"
                    } else {
                        "ready"
                    }
                    .into(),
                    reason: cordoned.flatten(),
                    updated_ns: env.time_ns,
                })
            }
            NodeEvent::GpusObserved(g) => existing(&g.node_id, overlay)?.map(|mut v| {
                v.gpus = g.gpus.clone();
                v.updated_ns = env.time_ns;
                v
            }),
            NodeEvent::Lost(l) => status(&l.node_id, "lost", Some(&l.reason), overlay)?,
            NodeEvent::Drained(d) => status(&d.node_id, "draining", Some(&d.reason), overlay)?,
            NodeEvent::Cordoned(c) => status(&c.node_id, "cordoned", Some(&c.reason), overlay)?,
            NodeEvent::Uncordoned(u) => status(&u.node_id, "ready", None, overlay)?,
        };
        if let Some(view) = view {
            overlay.nodes.insert(view.id.clone(), view);
        }
        Ok(())
    }

    /// Checks that the views were built from this log: the entry at the checkpoint's sequence
    /// must exist and have the checkpoint's hash. If not (a restored backup, a replaced or cut
    /// log), the views are cleared so they are rebuilt from the start, and the reason returned.
    pub async fn ensure_built_from(&self, log: &dyn EventLog) -> Result<Option<String>, Error> {
        let checkpoint = self.checkpoint()?;
        if checkpoint.seq == 0 {
            // Nothing applied, so nothing may be stored: leftovers of a clear cut short by a
            // crash (the checkpoint sorts first and goes first) are removed.
            if !self.tree.is_empty() {
                tracing::warn!("views hold entries but no checkpoint; clearing them");
                self.clear()?;
                self.flush().await?;
            }
            return Ok(None);
        }
        let format = self
            .tree
            .get(FORMAT)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map_or(1, u32::from_be_bytes);
        let head = log.head().await?;
        let reason = if format != VIEWS_FORMAT {
            Some(format!(
                "the views were written in layout {format} and this gantry writes layout {VIEWS_FORMAT}"
            ))
        } else if head.seq < checkpoint.seq {
            Some(format!(
                "the views were built to sequence {} but the log ends at {}",
                checkpoint.seq, head.seq
            ))
        } else {
            match log.read(checkpoint.seq, 1).await?.first() {
                Some(entry) if entry.stored_hash().ok() == Some(checkpoint.hash) => None,
                Some(_) => Some(format!(
                    "the log has another entry at sequence {} than the views were built from",
                    checkpoint.seq
                )),
                None => Some(format!(
                    "the log has no entry {} the views were built to",
                    checkpoint.seq
                )),
            }
        };
        if let Some(reason) = &reason {
            tracing::warn!(
                checkpoint = checkpoint.seq,
                log_head = head.seq,
                %reason,
                "views do not match the log; rebuilding them from the start"
            );
            self.clear()?;
            self.flush().await?;
        }
        Ok(reason)
    }

    /// Reads the log from the checkpoint to its head and applies it (after checking that the
    /// views were built from this log, see [`Projections::ensure_built_from`]).
    pub async fn catch_up(
        &self,
        log: &dyn EventLog,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Checkpoint, Error> {
        self.ensure_built_from(log).await?;
        let head = log.head().await?.seq;
        let mut checkpoint = self.checkpoint()?;
        while checkpoint.seq < head {
            let entries = log.read(checkpoint.seq + 1, 4096).await?;
            if entries.is_empty() {
                break;
            }
            checkpoint = self.apply(&entries)?;
            progress(checkpoint.seq, head);
        }
        self.flush().await?;
        Ok(checkpoint)
    }

    /// Catches up, then applies new entries as the log gets them, publishing the checkpoint
    /// sequence after each batch. Returns only when the log's subscription ends or fails.
    pub async fn follow(
        &self,
        log: &dyn EventLog,
        progress: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), Error> {
        use futures::StreamExt;
        let checkpoint = self.catch_up(log, |_, _| {}).await?;
        progress.send_replace(checkpoint.seq);
        let mut batches = log.subscribe(checkpoint.seq + 1).await?.ready_chunks(1024);
        while let Some(batch) = batches.next().await {
            let entries = batch.into_iter().collect::<Result<Vec<Entry>, _>>()?;
            let checkpoint = self.apply(&entries)?;
            progress.send_replace(checkpoint.seq);
        }
        Ok(())
    }

    /// Makes everything applied so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Deletes every view (the log is untouched).
    pub fn clear(&self) -> Result<(), Error> {
        self.tree.clear()?;
        Ok(())
    }

    pub fn job(&self, id: &JobId) -> Result<Option<JobView>, Error> {
        Ok(self.record(id)?.map(JobRecord::view))
    }

    /// A job as a key of `group` may see it: a job of another group is not there (`None`
    /// group: every group).
    pub fn job_in(&self, id: &JobId, group: Option<&str>) -> Result<Option<JobView>, Error> {
        Ok(self.job(id)?.filter(|v| group.is_none_or(|g| v.group == g)))
    }

    /// Where the log has every event about a job, in order.
    pub fn job_history(&self, id: &JobId) -> Result<Vec<EventRef>, Error> {
        Ok(self.record(id)?.map(|r| r.history).unwrap_or_default())
    }

    /// A pipeline as a key of `group` may see it (`None` group: every group), with its
    /// stages' jobs' states as the views have them now.
    pub fn pipeline_in(
        &self,
        id: &PipelineId,
        group: Option<&str>,
    ) -> Result<Option<PipelineView>, Error> {
        let Some(raw) = self.tree.get(pipeline_key(id))? else {
            return Ok(None);
        };
        let record: PipelineRecord = decode(&raw)?;
        if group.is_some_and(|g| record.group != g) {
            return Ok(None);
        }
        let mut states = HashMap::new();
        for stage in &record.stages {
            if let Some(job) = &stage.job_id
                && let Some(view) = self.record(job)?
            {
                states.insert(*job, view.job.state.as_str().to_owned());
            }
        }
        Ok(Some(record.view(|job| states.get(job).cloned())))
    }

    /// Pipelines in submission order after `after` (a cursor), of `group` (`None`: every
    /// group).
    pub fn pipelines(
        &self,
        group: Option<&str>,
        after: Option<PipelineId>,
        limit: usize,
    ) -> Result<Vec<PipelineView>, Error> {
        let mut start = vec![kind::PIPELINE];
        if let Some(id) = after {
            start.extend_from_slice(id.as_bytes());
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (k, _) = item?;
            if k.first() != Some(&kind::PIPELINE) {
                break;
            }
            let id = PipelineId::from_slice(&k[1..]).map_err(|e| Error::Corrupt(e.to_string()))?;
            if let Some(view) = self.pipeline_in(&id, group)? {
                out.push(view);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every artifact whose bytes have this SHA-256 (content-addressed stores keep one copy
    /// for all of them), pruned ones included.
    pub fn artifacts_with(&self, sha256: &Hash) -> Result<Vec<ArtifactView>, Error> {
        let mut prefix = vec![kind::BY_SHA256];
        prefix.extend_from_slice(&sha256.0);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let rest = &k[prefix.len()..];
            if rest.len() < 16 {
                continue;
            }
            let job = JobId::from_slice(&rest[..16]).map_err(|e| Error::Corrupt(e.to_string()))?;
            let name = String::from_utf8_lossy(&rest[16..]);
            if let Some(view) = self.artifact(&job, &name)? {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Every stored artifact, in job order (for retention's sweep).
    pub fn all_artifacts(&self) -> impl Iterator<Item = Result<ArtifactView, Error>> + '_ {
        self.tree
            .scan_prefix([kind::ARTIFACT])
            .values()
            .map(|v| decode(&v?))
    }

    /// A job's artifacts by name (of the latest attempt that stored each name).
    pub fn artifacts(&self, job: &JobId) -> Result<Vec<ArtifactView>, Error> {
        let mut prefix = vec![kind::ARTIFACT];
        prefix.extend_from_slice(job.as_bytes());
        self.tree
            .scan_prefix(prefix)
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// One artifact of a job.
    pub fn artifact(&self, job: &JobId, name: &str) -> Result<Option<ArtifactView>, Error> {
        self.tree
            .get(artifact_key(job, name))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// A webhook by id (deleted ones included).
    pub fn webhook(&self, id: &str) -> Result<Option<WebhookView>, Error> {
        let mut key = vec![kind::WEBHOOK];
        key.extend_from_slice(id.as_bytes());
        self.tree.get(key)?.map(|v| decode(&v)).transpose()
    }

    /// Every webhook, deleted ones included, by id.
    pub fn webhooks(&self) -> Result<Vec<WebhookView>, Error> {
        self.tree
            .scan_prefix([kind::WEBHOOK])
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// An API key by id.
    pub fn key(&self, id: &str) -> Result<Option<KeyView>, Error> {
        self.tree.get(key_key(id))?.map(|v| decode(&v)).transpose()
    }

    /// Every API key, revoked ones included, by id.
    pub fn keys(&self) -> Result<Vec<KeyView>, Error> {
        self.tree
            .scan_prefix([kind::KEY])
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// Jobs in submission order after `after` (a cursor: the last id of the previous page).
    ///
    /// Every filter has its index (ids in submission order under `kind ‖ value ‖ 0`), and a
    /// page is the intersection of the filters' indexes walked together: each index is sought
    /// to the greatest id any other one is at, until they all stand on the same job (a
    /// leapfrog join). A page costs in proportion to the page and to how the filters'
    /// sets interleave, never to the jobs the views hold.
    pub fn jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobView>, Error> {
        let mut prefixes = Vec::new();
        if let Some(state) = &filter.state {
            prefixes.push(index_prefix(kind::BY_STATE, state));
        }
        if let Some(queue) = &filter.queue {
            prefixes.push(index_prefix(kind::BY_QUEUE, queue));
        }
        if let Some(label) = &filter.label {
            prefixes.push(index_prefix(kind::BY_LABEL, label));
        }
        if let Some(node) = &filter.node {
            prefixes.push(index_prefix(kind::BY_NODE, node));
        }
        if let Some(group) = &filter.group {
            prefixes.push(index_prefix(kind::BY_GROUP, group));
        }
        // Where the walk starts: just after the cursor's id.
        let mut lower = after.map_or_else(Vec::new, |id| {
            let mut at = id.as_bytes().to_vec();
            at.push(0);
            at
        });
        let mut out = Vec::new();
        if prefixes.is_empty() {
            let mut start = vec![kind::JOB];
            start.extend_from_slice(&lower);
            for item in self.tree.range(start..) {
                let (k, v) = item?;
                if k.first() != Some(&kind::JOB) || out.len() >= limit {
                    break;
                }
                out.push(decode::<JobRecord>(&v)?.view());
            }
            return Ok(out);
        }
        'page: while out.len() < limit {
            // The id every index agrees on so far, and how many agree.
            let mut agreed: Option<[u8; 16]> = None;
            let mut agreeing = 0;
            for prefix in prefixes.iter().cycle() {
                let mut seek = prefix.clone();
                seek.extend_from_slice(&lower);
                let Some(item) = self.tree.range(seek..).next() else {
                    break 'page;
                };
                let (k, _) = item?;
                if !k.starts_with(prefix) || k.len() != prefix.len() + 16 {
                    break 'page;
                }
                let mut id = [0u8; 16];
                id.copy_from_slice(&k[prefix.len()..]);
                if agreed == Some(id) {
                    agreeing += 1;
                } else {
                    agreed = Some(id);
                    agreeing = 1;
                    lower = id.to_vec();
                }
                if agreeing == prefixes.len() {
                    break;
                }
            }
            let Some(id) = agreed else { break };
            if let Some(view) = self.job(&JobId::from_bytes(id))? {
                out.push(view);
            }
            lower = id.to_vec();
            lower.push(0);
        }
        Ok(out)
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        self.tree
            .scan_prefix([kind::NODE])
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// Per queue: how many jobs in each state.
    pub fn queues(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, Error> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for item in self.tree.scan_prefix([kind::COUNT]) {
            let (k, v) = item?;
            let text = String::from_utf8_lossy(&k[1..]).to_string();
            let Some((queue, state)) = text.split_once('\0') else {
                continue;
            };
            let n = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            out.entry(queue.to_owned())
                .or_default()
                .insert(state.to_owned(), n);
        }
        Ok(out)
    }

    /// Every stored row, for comparing two builds.
    pub fn dump(&self) -> Result<Vec<DumpRow>, Error> {
        self.tree
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((char::from(k[0]).to_string(), k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

fn decode_checkpoint(raw: Option<&[u8]>) -> Checkpoint {
    match raw {
        Some(raw) if raw.len() == 40 => {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&raw[..8]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&raw[8..]);
            Checkpoint {
                seq: u64::from_be_bytes(seq),
                hash: Hash(hash),
            }
        }
        _ => Checkpoint {
            seq: 0,
            hash: Hash::GENESIS,
        },
    }
}

#[cfg(test)]
mod tests {
    use gantry_events::event::{JobPlaced, JobStarted, JobSubmitted, JobSucceeded, NodeJoined};
    use gantry_events::{EmbeddedLog, NewEvent, Source};

    use super::*;

    fn spec(queue: &str) -> gantry_events::event::JobSpec {
        let req = gantry_actors::spec::SubmitRequest {
            name: "j".into(),
            image: "busybox".into(),
            queue: Some(queue.into()),
            labels: BTreeMap::from([("team".into(), "a".into())]),
            ..Default::default()
        };
        gantry_actors::spec::validate(&req, &Default::default()).expect("valid")
    }

    fn events() -> Vec<Event> {
        let mut out: Vec<Event> = vec![
            NodeJoined {
                node_id: "n1".into(),
                hostname: "h".into(),
                cpu_millis: 4000,
                memory_bytes: 1 << 30,
                gpus: vec![],
                executor: "process".into(),
                labels: Default::default(),
            }
            .into(),
        ];
        for i in 0..20u128 {
            let job_id = JobId::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0000 + i);
            out.push(
                JobSubmitted {
                    job_id,
                    spec: Box::new(spec(if i % 2 == 0 { "a" } else { "b" })),
                    by: Some(format!("key{}", i % 2)),
                    // Every fourth job in group `vision`, the others in the default group.
                    group: (i % 4 == 0).then(|| "vision".into()),
                    pipeline: None,
                }
                .into(),
            );
            if i % 3 == 0 {
                out.push(
                    JobPlaced {
                        job_id,
                        attempt: 1,
                        node_id: "n1".into(),
                        gpu_uuids: vec![],
                    }
                    .into(),
                );
                out.push(
                    JobStarted {
                        image: None,
                        job_id,
                        attempt: 1,
                        node_id: "n1".into(),
                        handle: None,
                        limits_enforced: None,
                    }
                    .into(),
                );
            }
            if i % 6 == 0 {
                out.push(
                    JobSucceeded {
                        job_id,
                        attempt: 1,
                        duration_ms: 3,
                    }
                    .into(),
                );
            }
        }
        out.push(
            gantry_events::event::KeyCreated {
                key_id: "key0".into(),
                name: "ci".into(),
                role: "submitter".into(),
                group: "vision".into(),
                hash: Hash::GENESIS,
                by: None,
            }
            .into(),
        );
        out.push(
            gantry_events::event::KeyRevoked {
                key_id: "key0".into(),
                by: Some("admin".into()),
            }
            .into(),
        );
        out
    }

    #[tokio::test]
    async fn rebuild_equals_incremental_and_replays_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path().join("log"))
            .await
            .expect("log");
        let incremental = Projections::open(dir.path().join("views")).expect("views");
        for event in events() {
            let appended = log
                .append(vec![NewEvent::new(Source::new("n1", "test"), event)])
                .await
                .expect("append");
            let entries = log.read(appended[0].seq, 1).await.expect("read");
            incremental.apply(&entries).expect("apply");
            // The same entry again: no change.
            incremental.apply(&entries).expect("apply twice");
        }
        let rebuilt = Projections::open(dir.path().join("rebuilt")).expect("views");
        rebuilt.catch_up(&log, |_, _| {}).await.expect("rebuild");
        assert_eq!(
            incremental.dump().expect("dump"),
            rebuilt.dump().expect("dump")
        );
        assert_eq!(
            incremental.checkpoint().expect("cp"),
            rebuilt.checkpoint().expect("cp")
        );

        let running = rebuilt
            .jobs(
                &JobFilter {
                    state: Some("running".into()),
                    ..Default::default()
                },
                None,
                100,
            )
            .expect("list");
        assert_eq!(
            running.len(),
            3,
            "placed at 3, 9, 15; 0, 6, 12, 18 succeeded"
        );
        let queue_a = rebuilt
            .jobs(
                &JobFilter {
                    queue: Some("a".into()),
                    ..Default::default()
                },
                None,
                100,
            )
            .expect("list");
        assert_eq!(queue_a.len(), 10);
        // Cursor pagination walks every job once.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = rebuilt.jobs(&JobFilter::default(), after, 7).expect("page");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            seen.extend(page.into_iter().map(|v| v.id));
        }
        assert_eq!(seen.len(), 20);
        let counts = rebuilt.queues().expect("queues");
        assert_eq!(
            counts["a"]["succeeded"] + counts["b"].get("succeeded").copied().unwrap_or(0),
            4
        );
        assert_eq!(rebuilt.nodes().expect("nodes")[0].status, "ready");

        // Groups: a listing scoped to a group holds only its jobs; a job of another group is
        // not there for it.
        let vision = rebuilt
            .jobs(
                &JobFilter {
                    group: Some("vision".into()),
                    ..Default::default()
                },
                None,
                100,
            )
            .expect("list");
        assert_eq!(vision.len(), 5);
        assert!(vision.iter().all(|v| v.group == "vision"));
        let running_default = rebuilt
            .jobs(
                &JobFilter {
                    group: Some("default".into()),
                    state: Some("running".into()),
                    ..Default::default()
                },
                None,
                100,
            )
            .expect("list");
        assert!(running_default.iter().all(|v| v.group == "default"));

        // Every combination of filters answers what filtering every job would, page by page.
        let all = rebuilt
            .jobs(&JobFilter::default(), None, 1000)
            .expect("all");
        let states = [None, Some("running"), Some("succeeded"), Some("queued")];
        let queues = [None, Some("a"), Some("b")];
        let groups = [None, Some("vision"), Some("default")];
        let nodes = [None, Some("n1"), Some("elsewhere")];
        let labels = [None, Some("team=a"), Some("team=z")];
        for state in states {
            for queue in queues {
                for group in groups {
                    for node in nodes {
                        for label in labels {
                            let filter = JobFilter {
                                state: state.map(Into::into),
                                queue: queue.map(Into::into),
                                group: group.map(Into::into),
                                node: node.map(Into::into),
                                label: label.map(Into::into),
                            };
                            let want: Vec<JobId> = all
                                .iter()
                                .filter(|v| state.is_none_or(|s| v.state == s))
                                .filter(|v| queue.is_none_or(|q| v.spec.queue == q))
                                .filter(|v| group.is_none_or(|g| v.group == g))
                                .filter(|v| {
                                    node.is_none_or(|n| v.attempts.iter().any(|a| a.node == n))
                                })
                                .filter(|v| {
                                    label.is_none_or(|l| {
                                        l.split_once('=').is_some_and(|(k, x)| {
                                            v.spec.labels.get(k).is_some_and(|y| y == x)
                                        })
                                    })
                                })
                                .map(|v| v.id)
                                .collect();
                            let mut got = Vec::new();
                            let mut after = None;
                            loop {
                                let page = rebuilt.jobs(&filter, after, 2).expect("page");
                                assert!(page.len() <= 2);
                                let Some(last) = page.last() else { break };
                                after = Some(last.id);
                                got.extend(page.iter().map(|v| v.id));
                            }
                            assert_eq!(got, want, "{filter:?}");
                        }
                    }
                }
            }
        }
        let on_n1 = all.iter().filter(|v| !v.attempts.is_empty()).count();
        assert!(on_n1 > 0);
        let first = vision[0].id;
        assert!(
            rebuilt
                .job_in(&first, Some("vision"))
                .expect("job")
                .is_some()
        );
        assert!(
            rebuilt
                .job_in(&first, Some("default"))
                .expect("job")
                .is_none()
        );
        assert_eq!(
            rebuilt
                .job(&first)
                .expect("job")
                .and_then(|v| v.submitted_by),
            Some("key0".into())
        );
        // Keys: kept with their hash and revocation, never more.
        let key = rebuilt.key("key0").expect("key").expect("known");
        assert_eq!(
            (key.role.as_str(), key.group.as_str()),
            ("submitter", "vision")
        );
        assert!(key.revoked_ns.is_some());
        assert_eq!(rebuilt.keys().expect("keys").len(), 1);
    }

    #[tokio::test]
    async fn out_of_order_entries_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path().join("log"))
            .await
            .expect("log");
        for event in events().into_iter().take(3) {
            log.append(vec![NewEvent::new(Source::new("n1", "test"), event)])
                .await
                .expect("append");
        }
        let views = Projections::open(dir.path().join("views")).expect("views");
        let third = log.read(3, 1).await.expect("read");
        assert!(matches!(
            views.apply(&third),
            Err(Error::OutOfOrder {
                checkpoint: 0,
                got: 3
            })
        ));
        assert_eq!(
            views.checkpoint().expect("cp").seq,
            0,
            "nothing half-applied"
        );
    }

    /// Why `views` must be rebuilt for `log` (there must be a reason).
    async fn rebuild_reason(views: &Projections, log: &EmbeddedLog) -> String {
        views
            .ensure_built_from(log)
            .await
            .expect("check")
            .expect("a reason")
    }

    /// Views built from one log, opened beside another (a restored backup, a cut tail that
    /// new events then refilled): they notice, say why, and rebuild.
    #[tokio::test]
    async fn views_of_another_log_are_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let append_all = |log: EmbeddedLog, events: Vec<Event>| async move {
            for event in events {
                log.append(vec![NewEvent::new(Source::new("n1", "test"), event)])
                    .await
                    .expect("append");
            }
            log
        };
        let first = append_all(
            EmbeddedLog::open(dir.path().join("first"))
                .await
                .expect("log"),
            events(),
        )
        .await;
        let views = Projections::open(dir.path().join("views")).expect("views");
        views.catch_up(&first, |_, _| {}).await.expect("catch up");
        assert!(
            views
                .ensure_built_from(&first)
                .await
                .expect("check")
                .is_none()
        );
        let built_to = views.checkpoint().expect("cp").seq;

        // Views in the layout of an older gantry (no layout key): rebuilt, not misread.
        views.tree.remove(FORMAT).expect("remove");
        let why = rebuild_reason(&views, &first).await;
        assert!(why.contains("layout 1"), "{why}");
        views.catch_up(&first, |_, _| {}).await.expect("rebuild");
        assert_eq!(views.checkpoint().expect("cp").seq, built_to);
        assert!(
            views
                .ensure_built_from(&first)
                .await
                .expect("check")
                .is_none()
        );

        // A shorter log (its tail cut): rebuilt, and nothing from the longer one stays.
        let shorter = append_all(
            EmbeddedLog::open(dir.path().join("short"))
                .await
                .expect("log"),
            events().into_iter().take(5).collect(),
        )
        .await;
        let why = rebuild_reason(&views, &shorter).await;
        assert!(why.contains(&format!("{built_to}")), "{why}");
        views.catch_up(&shorter, |_, _| {}).await.expect("rebuild");
        let fresh = Projections::open(dir.path().join("fresh")).expect("views");
        fresh.catch_up(&shorter, |_, _| {}).await.expect("build");
        assert_eq!(views.dump().expect("dump"), fresh.dump().expect("dump"));

        // A log as long but with other entries (other ids and times): rebuilt too.
        let other = append_all(
            EmbeddedLog::open(dir.path().join("other"))
                .await
                .expect("log"),
            events().into_iter().take(5).collect(),
        )
        .await;
        let why = rebuild_reason(&views, &other).await;
        assert!(why.contains("another entry"), "{why}");
        assert_eq!(views.checkpoint().expect("cp").seq, 0, "cleared");
    }
}

//! The API's description: OpenAPI 3.1 at `GET /openapi.json`, made from the handlers'
//! `#[utoipa::path]` annotations and the types they answer with, and a page at `/docs` that
//! lists it. The answer types below are what the handlers serialise, so the document and the
//! answers cannot drift apart; `tests/tests/openapi.rs` checks real answers against it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::HttpResponse;
use gantry_actors::actor::supervisor::Health;
use gantry_actors::job::JobState;
use gantry_actors::placement::NodeStatus;
use gantry_actors::telemetry::GpuSample;
use gantry_events::event::{FailureCause, JobId, PipelineStage};
use gantry_events::{Envelope, Hash};
use gantry_projections::{AttemptGpu, Delivery, JobView, NodeView, PipelineView, WebhookView};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::error::ApiError;

/// Every error: a stable `code`, a message, and the JSON path of the field at fault.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// The error answers every route may give (each names its own cause in `code`).
#[derive(Debug, IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// The request is invalid: `code` says why, `field` where.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No key, or an unknown or revoked one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The key's role or group does not allow it.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such thing (or it belongs to another group).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The thing's state does not allow it (e.g. cancelling an ended job), or an idempotency
    /// key reused with another spec.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than the gateway takes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// A body that is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// A `Host` the gateway does not answer for.
    #[response(status = 421)]
    MisdirectedRequest(ErrorBody),
    /// Too many requests from this key or address; `Retry-After` says when to ask again.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// The control plane, the log or the views cannot answer now (`views_behind` after
    /// `min_seq`); retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `POST /v1/jobs` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// True when the idempotency key matched an earlier submission (no new job).
    pub existing: bool,
    /// The log sequence of the submission: a read with `?min_seq=` this sees the job.
    pub seq: u64,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `after` for the next page; null on the last.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next: Option<JobId>,
}

/// A job, with its GPUs' current telemetry while it runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    pub gpu_telemetry: Vec<GpuSample>,
}

/// A cancel request's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub state: JobState,
    pub seq: u64,
}

/// One output of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactItem {
    pub name: String,
    pub attempt: u32,
    pub size_bytes: u64,
    pub sha256: Hash,
    pub content_type: Option<String>,
    pub stored_ns: u64,
    /// When retention deleted its bytes (the record stays).
    pub pruned_ns: Option<u64>,
    pub pruned_reason: Option<String>,
    /// With `?inline=true`, for small artifacts: `utf-8` or `base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactItem>,
}

/// One fact of a receipt, with the event that records it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptFact {
    pub seq: u64,
    pub hash: Hash,
    #[serde(rename = "type")]
    pub type_name: String,
    pub time_ns: u64,
    /// What the event states about the job (fields per type).
    #[schema(value_type = Object)]
    pub fact: serde_json::Value,
    /// The stored entry (record ‖ hash, `events/FORMAT.md` §1), base64: the fact and its hash
    /// can be checked from it alone.
    pub entry: String,
    /// The entry's inclusion proof (hex, RFC 9162) against the receipt's `checkpoint`; absent
    /// until the Auditor has signed a checkpoint covering every fact.
    #[schema(value_type = Option<Vec<String>>)]
    pub proof: Option<Vec<Hash>>,
}

/// The GPUs one attempt held.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptGpus {
    pub attempt: u32,
    pub node: String,
    pub gpus: Vec<AttemptGpu>,
}

/// How a job's results were made.
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipt {
    #[schema(value_type = String, format = Uuid)]
    pub job: JobId,
    pub state: String,
    pub facts: Vec<ReceiptFact>,
    pub gpus: Vec<ReceiptGpus>,
    /// The checkpoint signed by the Auditor that the facts' proofs are against (a signed note).
    pub checkpoint: Option<String>,
}

/// `POST /v1/pipelines` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineSubmitted {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// Stage names in the order they can run.
    pub order: Vec<String>,
    pub seq: u64,
}

/// `POST /v1/pipelines?dry_run=true` answer: the checked stages, nothing recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineDryRun {
    pub dry_run: bool,
    pub order: Vec<String>,
    pub stages: Vec<PipelineStage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineList {
    pub pipelines: Vec<PipelineView>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next: Option<JobId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineCancelAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub state: String,
}

/// `POST /v1/webhooks` answer: the signing secret is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookCreatedAnswer {
    pub id: String,
    pub secret: String,
    pub seq: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeletedAnswer {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretDeletedAnswer {
    pub name: String,
    pub deleted: bool,
}

/// A webhook's recent delivery attempts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub webhook: WebhookView,
    /// Every event up to this sequence has been delivered or given up on.
    pub served_through: Option<u64>,
    pub deliveries: Vec<Delivery>,
}

/// What a node has free now (from the scheduler).
#[derive(Debug, Serialize, ToSchema)]
pub struct Free {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    /// UUIDs of its free GPUs.
    pub gpus: Vec<String>,
}

/// A node, with its GPUs' telemetry, when it was last heard and what it has free.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub node: NodeView,
    pub gpu_telemetry: Vec<GpuSample>,
    /// Milliseconds since its last heartbeat (null: not heard by this gateway).
    pub last_heartbeat_ms: Option<u64>,
    /// Null when no scheduler answered.
    pub free: Option<Free>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeChanged {
    pub id: String,
    pub status: NodeStatus,
}

/// Jobs per queue and state (counts).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: BTreeMap<String, BTreeMap<String, u64>>,
}

/// CloudEvents 1.0 in structured JSON mode (`?format=cloudevents`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    /// `gantry/<node>/<actor>`: who recorded it.
    pub source: String,
    /// `dev.gantry.<type>`, e.g. `dev.gantry.job.submitted`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// RFC 3339, nanoseconds.
    pub time: String,
    pub datacontenttype: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The event's sequence: resume after it.
    pub gantryseq: u64,
    /// The event's chain hash.
    pub gantryhash: Hash,
    /// The job it is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// An event as the API sends it: gantry's envelope, or a CloudEvent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventItem {
    Gantry(Envelope),
    Cloud(CloudEvent),
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventItem>,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

/// A new API key: the key is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreatedAnswer {
    pub key_id: String,
    pub key: String,
    pub name: String,
    pub role: String,
    pub group: String,
}

/// An API key (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyItem {
    pub key_id: String,
    pub name: String,
    pub role: String,
    pub group: String,
    pub created_ns: u64,
    pub created_by: Option<String>,
    pub revoked_ns: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyRevokedAnswer {
    pub key_id: String,
    pub revoked: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretStored {
    pub name: String,
    /// The name it is kept under (the group's prefix).
    pub stored_as: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    pub status: String,
}

/// `/readyz`: 200 when the views have caught up with the log and the log takes appends.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub log_head: u64,
    pub views_seq: u64,
    pub projection_lag: u64,
    /// Why the log refuses appends.
    pub log_fault: Option<String>,
    /// Null on a gateway without a local supervisor.
    pub health: Option<Health>,
    /// In a fleet: whether this process leads the control plane.
    pub leading: Option<bool>,
}

/// A message of the live log websocket (`/v1/jobs/{id}/logs/ws`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LogMessage {
    Chunk(LogChunk),
    Started(LogStarted),
    End(LogEnd),
}

/// Output as it was written.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogChunk {
    pub attempt: u32,
    /// Where `data` starts in the attempt's output.
    pub offset: u64,
    pub data: String,
}

/// A retry started a new attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogStarted {
    pub attempt: u32,
    pub started: bool,
}

/// The job ended; the stream closes after this.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEnd {
    pub end: bool,
    pub state: String,
    pub attempt: u32,
    pub exit_code: Option<i64>,
    pub cause: Option<FailureCause>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gantry",
        description = "Runs GPU/ML container jobs across a fleet and keeps a tamper-evident, \
                       replayable history of everything that happened. Every route answers \
                       errors as `{\"error\": {\"code\", \"message\", \"field\"}}`.",
    ),
    modifiers(&BearerKeys),
    security(("api_key" = [])),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::metrics::metrics,
        crate::jobs::submit,
        crate::jobs::list_jobs,
        crate::jobs::get_job,
        crate::jobs::cancel,
        crate::jobs::logs,
        crate::events::logs_ws,
        crate::artifacts::list,
        crate::artifacts::download,
        crate::receipt::receipt,
        crate::pipelines::submit,
        crate::pipelines::list,
        crate::pipelines::get,
        crate::pipelines::cancel,
        crate::webhooks::create,
        crate::webhooks::list,
        crate::webhooks::delete,
        crate::webhooks::deliveries,
        crate::nodes::nodes,
        crate::nodes::change_node,
        crate::nodes::queues,
        crate::audit::checkpoint,
        crate::audit::inclusion,
        crate::audit::consistency,
        crate::events::events,
        crate::events::events_ws,
        crate::events::events_sse,
        crate::keys::create,
        crate::keys::list,
        crate::keys::revoke,
        crate::secrets::list,
        crate::secrets::set,
        crate::secrets::delete,
        document,
        docs,
        crate::dashboard::page,
    ),
    components(schemas(LogMessage, CloudEvent))
)]
struct Api;

/// Keys travel as `Authorization: Bearer KEY`.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, made once.
pub fn spec() -> &'static serde_json::Value {
    static SPEC: OnceLock<serde_json::Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut doc = Api::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        serde_json::to_value(doc).unwrap_or_default()
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok().json(spec())
}

/// A page listing the routes and schemas of this document (no assets from elsewhere).
#[utoipa::path(get, path = "/docs", tag = "meta", security(()),
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
pub(crate) async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", crate::dashboard::CSP))
        .body(include_str!("docs.html"))
}

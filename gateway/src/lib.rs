//! gantry's HTTP gateway: REST endpoints that read the projections and send commands to the
//! Scheduler.
//!
//! The gateway validates input at the edge and never mutates a view: every change is a command
//! the Scheduler turns into events. Errors are JSON `{"error": {"code", "message", "field"}}`
//! with a stable `code`. A write answers once the views show it (read-your-writes), or after a
//! short bound.
//!
//! `GET /v1/events/ws?after=SEQ` is a websocket that sends every event after `SEQ` as one JSON
//! text message each, history first and then live, for dashboards.
//!
//! Must not depend on: `gantry-nodes` (no Docker, NVML, S3 or NATS clients here).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError, web};
use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::actor::scheduler::{CommandError, NodeChange};
use gantry_actors::actor::supervisor::{GetHealth, Supervisor};
use gantry_actors::actor::worker::Worker;
use gantry_actors::control::Control;
use gantry_actors::job::JobState;
use gantry_actors::placement::NodeStatus;
use gantry_actors::spec::SubmitRequest;
use gantry_actors::telemetry::Telemetry;
use gantry_events::EventLog;
use gantry_events::event::JobId;
use gantry_projections::{JobFilter, Projections};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What every handler shares.
#[derive(Clone)]
pub struct Gateway {
    /// Where commands go: the scheduler in this process, or the leading control plane.
    pub control: Arc<dyn Control>,
    /// This process's node health, where it runs a node (embedded).
    pub supervisor: Option<Addr<Supervisor>>,
    pub views: Projections,
    pub log: Arc<dyn EventLog>,
    /// Where attempts' output is read from.
    pub output: Arc<dyn AttemptOutput>,
    /// The projections' checkpoint sequence, as the projector advances it.
    pub views_seq: watch::Receiver<u64>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The latest GPU samples (not in the log), shown beside node and job views.
    pub telemetry: Telemetry,
    /// Fleet mode: whether this control plane leads now (`None` embedded).
    pub leading: Option<watch::Receiver<bool>>,
    /// Origins (`scheme://host[:port]`) besides the gateway's own whose web pages may open the
    /// event websocket. Empty: same origin only.
    pub allowed_origins: Vec<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: u16, code: &str, message: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            field,
        }
    }

    fn unavailable(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(503, "unavailable", message.to_string(), None)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(serde_json::json!({ "error": self }))
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        let fault = e.fault();
        ApiError {
            status: fault.status,
            code: fault.code,
            message: fault.message,
            field: fault.field,
        }
    }
}

impl From<gantry_projections::Error> for ApiError {
    fn from(e: gantry_projections::Error) -> ApiError {
        ApiError::unavailable(e)
    }
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::unavailable(format!("supervisor: {e}"))
}

/// Where an attempt's output (stdout and stderr together) is read from.
pub trait AttemptOutput: Send + Sync + 'static {
    /// The output kept so far; empty when there is none (yet).
    fn read(&self, job: JobId, attempt: u32) -> BoxFuture<'_, Result<Vec<u8>, String>>;
}

/// Output on this machine's disk, where the local Worker writes it (embedded).
#[derive(Debug, Clone)]
pub struct LocalOutput(pub PathBuf);

impl AttemptOutput for LocalOutput {
    fn read(&self, job: JobId, attempt: u32) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        let path = Worker::log_path(&self.0, job, attempt);
        async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}

/// Paths in a job request that must hold JSON objects (serde would take an array for a
/// struct, filling fields by position).
const OBJECT_PATHS: &[&str] = &["", "resources", "resources.gpus", "retry", "env", "labels"];

fn found_null(at: Option<&serde_json::Value>) -> bool {
    at.is_some_and(serde_json::Value::is_null)
}

/// Parses a JSON request body into `T`: invalid JSON, an array where an object belongs, an
/// unknown or mistyped field are all 400 with the JSON path of the field at fault.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    objects: &[&str],
) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "invalid_json", format!("not JSON: {e}"), None))?;
    for path in objects {
        let mut at = Some(&value);
        for key in path.split('.').filter(|k| !k.is_empty()) {
            at = at.and_then(|v| v.get(key));
        }
        // An optional part may be null; the body itself may not.
        let optional_null = found_null(at) && !path.is_empty();
        if let Some(found) = at
            && !found.is_object()
            && !optional_null
        {
            return Err(ApiError::new(
                400,
                "invalid_type",
                "expected a JSON object",
                Some(if path.is_empty() {
                    "$".into()
                } else {
                    (*path).into()
                }),
            ));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        ApiError::new(400, "invalid_json", e.inner().to_string(), field)
    })
}

/// Registers the routes. Unknown paths answer a JSON 404; a known path with a method it does
/// not take answers 405 with `Allow`.
pub fn routes(cfg: &mut web::ServiceConfig, gateway: Gateway) {
    cfg.app_data(web::Data::new(gateway))
        .app_data(web::QueryConfig::default().error_handler(|err, _| {
            let message = err.to_string();
            // serde names the parameter at fault in its message.
            let field = message.split('`').nth(1).map(str::to_owned);
            ApiError::new(400, "invalid_query", message, field).into()
        }))
        .app_data(
            web::PathConfig::default().error_handler(|err, _| {
                ApiError::new(404, "not_found", err.to_string(), None).into()
            }),
        );
    let resource = |path: &str, allow: &'static str| {
        web::resource(path).default_service(web::to(move || async move {
            HttpResponse::MethodNotAllowed()
                .insert_header(("Allow", allow))
                .json(serde_json::json!({ "error": ApiError::new(
                    405,
                    "method_not_allowed",
                    format!("allowed: {allow}"),
                    None,
                ) }))
        }))
    };
    cfg.service(resource("/healthz", "GET").route(web::get().to(healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(readyz)))
        .service(
            resource("/v1/jobs", "GET, POST")
                .route(web::post().to(submit))
                .route(web::get().to(list_jobs)),
        )
        .service(resource("/v1/jobs/{id}", "GET").route(web::get().to(get_job)))
        .service(resource("/v1/jobs/{id}/cancel", "POST").route(web::post().to(cancel)))
        .service(resource("/v1/jobs/{id}/logs", "GET").route(web::get().to(logs)))
        .service(resource("/v1/nodes", "GET").route(web::get().to(nodes)))
        .service(resource("/v1/nodes/{id}/{action}", "POST").route(web::post().to(change_node)))
        .service(resource("/v1/queues", "GET").route(web::get().to(queues)))
        .service(resource("/v1/events", "GET").route(web::get().to(events)))
        .service(resource("/v1/events/ws", "GET").route(web::get().to(events_ws)))
        .default_service(web::to(|req: actix_web::HttpRequest| async move {
            ApiError::new(404, "not_found", format!("no route {}", req.path()), None)
                .error_response()
        }));
}

/// Reads a request body of at most the gateway's limit (413 past it). `json`: a non-empty
/// body must be declared `application/json` (415 otherwise).
async fn read_body(
    gateway: &Gateway,
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    use futures::StreamExt;
    let limit = gateway.max_body_bytes;
    let too_large = || ApiError::new(413, "too_large", format!("at most {limit} bytes"), None);
    if req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
    {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(400, "invalid_body", e.to_string(), None))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let declared_json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !body.iter().all(u8::is_ascii_whitespace) && !declared_json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send application/json",
            None,
        ));
    }
    Ok(body.freeze())
}

/// Waits (briefly) until the views include sequence `seq`.
async fn views_reach(gateway: &Gateway, seq: u64) {
    let mut rx = gateway.views_seq.clone();
    let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| *s >= seq)).await;
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(gateway: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    let head = gateway.log.head().await.map_err(ApiError::unavailable)?;
    let views = *gateway.views_seq.borrow();
    let health = match &gateway.supervisor {
        Some(supervisor) => Some(supervisor.send(GetHealth).await.map_err(mailbox)?),
        None => None,
    };
    let caught_up = views >= head.seq;
    // A log that refuses appends (damage found at open, poisoned by a failed fsync) cannot
    // take a submission, however current the views are.
    let log_fault = gateway.log.fault();
    let ready = caught_up && log_fault.is_none();
    let body = serde_json::json!({
        "ready": ready,
        "log_head": head.seq,
        "views_seq": views,
        "projection_lag": head.seq.saturating_sub(views),
        "log_fault": log_fault,
        "health": health,
        "leading": gateway.leading.as_ref().map(|l| *l.borrow()),
    });
    Ok(if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

async fn submit(
    gateway: web::Data<Gateway>,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&gateway, &req, payload).await?;
    let request: SubmitRequest = parse_body(&body, OBJECT_PATHS)?;
    let reply = gateway.control.submit(request).await?;
    views_reach(&gateway, reply.seq).await;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "id": reply.job_id,
        "existing": reply.existing,
    })))
}

/// A page size: 100 by default, 1 to 1000.
fn page_limit(asked: Option<usize>) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            400,
            "out_of_range",
            "limit is 1 to 1000",
            Some("limit".into()),
        ));
    }
    Ok(limit)
}

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            400,
            "invalid_id",
            format!("{raw:?} is not a job id"),
            Some("id".into()),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    label: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    gateway: web::Data<Gateway>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    if let Some(state) = &q.state
        && !JobState::ALL.iter().any(|s| s.as_str() == state)
    {
        let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::new(
            400,
            "invalid_state",
            format!("state is one of {}", states.join(", ")),
            Some("state".into()),
        ));
    }
    let filter = JobFilter {
        state: q.state,
        queue: q.queue,
        label: q.label,
    };
    let jobs = gateway.views.jobs(&filter, after, limit)?;
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "jobs": jobs, "next": next })))
}

async fn get_job(
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    match gateway.views.job(&id)? {
        Some(view) => {
            // While it runs, how busy its GPUs are now (telemetry, not history).
            let samples = if view.state == "running" {
                gateway.telemetry.gpus(&view.gpu_uuids)
            } else {
                Vec::new()
            };
            let mut value = serde_json::to_value(view).unwrap_or_default();
            value["gpu_telemetry"] = serde_json::to_value(samples).unwrap_or_default();
            Ok(HttpResponse::Ok().json(value))
        }
        None => Err(ApiError::new(
            404,
            "not_found",
            format!("no job {id}"),
            None,
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

/// Longest reason a cancel or node change may give.
const MAX_REASON_BYTES: usize = 1024;

/// An optional `{"reason": …}` body: empty is no reason; anything else must parse, and the
/// reason is bounded and printable.
fn reason_of(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let CancelBody { reason } = parse_body(body, &[""])?;
    if let Some(reason) = &reason
        && (reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control))
    {
        return Err(ApiError::new(
            400,
            "invalid_reason",
            format!("at most {MAX_REASON_BYTES} bytes, no control characters"),
            Some("reason".into()),
        ));
    }
    Ok(reason)
}

async fn cancel(
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let reason = reason_of(&read_body(&gateway, &req, payload).await?)?;
    let reply = gateway.control.cancel(id, reason).await?;
    views_reach(&gateway, reply.seq).await;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": id, "state": reply.state })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    attempt: Option<u32>,
}

async fn logs(
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let Some(view) = gateway.views.job(&id)? else {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("no job {id}"),
            None,
        ));
    };
    let attempt = query.attempt.unwrap_or(view.attempt);
    let text = gateway
        .output
        .read(id, attempt)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Gantry-Attempt", attempt.to_string()))
        .body(text))
}

async fn nodes(gateway: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    // Free resources come from the scheduler (the leading control plane in a fleet); without
    // one the views still answer, without them.
    let live: std::collections::HashMap<String, gantry_actors::placement::Node> =
        match gateway.control.nodes().await {
            Ok(nodes) => nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            Err(error) => {
                tracing::warn!(%error, "free resources unavailable");
                Default::default()
            }
        };
    let nodes: Vec<serde_json::Value> = gateway
        .views
        .nodes()?
        .into_iter()
        .map(|node| {
            let samples = gateway.telemetry.node(&node.id);
            let heard = gateway.telemetry.last_heard(&node.id);
            let free = live.get(&node.id).map(|n| {
                serde_json::json!({
                    "cpu_millis": n.free_cpu_millis,
                    "memory_bytes": n.free_memory_bytes,
                    "gpus": n.free_gpus,
                })
            });
            let mut value = serde_json::to_value(node).unwrap_or_default();
            value["gpu_telemetry"] = serde_json::to_value(samples).unwrap_or_default();
            value["last_heartbeat_ms"] = serde_json::to_value(heard).unwrap_or_default();
            value["free"] = free.unwrap_or_default();
            value
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "nodes": nodes })))
}

/// `POST /v1/nodes/{id}/{cordon|uncordon|drain}`.
async fn change_node(
    gateway: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (node, action) = path.into_inner();
    let status = match action.as_str() {
        "cordon" => NodeStatus::Cordoned,
        "uncordon" => NodeStatus::Ready,
        "drain" => NodeStatus::Draining,
        _ => {
            return Err(ApiError::new(
                404,
                "not_found",
                format!("no node action {action:?} (cordon, uncordon, drain)"),
                Some("action".into()),
            ));
        }
    };
    let reason = reason_of(&read_body(&gateway, &req, payload).await?)?
        .unwrap_or_else(|| format!("{action} by an operator"));
    gateway
        .control
        .change_node(NodeChange {
            node: node.clone(),
            status,
            reason,
        })
        .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": node, "status": status })))
}

async fn queues(gateway: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(serde_json::json!({ "queues": gateway.views.queues()? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    gateway: web::Data<Gateway>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let after = first_after(query.after)? - 1;
    let limit = page_limit(query.limit)?;
    let entries = gateway
        .log
        .read(after + 1, limit)
        .await
        .map_err(ApiError::unavailable)?;
    let events: Vec<serde_json::Value> = entries.iter().map(event_value).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "events": events })))
}

/// The first sequence after `after` (a sequence, 0 or absent: from the start).
fn first_after(after: Option<u64>) -> Result<u64, ApiError> {
    after.unwrap_or(0).checked_add(1).ok_or_else(|| {
        ApiError::new(
            400,
            "out_of_range",
            format!("after is at most {}", u64::MAX - 1),
            Some("after".into()),
        )
    })
}

/// One event as clients see it; an entry that does not decode says so instead.
fn event_value(entry: &gantry_events::Entry) -> serde_json::Value {
    match entry.open() {
        Ok(env) => serde_json::to_value(env).unwrap_or_default(),
        Err(err) => serde_json::json!({ "seq": entry.seq, "undecodable": err.to_string() }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    after: Option<u64>,
}

/// Whether a browser page may open the websocket: a request without `Origin` is not from a
/// page; one with it must be the gateway's own origin (same host and port as `Host`) or listed.
/// Otherwise any page a user visits could read every event.
fn origin_allowed(req: &actix_web::HttpRequest, allowed: &[String]) -> bool {
    use actix_web::http::header::{HOST, ORIGIN};
    let Some(origin) = req.headers().get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| host.is_some_and(|h| h.eq_ignore_ascii_case(rest)))
}

/// Streams events over a websocket: history after `after`, then live.
async fn events_ws(
    gateway: web::Data<Gateway>,
    req: actix_web::HttpRequest,
    body: web::Payload,
    query: web::Query<WsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    use futures::StreamExt;
    if !origin_allowed(&req, &gateway.allowed_origins) {
        return Err(ApiError::new(
            403,
            "forbidden_origin",
            "this origin may not open the event stream (see --allow-origin)",
            None,
        )
        .into());
    }
    let mut events = gateway
        .log
        .subscribe(first_after(query.after)?)
        .await
        .map_err(ApiError::unavailable)?;
    let (response, mut session, mut incoming) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                entry = events.next() => match entry {
                    Some(Ok(entry)) => {
                        if session.text(event_value(&entry).to_string()).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "websocket event stream failed");
                        break;
                    }
                    None => break,
                },
                message = incoming.next() => match message {
                    Some(Ok(actix_ws::Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>) -> actix_web::HttpRequest {
        let mut req =
            actix_web::test::TestRequest::default().insert_header(("Host", "gantry.internal:7700"));
        if let Some(origin) = origin {
            req = req.insert_header(("Origin", origin));
        }
        req.to_http_request()
    }

    #[test]
    fn an_origin_is_the_gateways_own_or_one_allowed() {
        let allowed = vec!["https://dash.example.com".to_owned()];
        assert!(origin_allowed(&request(None), &[]));
        assert!(origin_allowed(
            &request(Some("http://gantry.internal:7700")),
            &[]
        ));
        assert!(!origin_allowed(
            &request(Some("http://gantry.internal:7701")),
            &[]
        ));
        assert!(!origin_allowed(
            &request(Some("https://dash.example.com")),
            &[]
        ));
        assert!(origin_allowed(
            &request(Some("https://dash.example.com")),
            &allowed
        ));
        assert!(!origin_allowed(
            &request(Some("https://evil.example")),
            &allowed
        ));
    }
}

//! gantry's HTTP gateway: REST endpoints that read the projections and send commands to the
//! Scheduler.
//!
//! The gateway validates input at the edge and never mutates a view: every change is a command
//! the Scheduler turns into events. Errors are JSON `{"error": {"code", "message", "field"}}`
//! with a stable `code`. A write answers once the views show it (read-your-writes), or after a
//! short bound.
//!
//! `GET /v1/events/ws?after=SEQ` (a websocket) and `GET /v1/events/sse` (Server-Sent Events)
//! send the events after `SEQ`, history first and then live, filtered by type, job and queue,
//! for dashboards (see `events`). Reads take `min_seq` to see a write they just made.
//!
//! Who may do what ([`auth`]): with authentication on, every route but the health checks needs
//! an API key; a key has a role and a group, and sees only its group's jobs and events.
//!
//! Layout: one file per resource (`jobs`, `pipelines`, `artifacts`, `receipt`, `nodes`,
//! `events`, `keys`, `secrets`, `health`), with `auth`
//! (keys, roles, Host check, rate limit), `body` (reading requests) and `error` beside them.
//!
//! Must not depend on: `gantry-nodes` (no Docker, NVML, S3 or NATS clients here).

mod artifacts;
pub mod audit;
pub mod auth;
mod body;
mod dashboard;
pub mod error;
mod events;
mod health;
mod jobs;
mod keys;
pub mod metrics;
mod nodes;
pub mod openapi;
mod pipelines;
mod receipt;
mod secrets;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;

use actix::Addr;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::actor::supervisor::Supervisor;
use gantry_actors::actor::worker::Worker;
use gantry_actors::artifacts::ArtifactStore;
use gantry_actors::control::Control;
use gantry_actors::secrets::SecretStore;
use gantry_actors::telemetry::Telemetry;
use gantry_events::EventLog;
use gantry_events::event::JobId;
use gantry_projections::Projections;
use tokio::sync::watch;

pub use auth::{Auth, AuthOptions, Caller, Role};
pub use error::ApiError;
pub use events::{Rendered, SEND_TIMEOUT, StreamSlots};
pub use receipt::receipt_fact;

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
    /// Keys, roles, the Host check and the rate limit.
    pub auth: Arc<Auth>,
    /// Event websockets open, and their bounds.
    pub streams: Arc<StreamSlots>,
    /// Recent entries decoded and written once for every stream that sends them.
    pub rendered: Arc<Rendered>,
    /// Where the one-time bootstrap token was written (removed once it has made an admin key).
    pub bootstrap_file: Option<PathBuf>,
    /// Where secret values go (encrypted): inline secrets of submitted jobs and stored ones.
    pub secrets: Arc<dyn SecretStore>,
    /// Where jobs' outputs are read from (`None`: this gateway cannot reach them).
    pub artifacts: Option<Arc<dyn ArtifactStore>>,
}

impl Gateway {
    /// Who is asking (see [`Auth::caller`]).
    pub fn caller(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        self.auth.caller(&self.views, req)
    }

    /// The bootstrap token made the first admin key: its file goes.
    fn bootstrap_spent(&self) {
        if let Some(path) = &self.bootstrap_file
            && let Err(error) = std::fs::remove_file(path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove the bootstrap token");
        }
    }
}

/// Parses the query string into `T` (after the caller is known, so a caller without a key
/// learns nothing from validation): 400 naming the parameter at fault.
fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|err| {
            let message = err.to_string();
            // serde names the parameter at fault in its message.
            let field = message.split('`').nth(1).map(str::to_owned);
            ApiError::new(400, "invalid_query", message, field)
        })
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Where an attempt's output (stdout and stderr together) is read from.
pub trait AttemptOutput: Send + Sync + 'static {
    /// The output kept so far; empty when there is none (yet).
    fn read(&self, job: JobId, attempt: u32) -> BoxFuture<'_, Result<Vec<u8>, String>>;

    /// The output kept so far from byte `from` on (live logs read only what is new).
    fn read_from(
        &self,
        job: JobId,
        attempt: u32,
        from: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        async move {
            let mut all = self.read(job, attempt).await?;
            let from = usize::try_from(from).unwrap_or(usize::MAX).min(all.len());
            Ok(all.split_off(from))
        }
        .boxed()
    }
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

    fn read_from(
        &self,
        job: JobId,
        attempt: u32,
        from: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = Worker::log_path(&self.0, job, attempt);
        async move {
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e.to_string()),
            };
            file.seek(std::io::SeekFrom::Start(from))
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            file.read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
            Ok(out)
        }
        .boxed()
    }
}

/// Registers the routes. Unknown paths answer a JSON 404; a known path with a method it does
/// not take answers 405 with `Allow`.
pub fn routes(cfg: &mut web::ServiceConfig, gateway: Gateway) {
    cfg.app_data(web::Data::new(gateway)).app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::new(404, "not_found", err.to_string(), None).into()),
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
    cfg.service(resource("/", "GET").route(web::get().to(dashboard::page)))
        .service(resource("/openapi.json", "GET").route(web::get().to(openapi::document)))
        .service(resource("/docs", "GET").route(web::get().to(openapi::docs)))
        .service(resource("/healthz", "GET").route(web::get().to(health::healthz)))
        .service(resource("/metrics", "GET").route(web::get().to(metrics::metrics)))
        .service(resource("/readyz", "GET").route(web::get().to(health::readyz)))
        .service(
            resource("/v1/jobs", "GET, POST")
                .route(web::post().to(jobs::submit))
                .route(web::get().to(jobs::list_jobs)),
        )
        .service(resource("/v1/jobs/{id}", "GET").route(web::get().to(jobs::get_job)))
        .service(resource("/v1/jobs/{id}/cancel", "POST").route(web::post().to(jobs::cancel)))
        .service(resource("/v1/jobs/{id}/logs", "GET").route(web::get().to(jobs::logs)))
        .service(resource("/v1/jobs/{id}/logs/ws", "GET").route(web::get().to(events::logs_ws)))
        .service(resource("/v1/jobs/{id}/artifacts", "GET").route(web::get().to(artifacts::list)))
        .service(resource("/v1/jobs/{id}/receipt", "GET").route(web::get().to(receipt::receipt)))
        .service(
            resource("/v1/jobs/{id}/artifacts/{name:.+}", "GET")
                .route(web::get().to(artifacts::download)),
        )
        .service(
            resource("/v1/pipelines", "GET, POST")
                .route(web::post().to(pipelines::submit))
                .route(web::get().to(pipelines::list)),
        )
        .service(resource("/v1/pipelines/{id}", "GET").route(web::get().to(pipelines::get)))
        .service(
            resource("/v1/pipelines/{id}/cancel", "POST").route(web::post().to(pipelines::cancel)),
        )
        .service(
            resource("/v1/webhooks", "GET, POST")
                .route(web::post().to(webhooks::create))
                .route(web::get().to(webhooks::list)),
        )
        .service(resource("/v1/webhooks/{id}", "DELETE").route(web::delete().to(webhooks::delete)))
        .service(
            resource("/v1/webhooks/{id}/deliveries", "GET")
                .route(web::get().to(webhooks::deliveries)),
        )
        .service(resource("/v1/nodes", "GET").route(web::get().to(nodes::nodes)))
        .service(
            resource("/v1/nodes/{id}/{action}", "POST").route(web::post().to(nodes::change_node)),
        )
        .service(resource("/v1/queues", "GET").route(web::get().to(nodes::queues)))
        .service(resource("/v1/audit/checkpoint", "GET").route(web::get().to(audit::checkpoint)))
        .service(
            resource("/v1/audit/proof/inclusion", "GET").route(web::get().to(audit::inclusion)),
        )
        .service(
            resource("/v1/audit/proof/consistency", "GET").route(web::get().to(audit::consistency)),
        )
        .service(resource("/v1/events", "GET").route(web::get().to(events::events)))
        .service(resource("/v1/events/ws", "GET").route(web::get().to(events::events_ws)))
        .service(resource("/v1/events/sse", "GET").route(web::get().to(events::events_sse)))
        .service(
            resource("/v1/keys", "GET, POST")
                .route(web::post().to(keys::create))
                .route(web::get().to(keys::list)),
        )
        .service(resource("/v1/keys/{id}/revoke", "POST").route(web::post().to(keys::revoke)))
        .service(resource("/v1/secrets", "GET").route(web::get().to(secrets::list)))
        .service(
            resource("/v1/secrets/{name}", "PUT, DELETE")
                .route(web::put().to(secrets::set))
                .route(web::delete().to(secrets::delete)),
        )
        .default_service(web::to(|req: actix_web::HttpRequest| async move {
            ApiError::new(404, "not_found", format!("no route {}", req.path()), None)
                .error_response()
        }));
}

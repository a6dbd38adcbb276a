//! `GET /metrics`: Prometheus text exposition, recorded with the `metrics` crate and rendered by
//! its Prometheus exporter. Counters and histograms are recorded where things happen (HTTP
//! requests by the [`track`] middleware, appends and placements by the Scheduler, slow stream
//! clients by `events`); what the views and telemetry already know (jobs by queue and state,
//! queue depth, projection lag, open streams, GPU samples) is set as gauges when scraped.
//!
//! Metric names: `gantry_http_requests_total{method,route,status}`,
//! `gantry_http_request_duration_seconds{method,route}`, `gantry_append_duration_seconds`,
//! `gantry_append_batch_events`, `gantry_placement_latency_seconds`, `gantry_jobs{queue,state}`,
//! `gantry_queue_depth{queue}`, `gantry_log_head_seq`, `gantry_views_seq`,
//! `gantry_projection_lag_events`, `gantry_event_streams_open`,
//! `gantry_event_streams_dropped_total{reason}`, `gantry_gpu_utilisation_percent{node,gpu}`,
//! `gantry_gpu_memory_used_bytes{node,gpu}`, `gantry_gpu_temperature_celsius{node,gpu}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Gateway;
use crate::auth::Role;
use crate::error::ApiError;

/// Bucket bounds (seconds) of the latency histograms.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of the append batch size.
const EVENTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Every (queue, state) whose job count was ever set, so one that drops to zero is set to zero.
static SEEN: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

fn set_jobs((queue, state): &(String, String), n: u64) {
    if state == "queued" {
        metrics::gauge!("gantry_queue_depth", "queue" => queue.clone()).set(n as f64);
    }
    metrics::gauge!("gantry_jobs", "queue" => queue.clone(), "state" => state.clone())
        .set(n as f64);
}

/// The process's recorder, installed on first use (one per process: the `metrics` facade is
/// global). `None` when another recorder was installed first.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), EVENTS))
                .and_then(PrometheusBuilder::install_recorder);
            match built {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "no Prometheus recorder: /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

/// Middleware: counts every request and times it, by method, route pattern (never the raw
/// path, so ids do not make new series) and status.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.call(req).await;
    let status = match &response {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    metrics::counter!(
        "gantry_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "gantry_http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` (operators and admins: it counts every group's jobs).
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format (operators)", content_type = "text/plain", body = String), crate::openapi::Errors))]
pub(crate) async fn metrics(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let Some(handle) = handle() else {
        return Err(ApiError::unavailable("no metrics recorder in this process"));
    };
    // The views keep only non-zero counts: a series set before and missing now is zero.
    let mut now = BTreeMap::new();
    for (queue, states) in gateway.views.queues()? {
        for (state, n) in states {
            now.insert((queue.clone(), state), n);
        }
    }
    {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        for key in seen.iter() {
            if !now.contains_key(key) {
                set_jobs(key, 0);
            }
        }
        for (key, n) in &now {
            set_jobs(key, *n);
            seen.insert(key.clone());
        }
    }
    let head = gateway.log.head().await.map_err(ApiError::unavailable)?.seq;
    let views = *gateway.views_seq.borrow();
    metrics::gauge!("gantry_log_head_seq").set(head as f64);
    metrics::gauge!("gantry_views_seq").set(views as f64);
    metrics::gauge!("gantry_projection_lag_events").set(head.saturating_sub(views) as f64);
    metrics::gauge!("gantry_event_streams_open").set(gateway.streams.open() as f64);
    for (node, samples) in gateway.telemetry.all() {
        for s in samples {
            let labels = [("node", node.clone()), ("gpu", s.uuid.clone())];
            if let Some(u) = s.utilisation_pct {
                metrics::gauge!("gantry_gpu_utilisation_percent", &labels).set(f64::from(u));
            }
            if let Some(m) = s.memory_used_bytes {
                metrics::gauge!("gantry_gpu_memory_used_bytes", &labels).set(m as f64);
            }
            if let Some(t) = s.temperature_c {
                metrics::gauge!("gantry_gpu_temperature_celsius", &labels).set(f64::from(t));
            }
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render()))
}

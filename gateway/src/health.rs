//! Liveness and readiness, for load balancers and orchestrators (no key needed: they say
//! nothing about jobs).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use gantry_actors::actor::supervisor::GetHealth;

use crate::Gateway;
use crate::error::{ApiError, mailbox};

/// Waits (briefly) until the views include sequence `seq`.
pub(crate) async fn views_reach(gateway: &Gateway, seq: u64) {
    let mut rx = gateway.views_seq.clone();
    let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| *s >= seq)).await;
}

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

pub(crate) async fn readyz(gateway: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
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

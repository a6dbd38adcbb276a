//! Liveness and readiness, for load balancers and orchestrators (no key needed: they say
//! nothing about jobs).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use gantry_actors::actor::supervisor::GetHealth;

use crate::Gateway;
use crate::error::{ApiError, mailbox};
use crate::openapi::{Alive, Readiness};

/// Waits (briefly) until the views include sequence `seq`.
/// How long a read carrying `min_seq` waits for the views to reach it.
const MIN_SEQ_WAIT: Duration = Duration::from_secs(5);

/// Read-your-writes: a read that names the sequence a write answered (`?min_seq=SEQ`, or the
/// header `Gantry-Min-Seq: SEQ`) is answered once the views include it, so a client never gets
/// a 404 for the job it has just created. 503 `views_behind` (Retry-After: 1) when they do not
/// within a few seconds.
pub(crate) async fn read_after(
    gateway: &Gateway,
    req: &actix_web::HttpRequest,
    min_seq: Option<u64>,
) -> Result<(), ApiError> {
    let header = crate::body::sequence_header(
        req,
        "Gantry-Min-Seq",
        "invalid_min_seq",
        "Gantry-Min-Seq is a sequence number",
    )?;
    let Some(want) = min_seq.max(header) else {
        return Ok(());
    };
    let mut rx = gateway.views_seq.clone();
    match tokio::time::timeout(MIN_SEQ_WAIT, rx.wait_for(|s| *s >= want)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ApiError::new(
            503,
            "views_behind",
            format!(
                "the views have not reached sequence {want} yet (they are at {})",
                *gateway.views_seq.borrow()
            ),
            Some("min_seq".into()),
        )
        .retry_after(1)),
    }
}

pub(crate) async fn views_reach(gateway: &Gateway, seq: u64) {
    let mut rx = gateway.views_seq.clone();
    let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| *s >= seq)).await;
}

#[utoipa::path(get, path = "/healthz", tag = "meta", security(()), responses((status = 200, description = "The process answers", body = crate::openapi::Alive)))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Alive {
        status: "alive".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "meta", security(()), responses((status = 200, description = "Ready", body = crate::openapi::Readiness), (status = 503, description = "Not ready", body = crate::openapi::Readiness)))]
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
    let body = Readiness {
        ready,
        log_head: head.seq,
        views_seq: views,
        projection_lag: head.seq.saturating_sub(views),
        log_fault,
        health,
        leading: gateway.leading.as_ref().map(|l| *l.borrow()),
    };
    Ok(if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

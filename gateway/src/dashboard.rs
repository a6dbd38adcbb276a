//! `GET /`: the web dashboard, one page embedded in the binary (no CDN, works offline). It holds
//! no data: it reads the REST API and the event and log websockets like any client, with the
//! key a user enters once (kept in the browser session). Jobs with live states, a job's
//! attempts, live output and artifacts, nodes with their GPUs, queues, the event feed and the
//! audit status.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::Gateway;
use crate::error::ApiError;

const PAGE: &str = include_str!("dashboard.html");

/// The pages' policy: their own inline script and style, requests to this origin only.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The dashboard.
#[utoipa::path(get, path = "/", tag = "meta", security(()),
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
pub(crate) async fn page(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.auth.check_host(&req)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(PAGE))
}

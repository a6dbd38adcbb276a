//! `/v1/webhooks`: events POSTed to a URL as they happen, for a group's jobs (filtered like the
//! event stream: `types`, `job`, `queue`), signed, retried, with every attempt visible.
//!
//! - Registration is event-sourced (`webhook.created`, `webhook.deleted`); the signing secret
//!   is made here, answered once, kept in the secret store (`<group>/webhook-<id>`) and never
//!   logged: the log has its keyed hash.
//! - Delivery ([`run`]): one task per webhook follows the log from where that webhook was last
//!   served, so a slow or failing receiver delays only itself, never a job, the Scheduler or
//!   another webhook. Each event is a `POST` of gantry's event JSON with
//!   `Gantry-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (in the
//!   manner of Stripe's), `Gantry-Webhook-Id` and `Gantry-Event-Seq`; a non-2xx answer or none
//!   within 10 s is retried with exponential backoff (1 s doubling to 5 min, 8 attempts), then
//!   given up on. Every attempt is recorded (`GET /v1/webhooks/{id}/deliveries`); the sequence
//!   served is kept, so a restart resumes after it (an event may then be delivered twice:
//!   receivers dedupe by `Gantry-Event-Seq`).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use gantry_actors::secrets::SecretString;
use gantry_actors::world::{AccessChange, DEFAULT_GROUP};
use gantry_events::event::{WebhookCreated, WebhookDeleted};
use gantry_events::record::now_ns;
use gantry_projections::{Delivery, WebhookView};
use serde::Deserialize;
use tokio::sync::watch;

use crate::auth::{Caller, Role, hmac_sha256};
use crate::body::{parse_body, read_body};
use crate::error::ApiError;
use crate::events::{EventFilter, Format, wanted};
use crate::health::views_reach;
use crate::openapi::{DeliveryList, WebhookCreatedAnswer, WebhookDeletedAnswer, WebhookList};
use crate::{Gateway, query};

/// Attempts per event before it is given up on.
const MAX_ATTEMPTS: u32 = 8;
/// How long a receiver has to answer.
const RECEIVER_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Skipped entries after which the sequence served is saved anyway.
const CURSOR_EVERY: u64 = 1000;

fn secret_name(group: &str, id: &str) -> String {
    format!("{group}/webhook-{id}")
}

fn group_of(caller: &Caller) -> String {
    caller
        .principal
        .as_ref()
        .map_or(DEFAULT_GROUP, |p| p.group.as_str())
        .to_owned()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    url: String,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    queue: Option<String>,
}

fn check_url(url: &str) -> Result<(), ApiError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.and_then(|r| r.split(['/', '?', '#']).next());
    if url.len() > 2048
        || host.is_none_or(|h| h.is_empty())
        || url.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ApiError::new(
            400,
            "invalid_url",
            "an http:// or https:// URL of at most 2048 characters",
            Some("url".into()),
        ));
    }
    Ok(())
}

/// `POST /v1/webhooks` (operators): answers the id and, once, the signing secret.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook, responses((status = 201, description = "Created; the secret is shown once", body = crate::openapi::WebhookCreatedAnswer), crate::openapi::Errors))]
pub(crate) async fn create(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let body = read_body(&gateway, &req, payload).await?;
    let asked: CreateWebhook = parse_body(&body, &[""])?;
    check_url(&asked.url)?;
    let types = asked.types.join(",");
    let (_, _) = wanted(Some(&types), asked.job.as_deref(), None, None)?;
    let job = match &asked.job {
        Some(job) => {
            let id = crate::body::parse_id(job)?;
            crate::jobs::visible_job(&gateway, &caller, &id)?;
            Some(id)
        }
        None => None,
    };
    let group = group_of(&caller);
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(ApiError::unavailable)?;
    let id = hex::encode(raw);
    let mut secret_bytes = [0u8; 32];
    getrandom::fill(&mut secret_bytes).map_err(ApiError::unavailable)?;
    let secret = SecretString(format!("whsec_{}", hex::encode(secret_bytes)));
    let name = secret_name(&group, &id);
    gateway
        .secrets
        .put(&name, &secret)
        .await
        .map_err(ApiError::unavailable)?;
    let created = WebhookCreated {
        webhook_id: id.clone(),
        url: asked.url,
        types: asked.types,
        job,
        queue: asked.queue,
        group,
        secret_hash: gateway.auth.secret_hash(&secret.0),
        by: caller.key_id(),
    };
    let seq = match gateway
        .control
        .change_access(AccessChange::WebhookCreate(created))
        .await
    {
        Ok(seq) => seq,
        Err(error) => {
            let _ = gateway.secrets.delete(&name).await;
            return Err(error.into());
        }
    };
    views_reach(&gateway, seq).await;
    Ok(HttpResponse::Created().json(WebhookCreatedAnswer {
        id,
        // Shown once: sign-checking receivers need it; gantry keeps it only encrypted.
        secret: secret.0,
        seq,
    }))
}

/// The webhook `id` if the caller's group may see it.
fn visible(gateway: &Gateway, caller: &Caller, id: &str) -> Result<WebhookView, ApiError> {
    gateway
        .views
        .webhook(id)?
        .filter(|w| caller.scope().is_none_or(|g| g == w.group))
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, description = "The group's webhooks", body = crate::openapi::WebhookList), crate::openapi::Errors))]
pub(crate) async fn list(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let webhooks: Vec<WebhookView> = gateway
        .views
        .webhooks()?
        .into_iter()
        .filter(|w| caller.scope().is_none_or(|g| g == w.group))
        .collect();
    Ok(HttpResponse::Ok().json(WebhookList { webhooks }))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses((status = 200, description = "Deleted", body = crate::openapi::WebhookDeletedAnswer), crate::openapi::Errors))]
pub(crate) async fn delete(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let view = visible(&gateway, &caller, &id)?;
    let seq = gateway
        .control
        .change_access(AccessChange::WebhookDelete(WebhookDeleted {
            webhook_id: view.id.clone(),
            by: caller.key_id(),
        }))
        .await?;
    if let Err(error) = gateway
        .secrets
        .delete(&secret_name(&view.group, &view.id))
        .await
    {
        tracing::warn!(webhook = %view.id, %error, "could not delete a webhook's secret");
    }
    views_reach(&gateway, seq).await;
    Ok(HttpResponse::Ok().json(WebhookDeletedAnswer {
        id: view.id,
        deleted: true,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path), DeliveriesQuery), responses((status = 200, description = "Recent delivery attempts", body = crate::openapi::DeliveryList), crate::openapi::Errors))]
pub(crate) async fn deliveries(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: DeliveriesQuery = query(&req)?;
    let limit = crate::body::page_limit(q.limit)?;
    let view = visible(&gateway, &caller, &id)?;
    let deliveries = gateway.views.deliveries()?;
    Ok(HttpResponse::Ok().json(DeliveryList {
        served_through: deliveries.cursor(&view.id)?,
        deliveries: deliveries.list(&view.id, limit)?,
        webhook: view,
    }))
}

/// The signature header of `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &message))
    )
}

/// Delivers to every live webhook, one task each, for as long as the process runs (only while
/// `leading`, when given: one control plane of a fleet delivers).
pub async fn run(gateway: Gateway, leading: Option<watch::Receiver<bool>>) {
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let lead = leading.as_ref().is_none_or(|l| *l.borrow());
        let live: Vec<WebhookView> = match gateway.views.webhooks() {
            Ok(all) => all.into_iter().filter(|w| w.deleted_ns.is_none()).collect(),
            Err(error) => {
                tracing::warn!(%error, "webhooks unreadable");
                continue;
            }
        };
        tasks.retain(|id, task| {
            let keep = lead && !task.is_finished() && live.iter().any(|w| &w.id == id);
            if !keep {
                task.abort();
            }
            keep
        });
        if !lead {
            continue;
        }
        for webhook in live {
            if !tasks.contains_key(&webhook.id) {
                let id = webhook.id.clone();
                tasks.insert(id, tokio::spawn(deliver_to(gateway.clone(), webhook)));
            }
        }
    }
}

/// Follows the log for one webhook, delivering what matches, in order.
async fn deliver_to(gateway: Gateway, webhook: WebhookView) {
    let fail = |error: String| tracing::warn!(webhook = %webhook.id, %error, "webhook delivery stopped; retrying");
    let secret = match gateway
        .secrets
        .get(&secret_name(&webhook.group, &webhook.id))
        .await
    {
        Ok(Some(secret)) => secret,
        Ok(None) => return fail("its secret is not stored".into()),
        Err(error) => return fail(error.to_string()),
    };
    let store = match gateway.views.deliveries() {
        Ok(store) => store,
        Err(error) => return fail(error.to_string()),
    };
    let served = match store.cursor(&webhook.id) {
        Ok(cursor) => cursor.unwrap_or(webhook.created_seq),
        Err(error) => return fail(error.to_string()),
    };
    let types = webhook.types.join(",");
    let job = webhook.job.map(|j| j.to_string());
    let Ok((wanted, _)) = wanted(Some(&types), job.as_deref(), webhook.queue.as_deref(), None)
    else {
        return fail("its filters do not parse".into());
    };
    let mut filter = EventFilter::scoped(webhook.group.clone(), wanted, Format::Gantry);
    let mut saved = served;
    let mut events = match gateway.log.subscribe(served + 1).await {
        Ok(events) => events,
        Err(error) => return fail(error.to_string()),
    };
    while let Some(entry) = events.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => return fail(error.to_string()),
        };
        let seq = entry.seq;
        let value = match filter.visible(&gateway, &entry).await {
            Ok(value) => value,
            Err(error) => return fail(error.to_string()),
        };
        // The sequence served is kept after each delivery, and every so many skipped entries
        // (re-filtering those after a restart is cheap; a flush per entry is not).
        let delivered = value.is_some();
        // Deleted meanwhile (the views show a delete before its request is answered): stop.
        if delivered
            && gateway
                .views
                .webhook(&webhook.id)
                .ok()
                .flatten()
                .is_none_or(|w| w.deleted_ns.is_some())
        {
            return;
        }
        if let Some(value) = value {
            deliver(&webhook, &secret.0, &store, seq, value).await;
        }
        if delivered || seq >= saved + CURSOR_EVERY {
            if let Err(error) = store.set_cursor(&webhook.id, seq) {
                return fail(error.to_string());
            }
            saved = seq;
        }
    }
}

/// One event, tried until the receiver takes it or the attempts run out.
async fn deliver(
    webhook: &WebhookView,
    secret: &str,
    store: &gantry_projections::Deliveries,
    seq: u64,
    value: serde_json::Value,
) {
    let body = value.to_string().into_bytes();
    let type_name = value["type"].as_str().unwrap_or("").to_owned();
    let mut pause = BACKOFF_FIRST;
    for attempt in 1..=MAX_ATTEMPTS {
        let t = now_ns() / 1_000_000_000;
        let request = (
            webhook.url.clone(),
            signature(secret, t, &body),
            webhook.id.clone(),
            body.clone(),
        );
        let answer = tokio::task::spawn_blocking(move || {
            let (url, signature, id, body) = request;
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(RECEIVER_TIMEOUT))
                .build()
                .into();
            agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Gantry-Signature", &signature)
                .header("Gantry-Webhook-Id", &id)
                .header("Gantry-Event-Seq", &seq.to_string())
                .send(&body[..])
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (status, error) = match answer {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (Some(status), Some(format!("answered {status}"))),
            Err(error) => (None, Some(error)),
        };
        let delivered = error.is_none();
        let outcome = if delivered {
            "delivered"
        } else if attempt == MAX_ATTEMPTS {
            "failed"
        } else {
            "retrying"
        };
        let record = Delivery {
            seq,
            type_name: type_name.clone(),
            attempt,
            at_ns: now_ns(),
            status,
            error,
            outcome: outcome.to_owned(),
        };
        if let Err(error) = store.record(&webhook.id, &record) {
            tracing::warn!(webhook = %webhook.id, %error, "could not record a delivery");
        }
        if delivered {
            return;
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }
    tracing::warn!(webhook = %webhook.id, seq, "gave up delivering an event");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let a = signature("whsec_x", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, signature("whsec_x", 1_700_000_001, b"{}"));
        assert_ne!(a, signature("whsec_x", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature("whsec_y", 1_700_000_000, b"{}"));
        for bad in ["ftp://x", "http://", "https:///path", "http://a b"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
    }
}

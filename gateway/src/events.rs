//! The event log as clients read it: `GET /v1/events?after=SEQ` (a page) and the websocket
//! `GET /v1/events/ws?after=SEQ` (history, then live), both filtered to what the caller may
//! see: its group's job and artifact events, node and audit events, and key events for admins
//! only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::world::DEFAULT_GROUP;
use gantry_events::event::JobId;
use gantry_events::event::{JobEvent, PipelineCancelled, PipelineEvent, PipelineStageSkipped};
use gantry_events::{Entry, Event};
use serde::Deserialize;

use crate::auth::{Caller, Role, bearer};
use crate::body::page_limit;
use crate::error::ApiError;
use crate::health::views_reach;
use crate::{Gateway, query};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// A page of at most `limit` entries after `after`, less those the caller may not see;
/// `next_after` is where the next page starts.
pub(crate) async fn events(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: EventsQuery = query(&req)?;
    let first = first_after(q.after)?;
    let limit = page_limit(q.limit)?;
    let entries = gateway
        .log
        .read(first, limit)
        .await
        .map_err(ApiError::unavailable)?;
    let mut filter = EventFilter::new(&caller);
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        if let Some(value) = filter.visible(&gateway, entry).await? {
            events.push(value);
        }
    }
    let next_after = entries.last().map_or(first - 1, |e| e.seq);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "events": events, "next_after": next_after })))
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

/// Most job groups one stream remembers before starting over (each costs one views read).
const MAX_REMEMBERED_GROUPS: usize = 65_536;

/// Decides, entry by entry, what one caller may see.
struct EventFilter {
    /// `None`: every group.
    scope: Option<String>,
    admin: bool,
    groups: HashMap<JobId, String>,
}

impl EventFilter {
    fn new(caller: &Caller) -> EventFilter {
        EventFilter {
            scope: caller.scope().map(str::to_owned),
            admin: caller.role == Role::Admin,
            groups: HashMap::new(),
        }
    }

    /// The entry as JSON if the caller may see it.
    async fn visible(
        &mut self,
        gateway: &Gateway,
        entry: &Entry,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        let envelope = match entry.open() {
            Ok(envelope) => envelope,
            // Whose it is cannot be told: only those who see everything learn it is there.
            Err(err) if self.admin => {
                return Ok(Some(
                    serde_json::json!({ "seq": entry.seq, "undecodable": err.to_string() }),
                ));
            }
            Err(_) => return Ok(None),
        };
        let allowed = match &envelope.event {
            Event::Key(_) | Event::Secret(_) => self.admin,
            _ if self.scope.is_none() => true,
            Event::Node(_) | Event::Audit(_) => true,
            Event::Pipeline(PipelineEvent::Submitted(p)) => {
                self.scope.as_deref() == Some(p.group.as_deref().unwrap_or(DEFAULT_GROUP))
            }
            Event::Pipeline(
                PipelineEvent::StageSkipped(PipelineStageSkipped { pipeline_id, .. })
                | PipelineEvent::Cancelled(PipelineCancelled { pipeline_id, .. }),
            ) => {
                views_reach(gateway, entry.seq).await;
                gateway
                    .views
                    .pipeline_in(pipeline_id, self.scope.as_deref())?
                    .is_some()
            }
            event => match event.job_id() {
                Some(job) => {
                    let group = self.group_of(gateway, entry.seq, job, event).await?;
                    self.scope.as_deref() == Some(group.as_str())
                }
                None => false,
            },
        };
        Ok(allowed.then(|| serde_json::to_value(envelope).unwrap_or_default()))
    }

    /// The group of `job`, from its `job.submitted` or the views (waiting for them to reach
    /// `seq` when they lag the log). Unknown: no group, seen by no one scoped.
    async fn group_of(
        &mut self,
        gateway: &Gateway,
        seq: u64,
        job: JobId,
        event: &Event,
    ) -> Result<String, ApiError> {
        if let Event::Job(JobEvent::Submitted(s)) = event {
            let group = s
                .group
                .clone()
                .unwrap_or_else(|| gantry_actors::world::DEFAULT_GROUP.to_owned());
            self.remember(job, group.clone());
            return Ok(group);
        }
        if let Some(group) = self.groups.get(&job) {
            return Ok(group.clone());
        }
        let mut view = gateway.views.job(&job)?;
        if view.is_none() {
            views_reach(gateway, seq).await;
            view = gateway.views.job(&job)?;
        }
        let group = view.map(|v| v.group).unwrap_or_default();
        self.remember(job, group.clone());
        Ok(group)
    }

    fn remember(&mut self, job: JobId, group: String) {
        if self.groups.len() >= MAX_REMEMBERED_GROUPS {
            self.groups.clear();
        }
        self.groups.insert(job, group);
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
fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
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

/// The subprotocol a client offers with its key, for browsers (which cannot set headers):
/// `new WebSocket(url, ["gantry", "gantry.bearer." + key])`.
const BEARER_PROTOCOL: &str = "gantry.bearer.";

fn protocol_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL).map(str::to_owned))
}

/// How long a websocket without a key in its headers has to send one as its first message.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(5);

/// Websocket connections open, in all and per key, against their bounds.
#[derive(Debug)]
pub struct StreamSlots {
    per_key: usize,
    total: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl StreamSlots {
    pub fn new(per_key: usize, total: usize) -> StreamSlots {
        StreamSlots {
            per_key,
            total,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `who`, or 503 past either bound. The slot is given back when dropped.
    fn take(self: &Arc<Self>, who: &str) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(who).copied().unwrap_or(0);
        if total >= self.total || mine >= self.per_key {
            return Err(ApiError::new(
                503,
                "too_many_streams",
                format!(
                    "at most {} event streams per key and {} in all are open",
                    self.per_key, self.total
                ),
                None,
            ));
        }
        open.insert(who.to_owned(), mine + 1);
        Ok(Slot {
            slots: self.clone(),
            who: who.to_owned(),
        })
    }
}

struct Slot {
    slots: Arc<StreamSlots>,
    who: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}

/// Streams events over a websocket: history after `after`, then live, as one JSON text message
/// each, filtered like `/v1/events`.
pub(crate) async fn events_ws(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    use futures::StreamExt;
    let auth = gateway.auth.clone();
    auth.check_host(&req)?;
    if !origin_allowed(&req, &gateway.allowed_origins) {
        return Err(ApiError::new(
            403,
            "forbidden_origin",
            "this origin may not open the event stream (see --allow-origin)",
            None,
        )
        .into());
    }
    let q: WsQuery = query(&req)?;
    let first = first_after(q.after)?;
    // A key in the headers (or the subprotocol) is checked before the upgrade; without one,
    // the first message must carry it.
    let token = bearer(&req)
        .map(str::to_owned)
        .or_else(|| protocol_token(&req));
    let caller = match (&token, auth.required) {
        (_, false) => Some(gateway.caller(&req)?),
        (Some(token), true) => {
            let caller = auth.check_token(&gateway.views, token)?;
            auth.limit(&caller.key_id().unwrap_or_default())?;
            Some(caller)
        }
        (None, true) => None,
    };
    let slot_owner = caller
        .as_ref()
        .and_then(Caller::key_id)
        .or_else(|| req.peer_addr().map(|a| a.ip().to_string()))
        .unwrap_or_default();
    let slot = gateway.streams.take(&slot_owner)?;
    let mut events = gateway
        .log
        .subscribe(first)
        .await
        .map_err(ApiError::unavailable)?;
    let (response, mut session, mut incoming) =
        actix_ws::handle_with_protocols(&req, body, &["gantry"])?;
    let gateway = gateway.into_inner();
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let caller = match caller {
            Some(caller) => caller,
            None => {
                let first_message = tokio::time::timeout(FIRST_MESSAGE_WAIT, incoming.next()).await;
                let checked = match first_message {
                    Ok(Some(Ok(actix_ws::Message::Text(text)))) => {
                        let token = first_message_token(&text);
                        auth.check_token(&gateway.views, &token).ok()
                    }
                    _ => None,
                };
                match checked {
                    Some(caller) => caller,
                    None => {
                        let _ = session
                            .close(Some(actix_ws::CloseReason {
                                code: actix_ws::CloseCode::Policy,
                                description: Some("unauthorized: send an API key".into()),
                            }))
                            .await;
                        return;
                    }
                }
            }
        };
        let mut filter = EventFilter::new(&caller);
        loop {
            tokio::select! {
                entry = events.next() => match entry {
                    Some(Ok(entry)) => {
                        let value = match filter.visible(&gateway, &entry).await {
                            Ok(Some(value)) => value,
                            Ok(None) => continue,
                            Err(error) => {
                                tracing::warn!(%error, "websocket event filter failed");
                                break;
                            }
                        };
                        if session.text(value.to_string()).await.is_err() {
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

/// The key in a first message: the key itself, or `{"token": KEY}`.
fn first_message_token(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>) -> HttpRequest {
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

    #[test]
    fn a_browser_offers_its_key_as_a_subprotocol_or_first_message() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((
                "Sec-WebSocket-Protocol",
                "gantry, gantry.bearer.gantry_ab_cd",
            ))
            .to_http_request();
        assert_eq!(protocol_token(&req).as_deref(), Some("gantry_ab_cd"));
        assert_eq!(first_message_token(r#"{"token":"gantry_x"}"#), "gantry_x");
        assert_eq!(first_message_token(" gantry_y\n"), "gantry_y");
    }

    #[test]
    fn stream_slots_are_bounded_per_key_and_in_all_and_given_back() {
        let slots = Arc::new(StreamSlots::new(2, 3));
        let a1 = slots.take("a").expect("a1");
        let _a2 = slots.take("a").expect("a2");
        assert_eq!(slots.take("a").err().map(|e| e.status), Some(503));
        let _b1 = slots.take("b").expect("b1");
        assert!(slots.take("c").is_err(), "3 in all");
        drop(a1);
        assert!(slots.take("c").is_ok());
    }
}

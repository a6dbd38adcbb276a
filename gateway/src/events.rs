//! The event log as clients read it: `GET /v1/events?after=SEQ` (a page), the websocket
//! `GET /v1/events/ws?after=SEQ` and Server-Sent Events `GET /v1/events/sse` (history, then
//! live, no gap and no duplicate across the switch). All three are filtered to what the caller
//! may see — its group's job and artifact events, node and audit events, key and secret events
//! for admins only — and to what it asks for: `types=job.*,node.lost`, `job=ID`, `queue=Q`,
//! applied to history and live alike. `format=cloudevents` sends CloudEvents 1.0 (structured
//! JSON) instead of gantry's own JSON.
//!
//! Streams are bounded per client: a client that does not take what is sent for
//! [`SEND_TIMEOUT`] is closed (the websocket with a close reason naming the sequence to resume
//! after; SSE clients resume with `Last-Event-ID`), so one slow reader never holds memory or
//! slows the others. Websockets are pinged every [`PING_EVERY`] and closed after
//! [`SILENCE_LIMIT`] without hearing from the client; SSE streams send a comment as a
//! heartbeat.

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
use crate::body::{page_limit, sequence_header};
use crate::error::ApiError;
use crate::health::views_reach;
use crate::openapi::{LogChunk, LogEnd, LogMessage, LogStarted};
use crate::{Gateway, query};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Events after this sequence (default 0: from the start).
    after: Option<u64>,
    /// At most this many entries read (1–1000, default 100).
    limit: Option<usize>,
    /// Comma-separated event types or streams: `job.*,node.lost`.
    types: Option<String>,
    /// Only events about this job.
    job: Option<String>,
    /// Only events about jobs of this queue.
    queue: Option<String>,
    /// `gantry` (default) or `cloudevents`.
    format: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Events after this sequence (default 0: from the start).
    after: Option<u64>,
    /// Comma-separated event types or streams: `job.*,node.lost`.
    types: Option<String>,
    /// Only events about this job.
    job: Option<String>,
    /// Only events about jobs of this queue.
    queue: Option<String>,
    /// `gantry` (default) or `cloudevents`.
    format: Option<String>,
}

/// How an event is written to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// gantry's own JSON: the envelope (`seq`, `hash`, `prev`, `type`, `event`, …).
    Gantry,
    /// CloudEvents 1.0, structured mode (see [`cloud_event`]).
    CloudEvents,
}

/// An event type a client asks for: one type, or every type of a stream (`job.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    Exact(String),
    Stream(String),
}

impl TypePattern {
    fn matches(&self, type_name: &str) -> bool {
        match self {
            TypePattern::Exact(t) => t == type_name,
            TypePattern::Stream(s) => type_name
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
        }
    }
}

/// What a client asked to see (besides what it may see).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// Empty: every type.
    types: Vec<TypePattern>,
    job: Option<JobId>,
    queue: Option<String>,
}

/// Parses the stream parameters: 400 naming the one at fault.
pub(crate) fn wanted(
    types: Option<&str>,
    job: Option<&str>,
    queue: Option<&str>,
    format: Option<&str>,
) -> Result<(Wanted, Format), ApiError> {
    use gantry_events::event::ALL_TYPES;
    let bad = |field: &str, message: String| {
        ApiError::new(400, "invalid_filter", message, Some(field.into()))
    };
    let mut patterns = Vec::new();
    for part in types
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let pattern = match part.strip_suffix(".*") {
            Some(stream)
                if ALL_TYPES
                    .iter()
                    .any(|(t, _)| t.split('.').next() == Some(stream)) =>
            {
                TypePattern::Stream(stream.to_owned())
            }
            None if ALL_TYPES.iter().any(|(t, _)| *t == part) => {
                TypePattern::Exact(part.to_owned())
            }
            _ => {
                return Err(bad(
                    "types",
                    format!("{part:?} is not an event type or a stream (`job.*`)"),
                ));
            }
        };
        patterns.push(pattern);
    }
    let job = job
        .map(|j| {
            j.parse()
                .map_err(|_| bad("job", format!("{j:?} is not a job id")))
        })
        .transpose()?;
    let format = match format {
        None | Some("gantry") => Format::Gantry,
        Some("cloudevents") => Format::CloudEvents,
        Some(other) => {
            return Err(bad(
                "format",
                format!("{other:?}: the format is gantry or cloudevents"),
            ));
        }
    };
    Ok((
        Wanted {
            types: patterns,
            job,
            queue: queue.map(str::to_owned),
        },
        format,
    ))
}

/// An event as CloudEvents 1.0 in structured JSON mode: `id` is the event's id, `source`
/// `gantry/<node>/<actor>` (who recorded it), `type` `dev.gantry.<type>` (e.g.
/// `dev.gantry.job.submitted`), `subject` the job it is about, `time` when it was recorded,
/// `data` the payload as in gantry's JSON, and two extension attributes: `gantryseq` (its
/// sequence, to resume after) and `gantryhash` (its chain hash, hex).
fn cloud_event(envelope: &gantry_events::Envelope) -> serde_json::Value {
    let mut value = serde_json::json!({
        "specversion": "1.0",
        "id": envelope.id,
        "source": format!("gantry/{}/{}", envelope.source.node, envelope.source.actor),
        "type": format!("dev.gantry.{}", envelope.type_name),
        "time": envelope.time_rfc3339(),
        "datacontenttype": "application/json",
        "data": envelope.event,
        "gantryseq": envelope.seq,
        "gantryhash": envelope.hash.to_hex(),
    });
    if let Some(job) = envelope.event.job_id() {
        value["subject"] = job.to_string().into();
    }
    value
}

/// A page of at most `limit` entries after `after`, less those the caller may not see;
/// `next_after` is where the next page starts.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery), responses((status = 200, description = "A page of events", body = crate::openapi::EventPage), crate::openapi::Errors))]
pub(crate) async fn events(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: EventsQuery = query(&req)?;
    let first = first_after(q.after)?;
    let limit = page_limit(q.limit)?;
    let (wanted, format) = wanted(
        q.types.as_deref(),
        q.job.as_deref(),
        q.queue.as_deref(),
        q.format.as_deref(),
    )?;
    let entries = gateway
        .log
        .read(first, limit)
        .await
        .map_err(ApiError::unavailable)?;
    let mut filter = EventFilter::new(&caller, wanted, format);
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

/// A job's group and queue, as a stream needs them.
#[derive(Debug, Clone, Default)]
struct JobMeta {
    group: String,
    queue: String,
}

/// An entry a caller may see.
enum Shown {
    Event(Arc<Decoded>),
    /// An entry that does not decode, as admins are told of it.
    Undecodable(serde_json::Value),
}

/// An entry decoded once, and its JSON in each format, written the first time a stream needs
/// it.
#[derive(Debug)]
pub struct Decoded {
    envelope: gantry_events::Envelope,
    gantry: std::sync::OnceLock<Arc<str>>,
    cloud: std::sync::OnceLock<Arc<str>>,
}

impl Decoded {
    fn text(&self, format: Format) -> Arc<str> {
        let (cell, make): (_, fn(&gantry_events::Envelope) -> serde_json::Value) = match format {
            Format::Gantry => (&self.gantry, |e| {
                serde_json::to_value(e).unwrap_or_default()
            }),
            Format::CloudEvents => (&self.cloud, cloud_event),
        };
        cell.get_or_init(|| Arc::from(make(&self.envelope).to_string()))
            .clone()
    }
}

/// The most recent entries the streams have decoded, so that an event sent to a thousand
/// subscribers is decoded and written once, not a thousand times. Bounded: one slot per
/// sequence modulo [`RENDERED_SLOTS`]; an entry pushed out is decoded again if asked for.
#[derive(Debug)]
pub struct Rendered {
    slots: Mutex<Vec<Option<Arc<Decoded>>>>,
}

/// Entries [`Rendered`] keeps.
const RENDERED_SLOTS: usize = 4096;

impl Default for Rendered {
    fn default() -> Self {
        Rendered {
            slots: Mutex::new(vec![None; RENDERED_SLOTS]),
        }
    }
}

impl Rendered {
    /// The entry decoded: from the cache when the same entry (sequence and hash) is there.
    pub(crate) fn open(
        &self,
        entry: &Entry,
    ) -> Result<Arc<Decoded>, gantry_events::record::RecordError> {
        let slot = (entry.seq % RENDERED_SLOTS as u64) as usize;
        let hash = entry.stored_hash()?;
        if let Some(found) = self.slots.lock().ok().and_then(|s| s[slot].clone())
            && found.envelope.seq == entry.seq
            && found.envelope.hash == hash
        {
            return Ok(found);
        }
        let decoded = Arc::new(Decoded {
            envelope: entry.open()?,
            gantry: Default::default(),
            cloud: Default::default(),
        });
        if let Ok(mut slots) = self.slots.lock() {
            slots[slot] = Some(decoded.clone());
        }
        Ok(decoded)
    }
}

/// Decides, entry by entry, what one caller may see and asked for, and writes it.
pub(crate) struct EventFilter {
    /// `None`: every group.
    scope: Option<String>,
    admin: bool,
    wanted: Wanted,
    format: Format,
    jobs: HashMap<JobId, JobMeta>,
}

impl EventFilter {
    /// What a webhook of `group` is sent: that group's events, as a key of the group sees them.
    pub(crate) fn scoped(group: String, wanted: Wanted, format: Format) -> EventFilter {
        EventFilter {
            scope: Some(group),
            admin: false,
            wanted,
            format,
            jobs: HashMap::new(),
        }
    }

    fn new(caller: &Caller, wanted: Wanted, format: Format) -> EventFilter {
        EventFilter {
            scope: caller.scope().map(str::to_owned),
            admin: caller.role == Role::Admin,
            wanted,
            format,
            jobs: HashMap::new(),
        }
    }

    /// Whether the event is one the client asked for (its type, job and queue).
    async fn asked_for(
        &mut self,
        gateway: &Gateway,
        seq: u64,
        event: &Event,
    ) -> Result<bool, ApiError> {
        let type_name = event.type_name();
        if !self.wanted.types.is_empty() && !self.wanted.types.iter().any(|p| p.matches(type_name))
        {
            return Ok(false);
        }
        if let Some(job) = self.wanted.job
            && event.job_id() != Some(job)
        {
            return Ok(false);
        }
        if let Some(queue) = self.wanted.queue.clone() {
            let Some(job) = event.job_id() else {
                return Ok(false);
            };
            return Ok(self.meta(gateway, seq, job, event).await?.queue == queue);
        }
        Ok(true)
    }

    /// The entry as JSON if the caller may see it.
    pub(crate) async fn visible(
        &mut self,
        gateway: &Gateway,
        entry: &Entry,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        Ok(self.shown(gateway, entry).await?.map(|shown| match shown {
            Shown::Event(decoded) => match self.format {
                Format::Gantry => serde_json::to_value(&decoded.envelope).unwrap_or_default(),
                Format::CloudEvents => cloud_event(&decoded.envelope),
            },
            Shown::Undecodable(value) => value,
        }))
    }

    /// The entry as JSON text if the caller may see it, and its type: decoded and written once
    /// for every stream that sends it (see [`Rendered`]).
    pub(crate) async fn visible_text(
        &mut self,
        gateway: &Gateway,
        entry: &Entry,
    ) -> Result<Option<(Arc<str>, String)>, ApiError> {
        Ok(self.shown(gateway, entry).await?.map(|shown| match shown {
            Shown::Event(decoded) => {
                let kind = match self.format {
                    Format::Gantry => decoded.envelope.type_name.clone(),
                    Format::CloudEvents => format!("dev.gantry.{}", decoded.envelope.type_name),
                };
                (decoded.text(self.format), kind)
            }
            Shown::Undecodable(value) => (Arc::from(value.to_string()), "event".to_owned()),
        }))
    }

    /// The entry, decoded, if the caller may see it.
    async fn shown(&mut self, gateway: &Gateway, entry: &Entry) -> Result<Option<Shown>, ApiError> {
        let decoded = match gateway.rendered.open(entry) {
            Ok(decoded) => decoded,
            // Whose it is cannot be told: only those who see everything (and asked for no
            // particular events) learn it is there.
            Err(err) if self.admin && self.wanted == Wanted::default() => {
                return Ok(Some(Shown::Undecodable(
                    serde_json::json!({ "seq": entry.seq, "undecodable": err.to_string() }),
                )));
            }
            Err(_) => return Ok(None),
        };
        let envelope = &decoded.envelope;
        if !self.asked_for(gateway, entry.seq, &envelope.event).await? {
            return Ok(None);
        }
        let allowed = match &envelope.event {
            Event::Key(_) | Event::Secret(_) | Event::Webhook(_) => self.admin,
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
                    let group = self.meta(gateway, entry.seq, job, event).await?.group;
                    self.scope.as_deref() == Some(group.as_str())
                }
                None => false,
            },
        };
        Ok(allowed.then_some(Shown::Event(decoded)))
    }

    /// The group and queue of `job`, from its `job.submitted` or the views (waiting for them
    /// to reach `seq` when they lag the log). Unknown: no group, seen by no one scoped.
    async fn meta(
        &mut self,
        gateway: &Gateway,
        seq: u64,
        job: JobId,
        event: &Event,
    ) -> Result<JobMeta, ApiError> {
        if let Event::Job(JobEvent::Submitted(s)) = event {
            let meta = JobMeta {
                group: s.group.clone().unwrap_or_else(|| DEFAULT_GROUP.to_owned()),
                queue: s.spec.queue.clone(),
            };
            self.remember(job, meta.clone());
            return Ok(meta);
        }
        if let Some(meta) = self.jobs.get(&job) {
            return Ok(meta.clone());
        }
        let mut view = gateway.views.job(&job)?;
        if view.is_none() {
            views_reach(gateway, seq).await;
            view = gateway.views.job(&job)?;
        }
        let meta = view
            .map(|v| JobMeta {
                group: v.group,
                queue: v.spec.queue,
            })
            .unwrap_or_default();
        self.remember(job, meta.clone());
        Ok(meta)
    }

    fn remember(&mut self, job: JobId, meta: JobMeta) {
        if self.jobs.len() >= MAX_REMEMBERED_GROUPS {
            self.jobs.clear();
        }
        self.jobs.insert(job, meta);
    }
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

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// A slot for a caller's stream: counted against its key, or (without one) its address.
    fn take_for(
        self: &Arc<Self>,
        caller: Option<&Caller>,
        req: &HttpRequest,
    ) -> Result<Slot, ApiError> {
        let owner = caller
            .and_then(Caller::key_id)
            .unwrap_or_else(|| crate::auth::client_address(req));
        self.take(&owner)
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
#[utoipa::path(get, path = "/v1/events/ws", tag = "events", params(StreamQuery), responses((status = 101, description = "Websocket: history after `after`, then live; each text message is one event (`Envelope`, or `CloudEvent` with `format=cloudevents`). Pinged every 5 s; closed after 30 s of silence, or when the client falls behind (close reason: `resume with after=SEQ`)"), crate::openapi::Errors))]
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
    let q: StreamQuery = query(&req)?;
    let first = first_after(q.after)?;
    let (wanted, format) = wanted(
        q.types.as_deref(),
        q.job.as_deref(),
        q.queue.as_deref(),
        q.format.as_deref(),
    )?;
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
    let slot = gateway.streams.take_for(caller.as_ref(), &req)?;
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
        let mut filter = EventFilter::new(&caller, wanted, format);
        // The last sequence sent (or skipped by the filter): where a client resumes.
        let mut sent = first - 1;
        let mut ping = heartbeat_timer();
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        let reason = loop {
            tokio::select! {
                entry = events.next() => match entry {
                    Some(Ok(entry)) => {
                        let seq = entry.seq;
                        let text = match filter.visible_text(&gateway, &entry).await {
                            Ok(Some((text, _))) => text,
                            Ok(None) => {
                                sent = seq;
                                continue;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "websocket event filter failed");
                                break None;
                            }
                        };
                        match tokio::time::timeout(SEND_TIMEOUT, session.text(&*text)).await {
                            Ok(Ok(())) => sent = seq,
                            Ok(Err(_)) => return,
                            Err(_) => {
                                tracing::info!(after = sent, "closing a websocket that does not keep up");
                                dropped("slow");
                                break Some(format!("slow consumer: resume with after={sent}"));
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "websocket event stream failed");
                        break None;
                    }
                    None => break None,
                },
                _ = ping.tick() => match heartbeat(&mut session, heard, &format!("after={sent}")).await {
                    Ok(()) => {}
                    Err(Stop::Gone) => return,
                    Err(Stop::Close(reason)) => break Some(reason),
                },
                message = incoming.next() => {
                    heard = tokio::time::Instant::now();
                    if !answer(&mut session, message).await {
                        return;
                    }
                }
            }
        };
        close(session, reason).await;
    });
    Ok(response)
}

/// Streams events as Server-Sent Events: history after `after` (or the `Last-Event-ID` a
/// reconnecting client sends), then live, one `id:`/`event:`/`data:` block each, filtered like
/// `/v1/events`; a comment every [`PING_EVERY`] keeps proxies from closing an idle stream.
#[utoipa::path(get, path = "/v1/events/sse", tag = "events", params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "resume after this sequence")), responses((status = 200, description = "Server-Sent Events: `id:` the sequence, `data:` one event as JSON", content_type = "text/event-stream", body = String), crate::openapi::Errors))]
pub(crate) async fn events_sse(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: StreamQuery = query(&req)?;
    let resume = sequence_header(
        &req,
        "Last-Event-ID",
        "invalid_filter",
        "Last-Event-ID is the sequence of the last event received",
    )?;
    let first = first_after(resume.or(q.after))?;
    let (wanted, format) = wanted(
        q.types.as_deref(),
        q.job.as_deref(),
        q.queue.as_deref(),
        q.format.as_deref(),
    )?;
    let slot = gateway.streams.take_for(Some(&caller), &req)?;
    let mut events = gateway
        .log
        .subscribe(first)
        .await
        .map_err(ApiError::unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, actix_web::Error>>(SSE_BUFFER);
    let gateway = gateway.into_inner();
    actix_web::rt::spawn(async move {
        use futures::StreamExt;
        let _slot = slot;
        let mut filter = EventFilter::new(&caller, wanted, format);
        let mut ping = heartbeat_timer();
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frame = tokio::select! {
                entry = events.next() => match entry {
                    Some(Ok(entry)) => match filter.visible_text(&gateway, &entry).await {
                        Ok(Some((text, kind))) => {
                            format!("id: {}\nevent: {kind}\ndata: {text}\n\n", entry.seq)
                        }
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(%error, "SSE event filter failed");
                            return;
                        }
                    },
                    Some(Err(error)) => {
                        tracing::warn!(%error, "SSE event stream failed");
                        return;
                    }
                    None => return,
                },
                _ = ping.tick() => ": ping\n\n".to_owned(),
            };
            match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(frame.into()))).await {
                Ok(Ok(())) => {}
                // The client left.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!("closing an SSE stream that does not keep up");
                    dropped("slow");
                    return;
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(tokio_stream_of(rx)))
}

/// Why a websocket stream ends.
enum Stop {
    /// The client left (nothing more can be sent).
    Gone,
    /// The server closes it, with this reason.
    Close(String),
}

/// A websocket heartbeat: a ping, unless the client has been silent past [`SILENCE_LIMIT`];
/// `resume` (query parameters) tells a client closed for not keeping up where to start again.
async fn heartbeat(
    session: &mut actix_ws::Session,
    heard: tokio::time::Instant,
    resume: &str,
) -> Result<(), Stop> {
    if heard.elapsed() > SILENCE_LIMIT {
        dropped("silent");
        return Err(Stop::Close(format!(
            "no answer to pings: resume with {resume}"
        )));
    }
    match tokio::time::timeout(SEND_TIMEOUT, session.ping(b"gantry")).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Gone),
        Err(_) => {
            dropped("slow");
            Err(Stop::Close(format!("slow consumer: resume with {resume}")))
        }
    }
}

/// Answers what a client sent on a stream (a ping gets its pong); `false` once it has left.
async fn answer(
    session: &mut actix_ws::Session,
    message: Option<Result<actix_ws::Message, actix_ws::ProtocolError>>,
) -> bool {
    match message {
        Some(Ok(actix_ws::Message::Ping(bytes))) => session.pong(&bytes).await.is_ok(),
        Some(Ok(actix_ws::Message::Close(_))) | Some(Err(_)) | None => false,
        Some(Ok(_)) => true,
    }
}

/// Closes a stream, with `reason` when the server ends it. A client that fell behind gets the
/// close frame (which says where to resume) after what was already queued for it, if it reads
/// again within [`SILENCE_LIMIT`]; past that the connection is dropped without it. Nothing more
/// than that one frame is held meanwhile.
async fn close(session: actix_ws::Session, reason: Option<String>) {
    let reason = reason.map(|description| actix_ws::CloseReason {
        code: actix_ws::CloseCode::Again,
        description: Some(description),
    });
    let _ = tokio::time::timeout(SILENCE_LIMIT, session.close(reason)).await;
}

/// Counts a stream closed by the server (`slow`: did not keep up; `silent`: no answer).
fn dropped(reason: &'static str) {
    metrics::counter!("gantry_event_streams_dropped_total", "reason" => reason).increment(1);
}

/// The receiving end of a channel as a stream of body chunks.
fn tokio_stream_of<T: 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How long a stream waits for a client to take a message before closing it as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a websocket is pinged (and an SSE stream sent a comment).
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a websocket may stay silent (no pong, no message) before it is closed.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Messages an SSE stream holds for its client before it counts as falling behind.
const SSE_BUFFER: usize = 64;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogsWsQuery {
    /// Follow this attempt only (default: the job's attempts as they come).
    attempt: Option<u32>,
    /// Start at this byte of the (first) attempt's output.
    from: Option<u64>,
}

/// A message as JSON.
fn json_of(message: LogMessage) -> serde_json::Value {
    serde_json::to_value(message).unwrap_or_default()
}

/// Ticks every [`PING_EVERY`], the first time one period from now (not at once: a stream
/// starts with what it has to send, not with a heartbeat).
fn heartbeat_timer() -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY)
}

/// How often a live log stream looks for new output.
const LOG_POLL: Duration = Duration::from_millis(25);

/// A job's output, live, over a websocket (`GET /v1/jobs/{id}/logs/ws?attempt=N&from=OFFSET`):
/// what is kept so far, then new output as it is written, as JSON text messages
/// `{"attempt", "offset", "data"}` (`offset`: where `data` starts in the attempt's output); a
/// message `{"attempt": N, "started": true}` when a retry starts a new attempt; and once the job
/// has ended, `{"end": true, "state", "attempt", "exit_code", "cause"}` before the close. The
/// key comes as for the event websocket (header or `gantry.bearer.KEY` subprotocol).
#[utoipa::path(get, path = "/v1/jobs/{id}/logs/ws", tag = "jobs", params(("id" = String, Path, description = "the job's id (UUID)"), LogsWsQuery), responses((status = 101, description = "Websocket: `LogMessage` text messages (output as it is written; a new attempt; the end)"), crate::openapi::Errors))]
pub(crate) async fn logs_ws(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    use futures::StreamExt;
    let auth = gateway.auth.clone();
    auth.check_host(&req)?;
    if !origin_allowed(&req, &gateway.allowed_origins) {
        return Err(ApiError::new(
            403,
            "forbidden_origin",
            "this origin may not open the log stream (see --allow-origin)",
            None,
        )
        .into());
    }
    let caller = match protocol_token(&req) {
        Some(token) if auth.required && bearer(&req).is_none() => {
            let caller = auth.check_token(&gateway.views, &token)?;
            auth.limit(&caller.key_id().unwrap_or_default())?;
            caller
        }
        _ => gateway.caller(&req)?,
    };
    let q: LogsWsQuery = query(&req)?;
    let id = crate::body::parse_id(&id)?;
    let view = crate::jobs::visible_job(&gateway, &caller, &id)?;
    let slot = gateway.streams.take_for(Some(&caller), &req)?;
    let (response, mut session, mut incoming) =
        actix_ws::handle_with_protocols(&req, body, &["gantry"])?;
    let gateway = gateway.into_inner();
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let fixed = q.attempt;
        let mut attempt = fixed.unwrap_or(view.attempt.max(1));
        let mut offset = q.from.unwrap_or(0);
        let mut poll = tokio::time::interval(LOG_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = heartbeat_timer();
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        let send = |session: &mut actix_ws::Session, value: serde_json::Value| {
            let mut session = session.clone();
            async move {
                matches!(
                    tokio::time::timeout(SEND_TIMEOUT, session.text(value.to_string())).await,
                    Ok(Ok(()))
                )
            }
        };
        let reason = loop {
            tokio::select! {
                _ = poll.tick() => {
                    // The job as the views have it before reading: output read after an end
                    // the views show is the attempt's whole output.
                    let job = match gateway.views.job(&id) {
                        Ok(Some(job)) => job,
                        _ => break Some("the job is gone from the views".to_owned()),
                    };
                    let chunk = match gateway.output.read_from(id, attempt, offset).await {
                        Ok(chunk) => chunk,
                        Err(error) => break Some(format!("output unreadable: {error}")),
                    };
                    if !chunk.is_empty() {
                        let message = json_of(LogMessage::Chunk(LogChunk {
                            attempt,
                            offset,
                            data: String::from_utf8_lossy(&chunk).into_owned(),
                        }));
                        offset += chunk.len() as u64;
                        if !send(&mut session, message).await {
                            dropped("slow");
                            break Some(format!("slow consumer: resume with attempt={attempt}&from={offset}"));
                        }
                        continue;
                    }
                    let this_ended = job
                        .attempts
                        .iter()
                        .any(|a| a.attempt == attempt && a.ended_ns.is_some());
                    let terminal = ["succeeded", "cancelled", "dead_lettered"].contains(&job.state.as_str());
                    if fixed.is_none() && job.attempt > attempt && (this_ended || attempt == 0) {
                        attempt = job.attempt;
                        offset = 0;
                        if !send(&mut session, json_of(LogMessage::Started(LogStarted { attempt, started: true }))).await {
                            break None;
                        }
                        continue;
                    }
                    let done = if fixed.is_some() { this_ended || (terminal && job.attempt < attempt) } else { terminal && (this_ended || job.attempts.is_empty()) };
                    if done {
                        let last = job.attempts.iter().find(|a| a.attempt == attempt);
                        let end = json_of(LogMessage::End(LogEnd {
                            end: true,
                            state: job.state.clone(),
                            attempt,
                            exit_code: last.and_then(|a| a.exit_code),
                            cause: last.and_then(|a| a.cause.clone()),
                        }));
                        let _ = send(&mut session, end).await;
                        break None;
                    }
                }
                _ = ping.tick() => {
                    let resume = format!("attempt={attempt}&from={offset}");
                    match heartbeat(&mut session, heard, &resume).await {
                        Ok(()) => {}
                        Err(Stop::Gone) => return,
                        Err(Stop::Close(reason)) => break Some(reason),
                    }
                }
                message = incoming.next() => {
                    heard = tokio::time::Instant::now();
                    if !answer(&mut session, message).await {
                        return;
                    }
                }
            }
        };
        close(session, reason).await;
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

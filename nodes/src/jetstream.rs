//! The event log on NATS JetStream: the log of record in fleet mode.
//!
//! One stream (file storage) holds the chain; stream sequence `n` is entry `n`. Every publish
//! carries `Nats-Expected-Last-Sequence` = the head it was sealed after, so the server refuses
//! any publish that would not extend the current head, and the chain cannot fork no matter how
//! many processes append. A refused append re-reads the head, re-seals and tries again
//! (optimistic concurrency: no leader to elect or fence).
//!
//! A sequence number alone does not prove the chain: an append sent before the previous one is
//! acknowledged (pipelined) is sealed after an entry the server may still refuse, and another
//! writer can fill that sequence with its own entry. So the `Nats-Msg-Id` of every message is
//! its entry's hash, and a single-event publish sealed after an entry this process sent
//! (acknowledged or not) also carries `Nats-Expected-Last-Msg-Id` = that entry's hash: the
//! server stores it only if the entry it links to is the one stored last (after a server
//! restart that forgot it, the publish is refused once and the head read again). An append
//! sealed after a head read from the server (and checked to link to its predecessor) needs
//! only the sequence. JetStream refuses `Nats-Expected-Last-Msg-Id` inside an
//! atomic batch, so a batch of more than one event is never pipelined: it waits until every
//! earlier send of this process is acknowledged, and then its head is known to be stored.
//!
//! Batches of more than one event go out as one JetStream atomic batch (server ≥ 2.12, stream
//! `allow_atomic`, both checked when the log opens), so they land whole or not at all. After an
//! attempt whose outcome is unknown (a timeout, a lost connection), the appender looks for its
//! events (by event id) after the old head before it tries again, so nothing is stored twice.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use gantry_events::log::{MAX_ENTRY_BYTES, check_batch};
use gantry_events::{
    Appended, Entry, Error, EventLog, Hash, Head, NewEvent, Subscription, Verifier, seal,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Mutex, Notify};

/// The oldest nats-server with atomic batch publish.
const MIN_SERVER: (u64, u64) = (2, 12);

/// Settings of the JetStream log.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// NATS server URL(s), comma separated.
    pub url: String,
    /// Stream holding the log.
    pub stream: String,
    /// Subjects are `<prefix>.<type>`.
    pub subject_prefix: String,
    /// How long to wait for the server to acknowledge a publish.
    pub ack_timeout: Duration,
    /// Attempts before an append contended by other writers gives up.
    pub max_attempts: u32,
    /// Copies of the stream a JetStream cluster keeps (1, or 3 on a three-server cluster);
    /// used when the stream is created.
    pub replicas: usize,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            url: "nats://127.0.0.1:4222".into(),
            stream: "GANTRY_EVENTS".into(),
            subject_prefix: "gantry.events".into(),
            ack_timeout: Duration::from_secs(10),
            max_attempts: 2_000,
            replicas: 1,
        }
    }
}

/// The JetStream-backed event log.
#[derive(Debug)]
pub struct JetStreamLog {
    /// Largest entry this server takes (its `max_payload` less room for headers).
    max_entry: usize,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    options: JetStreamOptions,
    /// Serialises this process's sends and remembers the head after the last one, so an
    /// uncontended append costs no extra round trip.
    state: Mutex<AppendState>,
    /// Woken whenever a send is settled (acknowledged, failed or abandoned).
    settled: Notify,
    /// Sends whose acknowledgement has not come back yet.
    in_flight: AtomicUsize,
    /// 1 + the epoch of a send whose append was dropped before its acknowledgement came back
    /// (0: none): the head it set cannot be trusted, and is forgotten at the next append.
    abandoned: AtomicU64,
}

/// What this process believes the head is.
#[derive(Debug, Default)]
struct AppendState {
    /// The head after the last append sent (acknowledged or not); `None`: ask the server.
    head: Option<Head>,
    /// Whether `head` came from a send of ours rather than from the server: an append sealed
    /// after it must name that entry's hash as the last message id.
    head_sent: bool,
    /// Bumped whenever `head` is forgotten, so a late failure of an append sent before does not
    /// forget a head fetched after it.
    epoch: u64,
}

impl AppendState {
    fn forget(&mut self) {
        self.head = None;
        self.head_sent = false;
        self.epoch += 1;
    }

    fn forget_if(&mut self, epoch: u64) {
        if self.epoch == epoch {
            self.forget();
        }
    }
}

/// How long to wait after the `attempt`-th refused append: 100 µs doubling up to 25 ms, times
/// a random factor between 0.5 and 1.5.
fn contention_pause(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(8);
    // The low bits of a v7 UUID are random.
    let jitter = 50 + (uuid::Uuid::now_v7().as_u128() % 101) as u64;
    Duration::from_micros(base * jitter / 100)
}

/// The message id of an entry: its hash, so an expected last message id names the exact entry
/// a publish links to.
fn msg_id(hash: &Hash) -> String {
    hash.to_string()
}

/// `major.minor` of a server version string such as `2.12.1` or `v2.15.0-beta`.
fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u64>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Seals `batch` after `head`.
fn seal_batch(
    batch: &[NewEvent],
    head: Head,
    max_entry: usize,
) -> Result<(Vec<Entry>, Vec<Appended>), Error> {
    let mut sealed = Vec::with_capacity(batch.len());
    let mut appended = Vec::with_capacity(batch.len());
    let mut prev = head;
    for event in batch {
        let (entry, hash) = seal(prev.seq + 1, &prev.hash, event)?;
        if entry.bytes.len() > max_entry {
            return Err(Error::EntryTooLarge {
                type_name: event.event.type_name(),
                size: entry.bytes.len(),
                max: max_entry,
            });
        }
        prev = Head {
            seq: entry.seq,
            hash,
        };
        appended.push(Appended {
            seq: entry.seq,
            id: event.id,
            hash,
        });
        sealed.push(entry);
    }
    Ok((sealed, appended))
}

impl JetStreamLog {
    /// Connects and creates the stream if it does not exist.
    pub async fn connect(options: JetStreamOptions) -> Result<JetStreamLog, Error> {
        let client = async_nats::ConnectOptions::new()
            .name("gantry")
            .connect(crate::nats::server_list(&options.url))
            .await
            .map_err(|e| Error::backend("connecting to NATS", e))?;
        JetStreamLog::open(client, options, true).await
    }

    /// Opens the log over an existing connection. `create`: make the stream when it does not
    /// exist (a control plane); a worker node only reads the log its control plane made.
    pub async fn open(
        client: async_nats::Client,
        options: JetStreamOptions,
        create: bool,
    ) -> Result<JetStreamLog, Error> {
        let version = client.server_info().version;
        if !version_at_least(&version, MIN_SERVER) {
            return Err(Error::backend(
                "opening the JetStream log",
                format!(
                    "nats-server {version} has no atomic batch publish: gantry needs nats-server {}.{} or newer",
                    MIN_SERVER.0, MIN_SERVER.1
                ),
            ));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(options.ack_timeout)
            .build(client.clone());
        let config = stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{}.>", options.subject_prefix)],
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            deny_delete: true,
            deny_purge: true,
            allow_atomic_publish: true,
            num_replicas: options.replicas.max(1),
            ..Default::default()
        };
        let mut stream = if create {
            js.get_or_create_stream(config)
                .await
                .map_err(|e| Error::backend("creating the event stream", e))?
        } else {
            js.get_stream(&options.stream)
                .await
                .map_err(|e| Error::backend("opening the event stream", e))?
        };
        let info = stream
            .info()
            .await
            .map_err(|e| Error::backend("reading the event stream", e))?;
        if !info.config.allow_atomic_publish {
            // A stream made by hand (or by an older gantry): without atomic batches a batch
            // could land half, so refuse rather than change an operator's stream behind their
            // back.
            return Err(Error::backend(
                "opening the JetStream log",
                format!(
                    "stream {} does not allow atomic batches: set allow_atomic (nats stream edit {} --allow-batch) and start again",
                    options.stream, options.stream
                ),
            ));
        }
        let max_entry = MAX_ENTRY_BYTES.min(
            client
                .server_info()
                .max_payload
                .saturating_sub(crate::nats::HEADER_ROOM),
        );
        Ok(JetStreamLog {
            max_entry,
            client,
            js,
            stream,
            options,
            state: Mutex::new(AppendState::default()),
            settled: Notify::new(),
            in_flight: AtomicUsize::new(0),
            abandoned: AtomicU64::new(0),
        })
    }

    /// The underlying NATS client (shared, cheap to clone).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn subject(&self, event: &NewEvent) -> String {
        format!(
            "{}.{}",
            self.options.subject_prefix,
            event.event.type_name()
        )
    }

    async fn last_sequence(&self) -> Result<u64, Error> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| Error::backend("reading the event stream", e))?;
        Ok(info.state.last_sequence)
    }

    async fn get(&self, seq: u64) -> Result<Option<Entry>, Error> {
        match self.stream.get_raw_message(seq).await {
            Ok(message) => Ok(Some(Entry {
                seq: message.sequence,
                bytes: message.payload,
            })),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::backend("reading an event", e)),
        }
    }

    /// Reads the head from the server and checks that it is a sound entry: appending after a
    /// message that bypassed the chain would bury the damage.
    async fn fetch_head(&self) -> Result<Head, Error> {
        let last = self.last_sequence().await?;
        if last == 0 {
            return Ok(Head::EMPTY);
        }
        let entry = self.get(last).await?.ok_or_else(|| Error::Broken {
            seq: last,
            reason: "the head message is missing".into(),
        })?;
        // The head must link to the entry before it, or it was not appended by gantry.
        let anchor = match last {
            1 => Some(Hash::GENESIS),
            _ => match self.get(last - 1).await? {
                Some(before) => before.stored_hash().ok(),
                None => None,
            },
        };
        let mut verifier = match anchor {
            Some(prev) => Verifier::anchored(last, prev),
            None => Verifier::unanchored(last),
        }
        .check_payloads(false);
        verifier.push(&entry).map_err(|broken| Error::Broken {
            seq: broken.seq,
            reason: broken.fault.to_string(),
        })?;
        Ok(Head {
            seq: last,
            hash: entry.stored_hash().map_err(|e| Error::Broken {
                seq: last,
                reason: e.to_string(),
            })?,
        })
    }

    /// Sends sealed entries that extend `after`; they land whole or not at all. `link`: the
    /// hash of the entry at `after` when it is not known to be stored yet (a pipelined send of
    /// one event). Returns the acknowledgement still to come, so the next append can be sent
    /// before it arrives.
    async fn send(
        &self,
        batch: &[NewEvent],
        sealed: &[Entry],
        appended: &[Appended],
        after: u64,
        link: Option<Hash>,
    ) -> Result<PublishAckFuture, Error> {
        debug_assert_eq!(batch.len(), sealed.len());
        debug_assert!(!batch.is_empty());
        // The server refuses an expected last message id inside an atomic batch.
        debug_assert!(link.is_none() || batch.len() == 1);
        let expected = after.to_string();
        let last_index = batch.len() - 1;
        let batch_id = uuid::Uuid::now_v7().simple().to_string();
        for (i, ((event, entry), appended)) in batch.iter().zip(sealed).zip(appended).enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id(&appended.hash).as_str());
            if i == 0 {
                headers.insert("Nats-Expected-Last-Sequence", expected.as_str());
                if let Some(link) = link {
                    headers.insert("Nats-Expected-Last-Msg-Id", msg_id(&link).as_str());
                }
            }
            if batch.len() > 1 {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            }
            if i < last_index {
                // Inside an atomic batch: no acknowledgement until the commit.
                self.client
                    .publish_with_headers(self.subject(event), headers, entry.bytes.clone())
                    .await
                    .map_err(|e| Error::backend("publishing an event", e))?;
                continue;
            }
            if batch.len() > 1 {
                headers.insert("Nats-Batch-Commit", "1");
            }
            return self
                .js
                .publish_with_headers(self.subject(event), headers, entry.bytes.clone())
                .await
                .map_err(|e| Error::backend("publishing an event", e));
        }
        Err(Error::backend("publishing", "empty batch"))
    }

    /// After an attempt with an unknown outcome: did the batch land after `after`?
    async fn landed(&self, batch: &[NewEvent], after: u64) -> Result<Option<Vec<Appended>>, Error> {
        let head = self.fetch_head().await?;
        if head.seq <= after {
            return Ok(None);
        }
        let found = self.read_range(after + 1, usize::MAX).await?;
        let first_id = batch[0].id;
        let Some(start) = found
            .iter()
            .position(|e| e.view().is_ok_and(|v| v.id == first_id))
        else {
            return Ok(None);
        };
        let run = &found[start..];
        if run.len() < batch.len() {
            return Ok(None);
        }
        let mut appended = Vec::with_capacity(batch.len());
        for (event, entry) in batch.iter().zip(run) {
            let view = entry.view().map_err(|e| Error::Broken {
                seq: entry.seq,
                reason: e.to_string(),
            })?;
            if view.id != event.id {
                return Ok(None);
            }
            appended.push(Appended {
                seq: entry.seq,
                id: event.id,
                hash: entry.stored_hash().map_err(|e| Error::Broken {
                    seq: entry.seq,
                    reason: e.to_string(),
                })?,
            });
        }
        Ok(Some(appended))
    }

    async fn read_range(&self, from: u64, max: usize) -> Result<Vec<Entry>, Error> {
        if from == 0 {
            return Err(Error::InvalidSequence(0));
        }
        let last = self.last_sequence().await?;
        if from > last || max == 0 {
            return Ok(Vec::new());
        }
        let end = last.min(from.saturating_add(max as u64 - 1));
        if end == from {
            return Ok(self.get(from).await?.into_iter().collect());
        }
        let mut messages = self.ordered(from).await?;
        let mut out = Vec::with_capacity((end - from + 1) as usize);
        while let Some(message) = tokio::time::timeout(self.options.ack_timeout, messages.next())
            .await
            .map_err(|_| Error::backend("reading events", "timed out"))?
        {
            let (entry, pending) = message?;
            if entry.seq > end {
                break;
            }
            let done = entry.seq == end || pending == 0;
            out.push(entry);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Entries from `from` on, with the count still pending on the server after each.
    async fn ordered(
        &self,
        from: u64,
    ) -> Result<
        impl futures::Stream<Item = Result<(Entry, u64), Error>> + Send + 'static + use<>,
        Error,
    > {
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::backend("creating a reader", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::backend("starting a reader", e))?;
        Ok(messages.map(|message| {
            let message = message.map_err(|e| Error::backend("reading events", e))?;
            let info = message
                .info()
                .map_err(|e| Error::backend("reading event metadata", e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let bytes: Bytes = message.message.payload.clone();
            Ok((Entry { seq, bytes }, pending))
        }))
    }
}

fn is_conflict(error: &jetstream::context::PublishError) -> bool {
    if matches!(
        error.kind(),
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId
    ) {
        return true;
    }
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| {
            e.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || e.error_code() == ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID
        })
}

/// A send whose acknowledgement is awaited. Settled explicitly; dropped unsettled (the append
/// future was cancelled), it still gives its place back and marks its head as untrusted.
struct InFlight<'a> {
    log: &'a JetStreamLog,
    epoch: u64,
    settled: bool,
}

impl InFlight<'_> {
    /// The acknowledgement came back (`stored`: as expected) or failed.
    async fn settle(mut self, stored: bool) {
        self.settled = true;
        let mut state = self.log.state.lock().await;
        self.log.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !stored {
            state.forget_if(self.epoch);
        }
        drop(state);
        self.log.settled.notify_waiters();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.log.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.log.abandoned.store(self.epoch + 1, Ordering::SeqCst);
            self.log.settled.notify_waiters();
        }
    }
}

impl JetStreamLog {
    async fn append_batch(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        check_batch(&batch)?;
        // The head an earlier attempt with an unknown outcome was sealed after: it may still
        // have landed, and a later attempt must not store the events a second time.
        let mut uncertain: Option<u64> = None;
        for attempt in 1..=self.options.max_attempts {
            // Before sealing again: did the uncertain attempt land meanwhile (a publish held
            // back by a reconnect can arrive after its acknowledgement timed out)?
            if let Some(before) = uncertain
                && let Some(appended) = self.landed(&batch, before).await?
            {
                return Ok(appended);
            }
            // Seal and send under the lock, then wait for the acknowledgement without it: the
            // next append goes out after this one (expecting its end) before this one is
            // acknowledged. If this one fails, that one fails too, as it names an entry that
            // never came to be, and both retry.
            let (ack, appended, in_flight, after) = {
                let mut state = self.state.lock().await;
                while batch.len() > 1 && self.in_flight.load(Ordering::SeqCst) > 0 {
                    // An atomic batch cannot name the entry it follows, so it is sealed only
                    // after a head known to be stored.
                    let notified = self.settled.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    drop(state);
                    notified.await;
                    state = self.state.lock().await;
                }
                let abandoned = self.abandoned.swap(0, Ordering::SeqCst);
                if abandoned != 0 {
                    state.forget_if(abandoned - 1);
                }
                let (head, link) = match state.head {
                    // Sealed after an entry of our own: the server checks the link, so an
                    // entry it never stored (or lost) cannot be built on. Not possible inside
                    // an atomic batch, which waited above for every send to be acknowledged.
                    Some(head) if state.head_sent && batch.len() == 1 => (head, Some(head.hash)),
                    // Read from the server (and checked), or acknowledged.
                    Some(head) => (head, None),
                    None => {
                        let head = self.fetch_head().await?;
                        state.head = Some(head);
                        state.head_sent = false;
                        (head, None)
                    }
                };
                let (sealed, appended) = seal_batch(&batch, head, self.max_entry)?;
                match self.send(&batch, &sealed, &appended, head.seq, link).await {
                    Ok(ack) => {
                        state.head = appended.last().map(|a| Head {
                            seq: a.seq,
                            hash: a.hash,
                        });
                        state.head_sent = true;
                        self.in_flight.fetch_add(1, Ordering::SeqCst);
                        let in_flight = InFlight {
                            log: self,
                            epoch: state.epoch,
                            settled: false,
                        };
                        (ack, appended, in_flight, head.seq)
                    }
                    Err(error) => {
                        state.forget();
                        drop(state);
                        // Part of it may have gone out.
                        if let Some(appended) = self.landed(&batch, head.seq).await? {
                            return Ok(appended);
                        }
                        uncertain.get_or_insert(head.seq);
                        tracing::warn!(%error, attempt, "append failed; retrying");
                        continue;
                    }
                }
            };
            let last = appended.last().map_or(0, |a| a.seq);
            match ack.await {
                Ok(ack) if !ack.duplicate && ack.sequence == last => {
                    in_flight.settle(true).await;
                    return Ok(appended);
                }
                Ok(ack) if !ack.duplicate => {
                    in_flight.settle(false).await;
                    return Err(Error::Broken {
                        seq: ack.sequence,
                        reason: format!(
                            "server stored the batch at {}, expected {last}",
                            ack.sequence
                        ),
                    });
                }
                Err(e) if is_conflict(&e) => {
                    in_flight.settle(false).await;
                    // Spread out the retries of writers that collided: exponential, capped,
                    // with jitter, so two busy processes take turns instead of refusing
                    // each other's pipelined sends round after round.
                    tokio::time::sleep(contention_pause(attempt)).await;
                }
                outcome => {
                    // Timed out, disconnected, or this very entry was stored before (a
                    // duplicate message id): find out what landed.
                    in_flight.settle(false).await;
                    let before = *uncertain.get_or_insert(after);
                    if let Some(appended) = self.landed(&batch, before.min(after)).await? {
                        return Ok(appended);
                    }
                    let error = match outcome {
                        Ok(_) => "duplicate entry".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(%error, attempt, "append failed; retrying");
                }
            }
        }
        Err(Error::Contended {
            attempts: self.options.max_attempts,
        })
    }
}

impl EventLog for JetStreamLog {
    fn append(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Appended>, Error>> {
        self.append_batch(batch).boxed()
    }

    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Entry>, Error>> {
        self.read_range(from, max).boxed()
    }

    fn head(&self) -> BoxFuture<'_, Result<Head, Error>> {
        self.fetch_head().boxed()
    }

    fn subscribe(&self, from: u64) -> BoxFuture<'_, Result<Subscription, Error>> {
        async move {
            if from == 0 {
                return Err(Error::InvalidSequence(0));
            }
            let entries = self.ordered(from).await?;
            Ok(entries.map_ok(|(entry, _)| entry).boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_below_the_floor_are_refused() {
        for old in ["2.9.10", "2.10.22", "2.11.0", "v2.11.9", "", "garbage"] {
            assert!(!version_at_least(old, MIN_SERVER), "{old}");
        }
        for new in ["2.12.0", "2.12.1", "v2.15.1", "2.14.0-beta.1", "3.0.0"] {
            assert!(version_at_least(new, MIN_SERVER), "{new}");
        }
    }
}

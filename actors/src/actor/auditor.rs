//! The Auditor: follows the log and re-verifies every entry as it arrives, and on a schedule
//! re-reads everything it verified before, from genesis, so damage to stored entries is found
//! while gantry runs, not only at the next start: a re-check also catches a history rewritten
//! with fresh hashes, since the entry it last verified must still have the hash it had. It
//! exposes the verified head; a broken chain is reported loudly (an error log line naming the
//! sequence, health degraded) and stops appends: the Scheduler refuses every command until an
//! operator repairs the log and restarts gantry.
//!
//! It keeps the right edge of the Merkle tree over what it verified (`gantry_events::merkle`)
//! and, each time the log has grown by [`AuditSettings::checkpoint_events`] events or every
//! [`AuditSettings::checkpoint_every`], records an `audit.checkpointed` event with the size and
//! root — signed, as a note, when it has a key — and publishes the signed note outside the log
//! ([`CheckpointSink`]: a file, a NATS KV bucket), never a smaller one than it published. At
//! start it reads the last checkpoint published there back, and appends wait (`Hold`) until
//! the log has been checked against it: a log shorter than that checkpoint, or whose root at
//! its size differs, is a broken chain (a cut tail, a rewritten history). Only entries it has
//! verified are checkpointed, and nothing before it has re-read the history there was at its
//! start.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::BoxFuture;
use gantry_events::checkpoint::{Checkpoint, NoteSigner};
use gantry_events::event::AuditCheckpointed;
use gantry_events::merkle::Frontier;
use gantry_events::{Break, Entry, EventLog, Fault, Hash, Verifier};
use serde::Serialize;

use crate::actor::scheduler::{Halt, Hold, Record, Scheduler};

/// A place signed checkpoints are published to besides the log, kept where a writer of the
/// log's store cannot rewrite it (another disk or host, a bucket with its own permissions).
pub trait CheckpointSink: Send + Sync + 'static {
    /// Names it in log lines and faults (`file /var/lib/…`, `NATS KV gantry_checkpoints`).
    fn describe(&self) -> String;
    /// The last signed note published here, if any.
    fn last(&self) -> BoxFuture<'_, Result<Option<String>, String>>;
    /// Publishes a signed note (replacing the last one).
    fn publish(&self, note: String) -> BoxFuture<'_, Result<(), String>>;
}

/// How the Auditor checkpoints, signs and re-checks.
#[derive(Clone)]
pub struct AuditSettings {
    /// How often a checkpoint is made, when the log has grown since the last one.
    pub checkpoint_every: Duration,
    /// A checkpoint is made as soon as the log has grown by this many events.
    pub checkpoint_events: u64,
    /// How often everything verified so far is read and verified again.
    pub recheck_every: Duration,
    /// Signs checkpoints (`None`: checkpoints carry the root, unsigned, and nothing is
    /// published).
    pub signer: Option<Arc<NoteSigner>>,
    /// Where signed checkpoints go besides the log.
    pub sinks: Vec<Arc<dyn CheckpointSink>>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            checkpoint_every: Duration::from_secs(10),
            checkpoint_events: 10_000,
            recheck_every: DEFAULT_RECHECK_EVERY,
            signer: None,
            sinks: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuditSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSettings")
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_events", &self.checkpoint_events)
            .field("recheck_every", &self.recheck_every)
            .field("signer", &self.signer)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.describe()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What the auditor knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditStatus {
    pub verified_seq: u64,
    pub verified_head: Hash,
    /// The Merkle root of entries 1 to `verified_seq`.
    pub root: Hash,
    pub broken: Option<Break>,
    /// The last checkpoint it made, as a signed note (`None` before the first, or unsigned).
    pub checkpoint: Option<String>,
}

/// A signed checkpoint published outside the log, which the log must meet.
#[derive(Debug, Clone)]
struct Promise {
    checkpoint: Checkpoint,
    from: String,
}

/// What reading the published checkpoint found.
enum PromiseRead {
    /// The largest published checkpoint (none published yet: `None`), and the log's head.
    Read(Option<Promise>, u64),
    /// A sink or the log could not be read for now.
    Unreadable(String),
    /// A published note that cannot be trusted: not signed by this key, another log.
    Bad(String),
}

pub struct Auditor {
    log: Arc<dyn EventLog>,
    scheduler: Addr<Scheduler>,
    verifier: Verifier,
    tree: Frontier,
    status: AuditStatus,
    settings: AuditSettings,
    checkpointed_seq: u64,
    restarts: u32,
    /// The last checkpoint published outside the log, until the log has met it.
    promise: Option<Promise>,
    /// The log's head when it started: until it has verified that far, it does not checkpoint
    /// (the history it re-reads was checkpointed before).
    started_head: u64,
    /// Reads of the published checkpoint so far (since the last start).
    promise_reads: u32,
    /// Whether the published checkpoint is still being read or checked (checkpoints wait).
    promise_pending: bool,
    /// Whether it was told to stop for good (its control plane no longer leads).
    retired: bool,
    /// Whether a re-check is running.
    rechecking: bool,
    /// Re-checks finished without finding anything.
    rechecks: u64,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("status", &self.status)
            .finish()
    }
}

impl Auditor {
    pub fn new(
        log: Arc<dyn EventLog>,
        scheduler: Addr<Scheduler>,
        settings: AuditSettings,
    ) -> Auditor {
        Auditor {
            log,
            scheduler,
            verifier: Verifier::from_genesis(),
            tree: Frontier::new(),
            status: AuditStatus {
                verified_seq: 0,
                verified_head: Hash::GENESIS,
                root: Frontier::new().root(),
                broken: None,
                checkpoint: None,
            },
            settings,
            checkpointed_seq: 0,
            restarts: 0,
            promise: None,
            started_head: u64::MAX,
            promise_reads: 0,
            promise_pending: false,
            retired: false,
            rechecking: false,
            rechecks: 0,
        }
    }

    /// Records a break, loudly, and stops appends.
    fn broken(&mut self, broken: Break) {
        if self.status.broken.is_some() {
            return;
        }
        tracing::error!(seq = broken.seq, fault = %broken.fault, "EVENT LOG CHAIN IS BROKEN; appends stopped");
        self.scheduler.do_send(Halt(format!(
            "the event log's chain is broken at sequence {}: {}",
            broken.seq, broken.fault
        )));
        self.status.broken = Some(broken);
    }

    /// Reads and verifies again, from genesis, everything verified so far; the entry verified
    /// last must still have the hash it had then.
    fn recheck(&mut self, ctx: &mut Context<Self>) {
        if self.rechecking || self.status.broken.is_some() || self.status.verified_seq == 0 {
            return;
        }
        self.rechecking = true;
        let (upto, head) = (self.status.verified_seq, self.status.verified_head);
        let log = self.log.clone();
        let check = async move {
            let verified = match gantry_events::verify_log(&*log, 1, Some(upto)).await? {
                Ok(verified) => verified,
                Err(broken) => return Ok(Some(broken)),
            };
            if verified.last_seq < upto {
                // Entries it verified before are gone: the tail was cut.
                let missing = verified.last_seq + 1;
                return Ok(Some(Break {
                    seq: missing,
                    fault: Fault::Gap {
                        expected: missing,
                        found: 0,
                    },
                }));
            }
            Ok::<_, gantry_events::Error>((verified.head != head).then_some(Break {
                seq: upto,
                fault: Fault::Rewritten {
                    seen: head,
                    now: verified.head,
                },
            }))
        };
        ctx.spawn(check.into_actor(self).map(move |checked, act, _| {
            act.rechecking = false;
            match checked {
                Ok(None) => {
                    act.rechecks += 1;
                    tracing::info!(
                        through = upto,
                        "auditor re-check: the stored chain still holds"
                    );
                }
                Ok(Some(broken)) => act.broken(broken),
                // Not damage: the log could not be read for now; the next re-check tries again.
                Err(error) => tracing::warn!(%error, "auditor re-check could not read the log"),
            }
        }));
    }

    /// Checkpoints what it has verified: records it in the log and publishes the signed note.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        let seq = self.status.verified_seq;
        // Nothing new but (perhaps) our own last checkpoint: stay quiet. Nor before it has
        // re-read the history there was at its start, nor before the log has met what was
        // published: a restart never checkpoints less than was checkpointed before.
        if self.status.broken.is_some()
            || self.retired
            || seq <= self.checkpointed_seq.saturating_add(1)
            || self.promise.is_some()
            || self.promise_pending
            || seq < self.started_head
        {
            return;
        }
        let events_verified = seq - self.checkpointed_seq;
        self.checkpointed_seq = seq;
        let root = self.tree.root();
        self.status.root = root;
        let note = self.settings.signer.as_ref().map(|signer| {
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            signer.sign(&Checkpoint {
                origin: signer.name().to_owned(),
                size: seq,
                root,
                extensions: vec![format!("time {time}")],
            })
        });
        self.status.checkpoint = note.clone().or(self.status.checkpoint.take());
        self.scheduler.do_send(Record(
            AuditCheckpointed {
                through_seq: seq,
                through_hash: self.status.verified_head,
                events_verified,
                root: Some(root),
                note: note.clone(),
            }
            .into(),
        ));
        let Some(note) = note else { return };
        for sink in self.settings.sinks.clone() {
            let note = note.clone();
            ctx.spawn(
                async move {
                    if let Err(error) = sink.publish(note).await {
                        tracing::warn!(to = %sink.describe(), %error, size = seq, "could not publish the signed checkpoint");
                    }
                }
                .into_actor(self),
            );
        }
    }

    /// Reads back the last checkpoint published outside the log: the log must reach its size
    /// with its root, and appends wait until it is checked. One that is not signed by this
    /// Auditor's key, or names another log, is a fault: the operator pointed gantry at it. One
    /// that cannot be read for now (the bucket's server restarting) is read again shortly,
    /// appends waiting meanwhile.
    fn read_promises(&mut self, ctx: &mut Context<Self>) {
        let signer = self.settings.signer.clone();
        let sinks = self.settings.sinks.clone();
        let log = self.log.clone();
        let read = async move {
            let mut promise: Option<Promise> = None;
            for (sink, signer) in signer
                .iter()
                .flat_map(|signer| sinks.iter().map(move |sink| (sink, signer)))
            {
                let note = match sink.last().await {
                    Ok(Some(note)) => note,
                    Ok(None) => continue,
                    Err(error) => {
                        return PromiseRead::Unreadable(format!(
                            "the checkpoint published to {} cannot be read: {error}",
                            sink.describe()
                        ));
                    }
                };
                let checkpoint = match signer.verifier().open(&note) {
                    Ok(checkpoint) => checkpoint,
                    Err(e) => {
                        return PromiseRead::Bad(format!(
                            "the checkpoint published to {}: {e}",
                            sink.describe()
                        ));
                    }
                };
                if checkpoint.origin != signer.name() {
                    return PromiseRead::Bad(format!(
                        "the checkpoint published to {} is of log {:?}, not {:?}",
                        sink.describe(),
                        checkpoint.origin,
                        signer.name()
                    ));
                }
                if promise
                    .as_ref()
                    .is_none_or(|p| checkpoint.size > p.checkpoint.size)
                {
                    promise = Some(Promise {
                        checkpoint,
                        from: sink.describe(),
                    });
                }
            }
            match log.head().await {
                Ok(head) => PromiseRead::Read(promise, head.seq),
                Err(error) => PromiseRead::Unreadable(format!("the log's head: {error}")),
            }
        };
        let first = self.promise_reads == 0;
        self.promise_reads += 1;
        let handle = move |read: PromiseRead, act: &mut Auditor, ctx: &mut Context<Auditor>| {
            act.read_promise(read, ctx);
        };
        // The first read holds the entries back, so the root at the promised size is seen on
        // the way; a later one runs beside them (a late promise is checked by reading back).
        if first {
            ctx.wait(read.into_actor(self).map(handle));
        } else {
            ctx.spawn(read.into_actor(self).map(handle));
        }
    }

    fn read_promise(&mut self, read: PromiseRead, ctx: &mut Context<Self>) {
        match read {
            PromiseRead::Read(promise, head) => {
                self.started_head = self.started_head.min(head);
                self.promise_pending = false;
                let Some(promise) = promise else {
                    self.scheduler.do_send(Hold(None));
                    return;
                };
                let size = promise.checkpoint.size;
                if head < size {
                    tracing::error!(head, size, from = %promise.from, "the log is shorter than the checkpoint published outside it");
                    self.broken(Break {
                        seq: head + 1,
                        fault: Fault::ShorterThanCheckpoint { head, size },
                    });
                    return;
                }
                tracing::info!(size, from = %promise.from, "the log must meet the published checkpoint");
                self.scheduler.do_send(Hold(Some(format!(
                    "the Auditor is checking the log against the checkpoint of {size} entries published to {}",
                    promise.from
                ))));
                self.promise = Some(promise);
                self.met(ctx);
            }
            PromiseRead::Unreadable(error) => {
                tracing::warn!(%error, "the published checkpoint cannot be read yet; appends wait, trying again");
                self.promise_pending = true;
                self.scheduler.do_send(Hold(Some(error)));
                let pause = Duration::from_millis(500 * u64::from(self.promise_reads.min(20)));
                ctx.run_later(pause, |act, ctx| act.read_promises(ctx));
            }
            PromiseRead::Bad(reason) => {
                tracing::error!(%reason, "the published checkpoint cannot be trusted");
                self.broken(Break {
                    seq: self.status.verified_seq + 1,
                    fault: Fault::BadCheckpoint { reason },
                });
            }
        }
    }

    /// Whether the log has reached the published checkpoint, and with its root. Reached on the
    /// way, the root is the frontier's; reached before the promise was read (a late read),
    /// the entries up to its size are read back.
    fn met(&mut self, ctx: &mut Context<Self>) {
        let Some(promise) = &self.promise else { return };
        let size = promise.checkpoint.size;
        let signed = promise.checkpoint.root;
        if self.status.verified_seq < size || self.promise_pending {
            return;
        }
        if self.status.verified_seq == size {
            let computed = self.tree.root();
            self.promise_checked(size, signed, Ok(computed), ctx);
            return;
        }
        let log = self.log.clone();
        let root = async move {
            gantry_events::merkle::frontier_of(&*log, size)
                .await
                .map(|tree| tree.root())
        };
        self.promise_pending = true;
        ctx.spawn(root.into_actor(self).map(move |root, act, ctx| {
            act.promise_pending = false;
            act.promise_checked(size, signed, root.map_err(|e| e.to_string()), ctx);
        }));
    }

    fn promise_checked(
        &mut self,
        size: u64,
        signed: Hash,
        computed: Result<Hash, String>,
        ctx: &mut Context<Self>,
    ) {
        if computed.is_ok() {
            self.promise = None;
        }
        match computed {
            Ok(computed) if computed == signed => {
                tracing::info!(size, "the log meets the checkpoint published outside it");
                // Checkpoints carry on from here.
                self.checkpointed_seq = self.checkpointed_seq.max(size);
                self.scheduler.do_send(Hold(None));
            }
            Ok(computed) => self.broken(Break {
                seq: size,
                fault: Fault::RootMismatch {
                    size,
                    signed,
                    computed,
                },
            }),
            Err(error) => {
                // Not damage: tried again shortly, appends waiting meanwhile.
                tracing::warn!(%error, "could not read the log back to check the published checkpoint");
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.met(ctx));
            }
        }
    }
}

impl Actor for Auditor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Restarted by the supervisor: wait a little, then start over from genesis.
        if self.restarts > 0 {
            ctx.wait(actix::fut::wrap_future(tokio::time::sleep(
                crate::actor::worker::restart_backoff(self.restarts),
            )));
        }
        self.verifier = Verifier::from_genesis();
        self.tree = Frontier::new();
        self.status.verified_seq = 0;
        self.status.verified_head = Hash::GENESIS;
        self.checkpointed_seq = 0;
        self.promise = None;
        self.promise_reads = 0;
        self.promise_pending = false;
        self.started_head = u64::MAX;
        if self.retired {
            ctx.stop();
            return;
        }
        self.read_promises(ctx);
        let log = self.log.clone();
        ctx.wait(async move { log.subscribe(1).await }.into_actor(self).map(
            |subscription, _act, ctx| match subscription {
                Ok(stream) => {
                    ctx.add_stream(stream);
                }
                Err(error) => {
                    tracing::error!(%error, "auditor cannot follow the log");
                    ctx.stop();
                }
            },
        ));
        ctx.run_interval(self.settings.checkpoint_every, |act, ctx| {
            act.checkpoint(ctx)
        });
        ctx.run_interval(self.settings.recheck_every, |act, ctx| act.recheck(ctx));
    }
}

impl Supervised for Auditor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts += 1;
        tracing::warn!(restarts = self.restarts, "auditor restarting");
    }
}

impl StreamHandler<Result<Entry, gantry_events::Error>> for Auditor {
    fn handle(&mut self, item: Result<Entry, gantry_events::Error>, ctx: &mut Context<Self>) {
        if self.status.broken.is_some() {
            return;
        }
        let result = match item {
            Ok(entry) => self.verifier.push(&entry).map(|()| {
                (
                    entry.seq,
                    entry.stored_hash().unwrap_or(Hash::GENESIS),
                    checkpointed(&entry),
                )
            }),
            Err(gantry_events::Error::Broken { seq, reason }) => Err(Break {
                seq,
                fault: gantry_events::Fault::Undecodable { reason },
            }),
            Err(error) => {
                tracing::error!(%error, "auditor lost the log");
                return;
            }
        };
        match result {
            Ok((seq, hash, checkpointed)) => {
                self.status.verified_seq = seq;
                self.status.verified_head = hash;
                self.tree.push(&hash);
                // A checkpoint already recorded (before a restart) is not made again. Only one
                // of entries before its own counts: the field is the log's, not signed.
                if let Some(through) = checkpointed.filter(|&t| t < seq) {
                    self.checkpointed_seq = self.checkpointed_seq.max(through);
                }
                self.met(ctx);
                if seq >= self.started_head
                    && seq
                        >= self
                            .checkpointed_seq
                            .saturating_add(self.settings.checkpoint_events)
                {
                    self.checkpoint(ctx);
                }
            }
            Err(broken) => self.broken(broken),
        }
    }
}

/// The sequence an `audit.checkpointed` entry covers (`None` for other entries).
fn checkpointed(entry: &Entry) -> Option<u64> {
    let view = entry.view().ok()?;
    if view.type_name != "audit.checkpointed" {
        return None;
    }
    match entry.open().ok()?.event {
        gantry_events::Event::Audit(gantry_events::event::AuditEvent::Checkpointed(c)) => {
            Some(c.through_seq)
        }
        _ => None,
    }
}

/// How often the Auditor re-checks the stored chain unless told otherwise.
pub const DEFAULT_RECHECK_EVERY: Duration = Duration::from_secs(3600);

/// Stops the Auditor for good: its control plane no longer leads, so it must neither check
/// nor publish anything more (the next leader's Auditor does).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for Auditor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.retired = true;
        ctx.stop();
    }
}

/// Re-checks the stored chain now (answers at once; the re-check runs in the background).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Recheck;

impl Handler<Recheck> for Auditor {
    type Result = ();

    fn handle(&mut self, _: Recheck, ctx: &mut Context<Self>) {
        self.recheck(ctx);
    }
}

/// The auditor's status.
#[derive(Debug, Message)]
#[rtype(result = "AuditStatus")]
pub struct GetAudit;

impl Handler<GetAudit> for Auditor {
    type Result = MessageResult<GetAudit>;

    fn handle(&mut self, _: GetAudit, _: &mut Context<Self>) -> Self::Result {
        self.status.root = self.tree.root();
        MessageResult(self.status.clone())
    }
}

//! The Auditor: follows the log and re-verifies every entry as it arrives, and on a schedule
//! re-reads everything it verified before, from genesis, so damage to stored entries is found
//! while gantry runs, not only at the next start: a re-check also catches a history rewritten
//! with fresh hashes, since the entry it last verified must still have the hash it had. It
//! exposes the verified head; a broken chain is reported loudly (an error log line naming the
//! sequence, health degraded) and stops appends: the Scheduler refuses every command until an
//! operator repairs the log and restarts gantry. Every so often it records an
//! `audit.checkpointed` event naming how far the chain was verified.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::AuditCheckpointed;
use gantry_events::{Break, Entry, EventLog, Hash, Verifier};
use serde::Serialize;

use crate::actor::scheduler::{Halt, Record, Scheduler};

/// What the auditor knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditStatus {
    pub verified_seq: u64,
    pub verified_head: Hash,
    pub broken: Option<Break>,
}

pub struct Auditor {
    log: Arc<dyn EventLog>,
    scheduler: Addr<Scheduler>,
    verifier: Verifier,
    status: AuditStatus,
    checkpoint_every: Duration,
    checkpointed_seq: u64,
    restarts: u32,
    /// How often everything verified so far is read and verified again.
    recheck_every: Duration,
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
        checkpoint_every: Duration,
    ) -> Auditor {
        Auditor {
            log,
            scheduler,
            verifier: Verifier::from_genesis(),
            status: AuditStatus {
                verified_seq: 0,
                verified_head: Hash::GENESIS,
                broken: None,
            },
            checkpoint_every,
            checkpointed_seq: 0,
            restarts: 0,
            recheck_every: DEFAULT_RECHECK_EVERY,
            rechecking: false,
            rechecks: 0,
        }
    }

    /// Re-checks everything verified every `every` instead of every hour.
    pub fn recheck_every(mut self, every: Duration) -> Auditor {
        self.recheck_every = every;
        self
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
                    fault: gantry_events::Fault::Gap {
                        expected: missing,
                        found: 0,
                    },
                }));
            }
            Ok::<_, gantry_events::Error>((verified.head != head).then_some(Break {
                seq: upto,
                fault: gantry_events::Fault::Rewritten {
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

    fn checkpoint(&mut self) {
        let seq = self.status.verified_seq;
        // Nothing new but (perhaps) our own last checkpoint: stay quiet.
        if self.status.broken.is_some() || seq <= self.checkpointed_seq + 1 {
            return;
        }
        let events_verified = seq - self.checkpointed_seq;
        self.checkpointed_seq = seq;
        self.scheduler.do_send(Record(
            AuditCheckpointed {
                through_seq: seq,
                through_hash: self.status.verified_head,
                events_verified,
            }
            .into(),
        ));
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
        ctx.run_interval(self.checkpoint_every, |act, _| act.checkpoint());
        ctx.run_interval(self.recheck_every, |act, ctx| act.recheck(ctx));
    }
}

impl Supervised for Auditor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts += 1;
        tracing::warn!(restarts = self.restarts, "auditor restarting");
    }
}

impl StreamHandler<Result<Entry, gantry_events::Error>> for Auditor {
    fn handle(&mut self, item: Result<Entry, gantry_events::Error>, _: &mut Context<Self>) {
        if self.status.broken.is_some() {
            return;
        }
        let result = match item {
            Ok(entry) => self.verifier.push(&entry).map(|()| entry.seq),
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
            Ok(seq) => {
                self.status.verified_seq = seq;
                if let Ok(v) = self.verifier.finish() {
                    self.status.verified_head = v.head;
                }
            }
            Err(broken) => self.broken(broken),
        }
    }
}

/// How often the Auditor re-checks the stored chain unless told otherwise.
pub const DEFAULT_RECHECK_EVERY: Duration = Duration::from_secs(3600);

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
        MessageResult(self.status.clone())
    }
}

//! The Auditor: follows the log and re-verifies every entry as it arrives. It exposes the
//! verified head, and a broken chain is reported loudly (an error log line naming the
//! sequence, and health degraded), never silently. Every so often it records an
//! `audit.checkpointed` event naming how far the chain was verified.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::AuditCheckpointed;
use gantry_events::{Break, Entry, EventLog, Hash, Verifier};
use serde::Serialize;

use crate::actor::scheduler::{Record, Scheduler};

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
        }
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
            Err(broken) => {
                tracing::error!(seq = broken.seq, fault = %broken.fault, "EVENT LOG CHAIN IS BROKEN");
                self.status.broken = Some(broken);
            }
        }
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

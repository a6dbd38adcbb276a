//! How a node's actors and the gateway reach the control plane: one trait, two deliveries.
//!
//! - Embedded ([`Local`]): in-process, straight to the Scheduler's actix address.
//! - Fleet (`gantry-nodes`' `nats` module): typed, versioned MessagePack messages over NATS to
//!   whichever control plane leads; a node answers `job`/`live_on` from its own replica of the
//!   log.
//!
//! The Worker, the GpuProbe and the gateway only see [`Control`], so both ways run the same
//! actor code.

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_events::Event;
use gantry_events::event::JobId;
use serde::{Deserialize, Serialize};

use crate::actor::scheduler::{
    AttemptReport, Cancel, ChangeAccess, CommandError, GetJob, LiveOn, NodeChange, PipelineCommand,
    PipelineReply, Prune, Record, ResolveSecrets, Scheduler, Stats, Submit, SubmitReply,
};
use crate::job::{Job, JobState};
use crate::placement::Node;
use crate::secrets::SecretValues;
use crate::spec::{Resolved, SubmitRequest};
use crate::world::{AccessChange, Principal, Refusal};

/// The answer to a cancel: the job's state after it, and the sequence to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReply {
    pub state: JobState,
    pub seq: u64,
}

/// The control plane as a node and the gateway see it.
pub trait Control: Send + Sync + 'static {
    /// Submits a job on behalf of `by` (`None`: without authentication, the default group),
    /// with what the gateway resolved (secret variables it stored, inputs).
    fn submit(
        &self,
        request: SubmitRequest,
        by: Option<Principal>,
        resolved: Resolved,
    ) -> BoxFuture<'_, Result<SubmitReply, CommandError>>;

    /// The secret values of `node`'s attempt, for its start (refused unless the log has that
    /// attempt placed or running on `node`).
    fn secrets(
        &self,
        node: &str,
        job: JobId,
        attempt: u32,
    ) -> BoxFuture<'_, Result<SecretValues, CommandError>>;

    /// Asks for a job to be cancelled; `by` is the asking key's id.
    fn cancel(
        &self,
        job: JobId,
        reason: Option<String>,
        by: Option<String>,
    ) -> BoxFuture<'_, Result<CancelReply, CommandError>>;

    /// An admin's change to the API keys; answers the sequence to wait for (0: nothing new).
    fn change_access(&self, change: AccessChange) -> BoxFuture<'_, Result<u64, CommandError>>;

    /// Records outputs whose bytes retention deletes; answers the sequence to wait for.
    fn prune(&self, pruned: Prune) -> BoxFuture<'_, Result<u64, CommandError>>;

    /// Submits (or checks) or cancels a pipeline.
    fn pipeline(
        &self,
        command: PipelineCommand,
    ) -> BoxFuture<'_, Result<PipelineReply, CommandError>>;

    /// A worker's report about an attempt on its node. `Ok` once the fact is in the log; a
    /// refusal ([`CommandError::is_refusal`]) is final.
    fn report(&self, report: AttemptReport) -> BoxFuture<'_, Result<(), CommandError>>;

    /// A fact a node observed about itself (joined, GPUs changed, drained) to record.
    fn record(&self, event: Event) -> BoxFuture<'_, Result<(), CommandError>>;

    /// A job as the log has it once it reaches sequence `at_seq` (the entry that made the
    /// caller ask).
    fn job(&self, id: JobId, at_seq: u64) -> BoxFuture<'_, Result<Option<Job>, CommandError>>;

    /// The attempts the log has live on `node`.
    fn live_on(&self, node: &str) -> BoxFuture<'_, Result<Vec<Job>, CommandError>>;

    /// An operator's change to a node (cordon, uncordon, drain).
    fn change_node(&self, change: NodeChange) -> BoxFuture<'_, Result<(), CommandError>>;

    /// The fleet as the scheduler sees it now, with free resources.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Node>, CommandError>>;
}

/// A refusal or failure as it crosses the wire and reaches a client: an HTTP status, a stable
/// code, a message and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Fault {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl Fault {
    pub fn new(
        status: u16,
        code: &str,
        message: impl Into<String>,
        field: Option<String>,
    ) -> Fault {
        Fault {
            status,
            code: code.into(),
            message: message.into(),
            field,
        }
    }
}

impl CommandError {
    /// What a client is answered.
    pub fn fault(&self) -> Fault {
        match self {
            CommandError::Refused(Refusal::Invalid(i)) => {
                Fault::new(400, i.code, i.message.clone(), Some(i.field.clone()))
            }
            CommandError::Refused(Refusal::UnknownJob(id)) => {
                Fault::new(404, "not_found", format!("no job {id}"), None)
            }
            CommandError::Refused(r @ Refusal::IdempotencyConflict { .. }) => Fault::new(
                409,
                "idempotency_conflict",
                r.to_string(),
                Some("idempotency_key".into()),
            ),
            CommandError::Refused(Refusal::UnknownNode(node)) => {
                Fault::new(404, "not_found", format!("no node {node}"), None)
            }
            CommandError::Refused(Refusal::UnknownWebhook(id)) => {
                Fault::new(404, "not_found", format!("no webhook {id}"), None)
            }
            CommandError::Refused(Refusal::UnknownKey(key)) => {
                Fault::new(404, "not_found", format!("no key {key}"), None)
            }
            CommandError::Refused(Refusal::SecretNotFound(name)) => Fault::new(
                404,
                "secret_not_found",
                format!("secret {name} is not stored"),
                None,
            ),
            CommandError::Refused(r @ Refusal::PipelineEnded(_)) => {
                Fault::new(409, "conflict", r.to_string(), None)
            }
            CommandError::Refused(Refusal::Rejected(r)) => {
                Fault::new(409, "conflict", r.to_string(), None)
            }
            CommandError::Refused(Refusal::Unschedulable(reason)) => Fault::new(
                422,
                "unschedulable",
                format!("{} ({})", reason.message, reason.code),
                Some("resources".into()),
            ),
            CommandError::Log(
                e @ (gantry_events::Error::EntryTooLarge { .. }
                | gantry_events::Error::BatchTooLarge { .. }),
            ) => Fault::new(413, "too_large", e.to_string(), None),
            CommandError::Log(e) => Fault::new(503, "unavailable", e.to_string(), None),
            CommandError::Unavailable(message) => {
                Fault::new(503, "unavailable", message.clone(), None)
            }
            CommandError::Remote(fault) => fault.clone(),
        }
    }

    /// Decided against (final): asking again gets the same answer. Anything else (the log or
    /// the control plane unavailable) may succeed when tried again.
    pub fn is_refusal(&self) -> bool {
        match self {
            CommandError::Refused(_) => true,
            CommandError::Remote(fault) => (400..500).contains(&fault.status),
            CommandError::Log(_) | CommandError::Unavailable(_) => false,
        }
    }
}

/// Embedded delivery: the Scheduler in this process.
#[derive(Debug, Clone)]
pub struct Local(pub Addr<Scheduler>);

fn mailbox(error: MailboxError) -> CommandError {
    CommandError::Unavailable(format!("scheduler: {error}"))
}

impl Control for Local {
    fn submit(
        &self,
        request: SubmitRequest,
        by: Option<Principal>,
        resolved: Resolved,
    ) -> BoxFuture<'_, Result<SubmitReply, CommandError>> {
        let sent = self.0.send(Submit {
            request,
            by,
            resolved,
        });
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn secrets(
        &self,
        node: &str,
        job: JobId,
        attempt: u32,
    ) -> BoxFuture<'_, Result<SecretValues, CommandError>> {
        let sent = self.0.send(ResolveSecrets {
            node: node.to_owned(),
            job_id: job,
            attempt,
        });
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn cancel(
        &self,
        job: JobId,
        reason: Option<String>,
        by: Option<String>,
    ) -> BoxFuture<'_, Result<CancelReply, CommandError>> {
        let sent = self.0.send(Cancel {
            job_id: job,
            reason,
            by,
        });
        async move {
            let (state, seq) = sent.await.map_err(mailbox)??;
            Ok(CancelReply { state, seq })
        }
        .boxed()
    }

    fn change_access(&self, change: AccessChange) -> BoxFuture<'_, Result<u64, CommandError>> {
        let sent = self.0.send(ChangeAccess(change));
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn pipeline(
        &self,
        command: PipelineCommand,
    ) -> BoxFuture<'_, Result<PipelineReply, CommandError>> {
        let sent = self.0.send(command);
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn prune(&self, pruned: Prune) -> BoxFuture<'_, Result<u64, CommandError>> {
        let sent = self.0.send(pruned);
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn report(&self, report: AttemptReport) -> BoxFuture<'_, Result<(), CommandError>> {
        let sent = self.0.send(report);
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn record(&self, event: Event) -> BoxFuture<'_, Result<(), CommandError>> {
        let sent = self.0.send(Record(event));
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn job(&self, id: JobId, _at_seq: u64) -> BoxFuture<'_, Result<Option<Job>, CommandError>> {
        // The scheduler applies an entry only once it is in the log, and answers in order: it
        // is never behind the entry a worker saw.
        let sent = self.0.send(GetJob(id));
        async move { sent.await.map_err(mailbox) }.boxed()
    }

    fn live_on(&self, node: &str) -> BoxFuture<'_, Result<Vec<Job>, CommandError>> {
        let sent = self.0.send(LiveOn(node.to_owned()));
        async move { sent.await.map_err(mailbox) }.boxed()
    }

    fn change_node(&self, change: NodeChange) -> BoxFuture<'_, Result<(), CommandError>> {
        let sent = self.0.send(change);
        async move { sent.await.map_err(mailbox)? }.boxed()
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Node>, CommandError>> {
        let sent = self.0.send(Stats);
        async move { Ok(sent.await.map_err(mailbox)?.1) }.boxed()
    }
}

/// Asks until the control plane answers: a refusal is final and returned at once; anything else
/// (unavailable, no leader yet, a log error) is asked again with backoff, 50 ms doubling to 5 s,
/// for at most `patience` (`None`: without end). `what` names the question in the logs.
pub async fn until_answered<T, F, Fut>(
    what: &str,
    patience: Option<Duration>,
    mut ask: F,
) -> Result<T, CommandError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CommandError>>,
{
    let deadline = patience.map(|p| tokio::time::Instant::now() + p);
    let mut pause = Duration::from_millis(50);
    loop {
        match ask().await {
            Ok(answer) => return Ok(answer),
            Err(error) if error.is_refusal() => return Err(error),
            Err(error) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                return Err(error);
            }
            Err(error) => tracing::warn!(what, %error, "not answered yet; asking again"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

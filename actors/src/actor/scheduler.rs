//! The Scheduler: the one decider for jobs and nodes. Commands (submit, cancel, worker
//! reports, node changes) arrive as messages; each is decided by [`World`], appended to the log,
//! and applied only once appended. A timer runs placement rounds. Handling is atomic: the next
//! message is not looked at until the previous one's events are in the log and applied.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::{
    ArtifactPruned, ArtifactStored, FailureCause, JobId, PipelineId, PipelineStage,
};
use gantry_events::{Appended, Entry, Event, EventLog, NewEvent, Source, record::now_ns};
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState};
use crate::pipeline::PipelineRequest;
use crate::placement::{Node, NodeStatus};
use crate::secrets::{SecretStore, SecretValues};
use crate::spec::{Limits, Resolved, SubmitRequest};
use crate::world::{AccessChange, Principal, Refusal, Submitted, World, stamp};

/// How often placement runs when nothing else wakes it.
const TICK: Duration = Duration::from_millis(50);
/// How often placement leases are checked.
const LEASE_TICK: Duration = Duration::from_secs(1);
/// Most placements appended per round.
const ROUND_MAX: usize = 1000;

/// A command that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Decided against: invalid, unknown job, wrong state (400/404/409).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The log did not take the events (503). Whatever of them landed after all (an unknown
    /// outcome) was read back and applied; the caller may try again.
    #[error(transparent)]
    Log(#[from] gantry_events::Error),
    /// No control plane answered (the scheduler stopped, no leader yet, NATS unreachable);
    /// 503, try again.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// Answered by a control plane across the wire.
    #[error(transparent)]
    Remote(#[from] crate::control::Fault),
}

/// Counters tests and `/readyz` look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedulerStats {
    pub applied_seq: u64,
    pub placements: u64,
    pub commands: u64,
    pub refused: u64,
    pub queued: usize,
    /// Placements taken back because their lease ran out.
    pub expired: u64,
    /// Reports refused because their attempt is no longer that node's (fenced).
    pub fenced: u64,
    /// Nodes declared lost.
    pub lost_nodes: u64,
}

pub struct Scheduler {
    log: Arc<dyn EventLog>,
    /// Where the values of jobs' secrets are kept (`None`: jobs with secrets cannot start).
    secrets: Option<Arc<dyn SecretStore>>,
    world: World,
    source: Source,
    stats: SchedulerStats,
    /// When this scheduler started (Unix ms): placement leases count from here at the
    /// earliest, so downtime does not expire them.
    started_ms: u64,
    /// When each job waiting for a node was queued here (for the placement latency metric).
    queued_at: std::collections::HashMap<JobId, std::time::Instant>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Scheduler {
    /// Rebuilds the scheduler's state from the whole log.
    pub async fn rebuild(
        log: Arc<dyn EventLog>,
        limits: Limits,
        source: Source,
    ) -> Result<Scheduler, gantry_events::Error> {
        let mut world = World::new(limits);
        let mut next = 1;
        loop {
            let entries = log.read(next, 4096).await?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            for entry in &entries {
                let envelope = entry.open().map_err(|e| gantry_events::Error::Broken {
                    seq: entry.seq,
                    reason: e.to_string(),
                })?;
                world.apply(envelope.seq, envelope.time_ns / 1_000_000, &envelope.event);
            }
            next = last + 1;
        }
        tracing::info!(
            seq = world.seq(),
            jobs = world.jobs().count(),
            "scheduler rebuilt from the log"
        );
        Ok(Scheduler {
            log,
            secrets: None,
            world,
            source,
            stats: SchedulerStats::default(),
            started_ms: now_ms(),
            queued_at: std::collections::HashMap::new(),
        })
    }

    /// Placement latency, from a job's (re)queueing by this scheduler to its placement (jobs
    /// queued before it started are not timed).
    fn time_placement(&mut self, event: &Event) {
        use gantry_events::event::JobEvent;
        match event {
            Event::Job(JobEvent::Submitted(s)) => {
                self.queued_at.insert(s.job_id, std::time::Instant::now());
            }
            Event::Job(JobEvent::RetryScheduled(r)) => {
                self.queued_at.insert(r.job_id, std::time::Instant::now());
            }
            Event::Job(JobEvent::Placed(p)) => {
                if let Some(at) = self.queued_at.remove(&p.job_id) {
                    metrics::histogram!("gantry_placement_latency_seconds")
                        .record(at.elapsed().as_secs_f64());
                }
            }
            Event::Job(JobEvent::Cancelled(c)) => {
                self.queued_at.remove(&c.job_id);
            }
            Event::Job(JobEvent::DeadLettered(d)) => {
                self.queued_at.remove(&d.job_id);
            }
            _ => {}
        }
    }

    /// Hands out jobs' secrets from `store`.
    pub fn with_secrets(mut self, store: Option<Arc<dyn SecretStore>>) -> Scheduler {
        self.secrets = store;
        self
    }

    fn apply_appended(&mut self, batch: &[NewEvent], seqs: &[u64]) {
        for event in batch {
            self.time_placement(&event.event);
        }
        for (event, seq) in batch.iter().zip(seqs) {
            self.world
                .apply(*seq, event.time_ns / 1_000_000, &event.event);
        }
        self.stats.applied_seq = self.world.seq();
        self.stats.queued = self.world.queues().len();
    }

    /// Appends `events`, applies them, then answers with `reply(self)`.
    fn commit<R: 'static>(
        &mut self,
        events: Vec<Event>,
        reply: impl FnOnce(&mut Scheduler) -> R + 'static,
    ) -> AtomicResponse<Self, Result<R, CommandError>> {
        self.stats.commands += 1;
        let log = self.log.clone();
        let batch = stamp(events, &self.source);
        let stamped = batch.clone();
        let next = self.world.seq() + 1;
        AtomicResponse::new(Box::pin(
            append_catching_up(log, batch, next).into_actor(self).map(
                move |(appended, missing), act, ctx| {
                    act.apply_entries(&missing);
                    let appended = appended?;
                    let seqs: Vec<u64> = appended.iter().map(|a| a.seq).collect();
                    act.apply_appended(&stamped, &seqs);
                    // A new job or freed capacity: place now rather than at the next tick.
                    if !seqs.is_empty() {
                        ctx.notify(PlaceNow);
                    }
                    Ok(reply(act))
                },
            ),
        ))
    }

    /// Applies entries the log has that this scheduler has not applied yet.
    fn apply_entries(&mut self, entries: &[Entry]) {
        for entry in entries {
            match entry.open() {
                Ok(envelope) => {
                    self.world
                        .apply(envelope.seq, envelope.time_ns / 1_000_000, &envelope.event)
                }
                Err(error) => {
                    tracing::error!(seq = entry.seq, %error, "scheduler skipped an undecodable entry")
                }
            }
        }
        if !entries.is_empty() {
            tracing::warn!(
                count = entries.len(),
                "scheduler applied entries it had not appended itself (an append with an unknown outcome, or another writer)"
            );
            self.stats.applied_seq = self.world.seq();
            self.stats.queued = self.world.queues().len();
        }
    }

    fn refuse<R: 'static>(
        &mut self,
        refusal: Refusal,
    ) -> AtomicResponse<Self, Result<R, CommandError>> {
        self.stats.refused += 1;
        AtomicResponse::new(Box::pin(fut::ready(Err(CommandError::Refused(refusal)))))
    }

    fn place(&mut self, ctx: &mut Context<Self>) {
        // Pipeline stages whose dependencies ended start (or are skipped) first; the jobs
        // they submit are placed by the next round.
        let stages = self.world.decide_pipelines();
        if !stages.is_empty() {
            self.append_decided(stages, ctx, |act| act.stats.commands += 1);
        }
        let events = self.world.decide_placements(now_ms(), ROUND_MAX);
        let count = events.len() as u64;
        self.append_decided(events, ctx, move |act| act.stats.placements += count);
    }

    /// Takes back placements whose lease ran out.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let events = self.world.decide_expired_placements(
            now_ms(),
            self.started_ms,
            gantry_events::log::MAX_BATCH / 2,
        );
        let count = events.len() as u64;
        if count > 0 {
            tracing::warn!(
                count,
                "placements not started within their lease; taking them back"
            );
        }
        self.append_decided(events, ctx, move |act| act.stats.expired += count);
    }

    /// Appends events the scheduler decided on its own (a timer, not a command) and applies
    /// them. `wait`: no other message is handled until they are appended and applied.
    fn append_decided(
        &mut self,
        events: Vec<Event>,
        ctx: &mut Context<Self>,
        done: impl FnOnce(&mut Scheduler) + 'static,
    ) {
        if events.is_empty() {
            return;
        }
        let log = self.log.clone();
        let batch = stamp(events, &self.source);
        let stamped = batch.clone();
        let next = self.world.seq() + 1;
        ctx.wait(append_catching_up(log, batch, next).into_actor(self).map(
            move |(appended, missing), act, _| {
                act.apply_entries(&missing);
                match appended {
                    Ok(appended) => {
                        let seqs: Vec<u64> = appended.iter().map(|a| a.seq).collect();
                        act.apply_appended(&stamped, &seqs);
                        done(act);
                    }
                    Err(error) => {
                        act.world.forget_explanations();
                        tracing::error!(%error, "decisions not recorded; will retry");
                    }
                }
            },
        ));
    }
}

/// Appends `batch`, then reads what the log holds from `next` on that the caller has not
/// applied: entries before its own (another writer's), or — when the append failed — whatever
/// landed after all (an append whose outcome was unknown may still have been stored). So the
/// scheduler's state never lags the log it decides on, even after an error.
async fn append_catching_up(
    log: Arc<dyn EventLog>,
    batch: Vec<NewEvent>,
    next: u64,
) -> (Result<Vec<Appended>, gantry_events::Error>, Vec<Entry>) {
    if batch.is_empty() {
        return (Ok(Vec::new()), Vec::new());
    }
    let events = batch.len();
    let started = std::time::Instant::now();
    let appended = log.append(batch).await;
    metrics::histogram!("gantry_append_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("gantry_append_batch_events").record(events as f64);
    let end = match &appended {
        Ok(appended) => appended.first().map_or(next, |a| a.seq),
        Err(_) => u64::MAX,
    };
    let mut missing = Vec::new();
    let mut from = next;
    // Bounded: each read moves `from` forward or stops.
    while from < end {
        let entries = match log.read(from, 4096).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, from, "scheduler could not read back the log");
                break;
            }
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        missing.extend(entries.into_iter().filter(|e| e.seq < end));
        from = last + 1;
    }
    (appended, missing)
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(TICK, |act, ctx| act.place(ctx));
        ctx.run_interval(LEASE_TICK, |act, ctx| act.expire(ctx));
    }
}

/// Runs a placement round now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct PlaceNow;

impl Handler<PlaceNow> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: PlaceNow, ctx: &mut Context<Self>) {
        self.place(ctx);
    }
}

/// Submit a job.
#[derive(Debug, Message)]
#[rtype(result = "Result<SubmitReply, CommandError>")]
pub struct Submit {
    pub request: SubmitRequest,
    /// Who submits (`None`: without authentication).
    pub by: Option<Principal>,
    /// What the gateway resolved: secret variables (by name, see [`crate::secrets`]) and
    /// inputs.
    pub resolved: Resolved,
}

/// The job a submission created or found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    pub job_id: JobId,
    /// Sequence of the `job.submitted` event (of the earlier one, for an existing job: 0).
    pub seq: u64,
    /// True when the idempotency key matched an earlier submission.
    pub existing: bool,
}

impl Handler<Submit> for Scheduler {
    type Result = AtomicResponse<Self, Result<SubmitReply, CommandError>>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        match self
            .world
            .decide_submit(&msg.request, msg.by.as_ref(), &msg.resolved)
        {
            Ok(Submitted::New { job_id, events }) => self.commit(events, move |act| SubmitReply {
                job_id,
                seq: act.world.seq(),
                existing: false,
            }),
            Ok(Submitted::Existing(job_id)) => self.commit(Vec::new(), move |_| SubmitReply {
                job_id,
                seq: 0,
                existing: true,
            }),
            Err(refusal) => self.refuse(refusal),
        }
    }
}

/// Cancel a job.
#[derive(Debug, Message)]
#[rtype(result = "Result<(JobState, u64), CommandError>")]
pub struct Cancel {
    pub job_id: JobId,
    pub reason: Option<String>,
    /// The API key (its id) asking.
    pub by: Option<String>,
}

impl Handler<Cancel> for Scheduler {
    type Result = AtomicResponse<Self, Result<(JobState, u64), CommandError>>;

    fn handle(&mut self, msg: Cancel, _: &mut Context<Self>) -> Self::Result {
        let id = msg.job_id;
        match self.world.decide_cancel(id, msg.reason, msg.by) {
            Ok(events) => self.commit(events, move |act| {
                let state = act.world.job(&id).map_or(JobState::Cancelled, |j| j.state);
                (state, act.world.seq())
            }),
            Err(refusal) => self.refuse(refusal),
        }
    }
}

/// What a worker reports about an attempt. Serialisable: the same message crosses machines
/// in a fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    Started {
        handle: Option<String>,
        /// Whether the executor enforces the attempt's limits (`None`: not said).
        #[serde(default)]
        limits_enforced: Option<bool>,
        /// What runs, resolved (see `JobStarted::image`).
        #[serde(default)]
        image: Option<String>,
    },
    Succeeded {
        duration_ms: u64,
    },
    Failed {
        cause: FailureCause,
        duration_ms: Option<u64>,
    },
    /// One of the attempt's outputs is in the artifact store (before the attempt's end).
    Stored {
        name: String,
        location: String,
        sha256: gantry_events::Hash,
        size_bytes: u64,
        #[serde(default)]
        content_type: Option<String>,
    },
}

/// A worker's report. Idempotent by (job, attempt): the same report again is accepted and
/// records nothing, so a worker retries it until it is answered. `Ok` means the fact is in the
/// log; a refusal (a report for an attempt that is no longer current) is final.
#[derive(Debug, Clone, PartialEq, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), CommandError>")]
pub struct AttemptReport {
    /// The node reporting: reports are fenced by (node, attempt).
    pub node: String,
    pub job_id: JobId,
    pub attempt: u32,
    pub report: Report,
}

impl Handler<AttemptReport> for Scheduler {
    type Result = AtomicResponse<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: AttemptReport, _: &mut Context<Self>) -> Self::Result {
        let (id, attempt) = (msg.job_id, msg.attempt);
        if let Err(refusal) = self.world.check_reporter(id, attempt, &msg.node) {
            // Fenced: a late report from a node whose attempt was taken away (or a node naming
            // another's attempt). Logged and counted, never applied. A repeat of the current
            // attempt's own report passes this check and is answered idempotently below.
            self.stats.fenced += 1;
            tracing::warn!(job = %id, attempt, node = %msg.node, %refusal, "report fenced: not this node's current attempt");
            return self.refuse(refusal);
        }
        let decided = match msg.report {
            Report::Started {
                handle,
                limits_enforced,
                image,
            } => self
                .world
                .decide_started(id, attempt, handle, limits_enforced, image),
            Report::Succeeded { duration_ms } => {
                self.world.decide_succeeded(id, attempt, duration_ms)
            }
            Report::Failed { cause, duration_ms } => {
                self.world
                    .decide_failed(id, attempt, cause, duration_ms, now_ms())
            }
            Report::Stored {
                name,
                location,
                sha256,
                size_bytes,
                content_type,
            } => Ok(self.world.decide_stored(ArtifactStored {
                job_id: id,
                attempt,
                name,
                location,
                sha256,
                size_bytes,
                content_type,
            })),
        };
        match decided {
            Ok(events) => self.commit(events, |_| ()),
            Err(refusal) => {
                tracing::warn!(job = %id, attempt, %refusal, "worker report refused");
                self.refuse(refusal)
            }
        }
    }
}

/// Record a fact another actor observed: a node joined, its GPUs changed, it drained; an
/// audit checkpoint. The scheduler is the one appender, so its state never lags the log.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct Record(pub Event);

impl Handler<Record> for Scheduler {
    type Result = AtomicResponse<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: Record, _: &mut Context<Self>) -> Self::Result {
        self.commit(vec![msg.0], |_| ())
    }
}

/// The attempts live on a node, with what a worker needs to pick them up again.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Job>")]
pub struct LiveOn(pub String);

impl Handler<LiveOn> for Scheduler {
    type Result = MessageResult<LiveOn>;

    fn handle(&mut self, msg: LiveOn, _: &mut Context<Self>) -> Self::Result {
        let jobs = self
            .world
            .live_on(&msg.0)
            .into_iter()
            .filter_map(|(id, _, _)| self.world.job(&id).cloned())
            .collect();
        MessageResult(jobs)
    }
}

/// A job's current state.
#[derive(Debug, Message)]
#[rtype(result = "Option<Job>")]
pub struct GetJob(pub JobId);

impl Handler<GetJob> for Scheduler {
    type Result = MessageResult<GetJob>;

    fn handle(&mut self, msg: GetJob, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.world.job(&msg.0).cloned())
    }
}

/// Counters and the fleet as the scheduler sees it.
#[derive(Debug, Message)]
#[rtype(result = "(SchedulerStats, Vec<Node>)")]
pub struct Stats;

impl Handler<Stats> for Scheduler {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.stats, self.world.cluster().nodes().cloned().collect()))
    }
}

/// A node has been silent past the heartbeat timeout: record it lost and re-place what ran
/// there. Sent by the fleet's heartbeat tracker; harmless for a node already lost with nothing
/// left on it.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct NodeSilent {
    pub node: String,
    pub reason: String,
}

/// Attempts failed per `node.lost` append (each takes two events).
const LOST_PER_APPEND: usize = gantry_events::log::MAX_BATCH / 2 - 1;

impl Handler<NodeSilent> for Scheduler {
    type Result = AtomicResponse<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: NodeSilent, ctx: &mut Context<Self>) -> Self::Result {
        let loss = self
            .world
            .decide_node_lost(&msg.node, &msg.reason, now_ms(), LOST_PER_APPEND);
        if loss.events.is_empty() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(()))));
        }
        if loss.newly_lost {
            self.stats.lost_nodes += 1;
            tracing::warn!(node = %msg.node, reason = %msg.reason, "node lost; re-placing its attempts");
        }
        // More attempts than one append holds: the rest follow in the next message.
        if loss.more {
            ctx.notify(NodeSilent {
                node: msg.node.clone(),
                reason: msg.reason.clone(),
            });
        }
        self.commit(loss.events, |_| ())
    }
}

/// An operator's change to a node: cordon, uncordon or drain.
#[derive(Debug, Clone, PartialEq, Eq, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), CommandError>")]
pub struct NodeChange {
    pub node: String,
    pub status: NodeStatus,
    #[serde(default)]
    pub reason: String,
    /// The API key (its id) asking.
    #[serde(default)]
    pub by: Option<String>,
}

impl Handler<NodeChange> for Scheduler {
    type Result = AtomicResponse<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: NodeChange, _: &mut Context<Self>) -> Self::Result {
        match self
            .world
            .decide_node_status(&msg.node, msg.status, msg.reason, msg.by)
        {
            Ok(events) => self.commit(events, |_| ()),
            Err(refusal) => self.refuse(refusal),
        }
    }
}

/// A node asks for the secret values of an attempt: answered only for the attempt the log
/// has placed (or running) on that node.
#[derive(Debug, Message)]
#[rtype(result = "Result<SecretValues, CommandError>")]
pub struct ResolveSecrets {
    pub node: String,
    pub job_id: JobId,
    pub attempt: u32,
}

impl Handler<ResolveSecrets> for Scheduler {
    type Result = ResponseFuture<Result<SecretValues, CommandError>>;

    fn handle(&mut self, msg: ResolveSecrets, _: &mut Context<Self>) -> Self::Result {
        let refs = self
            .world
            .check_reporter(msg.job_id, msg.attempt, &msg.node)
            .map(|()| {
                self.world
                    .job(&msg.job_id)
                    .map(|j| j.spec.secrets.clone())
                    .unwrap_or_default()
            });
        let store = self.secrets.clone();
        Box::pin(async move {
            let refs = refs.map_err(CommandError::Refused)?;
            let mut values = SecretValues::new();
            if refs.is_empty() {
                return Ok(values);
            }
            let store = store.ok_or_else(|| {
                CommandError::Unavailable("this control plane has no secret store".into())
            })?;
            for (env, secret) in refs {
                let value = store
                    .get(&secret.name)
                    .await
                    .map_err(|e| CommandError::Unavailable(e.to_string()))?
                    .ok_or_else(|| {
                        CommandError::Refused(Refusal::SecretNotFound(secret.name.clone()))
                    })?;
                values.insert(env, value);
            }
            Ok(values)
        })
    }
}

/// A change to keys or secrets. Answers the sequence to wait for (0: nothing new).
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, CommandError>")]
pub struct ChangeAccess(pub AccessChange);

impl Handler<ChangeAccess> for Scheduler {
    type Result = AtomicResponse<Self, Result<u64, CommandError>>;

    fn handle(&mut self, msg: ChangeAccess, _: &mut Context<Self>) -> Self::Result {
        match self.world.decide_access(msg.0) {
            Ok(events) if events.is_empty() => self.commit(events, |_| 0),
            Ok(events) => self.commit(events, |act| act.world.seq()),
            Err(refusal) => self.refuse(refusal),
        }
    }
}

/// A pipeline command: submit (or only check, `dry_run`) or cancel. Serialisable: the same
/// command crosses machines in a fleet.
#[derive(Debug, Clone, PartialEq, Message, Serialize, Deserialize)]
#[rtype(result = "Result<PipelineReply, CommandError>")]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PipelineCommand {
    Submit {
        request: Box<PipelineRequest>,
        #[serde(default)]
        by: Option<Principal>,
        /// What the gateway resolved for each stage's job, in the request's order.
        resolved: Vec<Resolved>,
        #[serde(default)]
        dry_run: bool,
    },
    Cancel {
        pipeline_id: PipelineId,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        by: Option<String>,
    },
}

/// The answer to a pipeline command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineReply {
    pub pipeline_id: PipelineId,
    /// The sequence to wait for (0: nothing appended, a dry run or a repeated cancel).
    pub seq: u64,
    /// Submit: the checked stages, in the order they can run. Cancel: empty.
    #[serde(default)]
    pub stages: Vec<PipelineStage>,
}

impl Handler<PipelineCommand> for Scheduler {
    type Result = AtomicResponse<Self, Result<PipelineReply, CommandError>>;

    fn handle(&mut self, msg: PipelineCommand, _: &mut Context<Self>) -> Self::Result {
        match msg {
            PipelineCommand::Submit {
                request,
                by,
                resolved,
                dry_run,
            } => match self
                .world
                .decide_pipeline(&request, by.as_ref(), &resolved, dry_run)
            {
                Ok((pipeline_id, stages, events)) => {
                    let appends = !events.is_empty();
                    self.commit(events, move |act| PipelineReply {
                        pipeline_id,
                        seq: if appends { act.world.seq() } else { 0 },
                        stages,
                    })
                }
                Err(refusal) => self.refuse(refusal),
            },
            PipelineCommand::Cancel {
                pipeline_id,
                reason,
                by,
            } => match self.world.decide_cancel_pipeline(pipeline_id, reason, by) {
                Ok(events) => {
                    let appends = !events.is_empty();
                    self.commit(events, move |act| PipelineReply {
                        pipeline_id,
                        seq: if appends { act.world.seq() } else { 0 },
                        stages: Vec::new(),
                    })
                }
                Err(refusal) => self.refuse(refusal),
            },
        }
    }
}

/// Retention deleted (or is about to delete) these outputs' bytes. Answers the sequence to
/// wait for (0: nothing new to record).
#[derive(Debug, Clone, PartialEq, Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, CommandError>")]
pub struct Prune(pub Vec<ArtifactPruned>);

impl Handler<Prune> for Scheduler {
    type Result = AtomicResponse<Self, Result<u64, CommandError>>;

    fn handle(&mut self, msg: Prune, _: &mut Context<Self>) -> Self::Result {
        let events = self.world.decide_pruned(msg.0);
        if events.is_empty() {
            return self.commit(events, |_| 0);
        }
        self.commit(events, |act| act.world.seq())
    }
}

/// Stops the scheduler (a control plane that no longer leads).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

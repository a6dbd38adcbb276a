//! The Scheduler: the one decider for jobs and nodes. Commands (submit, cancel, worker
//! reports, node changes) arrive as messages; each is decided by [`World`] on the state every
//! earlier decision left, and answered once its events are in the log. Decisions made while an
//! append is in flight are appended together in the next one (group commit: one append, one
//! fsync for many commands). A timer runs placement rounds. An append that fails makes the
//! scheduler rebuild its state from the log before it decides anything else.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::{
    ArtifactPruned, ArtifactStored, FailureCause, JobId, PipelineId, PipelineStage,
};
use gantry_events::{Appended, Event, EventLog, NewEvent, Source, record::now_ns};
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState};
use crate::pipeline::PipelineRequest;
use crate::placement::{Node, NodeStatus};
use crate::secrets::{SecretStore, SecretValues};
use crate::snapshot::{Snapshot, SnapshotFile};
use crate::spec::{Limits, Resolved, SubmitRequest};
use crate::world::{AccessChange, Principal, Refusal, Submitted, World, stamp};

/// How often placement runs when nothing else wakes it.
const TICK: Duration = Duration::from_millis(50);
/// How often placement leases are checked.
const LEASE_TICK: Duration = Duration::from_secs(1);
/// Most placements appended per round.
const ROUND_MAX: usize = 1000;
/// How often the scheduler looks whether a snapshot is due.
const SNAPSHOT_TICK: Duration = Duration::from_secs(5);

/// A command that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Decided against: invalid, unknown job, wrong state (400/404/409).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The log would not take the events (too large: 413; otherwise 503). Nothing of them
    /// was applied; the caller may try again.
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
    /// The last sequence known to be in the log; `world` may be ahead of it by what is
    /// decided and queued or being appended.
    durable_seq: u64,
    /// Commands' events decided and applied, waiting for the next append (one entry per
    /// command: never split).
    pending: Vec<Vec<NewEvent>>,
    /// Callers waiting for the log to reach a sequence, in order.
    waiters: std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<Result<(), String>>)>,
    /// Whether an append is in flight.
    appending: bool,
    /// Where the state is saved, and when.
    snapshots: Option<Snapshots>,
    /// Why appends are stopped (the Auditor found the chain broken), if they are.
    halted: Option<String>,
    /// Why appends wait (the Auditor has not yet checked the log against the checkpoint
    /// published outside it), if they do.
    held: Option<String>,
}

/// Where and how often the scheduler saves its state (see [`crate::snapshot`]).
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub file: SnapshotFile,
    /// A snapshot is taken once the log has grown this many events past the last one.
    pub every_events: u64,
}

#[derive(Debug)]
struct Snapshots {
    options: SnapshotOptions,
    /// The sequence the last snapshot covers (loaded or taken).
    taken_seq: u64,
    /// Whether one is being written.
    writing: bool,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Scheduler {
    /// Rebuilds the scheduler's state: from the snapshot and the log after it when a snapshot
    /// matching the log is kept, else from the whole log.
    pub async fn rebuild(
        log: Arc<dyn EventLog>,
        limits: Limits,
        source: Source,
        snapshots: Option<SnapshotOptions>,
    ) -> Result<Scheduler, gantry_events::Error> {
        let started = std::time::Instant::now();
        let (world, loaded) =
            replay(log.clone(), limits, snapshots.as_ref().map(|s| &s.file)).await?;
        tracing::info!(
            seq = world.seq(),
            jobs = world.jobs().count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scheduler rebuilt from the log"
        );
        let snapshots = snapshots.map(|options| Snapshots {
            options,
            // What a start loaded is not written again; one taken after it covers more.
            taken_seq: loaded,
            writing: false,
        });
        Ok(Scheduler {
            snapshots,
            halted: None,
            held: None,
            log,
            secrets: None,
            durable_seq: world.seq(),
            world,
            pending: Vec::new(),
            waiters: std::collections::VecDeque::new(),
            appending: false,
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

    /// Decides → records → answers, with group commit: `events` (one command's facts) are
    /// applied at once to the scheduler's state at the sequences they will have, so the next
    /// command is decided on top of them, and queued to be appended; every command that arrives
    /// while an append is in flight joins the next one, so many commands share one append and
    /// one fsync. `reply(self)` is computed now and answered only once the events are in the
    /// log. One command's events are never split across appends. If an append fails (or the log
    /// holds something else at those sequences), every command not yet recorded is answered
    /// with the error and the state is rebuilt from the log: nothing decided is trusted until
    /// it is durable.
    fn commit<R: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        events: Vec<Event>,
        reply: impl FnOnce(&mut Scheduler) -> R + 'static,
    ) -> ResponseActFuture<Self, Result<R, CommandError>> {
        self.stats.commands += 1;
        if let Some(why) = &self.halted {
            return Box::pin(fut::ready(Err(CommandError::Unavailable(format!(
                "appends stopped: {why}; an operator must repair the log (`gantry log verify` names the entry) and restart gantry"
            )))));
        }
        if let Some(why) = &self.held {
            return Box::pin(fut::ready(Err(CommandError::Unavailable(format!(
                "appends held: {why}; try again shortly"
            )))));
        }
        let batch = stamp(events, &self.source);
        if let Err(error) = fits(&batch) {
            return Box::pin(fut::ready(Err(CommandError::Log(error))));
        }
        let done = self.decided(ctx, batch);
        let answer = reply(self);
        Box::pin(
            async move {
                match done.await {
                    Ok(Ok(())) => Ok(answer),
                    Ok(Err(message)) => Err(CommandError::Unavailable(message)),
                    Err(_) => Err(CommandError::Unavailable("the scheduler stopped".into())),
                }
            }
            .into_actor(self),
        )
    }

    /// Answers `read(self)` once everything decided so far is in the log (or, when an append
    /// failed, once the state is rebuilt from the log): a query never shows a decision that is
    /// not durable.
    fn durable_read<R: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        read: impl FnOnce(&mut Scheduler) -> R + 'static,
    ) -> ResponseActFuture<Self, R> {
        let recorded = self.decided(ctx, Vec::new());
        Box::pin(
            async move {
                let _ = recorded.await;
            }
            .into_actor(self)
            .map(move |(), act, _| read(act)),
        )
    }

    /// Applies `batch` at the sequences it will have and queues it for the next append;
    /// resolves once everything decided so far is in the log.
    fn decided(
        &mut self,
        ctx: &mut Context<Self>,
        batch: Vec<NewEvent>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        if !batch.is_empty() {
            let first = self.world.seq() + 1;
            let seqs: Vec<u64> = (first..first + batch.len() as u64).collect();
            self.apply_appended(&batch, &seqs);
            self.pending.push(batch);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let upto = self.world.seq();
        if upto <= self.durable_seq {
            let _ = tx.send(Ok(()));
        } else {
            self.waiters.push_back((upto, tx));
            if !self.appending {
                self.flush(ctx);
            }
        }
        rx
    }

    /// Appends what is queued (whole commands, at most one log batch), then answers those it
    /// recorded and goes on with what queued meanwhile.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let (mut events, mut taken) = (0, 0);
        for command in &self.pending {
            if events > 0 && events + command.len() > gantry_events::log::MAX_BATCH {
                break;
            }
            events += command.len();
            taken += 1;
        }
        if events == 0 {
            self.appending = false;
            return;
        }
        let batch: Vec<NewEvent> = self.pending.drain(..taken).flatten().collect();
        self.appending = true;
        let next = self.durable_seq + 1;
        let count = batch.len() as u64;
        let log = self.log.clone();
        ctx.spawn(append_timed(log, batch).into_actor(self).map(
            move |appended, act, ctx| {
                let landed = appended.as_ref().is_ok_and(|a| {
                    a.len() as u64 == count && a.first().map(|a| a.seq) == Some(next)
                });
                if landed {
                    act.durable_seq = next + count - 1;
                    while act
                        .waiters
                        .front()
                        .is_some_and(|(upto, _)| *upto <= act.durable_seq)
                    {
                        if let Some((_, tx)) = act.waiters.pop_front() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    // A new job or freed capacity: place now rather than at the next tick.
                    ctx.notify(PlaceNow);
                    act.flush(ctx);
                    return;
                }
                let error = match appended {
                    Err(error) => error.to_string(),
                    Ok(_) => "the log holds entries this scheduler did not append at the \
                              sequences it decided for"
                        .to_owned(),
                };
                tracing::error!(%error, "decisions not recorded; rebuilding the scheduler's state from the log");
                let message = format!("not recorded: {error}; try again");
                act.pending.clear();
                for (_, tx) in act.waiters.drain(..) {
                    let _ = tx.send(Err(message.clone()));
                }
                act.resync(ctx);
            },
        ));
    }

    /// Rebuilds the state from the log after decisions that were applied were not recorded
    /// as decided. No message is handled until it is done.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        let limits = self.world.limits().clone();
        let file = self.snapshots.as_ref().map(|s| s.options.file.clone());
        let replayed = async move {
            loop {
                match replay(log.clone(), limits.clone(), file.as_ref()).await {
                    Ok((world, _)) => return world,
                    // A log that cannot be read for a moment (a JetStream leader election):
                    // try again; nothing is decided until the state is the log's.
                    Err(error) => {
                        tracing::warn!(%error, "the scheduler cannot read its log back yet; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        };
        ctx.wait(replayed.into_actor(self).map(|world, act, _| {
            act.world = world;
            act.durable_seq = act.world.seq();
            act.stats.applied_seq = act.world.seq();
            act.stats.queued = act.world.queues().len();
            act.appending = false;
        }));
    }

    /// Saves the state when the log has grown enough since the last snapshot, and only a
    /// durable state (nothing decided waits for an append). The state is encoded here, on the
    /// scheduler's own thread (a consistent picture); the file is written in the background.
    fn snapshot(&mut self, ctx: &mut Context<Self>) {
        let seq = self.world.seq();
        let Some(snapshots) = &mut self.snapshots else {
            return;
        };
        if snapshots.writing
            || self.appending
            || !self.pending.is_empty()
            || seq != self.durable_seq
            || seq < snapshots.taken_seq + snapshots.options.every_events
        {
            return;
        }
        let started = std::time::Instant::now();
        let body = match self.world.to_snapshot() {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "the scheduler's state could not be encoded for a snapshot");
                return;
            }
        };
        let encoded_ms = started.elapsed().as_millis() as u64;
        snapshots.writing = true;
        let file = snapshots.options.file.clone();
        let log = self.log.clone();
        let bytes = body.len();
        let write = async move {
            let entry = log.read(seq, 1).await.map_err(|e| e.to_string())?;
            let hash = entry
                .first()
                .filter(|e| e.seq == seq)
                .and_then(|e| e.stored_hash().ok())
                .ok_or_else(|| format!("the log has no entry {seq}"))?;
            let snapshot = Snapshot { seq, hash, body };
            tokio::task::spawn_blocking(move || file.store(&snapshot))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        };
        ctx.spawn(write.into_actor(self).map(move |written, act, _| {
            let Some(snapshots) = &mut act.snapshots else {
                return;
            };
            snapshots.writing = false;
            match written {
                Ok(()) => {
                    snapshots.taken_seq = seq;
                    tracing::info!(seq, bytes, encoded_ms, "scheduler snapshot taken");
                }
                Err(error) => tracing::warn!(seq, %error, "scheduler snapshot not written"),
            }
        }));
    }

    fn refuse<R: 'static>(
        &mut self,
        refusal: Refusal,
    ) -> ResponseActFuture<Self, Result<R, CommandError>> {
        self.stats.refused += 1;
        Box::pin(fut::ready(Err(CommandError::Refused(refusal))))
    }

    fn place(&mut self, ctx: &mut Context<Self>) {
        // Pipeline stages whose dependencies ended start (or are skipped) first; the jobs
        // they submit are placed by the next round.
        let stages = self.world.decide_pipelines();
        if !stages.is_empty() {
            self.append_decided(stages, ctx, |act| act.stats.commands += 1);
        }
        let events = self.world.decide_placements(now_ms(), ROUND_MAX);
        // Placements, not the waiting reasons recorded beside them.
        let count = events
            .iter()
            .filter(|e| e.type_name() == "job.placed")
            .count() as u64;
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

    /// Queues events the scheduler decided on its own (a timer, not a command), like a
    /// command's; `done` runs once they are recorded.
    fn append_decided(
        &mut self,
        events: Vec<Event>,
        ctx: &mut Context<Self>,
        done: impl FnOnce(&mut Scheduler) + 'static,
    ) {
        if events.is_empty() || self.halted.is_some() || self.held.is_some() {
            return;
        }
        let batch = stamp(events, &self.source);
        if let Err(error) = fits(&batch) {
            tracing::error!(%error, "decisions too large to record");
            self.world.forget_explanations();
            return;
        }
        let recorded = self.decided(ctx, batch);
        ctx.spawn(
            async move { matches!(recorded.await, Ok(Ok(()))) }
                .into_actor(self)
                .map(move |recorded, act, _| {
                    if recorded {
                        done(act);
                    }
                }),
        );
    }
}

/// Refuses a batch the log would refuse (too many events, an entry too large) before it is
/// applied or shares an append with other commands.
fn fits(batch: &[NewEvent]) -> Result<(), gantry_events::Error> {
    gantry_events::log::check_batch(batch)?;
    let mut scratch = Vec::new();
    for event in batch {
        scratch.clear();
        // The longest sequence number: the size is an upper bound of the sealed entry's.
        gantry_events::record::seal_into(
            &mut scratch,
            u64::MAX,
            &gantry_events::Hash::GENESIS,
            event,
        )
        .map_err(gantry_events::Error::Encode)?;
        if scratch.len() > gantry_events::log::MAX_ENTRY_BYTES {
            return Err(gantry_events::Error::EntryTooLarge {
                type_name: event.event.type_name(),
                size: scratch.len(),
                max: gantry_events::log::MAX_ENTRY_BYTES,
            });
        }
    }
    Ok(())
}

/// The state the log gives: the snapshot's, when one is kept and the log holds the entry it
/// was taken after, with the log after it applied; else the whole log folded. A snapshot that
/// does not match is reported and ignored, never trusted. Also returns the sequence of the
/// snapshot used (0: none).
async fn replay(
    log: Arc<dyn EventLog>,
    limits: Limits,
    snapshot: Option<&SnapshotFile>,
) -> Result<(World, u64), gantry_events::Error> {
    let mut world = match snapshot {
        Some(file) => from_snapshot(log.as_ref(), file, &limits)
            .await
            .unwrap_or_else(|| World::new(limits)),
        None => World::new(limits),
    };
    let loaded = world.seq();
    let mut next = world.seq() + 1;
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
    Ok((world, loaded))
}

/// The state of the snapshot in `file`, if there is one and it matches the log.
async fn from_snapshot(log: &dyn EventLog, file: &SnapshotFile, limits: &Limits) -> Option<World> {
    let path = file.path().display().to_string();
    let loaded = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || file.load()).await
    };
    let snapshot = match loaded {
        Ok(Ok(Some(snapshot))) => snapshot,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            tracing::warn!(%path, %error, "scheduler snapshot ignored; rebuilding from the whole log");
            return None;
        }
        Err(error) => {
            tracing::warn!(%path, %error, "scheduler snapshot not read; rebuilding from the whole log");
            return None;
        }
    };
    if let Err(reason) = snapshot.check_against(log).await {
        tracing::warn!(%path, seq = snapshot.seq, %reason, "scheduler snapshot does not match the log; rebuilding from the whole log");
        return None;
    }
    match World::from_snapshot(&snapshot.body, limits.clone()) {
        Ok(world) if world.seq() == snapshot.seq => {
            tracing::info!(%path, seq = snapshot.seq, "scheduler state loaded from its snapshot");
            Some(world)
        }
        Ok(world) => {
            tracing::warn!(%path, seq = snapshot.seq, state_seq = world.seq(), "scheduler snapshot holds another state than its header says; rebuilding from the whole log");
            None
        }
        Err(error) => {
            tracing::warn!(%path, %error, "scheduler snapshot ignored; rebuilding from the whole log");
            None
        }
    }
}

/// Appends `batch`, timed for the metrics.
async fn append_timed(
    log: Arc<dyn EventLog>,
    batch: Vec<NewEvent>,
) -> Result<Vec<Appended>, gantry_events::Error> {
    let events = batch.len();
    let started = std::time::Instant::now();
    let appended = log.append(batch).await;
    metrics::histogram!("gantry_append_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("gantry_append_batch_events").record(events as f64);
    appended
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
        ctx.run_interval(SNAPSHOT_TICK, |act, ctx| act.snapshot(ctx));
    }
}

/// Stops every append: the chain is broken (sent by the Auditor). Only a restart lifts it,
/// and the Auditor checks the chain again then.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Halt(pub String);

impl Handler<Halt> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Halt, _: &mut Context<Self>) {
        if self.halted.is_none() {
            tracing::error!(reason = %msg.0, "scheduler: appends stopped");
            self.halted = Some(msg.0);
        }
    }
}

/// Holds appends until the Auditor has checked the log against the checkpoint published
/// outside it (`Some(why)`), or lets them go again (`None`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Hold(pub Option<String>);

impl Handler<Hold> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Hold, _: &mut Context<Self>) {
        match (&self.held, &msg.0) {
            (None, Some(why)) => tracing::warn!(reason = %why, "scheduler: appends held"),
            (Some(_), None) => tracing::info!("scheduler: appends go on"),
            _ => {}
        }
        self.held = msg.0;
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
    type Result = ResponseActFuture<Self, Result<SubmitReply, CommandError>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        match self
            .world
            .decide_submit(&msg.request, msg.by.as_ref(), &msg.resolved)
        {
            Ok(Submitted::New { job_id, events }) => {
                self.commit(ctx, events, move |act| SubmitReply {
                    job_id,
                    seq: act.world.seq(),
                    existing: false,
                })
            }
            Ok(Submitted::Existing(job_id)) => self.commit(ctx, Vec::new(), move |_| SubmitReply {
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
    type Result = ResponseActFuture<Self, Result<(JobState, u64), CommandError>>;

    fn handle(&mut self, msg: Cancel, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.job_id;
        match self.world.decide_cancel(id, msg.reason, msg.by) {
            Ok(events) => self.commit(ctx, events, move |act| {
                let state = act.world.state_of(&id).unwrap_or(JobState::Cancelled);
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
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: AttemptReport, ctx: &mut Context<Self>) -> Self::Result {
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
            Ok(events) => self.commit(ctx, events, |_| ()),
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
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) -> Self::Result {
        self.commit(ctx, vec![msg.0], |_| ())
    }
}

/// The attempts live on a node, with what a worker needs to pick them up again.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Job>")]
pub struct LiveOn(pub String);

impl Handler<LiveOn> for Scheduler {
    type Result = ResponseActFuture<Self, Vec<Job>>;

    fn handle(&mut self, msg: LiveOn, ctx: &mut Context<Self>) -> Self::Result {
        self.durable_read(ctx, move |act| {
            act.world
                .live_on(&msg.0)
                .into_iter()
                .filter_map(|(id, _, _)| act.world.job(&id).cloned())
                .collect()
        })
    }
}

/// A job's current state.
#[derive(Debug, Message)]
#[rtype(result = "Option<Job>")]
pub struct GetJob(pub JobId);

impl Handler<GetJob> for Scheduler {
    type Result = ResponseActFuture<Self, Option<Job>>;

    fn handle(&mut self, msg: GetJob, ctx: &mut Context<Self>) -> Self::Result {
        self.durable_read(ctx, move |act| act.world.job(&msg.0).cloned())
    }
}

/// Counters and the fleet as the scheduler sees it.
#[derive(Debug, Message)]
#[rtype(result = "(SchedulerStats, Vec<Node>)")]
pub struct Stats;

impl Handler<Stats> for Scheduler {
    type Result = ResponseActFuture<Self, (SchedulerStats, Vec<Node>)>;

    fn handle(&mut self, _: Stats, ctx: &mut Context<Self>) -> Self::Result {
        self.durable_read(ctx, |act| {
            (act.stats, act.world.cluster().nodes().cloned().collect())
        })
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
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: NodeSilent, ctx: &mut Context<Self>) -> Self::Result {
        let loss = self
            .world
            .decide_node_lost(&msg.node, &msg.reason, now_ms(), LOST_PER_APPEND);
        if loss.events.is_empty() {
            return Box::pin(fut::ready(Ok(())));
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
        self.commit(ctx, loss.events, |_| ())
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
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: NodeChange, ctx: &mut Context<Self>) -> Self::Result {
        match self
            .world
            .decide_node_status(&msg.node, msg.status, msg.reason, msg.by)
        {
            Ok(events) => self.commit(ctx, events, |_| ()),
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
    type Result = ResponseActFuture<Self, Result<u64, CommandError>>;

    fn handle(&mut self, msg: ChangeAccess, ctx: &mut Context<Self>) -> Self::Result {
        match self.world.decide_access(msg.0) {
            Ok(events) if events.is_empty() => self.commit(ctx, events, |_| 0),
            Ok(events) => self.commit(ctx, events, |act| act.world.seq()),
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
    type Result = ResponseActFuture<Self, Result<PipelineReply, CommandError>>;

    fn handle(&mut self, msg: PipelineCommand, ctx: &mut Context<Self>) -> Self::Result {
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
                    self.commit(ctx, events, move |act| PipelineReply {
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
                    self.commit(ctx, events, move |act| PipelineReply {
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
    type Result = ResponseActFuture<Self, Result<u64, CommandError>>;

    fn handle(&mut self, msg: Prune, ctx: &mut Context<Self>) -> Self::Result {
        let events = self.world.decide_pruned(msg.0);
        if events.is_empty() {
            return self.commit(ctx, events, |_| 0);
        }
        self.commit(ctx, events, |act| act.world.seq())
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

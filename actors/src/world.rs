//! Everything the scheduler knows, folded from the log: jobs, the queues and the fleet.
//!
//! `apply` takes events that are already in the log; the `decide_*` methods look at the
//! current state and return the events a command would append, or a rejection. The scheduler
//! actor appends what `decide_*` returns and only then applies it.

use std::collections::{HashMap, HashSet, VecDeque};

use gantry_events::event::{
    ArtifactEvent, ArtifactPruned, ArtifactStored, FailureCause, JobEvent, JobId, JobSubmitted,
    JobWaiting, KeyCreated, KeyEvent, KeyRevoked, NodeEvent, PendingReason, PipelineEvent,
    PipelineId, PipelineStage, PipelineSubmitted, SecretDeleted, SecretSet, WebhookCreated,
    WebhookDeleted, WebhookEvent,
};
use gantry_events::{Event, NewEvent, Source};
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState, Jobs, Rejection};
use crate::pipeline::{PipelineRequest, Pipelines, validate_pipeline};
use crate::placement::{Cluster, NodeStatus, Queues};
use crate::spec::{
    Invalid, Limits, Resolved, SubmitRequest, attach_inputs, attach_secrets, validate,
};

/// Why a command produced no events.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The submission is invalid; 400 with the field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such job; 404.
    #[error("no job {0}")]
    UnknownJob(JobId),
    /// The job's state does not allow it; 409.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// No such node; 404.
    #[error("no node {0}")]
    UnknownNode(String),
    /// The idempotency key names an earlier job with a different spec; 409.
    #[error("idempotency key {key:?} was used for a different job")]
    IdempotencyConflict { key: String },
    /// The submission asked to be refused if no node could ever run it, and none could; 422
    /// with the reason.
    #[error("unschedulable: {}", .0.message)]
    Unschedulable(PendingReason),
    /// No such API key; 404.
    #[error("no key {0}")]
    UnknownKey(String),
    /// A job's secret is not in the store (deleted since it was submitted); 404.
    #[error("secret {0} is not stored")]
    SecretNotFound(String),
    /// No such webhook; 404.
    #[error("no webhook {0}")]
    UnknownWebhook(String),
    /// The pipeline is not running (every stage has ended, or there is no such pipeline);
    /// 409.
    #[error("pipeline {0} is not running")]
    PipelineEnded(PipelineId),
}

/// How long an idempotency key is remembered, counted in log time from its job's submission:
/// within it, the same key (in the same group) answers the same job; after it, the key may
/// start a new job. Bounds the memory the keys take.
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

/// The group of jobs submitted without one (no authentication).
pub const DEFAULT_GROUP: &str = "default";

/// Who asked: the API key's id (never the key) and the group it acts in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub key_id: String,
    pub group: String,
}

/// A change to who may do what: API keys (by admins) and stored secrets (by operators),
/// decided by [`World::decide_access`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccessChange {
    Create(KeyCreated),
    Revoke(KeyRevoked),
    SecretSet(SecretSet),
    SecretDeleted(SecretDeleted),
    WebhookCreate(WebhookCreated),
    WebhookDelete(WebhookDeleted),
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job; append these events.
    New { job_id: JobId, events: Vec<Event> },
    /// The idempotency key was seen before: this is that job, nothing to append.
    Existing(JobId),
}

/// What a node going silent decides.
#[derive(Debug, Default)]
pub struct NodeLoss {
    /// `node.lost` (when the node was not lost yet) and its attempts' failures.
    pub events: Vec<Event>,
    /// The node was not lost before.
    pub newly_lost: bool,
    /// More attempts are live there than one call takes.
    pub more: bool,
}

/// Scheduler state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct World {
    jobs: Jobs,
    /// Sequence of each job's submission: FIFO order within a priority.
    submitted_at: HashMap<JobId, u64>,
    /// Idempotency keys by group, with their job and its submission time (log time, ms).
    idempotency: HashMap<(String, String), (JobId, u64)>,
    /// The same keys in submission order, to forget them after the retention.
    idempotency_order: VecDeque<(u64, (String, String))>,
    /// API keys ever created, and whether each is revoked.
    keys: HashMap<String, bool>,
    /// Webhooks ever created, and whether each is deleted.
    webhooks: HashMap<String, bool>,
    /// Artifacts recorded, by (job, attempt, name): a repeated report records nothing new.
    stored: HashSet<(JobId, u32, String)>,
    /// Artifacts whose bytes retention deleted: pruned once.
    pruned: HashSet<(JobId, u32, String)>,
    cluster: Cluster,
    queues: Queues,
    /// Pipelines with stages still to start or running.
    pipelines: Pipelines,
    /// Jobs whose current attempt is placed and not yet started: the ones a lease can expire.
    placed: HashSet<JobId>,
    /// The fleet generation each waiting job's reason was last worked out for (a cache of the
    /// scheduler's, not state from the log).
    #[serde(skip)]
    explained: HashMap<JobId, u64>,
    /// The fleet generation the queue's parked (unschedulable) jobs were parked at.
    parked_generation: Option<u64>,
    /// Last sequence applied.
    seq: u64,
    /// Settings, not state: given again when a snapshot is loaded.
    #[serde(skip)]
    limits: Limits,
}

impl World {
    pub fn new(limits: Limits) -> World {
        World {
            limits,
            ..World::default()
        }
    }

    /// The state as bytes for a snapshot (see [`crate::snapshot`]): everything folded from
    /// the log, without the settings and caches.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, crate::snapshot::Error> {
        rmp_serde::to_vec_named(self).map_err(|e| crate::snapshot::Error::Encode(e.to_string()))
    }

    /// The state a snapshot holds, with these settings.
    pub fn from_snapshot(body: &[u8], limits: Limits) -> Result<World, crate::snapshot::Error> {
        let mut world: World = rmp_serde::from_slice(body)
            .map_err(|e| crate::snapshot::Error::Decode(e.to_string()))?;
        world.limits = limits;
        Ok(world)
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What submissions are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A live job (an ended one is kept only as its final state, see [`World::state_of`]).
    pub fn job(&self, id: &JobId) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// Any known job's state, ended ones included.
    pub fn state_of(&self, id: &JobId) -> Option<JobState> {
        self.jobs.state(id)
    }

    /// The live jobs.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.live()
    }

    /// How many ended jobs are remembered (as their final state only).
    pub fn ended_jobs(&self) -> usize {
        self.jobs.ended_count()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// Folds one logged event in, with the time the log recorded it (Unix ms). Events at or
    /// below the last applied sequence are ignored, so replaying is harmless.
    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        if seq != 0 && seq <= self.seq {
            return;
        }
        self.seq = self.seq.max(seq);
        match event {
            Event::Job(e) => self.apply_job(seq, time_ms, e),
            Event::Node(e) => match e {
                NodeEvent::Joined(j) => self.cluster.join(
                    &j.node_id,
                    &j.executor,
                    j.cpu_millis,
                    j.memory_bytes,
                    j.gpus.clone(),
                ),
                NodeEvent::GpusObserved(g) => self.cluster.observe_gpus(&g.node_id, g.gpus.clone()),
                NodeEvent::Lost(l) => self.cluster.set_status(&l.node_id, NodeStatus::Lost),
                NodeEvent::Drained(d) => self.cluster.set_status(&d.node_id, NodeStatus::Draining),
                NodeEvent::Cordoned(c) => self.cluster.set_status(&c.node_id, NodeStatus::Cordoned),
                NodeEvent::Uncordoned(u) => self.cluster.set_status(&u.node_id, NodeStatus::Ready),
            },
            Event::Key(KeyEvent::Created(k)) => {
                self.keys.insert(k.key_id.clone(), false);
            }
            Event::Key(KeyEvent::Revoked(k)) => {
                self.keys.insert(k.key_id.clone(), true);
            }
            Event::Artifact(ArtifactEvent::Stored(a)) => {
                self.stored.insert((a.job_id, a.attempt, a.name.clone()));
                self.pipelines.apply_stored(a);
            }
            Event::Pipeline(PipelineEvent::Submitted(p)) => self.pipelines.apply_submitted(p),
            Event::Pipeline(PipelineEvent::StageSkipped(s)) => {
                self.pipelines.apply_skipped(s, &self.jobs)
            }
            Event::Pipeline(PipelineEvent::Cancelled(c)) => {
                self.pipelines.apply_cancelled(c, &self.jobs)
            }
            Event::Artifact(ArtifactEvent::Pruned(p)) => {
                self.pruned.insert((p.job_id, p.attempt, p.name.clone()));
            }
            Event::Webhook(WebhookEvent::Created(w)) => {
                self.webhooks.insert(w.webhook_id.clone(), false);
            }
            Event::Webhook(WebhookEvent::Deleted(w)) => {
                self.webhooks.insert(w.webhook_id.clone(), true);
            }
            Event::Audit(_) | Event::Secret(_) => {}
        }
    }

    /// Retention deleted stored outputs of ended jobs: each recorded once, and only for an
    /// output the log has stored of a job that has ended.
    pub fn decide_pruned(&self, pruned: Vec<ArtifactPruned>) -> Vec<Event> {
        let mut seen = HashSet::new();
        pruned
            .into_iter()
            .filter(|p| {
                let key = (p.job_id, p.attempt, p.name.clone());
                self.stored.contains(&key)
                    && !self.pruned.contains(&key)
                    && self
                        .jobs
                        .state(&p.job_id)
                        .is_some_and(JobState::is_terminal)
                    && seen.insert(key)
            })
            .map(Event::from)
            .collect()
    }

    /// An output of a live attempt was stored: recorded once per (job, attempt, name).
    pub fn decide_stored(&self, stored: ArtifactStored) -> Vec<Event> {
        let key = (stored.job_id, stored.attempt, stored.name.clone());
        if self.stored.contains(&key) {
            return Vec::new();
        }
        vec![stored.into()]
    }

    fn apply_job(&mut self, seq: u64, time_ms: u64, event: &JobEvent) {
        if let JobEvent::Submitted(s) = event {
            let job = Job::submitted(s);
            self.queues
                .push(job.id, &job.spec.queue, job.spec.priority, seq);
            if let Some(key) = &job.spec.idempotency_key {
                let scoped = (job.group().to_owned(), key.clone());
                self.idempotency.insert(scoped.clone(), (job.id, time_ms));
                self.idempotency_order.push_back((time_ms, scoped));
            }
            self.forget_idempotency_keys(time_ms);
            self.submitted_at.insert(job.id, seq);
            self.jobs.insert(job);
            self.pipelines.apply_job_submitted(s);
            return;
        }
        let id = event.job_id();
        let Some(job) = self.jobs.get_mut(&id) else {
            // Nothing moves an ended job; only an unknown one is worth a word.
            if self.jobs.ended(&id).is_none() {
                tracing::warn!(job = %id, seq, "event for a job never submitted");
            }
            return;
        };
        job.apply_at(event, time_ms);
        if job.state == JobState::Placed {
            self.placed.insert(id);
        } else {
            self.placed.remove(&id);
        }
        match event {
            JobEvent::Placed(p) => {
                self.queues.remove(id);
                self.cluster
                    .reserve(id, &p.node_id, &job.spec.resources, &p.gpu_uuids);
                self.cluster.saw_image(&p.node_id, &job.spec.image);
            }
            JobEvent::RetryScheduled(_) => {
                let order = self.submitted_at.get(&id).copied().unwrap_or(seq);
                self.queues
                    .push(id, &job.spec.queue, job.spec.priority, order);
            }
            JobEvent::Failed(_) => self.cluster.release(id),
            JobEvent::Succeeded(_) | JobEvent::Cancelled(_) | JobEvent::DeadLettered(_) => {
                self.cluster.release(id);
                self.queues.remove(id);
                self.explained.remove(&id);
            }
            JobEvent::Submitted(_)
            | JobEvent::Started(_)
            | JobEvent::CancelRequested(_)
            | JobEvent::Waiting(_) => {}
        }
        if job.state.is_terminal() {
            // Only its final state is kept from now on.
            self.jobs.end(&id);
            self.submitted_at.remove(&id);
            self.placed.remove(&id);
            self.pipelines.job_ended(id, &self.jobs);
        }
    }

    /// Forgets idempotency keys older than the retention before `now_ms` (log time).
    fn forget_idempotency_keys(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(IDEMPOTENCY_RETENTION_MS);
        while let Some((at, _)) = self.idempotency_order.front() {
            if *at >= horizon {
                break;
            }
            let Some((at, scoped)) = self.idempotency_order.pop_front() else {
                break;
            };
            // A later job may have taken the key again: forget only this one.
            if self.idempotency.get(&scoped).is_some_and(|(_, t)| *t == at) {
                self.idempotency.remove(&scoped);
            }
        }
    }

    /// A submission: validated, deduplicated by idempotency key within the submitter's group,
    /// recorded with who submitted it.
    pub fn decide_submit(
        &self,
        request: &SubmitRequest,
        by: Option<&Principal>,
        resolved: &Resolved,
    ) -> Result<Submitted, Refusal> {
        let mut spec = validate(request, &self.limits)?;
        let group = by.map_or(DEFAULT_GROUP, |p| p.group.as_str());
        attach_secrets(&mut spec, request, &resolved.secrets, group)?;
        attach_inputs(&mut spec, request, &resolved.inputs)?;
        if let Some(key) = &spec.idempotency_key
            && let Some((existing, _)) = self.idempotency.get(&(group.to_owned(), key.clone()))
        {
            // The same key for a different job is a client bug, not a retry: say so.
            if self
                .jobs
                .get(existing)
                .is_some_and(|job| comparable(&job.spec) != comparable(&spec))
            {
                return Err(Refusal::IdempotencyConflict { key: key.clone() });
            }
            return Ok(Submitted::Existing(*existing));
        }
        if request.reject_unschedulable {
            let reason = self.cluster.explain(&spec.resources);
            if reason.unschedulable {
                return Err(Refusal::Unschedulable(reason));
            }
        }
        let job_id = uuid::Uuid::now_v7();
        Ok(Submitted::New {
            job_id,
            events: vec![
                JobSubmitted {
                    job_id,
                    spec: Box::new(spec),
                    by: by.map(|p| p.key_id.clone()),
                    group: by.map(|p| p.group.clone()),
                    pipeline: None,
                }
                .into(),
            ],
        })
    }

    /// A pipeline: validated whole (with what the gateway resolved for each stage's job) and
    /// recorded with who submitted it; its stages start as [`World::decide_pipelines`] finds
    /// them ready. `dry_run`: the checked stages, in the order they can run, and no events.
    pub fn decide_pipeline(
        &self,
        request: &PipelineRequest,
        by: Option<&Principal>,
        resolved: &[crate::spec::Resolved],
        dry_run: bool,
    ) -> Result<(PipelineId, Vec<PipelineStage>, Vec<Event>), Refusal> {
        let group = by.map_or(DEFAULT_GROUP, |p| p.group.as_str());
        let valid = validate_pipeline(request, resolved, group, &self.limits)?;
        let pipeline_id = uuid::Uuid::now_v7();
        if dry_run {
            return Ok((pipeline_id, valid.stages, Vec::new()));
        }
        let event = PipelineSubmitted {
            pipeline_id,
            name: valid.name,
            stages: valid.stages.clone(),
            by: by.map(|p| p.key_id.clone()),
            group: by.map(|p| p.group.clone()),
        };
        Ok((pipeline_id, valid.stages, vec![event.into()]))
    }

    /// Pipelines with a stage still to start or running.
    pub fn pipelines_live(&self) -> usize {
        self.pipelines.len()
    }

    /// Stages of live pipelines to start or skip now.
    pub fn decide_pipelines(&mut self) -> Vec<Event> {
        self.pipelines.decide(&self.jobs)
    }

    /// Cancels a running pipeline: no stage starts any more, running stages are cancelled.
    pub fn decide_cancel_pipeline(
        &self,
        id: PipelineId,
        reason: Option<String>,
        by: Option<String>,
    ) -> Result<Vec<Event>, Refusal> {
        self.pipelines
            .decide_cancel(id, reason, by, &self.jobs)
            .ok_or(Refusal::PipelineEnded(id))
    }

    fn existing(&self, id: JobId) -> Result<&Job, Refusal> {
        if let Some(job) = self.jobs.get(&id) {
            return Ok(job);
        }
        // Every command on an ended job is refused as the job itself would refuse it.
        match self.jobs.ended(&id) {
            Some(ended) => Err(Rejection::Terminal(ended.state.as_str()).into()),
            None => Err(Refusal::UnknownJob(id)),
        }
    }

    pub fn decide_cancel(
        &self,
        id: JobId,
        reason: Option<String>,
        by: Option<String>,
    ) -> Result<Vec<Event>, Refusal> {
        Ok(self.existing(id)?.cancel(reason, by)?)
    }

    /// A change to keys or secrets: a key id is created once; revoking an unknown key is
    /// refused, revoking twice records nothing new; secret changes are recorded as they come
    /// (the store has already changed).
    pub fn decide_access(&self, change: AccessChange) -> Result<Vec<Event>, Refusal> {
        match change {
            AccessChange::Create(created) => {
                if self.keys.contains_key(&created.key_id) {
                    return Err(Rejection::WrongState {
                        state: "existing",
                        action: "create (the key id is taken)",
                    }
                    .into());
                }
                Ok(vec![created.into()])
            }
            AccessChange::Revoke(revoked) => match self.keys.get(&revoked.key_id) {
                None => Err(Refusal::UnknownKey(revoked.key_id)),
                Some(true) => Ok(Vec::new()),
                Some(false) => Ok(vec![revoked.into()]),
            },
            AccessChange::SecretSet(set) => Ok(vec![set.into()]),
            AccessChange::SecretDeleted(deleted) => Ok(vec![deleted.into()]),
            AccessChange::WebhookCreate(created) => {
                if self.webhooks.contains_key(&created.webhook_id) {
                    return Err(Rejection::WrongState {
                        state: "existing",
                        action: "create (the webhook id is taken)",
                    }
                    .into());
                }
                Ok(vec![created.into()])
            }
            AccessChange::WebhookDelete(deleted) => match self.webhooks.get(&deleted.webhook_id) {
                None => Err(Refusal::UnknownWebhook(deleted.webhook_id)),
                Some(true) => Ok(Vec::new()),
                Some(false) => Ok(vec![deleted.into()]),
            },
        }
    }

    pub fn decide_started(
        &self,
        id: JobId,
        attempt: u32,
        handle: Option<String>,
        limits_enforced: Option<bool>,
        image: Option<String>,
    ) -> Result<Vec<Event>, Refusal> {
        let mut events = self
            .existing(id)?
            .started(attempt, handle, limits_enforced)?;
        for event in &mut events {
            if let Event::Job(JobEvent::Started(started)) = event {
                started.image.clone_from(&image);
            }
        }
        Ok(events)
    }

    pub fn decide_succeeded(
        &self,
        id: JobId,
        attempt: u32,
        duration_ms: u64,
    ) -> Result<Vec<Event>, Refusal> {
        Ok(self.existing(id)?.succeeded(attempt, duration_ms)?)
    }

    pub fn decide_failed(
        &self,
        id: JobId,
        attempt: u32,
        cause: FailureCause,
        duration_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Vec<Event>, Refusal> {
        Ok(self.existing(id)?.failed(
            attempt,
            cause,
            duration_ms,
            now_ms,
            self.limits.retry_budget(),
        )?)
    }

    /// Attempts placed longer ago than the lease and still not started: each is taken back
    /// (a `job.failed` with `placement_expired`, then a retry or a dead letter).
    ///
    /// The lease counts from the placement or from `since_ms` (when this scheduler started),
    /// whichever is later, so time gantry was down does not count against a node that is
    /// picking its attempts up again. At most `max_jobs` are taken back per call (each takes
    /// two events, and one append holds at most [`gantry_events::log::MAX_BATCH`]).
    pub fn decide_expired_placements(
        &self,
        now_ms: u64,
        since_ms: u64,
        max_jobs: usize,
    ) -> Vec<Event> {
        let lease_ms = self.limits.placement_lease_secs.saturating_mul(1000);
        let mut events = Vec::new();
        let mut taken = 0;
        for id in &self.placed {
            if taken >= max_jobs {
                break;
            }
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            let from = job.placed_at_ms.max(since_ms);
            if now_ms < from.saturating_add(lease_ms) {
                continue;
            }
            taken += 1;
            if let Ok(mut expired) =
                job.placement_expired(job.attempt, now_ms, lease_ms, self.limits.retry_budget())
            {
                events.append(&mut expired);
            }
        }
        events
    }

    /// One scheduling round: places every waiting job that fits somewhere, in queue order.
    /// Returns the placements to append. Reservations are made on a scratch copy of the
    /// cluster so one round never double-books a node; the real cluster only changes when the
    /// events are applied.
    pub fn decide_placements(&mut self, now_ms: u64, max: usize) -> Vec<Event> {
        // Look as far into each queue as one round may place, so a deep queue is not throttled
        // to a handful per tick; queues still alternate within the round.
        // Jobs parked as unschedulable are offered again once the fleet's shape changed.
        let generation = self.cluster.generation();
        if self.parked_generation != Some(generation) {
            self.queues.unpark_all();
            self.parked_generation = Some(generation);
        }
        let order = self.queues.round(max);
        let mut events = Vec::new();
        let mut scratch: Vec<(JobId, String, Vec<String>)> = Vec::new();
        for id in order {
            if events.len() >= max {
                break;
            }
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            if !job.placeable(now_ms) {
                continue;
            }
            let Some((node, gpus)) = self.cluster.place(&job.spec.image, &job.spec.resources)
            else {
                // Say why, once per change of the fleet's shape, and record it only when the
                // reason differs from the one in the log.
                let generation = self.cluster.generation();
                if self.explained.get(&id) != Some(&generation) {
                    self.explained.insert(id, generation);
                    let reason = self.cluster.explain(&job.spec.resources);
                    let unschedulable = reason.unschedulable;
                    if job.waiting.as_ref() != Some(&reason) {
                        events.push(JobWaiting { job_id: id, reason }.into());
                    }
                    if unschedulable {
                        // No node could take it until the fleet changes: out of the order.
                        self.queues.park(id);
                    }
                }
                continue;
            };
            self.explained.remove(&id);
            if let Ok(mut placed) = job.place(&node, gpus.clone(), now_ms) {
                // Hold the capacity for the rest of this round.
                self.cluster.reserve(id, &node, &job.spec.resources, &gpus);
                scratch.push((id, node, gpus));
                events.append(&mut placed);
            }
        }
        // Undo the scratch reservations; applying the appended events makes them for real.
        for (id, _, _) in scratch {
            self.cluster.release(id);
        }
        events
    }

    /// Forgets which pending reasons were worked out: after decisions failed to reach the log,
    /// the next round works them out (and records them) again.
    pub fn forget_explanations(&mut self) {
        self.explained.clear();
    }

    /// Refuses a report from `node` about an attempt that is not placed on it: reports are
    /// fenced by (node, attempt), so a node that was partitioned away and whose attempt was
    /// re-placed elsewhere cannot change it.
    pub fn check_reporter(&self, id: JobId, attempt: u32, node: &str) -> Result<(), Refusal> {
        if let Some(ended) = self.jobs.ended(&id) {
            // Its attempts are over and it is on no node any more.
            return Err(if ended.attempt == attempt {
                Rejection::OtherNode {
                    attempt,
                    node: node.to_owned(),
                }
            } else {
                Rejection::StaleAttempt {
                    reported: attempt,
                    current: ended.attempt,
                }
            }
            .into());
        }
        let job = self.existing(id)?;
        if job.attempt == attempt && job.node.as_deref() == Some(node) {
            return Ok(());
        }
        if job.attempt != attempt {
            return Err(Rejection::StaleAttempt {
                reported: attempt,
                current: job.attempt,
            }
            .into());
        }
        Err(Rejection::OtherNode {
            attempt,
            node: node.to_owned(),
        }
        .into())
    }

    /// A node went silent: `node.lost` (once), then each attempt live on it fails with
    /// `node_lost` — an infrastructure loss that does not use the job's own retries — and is
    /// queued again. At most `max_attempts` attempts per call: call again while `more`.
    pub fn decide_node_lost(
        &self,
        node: &str,
        reason: &str,
        now_ms: u64,
        max_attempts: usize,
    ) -> NodeLoss {
        let mut loss = NodeLoss::default();
        let Some(known) = self.cluster.node(node) else {
            return loss;
        };
        if known.status != NodeStatus::Lost {
            loss.newly_lost = true;
            loss.events.push(
                gantry_events::event::NodeLost {
                    node_id: node.to_owned(),
                    reason: reason.to_owned(),
                }
                .into(),
            );
        }
        let cause = FailureCause::NodeLost {
            node_id: node.to_owned(),
        };
        let mut live = self.live_on(node);
        live.sort_by_key(|(id, _, _)| *id);
        loss.more = live.len() > max_attempts;
        for (id, attempt, _) in live.into_iter().take(max_attempts) {
            if let Ok(mut failed) = self.decide_failed(id, attempt, cause.clone(), None, now_ms) {
                loss.events.append(&mut failed);
            }
        }
        loss
    }

    /// An operator's change to a node (cordon, uncordon, drain).
    pub fn decide_node_status(
        &self,
        node: &str,
        status: NodeStatus,
        reason: String,
        by: Option<String>,
    ) -> Result<Vec<Event>, Refusal> {
        use gantry_events::event::{NodeCordoned, NodeDrained, NodeUncordoned};
        let known = self
            .cluster
            .node(node)
            .ok_or_else(|| Refusal::UnknownNode(node.to_owned()))?;
        if known.status == status {
            return Ok(Vec::new());
        }
        let node_id = node.to_owned();
        Ok(vec![match status {
            NodeStatus::Ready if known.status == NodeStatus::Lost => {
                return Err(Rejection::WrongState {
                    state: "lost",
                    action: "uncordon (a lost node takes work again when it rejoins)",
                }
                .into());
            }
            NodeStatus::Ready => NodeUncordoned { node_id, by }.into(),
            NodeStatus::Cordoned => NodeCordoned {
                node_id,
                reason,
                by,
            }
            .into(),
            NodeStatus::Draining => NodeDrained {
                node_id,
                reason,
                by,
            }
            .into(),
            NodeStatus::Lost => gantry_events::event::NodeLost { node_id, reason }.into(),
        }])
    }

    /// Jobs with a live attempt on `node`, with that attempt.
    pub fn live_on(&self, node: &str) -> Vec<(JobId, u32, JobState)> {
        self.jobs
            .live()
            .filter(|j| j.node.as_deref() == Some(node))
            .filter(|j| matches!(j.state, JobState::Placed | JobState::Running))
            .map(|j| (j.id, j.attempt, j.state))
            .collect()
    }
}

/// A spec as a retry compares it: a value given with the job is stored under a fresh name each
/// time (`<group>/job-<id>/<VAR>`), so only its hash tells two submissions apart.
fn comparable(spec: &gantry_events::event::JobSpec) -> gantry_events::event::JobSpec {
    let mut spec = spec.clone();
    for secret in spec.secrets.values_mut() {
        let mut parts: Vec<&str> = secret.name.split('/').collect();
        if parts.len() == 3 && parts[1].starts_with("job-") {
            parts[1] = "job-";
        }
        secret.name = parts.join("/");
    }
    spec
}

/// Wraps decided events for appending.
pub fn stamp(events: Vec<Event>, source: &Source) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|e| NewEvent::new(source.clone(), e))
        .collect()
}

#[cfg(test)]
mod tests {
    use gantry_events::event::NodeJoined;

    use std::collections::BTreeMap;

    use gantry_events::event::SecretRef;

    use super::*;

    fn request(name: &str) -> SubmitRequest {
        SubmitRequest {
            name: name.into(),
            image: "busybox".into(),
            command: vec!["true".into()],
            ..SubmitRequest::default()
        }
    }

    /// Submits `n` one-CPU jobs `j0`, `j1`, … and commits them.
    fn submit_jobs(world: &mut World, log: &mut Vec<Event>, n: usize) {
        for i in 0..n {
            let Submitted::New { events, .. } = world
                .decide_submit(&request(&format!("j{i}")), None, &Resolved::default())
                .expect("valid")
            else {
                panic!("new job")
            };
            commit(world, log, events);
        }
    }

    /// Appends (in memory) and applies, as the scheduler does.
    fn commit(world: &mut World, log: &mut Vec<Event>, events: Vec<Event>) {
        for e in events {
            log.push(e.clone());
            let seq = log.len() as u64;
            world.apply(seq, 0, &e);
        }
    }

    fn joined(id: &str, cpu: u32) -> Event {
        NodeJoined {
            node_id: id.into(),
            hostname: id.into(),
            cpu_millis: cpu,
            memory_bytes: 8 << 30,
            gpus: vec![],
            executor: "process".into(),
            labels: Default::default(),
        }
        .into()
    }

    #[test]
    fn submissions_are_placed_within_capacity_and_replay_gives_the_same_world() {
        let mut world = World::default();
        let mut log = Vec::new();
        commit(&mut world, &mut log, vec![joined("n1", 2000)]);
        submit_jobs(&mut world, &mut log, 3);
        let placed = world.decide_placements(0, 100);
        // Two one-CPU jobs fit on a two-CPU node; the third waits, and says why.
        let types: Vec<&str> = placed.iter().map(Event::type_name).collect();
        assert_eq!(types, ["job.placed", "job.placed", "job.waiting"]);
        commit(&mut world, &mut log, placed);
        let waiting = world
            .jobs()
            .find(|j| j.state == JobState::Queued)
            .expect("one waits");
        assert_eq!(
            waiting.waiting.as_ref().map(|r| r.code.as_str()),
            Some("resources_busy")
        );
        // The reason is recorded once, not on every pass.
        assert!(world.decide_placements(0, 100).is_empty());
        assert_eq!(world.queues().len(), 1);

        // Finishing one frees room for the last.
        let (id, attempt, _) = world.live_on("n1")[0];
        let done = world.decide_succeeded(id, attempt, 5).expect("accepted");
        commit(&mut world, &mut log, done);
        assert_eq!(world.decide_placements(0, 100).len(), 1);

        // A world rebuilt from the log agrees, and replaying twice changes nothing.
        let mut rebuilt = World::default();
        for (i, e) in log.iter().enumerate() {
            rebuilt.apply(i as u64 + 1, 0, e);
            rebuilt.apply(i as u64 + 1, 0, e);
        }
        assert_eq!(rebuilt.queues().len(), world.queues().len());
        let mut a: Vec<_> = world.jobs().map(|j| (j.id, j.state)).collect();
        let mut b: Vec<_> = rebuilt.jobs().map(|j| (j.id, j.state)).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn a_world_loaded_from_its_snapshot_is_the_one_it_was_taken_of() {
        let mut world = World::default();
        let mut log = Vec::new();
        commit(&mut world, &mut log, vec![joined("n1", 2000)]);
        submit_jobs(&mut world, &mut log, 5);
        let placed = world.decide_placements(0, 100);
        commit(&mut world, &mut log, placed);
        // One ends, one is cancelled while it waits, one more comes with an idempotency key.
        let (done_id, attempt, _) = world.live_on("n1")[0];
        let done = world
            .decide_succeeded(done_id, attempt, 5)
            .expect("accepted");
        commit(&mut world, &mut log, done);
        let waiting = world
            .jobs()
            .find(|j| j.state == JobState::Queued)
            .expect("one waits")
            .id;
        let cancel = world.decide_cancel(waiting, None, None).expect("cancel");
        commit(&mut world, &mut log, cancel);
        let keyed = SubmitRequest {
            idempotency_key: Some("nightly".into()),
            ..request("keyed")
        };
        let Submitted::New {
            job_id: keyed_id,
            events,
        } = world
            .decide_submit(&keyed, None, &Resolved::default())
            .expect("valid")
        else {
            panic!("new job")
        };
        commit(&mut world, &mut log, events);
        assert_eq!(world.ended_jobs(), 2);

        let body = world.to_snapshot().expect("encode");
        let mut loaded = World::from_snapshot(&body, Limits::default()).expect("decode");
        assert_eq!(loaded.seq(), world.seq());
        let live = |w: &World| {
            let mut jobs: Vec<Job> = w.jobs().cloned().collect();
            jobs.sort_by_key(|j| j.id);
            jobs
        };
        assert_eq!(live(&loaded), live(&world));
        assert_eq!(loaded.ended_jobs(), 2);
        for id in [done_id, waiting, keyed_id] {
            assert_eq!(loaded.state_of(&id), world.state_of(&id), "{id}");
        }
        // Ended jobs are refused alike, the key still answers its job, and the next
        // decisions are the same.
        assert_eq!(
            loaded
                .decide_cancel(done_id, None, None)
                .map_err(|e| e.to_string()),
            world
                .decide_cancel(done_id, None, None)
                .map_err(|e| e.to_string()),
        );
        assert!(matches!(
            loaded.decide_submit(&keyed, None, &Resolved::default()),
            Ok(Submitted::Existing(id)) if id == keyed_id
        ));
        assert_eq!(
            loaded
                .check_reporter(done_id, attempt, "n1")
                .map_err(|e| e.to_string()),
            world
                .check_reporter(done_id, attempt, "n1")
                .map_err(|e| e.to_string()),
        );
        assert_eq!(
            loaded.decide_placements(0, 100),
            world.decide_placements(0, 100)
        );
        assert_eq!(loaded.queues().len(), world.queues().len());
        // A cut body is refused, not half loaded.
        assert!(World::from_snapshot(&body[..body.len() / 2], Limits::default()).is_err());
    }

    #[test]
    fn idempotency_key_returns_the_same_job() {
        let mut world = World::default();
        let mut log = Vec::new();
        let mut req = request("once");
        req.idempotency_key = Some("k1".into());
        let Submitted::New { job_id, events } = world
            .decide_submit(&req, None, &Resolved::default())
            .expect("valid")
        else {
            panic!("new")
        };
        commit(&mut world, &mut log, events);
        assert_eq!(
            world.decide_submit(&req, None, &Resolved::default()),
            Ok(Submitted::Existing(job_id))
        );
    }

    #[test]
    fn idempotency_keys_are_scoped_to_a_group_and_forgotten_after_the_retention() {
        let mut world = World::default();
        let team = |g: &str| Principal {
            key_id: format!("key-{g}"),
            group: g.into(),
        };
        let mut req = request("once");
        req.idempotency_key = Some("nightly".into());
        let Submitted::New { job_id, events } = world
            .decide_submit(&req, Some(&team("a")), &Resolved::default())
            .expect("valid")
        else {
            panic!("new")
        };
        let Event::Job(JobEvent::Submitted(submitted)) = &events[0] else {
            panic!("submitted")
        };
        assert_eq!(submitted.by.as_deref(), Some("key-a"));
        assert_eq!(submitted.group.as_deref(), Some("a"));
        world.apply(1, 1_000, &events[0]);
        // The same key in group a is that job; in group b (or with no group) it is a new job,
        // and nothing of group a's job shows.
        assert_eq!(
            world.decide_submit(&req, Some(&team("a")), &Resolved::default()),
            Ok(Submitted::Existing(job_id))
        );
        assert!(matches!(
            world.decide_submit(&req, Some(&team("b")), &Resolved::default()),
            Ok(Submitted::New { .. })
        ));
        assert!(matches!(
            world.decide_submit(&req, None, &Resolved::default()),
            Ok(Submitted::New { .. })
        ));
        // A submission past the retention forgets the old key.
        let Submitted::New { events, .. } = world
            .decide_submit(&request("later"), Some(&team("a")), &Resolved::default())
            .expect("valid")
        else {
            panic!("new")
        };
        world.apply(2, 1_000 + IDEMPOTENCY_RETENTION_MS + 1, &events[0]);
        assert!(matches!(
            world.decide_submit(&req, Some(&team("a")), &Resolved::default()),
            Ok(Submitted::New { .. })
        ));
    }

    fn with_secrets(secrets: &BTreeMap<String, SecretRef>) -> Resolved {
        Resolved {
            secrets: secrets.clone(),
            ..Resolved::default()
        }
    }

    #[test]
    fn secret_references_stay_in_the_submitters_group_and_never_carry_values() {
        use gantry_events::Hash;
        let world = World::default();
        let team = Principal {
            key_id: "k".into(),
            group: "vision".into(),
        };
        let reference = |name: &str| SecretRef {
            name: name.into(),
            hash: Hash::of(b"keyed"),
        };
        let mut req = request("with-secrets");
        req.env.insert("TOKEN".into(), "secret://hf".into());
        // Resolved by the gateway into the group's own store names: recorded, without values.
        let refs = BTreeMap::from([
            ("TOKEN".to_owned(), reference("vision/hf")),
            ("PASSWORD".to_owned(), reference("vision/job-1/PASSWORD")),
        ]);
        let Ok(Submitted::New { events, .. }) =
            world.decide_submit(&req, Some(&team), &with_secrets(&refs))
        else {
            panic!("accepted")
        };
        let Event::Job(JobEvent::Submitted(submitted)) = &events[0] else {
            panic!("submitted")
        };
        assert_eq!(submitted.spec.secrets, refs);
        assert!(
            !submitted.spec.env.contains_key("TOKEN"),
            "the reference is not plain env"
        );
        // Another group's secret, an unresolved reference, or a value that reached the
        // scheduler are refused.
        let foreign = BTreeMap::from([("TOKEN".to_owned(), reference("audio/hf"))]);
        let refused = |r: Result<Submitted, Refusal>| match r {
            Err(Refusal::Invalid(i)) => i.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(world.decide_submit(&req, Some(&team), &with_secrets(&foreign))),
            "secret_not_found"
        );
        assert_eq!(
            refused(world.decide_submit(&req, Some(&team), &Resolved::default())),
            "secret_not_stored"
        );
        let mut inline = request("inline");
        inline.secrets.insert(
            "PASSWORD".into(),
            crate::secrets::SecretString("hunter2".into()),
        );
        assert_eq!(
            refused(world.decide_submit(&inline, Some(&team), &Resolved::default())),
            "secret_not_stored"
        );
    }

    #[test]
    fn keys_are_created_once_and_revoked_once() {
        use gantry_events::Hash;
        let mut world = World::default();
        let created = KeyCreated {
            key_id: "k1".into(),
            name: "ci".into(),
            role: "submitter".into(),
            group: "a".into(),
            hash: Hash::GENESIS,
            by: None,
        };
        let revoke = AccessChange::Revoke(KeyRevoked {
            key_id: "k1".into(),
            by: Some("admin".into()),
        });
        assert_eq!(
            world.decide_access(revoke.clone()),
            Err(Refusal::UnknownKey("k1".into()))
        );
        let events = world
            .decide_access(AccessChange::Create(created.clone()))
            .expect("new key");
        world.apply(1, 0, &events[0]);
        assert!(world.decide_access(AccessChange::Create(created)).is_err());
        let events = world.decide_access(revoke.clone()).expect("revoke");
        assert_eq!(events.len(), 1);
        world.apply(2, 0, &events[0]);
        assert_eq!(world.decide_access(revoke), Ok(Vec::new()));
    }

    #[test]
    fn unknown_jobs_and_bad_requests_are_refused() {
        let world = World::default();
        assert!(matches!(
            world.decide_cancel(JobId::from_u128(9), None, None),
            Err(Refusal::UnknownJob(_))
        ));
        let mut bad = request("x");
        bad.image = "NOT VALID".into();
        assert!(matches!(
            world.decide_submit(&bad, None, &Resolved::default()),
            Err(Refusal::Invalid(_))
        ));
    }

    fn gpu(uuid: &str, name: &str, gib: u64) -> gantry_events::event::Gpu {
        gantry_events::event::Gpu {
            uuid: uuid.into(),
            name: name.into(),
            memory_bytes: gib << 30,
            utilisation_pct: None,
            driver_version: Some("580.65".into()),
        }
    }

    fn gpu_node(id: &str, gpus: Vec<gantry_events::event::Gpu>) -> Event {
        NodeJoined {
            node_id: id.into(),
            hostname: id.into(),
            cpu_millis: 8000,
            memory_bytes: 64 << 30,
            gpus,
            executor: "process".into(),
            labels: Default::default(),
        }
        .into()
    }

    /// The fake fleet: two H100 80 GB on one node, one A100 40 GB on another, and a CPU-only
    /// node.
    fn fleet() -> (World, Vec<Event>) {
        let mut world = World::default();
        let mut log = Vec::new();
        let nodes = vec![
            gpu_node(
                "h100x2",
                vec![
                    gpu("GPU-h1", "NVIDIA H100 80GB HBM3", 80),
                    gpu("GPU-h2", "NVIDIA H100 80GB HBM3", 80),
                ],
            ),
            gpu_node("a100", vec![gpu("GPU-a1", "NVIDIA A100-SXM4-40GB", 40)]),
            gpu_node("cpu", vec![]),
        ];
        commit(&mut world, &mut log, nodes);
        (world, log)
    }

    fn gpu_request(count: u32, model: Option<&str>, min_gib: Option<u64>) -> SubmitRequest {
        let mut r = request("gpu");
        r.resources.gpus = Some(crate::spec::GpuAsk {
            count,
            model: model.map(str::to_owned),
            min_memory_bytes: min_gib.map(|g| g << 30),
        });
        r
    }

    /// Submits and commits one new job.
    fn submit(world: &mut World, log: &mut Vec<Event>, req: &SubmitRequest) -> JobId {
        let Submitted::New { job_id, events } = world
            .decide_submit(req, None, &Resolved::default())
            .expect("valid")
        else {
            panic!("new job")
        };
        commit(world, log, events);
        job_id
    }

    /// Submits and runs one placement round; returns the job and what the round decided.
    fn submit_and_place(
        world: &mut World,
        log: &mut Vec<Event>,
        req: &SubmitRequest,
    ) -> (JobId, Vec<Event>) {
        let job_id = submit(world, log, req);
        let round = world.decide_placements(0, 100);
        commit(world, log, round.clone());
        (job_id, round)
    }

    /// However many jobs no node could ever take wait ahead, the jobs behind them are placed
    /// within a round or two (they are parked out of the order), and they are offered again once
    /// the fleet changes.
    #[test]
    fn unschedulable_jobs_ahead_do_not_starve_the_jobs_behind_them() {
        let mut world = World::default();
        let mut log = Vec::new();
        commit(&mut world, &mut log, vec![joined("n1", 64_000)]);
        let stuck: Vec<JobId> = (0..50)
            .map(|_| submit(&mut world, &mut log, &gpu_request(1, Some("H100"), None)))
            .collect();
        let behind = submit(&mut world, &mut log, &request("behind"));
        // Rounds of at most 10: the first ones explain and park the stuck jobs.
        let mut rounds = 0;
        while world
            .job(&behind)
            .is_some_and(|j| j.state == JobState::Queued)
        {
            rounds += 1;
            assert!(
                rounds <= 10,
                "the job behind 50 unschedulable ones was never offered"
            );
            let round = world.decide_placements(0, 10);
            commit(&mut world, &mut log, round);
        }
        assert_eq!(world.job(&behind).map(|j| j.state), Some(JobState::Placed));
        assert_eq!(world.queues().len(), 50, "the stuck jobs are still queued");
        assert!(
            world.decide_placements(0, 10).is_empty(),
            "nothing new to say"
        );
        // A node with the GPU they want: they are offered again and placed.
        commit(
            &mut world,
            &mut log,
            vec![gpu_node(
                "n2",
                (0..8)
                    .map(|i| gpu(&format!("g{i}"), "NVIDIA H100", 80))
                    .collect(),
            )],
        );
        let round = world.decide_placements(0, 100);
        let placed = round
            .iter()
            .filter(|e| e.type_name() == "job.placed")
            .count();
        assert_eq!(placed, 8, "as many as the new node's GPUs");
        commit(&mut world, &mut log, round);
        assert!(
            stuck
                .iter()
                .filter(|id| world.job(id).is_some_and(|j| j.state == JobState::Placed))
                .count()
                == 8
        );
    }

    #[test]
    fn gpu_jobs_land_on_the_node_with_the_right_count_model_and_memory() {
        let (mut world, mut log) = fleet();
        let cases = [
            (gpu_request(2, None, None), "h100x2", 2),
            (gpu_request(1, Some("a100"), None), "a100", 1),
            (gpu_request(1, None, Some(60)), "h100x2", 1),
        ];
        for (req, want_node, want_gpus) in cases {
            let (id, _) = submit_and_place(&mut world, &mut log, &req);
            let job = world.job(&id).expect("job");
            assert_eq!(job.state, JobState::Placed, "{req:?}");
            assert_eq!(job.node.as_deref(), Some(want_node), "{req:?}");
            assert_eq!(job.gpu_uuids.len(), want_gpus, "{req:?}");
            // Free it again for the next case.
            let done = world.decide_succeeded(id, job.attempt, 1).expect("done");
            commit(&mut world, &mut log, done);
        }
        // A CPU job never takes a GPU.
        let (id, _) = submit_and_place(&mut world, &mut log, &request("cpu"));
        assert!(world.job(&id).expect("job").gpu_uuids.is_empty());
    }

    #[test]
    fn every_pending_reason_is_named_and_recorded_once() {
        let cases = [
            (gpu_request(1, Some("V100"), None), "no_gpu_model", true),
            (gpu_request(3, None, None), "too_many_gpus", true),
            (gpu_request(1, None, Some(100)), "gpu_memory", true),
            (
                {
                    let mut r = request("big");
                    r.resources.cpus = Some(64.0);
                    r
                },
                "too_many_cpus",
                true,
            ),
            (
                {
                    let mut r = request("huge");
                    r.resources.memory_bytes = Some(1 << 40);
                    r
                },
                "too_much_memory",
                true,
            ),
        ];
        for (req, code, unschedulable) in cases {
            let (mut world, mut log) = fleet();
            let (id, round) = submit_and_place(&mut world, &mut log, &req);
            assert_eq!(
                round.iter().map(Event::type_name).collect::<Vec<_>>(),
                ["job.waiting"],
                "{code}"
            );
            let reason = world
                .job(&id)
                .and_then(|j| j.waiting.clone())
                .expect("reason");
            assert_eq!(reason.code, code, "{reason:?}");
            assert_eq!(reason.unschedulable, unschedulable, "{reason:?}");
            assert!(!reason.message.is_empty());
            // Asked to, the same submission is refused at once.
            let mut strict = req.clone();
            strict.reject_unschedulable = true;
            assert!(matches!(
                world.decide_submit(&strict, None, &Resolved::default()),
                Err(Refusal::Unschedulable(r)) if r.code == code
            ));
            // Nothing changed: no new event on later passes.
            assert!(world.decide_placements(0, 100).is_empty(), "{code}");
        }
        let (_, round) = {
            let (mut world, mut log) = fleet();
            let out = submit_and_place(&mut world, &mut log, &gpu_request(1, Some("V100"), None));
            assert!(
                world
                    .job(&out.0)
                    .and_then(|j| j.waiting.clone())
                    .is_some_and(|r| r.message.contains("H100") && r.message.contains("A100")),
                "the reason names what the fleet has"
            );
            out
        };
        assert_eq!(round.len(), 1);

        // No node at all.
        let mut empty = World::default();
        let mut log = Vec::new();
        let (id, _) = submit_and_place(&mut empty, &mut log, &request("lonely"));
        assert_eq!(
            empty
                .job(&id)
                .and_then(|j| j.waiting.clone())
                .map(|r| r.code),
            Some("no_nodes".into())
        );
    }

    #[test]
    fn busy_unavailable_and_a_lost_gpu_change_the_reason() {
        let (mut world, mut log) = fleet();
        // Both H100s taken: a second 2-GPU job waits for resources, not forever.
        let (_, _) = submit_and_place(&mut world, &mut log, &gpu_request(2, None, None));
        let (second, _) = submit_and_place(&mut world, &mut log, &gpu_request(2, None, None));
        let reason = world
            .job(&second)
            .and_then(|j| j.waiting.clone())
            .expect("reason");
        assert_eq!(reason.code, "resources_busy");
        assert!(!reason.unschedulable);

        // The only node that fits stops taking work: unavailable.
        commit(
            &mut world,
            &mut log,
            vec![
                gantry_events::event::NodeDrained {
                    node_id: "h100x2".into(),
                    reason: "maintenance".into(),
                    by: None,
                }
                .into(),
            ],
        );
        let round = world.decide_placements(0, 100);
        commit(&mut world, &mut log, round);
        let reason = world
            .job(&second)
            .and_then(|j| j.waiting.clone())
            .expect("reason");
        assert_eq!(reason.code, "nodes_unavailable");

        // A node that loses a GPU: two-GPU jobs can no longer fit anywhere.
        let (mut world, mut log) = fleet();
        commit(
            &mut world,
            &mut log,
            vec![
                gantry_events::event::NodeGpusObserved {
                    node_id: "h100x2".into(),
                    gpus: vec![gpu("GPU-h1", "NVIDIA H100 80GB HBM3", 80)],
                }
                .into(),
            ],
        );
        let (id, _) = submit_and_place(&mut world, &mut log, &gpu_request(2, None, None));
        let reason = world
            .job(&id)
            .and_then(|j| j.waiting.clone())
            .expect("reason");
        assert_eq!(reason.code, "too_many_gpus");
        assert!(reason.message.contains("has 1"), "{}", reason.message);
    }

    #[test]
    fn leases_count_from_the_schedulers_start_and_expire_in_bounded_batches() {
        let mut world = World::new(Limits {
            placement_lease_secs: 60,
            ..Limits::default()
        });
        let mut log = Vec::new();
        commit(&mut world, &mut log, vec![joined("n1", 1_000_000)]);
        submit_jobs(&mut world, &mut log, 10);
        let placed = world.decide_placements(0, 100);
        // Placed at time 0 (the test's clock).
        commit(&mut world, &mut log, placed);
        // A scheduler that started at 50 s counts the lease from there: not expired at 100 s.
        assert!(
            world
                .decide_expired_placements(100_000, 50_000, 100)
                .is_empty()
        );
        // At 110 s it is; at most 3 jobs are taken back per call, two events each.
        let expired = world.decide_expired_placements(110_000, 50_000, 3);
        assert_eq!(expired.len(), 6);
        assert!(
            expired
                .iter()
                .step_by(2)
                .all(|e| e.type_name() == "job.failed")
        );
    }
}

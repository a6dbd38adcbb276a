//! The job state machine: plain functions that decide which events a command produces, and an
//! `apply` that folds events into state. No actor runtime, no IO, no clock: callers pass the
//! time in, so tests are given events → when command → then events.
//!
//! ```text
//! submitted → queued → placed(node, attempt) → running → succeeded
//!                ↑                               ↘ failed → retry scheduled ─┘ (back to queued)
//!                                                          ↘ dead-lettered
//! cancel: from any non-terminal state → cancelled (via the worker when an attempt is live)
//! ```
//!
//! Two retry budgets: the job's own `retry.max_attempts` counts attempts that failed for a
//! reason of the job (its exit, its image, its executor); attempts lost to infrastructure — the
//! node vanished, gantry restarted under a local process, a placement was never started within
//! its lease — count against [`RetryBudget::max_infra_losses`], a limit of the scheduler, so a
//! crash of gantry never uses up a user's retries.
//!
//! Reports are idempotent by (job, attempt): the same start or end reported again records
//! nothing and is answered as accepted, so a worker can retry a report until it is in the log.

use std::collections::HashMap;

use gantry_events::Event;
use gantry_events::event::{
    FailureCause, JobCancelRequested, JobCancelled, JobDeadLettered, JobEvent, JobFailed, JobId,
    JobPlaced, JobRetryScheduled, JobSpec, JobStarted, JobSubmitted, JobSucceeded, PendingReason,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a node (also after a retry's backoff has been scheduled).
    Queued,
    /// An attempt was given to a node that has not started it yet.
    Placed,
    /// An attempt is running.
    Running,
    Succeeded,
    Cancelled,
    /// Failed for the last time.
    DeadLettered,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Placed,
        JobState::Running,
        JobState::Succeeded,
        JobState::Cancelled,
        JobState::DeadLettered,
    ];

    /// No event moves a job out of a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Cancelled | JobState::DeadLettered
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Placed => "placed",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Cancelled => "cancelled",
            JobState::DeadLettered => "dead_lettered",
        }
    }
}

/// A job as the log tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    /// The current (or last) attempt; 0 before the first placement.
    pub attempt: u32,
    /// Node of the current attempt, while placed or running.
    pub node: Option<String>,
    pub gpu_uuids: Vec<String>,
    /// Container or process of the current attempt.
    pub handle: Option<String>,
    /// Unix ms before which the next attempt is not placed (retry backoff).
    pub not_before_ms: u64,
    pub cancel_requested: bool,
    pub last_cause: Option<FailureCause>,
    /// When the log recorded the current attempt's placement (Unix ms; 0 if unknown).
    #[serde(default)]
    pub placed_at_ms: u64,
    /// When the log recorded the current attempt's start (Unix ms).
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// The last attempt whose end (success, failure, cancel) is in the log.
    #[serde(default)]
    pub ended_attempt: u32,
    /// Attempts lost to infrastructure so far (see the module docs).
    #[serde(default)]
    pub infra_losses: u32,
    /// Why it is not placed, while it waits (the last `job.waiting`).
    #[serde(default)]
    pub waiting: Option<PendingReason>,
    /// The API key (its id) that submitted it; `None` without authentication.
    #[serde(default)]
    pub by: Option<String>,
    /// The group it belongs to; `None` is the default group.
    #[serde(default)]
    pub group: Option<String>,
    /// The pipeline stage it runs, when a pipeline started it.
    #[serde(default)]
    pub pipeline: Option<gantry_events::event::StageOf>,
}

/// The scheduler-wide retry settings a decision needs beside the job's own policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryBudget {
    /// Attempts a job may lose to infrastructure before it is dead-lettered.
    pub max_infra_losses: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            max_infra_losses: 20,
        }
    }
}

/// Why a command was refused. Nothing is appended for a refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The job is finished; 409.
    #[error("job is already {0}")]
    Terminal(&'static str),
    /// The report is for an attempt that is no longer current (a late or duplicate report);
    /// 409. Fencing by attempt number keeps an old attempt from changing a newer one.
    #[error("report for attempt {reported} but the current attempt is {current}")]
    StaleAttempt { reported: u32, current: u32 },
    /// The command does not fit the job's state; 409.
    #[error("job is {state}, cannot {action}")]
    WrongState {
        state: &'static str,
        action: &'static str,
    },
    /// The attempt's end is already in the log (its placement lease expired, or it was
    /// cancelled before it started); 409. The worker stops whatever it started for it.
    #[error("attempt {attempt} has already ended")]
    AttemptEnded { attempt: u32 },
    /// A retry's backoff has not passed yet; 409.
    #[error("job is backing off until {not_before_ms}")]
    BackingOff { not_before_ms: u64 },
    /// A node reported on an attempt that is not placed on it (a partitioned node coming back
    /// after its attempt was re-placed, or a node naming another's); 409. Recorded by the
    /// scheduler's counters and logs, never applied.
    #[error("attempt {attempt} is not on node {node}")]
    OtherNode { attempt: u32, node: String },
}

impl Job {
    /// The job a `job.submitted` event creates.
    pub fn submitted(event: &JobSubmitted) -> Job {
        Job {
            id: event.job_id,
            spec: (*event.spec).clone(),
            state: JobState::Queued,
            attempt: 0,
            node: None,
            gpu_uuids: Vec::new(),
            handle: None,
            not_before_ms: 0,
            cancel_requested: false,
            last_cause: None,
            placed_at_ms: 0,
            started_at_ms: None,
            ended_attempt: 0,
            infra_losses: 0,
            waiting: None,
            by: event.by.clone(),
            group: event.group.clone(),
            pipeline: event.pipeline.clone(),
        }
    }

    /// The group the job belongs to.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(crate::world::DEFAULT_GROUP)
    }

    /// Folds one event in, with the time the log recorded it (Unix ms).
    pub fn apply_at(&mut self, event: &JobEvent, time_ms: u64) {
        self.apply(event);
        match event {
            JobEvent::Placed(_) => self.placed_at_ms = time_ms,
            JobEvent::Started(_) => self.started_at_ms = Some(time_ms),
            _ => {}
        }
    }

    /// Folds one event about this job into its state. Never fails: events are facts.
    pub fn apply(&mut self, event: &JobEvent) {
        match event {
            JobEvent::Submitted(_) => {}
            JobEvent::Placed(e) => {
                self.state = JobState::Placed;
                self.attempt = e.attempt;
                self.node = Some(e.node_id.clone());
                self.gpu_uuids = e.gpu_uuids.clone();
                self.handle = None;
                self.started_at_ms = None;
                self.waiting = None;
            }
            JobEvent::Started(e) => {
                self.state = JobState::Running;
                self.handle = e.handle.clone();
            }
            JobEvent::Succeeded(e) => {
                self.state = JobState::Succeeded;
                self.ended_attempt = self.ended_attempt.max(e.attempt);
                self.release();
            }
            JobEvent::Failed(e) => {
                self.last_cause = Some(e.cause.clone());
                self.ended_attempt = self.ended_attempt.max(e.attempt);
                if is_infrastructure(&e.cause) {
                    self.infra_losses += 1;
                }
                self.release();
            }
            JobEvent::RetryScheduled(e) => {
                self.state = JobState::Queued;
                self.not_before_ms = e.not_before_ms;
            }
            JobEvent::CancelRequested(_) => self.cancel_requested = true,
            JobEvent::Cancelled(e) => {
                self.state = JobState::Cancelled;
                if let Some(attempt) = e.attempt {
                    self.ended_attempt = self.ended_attempt.max(attempt);
                }
                self.release();
            }
            JobEvent::DeadLettered(_) => {
                self.state = JobState::DeadLettered;
                self.release();
            }
            JobEvent::Waiting(e) => self.waiting = Some(e.reason.clone()),
        }
        if self.state.is_terminal() {
            self.waiting = None;
        }
    }

    fn release(&mut self) {
        self.node = None;
        self.gpu_uuids.clear();
    }

    fn check_live(&self) -> Result<(), Rejection> {
        if self.state.is_terminal() {
            return Err(Rejection::Terminal(self.state.as_str()));
        }
        Ok(())
    }

    fn check_attempt(&self, attempt: u32) -> Result<(), Rejection> {
        if attempt != self.attempt {
            return Err(Rejection::StaleAttempt {
                reported: attempt,
                current: self.attempt,
            });
        }
        Ok(())
    }

    /// Whether the scheduler may place it now.
    pub fn placeable(&self, now_ms: u64) -> bool {
        self.state == JobState::Queued && !self.cancel_requested && now_ms >= self.not_before_ms
    }

    /// Places the next attempt on `node`.
    pub fn place(
        &self,
        node: &str,
        gpu_uuids: Vec<String>,
        now_ms: u64,
    ) -> Result<Vec<Event>, Rejection> {
        self.check_live()?;
        if self.state != JobState::Queued || self.cancel_requested {
            return Err(Rejection::WrongState {
                state: self.state.as_str(),
                action: "place",
            });
        }
        if now_ms < self.not_before_ms {
            return Err(Rejection::BackingOff {
                not_before_ms: self.not_before_ms,
            });
        }
        Ok(vec![
            JobPlaced {
                job_id: self.id,
                attempt: self.attempt + 1,
                node_id: node.to_owned(),
                gpu_uuids,
            }
            .into(),
        ])
    }

    /// The worker started the attempt.
    pub fn started(
        &self,
        attempt: u32,
        handle: Option<String>,
        limits_enforced: Option<bool>,
    ) -> Result<Vec<Event>, Rejection> {
        if attempt == self.attempt
            && attempt > self.ended_attempt
            && self.state == JobState::Running
        {
            // Reported again (a retried report): already in the log.
            return Ok(Vec::new());
        }
        if attempt == self.attempt && attempt <= self.ended_attempt {
            // Taken back (its lease expired) or cancelled before it started: the worker must
            // stop what it started.
            return Err(Rejection::AttemptEnded { attempt });
        }
        self.check_live()?;
        self.check_attempt(attempt)?;
        if self.state != JobState::Placed {
            return Err(Rejection::WrongState {
                state: self.state.as_str(),
                action: "start",
            });
        }
        Ok(vec![
            JobStarted {
                image: None,
                job_id: self.id,
                attempt,
                node_id: self.node.clone().unwrap_or_default(),
                handle,
                limits_enforced,
            }
            .into(),
        ])
    }

    /// The attempt exited with status 0.
    pub fn succeeded(&self, attempt: u32, duration_ms: u64) -> Result<Vec<Event>, Rejection> {
        if attempt == self.attempt && self.state == JobState::Succeeded {
            // Reported again: already in the log.
            return Ok(Vec::new());
        }
        self.check_live()?;
        self.check_attempt(attempt)?;
        self.check_attempt_live("succeed")?;
        Ok(vec![
            JobSucceeded {
                job_id: self.id,
                attempt,
                duration_ms,
            }
            .into(),
        ])
    }

    fn check_attempt_live(&self, action: &'static str) -> Result<(), Rejection> {
        if !matches!(self.state, JobState::Placed | JobState::Running) {
            return Err(Rejection::WrongState {
                state: self.state.as_str(),
                action,
            });
        }
        Ok(())
    }

    /// The attempt failed: records the failure, then either schedules a retry, dead-letters
    /// the job, or (after a cancel request) cancels it.
    pub fn failed(
        &self,
        attempt: u32,
        cause: FailureCause,
        duration_ms: Option<u64>,
        now_ms: u64,
        budget: RetryBudget,
    ) -> Result<Vec<Event>, Rejection> {
        if attempt == self.attempt && attempt <= self.ended_attempt {
            // This attempt's end is already in the log (a retried report, or a report racing
            // a lease expiry): nothing more to record.
            return Ok(Vec::new());
        }
        self.check_live()?;
        self.check_attempt(attempt)?;
        self.check_attempt_live("fail")?;
        let mut events: Vec<Event> = vec![
            JobFailed {
                job_id: self.id,
                attempt,
                cause: cause.clone(),
                duration_ms,
            }
            .into(),
        ];
        if self.cancel_requested || cause == FailureCause::Cancelled {
            events.push(
                JobCancelled {
                    job_id: self.id,
                    attempt: Some(attempt),
                }
                .into(),
            );
        } else if self.retries_after(attempt, &cause, budget) {
            events.push(
                JobRetryScheduled {
                    job_id: self.id,
                    next_attempt: attempt + 1,
                    not_before_ms: now_ms + backoff_ms(&self.spec.retry, attempt),
                }
                .into(),
            );
        } else {
            events.push(
                JobDeadLettered {
                    job_id: self.id,
                    attempts: attempt,
                    last_cause: cause,
                }
                .into(),
            );
        }
        Ok(events)
    }

    /// Whether attempt `attempt`, failing with `cause`, gets another one: an infrastructure
    /// loss draws on the scheduler's budget, anything else on the job's `max_attempts`.
    fn retries_after(&self, attempt: u32, cause: &FailureCause, budget: RetryBudget) -> bool {
        if is_infrastructure(cause) {
            return self.infra_losses < budget.max_infra_losses;
        }
        // Attempts so far that were not lost to infrastructure, this one included.
        let own = attempt.saturating_sub(self.infra_losses);
        retryable(cause, &self.spec.retry) && own < self.spec.retry.max_attempts
    }

    /// The placed attempt was not started within `lease_ms`: it is taken back, and the job
    /// queued again (an infrastructure loss) unless its budget is spent.
    pub fn placement_expired(
        &self,
        attempt: u32,
        now_ms: u64,
        lease_ms: u64,
        budget: RetryBudget,
    ) -> Result<Vec<Event>, Rejection> {
        self.check_live()?;
        self.check_attempt(attempt)?;
        if self.state != JobState::Placed || now_ms < self.placed_at_ms.saturating_add(lease_ms) {
            return Err(Rejection::WrongState {
                state: self.state.as_str(),
                action: "expire the placement of",
            });
        }
        let cause = FailureCause::PlacementExpired {
            node_id: self.node.clone().unwrap_or_default(),
            after_secs: lease_ms / 1000,
        };
        self.failed(attempt, cause, None, now_ms, budget)
    }

    /// Someone asked to cancel. Without a live attempt the job is cancelled at once; with one,
    /// the worker stops it and reports back, which cancels the job.
    pub fn cancel(
        &self,
        reason: Option<String>,
        by: Option<String>,
    ) -> Result<Vec<Event>, Rejection> {
        self.check_live()?;
        if self.cancel_requested {
            // Asking twice is not an error and records nothing new.
            return Ok(Vec::new());
        }
        let mut events: Vec<Event> = vec![
            JobCancelRequested {
                job_id: self.id,
                reason,
                by,
            }
            .into(),
        ];
        if self.state == JobState::Queued {
            events.push(
                JobCancelled {
                    job_id: self.id,
                    attempt: None,
                }
                .into(),
            );
        }
        Ok(events)
    }
}

/// Whether an attempt was lost to infrastructure rather than failed for a reason of its own:
/// these draw on the scheduler's [`RetryBudget`], never on the job's `max_attempts`.
pub fn is_infrastructure(cause: &FailureCause) -> bool {
    matches!(
        cause,
        FailureCause::NodeLost { .. } | FailureCause::PlacementExpired { .. }
    )
}

/// Whether a failure is worth another attempt: infrastructure failures always; failures of the
/// job itself only when its spec asks; a cancellation never.
pub fn retryable(cause: &FailureCause, policy: &RetryPolicy) -> bool {
    match cause {
        FailureCause::NodeLost { .. }
        | FailureCause::PlacementExpired { .. }
        | FailureCause::ExecutorError { .. }
        | FailureCause::ImagePullTimedOut { .. }
        | FailureCause::ImageUnavailable { .. } => true,
        FailureCause::NonZeroExit { .. }
        | FailureCause::OomKilled
        | FailureCause::Timeout { .. }
        | FailureCause::OutputsTooLarge { .. }
        | FailureCause::InputCorrupt { .. } => policy.retry_user_failures,
        FailureCause::Cancelled => false,
    }
}

/// Delay before attempt `failed_attempt + 1`: exponential from the initial backoff, capped.
pub fn backoff_ms(policy: &RetryPolicy, failed_attempt: u32) -> u64 {
    let exponent = failed_attempt.saturating_sub(1).min(32);
    policy
        .backoff_initial_ms
        .saturating_mul(1u64 << exponent)
        .min(policy.backoff_max_ms)
}

/// What is kept of an ended job: its final state and last attempt (enough to refuse what
/// comes late for it), not its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub state: JobState,
    pub attempt: u32,
}

/// The jobs the scheduler knows: live ones whole, ended ones as [`Ended`] only, so its memory
/// follows the live jobs, not the history (an ended job costs a few dozen bytes).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Jobs {
    live: HashMap<JobId, Job>,
    ended: HashMap<JobId, Ended>,
}

impl Jobs {
    /// A live job.
    pub fn get(&self, id: &JobId) -> Option<&Job> {
        self.live.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        self.live.get_mut(id)
    }

    /// An ended job.
    pub fn ended(&self, id: &JobId) -> Option<Ended> {
        self.ended.get(id).copied()
    }

    /// Any known job's state.
    pub fn state(&self, id: &JobId) -> Option<JobState> {
        self.live
            .get(id)
            .map(|j| j.state)
            .or_else(|| self.ended.get(id).map(|e| e.state))
    }

    pub(crate) fn insert(&mut self, job: Job) {
        self.ended.remove(&job.id);
        self.live.insert(job.id, job);
    }

    /// Keeps only the final state of a job that reached a terminal one.
    pub(crate) fn end(&mut self, id: &JobId) {
        if let Some(job) = self.live.remove(id) {
            self.ended.insert(
                *id,
                Ended {
                    state: job.state,
                    attempt: job.attempt,
                },
            );
        }
    }

    pub fn live(&self) -> impl Iterator<Item = &Job> {
        self.live.values()
    }

    /// How many ended jobs are remembered.
    pub fn ended_count(&self) -> usize {
        self.ended.len()
    }
}

#[cfg(test)]
mod tests {
    use gantry_events::event::{JobEvent, Resources};

    use super::*;

    fn spec(max_attempts: u32, retry_user_failures: bool) -> JobSpec {
        JobSpec {
            name: "t".into(),
            image: "busybox".into(),
            command: vec!["sh".into()],
            args: vec![],
            env: Default::default(),
            working_dir: None,
            resources: Resources::default(),
            timeout_secs: None,
            retry: RetryPolicy {
                max_attempts,
                backoff_initial_ms: 100,
                backoff_max_ms: 250,
                retry_user_failures,
            },
            priority: 0,
            queue: "default".into(),
            labels: Default::default(),
            network: Default::default(),
            idempotency_key: None,
            secrets: Default::default(),
            inputs: Vec::new(),
            artifact_ttl_secs: None,
        }
    }

    const BUDGET: RetryBudget = RetryBudget {
        max_infra_losses: 20,
    };

    /// Given these events, the job they build.
    fn given(spec: JobSpec, events: &[Event]) -> Job {
        let submitted = JobSubmitted {
            job_id: JobId::from_u128(1),
            spec: Box::new(spec),
            by: None,
            group: None,
            pipeline: None,
        };
        let mut job = Job::submitted(&submitted);
        for e in events {
            match e {
                Event::Job(e) => job.apply(e),
                other => panic!("not a job event: {other:?}"),
            }
        }
        job
    }

    fn types(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(Event::type_name).collect()
    }

    /// Runs a decision and folds its events in, as the system does after appending them.
    fn step(
        job: &mut Job,
        decide: impl FnOnce(&Job) -> Result<Vec<Event>, Rejection>,
    ) -> Vec<Event> {
        let events = decide(job).expect("accepted");
        for e in &events {
            if let Event::Job(e) = e {
                job.apply(e);
            }
        }
        events
    }

    #[test]
    fn happy_path() {
        let mut job = given(spec(3, false), &[]);
        assert!(job.placeable(0));
        step(&mut job, |j| j.place("n1", vec![], 0));
        assert_eq!((job.state, job.attempt), (JobState::Placed, 1));
        step(&mut job, |j| j.started(1, Some("c1".into()), Some(true)));
        assert_eq!(job.state, JobState::Running);
        let done = step(&mut job, |j| j.succeeded(1, 42));
        assert_eq!(types(&done), ["job.succeeded"]);
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(
            job.cancel(None, None),
            Err(Rejection::Terminal("succeeded"))
        );
    }

    #[test]
    fn executor_failures_retry_with_backoff_then_dead_letter() {
        let mut job = given(spec(3, false), &[]);
        let lost = FailureCause::ExecutorError {
            message: "engine hiccup".into(),
        };
        for attempt in 1..=2 {
            let now = u64::from(attempt) * 1_000_000;
            step(&mut job, |j| j.place("n1", vec![], now));
            let events = step(&mut job, |j| {
                j.failed(attempt, lost.clone(), None, now, BUDGET)
            });
            assert_eq!(types(&events), ["job.failed", "job.retry_scheduled"]);
            let Event::Job(JobEvent::RetryScheduled(r)) = &events[1] else {
                panic!()
            };
            assert_eq!(r.next_attempt, attempt + 1);
            // 100 ms, then 200 ms (doubling, capped at 250).
            assert_eq!(r.not_before_ms, now + 100 * u64::from(attempt));
            assert_eq!(job.state, JobState::Queued);
            assert!(!job.placeable(now), "backing off");
            assert!(matches!(
                job.place("n1", vec![], now),
                Err(Rejection::BackingOff { .. })
            ));
        }
        step(&mut job, |j| j.place("n1", vec![], 3_000_000));
        let events = step(&mut job, |j| j.failed(3, lost, None, 3_000_000, BUDGET));
        assert_eq!(types(&events), ["job.failed", "job.dead_lettered"]);
        assert_eq!(job.state, JobState::DeadLettered);
    }

    #[test]
    fn user_failures_retry_only_when_asked() {
        let exit = FailureCause::NonZeroExit { code: 1 };
        let mut strict = given(spec(3, false), &[]);
        step(&mut strict, |j| j.place("n", vec![], 0));
        let events = step(&mut strict, |j| {
            j.failed(1, exit.clone(), Some(5), 0, BUDGET)
        });
        assert_eq!(types(&events), ["job.failed", "job.dead_lettered"]);

        let mut lenient = given(spec(3, true), &[]);
        step(&mut lenient, |j| j.place("n", vec![], 0));
        let events = step(&mut lenient, |j| j.failed(1, exit, Some(5), 0, BUDGET));
        assert_eq!(types(&events), ["job.failed", "job.retry_scheduled"]);
        assert!(!retryable(
            &FailureCause::Cancelled,
            &RetryPolicy {
                retry_user_failures: true,
                ..RetryPolicy::default()
            }
        ));
    }

    #[test]
    fn reports_for_old_attempts_are_fenced() {
        let mut job = given(spec(3, false), &[]);
        step(&mut job, |j| j.place("n1", vec![], 0));
        step(&mut job, |j| {
            j.failed(
                1,
                FailureCause::ExecutorError {
                    message: "x".into(),
                },
                None,
                0,
                BUDGET,
            )
        });
        step(&mut job, |j| j.place("n2", vec![], 10_000));
        // Attempt 1's worker comes back late: nothing it says may touch attempt 2.
        let stale = Rejection::StaleAttempt {
            reported: 1,
            current: 2,
        };
        assert_eq!(job.started(1, None, None), Err(stale.clone()));
        assert_eq!(job.succeeded(1, 5), Err(stale.clone()));
        assert_eq!(
            job.failed(1, FailureCause::OomKilled, None, 0, BUDGET),
            Err(stale)
        );
        assert!(job.started(2, None, None).is_ok());
    }

    #[test]
    fn infrastructure_losses_never_use_up_the_users_attempts() {
        let budget = RetryBudget {
            max_infra_losses: 3,
        };
        let lost = FailureCause::NodeLost {
            node_id: "n1".into(),
        };
        // One attempt of its own, three lost to infrastructure: all three are retried.
        let mut job = given(spec(1, false), &[]);
        for attempt in 1..=3 {
            let now = u64::from(attempt) * 1_000_000;
            step(&mut job, |j| j.place("n1", vec![], now));
            let events = step(&mut job, |j| {
                j.failed(attempt, lost.clone(), None, now, budget)
            });
            assert_eq!(types(&events), ["job.failed", "job.retry_scheduled"]);
        }
        assert_eq!(job.infra_losses, 3);
        // The job's own failure still gets its one attempt's worth: dead-lettered, not retried.
        step(&mut job, |j| j.place("n1", vec![], 9_000_000));
        let exit = FailureCause::NonZeroExit { code: 2 };
        let events = step(&mut job, |j| {
            j.failed(4, exit.clone(), None, 9_000_000, budget)
        });
        assert_eq!(types(&events), ["job.failed", "job.dead_lettered"]);

        // With max_attempts 2 and user retries on, losses in between do not count.
        let mut job = given(spec(2, true), &[]);
        step(&mut job, |j| j.place("n1", vec![], 0));
        step(&mut job, |j| j.failed(1, lost.clone(), None, 0, budget));
        step(&mut job, |j| j.place("n1", vec![], 10_000_000));
        let events = step(&mut job, |j| {
            j.failed(2, exit.clone(), None, 10_000_000, budget)
        });
        assert_eq!(
            types(&events),
            ["job.failed", "job.retry_scheduled"],
            "first own failure"
        );
        step(&mut job, |j| j.place("n1", vec![], 20_000_000));
        let events = step(&mut job, |j| {
            j.failed(3, exit.clone(), None, 20_000_000, budget)
        });
        assert_eq!(
            types(&events),
            ["job.failed", "job.dead_lettered"],
            "second own failure"
        );

        // The infrastructure budget has its own end.
        let mut job = given(spec(5, false), &[]);
        for attempt in 1..=4 {
            let now = u64::from(attempt) * 1_000_000;
            step(&mut job, |j| j.place("n1", vec![], now));
            let events = step(&mut job, |j| {
                j.failed(attempt, lost.clone(), None, now, budget)
            });
            let want: &[&str] = if attempt < 4 {
                &["job.failed", "job.retry_scheduled"]
            } else {
                &["job.failed", "job.dead_lettered"]
            };
            assert_eq!(types(&events), want, "loss {attempt}");
        }
    }

    #[test]
    fn a_report_sent_twice_records_once() {
        let mut job = given(spec(3, true), &[]);
        step(&mut job, |j| j.place("n1", vec![], 0));
        assert_eq!(
            step(&mut job, |j| j.started(1, Some("h".into()), None)).len(),
            1
        );
        assert!(
            job.started(1, Some("h".into()), None)
                .expect("again")
                .is_empty()
        );
        let exit = FailureCause::NonZeroExit { code: 1 };
        let events = step(&mut job, |j| j.failed(1, exit.clone(), None, 0, BUDGET));
        assert_eq!(types(&events), ["job.failed", "job.retry_scheduled"]);
        // The same end again (its acknowledgement was lost): accepted, nothing recorded.
        assert_eq!(job.failed(1, exit.clone(), None, 0, BUDGET), Ok(Vec::new()));

        step(&mut job, |j| j.place("n1", vec![], 1_000_000));
        step(&mut job, |j| j.succeeded(2, 5));
        assert_eq!(job.succeeded(2, 5), Ok(Vec::new()));
        assert_eq!(job.failed(2, exit, None, 0, BUDGET), Ok(Vec::new()));
        assert_eq!(job.state, JobState::Succeeded);
    }

    #[test]
    fn a_placement_not_started_within_its_lease_is_taken_back() {
        let mut job = given(spec(1, false), &[]);
        let JobEvent::Placed(placed) = (match &job.place("n1", vec![], 0).expect("placed")[0] {
            Event::Job(e) => e.clone(),
            other => panic!("{other:?}"),
        }) else {
            panic!("not a placement")
        };
        job.apply_at(&JobEvent::Placed(placed), 5_000);
        assert!(matches!(
            job.placement_expired(1, 5_000 + 59_999, 60_000, BUDGET),
            Err(Rejection::WrongState { .. })
        ));
        let events = step(&mut job, |j| j.placement_expired(1, 65_000, 60_000, BUDGET));
        assert_eq!(types(&events), ["job.failed", "job.retry_scheduled"]);
        assert!(matches!(
            job.last_cause,
            Some(FailureCause::PlacementExpired { after_secs: 60, .. })
        ));
        // Its one attempt of its own is still there.
        assert_eq!(job.infra_losses, 1);
        // A start reported for the expired attempt is refused, so its worker stops it.
        assert_eq!(
            job.started(1, None, None),
            Err(Rejection::AttemptEnded { attempt: 1 })
        );
        step(&mut job, |j| j.place("n2", vec![], 10_000_000));
        assert!(matches!(
            job.started(1, None, None),
            Err(Rejection::StaleAttempt { .. })
        ));
    }

    #[test]
    fn cancel_while_queued_is_immediate() {
        let mut job = given(spec(3, false), &[]);
        let events = step(&mut job, |j| {
            j.cancel(Some("no longer needed".into()), None)
        });
        assert_eq!(types(&events), ["job.cancel_requested", "job.cancelled"]);
        assert_eq!(job.state, JobState::Cancelled);
    }

    #[test]
    fn cancel_while_running_goes_through_the_worker() {
        let mut job = given(spec(3, true), &[]);
        step(&mut job, |j| j.place("n1", vec![], 0));
        step(&mut job, |j| j.started(1, None, None));
        let events = step(&mut job, |j| j.cancel(None, None));
        assert_eq!(types(&events), ["job.cancel_requested"]);
        assert_eq!(job.state, JobState::Running);
        assert!(job.cancel(None, None).expect("idempotent").is_empty());
        // The worker stops the container; even a retryable failure now ends in cancelled.
        let events = step(&mut job, |j| {
            j.failed(1, FailureCause::Cancelled, Some(3), 0, BUDGET)
        });
        assert_eq!(types(&events), ["job.failed", "job.cancelled"]);
        assert_eq!(job.state, JobState::Cancelled);
    }

    #[test]
    fn cancel_during_backoff_is_immediate_and_blocks_placement() {
        let mut job = given(spec(3, false), &[]);
        step(&mut job, |j| j.place("n1", vec![], 0));
        step(&mut job, |j| {
            j.failed(
                1,
                FailureCause::NodeLost {
                    node_id: "n1".into(),
                },
                None,
                0,
                BUDGET,
            )
        });
        step(&mut job, |j| j.cancel(None, None));
        assert_eq!(job.state, JobState::Cancelled);
        assert!(!job.placeable(u64::MAX));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            retry_user_failures: false,
        };
        let delays: Vec<u64> = (1..=8).map(|a| backoff_ms(&p, a)).collect();
        assert_eq!(
            delays,
            [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(backoff_ms(&p, 1000), 60_000);
    }
}

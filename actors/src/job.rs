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

use gantry_events::Event;
use gantry_events::event::{
    FailureCause, JobCancelRequested, JobCancelled, JobDeadLettered, JobEvent, JobFailed, JobId,
    JobPlaced, JobRetryScheduled, JobSpec, JobStarted, JobSubmitted, JobSucceeded, RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// A retry's backoff has not passed yet; 409.
    #[error("job is backing off until {not_before_ms}")]
    BackingOff { not_before_ms: u64 },
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
            }
            JobEvent::Started(e) => {
                self.state = JobState::Running;
                self.handle = e.handle.clone();
            }
            JobEvent::Succeeded(_) => {
                self.state = JobState::Succeeded;
                self.release();
            }
            JobEvent::Failed(e) => {
                self.last_cause = Some(e.cause.clone());
                self.release();
            }
            JobEvent::RetryScheduled(e) => {
                self.state = JobState::Queued;
                self.not_before_ms = e.not_before_ms;
            }
            JobEvent::CancelRequested(_) => self.cancel_requested = true,
            JobEvent::Cancelled(_) => {
                self.state = JobState::Cancelled;
                self.release();
            }
            JobEvent::DeadLettered(_) => {
                self.state = JobState::DeadLettered;
                self.release();
            }
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
    pub fn started(&self, attempt: u32, handle: Option<String>) -> Result<Vec<Event>, Rejection> {
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
                job_id: self.id,
                attempt,
                node_id: self.node.clone().unwrap_or_default(),
                handle,
            }
            .into(),
        ])
    }

    /// The attempt exited with status 0.
    pub fn succeeded(&self, attempt: u32, duration_ms: u64) -> Result<Vec<Event>, Rejection> {
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
    ) -> Result<Vec<Event>, Rejection> {
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
        } else if retryable(&cause, &self.spec.retry) && attempt < self.spec.retry.max_attempts {
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

    /// Someone asked to cancel. Without a live attempt the job is cancelled at once; with one,
    /// the worker stops it and reports back, which cancels the job.
    pub fn cancel(&self, reason: Option<String>) -> Result<Vec<Event>, Rejection> {
        self.check_live()?;
        if self.cancel_requested {
            // Asking twice is not an error and records nothing new.
            return Ok(Vec::new());
        }
        let mut events: Vec<Event> = vec![
            JobCancelRequested {
                job_id: self.id,
                reason,
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

/// Whether a failure is worth another attempt: infrastructure failures always; failures of the
/// job itself only when its spec asks; a cancellation never.
pub fn retryable(cause: &FailureCause, policy: &RetryPolicy) -> bool {
    match cause {
        FailureCause::NodeLost { .. }
        | FailureCause::ExecutorError { .. }
        | FailureCause::ImageUnavailable { .. } => true,
        FailureCause::NonZeroExit { .. }
        | FailureCause::OomKilled
        | FailureCause::Timeout { .. } => policy.retry_user_failures,
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
        }
    }

    /// Given these events, the job they build.
    fn given(spec: JobSpec, events: &[Event]) -> Job {
        let submitted = JobSubmitted {
            job_id: JobId::from_u128(1),
            spec: Box::new(spec),
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
        step(&mut job, |j| j.started(1, Some("c1".into())));
        assert_eq!(job.state, JobState::Running);
        let done = step(&mut job, |j| j.succeeded(1, 42));
        assert_eq!(types(&done), ["job.succeeded"]);
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.cancel(None), Err(Rejection::Terminal("succeeded")));
    }

    #[test]
    fn infrastructure_failures_retry_with_backoff_then_dead_letter() {
        let mut job = given(spec(3, false), &[]);
        let lost = FailureCause::NodeLost {
            node_id: "n1".into(),
        };
        for attempt in 1..=2 {
            let now = u64::from(attempt) * 1_000_000;
            step(&mut job, |j| j.place("n1", vec![], now));
            let events = step(&mut job, |j| j.failed(attempt, lost.clone(), None, now));
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
        let events = step(&mut job, |j| j.failed(3, lost, None, 3_000_000));
        assert_eq!(types(&events), ["job.failed", "job.dead_lettered"]);
        assert_eq!(job.state, JobState::DeadLettered);
    }

    #[test]
    fn user_failures_retry_only_when_asked() {
        let exit = FailureCause::NonZeroExit { code: 1 };
        let mut strict = given(spec(3, false), &[]);
        step(&mut strict, |j| j.place("n", vec![], 0));
        let events = step(&mut strict, |j| j.failed(1, exit.clone(), Some(5), 0));
        assert_eq!(types(&events), ["job.failed", "job.dead_lettered"]);

        let mut lenient = given(spec(3, true), &[]);
        step(&mut lenient, |j| j.place("n", vec![], 0));
        let events = step(&mut lenient, |j| j.failed(1, exit, Some(5), 0));
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
            )
        });
        step(&mut job, |j| j.place("n2", vec![], 10_000));
        // Attempt 1's worker comes back late: nothing it says may touch attempt 2.
        let stale = Rejection::StaleAttempt {
            reported: 1,
            current: 2,
        };
        assert_eq!(job.started(1, None), Err(stale.clone()));
        assert_eq!(job.succeeded(1, 5), Err(stale.clone()));
        assert_eq!(job.failed(1, FailureCause::OomKilled, None, 0), Err(stale));
        assert!(job.started(2, None).is_ok());
    }

    #[test]
    fn cancel_while_queued_is_immediate() {
        let mut job = given(spec(3, false), &[]);
        let events = step(&mut job, |j| j.cancel(Some("no longer needed".into())));
        assert_eq!(types(&events), ["job.cancel_requested", "job.cancelled"]);
        assert_eq!(job.state, JobState::Cancelled);
    }

    #[test]
    fn cancel_while_running_goes_through_the_worker() {
        let mut job = given(spec(3, true), &[]);
        step(&mut job, |j| j.place("n1", vec![], 0));
        step(&mut job, |j| j.started(1, None));
        let events = step(&mut job, |j| j.cancel(None));
        assert_eq!(types(&events), ["job.cancel_requested"]);
        assert_eq!(job.state, JobState::Running);
        assert!(job.cancel(None).expect("idempotent").is_empty());
        // The worker stops the container; even a retryable failure now ends in cancelled.
        let events = step(&mut job, |j| {
            j.failed(1, FailureCause::Cancelled, Some(3), 0)
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
            )
        });
        step(&mut job, |j| j.cancel(None));
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

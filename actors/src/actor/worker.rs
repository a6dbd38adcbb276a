//! The Worker: runs the attempts placed on its node through an [`Executor`], enforces their
//! timeouts, stops them when their job is cancelled, and reports each start and end to the
//! Scheduler. It learns of placements and cancellations by following the log.
//!
//! On start it first picks up what the log says is live on its node: an attempt whose
//! container still runs is re-attached; one placed but never started is started; a running
//! one whose process is gone failed with the node (`node_lost`) and is retried by the usual
//! rules.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use gantry_events::event::{FailureCause, JobEvent, JobId};
use gantry_events::{Entry, Event, EventLog};
use serde::Serialize;
use tokio::sync::watch;

use crate::actor::scheduler::{AttemptReport, GetJob, LiveOn, Report, Scheduler};
use crate::executor::{Executor, Outcome, RunSpec};
use crate::job::{Job, JobState};

/// Counters tests look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    pub started: u64,
    pub finished: u64,
    pub reattached: u64,
    pub running: usize,
}

pub struct Worker {
    node: String,
    executor: Arc<dyn Executor>,
    scheduler: Addr<Scheduler>,
    log: Arc<dyn EventLog>,
    logs_dir: PathBuf,
    /// Live attempts and the switch that stops each one.
    running: HashMap<JobId, (u32, watch::Sender<bool>)>,
    stats: WorkerStats,
    /// Times the supervisor restarted this worker; each restart waits a little longer.
    restarts: u32,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("node", &self.node)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Worker {
    pub fn new(
        node: String,
        executor: Arc<dyn Executor>,
        scheduler: Addr<Scheduler>,
        log: Arc<dyn EventLog>,
        logs_dir: PathBuf,
    ) -> Worker {
        Worker {
            node,
            executor,
            scheduler,
            log,
            logs_dir,
            running: HashMap::new(),
            stats: WorkerStats::default(),
            restarts: 0,
        }
    }

    /// Where an attempt's output is kept.
    pub fn log_path(logs_dir: &std::path::Path, job: JobId, attempt: u32) -> PathBuf {
        logs_dir
            .join(job.to_string())
            .join(format!("attempt-{attempt}.log"))
    }

    fn launch(&mut self, job: &Job, attempt: u32, handle: Option<String>, ctx: &mut Context<Self>) {
        if self.running.contains_key(&job.id) {
            return;
        }
        let run = RunSpec {
            job_id: job.id,
            attempt,
            spec: job.spec.clone(),
            gpu_uuids: job.gpu_uuids.clone(),
            log_path: Worker::log_path(&self.logs_dir, job.id, attempt),
        };
        let (stop_tx, stop_rx) = watch::channel(job.cancel_requested);
        self.running.insert(job.id, (attempt, stop_tx));
        self.stats.running = self.running.len();
        if handle.is_some() {
            self.stats.reattached += 1;
        } else {
            self.stats.started += 1;
        }
        let executor = self.executor.clone();
        let scheduler = self.scheduler.clone();
        let job_id = job.id;
        ctx.spawn(
            run_attempt(executor, scheduler, run, handle, stop_rx)
                .into_actor(self)
                .map(move |(), act, _| {
                    act.running.remove(&job_id);
                    act.stats.finished += 1;
                    act.stats.running = act.running.len();
                }),
        );
    }

    fn on_event(&mut self, event: &Event, ctx: &mut Context<Self>) {
        let Event::Job(event) = event else { return };
        match event {
            JobEvent::Placed(p) if p.node_id == self.node => {
                // The scheduler holds the spec (and is never behind the log it appends to).
                let (id, attempt) = (p.job_id, p.attempt);
                ctx.spawn(self.scheduler.send(GetJob(id)).into_actor(self).map(
                    move |job, act, ctx| match job {
                        Ok(Some(job)) if job.attempt == attempt && !job.state.is_terminal() => {
                            act.launch(&job, attempt, None, ctx);
                        }
                        Ok(_) => {
                            tracing::debug!(job = %id, attempt, "placement already superseded")
                        }
                        Err(error) => tracing::error!(job = %id, %error, "scheduler unreachable"),
                    },
                ));
            }
            JobEvent::CancelRequested(c) => {
                if let Some((_, stop)) = self.running.get(&c.job_id) {
                    let _ = stop.send(true);
                }
            }
            _ => {}
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.restarts > 0 {
            ctx.wait(actix::fut::wrap_future(tokio::time::sleep(
                restart_backoff(self.restarts),
            )));
        }
        let scheduler = self.scheduler.clone();
        let log = self.log.clone();
        let executor = self.executor.clone();
        let node = self.node.clone();
        // Reconcile first, then follow the log from the head seen at that moment: nothing is
        // handled twice and nothing in between is missed.
        ctx.wait(
            async move {
                let head = log.head().await.map(|h| h.seq).unwrap_or(0);
                let live = scheduler.send(LiveOn(node)).await.unwrap_or_default();
                let mut found = Vec::new();
                for job in live {
                    let handle = executor.find(job.id, job.attempt).await;
                    found.push((job, handle));
                }
                let subscription = log.subscribe(head + 1).await;
                (found, subscription)
            }
            .into_actor(self)
            .map(|(found, subscription), act, ctx| {
                for (job, handle) in found {
                    match handle {
                        Some(handle) => {
                            tracing::info!(job = %job.id, attempt = job.attempt, %handle, "re-attached to a running attempt");
                            act.launch(&job, job.attempt, Some(handle), ctx);
                        }
                        // Placed but never started (or placed just now, before the
                        // subscription below begins): start it.
                        None if job.state == JobState::Placed => {
                            act.launch(&job, job.attempt, None, ctx);
                        }
                        None => {
                            tracing::warn!(job = %job.id, attempt = job.attempt, "attempt did not survive the restart");
                            act.scheduler.do_send(AttemptReport {
                                job_id: job.id,
                                attempt: job.attempt,
                                report: Report::Failed {
                                    cause: FailureCause::NodeLost {
                                        node_id: act.node.clone(),
                                    },
                                    duration_ms: None,
                                },
                            });
                        }
                    }
                }
                match subscription {
                    Ok(stream) => {
                        ctx.add_stream(stream);
                    }
                    Err(error) => {
                        tracing::error!(%error, "worker cannot follow the log; stopping");
                        ctx.stop();
                    }
                }
            }),
        );
    }
}

impl Supervised for Worker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The attempts' tasks died with the old context; their containers did not, and
        // `started` re-attaches them.
        self.restarts += 1;
        self.running.clear();
        tracing::warn!(node = %self.node, restarts = self.restarts, "worker restarting");
    }
}

/// 100 ms, doubling per restart, at most 30 s.
pub fn restart_backoff(restarts: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << restarts.min(9)).min(30_000))
}

impl StreamHandler<Result<Entry, gantry_events::Error>> for Worker {
    fn handle(&mut self, item: Result<Entry, gantry_events::Error>, ctx: &mut Context<Self>) {
        match item.map(|e| e.open()) {
            Ok(Ok(envelope)) => self.on_event(&envelope.event, ctx),
            Ok(Err(error)) => tracing::error!(%error, "worker skipped an undecodable entry"),
            Err(error) => tracing::error!(%error, "worker lost the log"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(node = %self.node, "log subscription ended; worker stops");
        ctx.stop();
    }
}

/// Runs one attempt to its end and reports it. Never panics; every path reports exactly one
/// end (or nothing, if the scheduler is gone).
async fn run_attempt(
    executor: Arc<dyn Executor>,
    scheduler: Addr<Scheduler>,
    run: RunSpec,
    handle: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let report = |report: Report| AttemptReport {
        job_id: run.job_id,
        attempt: run.attempt,
        report,
    };
    let began = Instant::now();
    let handle = match handle {
        Some(handle) => handle,
        None => match executor.start(&run).await {
            Ok(handle) => {
                let _ = scheduler
                    .send(report(Report::Started {
                        handle: Some(handle.clone()),
                    }))
                    .await;
                handle
            }
            Err(outcome) => {
                let _ = scheduler.send(report(failure(outcome, None))).await;
                return;
            }
        },
    };
    let timeout = run.spec.timeout_secs.map(Duration::from_secs);
    let wait = executor.wait(&handle, &run);
    tokio::pin!(wait);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t.saturating_sub(began.elapsed())).await,
            None => std::future::pending().await,
        }
    };
    let stopped = async {
        // Already cancelled, or cancelled while running.
        let _ = stop.wait_for(|s| *s).await;
    };
    let end = tokio::select! {
        outcome = &mut wait => Ok(outcome),
        () = deadline => Err(FailureCause::Timeout { after_secs: timeout.map_or(0, |t| t.as_secs()) }),
        () = stopped => Err(FailureCause::Cancelled),
    };
    let duration_ms = Some(began.elapsed().as_millis() as u64);
    let message = match end {
        Ok(outcome) => failure(outcome, duration_ms),
        Err(cause) => {
            executor.kill(&handle).await;
            // Let the executor collect the output and clean up.
            let _ = wait.await;
            Report::Failed { cause, duration_ms }
        }
    };
    let _ = scheduler.send(report(message)).await;
}

/// Turns an executor outcome into a report.
fn failure(outcome: Outcome, duration_ms: Option<u64>) -> Report {
    match outcome {
        Outcome::Exited {
            code: 0,
            oom_killed: false,
        } => Report::Succeeded {
            duration_ms: duration_ms.unwrap_or(0),
        },
        Outcome::Exited {
            oom_killed: true, ..
        } => Report::Failed {
            cause: FailureCause::OomKilled,
            duration_ms,
        },
        Outcome::Exited { code, .. } => Report::Failed {
            cause: FailureCause::NonZeroExit { code },
            duration_ms,
        },
        Outcome::ImageUnavailable { reason } => Report::Failed {
            cause: FailureCause::ImageUnavailable {
                image: String::new(),
                reason,
            },
            duration_ms,
        },
        Outcome::Failed { message } => Report::Failed {
            cause: FailureCause::ExecutorError { message },
            duration_ms,
        },
    }
}

/// Counters.
#[derive(Debug, Message)]
#[rtype(result = "WorkerStats")]
pub struct GetWorkerStats;

impl Handler<GetWorkerStats> for Worker {
    type Result = MessageResult<GetWorkerStats>;

    fn handle(&mut self, _: GetWorkerStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}

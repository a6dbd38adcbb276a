//! The Worker: runs the attempts placed on its node through an [`Executor`], enforces their
//! timeouts, stops them when their job is cancelled, and reports each start and end to the
//! Scheduler. It learns of placements and cancellations by following the log.
//!
//! On start it first reconciles what the log says is live on its node with what the executor
//! still has: an attempt whose container still runs is re-attached; one whose container exited
//! while gantry was down is reported with its real exit code and output; one placed but never
//! started is started; a running one whose process is gone was lost with the node
//! (`node_lost`, an infrastructure loss that does not use up the job's own attempts).
//!
//! Launch guard: an attempt is started only while the log has it `placed` on this node with
//! that attempt number, and if the scheduler refuses its start (its placement lease ran out,
//! it was cancelled), what was started is stopped at once.
//!
//! Reports are typed, serialisable messages ([`AttemptReport`]) sent until the scheduler
//! answers: a lost or failed delivery is retried with backoff, and the scheduler records each
//! (job, attempt) fact once however often it hears it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use gantry_events::event::{FailureCause, JobEvent, JobId, NodeEvent};
use gantry_events::{Entry, Event, EventLog};
use serde::Serialize;
use tokio::sync::watch;

use crate::actor::scheduler::{AttemptReport, CommandError, Report};
use crate::artifacts::{self, ArtifactStore, OutputLimits};
use crate::control::{Control, until_answered};
use crate::executor::{Executor, Found, Outcome, RunSpec};
use crate::job::{Job, JobState};

/// Counters tests look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    pub started: u64,
    pub finished: u64,
    pub reattached: u64,
    pub running: usize,
}

/// Builds the `node.joined` event a node records when it joins (again, after it was declared
/// lost), from what it has now.
pub type Rejoin = Arc<dyn Fn() -> Event + Send + Sync>;

pub struct Worker {
    node: String,
    executor: Arc<dyn Executor>,
    control: Arc<dyn Control>,
    log: Arc<dyn EventLog>,
    /// Records this node joining again when the log says it was lost.
    rejoin: Option<Rejoin>,
    /// A rejoin is being recorded.
    rejoining: bool,
    logs_dir: PathBuf,
    /// Live attempts and the switch that stops each one.
    /// Live attempts and the switch that stops each one, with the cause it ends with.
    running: HashMap<(JobId, u32), watch::Sender<Option<FailureCause>>>,
    stats: WorkerStats,
    /// Times the supervisor restarted this worker; each restart waits a little longer.
    restarts: u32,
    /// Where attempts' outputs are stored.
    artifacts: Option<Arc<dyn ArtifactStore>>,
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
        control: Arc<dyn Control>,
        log: Arc<dyn EventLog>,
        logs_dir: PathBuf,
    ) -> Worker {
        Worker {
            node,
            executor,
            control,
            log,
            rejoin: None,
            rejoining: false,
            logs_dir,
            running: HashMap::new(),
            stats: WorkerStats::default(),
            restarts: 0,
            artifacts: None,
        }
    }

    /// Stores each attempt's outputs (and its kept output) in `store` when it ends.
    pub fn with_artifacts(mut self, store: Option<Arc<dyn ArtifactStore>>) -> Worker {
        self.artifacts = store;
        self
    }

    /// When the log says this node was lost (it was partitioned away, or silent too long),
    /// record it joining again with what `rejoin` builds.
    pub fn rejoin_with(mut self, rejoin: Rejoin) -> Worker {
        self.rejoin = Some(rejoin);
        self
    }

    /// Where an attempt's output is kept.
    pub fn log_path(logs_dir: &std::path::Path, job: JobId, attempt: u32) -> PathBuf {
        logs_dir
            .join(job.to_string())
            .join(format!("attempt-{attempt}.log"))
    }

    /// Runs (or, with `found`, picks up again) the job's current attempt.
    fn launch(&mut self, job: &Job, found: Option<Found>, ctx: &mut Context<Self>) {
        let attempt = job.attempt;
        if self.running.contains_key(&(job.id, attempt)) {
            return;
        }
        // An older attempt of this job still here (its placement was taken back while it was
        // starting) is superseded: stop it.
        for ((id, older), stop) in &self.running {
            if *id == job.id && *older < attempt {
                let _ = stop.send(Some(FailureCause::Cancelled));
            }
        }
        let ours = job.node.as_deref() == Some(self.node.as_str());
        // The launch guard: a fresh start only for an attempt placed here and not started.
        let may_start = ours && job.state == JobState::Placed && !job.state.is_terminal();
        if found.is_none() && !may_start {
            tracing::debug!(job = %job.id, attempt, state = job.state.as_str(), "not placed here; not started");
            return;
        }
        let run = RunSpec {
            job_id: job.id,
            attempt,
            spec: job.spec.clone(),
            gpu_uuids: job.gpu_uuids.clone(),
            log_path: Worker::log_path(&self.logs_dir, job.id, attempt),
            started_at_ms: job.started_at_ms,
            secrets: Default::default(),
        };
        let recorded_start = job.state == JobState::Running;
        let (stop_tx, stop_rx) =
            watch::channel(job.cancel_requested.then_some(FailureCause::Cancelled));
        self.running.insert((job.id, attempt), stop_tx);
        self.stats.running = self.running.len();
        if found.is_some() {
            self.stats.reattached += 1;
        } else {
            self.stats.started += 1;
        }
        let runner = Runner {
            executor: self.executor.clone(),
            control: self.control.clone(),
            node: self.node.clone(),
            artifacts: self.artifacts.clone(),
        };
        let job_id = job.id;
        ctx.spawn(
            run_attempt(runner, run, found, recorded_start, stop_rx)
                .into_actor(self)
                .map(move |(), act, _| {
                    act.running.remove(&(job_id, attempt));
                    act.stats.finished += 1;
                    act.stats.running = act.running.len();
                }),
        );
    }

    fn on_event(&mut self, seq: u64, event: &Event, ctx: &mut Context<Self>) {
        let event = match event {
            Event::Job(event) => event,
            Event::Node(NodeEvent::Lost(lost)) if lost.node_id == self.node => {
                self.rejoin(ctx);
                return;
            }
            _ => return,
        };
        match event {
            JobEvent::Placed(p) if p.node_id == self.node => {
                // The spec comes from the control plane's state (embedded: the scheduler, which
                // is never behind the log it appends to; fleet: this node's replica of the log,
                // caught up to this entry). Asked until answered: a placement is never dropped
                // because the answer was late.
                let (id, attempt) = (p.job_id, p.attempt);
                let control = self.control.clone();
                ctx.spawn(
                    async move { until_answered("a placed job", None, || control.job(id, seq)).await }
                    .into_actor(self)
                    .map(move |job, act, ctx| match job {
                        Ok(Some(job)) if job.attempt == attempt => act.launch(&job, None, ctx),
                        _ => tracing::debug!(job = %id, attempt, "placement already superseded"),
                    }),
                );
            }
            JobEvent::Failed(f) => {
                // Taken back while it still runs here: its placement lease ran out, or the node
                // was declared lost (partitioned away) and the attempt re-placed elsewhere.
                // Stop it now; its own reports will be fenced.
                if let Some(stop) = self.running.get(&(f.job_id, f.attempt))
                    && !stop.is_closed()
                {
                    tracing::warn!(job = %f.job_id, attempt = f.attempt, cause = ?f.cause, "attempt ended in the log while it runs here; stopping it");
                    let _ = stop.send(Some(FailureCause::Cancelled));
                }
            }
            JobEvent::CancelRequested(c) => {
                for ((id, _), stop) in &self.running {
                    if *id == c.job_id {
                        let _ = stop.send(Some(FailureCause::Cancelled));
                    }
                }
            }
            _ => {}
        }
    }

    /// Records this node joining again, retried until the control plane answers.
    fn rejoin(&mut self, ctx: &mut Context<Self>) {
        let Some(rejoin) = self.rejoin.clone() else {
            return;
        };
        if self.rejoining {
            return;
        }
        self.rejoining = true;
        tracing::warn!(node = %self.node, "the log says this node was lost; joining again");
        let control = self.control.clone();
        ctx.spawn(
            async move {
                if let Err(error) =
                    until_answered("rejoin", None, || control.record(rejoin())).await
                {
                    tracing::error!(%error, "rejoin refused");
                }
            }
            .into_actor(self)
            .map(|(), act, _| act.rejoining = false),
        );
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
        let control = self.control.clone();
        let log = self.log.clone();
        let executor = self.executor.clone();
        let node = self.node.clone();
        // Reconcile first, then follow the log from the head seen at that moment: nothing is
        // handled twice and nothing in between is missed.
        ctx.wait(
            async move {
                let head = log.head().await.map(|h| h.seq).unwrap_or(0);
                // Asked until answered: reconciling against an empty answer would miss
                // attempts still running here.
                let live = until_answered("what is live on this node", None, || {
                    control.live_on(&node)
                })
                .await
                .unwrap_or_default();
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
                        Some(found) => {
                            tracing::info!(job = %job.id, attempt = job.attempt, handle = found.handle(), exited = matches!(found, Found::Exited(_)), "re-attached to an attempt");
                            act.launch(&job, Some(found), ctx);
                        }
                        // Placed but never started (or placed just now, before the
                        // subscription below begins): start it.
                        None if job.state == JobState::Placed => act.launch(&job, None, ctx),
                        None => {
                            tracing::warn!(job = %job.id, attempt = job.attempt, "attempt did not survive the restart");
                            let lost = AttemptReport {
                                node: act.node.clone(),
                                job_id: job.id,
                                attempt: job.attempt,
                                report: Report::Failed {
                                    cause: FailureCause::NodeLost {
                                        node_id: act.node.clone(),
                                    },
                                    duration_ms: None,
                                },
                            };
                            let control = act.control.clone();
                            ctx.spawn(
                                async move {
                                    let _ = report_until_recorded(&*control, lost).await;
                                }
                                .into_actor(act),
                            );
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
            Ok(Ok(envelope)) => self.on_event(envelope.seq, &envelope.event, ctx),
            Ok(Err(error)) => tracing::error!(%error, "worker skipped an undecodable entry"),
            Err(error) => tracing::error!(%error, "worker lost the log"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(node = %self.node, "log subscription ended; worker stops");
        ctx.stop();
    }
}

/// Sends a report until the control plane answers: `Ok` once the fact is in the log, `Err`
/// when it is refused (final: the attempt is no longer this node's current one). Lost
/// deliveries, an unreachable control plane and log errors are retried with backoff, without
/// end; the task dies with the worker.
pub async fn report_until_recorded(
    control: &dyn Control,
    report: AttemptReport,
) -> Result<(), CommandError> {
    until_answered("a report", None, || control.report(report.clone())).await
}

/// The instant an attempt's timeout counts from: its start as the log recorded it, or now for
/// an attempt not started yet (so an image pull counts too).
fn clock_start(started_at_ms: Option<u64>) -> Instant {
    let now = Instant::now();
    let Some(started) = started_at_ms else {
        return now;
    };
    let now_ms = gantry_events::record::now_ns() / 1_000_000;
    let elapsed = Duration::from_millis(now_ms.saturating_sub(started));
    now.checked_sub(elapsed).unwrap_or(now)
}

/// Runs one attempt to its end and reports it. Never panics; every path reports exactly one
/// end, retried until recorded, or stops the attempt when the scheduler refuses its start.
/// What one attempt's run uses of its node.
struct Runner {
    executor: Arc<dyn Executor>,
    control: Arc<dyn Control>,
    node: String,
    artifacts: Option<Arc<dyn ArtifactStore>>,
}

async fn run_attempt(
    runner: Runner,
    mut run: RunSpec,
    found: Option<Found>,
    recorded_start: bool,
    mut stop: watch::Receiver<Option<FailureCause>>,
) {
    let Runner {
        executor,
        control,
        node,
        artifacts,
    } = runner;
    if !run.spec.secrets.is_empty() {
        // Read for this attempt only, from the control plane that knows it is placed here.
        let asked = until_answered("the attempt's secrets", Some(SECRETS_PATIENCE), || {
            control.secrets(&node, run.job_id, run.attempt)
        })
        .await;
        match asked {
            Ok(values) => run.secrets = values,
            Err(error) if found.is_some() => {
                // It runs already; only the masking of its output is lost.
                tracing::warn!(job = %run.job_id, attempt = run.attempt, %error, "secrets unavailable; output of this attempt is not masked");
            }
            Err(error) => {
                let failed = AttemptReport {
                    node: node.clone(),
                    job_id: run.job_id,
                    attempt: run.attempt,
                    report: Report::Failed {
                        cause: FailureCause::ExecutorError {
                            message: format!("secrets: {}", error.fault().message),
                        },
                        duration_ms: None,
                    },
                };
                let _ = report_until_recorded(&*control, failed).await;
                return;
            }
        }
    }
    if found.is_none()
        && !run.spec.inputs.is_empty()
        && let Err(cause) = fetch_inputs(&*executor, artifacts.as_deref(), &run).await
    {
        tracing::warn!(job = %run.job_id, attempt = run.attempt, ?cause, "inputs not fetched; the job is not started");
        let failed = AttemptReport {
            node: node.clone(),
            job_id: run.job_id,
            attempt: run.attempt,
            report: Report::Failed {
                cause,
                duration_ms: None,
            },
        };
        let _ = report_until_recorded(&*control, failed).await;
        return;
    }
    let scheduler = &*control;
    let report = |report: Report| AttemptReport {
        node: node.clone(),
        job_id: run.job_id,
        attempt: run.attempt,
        report,
    };
    let began = clock_start(run.started_at_ms);
    let timeout = run.spec.timeout_secs.map(Duration::from_secs);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t.saturating_sub(began.elapsed())).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let timed_out = || FailureCause::Timeout {
        after_secs: timeout.map_or(0, |t| t.as_secs()),
    };
    let handle = match found {
        Some(found) => found.handle().to_owned(),
        None => {
            // Cancel and timeout also hold while the image is pulled and the container made.
            let start = executor.start(&run);
            let settled = tokio::select! {
                started = start => Ok(started),
                () = &mut deadline => Err(timed_out()),
                cause = stop.wait_for(Option::is_some) => Err(stop_cause(cause.ok().as_deref())),
            };
            match settled {
                Ok(Ok(handle)) => handle,
                Ok(Err(outcome)) => {
                    let failed = report(failure(outcome, None, &run));
                    let _ = report_until_recorded(scheduler, failed).await;
                    return;
                }
                Err(cause) => {
                    // Abandoned half way (pulling, creating, starting): remove what was made.
                    executor.discard(run.job_id, run.attempt).await;
                    let duration_ms = Some(began.elapsed().as_millis() as u64);
                    let failed = report(Report::Failed { cause, duration_ms });
                    let _ = report_until_recorded(scheduler, failed).await;
                    return;
                }
            }
        }
    };
    if !recorded_start {
        let image = executor.resolve(&run, &handle).await;
        let started = report(Report::Started {
            handle: Some(handle.clone()),
            limits_enforced: Some(executor.limits_enforced()),
            image,
        });
        if let Err(refusal) = report_until_recorded(scheduler, started).await {
            // The attempt was taken back or cancelled before its start was recorded.
            tracing::warn!(job = %run.job_id, attempt = run.attempt, %refusal, "start refused; stopping the attempt");
            executor.kill(&handle).await;
            let _ = executor.wait(&handle, &run).await;
            return;
        }
    }
    let wait = executor.wait(&handle, &run);
    tokio::pin!(wait);
    let stopped = async {
        // Already stopped (cancelled), or stopped while running.
        let cause = stop.wait_for(Option::is_some).await;
        stop_cause(cause.ok().as_deref())
    };
    let end = tokio::select! {
        outcome = &mut wait => Ok(outcome),
        () = &mut deadline => Err(timed_out()),
        cause = stopped => Err(cause),
    };
    let duration_ms = Some(began.elapsed().as_millis() as u64);
    let message = match end {
        Ok(outcome) => failure(outcome, duration_ms, &run),
        Err(cause) => {
            executor.kill(&handle).await;
            // Let the executor collect the output and clean up.
            let _ = wait.await;
            Report::Failed { cause, duration_ms }
        }
    };
    // Outputs are recorded before the end, on success and on failure alike.
    let over_limit =
        store_outputs(&*executor, artifacts.as_deref(), &run, &report, scheduler).await;
    let message = match (message, over_limit) {
        (Report::Succeeded { duration_ms }, Some(limit)) => Report::Failed {
            cause: FailureCause::OutputsTooLarge { limit },
            duration_ms: Some(duration_ms),
        },
        (message, _) => message,
    };
    // The attempt is over here; only its report remains. Its end reaching the log (which may
    // come before the report is answered) is then no reason to stop anything.
    drop(stop);
    let _ = report_until_recorded(scheduler, report(message)).await;
}

/// Fetches the attempt's inputs into the folder the executor shows the job, checking each
/// against the SHA-256 recorded at submission, then makes them read-only.
async fn fetch_inputs(
    executor: &dyn Executor,
    store: Option<&dyn ArtifactStore>,
    run: &RunSpec,
) -> Result<(), FailureCause> {
    let unavailable = |message: &str| FailureCause::ExecutorError {
        message: message.to_owned(),
    };
    let store = store.ok_or_else(|| unavailable("inputs: this node has no artifact store"))?;
    let dir = executor
        .inputs(run.job_id, run.attempt)
        .ok_or_else(|| unavailable("inputs: this executor cannot give jobs inputs"))?;
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(unavailable(&format!(
                "inputs: clearing {}: {e}",
                dir.display()
            )));
        }
    }
    for input in &run.spec.inputs {
        let path = dir.join(&input.path);
        artifacts::fetch(
            store,
            &input.location,
            input.size_bytes,
            input.sha256,
            &path,
        )
        .await
        .map_err(|reason| FailureCause::InputCorrupt {
            artifact: format!("{}/{}", input.from, input.artifact),
            reason,
        })?;
    }
    let readable = dir.clone();
    tokio::task::spawn_blocking(move || artifacts::make_read_only(&readable))
        .await
        .map_err(|e| unavailable(&e.to_string()))?
        .map_err(|e| unavailable(&format!("inputs: {e}")))
}

/// Stores the ended attempt's output files and its kept output, reporting each; returns the
/// limit the outputs went past, if any. A file that cannot be stored is logged and left out
/// (the attempt's end is still recorded). Without a store (a node that keeps no artifacts) the
/// output folder is only removed.
async fn store_outputs(
    executor: &dyn Executor,
    store: Option<&dyn ArtifactStore>,
    run: &RunSpec,
    report: &impl Fn(Report) -> AttemptReport,
    scheduler: &dyn Control,
) -> Option<String> {
    let mut files = Vec::new();
    let mut over_limit = None;
    let outputs = executor.outputs(run.job_id, run.attempt);
    if let (Some(dir), Some(_)) = (outputs.clone(), store) {
        let limits = OutputLimits::default();
        match tokio::task::spawn_blocking(move || artifacts::collect(&dir, &limits)).await {
            Ok(Ok(collected)) => {
                for (name, why) in &collected.skipped {
                    tracing::warn!(job = %run.job_id, attempt = run.attempt, %name, why, "output not collected");
                }
                over_limit = collected.over_limit;
                files = collected
                    .files
                    .into_iter()
                    .map(|(name, path, _)| (name, path))
                    .collect();
            }
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(error)) => {
                tracing::warn!(job = %run.job_id, attempt = run.attempt, %error, "outputs unreadable")
            }
            Err(error) => tracing::warn!(%error, "output collection died"),
        }
    }
    if store.is_some() && run.log_path.exists() {
        files.push((artifacts::OUTPUT_LOG_NAME.to_owned(), run.log_path.clone()));
    }
    for (name, path) in files {
        let Some(store) = store else { break };
        let stored = match store.put_file(&path).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(job = %run.job_id, attempt = run.attempt, %name, %error, "output not stored");
                continue;
            }
        };
        let content_type = Some(artifacts::media_type(&name).to_owned());
        let stored = report(Report::Stored {
            name,
            location: stored.location,
            sha256: stored.sha256,
            size_bytes: stored.size_bytes,
            content_type,
        });
        if report_until_recorded(scheduler, stored).await.is_err() {
            // Taken back: the attempt's end will be refused too.
            break;
        }
    }
    if let Some(dir) = executor.inputs(run.job_id, run.attempt)
        && !run.spec.inputs.is_empty()
    {
        let _ = tokio::task::spawn_blocking(move || {
            artifacts::make_writable(&dir)?;
            std::fs::remove_dir_all(&dir)
        })
        .await;
    }
    // Kept in the store now: the folder only takes the node's disk.
    if let Some(dir) = outputs
        && let Err(error) = tokio::fs::remove_dir_all(&dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), %error, "could not remove an attempt's outputs");
    }
    over_limit
}

/// The cause an attempt stopped by its switch ends with.
fn stop_cause(cause: Option<&Option<FailureCause>>) -> FailureCause {
    cause.cloned().flatten().unwrap_or(FailureCause::Cancelled)
}

/// Longest message (an engine's error, a pull failure) a report carries: an event must stay
/// far below the log's entry limit, or the report could never be recorded.
const MAX_MESSAGE_BYTES: usize = 4096;

/// How long a start waits for the control plane to hand over the attempt's secrets.
const SECRETS_PATIENCE: Duration = Duration::from_secs(60);

fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" …(cut)");
    }
    message
}

/// Turns an executor outcome into a report.
fn failure(outcome: Outcome, duration_ms: Option<u64>, run: &RunSpec) -> Report {
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
                image: run.spec.image.clone(),
                reason: bounded(reason),
            },
            duration_ms,
        },
        Outcome::PullTimedOut { after_secs } => Report::Failed {
            cause: FailureCause::ImagePullTimedOut {
                image: run.spec.image.clone(),
                after_secs,
            },
            duration_ms,
        },
        Outcome::Failed { message } => Report::Failed {
            cause: FailureCause::ExecutorError {
                message: bounded(message),
            },
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

/// Hands every running attempt back: each is stopped and reported failed as `node_lost` (an
/// infrastructure loss, so it runs again elsewhere without using the job's own retries). Sent
/// when a node leaves without letting its attempts finish.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct HandBack;

impl Handler<HandBack> for Worker {
    type Result = usize;

    fn handle(&mut self, _: HandBack, _: &mut Context<Self>) -> usize {
        let cause = FailureCause::NodeLost {
            node_id: self.node.clone(),
        };
        for stop in self.running.values() {
            let _ = stop.send(Some(cause.clone()));
        }
        self.running.len()
    }
}

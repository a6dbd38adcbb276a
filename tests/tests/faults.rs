//! Every job reaches exactly one end, once, when parts fail: a report the log does not take
//! is retried until it is recorded, a placement never started is taken back after its lease,
//! cancel and timeout hold while an attempt is still starting, and commands sharing an append
//! (group commit) are answered as the log decided. The actors run for real
//! (in-process, on the embedded log, with the local process executor); the faults come from
//! thin wrappers around the real log and executor.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::actor::scheduler::{GetJob, Submit};
use gantry_actors::actor::supervisor::{Actors, NodeOptions, Supervisor};
use gantry_actors::executor::{Executor, Found, Outcome, RunSpec};
use gantry_actors::job::{Job, JobState};
use gantry_actors::spec::{Limits, SubmitRequest};
use gantry_events::Event;
use gantry_events::event::{FailureCause, JobEvent, JobId};
use gantry_events::{Appended, EmbeddedLog, Entry, EventLog, Head, NewEvent, Subscription};
use gantry_nodes::executor::process::ProcessExecutor;
use gantry_nodes::gpu::FakeInventory;

/// The real log, except that the first `fail` appends holding an event of type `ty` fail
/// (as a full disk or a lost connection would), storing nothing.
struct FlakyLog {
    inner: EmbeddedLog,
    ty: &'static str,
    fail: AtomicUsize,
    /// Subscriptions that fail before one is given.
    fail_subscribe: AtomicUsize,
    /// Appends the log took.
    appends: AtomicUsize,
    /// Another store reads are answered from once set: the history rewritten under the
    /// running process.
    rewritten: Mutex<Option<Arc<EmbeddedLog>>>,
}

impl FlakyLog {
    /// An embedded log in `dir` that refuses the first `fail` appends holding a `ty` event and
    /// the first `fail_subscribe` subscriptions.
    async fn open(
        dir: &std::path::Path,
        ty: &'static str,
        fail: usize,
        fail_subscribe: usize,
    ) -> Arc<FlakyLog> {
        Arc::new(FlakyLog {
            inner: EmbeddedLog::open(dir).await.expect("log"),
            ty,
            fail: AtomicUsize::new(fail),
            fail_subscribe: AtomicUsize::new(fail_subscribe),
            appends: AtomicUsize::new(0),
            rewritten: Mutex::new(None),
        })
    }
}

impl EventLog for FlakyLog {
    fn append(
        &self,
        batch: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, gantry_events::Error>> {
        let hit = batch.iter().any(|e| e.event.type_name() == self.ty);
        if hit
            && self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return async { Err(gantry_events::Error::backend("appending", "injected fault")) }
                .boxed();
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(batch)
    }
    fn read(
        &self,
        from: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Entry>, gantry_events::Error>> {
        match lock(&self.rewritten).clone() {
            Some(other) => async move { other.read(from, max).await }.boxed(),
            None => self.inner.read(from, max),
        }
    }
    fn head(&self) -> BoxFuture<'_, Result<Head, gantry_events::Error>> {
        self.inner.head()
    }
    fn subscribe(&self, from: u64) -> BoxFuture<'_, Result<Subscription, gantry_events::Error>> {
        if self
            .fail_subscribe
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return async {
                Err(gantry_events::Error::backend(
                    "subscribing",
                    "injected fault",
                ))
            }
            .boxed();
        }
        self.inner.subscribe(from)
    }
}

/// The real process executor, with starts held back for chosen attempts, and a record of what
/// was discarded and killed.
struct SlowStart {
    inner: ProcessExecutor,
    delay: Duration,
    slow_attempts: HashSet<u32>,
    discarded: Mutex<Vec<(JobId, u32)>>,
    killed: Mutex<Vec<String>>,
    handles: Mutex<Vec<(u32, String)>>,
}

impl SlowStart {
    /// The process executor under `dir`, with the starts of `slow_attempts` held `delay`.
    fn new(dir: &std::path::Path, delay: Duration, slow_attempts: &[u32]) -> Arc<SlowStart> {
        Arc::new(SlowStart {
            inner: ProcessExecutor::new(dir.join("work")),
            delay,
            slow_attempts: slow_attempts.iter().copied().collect(),
            discarded: Mutex::default(),
            killed: Mutex::default(),
            handles: Mutex::default(),
        })
    }
}

impl Executor for SlowStart {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn sandboxed(&self) -> bool {
        false
    }
    fn start<'a>(&'a self, run: &'a RunSpec) -> BoxFuture<'a, Result<String, Outcome>> {
        async move {
            if self.slow_attempts.contains(&run.attempt) {
                tokio::time::sleep(self.delay).await;
            }
            let handle = self.inner.start(run).await?;
            lock(&self.handles).push((run.attempt, handle.clone()));
            Ok(handle)
        }
        .boxed()
    }
    fn wait<'a>(&'a self, handle: &'a str, run: &'a RunSpec) -> BoxFuture<'a, Outcome> {
        self.inner.wait(handle, run)
    }
    fn discard<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, ()> {
        lock(&self.discarded).push((job_id, attempt));
        self.inner.discard(job_id, attempt)
    }
    fn kill<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, ()> {
        lock(&self.killed).push(handle.to_owned());
        self.inner.kill(handle)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.ping()
    }
    fn find<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, Option<Found>> {
        self.inner.find(job_id, attempt)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn options(dir: &std::path::Path, limits: Limits) -> NodeOptions {
    NodeOptions {
        node_id: "n1".into(),
        hostname: "n1".into(),
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        labels: Default::default(),
        logs_dir: dir.join("logs"),
        limits,
        gpu_probe_every: Duration::from_secs(60),
        join_patience: Duration::from_secs(30),
        artifacts: None,
        snapshots: None,
        audit: gantry_actors::actor::auditor::AuditSettings {
            checkpoint_every: Duration::from_secs(60),
            ..Default::default()
        },
    }
}

/// The actors of node `n1` on this log and executor, with no GPUs.
async fn start_node(
    dir: &std::path::Path,
    log: Arc<dyn EventLog>,
    executor: Arc<dyn Executor>,
    limits: Limits,
) -> Actors {
    Supervisor::start(
        log,
        executor,
        Arc::new(FakeInventory::new(vec![])),
        options(dir, limits),
        None,
    )
    .await
    .expect("start")
}

fn request(command: &str) -> SubmitRequest {
    serde_json::from_value(serde_json::json!({
        "name": "fault",
        "image": "busybox",
        "command": ["sh", "-c", command],
        "resources": { "cpus": 0.5, "memory_bytes": 256u64 << 20 },
        "retry": { "max_attempts": 1 },
    }))
    .expect("request")
}

async fn submit(actors: &Actors, request: SubmitRequest) -> JobId {
    actors
        .scheduler
        .send(Submit {
            request,
            by: None,
            resolved: Default::default(),
        })
        .await
        .expect("scheduler")
        .expect("accepted")
        .job_id
}

/// Waits for the job to reach one of `want`: as the Scheduler holds it while it is live, and
/// folded from the log once it has ended (the Scheduler keeps only an ended job's final
/// state).
async fn wait_state(
    actors: &Actors,
    log: &dyn EventLog,
    id: JobId,
    want: &[JobState],
    within: Duration,
) -> Job {
    let deadline = Instant::now() + within;
    loop {
        let job = match actors.scheduler.send(GetJob(id)).await.expect("scheduler") {
            Some(job) => job,
            None => {
                let events = job_events(log, id).await;
                let Some(JobEvent::Submitted(submitted)) = events.first() else {
                    panic!("job {id} is in neither the scheduler nor the log");
                };
                let mut job = Job::submitted(submitted);
                for event in &events[1..] {
                    job.apply(event);
                }
                job
            }
        };
        if want.contains(&job.state) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job stayed {:?}, never {want:?}: {job:?}",
            job.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every envelope in the log, in order.
async fn envelopes(log: &dyn EventLog) -> Vec<gantry_events::Envelope> {
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let entries = log.read(next, 1024).await.expect("read");
        let Some(last) = entries.last().map(|e| e.seq) else {
            return out;
        };
        out.extend(entries.iter().map(|e| e.open().expect("decode")));
        next = last + 1;
    }
}

async fn job_events(log: &dyn EventLog, id: JobId) -> Vec<JobEvent> {
    envelopes(log)
        .await
        .into_iter()
        .filter_map(|env| match env.event {
            Event::Job(e) if e.job_id() == id => Some(e),
            _ => None,
        })
        .collect()
}

const TERMINAL: &[JobState] = &[
    JobState::Succeeded,
    JobState::DeadLettered,
    JobState::Cancelled,
];

/// The log refuses the first two appends of the job's success: the worker's report is retried
/// until the fact is recorded, instead of leaving the job `running` forever.
#[actix_rt::test]
async fn a_report_the_log_did_not_take_is_retried_until_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FlakyLog::open(dir.path(), "job.succeeded", 2, 0).await;
    let executor = Arc::new(ProcessExecutor::new(dir.path().join("work")));
    let actors = start_node(dir.path(), log.clone(), executor, Limits::default()).await;
    let id = submit(&actors, request("echo done")).await;
    let job = wait_state(&actors, &*log, id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(log.fail.load(Ordering::SeqCst), 0, "both faults were hit");
    let succeeded = job_events(&*log, id)
        .await
        .into_iter()
        .filter(|e| matches!(e, JobEvent::Succeeded(_)))
        .count();
    assert_eq!(succeeded, 1, "recorded exactly once");
}

/// A placement whose worker does not start it within the lease is taken back (an
/// infrastructure loss, not one of the job's own attempts); the late start is refused and
/// stopped, and the job runs again.
#[actix_rt::test]
async fn a_placement_not_started_within_its_lease_is_taken_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(EmbeddedLog::open(dir.path()).await.expect("log"));
    let executor = SlowStart::new(dir.path(), Duration::from_secs(4), &[1]);
    let limits = Limits {
        placement_lease_secs: 1,
        ..Limits::default()
    };
    let actors = start_node(dir.path(), log.clone(), executor.clone(), limits).await;
    // max_attempts 1: the lost placement must not use up the job's only attempt. The retry
    // waits 5 s, so attempt 1's start (4 s late) ends before attempt 2 exists: the scheduler
    // refuses that start, and the worker must stop what it started.
    let mut late = request("echo ran; sleep 1");
    late.retry = Some(
        serde_json::from_value(
            serde_json::json!({ "max_attempts": 1, "backoff_initial_ms": 5000 }),
        )
        .expect("retry"),
    );
    let id = submit(&actors, late).await;
    let job = wait_state(&actors, &*log, id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert!(job.attempt >= 2, "{job:?}");

    let events = job_events(&*log, id).await;
    let expired = events.iter().any(|e| {
        matches!(e, JobEvent::Failed(f) if f.attempt == 1
            && matches!(f.cause, FailureCause::PlacementExpired { .. }))
    });
    assert!(expired, "attempt 1 was taken back: {events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, JobEvent::Started(s) if s.attempt == 1)),
        "the expired attempt's start is never recorded: {events:?}"
    );
    // Attempt 1 is stopped: abandoned while still starting (the worker hears it was taken
    // back) and discarded, or — if its start came first — refused, and what it started killed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let first = lock(&executor.handles)
            .iter()
            .find(|(a, _)| *a == 1)
            .map(|(_, h)| h.clone());
        let stopped = match first {
            Some(handle) => lock(&executor.killed).contains(&handle),
            None => lock(&executor.discarded).contains(&(id, 1)),
        };
        if stopped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempt 1 was never stopped after it was taken back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancel and timeout take effect while an attempt is still starting (an image pull, a slow
/// engine): the start is abandoned, whatever it made is discarded, and the job ends.
#[actix_rt::test]
async fn cancel_and_timeout_take_effect_while_an_attempt_is_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(EmbeddedLog::open(dir.path()).await.expect("log"));
    let executor = SlowStart::new(dir.path(), Duration::from_secs(120), &[1]);
    let actors = start_node(dir.path(), log.clone(), executor.clone(), Limits::default()).await;

    let cancelled = submit(&actors, request("echo never")).await;
    wait_state(
        &actors,
        &*log,
        cancelled,
        &[JobState::Placed],
        Duration::from_secs(10),
    )
    .await;
    let began = Instant::now();
    actors
        .scheduler
        .send(gantry_actors::actor::scheduler::Cancel {
            job_id: cancelled,
            reason: None,
            by: None,
        })
        .await
        .expect("scheduler")
        .expect("cancel accepted");
    let job = wait_state(&actors, &*log, cancelled, TERMINAL, Duration::from_secs(10)).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert!(began.elapsed() < Duration::from_secs(10));

    let mut timed = request("echo never");
    timed.timeout_secs = Some(1);
    let timed = submit(&actors, timed).await;
    let job = wait_state(&actors, &*log, timed, TERMINAL, Duration::from_secs(15)).await;
    assert_eq!(job.state, JobState::DeadLettered, "{job:?}");
    assert_eq!(
        job.last_cause,
        Some(FailureCause::Timeout { after_secs: 1 }),
        "{job:?}"
    );
    let discarded = lock(&executor.discarded).clone();
    assert!(discarded.contains(&(cancelled, 1)), "{discarded:?}");
    assert!(discarded.contains(&(timed, 1)), "{discarded:?}");
    assert!(lock(&executor.handles).is_empty(), "nothing was started");
}

fn fake_gpu(n: u32) -> gantry_events::event::Gpu {
    gantry_events::event::Gpu {
        uuid: format!("GPU-fake-{n}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_bytes: 80 << 30,
        utilisation_pct: Some(40 + n as u8),
        driver_version: Some("580.65.06".into()),
    }
}

/// A node losing a GPU is recorded as an inventory change once its append succeeds (the log
/// refuses the first try); telemetry is sampled beside it and never logged.
#[actix_rt::test]
async fn a_lost_gpu_is_recorded_once_the_log_takes_it_and_telemetry_stays_out_of_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FlakyLog::open(dir.path(), "node.gpus_observed", 1, 0).await;
    let inventory = FakeInventory::new(vec![fake_gpu(1), fake_gpu(2)]);
    let mut node = options(dir.path(), Limits::default());
    node.gpu_probe_every = Duration::from_millis(100);
    let actors = Supervisor::start(
        log.clone(),
        Arc::new(ProcessExecutor::new(dir.path().join("work"))),
        Arc::new(inventory.clone()),
        node,
        None,
    )
    .await
    .expect("start");

    // Telemetry of both GPUs is there, with what the fake reports.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = actors.telemetry.node("n1");
        if samples.len() == 2 {
            assert_eq!(samples[0].utilisation_pct, Some(41));
            break;
        }
        assert!(Instant::now() < deadline, "no telemetry: {samples:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // GPU 2 falls off the bus.
    inventory.set(vec![fake_gpu(1)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let observed = loop {
        let observed = node_events(&*log, "node.gpus_observed").await;
        if !observed.is_empty() {
            break observed;
        }
        assert!(Instant::now() < deadline, "the lost GPU was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        log.fail.load(Ordering::SeqCst),
        0,
        "the first append was refused"
    );
    // A few more checks: the change is not recorded a second time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observed_later = node_events(&*log, "node.gpus_observed").await;
    assert_eq!(observed_later.len(), 1, "{observed_later:?}");
    let gantry_events::Event::Node(gantry_events::event::NodeEvent::GpusObserved(g)) = &observed[0]
    else {
        panic!("not a gpus_observed event")
    };
    assert_eq!(g.gpus.len(), 1);
    assert_eq!(g.gpus[0].uuid, "GPU-fake-1");
    assert_eq!(
        g.gpus[0].utilisation_pct, None,
        "telemetry stays out of the log"
    );
    let joined = node_events(&*log, "node.joined").await;
    let gantry_events::Event::Node(gantry_events::event::NodeEvent::Joined(j)) = &joined[0] else {
        panic!("not a node.joined event")
    };
    assert!(j.gpus.iter().all(|g| g.utilisation_pct.is_none()), "{j:?}");
    // Utilisation moves all the time: it never reaches the log on its own.
    inventory.set(vec![gantry_events::event::Gpu {
        utilisation_pct: Some(99),
        ..fake_gpu(1)
    }]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_events(&*log, "node.gpus_observed").await.len(), 1);
}

async fn node_events(log: &dyn EventLog, ty: &str) -> Vec<Event> {
    envelopes(log)
        .await
        .into_iter()
        .filter(|env| env.type_name == ty)
        .map(|env| env.event)
        .collect()
}

/// Appends one event (any will do) and returns where it landed.
async fn append_lost(log: &dyn EventLog, node: &str) -> u64 {
    let appended = log
        .append(vec![NewEvent::new(
            gantry_events::Source::new("n1", "test"),
            gantry_events::event::NodeLost {
                node_id: node.into(),
                reason: "test".into(),
            },
        )])
        .await
        .expect("append");
    appended[0].seq
}

/// The projector does not stop for good when following the log fails: it retries with backoff
/// and the views catch up.
#[actix_rt::test]
async fn the_projector_retries_until_it_follows_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FlakyLog::open(dir.path(), "none", 0, 3).await;
    let appended = append_lost(&*log, "n9").await;
    let views = gantry_projections::Projections::open(dir.path().join("views")).expect("views");
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    actix_rt::spawn(gantry_nodes::up::project(log.clone(), views.clone(), tx));
    // The first follow catches up before it subscribes: the views reach the head at once, and
    // must then keep following through three failed subscriptions.
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s >= appended))
        .await
        .expect("caught up")
        .expect("progress");
    let later = append_lost(&*log, "n10").await;
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| *s >= later))
        .await
        .expect("the projector follows again after failures")
        .expect("progress");
    // Every injected failure is used up by the retries, and what comes after still arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.fail_subscribe.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "the projector stopped retrying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = append_lost(&*log, "n11").await;
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| *s >= last))
        .await
        .expect("followed live")
        .expect("progress");
    assert_eq!(views.checkpoint().expect("cp").seq, last);
}

/// The launch guard: a worker hears of a placement on its node (a forged or stale
/// `job.placed`) for an attempt the log has on another node: it starts nothing.
#[actix_rt::test]
async fn a_worker_starts_an_attempt_only_while_it_is_placed_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(EmbeddedLog::open(dir.path()).await.expect("log"));
    let executor = SlowStart::new(dir.path(), Duration::ZERO, &[]);
    let actors = start_node(dir.path(), log.clone(), executor.clone(), Limits::default()).await;
    // A bigger node with no worker here: the job only fits there.
    actors
        .scheduler
        .send(gantry_actors::actor::scheduler::Record(
            gantry_events::event::NodeJoined {
                node_id: "n2".into(),
                hostname: "n2".into(),
                cpu_millis: 16_000,
                memory_bytes: 8 << 30,
                gpus: vec![],
                executor: "process".into(),
                labels: Default::default(),
            }
            .into(),
        ))
        .await
        .expect("scheduler")
        .expect("recorded");
    let mut big = request("echo wrong node");
    big.resources.cpus = Some(8.0);
    let id = submit(&actors, big).await;
    let job = wait_state(
        &actors,
        &*log,
        id,
        &[JobState::Placed],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(job.node.as_deref(), Some("n2"));
    // The same attempt "placed" on n1, written around the scheduler.
    log.append(vec![NewEvent::new(
        gantry_events::Source::new("n1", "forger"),
        gantry_events::event::JobPlaced {
            job_id: id,
            attempt: 1,
            node_id: "n1".into(),
            gpu_uuids: vec![],
        },
    )])
    .await
    .expect("append");
    // Give the worker time to hear of it (a negative check needs a wait).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        lock(&executor.handles).is_empty(),
        "n1 started an attempt placed on n2"
    );
    let job = actors
        .scheduler
        .send(GetJob(id))
        .await
        .expect("scheduler")
        .expect("job");
    assert_eq!(job.state, JobState::Placed);
}

/// Commands that arrive together share appends (group commit); when an append fails, every
/// command decided on top of it is answered with the error, nothing of them is in the log or
/// in the scheduler's state (rebuilt from the log), and the commands after it are recorded.
#[actix_rt::test]
async fn concurrent_submits_share_appends_and_a_failed_one_leaves_nothing_half_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FlakyLog::open(dir.path(), "job.submitted", 1, 0).await;
    let executor = Arc::new(ProcessExecutor::new(dir.path().join("work")));
    let actors = start_node(dir.path(), log.clone(), executor, Limits::default()).await;
    let appends_before = log.appends.load(Ordering::SeqCst);
    // Jobs that wait for a GPU this node does not have: only submissions are appended.
    let waiting = || {
        let mut r = request("true");
        r.resources.gpus = Some(gantry_actors::spec::GpuAsk {
            count: 1,
            ..Default::default()
        });
        r
    };
    let burst = || {
        let sends: Vec<_> = (0..100)
            .map(|_| {
                actors.scheduler.send(Submit {
                    request: waiting(),
                    by: None,
                    resolved: Default::default(),
                })
            })
            .collect();
        futures::future::join_all(sends)
    };
    // The first append fails: every command decided on top of it is refused.
    let mut answers: Vec<_> = burst()
        .await
        .into_iter()
        .map(|a| a.expect("scheduler"))
        .collect();
    let refused = answers.iter().filter(|a| a.is_err()).count();
    assert!(
        refused >= 1,
        "the injected fault refused the commands of its append"
    );
    // Then they are recorded, sharing appends.
    let appends_before = appends_before.max(log.appends.load(Ordering::SeqCst));
    let second: Vec<_> = burst()
        .await
        .into_iter()
        .map(|a| a.expect("scheduler"))
        .collect();
    assert!(second.iter().all(Result::is_ok), "{second:?}");
    let appends = log.appends.load(Ordering::SeqCst) - appends_before;
    assert!(
        appends <= 25,
        "100 concurrent submissions took {appends} appends: they should share them"
    );
    answers.extend(second);
    let accepted: Vec<JobId> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().map(|r| r.job_id))
        .collect();

    // The log holds exactly the accepted submissions, each once; each answered sequence holds
    // its job.
    let submitted: Vec<(u64, JobId)> = envelopes(&*log)
        .await
        .into_iter()
        .filter_map(|env| match env.event {
            Event::Job(JobEvent::Submitted(s)) => Some((env.seq, s.job_id)),
            _ => None,
        })
        .collect();
    let in_log: HashSet<JobId> = submitted.iter().map(|(_, id)| *id).collect();
    assert_eq!(in_log.len(), submitted.len(), "each once");
    assert_eq!(in_log, accepted.iter().copied().collect::<HashSet<_>>());
    for answer in answers.iter().flatten() {
        assert!(
            submitted.contains(&(answer.seq, answer.job_id)),
            "answered seq {} holds job {}",
            answer.seq,
            answer.job_id
        );
    }
    // The scheduler's state is the log's: nothing of the refused commands survived.
    for id in &accepted {
        let job = actors.scheduler.send(GetJob(*id)).await.expect("scheduler");
        assert!(job.is_some(), "accepted job {id} is known");
    }
    let ids: HashSet<JobId> = accepted.iter().copied().collect();
    let (stats, _) = actors
        .scheduler
        .send(gantry_actors::actor::scheduler::Stats)
        .await
        .expect("scheduler");
    assert_eq!(
        stats.queued,
        ids.len(),
        "queued jobs are exactly the recorded ones"
    );
}

/// A whole history rewritten with fresh hashes under the running process — every link holds,
/// so a pass over the chain alone finds nothing — is found by the Auditor's re-check: the
/// entry it verified last no longer has the hash it had. Then appends stop.
#[actix_rt::test]
async fn a_history_rewritten_under_the_running_process_is_found_by_the_recheck() {
    use gantry_actors::actor::auditor::{GetAudit, Recheck};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FlakyLog::open(dir.path(), "none", 0, 0).await;
    let executor = Arc::new(ProcessExecutor::new(dir.path().join("work")));
    let actors = start_node(dir.path(), log.clone(), executor, Limits::default()).await;
    let id = submit(&actors, request("echo done")).await;
    wait_state(&actors, &*log, id, TERMINAL, Duration::from_secs(30)).await;
    let head = log.head().await.expect("head").seq;
    let deadline = Instant::now() + Duration::from_secs(10);
    while actors
        .auditor
        .send(GetAudit)
        .await
        .expect("auditor")
        .verified_seq
        < head
    {
        assert!(Instant::now() < deadline, "the auditor never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same events sealed again into another store: a sound chain of the same length,
    // every hash different.
    let forged = EmbeddedLog::open(dir.path().join("forged"))
        .await
        .expect("log");
    let events: Vec<NewEvent> = envelopes(&*log)
        .await
        .into_iter()
        .take(head as usize)
        .map(|env| NewEvent::new(env.source, env.event))
        .collect();
    for chunk in events.chunks(500) {
        forged.append(chunk.to_vec()).await.expect("append");
    }
    let sound = gantry_events::verify_log(&forged, 1, None)
        .await
        .expect("read");
    assert_eq!(sound.expect("a sound chain").last_seq, head);
    *lock(&log.rewritten) = Some(Arc::new(forged));

    actors.auditor.send(Recheck).await.expect("auditor");
    let deadline = Instant::now() + Duration::from_secs(10);
    let broken = loop {
        if let Some(broken) = actors.auditor.send(GetAudit).await.expect("auditor").broken {
            break broken;
        }
        assert!(Instant::now() < deadline, "the re-check never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(broken.seq, head, "{broken}");
    assert!(
        matches!(broken.fault, gantry_events::Fault::Rewritten { .. }),
        "{broken}"
    );
    let refused = actors
        .scheduler
        .send(Submit {
            request: request("echo never"),
            by: None,
            resolved: Default::default(),
        })
        .await
        .expect("scheduler");
    match refused {
        Err(gantry_actors::actor::scheduler::CommandError::Unavailable(why)) => {
            assert!(why.contains("appends stopped"), "{why}")
        }
        other => panic!("a submission after the rewrite was not refused: {other:?}"),
    }
}

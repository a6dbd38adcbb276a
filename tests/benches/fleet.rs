//! Fleet benchmarks against one real nats-server and a real control plane process (`gantry up
//! --nats`, this build's binary), each printed beside a baseline measured in the same run:
//!
//! 1. jobs through the fleet: 50 simulated worker nodes (the real Worker, GpuProbe, replica and
//!    NATS client of a node, with an executor whose jobs exit at once) in this process; completed
//!    jobs/s and submit → node-starts latency (p50, p99). Baseline: the same messages and
//!    durable appends in raw NATS — per job a submit request, two acknowledged JetStream
//!    appends (submitted, placed), a placement message to one of 50 node tasks, and two report
//!    requests each answered after an acknowledged append (started, succeeded), the "scheduler"
//!    handling one message at a time as gantry's does.
//! 2. heartbeats of 1,000 simulated nodes (joined through the control plane): the control
//!    plane's CPU while they arrive. Baseline: a raw NATS subscriber thread receiving and
//!    decoding the same heartbeats.
//! 3. failover: leader `kill -9` → the next job placed, over 10 runs (median, max). Baseline:
//!    submit → placed on a healthy leader, measured just before each kill.
//!
//! Run: `cargo bench -p gantry-tests --bench fleet`. `GANTRY_BENCH_SCALE=0.2` shrinks it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use gantry_actors::actor::supervisor::{NodeOptions, start_node};
use gantry_actors::control::Control;
use gantry_actors::executor::{Executor, Found, Outcome, RunSpec};
use gantry_actors::spec::{Limits, SubmitRequest};
use gantry_events::event::{JobEvent, JobId, NodeJoined};
use gantry_events::{Event, EventLog};
use gantry_nodes::client::Client;
use gantry_nodes::gpu::FakeInventory;
use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
use gantry_nodes::nats::remote::Remote;
use gantry_nodes::nats::replica::Replica;
use gantry_nodes::nats::wire::{self, Heartbeat, WireEvent};
use gantry_nodes::nats::{NatsArgs, heartbeat};
use gantry_tests::services::NatsServer;

const NODES: usize = 50;
const IN_FLIGHT: usize = 64;

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(50)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A control plane process, killed on drop.
struct ControlPlane {
    child: Child,
    client: Client,
}

impl ControlPlane {
    fn start(nats: &str, data: &Path) -> ControlPlane {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
            .args(["up", "--nats", nats, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .env("GANTRY_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a control plane");
        let client = Client::new(&format!("http://127.0.0.1:{port}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get("/healthz").is_err() {
            assert!(Instant::now() < deadline, "control plane never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        ControlPlane { child, client }
    }

    fn leads(&self) -> bool {
        self.client
            .get("/readyz")
            .is_ok_and(|r| r["leading"] == true)
    }

    /// User + system CPU time the process has used.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        cpu_of(&stat)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a `/proc/…/stat` line, at 100 ticks per second.
fn cpu_of(stat: &str) -> Duration {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Jobs that exit at once; records when each attempt was handed to it.
#[derive(Debug, Default)]
struct NoopExecutor {
    started: Mutex<HashMap<JobId, Instant>>,
}

impl Executor for NoopExecutor {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn sandboxed(&self) -> bool {
        false
    }

    fn start<'a>(&'a self, run: &'a RunSpec) -> BoxFuture<'a, Result<String, Outcome>> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started.entry(run.job_id).or_insert_with(Instant::now);
        futures::future::ready(Ok(run.job_id.to_string())).boxed()
    }

    fn wait<'a>(&'a self, _: &'a str, _: &'a RunSpec) -> BoxFuture<'a, Outcome> {
        futures::future::ready(Outcome::Exited {
            code: 0,
            oom_killed: false,
        })
        .boxed()
    }

    fn discard<'a>(&'a self, _: JobId, _: u32) -> BoxFuture<'a, ()> {
        futures::future::ready(()).boxed()
    }

    fn kill<'a>(&'a self, _: &'a str) -> BoxFuture<'a, ()> {
        futures::future::ready(()).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn find<'a>(&'a self, _: JobId, _: u32) -> BoxFuture<'a, Option<Found>> {
        futures::future::ready(None).boxed()
    }
}

fn nats_args(url: &str) -> NatsArgs {
    NatsArgs {
        url: Some(url.to_owned()),
        ..NatsArgs::default()
    }
}

/// Starts `count` simulated worker nodes in this process, sharing one no-op executor.
async fn start_nodes(url: &str, count: usize, executor: Arc<NoopExecutor>, dir: &Path) {
    for i in 0..count {
        let name = format!("sim-{i:03}");
        let client = nats_args(url).connect(&name, None).await.expect("connect");
        let log: Arc<dyn EventLog> = Arc::new(
            JetStreamLog::open(client.clone(), JetStreamOptions::default(), false)
                .await
                .expect("log"),
        );
        let control: Arc<dyn Control> = Arc::new(Remote::node(
            client.clone(),
            name.clone(),
            Replica::follow(log.clone()),
        ));
        let actors = start_node(
            control,
            log,
            executor.clone(),
            Arc::new(FakeInventory::new(Vec::new())),
            NodeOptions {
                node_id: name.clone(),
                hostname: name.clone(),
                cpu_millis: 64_000,
                memory_bytes: 256 << 30,
                labels: Default::default(),
                logs_dir: dir.join(&name),
                limits: Limits::default(),
                gpu_probe_every: Duration::from_secs(3600),
                join_patience: Duration::from_secs(60),
                artifacts: None,
                snapshots: None,
                audit: gantry_actors::actor::auditor::AuditSettings {
                    checkpoint_every: Duration::from_secs(60),
                    ..Default::default()
                },
            },
            None,
        )
        .await
        .expect("node joins");
        actix_rt::spawn(heartbeat::send(
            client,
            name,
            actors.worker,
            actors.telemetry,
        ));
    }
}

fn request(i: usize) -> SubmitRequest {
    serde_json::from_value(serde_json::json!({
        "name": format!("bench-{i}"), "image": "noop", "command": ["true"],
        "resources": { "cpus": 0.01, "memory_bytes": 4u64 << 20 },
        "retry": { "max_attempts": 1 },
    }))
    .expect("request")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Part 1 through gantry: returns (jobs/s, latencies sorted).
async fn gantry_jobs(url: &str, jobs: usize, executor: Arc<NoopExecutor>) -> (f64, Vec<Duration>) {
    let client = nats_args(url)
        .connect("bench submitter", None)
        .await
        .expect("connect");
    let log = JetStreamLog::open(client.clone(), JetStreamOptions::default(), false)
        .await
        .expect("log");
    let head = log.head().await.expect("head").seq;
    let mut events = log.subscribe(head + 1).await.expect("subscribe");
    let gateway = Remote::gateway(client);
    let submitted: Arc<Mutex<HashMap<JobId, Instant>>> = Arc::default();
    let began = Instant::now();
    let submitting = {
        let submitted = submitted.clone();
        async move {
            futures::stream::iter(0..jobs)
                .map(|i| {
                    let (gateway, submitted) = (&gateway, submitted.clone());
                    async move {
                        let at = Instant::now();
                        let reply = gateway
                            .submit(request(i), None, Default::default())
                            .await
                            .expect("submit");
                        submitted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(reply.job_id, at);
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
        }
    };
    let finishing = async {
        let mut done = 0;
        while done < jobs {
            let entry = events.next().await.expect("log").expect("entry");
            if let Ok(envelope) = entry.open()
                && matches!(envelope.event, Event::Job(JobEvent::Succeeded(_)))
            {
                done += 1;
            }
        }
    };
    futures::join!(submitting, finishing);
    let rate = jobs as f64 / began.elapsed().as_secs_f64();
    let submitted = submitted.lock().unwrap_or_else(|e| e.into_inner());
    let started = executor.started.lock().unwrap_or_else(|e| e.into_inner());
    let mut latencies: Vec<Duration> = submitted
        .iter()
        .filter_map(|(id, at)| started.get(id).map(|s| s.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    (rate, latencies)
}

/// Part 1 in raw NATS: the same messages and appends, nothing of gantry's.
async fn raw_jobs(url: &str, jobs: usize) -> (f64, Vec<Duration>) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.events".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("stream");
    let append = |js: async_nats::jetstream::Context| async move {
        js.publish("bench.raw.events", vec![0u8; 300].into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    };
    // The "scheduler": one message at a time; every state change an acknowledged append.
    let mut submits = client.subscribe("bench.raw.submit").await.expect("sub");
    let mut reports = client.subscribe("bench.raw.report").await.expect("sub");
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let scheduler = {
        let (client, js) = (client.clone(), js.clone());
        tokio::spawn(async move {
            let mut next_node = 0;
            loop {
                tokio::select! {
                    Some(m) = submits.next() => {
                        append(js.clone()).await; // submitted
                        if let Some(reply) = m.reply { let _ = client.publish(reply, m.payload.clone()).await; }
                        append(js.clone()).await; // placed
                        let _ = client.publish(format!("bench.raw.node.{next_node}"), m.payload).await;
                        next_node = (next_node + 1) % NODES;
                    }
                    Some(m) = reports.next() => {
                        append(js.clone()).await; // started / succeeded
                        if let Some(reply) = m.reply { let _ = client.publish(reply, "ok".into()).await; }
                        if m.payload.as_ref() == b"end" { let _ = done_tx.send(()); }
                    }
                    else => return,
                }
            }
        })
    };
    let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut node_tasks = Vec::new();
    for k in 0..NODES {
        let mut placements = client
            .subscribe(format!("bench.raw.node.{k}"))
            .await
            .expect("sub");
        let (client, received) = (client.clone(), received.clone());
        node_tasks.push(tokio::spawn(async move {
            while let Some(m) = placements.next().await {
                let id = u64::from_le_bytes(m.payload[..8].try_into().unwrap_or([0; 8]));
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Instant::now());
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client.request("bench.raw.report", "start".into()).await;
                    let _ = client.request("bench.raw.report", "end".into()).await;
                });
            }
        }));
    }
    client.flush().await.expect("flush");
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let began = Instant::now();
    let submitting = {
        let (client, sent) = (client.clone(), sent.clone());
        async move {
            futures::stream::iter(0..jobs as u64)
                .map(|i| {
                    let (client, sent) = (client.clone(), sent.clone());
                    async move {
                        sent.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(i, Instant::now());
                        let mut payload = i.to_le_bytes().to_vec();
                        payload.resize(300, 0);
                        client
                            .request("bench.raw.submit", payload.into())
                            .await
                            .expect("submit");
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
        }
    };
    let finishing = async {
        for _ in 0..jobs {
            done_rx.recv().await.expect("done");
        }
    };
    futures::join!(submitting, finishing);
    let rate = jobs as f64 / began.elapsed().as_secs_f64();
    scheduler.abort();
    for task in node_tasks {
        task.abort();
    }
    let sent = sent.lock().unwrap_or_else(|e| e.into_inner());
    let received = received.lock().unwrap_or_else(|e| e.into_inner());
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| received.get(id).map(|r| r.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    (rate, latencies)
}

/// Part 2: joins `count` simulated nodes, then sends their heartbeats for `window`; returns
/// the control plane's CPU share and the raw subscriber's, in % of one core.
async fn heartbeats(url: &str, cp: &ControlPlane, count: usize, window: Duration) -> (f64, f64) {
    let client = async_nats::connect(url).await.expect("connect");
    for i in 0..count {
        let name = format!("hb-{i:04}");
        let joined: Event = NodeJoined {
            node_id: name.clone(),
            hostname: name.clone(),
            cpu_millis: 8_000,
            memory_bytes: 32 << 30,
            gpus: Vec::new(),
            executor: "noop".into(),
            labels: Default::default(),
        }
        .into();
        let body = wire::encode(&WireEvent::of(&joined).expect("event")).expect("encode");
        client
            .request(wire::record_subject(&name), body.into())
            .await
            .expect("join");
    }
    // The baseline: a raw subscriber thread of its own, receiving and decoding the same beats.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let raw_url = url.to_owned();
    let raw = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let client = async_nats::connect(raw_url).await.expect("connect");
            let mut beats = client.subscribe(wire::NODE_HEARTBEATS).await.expect("sub");
            client.flush().await.expect("flush");
            let _ = ready_tx.send(());
            let before =
                cpu_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default());
            let mut seen = 0u64;
            loop {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(100), beats.next()).await
                    && wire::decode::<Heartbeat>(&m.payload).is_ok()
                {
                    seen += 1;
                }
            }
            let after =
                cpu_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default());
            (after.saturating_sub(before), seen)
        })
    });
    ready_rx.recv().expect("raw subscriber ready");
    let beat = wire::encode(&Heartbeat {
        sent_ms: 0,
        running: 0,
        gpus: Vec::new(),
    })
    .expect("encode");
    let cpu_before = cp.cpu();
    let began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while began.elapsed() < window {
        // 1,000 nodes at one beat a second: a hundredth of them every 10 ms.
        let slot = (began.elapsed().as_millis() / 10) as usize % 100;
        for i in (slot..count).step_by(100) {
            let _ = client
                .publish(
                    wire::heartbeat_subject(&format!("hb-{i:04}")),
                    beat.clone().into(),
                )
                .await;
        }
        tick.tick().await;
    }
    let elapsed = began.elapsed();
    let cp_cpu = cp.cpu().saturating_sub(cpu_before);
    let _ = stop_tx.send(());
    let (raw_cpu, seen) = raw.join().expect("raw subscriber");
    println!(
        "  heartbeats sent over {:.1} s: about {:.0} (the raw subscriber saw {seen}, the {NODES} simulated worker nodes' own included)",
        elapsed.as_secs_f64(),
        count as f64 * elapsed.as_secs_f64()
    );
    // They leave cleanly (drained), so no control plane later declares them lost.
    let gateway = Remote::gateway(async_nats::connect(url).await.expect("connect"));
    for i in 0..count {
        let change = gantry_actors::actor::scheduler::NodeChange {
            node: format!("hb-{i:04}"),
            status: gantry_actors::placement::NodeStatus::Draining,
            reason: "benchmark over".into(),
            by: None,
        };
        gateway.change_node(change).await.expect("drain");
    }
    let share = |cpu: Duration| cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    (share(cp_cpu), share(raw_cpu))
}

/// Submits one job through `cp` (retrying while no leader answers) and waits until the log
/// has it placed; returns the time from `since`.
async fn placed_after(cp: &ControlPlane, log: &JetStreamLog, since: Instant) -> Duration {
    let head = log.head().await.expect("head").seq;
    let mut events = log.subscribe(head + 1).await.expect("subscribe");
    let id: JobId = loop {
        let body = serde_json::to_value(request(0)).expect("json");
        let client = cp.client.clone();
        let reply = tokio::task::spawn_blocking(move || client.post("/v1/jobs", &body))
            .await
            .expect("join");
        if let Ok(reply) = reply
            && let Some(id) = reply["id"].as_str().and_then(|s| s.parse().ok())
        {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let entry = events.next().await.expect("log").expect("entry");
        if let Ok(envelope) = entry.open()
            && let Event::Job(JobEvent::Placed(p)) = &envelope.event
            && p.job_id == id
        {
            return since.elapsed();
        }
    }
}

/// Part 3: `runs` leader deaths; returns (healthy submit→placed, death→placed), each sorted.
async fn failover(url: &str, dir: &Path, runs: usize) -> (Vec<Duration>, Vec<Duration>) {
    let client = nats_args(url)
        .connect("bench failover", None)
        .await
        .expect("connect");
    let log = JetStreamLog::open(client, JetStreamOptions::default(), false)
        .await
        .expect("log");
    let mut planes = vec![
        ControlPlane::start(url, &dir.join("fo-0")),
        ControlPlane::start(url, &dir.join("fo-1")),
    ];
    let (mut healthy, mut after_death) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(i) = planes.iter().position(ControlPlane::leads) {
                break i;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        healthy.push(placed_after(&planes[leader], &log, Instant::now()).await);
        let killed = Instant::now();
        drop(planes.remove(leader));
        after_death.push(placed_after(&planes[0], &log, killed).await);
        planes.push(ControlPlane::start(
            url,
            &dir.join(format!("fo-{}", run + 2)),
        ));
    }
    healthy.sort();
    after_death.sort();
    (healthy, after_death)
}

fn main() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = scale(5_000);
    let system = actix_rt::System::new();
    system.block_on(async {
        let cp = ControlPlane::start(&url, &dir.path().join("cp"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cp.leads() {
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let executor = Arc::new(NoopExecutor::default());
        start_nodes(&url, NODES, executor.clone(), dir.path()).await;

        println!("1. jobs through the fleet: {NODES} simulated nodes, {jobs} jobs, {IN_FLIGHT} submits in flight");
        let (raw_rate, raw_lat) = raw_jobs(&url, jobs).await;
        let (rate, lat) = gantry_jobs(&url, jobs, executor).await;
        println!(
            "  {:<40} {:>10} {:>16} {:>16}",
            "", "jobs/s", "submit→node p50", "submit→node p99"
        );
        for (name, r, l) in [("raw NATS, same messages and appends", raw_rate, &raw_lat), ("gantry", rate, &lat)] {
            println!(
                "  {name:<40} {r:>10.0} {:>13.2} ms {:>13.2} ms",
                ms(percentile(l, 0.5)),
                ms(percentile(l, 0.99))
            );
        }
        println!(
            "  gantry / raw: throughput {:.2}×, p50 latency {:.1}× (goal: ≥ 5,000 jobs/s)",
            rate / raw_rate,
            ms(percentile(&lat, 0.5)) / ms(percentile(&raw_lat, 0.5)).max(1e-9)
        );

        let count = scale(1_000).max(1_000);
        println!("2. heartbeats of {count} simulated nodes, one a second each");
        let (cp_share, raw_share) = heartbeats(&url, &cp, count, Duration::from_secs(15)).await;
        println!(
            "  control plane CPU {cp_share:.2}% of a core (goal < 5%); raw subscriber of the same beats {raw_share:.2}%"
        );
        drop(cp);

        let runs = 10;
        println!("3. failover: leader kill -9 → next placement, {runs} runs");
        let (healthy, after) = failover(&url, dir.path(), runs).await;
        println!(
            "  healthy leader, submit → placed:   median {:>8.1} ms   max {:>8.1} ms",
            ms(percentile(&healthy, 0.5)),
            ms(*healthy.last().unwrap_or(&Duration::ZERO))
        );
        println!(
            "  leader killed → next placed:        median {:>8.1} ms   max {:>8.1} ms",
            ms(percentile(&after, 0.5)),
            ms(*after.last().unwrap_or(&Duration::ZERO))
        );
    });
}

//! Submissions per second through the whole of `gantry up` (its own process, embedded, every
//! accepted submit durable before it is answered): 1, 8, 64 and 256 HTTP clients submitting
//! as fast as they are answered, with latency percentiles — beside the raw group-commit append
//! rate of the embedded log with as many concurrent writers each appending the same
//! `job.submitted` event, measured in the same run on the same disk.
//!
//! Run: `cargo bench -p gantry-tests --bench submit`. `GANTRY_BENCH_SECONDS` (default 5) per
//! step. Clients run on the same machine as gantry and share its cores.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gantry_events::event::{GpuRequest, JobSpec, JobSubmitted, Resources};
use gantry_events::{EmbeddedLog, EventLog, NewEvent, Source};
use gantry_nodes::client::Client;
use gantry_tests::process::{GantryProcess, cpu_of, percentile, rss_bytes};
use serde_json::json;

fn seconds() -> u64 {
    std::env::var("GANTRY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// A job that waits for a GPU the node does not have (so only the submission path is timed).
fn job(i: usize) -> serde_json::Value {
    json!({
        "name": format!("bench-{i}"), "image": "registry.example/train:1.0",
        "command": ["python", "train.py"], "env": { "EPOCHS": "10" },
        "resources": { "cpus": 1, "memory_bytes": 1u64 << 30, "gpus": { "count": 1 } },
        "labels": { "team": "bench" },
    })
}

/// The same job as the event gantry records for it.
fn submitted(i: usize) -> NewEvent {
    let spec = JobSpec {
        name: format!("bench-{i}"),
        image: "registry.example/train:1.0".into(),
        command: vec!["python".into(), "train.py".into()],
        args: Vec::new(),
        env: [("EPOCHS".to_owned(), "10".to_owned())].into(),
        working_dir: None,
        resources: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: GpuRequest {
                count: 1,
                ..Default::default()
            },
        },
        timeout_secs: None,
        retry: Default::default(),
        priority: 0,
        queue: "default".into(),
        labels: [("team".to_owned(), "bench".to_owned())].into(),
        network: Default::default(),
        idempotency_key: None,
        secrets: Default::default(),
        inputs: Vec::new(),
        artifact_ttl_secs: None,
    };
    NewEvent::new(
        Source::new("bench-node", "scheduler"),
        JobSubmitted {
            job_id: uuid::Uuid::now_v7(),
            spec: Box::new(spec),
            by: None,
            group: None,
            pipeline: None,
        },
    )
}

struct Step {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// `clients` threads submitting for `secs` seconds.
fn submit_step(base: &str, clients: usize, secs: u64) -> Step {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let client = Client::new(base);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut i = c * 10_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = client.post("/v1/jobs", &job(i));
                    if answer.is_ok() {
                        latencies.push(sent.elapsed());
                    }
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Step {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5).unwrap_or_default(),
        p99: percentile(&latencies, 0.99).unwrap_or_default(),
    }
}

/// `writers` tasks each appending one `job.submitted` at a time to the embedded log.
async fn raw_appends(writers: usize, secs: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(EmbeddedLog::open(dir.path()).await.expect("log"));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    log.append(vec![submitted(w * 10_000_000 + n)])
                        .await
                        .expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = seconds();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "submissions through `gantry up` (embedded, durable) vs raw group-commit appends, {secs} s each"
    );
    println!(
        "  {:>8} {:>12} {:>10} {:>10} {:>14} {:>8} {:>10} {:>9}",
        "clients",
        "submits/s",
        "p50 ms",
        "p99 ms",
        "raw appends/s",
        "ratio",
        "gantry CPU",
        "RSS MiB"
    );
    let gantry = GantryProcess::start(Path::new(env!("CARGO_BIN_EXE_gantry-node")), &[]);
    for clients in [1, 8, 64, 256] {
        let cpu = cpu_of(gantry.pid());
        let step = submit_step(&gantry.base, clients, secs);
        let cpu = (cpu_of(gantry.pid()) - cpu).as_secs_f64() / secs as f64;
        let raw = runtime.block_on(raw_appends(clients, secs));
        println!(
            "  {clients:>8} {:>12.0} {:>10.2} {:>10.2} {raw:>14.0} {:>7.2}× {:>9.0}% {:>9.1}",
            step.rate,
            ms(step.p50),
            ms(step.p99),
            step.rate / raw,
            cpu * 100.0,
            rss_bytes(gantry.pid()) as f64 / 1048576.0,
        );
    }
    println!(
        "  (goal: ≥ 20,000 accepted submits/s with 64 clients; log head after the run: {})",
        gantry.head()
    );
}

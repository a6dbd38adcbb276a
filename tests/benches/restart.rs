//! How long `gantry up` (its own process, embedded) takes to be ready again after `kill -9`,
//! as its log grows: 100,000, 1,000,000 and 5,000,000 events of job histories. Beside it, in
//! the same run on the same data dir, the same restart with the Scheduler's snapshot removed
//! (the baseline: the whole log replayed, as every start did before snapshots). And the
//! resident memory of the process, idle and at each size.
//!
//! Each size: the log is written straight into a fresh data dir; `gantry up` starts on it (the
//! views and the Scheduler's state built from the whole log, then a snapshot taken), is killed
//! with `kill -9`, and started again (timed: spawn → `/readyz` answers 200); killed again, its
//! snapshot deleted, started again (timed). Ready means the gateway answers, the Scheduler's
//! state is the log's and the views have caught up with the log.
//!
//! Run: `cargo bench -p gantry-tests --bench restart`. `GANTRY_BENCH_SCALE=0.1` shrinks the
//! sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_actors::spec::{GpuAsk, Limits, ResourceRequest, SubmitRequest};
use gantry_events::event::{JobPlaced, JobStarted, JobSubmitted, JobSucceeded, NodeJoined};
use gantry_events::{EmbeddedLog, Event, EventLog, NewEvent, Source};
use gantry_tests::process::{GantryProcess, rss_bytes};

fn scale() -> f64 {
    std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gantry-node"))
}

/// Every 100th job asks for a GPU no node has: it stays queued (live state to carry over).
fn request(i: usize) -> SubmitRequest {
    SubmitRequest {
        name: format!("train-{i}"),
        image: format!("registry.example.com/team-{}/train:{}", i % 7, i % 3),
        command: vec!["python".into(), "train.py".into(), format!("--seed={i}")],
        env: [("EPOCHS".to_owned(), "10".to_owned())].into(),
        labels: [("team".to_owned(), format!("t{}", i % 5))].into(),
        resources: ResourceRequest {
            cpus: Some(1.0),
            memory_bytes: Some(1 << 30),
            gpus: (i % 100 == 99).then_some(GpuAsk {
                count: 1,
                ..GpuAsk::default()
            }),
        },
        ..SubmitRequest::default()
    }
}

/// Writes `events` events of job histories (submitted, placed, started, succeeded; every
/// 100th job only submitted) into the log of the data dir `data`. Returns the jobs written.
async fn write_log(data: &Path, events: usize) -> usize {
    let log = EmbeddedLog::open(data).await.expect("log");
    let source = Source::new("bench", "scheduler");
    let node: Event = NodeJoined {
        node_id: "bench-node".into(),
        hostname: "bench".into(),
        cpu_millis: 64_000,
        memory_bytes: 256 << 30,
        gpus: Vec::new(),
        executor: "process".into(),
        labels: Default::default(),
    }
    .into();
    let mut batch = vec![NewEvent::new(source.clone(), node)];
    let (mut written, mut jobs) = (1, 0);
    while written < events {
        let spec =
            gantry_actors::spec::validate(&request(jobs), &Limits::default()).expect("valid");
        let job_id = uuid::Uuid::now_v7();
        let live = jobs % 100 == 99;
        jobs += 1;
        let mut history: Vec<Event> = vec![
            JobSubmitted {
                job_id,
                spec: Box::new(spec),
                by: None,
                group: None,
                pipeline: None,
            }
            .into(),
        ];
        if !live {
            history.push(
                JobPlaced {
                    job_id,
                    attempt: 1,
                    node_id: "bench-node".into(),
                    gpu_uuids: vec![],
                }
                .into(),
            );
            history.push(
                JobStarted {
                    image: None,
                    job_id,
                    attempt: 1,
                    node_id: "bench-node".into(),
                    handle: Some(format!("pid-{jobs}")),
                    limits_enforced: None,
                }
                .into(),
            );
            history.push(
                JobSucceeded {
                    job_id,
                    attempt: 1,
                    duration_ms: 1234,
                }
                .into(),
            );
        }
        for event in history {
            batch.push(NewEvent::new(source.clone(), event));
            written += 1;
        }
        if batch.len() >= 900 {
            log.append(std::mem::take(&mut batch))
                .await
                .expect("append");
        }
    }
    if !batch.is_empty() {
        log.append(batch).await.expect("append");
    }
    log.close().await.expect("close");
    jobs
}

fn snapshot_file(data: &Path) -> std::path::PathBuf {
    data.join("snapshots").join("scheduler.snapshot")
}

/// The Scheduler's own account of its rebuild in the log lines: milliseconds.
fn rebuild_ms(log_file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log_file).ok()?;
    text.lines()
        .filter(|l| l.contains("scheduler rebuilt from the log"))
        .filter_map(|l| l.split("elapsed_ms=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .last()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Waits for the process to settle (a snapshot written, views flushed) and reads its RSS.
fn settle_rss(gantry: &GantryProcess) -> u64 {
    std::thread::sleep(Duration::from_secs(2));
    rss_bytes(gantry.pid())
}

fn main() {
    println!(
        "gantry restart after kill -9 ({} build, this machine: {} CPUs)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    {
        let dir = tempfile::tempdir().expect("tempdir");
        let gantry = GantryProcess::start_in(bin(), &dir.path().join("data"), &[], None);
        println!(
            "\nidle, empty log: ready in {:.0} ms, RSS {:.1} MiB",
            gantry.ready_after.as_secs_f64() * 1e3,
            mib(settle_rss(&gantry))
        );
    }

    println!(
        "\n{:>10} {:>9} | {:>12} {:>10} | {:>12} {:>11} | {:>11} {:>9} | {:>9} {:>9}",
        "events",
        "jobs",
        "first start",
        "RSS",
        "kill -9 →",
        "scheduler",
        "no snapshot",
        "scheduler",
        "ratio",
        "RSS"
    );
    println!(
        "{:>10} {:>9} | {:>12} {:>10} | {:>12} {:>11} | {:>11} {:>9} | {:>9} {:>9}",
        "", "", "(build all)", "", "ready", "rebuild", "(baseline)", "rebuild", "", "after"
    );
    for events in [100_000usize, 1_000_000, 5_000_000] {
        let events = ((events as f64 * scale()) as usize).max(1_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let written = Instant::now();
        let jobs = runtime.block_on(write_log(&data, events));
        let write_s = written.elapsed().as_secs_f64();
        let log_file = dir.path().join("gantry.log");
        // The default interval (100,000 events), smaller only when the bench is scaled down.
        let every = (events as u64 / 2).min(100_000).to_string();
        let args = ["--snapshot-every", every.as_str()];

        // First start: everything built from the whole log; then the snapshot is taken.
        let gantry = GantryProcess::start_in(bin(), &data, &args, Some(&log_file));
        let first = gantry.ready_after;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !snapshot_file(&data).exists() {
            assert!(Instant::now() < deadline, "no snapshot was taken");
            std::thread::sleep(Duration::from_millis(100));
        }
        let rss_first = settle_rss(&gantry);
        gantry.kill9();

        // kill -9, then a start from the snapshot and the log after it.
        let gantry = GantryProcess::start_in(bin(), &data, &args, Some(&log_file));
        let with_snapshot = gantry.ready_after;
        let rebuild_with = rebuild_ms(&log_file);
        let rss_after = settle_rss(&gantry);
        gantry.kill9();

        // The same start without the snapshot: the whole log replayed.
        std::fs::remove_file(snapshot_file(&data)).expect("remove the snapshot");
        let gantry = GantryProcess::start_in(bin(), &data, &args, Some(&log_file));
        let without = gantry.ready_after;
        let rebuild_without = rebuild_ms(&log_file);
        gantry.kill9();

        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        let opt = |v: Option<u64>| v.map_or("?".into(), |v| format!("{v} ms"));
        println!(
            "{events:>10} {jobs:>9} | {:>12} {:>6.1} MiB | {:>12} {:>11} | {:>11} {:>9} | {:>8.2}x {:>5.1} MiB",
            ms(first),
            mib(rss_first),
            ms(with_snapshot),
            opt(rebuild_with),
            ms(without),
            opt(rebuild_without),
            without.as_secs_f64() / with_snapshot.as_secs_f64(),
            mib(rss_after),
        );
        println!(
            "{:>10} (log written in {write_s:.1} s, {:.0} MiB on disk)",
            "",
            mib(std::fs::metadata(data.join("events.log")).map_or(0, |m| m.len()))
        );
    }
    println!(
        "\ngoal: ready < 2 s after kill -9 at 1,000,000 events, flat as the log grows \
         (100k → 1M → 5M)"
    );
}

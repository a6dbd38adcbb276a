//! System benchmarks, each printed next to a baseline measured in the same run:
//!
//! 1. scheduling: placements/s of the in-memory `World` alone (no log, no actor) at 100, 1,000
//!    and 10,000 simulated nodes, against a linear scan over every node, to show a placement's
//!    cost does not grow with the fleet (the real Scheduler, appends included, is measured by
//!    `benches/placement.rs`);
//! 2. submit → container exited, end to end through the gateway, against a raw bollard
//!    create/start/wait/remove of the same container (needs Docker and the test image);
//! 3. projection rebuild rate from a cold page cache, against the same work written plainly
//!    (decode, fold one record per job, write to sled in batches) and against the decode and
//!    fold alone.
//!
//! Reads with 100k and 1M jobs in the views are in `benches/reads.rs`, placement through the
//! real Scheduler in `benches/placement.rs`.
//!
//! Run: `cargo bench -p gantry-tests --bench system`. `GANTRY_BENCH_SCALE=0.1` shrinks it.

use std::time::{Duration, Instant};

use gantry_actors::spec::{Limits, SubmitRequest};
use gantry_actors::world::{Submitted, World};
use gantry_events::event::{Gpu, NodeJoined, Resources};
use gantry_events::{EmbeddedLog, Event, EventLog};
use gantry_nodes::up::ExecutorChoice;
use gantry_projections::Projections;
use gantry_tests::system::Gantry;
use serde_json::json;

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(100)
}

fn row(name: &str, n: usize, elapsed: Duration) -> f64 {
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "  {name:<62} {n:>8} {:>10.1} ms {rate:>12.0} /s",
        elapsed.as_secs_f64() * 1e3
    );
    rate
}

fn node(i: usize) -> Event {
    NodeJoined {
        node_id: format!("node-{i:05}"),
        hostname: format!("host-{i}"),
        cpu_millis: 64_000,
        memory_bytes: 256 << 30,
        gpus: Vec::<Gpu>::new(),
        executor: "docker".into(),
        labels: Default::default(),
    }
    .into()
}

fn request(i: usize) -> SubmitRequest {
    SubmitRequest {
        name: format!("job-{i}"),
        image: "registry.example.com/train:1".into(),
        command: vec!["train".into()],
        ..SubmitRequest::default()
    }
}

/// Places `jobs` one-CPU jobs on `nodes` nodes with the scheduler's own logic.
fn schedule(nodes: usize, jobs: usize) -> (usize, Duration) {
    let mut world = World::new(Limits::default());
    let mut seq = 0;
    for i in 0..nodes {
        seq += 1;
        world.apply(seq, 0, &node(i));
    }
    for i in 0..jobs {
        let Ok(Submitted::New { events, .. }) =
            world.decide_submit(&request(i), None, &Default::default())
        else {
            panic!("valid")
        };
        for e in events {
            seq += 1;
            world.apply(seq, 0, &e);
        }
    }
    let start = Instant::now();
    let mut placed = 0;
    loop {
        let round = world.decide_placements(0, 1000);
        if round.is_empty() {
            break;
        }
        placed += round.len();
        for e in round {
            seq += 1;
            world.apply(seq, 0, &e);
        }
    }
    (placed, start.elapsed())
}

/// The same placements by scanning every node for the best fit.
fn linear_scan(nodes: usize, jobs: usize) -> (usize, Duration) {
    let mut free: Vec<(u32, u64)> = vec![(64_000, 256 << 30); nodes];
    let need = Resources {
        cpu_millis: 1000,
        memory_bytes: 512 << 20,
        gpus: Default::default(),
    };
    let start = Instant::now();
    let mut placed = 0;
    for _ in 0..jobs {
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, (c, m))| *c >= need.cpu_millis && *m >= need.memory_bytes)
            .min_by_key(|(_, (c, _))| *c)
            .map(|(i, _)| i);
        if let Some(i) = best {
            free[i].0 -= need.cpu_millis;
            free[i].1 -= need.memory_bytes;
            placed += 1;
        }
    }
    (placed, start.elapsed())
}

fn bench_scheduling() {
    println!("\n1. scheduling throughput (one-CPU jobs, 64-CPU nodes, no executor)");
    let jobs = scale(20_000).min(6_400);
    for nodes in [100, 1_000, 10_000] {
        let (placed, t) = schedule(nodes, jobs);
        let ours = row(&format!("gantry placement, {nodes} nodes"), placed, t);
        let (placed_scan, t_scan) = linear_scan(nodes, jobs);
        let scan = row(
            &format!("linear scan of every node (baseline), {nodes} nodes"),
            placed_scan,
            t_scan,
        );
        println!(
            "  => {:.0} ns per placement ({:.1}x the linear scan); target >= 20,000 /s at 1,000 nodes",
            1e9 / ours,
            ours / scan
        );
    }
}

fn bench_end_to_end() {
    println!(
        "\n2. submit -> container exited, through the gateway vs raw bollard (median of runs)"
    );
    let image =
        std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let docker = runtime.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults()
            .ok()?
            .negotiate_version()
            .await
            .ok()?;
        docker.inspect_image(&image).await.ok()?;
        Some(docker)
    });
    let Some(docker) = docker else {
        println!("  (skipped: no Docker engine or no test image {image})");
        return;
    };
    let runs = 15;
    let mut raw = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        runtime.block_on(async {
            use futures::StreamExt;
            // Exactly the container gantry creates for the same job, sandbox included.
            let spec = gantry_actors::spec::validate(
                &SubmitRequest {
                    name: "raw".into(),
                    image: image.clone(),
                    command: vec!["sh".into(), "-c".into(), "true".into()],
                    resources: gantry_actors::spec::ResourceRequest {
                        cpus: Some(0.1),
                        memory_bytes: Some(32 << 20),
                        gpus: None,
                    },
                    ..SubmitRequest::default()
                },
                &Limits::default(),
            )
            .expect("valid");
            let run = gantry_actors::executor::RunSpec {
                job_id: uuid::Uuid::now_v7(),
                attempt: 1,
                spec,
                gpu_uuids: vec![],
                log_path: std::env::temp_dir().join("unused.log"),
                started_at_ms: None,
                secrets: Default::default(),
            };
            let body = gantry_nodes::executor::docker::DockerExecutor::config(&run);
            let created = docker.create_container(None, body).await.expect("create");
            docker
                .start_container(&created.id, None)
                .await
                .expect("start");
            let _ = docker.wait_container(&created.id, None).next().await;
            docker
                .remove_container(
                    &created.id,
                    Some(bollard::query_parameters::RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
                .expect("remove");
        });
        raw.push(start.elapsed());
    }
    let gantry = Gantry::start(ExecutorChoice::Docker);
    let mut ours = Vec::new();
    for i in 0..runs {
        let start = Instant::now();
        let id = gantry.submit(json!({
            "name": format!("e2e-{i}"), "image": image, "command": ["sh", "-c", "true"],
            "resources": { "cpus": 0.1, "memory_bytes": 32u64 << 20 },
        }));
        loop {
            let job = gantry.job(&id);
            if job["state"] == "succeeded" {
                break;
            }
            assert_ne!(job["state"], "dead_lettered", "{job}");
            std::thread::sleep(Duration::from_millis(2));
        }
        ours.push(start.elapsed());
    }
    raw.sort();
    ours.sort();
    let (r, o) = (raw[runs / 2], ours[runs / 2]);
    println!(
        "  raw bollard create/start/wait/remove, same container (baseline) median {:>8.1} ms",
        r.as_secs_f64() * 1e3
    );
    println!(
        "  gantry: POST /v1/jobs until GET shows succeeded              median {:>8.1} ms",
        o.as_secs_f64() * 1e3
    );
    println!(
        "  => {:.2}x the raw engine round trip (target <= 1.2x)",
        o.as_secs_f64() / r.as_secs_f64()
    );
}

/// Drops the kernel's page cache (root only), so the next read comes from the disk.
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// The same work as a projection rebuild, written plainly: read and decode the log, fold every
/// job event into one record per job (its last event, attempt and sequence), and write the
/// records of each batch of 4,096 entries to a fresh sled tree with one `apply_batch`, flushed
/// at the end. `sled: false` folds in memory only (what the decode and fold cost alone).
async fn plain_rebuild(log: &EmbeddedLog, dir: &std::path::Path, sled: bool) -> usize {
    use gantry_events::event::JobEvent;
    let db = sled::open(dir).expect("sled");
    let tree = db.open_tree("jobs").expect("tree");
    let mut records: std::collections::HashMap<uuid::Uuid, (String, u32, u64)> =
        std::collections::HashMap::new();
    let mut next = 1;
    let mut applied = 0;
    loop {
        let entries = log.read(next, 4096).await.expect("read");
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        let mut touched = Vec::new();
        for entry in &entries {
            let envelope = entry.open().expect("decode");
            if let Event::Job(event) = &envelope.event {
                let id = event.job_id();
                let record = records.entry(id).or_default();
                record.0 = envelope.event.type_name().to_owned();
                if let JobEvent::Placed(p) = event {
                    record.1 = p.attempt;
                }
                record.2 = envelope.seq;
                touched.push(id);
            }
            applied += 1;
        }
        if sled {
            let mut batch = sled::Batch::default();
            for id in touched {
                let value = rmp_serde::to_vec(&records[&id]).expect("encode");
                batch.insert(id.as_bytes(), value);
            }
            tree.apply_batch(batch).expect("write");
        }
        next = last + 1;
    }
    db.flush_async().await.expect("flush");
    applied
}

fn bench_rebuild() {
    println!("\n3. projection rebuild from a cold cache (page cache dropped before each)");
    let n = scale(1_000_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("log");
        let jobs = gantry_tests::history::write_job_histories(&data, n)
            .await
            .len();
        let log = EmbeddedLog::open(&data).await.expect("log");
        let total = log.head().await.expect("head").seq as usize;
        println!("  {total} events, {jobs} jobs (submitted, placed, started, succeeded)");
        if !drop_caches() {
            println!(
                "  (the page cache could not be dropped: not root? the figures are warm-cache)"
            );
        }
        let start = Instant::now();
        let folded = plain_rebuild(&log, &dir.path().join("fold"), false).await;
        let fold = row(
            "read + decode + fold into one record per job, in memory",
            folded,
            start.elapsed(),
        );

        drop_caches();
        let start = Instant::now();
        let written = plain_rebuild(&log, &dir.path().join("plain"), true).await;
        let plain = row(
            "the same + records written to sled in batches (baseline)",
            written,
            start.elapsed(),
        );

        drop_caches();
        let views = Projections::open(dir.path().join("views")).expect("views");
        let start = Instant::now();
        views.catch_up(&log, |_, _| {}).await.expect("rebuild");
        let rebuilt = row(
            "gantry: every view rebuilt (jobs, attempts, indexes, counts)",
            total,
            start.elapsed(),
        );
        println!(
            "  => gantry {:.2}x the baseline, {:.2}x the in-memory fold; sled writes take \
             {:.0}% of the baseline's time (goal >= 400,000 events/s)",
            rebuilt / plain,
            rebuilt / fold,
            100.0 * (1.0 - plain / fold),
        );
    });
}

fn main() {
    println!(
        "gantry system benchmarks ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    // `GANTRY_BENCH_ONLY=rebuild` (or scheduling, end-to-end) runs one part, for profiling.
    let only = std::env::var("GANTRY_BENCH_ONLY").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("scheduling") {
        bench_scheduling();
    }
    if run("rebuild") {
        bench_rebuild();
    }
    if run("end-to-end") {
        bench_end_to_end();
    }
}

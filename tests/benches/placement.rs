//! Placements per second through the real Scheduler actor on the embedded log (every placement
//! appended and fsynced before it counts), with varied images, GPU models and sizes, at 100,
//! 1,000 and 10,000 simulated nodes (node events recorded, no executor), and with 100,000 jobs
//! queued that no node can take — beside the same decisions made by the in-memory `World` alone
//! (no log, no actor), in the same run.
//!
//! Jobs are submitted first (no node yet); the clock starts when the nodes join and stops at
//! the last placement. Run: `cargo bench -p gantry-tests --bench placement`.
//! `GANTRY_BENCH_SCALE=0.1` shrinks it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use gantry_actors::actor::scheduler::{Record, Scheduler, Stats, Submit};
use gantry_actors::spec::{GpuAsk, Limits, ResourceRequest, SubmitRequest};
use gantry_actors::world::{Submitted, World};
use gantry_events::event::{Gpu, NodeJoined};
use gantry_events::{EmbeddedLog, Event, EventLog, Source};

const MODELS: [&str; 3] = [
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA L4",
];

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(10)
}

/// A node with 64 CPUs, 512 GiB and 8 GPUs of one of three models.
fn node(i: usize) -> Event {
    let model = MODELS[i % MODELS.len()];
    NodeJoined {
        node_id: format!("node-{i:05}"),
        hostname: format!("host-{i}"),
        cpu_millis: 64_000,
        memory_bytes: 512 << 30,
        gpus: (0..8)
            .map(|g| Gpu {
                uuid: format!("GPU-{i:05}-{g}"),
                name: model.into(),
                memory_bytes: 80 << 30,
                utilisation_pct: None,
                driver_version: None,
            })
            .collect(),
        executor: "docker".into(),
        labels: Default::default(),
    }
    .into()
}

/// Varied jobs: one of 50 images, 1 to 8 CPUs, 1 to 32 GiB, and for one in four 1 or 2 GPUs
/// of a named model. `unplaceable`: a GPU model no node has.
fn request(i: usize, unplaceable: bool) -> SubmitRequest {
    let gpus = if unplaceable {
        Some(GpuAsk {
            count: 1,
            model: Some("B200".into()),
            min_memory_bytes: None,
        })
    } else if i.is_multiple_of(4) {
        Some(GpuAsk {
            count: 1 + (i / 4 % 2) as u32,
            model: Some(["A100", "H100", "L4"][i / 8 % 3].into()),
            min_memory_bytes: None,
        })
    } else {
        None
    };
    SubmitRequest {
        name: format!("job-{i}"),
        image: format!("registry.example.com/team-{}/train:{}", i % 10, i % 5),
        command: vec!["train".into()],
        resources: ResourceRequest {
            cpus: Some(1.0 + (i % 8) as f64),
            memory_bytes: Some((1 + (i % 32) as u64) << 30),
            gpus,
        },
        ..SubmitRequest::default()
    }
}

/// The same decisions by the in-memory `World` alone: (placements, time).
fn in_memory(nodes: usize, jobs: usize, unplaceable: usize) -> (u64, Duration) {
    let mut world = World::new(Limits::default());
    let mut seq = 0;
    let mut apply = |world: &mut World, e: &Event| {
        seq += 1;
        world.apply(seq, 0, e);
    };
    for i in 0..unplaceable + jobs {
        let Ok(Submitted::New { events, .. }) =
            world.decide_submit(&request(i, i < unplaceable), None, &Default::default())
        else {
            panic!("valid")
        };
        events.iter().for_each(|e| apply(&mut world, e));
    }
    let started = Instant::now();
    for i in 0..nodes {
        apply(&mut world, &node(i));
    }
    let mut placed = 0;
    loop {
        let round = world.decide_placements(0, 1000);
        let count = round
            .iter()
            .filter(|e| e.type_name() == "job.placed")
            .count() as u64;
        if round.is_empty() {
            break;
        }
        round.iter().for_each(|e| apply(&mut world, e));
        placed += count;
    }
    (placed, started.elapsed())
}

/// Through the Scheduler actor: (placements, time from the first node's join to the last
/// placement, time the joins took).
async fn through_scheduler(
    nodes: usize,
    jobs: usize,
    unplaceable: usize,
) -> (u64, Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path()).await.expect("log"));
    let scheduler = Scheduler::rebuild(
        log.clone(),
        Limits::default(),
        Source::new("bench", "scheduler"),
        None,
    )
    .await
    .expect("scheduler")
    .start();
    let total = unplaceable + jobs;
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|&i| {
                scheduler.send(Submit {
                    request: request(i, i < unplaceable),
                    by: None,
                    resolved: Default::default(),
                })
            })
            .collect();
        for answer in futures::future::join_all(sends).await {
            answer.expect("scheduler").expect("accepted");
        }
    }
    let started = Instant::now();
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(1000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|&i| scheduler.send(Record(node(i))))
            .collect();
        for answer in futures::future::join_all(sends).await {
            answer.expect("scheduler").expect("recorded");
        }
    }
    let joined = started.elapsed();
    // Until the log stops growing for a second; then count the placements it holds.
    let (mut head, mut last_change) = (0, started.elapsed());
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = log.head().await.expect("head").seq;
        if now != head {
            head = now;
            last_change = started.elapsed();
        } else if started.elapsed() - last_change > Duration::from_secs(1) {
            break;
        }
    }
    let _ = scheduler.send(Stats).await;
    let mut placed = 0;
    let mut next = 1;
    loop {
        let entries = log.read(next, 4096).await.expect("read");
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        placed += entries
            .iter()
            .filter(|e| e.view().is_ok_and(|v| v.type_name == "job.placed"))
            .count() as u64;
        next = last + 1;
    }
    (placed, last_change, joined)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let jobs = scale(20_000);
    println!(
        "placement through the Scheduler (embedded log, appended and fsynced) vs the in-memory World, {jobs} varied jobs"
    );
    println!(
        "  {:>7} {:>9} {:>9} {:>13} {:>10} {:>13} {:>7}",
        "nodes", "queued", "placed", "placements/s", "joins ms", "in-memory/s", "ratio"
    );
    let system = actix_rt::System::new();
    let runs = [
        (scale(100), 0),
        (scale(1_000), 0),
        (scale(10_000), 0),
        (scale(1_000), scale(100_000)),
    ];
    for (nodes, unplaceable) in runs {
        let (placed, took, joined) = system.block_on(through_scheduler(nodes, jobs, unplaceable));
        let (memory_placed, memory_took) = in_memory(nodes, jobs, unplaceable);
        let rate = placed as f64 / took.as_secs_f64();
        let memory_rate = memory_placed as f64 / memory_took.as_secs_f64();
        println!(
            "  {nodes:>7} {:>9} {placed:>9} {rate:>13.0} {:>10.0} {memory_rate:>13.0} {:>6.2}×",
            unplaceable + jobs,
            joined.as_secs_f64() * 1e3,
            rate / memory_rate
        );
        if placed != memory_placed {
            println!("    (the scheduler placed {placed}, the in-memory World {memory_placed})");
        }
    }
    println!("  (goal: ≥ 20,000 placements/s at 1,000 nodes)");
}

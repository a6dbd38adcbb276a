//! System benchmarks, each printed next to a baseline measured in the same run:
//!
//! 1. scheduling: placements/s at 100, 1,000 and 10,000 simulated nodes (no executor), against
//!    a linear scan over every node, to show a placement's cost does not grow with the fleet;
//! 2. submit → container exited, end to end through the gateway, against a raw bollard
//!    create/start/wait/remove of the same container (needs Docker and the test image);
//! 3. projection rebuild rate, against reading and verifying the same log;
//! 4. `GET /v1/jobs/{id}` requests/s against the gateway's static `/healthz` handler.
//!
//! Run: `cargo bench -p gantry-tests --bench system`. `GANTRY_BENCH_SCALE=0.1` shrinks it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_actors::spec::{Limits, SubmitRequest};
use gantry_actors::world::{Submitted, World};
use gantry_events::event::{Gpu, JobSubmitted, NodeJoined, Resources};
use gantry_events::{EmbeddedLog, Event, EventLog, NewEvent, Source, Verifier};
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

fn bench_rebuild() {
    println!("\n3. projection rebuild");
    let n = scale(200_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(
            EmbeddedLog::open(dir.path().join("log"))
                .await
                .expect("log"),
        );
        let source = Source::new("bench", "bench");
        let mut batch = Vec::new();
        let jobs = n / 4;
        for i in 0..jobs {
            let job_id = uuid::Uuid::now_v7();
            let spec =
                gantry_actors::spec::validate(&request(i), &Limits::default()).expect("valid");
            batch.push(NewEvent::new(
                source.clone(),
                JobSubmitted {
                    job_id,
                    spec: Box::new(spec),
                    by: None,
                    group: None,
                    pipeline: None,
                },
            ));
            batch.push(NewEvent::new(
                source.clone(),
                gantry_events::event::JobPlaced {
                    job_id,
                    attempt: 1,
                    node_id: "n1".into(),
                    gpu_uuids: vec![],
                },
            ));
            batch.push(NewEvent::new(
                source.clone(),
                gantry_events::event::JobStarted {
                    image: None,
                    job_id,
                    attempt: 1,
                    node_id: "n1".into(),
                    handle: None,
                    limits_enforced: None,
                },
            ));
            batch.push(NewEvent::new(
                source.clone(),
                gantry_events::event::JobSucceeded {
                    job_id,
                    attempt: 1,
                    duration_ms: 5,
                },
            ));
            if batch.len() >= 1000 {
                log.append(std::mem::take(&mut batch))
                    .await
                    .expect("append");
            }
        }
        if !batch.is_empty() {
            log.append(batch).await.expect("append");
        }
        let total = log.head().await.expect("head").seq as usize;

        let start = Instant::now();
        let mut verifier = Verifier::from_genesis();
        let mut next = 1;
        loop {
            let entries = log.read(next, 2048).await.expect("read");
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            for e in &entries {
                verifier.push(e).expect("sound");
                std::hint::black_box(e.open().expect("decode"));
            }
            next = last + 1;
        }
        let read = row(
            "read + verify + decode the log (baseline)",
            total,
            start.elapsed(),
        );

        let views = Projections::open(dir.path().join("views")).expect("views");
        let start = Instant::now();
        views.catch_up(&*log, |_, _| {}).await.expect("rebuild");
        let rebuilt = row(
            "rebuild every view from the log (sled, flushed)",
            total,
            start.elapsed(),
        );
        println!(
            "  => {:.2}x the read rate (target >= 200,000 events/s)",
            rebuilt / read
        );
    });
}

fn bench_reads() {
    println!("\n4. GET /v1/jobs/{{id}} vs a static handler in the same process (4 client threads)");
    let gantry = Gantry::start(ExecutorChoice::Process);
    let id = gantry.submit(json!({ "name": "read-me", "image": "busybox", "command": ["true"] }));
    gantry.wait_for(&id, &["succeeded"], Duration::from_secs(30));
    let per_thread = scale(5_000);
    let hammer = |path: String| {
        let start = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let url = format!("http://{}{path}", gantry.addr);
                std::thread::spawn(move || {
                    let agent = ureq::Agent::config_builder().build().new_agent();
                    for _ in 0..per_thread {
                        let mut r = agent.get(&url).call().expect("get");
                        std::hint::black_box(r.body_mut().read_to_vec().expect("body"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client");
        }
        start.elapsed()
    };
    let static_rate = row(
        "GET /healthz, static JSON (baseline)",
        4 * per_thread,
        hammer("/healthz".into()),
    );
    let job_rate = row(
        "GET /v1/jobs/{id} from the sled view",
        4 * per_thread,
        hammer(format!("/v1/jobs/{id}")),
    );
    println!(
        "  => {:.2}x the static handler (target >= 0.5x)",
        job_rate / static_rate
    );
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
    // `GANTRY_BENCH_ONLY=rebuild` (or scheduling, reads, end-to-end) runs one part, for profiling.
    let only = std::env::var("GANTRY_BENCH_ONLY").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("scheduling") {
        bench_scheduling();
    }
    if run("rebuild") {
        bench_rebuild();
    }
    if run("reads") {
        bench_reads();
    }
    if run("end-to-end") {
        bench_end_to_end();
    }
}

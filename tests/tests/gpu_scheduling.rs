//! GPU jobs through the REST API of a whole gantry whose node reports fake GPUs (there is no
//! GPU here; the fake inventory goes through the same code as NVML's): why a job waits, a
//! submission refused because nothing could ever run it, the `gantry jobs` REASON column, and
//! the attempt history a finished job keeps.

use std::time::{Duration, Instant};

use clap::Parser;
use gantry_events::event::Gpu;
use gantry_nodes::client::ClientError;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::Gantry;
use serde_json::{Value, json};

fn h100(n: u32) -> Gpu {
    Gpu {
        uuid: format!("GPU-00000000-0000-0000-0000-00000000000{n}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_bytes: 80 << 30,
        utilisation_pct: None,
        driver_version: Some("580.65.06".into()),
    }
}

fn two_h100() -> Gantry {
    Gantry::start_with_gpus(ExecutorChoice::Process, vec![h100(1), h100(2)])
}

fn job_spec(name: &str, gpus: Value) -> Value {
    json!({
        "name": name, "image": "busybox",
        "command": ["sh", "-c", "exit 1"],
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20, "gpus": gpus },
        "retry": { "max_attempts": 2, "backoff_initial_ms": 100, "retry_user_failures": true },
    })
}

/// Waits until the job's view satisfies `ok`.
fn wait_view(gantry: &Gantry, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = gantry.job(id);
        if ok(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "never {what}: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_no_node_can_run_says_why_and_can_be_refused_at_once() {
    let gantry = two_h100();
    let id = gantry.submit(job_spec(
        "wants-a100",
        json!({ "count": 1, "model": "A100" }),
    ));
    let job = wait_view(&gantry, &id, "a pending reason", |j| {
        !j["pending"].is_null()
    });
    assert_eq!(job["state"], "queued");
    assert_eq!(job["pending"]["code"], "no_gpu_model", "{job}");
    assert_eq!(job["pending"]["unschedulable"], true, "{job}");
    let message = job["pending"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("A100") && message.contains("H100"),
        "{message}"
    );

    let id2 = gantry.submit(job_spec("wants-three", json!({ "count": 3 })));
    let job = wait_view(&gantry, &id2, "a pending reason", |j| {
        !j["pending"].is_null()
    });
    assert_eq!(job["pending"]["code"], "too_many_gpus", "{job}");

    // The REASON column of `gantry jobs` shows it.
    let server = format!("http://{}", gantry.addr);
    let out = actix_rt::System::new().block_on(async {
        let cli = gantry_nodes::cli::Cli::try_parse_from([
            "gantry", "jobs", "--server", &server, "--state", "queued",
        ])
        .expect("args");
        let mut out = Vec::new();
        gantry_nodes::cli::run(cli, &mut out)
            .await
            .expect("gantry jobs");
        String::from_utf8(out).expect("utf-8")
    });
    assert!(out.contains("REASON"), "{out}");
    assert!(
        out.contains("no node has a GPU matching model 'A100'"),
        "{out}"
    );

    // Asked to be refused rather than queued: 422, naming why.
    let mut strict = job_spec("strict", json!({ "count": 1, "model": "A100" }));
    strict["reject_unschedulable"] = json!(true);
    match gantry.try_submit(&strict) {
        Err(ClientError::Api {
            status,
            code,
            message,
            field,
        }) => {
            assert_eq!(status, 422);
            assert_eq!(code, "unschedulable");
            assert!(message.contains("A100"), "{message}");
            assert_eq!(field.as_deref(), Some("resources"));
        }
        other => panic!("expected 422 unschedulable, got {other:?}"),
    }
    // A job that fits is not refused by the same flag.
    let mut fits = job_spec("fits", json!({ "count": 1 }));
    fits["reject_unschedulable"] = json!(true);
    assert!(gantry.try_submit(&fits).is_ok());
}

#[test]
fn a_finished_job_keeps_every_attempt_with_its_node_gpus_and_end() {
    let gantry = two_h100();
    let id = gantry.submit(job_spec("fails-twice", json!({ "count": 1 })));
    let job = gantry.wait_for(&id, &["dead_lettered"], Duration::from_secs(30));

    // One shape: what was asked is in `spec`, nothing twice.
    assert!(
        job.get("name").is_none() && job.get("job").is_none(),
        "{job}"
    );
    assert_eq!(job["spec"]["name"], "fails-twice");
    assert_eq!(job["node"], Value::Null, "no current attempt");

    let attempts = job["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{job}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1, "{a}");
        assert_eq!(a["state"], "failed", "{a}");
        assert_eq!(a["exit_code"], 1, "{a}");
        assert_eq!(a["cause"]["kind"], "non_zero_exit", "{a}");
        assert!(a["node"].as_str().is_some_and(|n| !n.is_empty()), "{a}");
        let gpus = a["gpus"].as_array().expect("gpus");
        assert_eq!(gpus.len(), 1, "{a}");
        assert!(
            gpus[0]["uuid"]
                .as_str()
                .is_some_and(|u| u.starts_with("GPU-"))
        );
        assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3", "{a}");
        assert_eq!(gpus[0]["driver_version"], "580.65.06", "{a}");
        let placed = a["placed_ns"].as_u64().expect("placed");
        let started = a["started_ns"].as_u64().expect("started");
        let ended = a["ended_ns"].as_u64().expect("ended");
        assert!(placed <= started && started <= ended, "{a}");
        assert!(a["limits_enforced"].is_boolean(), "{a}");
    }
}

#[test]
fn nodes_show_gpu_telemetry_beside_the_inventory() {
    let gantry = two_h100();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = gantry.client.get("/v1/nodes").expect("nodes");
        let node = &nodes["nodes"][0];
        let samples = node["gpu_telemetry"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if samples.len() == 2 {
            let uuids: Vec<&str> = samples.iter().filter_map(|s| s["uuid"].as_str()).collect();
            assert!(uuids.contains(&h100(1).uuid.as_str()), "{node}");
            assert!(samples.iter().all(|s| s["sampled_ns"].as_u64() > Some(0)));
            break;
        }
        assert!(Instant::now() < deadline, "no telemetry: {node}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! A job learns its GPUs from its environment, read from inside the job: the process and
//! Docker executors set `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` to the UUIDs of
//! the GPUs assigned to the attempt (with none: empty and `void`), over whatever the job's own
//! environment says. There is no GPU here: the UUIDs are made up, which the process executor
//! does not mind; the Docker executor would ask the engine for those devices, so it is
//! checked here only without GPUs (its device requests are unit-tested in
//! `nodes/src/executor/docker.rs`). The Docker test needs an engine and the local test image
//! (`gantry-test/busybox:latest`; `GANTRY_TEST_IMAGE` overrides): without them it skips
//! loudly, and fails under GANTRY_REQUIRE_SERVICES=1.

use std::path::Path;
use std::time::Duration;

use gantry_actors::executor::{Executor, Outcome, RunSpec};
use gantry_events::event::JobSpec;
use gantry_nodes::executor::docker::DockerExecutor;
use gantry_nodes::executor::process::{ProcessExecutor, ProcessOptions};
use gantry_tests::services::unavailable;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(90);
const GPUS: [&str; 2] = [
    "GPU-aaaaaaaa-1111-2222-3333-444444444444",
    "GPU-bbbbbbbb-5555-6666-7777-888888888888",
];

fn image() -> String {
    std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// An attempt of `command`, whose own environment tries to pick GPUs, given `gpus`.
fn attempt(command: &[&str], gpus: &[&str], dir: &Path) -> RunSpec {
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "gpus", "image": image(), "command": command,
        "env": {
            "CUDA_VISIBLE_DEVICES": "0,1,2,3",
            "NVIDIA_VISIBLE_DEVICES": "all",
            "KEPT": "yes",
        },
        "resources": { "cpu_millis": 500, "memory_bytes": 64u64 << 20 },
    }))
    .expect("job spec");
    let job_id = uuid::Uuid::now_v7();
    RunSpec {
        job_id,
        attempt: 1,
        spec,
        gpu_uuids: gpus.iter().map(|g| (*g).to_owned()).collect(),
        log_path: dir.join(format!("{job_id}.log")),
        started_at_ms: None,
        secrets: Default::default(),
    }
}

/// Runs the attempt to its end; what it printed to stdout, without timestamps.
async fn run(executor: &dyn Executor, run: &RunSpec) -> Vec<String> {
    let handle = executor.start(run).await.expect("started");
    let outcome = tokio::time::timeout(WITHIN, executor.wait(&handle, run))
        .await
        .expect("the job ends");
    let log = std::fs::read_to_string(&run.log_path).unwrap_or_default();
    assert!(
        matches!(outcome, Outcome::Exited { code: 0, .. }),
        "{outcome:?}\n{log}"
    );
    log.lines()
        .filter_map(|l| l.split_once(' ')?.1.strip_prefix("stdout "))
        .map(str::to_owned)
        .collect()
}

/// The job's environment holds exactly these GPU variables, once each, and kept its own
/// other variables.
fn check(env: &[String], cuda: &str, nvidia: &str) {
    let gpu: Vec<&str> = env
        .iter()
        .map(String::as_str)
        .filter(|l| {
            l.starts_with("CUDA_VISIBLE_DEVICES=") || l.starts_with("NVIDIA_VISIBLE_DEVICES=")
        })
        .collect();
    let mut expected = [
        format!("CUDA_VISIBLE_DEVICES={cuda}"),
        format!("NVIDIA_VISIBLE_DEVICES={nvidia}"),
    ];
    let mut gpu = gpu.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    gpu.sort();
    expected.sort();
    assert_eq!(gpu, expected, "{env:?}");
    assert!(env.contains(&"KEPT=yes".to_owned()), "{env:?}");
}

#[test]
fn a_local_job_sees_exactly_its_gpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As gantry's own user, and (as root) as a uid of its own; as root both go through the
    // cgroup start gate, whose shell must pass the environment on untouched.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let executors = [
        ProcessExecutor::new(dir.path().join("work")),
        ProcessExecutor::open(&data, ProcessOptions::default()).expect("open"),
    ];
    runtime().block_on(async {
        for executor in &executors {
            let given = run(executor, &attempt(&["env"], &GPUS, dir.path())).await;
            let both = GPUS.join(",");
            check(&given, &both, &both);

            let none = run(executor, &attempt(&["env"], &[], dir.path())).await;
            check(&none, "", "void");
        }
    });
}

#[test]
fn a_container_without_gpus_sees_none() {
    let Some(executor) = docker() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        // The test image links no `env`; busybox has it.
        let none = run(&executor, &attempt(&["busybox", "env"], &[], dir.path())).await;
        check(&none, "", "void");
    });
}

/// The Docker executor, when an engine answers and has the test image; otherwise skip (or
/// fail under GANTRY_REQUIRE_SERVICES=1).
fn docker() -> Option<DockerExecutor> {
    runtime().block_on(async {
        let executor = match DockerExecutor::connect().await {
            Ok(executor) => executor,
            Err(e) => return unavailable("docker", &format!("engine not answering: {e}")),
        };
        let docker = match bollard::Docker::connect_with_local_defaults() {
            Ok(d) => d,
            Err(e) => return unavailable("docker", &e.to_string()),
        };
        if let Err(e) = docker.inspect_image(&image()).await {
            return unavailable(
                "docker",
                &format!("test image {} missing ({e}); see .ci/run", image()),
            );
        }
        Some(executor)
    })
}

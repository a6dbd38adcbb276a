//! Jobs in real Docker containers: the sandbox really applies, timeouts and cancels stop the
//! container, failures retry then dead-letter, a missing image is a typed failure, and every
//! container is removed. Needs a Docker engine and the local test image
//! (`gantry-test/busybox:latest`, built by `.ci/run`; `GANTRY_TEST_IMAGE` overrides).

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptions;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::services::unavailable;
use gantry_tests::system::Gantry;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(90);

fn image() -> String {
    std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into())
}

/// Docker answers and has the test image; otherwise skip (or fail under
/// GANTRY_REQUIRE_SERVICES=1).
fn docker() -> Option<bollard::Docker> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let docker = match bollard::Docker::connect_with_local_defaults() {
            Ok(d) => d,
            Err(e) => return unavailable("docker", &e.to_string()),
        };
        let docker = match docker.negotiate_version().await {
            Ok(d) => d,
            Err(e) => return unavailable("docker", &format!("engine not answering: {e}")),
        };
        if let Err(e) = docker.inspect_image(&image()).await {
            return unavailable(
                "docker",
                &format!("test image {} missing ({e}); see .ci/run", image()),
            );
        }
        Some(docker)
    })
}

fn containers_of(docker: &bollard::Docker, job: &str) -> usize {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let filters = HashMap::from([("label".to_owned(), vec![format!("gantry.job={job}")])]);
    runtime
        .block_on(docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        })))
        .expect("list")
        .len()
}

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": image(), "command": ["sh", "-c", script],
            "resources": { "cpus": 0.5, "memory_bytes": 64u64 << 20 } })
}

#[test]
fn the_sandbox_applies() {
    let Some(docker) = docker() else { return };
    let gantry = Gantry::start(ExecutorChoice::Docker);
    let probe = gantry.submit(sh(
        "probe",
        "id -u; id -g; \
         touch /probe 2>/dev/null && echo rootfs-writable || echo rootfs-readonly; \
         touch /tmp/ok && echo tmp-writable; \
         echo net: $(ls /sys/class/net)",
    ));
    let job = gantry.wait_for(&probe, &["succeeded", "dead_lettered"], WITHIN);
    let logs = gantry.logs(&probe, 1);
    assert_eq!(job["state"], "succeeded", "{job}\n{logs}");
    let lines: Vec<&str> = logs
        .lines()
        .map(|l| l.splitn(3, ' ').nth(2).unwrap_or(""))
        .collect();
    assert_eq!(lines[0], "1000", "not root: {logs}");
    assert_eq!(lines[1], "1000", "{logs}");
    assert!(lines.contains(&"rootfs-readonly"), "{logs}");
    assert!(lines.contains(&"tmp-writable"), "{logs}");
    assert!(
        lines.contains(&"net: lo"),
        "no network but loopback: {logs}"
    );
    assert_eq!(containers_of(&docker, &probe), 0, "container removed");
    let nodes = gantry.client.get("/v1/nodes").expect("nodes");
    assert_eq!(nodes["nodes"][0]["executor"], "docker");
}

#[test]
fn timeout_cancel_retry_and_missing_images() {
    let Some(docker) = docker() else { return };
    let gantry = Gantry::start(ExecutorChoice::Docker);

    let mut slow = sh("slow", "echo started; sleep 300");
    slow["timeout_secs"] = json!(2);
    slow["retry"] = json!({ "max_attempts": 1 });
    let slow = gantry.submit(slow);
    let sleeper = gantry.submit(sh("sleeper", "sleep 300"));
    let mut flaky = sh("flaky", "exit 3");
    flaky["retry"] =
        json!({ "max_attempts": 2, "backoff_initial_ms": 100, "retry_user_failures": true });
    let flaky = gantry.submit(flaky);
    let mut missing = sh("missing", "true");
    missing["image"] = json!("gantry-test/does-not-exist:1");
    missing["retry"] = json!({ "max_attempts": 2, "backoff_initial_ms": 100 });
    let missing = gantry.submit(missing);

    gantry.wait_for(&sleeper, &["running"], WITHIN);
    gantry
        .client
        .post(&format!("/v1/jobs/{sleeper}/cancel"), &json!({}))
        .expect("cancel");
    gantry.wait_for(&sleeper, &["cancelled"], WITHIN);

    let timed_out = gantry.wait_for(&slow, &["dead_lettered", "succeeded"], WITHIN);
    assert_eq!(
        timed_out["last_cause"],
        json!({ "kind": "timeout", "after_secs": 2 })
    );
    assert!(gantry.logs(&slow, 1).contains("started"));

    let dead = gantry.wait_for(&flaky, &["dead_lettered"], WITHIN);
    assert_eq!(
        (dead["attempt"].as_u64(), &dead["last_cause"]["code"]),
        (Some(2), &json!(3))
    );

    let dead = gantry.wait_for(&missing, &["dead_lettered"], WITHIN);
    assert_eq!(dead["last_cause"]["kind"], "image_unavailable", "{dead}");
    assert_eq!(
        dead["attempt"], 2,
        "an unavailable image is retried like any infrastructure failure"
    );

    for job in [&slow, &sleeper, &flaky, &missing] {
        assert_eq!(
            containers_of(&docker, job),
            0,
            "containers of {job} removed"
        );
    }
}

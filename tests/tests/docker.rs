//! Jobs in real Docker containers: the sandbox really applies (checked from inside the
//! container), timeouts and cancels stop the container, failures retry then dead-letter, a
//! missing image is a typed failure, and every container is removed. Through the executor
//! itself: an attempt that ended while nobody waited is read after a restart, a second wait
//! joins the first collector, `discard` after an abandoned start leaves nothing, a pull that
//! hangs times out, and a container the OOM killer struck is reported as such. Needs a Docker
//! engine and the local test image (`gantry-test/busybox:latest`, built by `.ci/run`;
//! `GANTRY_TEST_IMAGE` overrides).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, ListContainersOptions,
};
use gantry_actors::executor::{Executor, Found, Outcome, RunSpec};
use gantry_events::event::JobSpec;
use gantry_nodes::executor::docker::{DockerExecutor, DockerOptions};
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::services::unavailable;
use gantry_tests::system::{Gantry, printed, printed_value as value};
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
    // Only busybox applets the test image links (sh, cat, ls, id, touch, echo) and sh builtins.
    let probe = gantry.submit(sh(
        "probe",
        "echo uid: $(id -u); echo gid: $(id -g); \
         touch /probe 2>/dev/null && echo rootfs-writable || echo rootfs-readonly; \
         touch /tmp/ok && echo tmp-writable; \
         echo net: $(ls /sys/class/net); \
         echo netdev: $(cat /proc/net/dev | while read -r a b; do echo $a; done); \
         cat /proc/self/status; \
         for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do \
           [ -e $f ] && echo mem: $(cat $f); done; \
         for f in /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max; do \
           [ -e $f ] && echo pids: $(cat $f); done; \
         echo nofile: $(ulimit -n); echo nproc: $(ulimit -u); \
         echo pid1: $(cat /proc/1/comm); echo self: $$",
    ));
    let job = gantry.wait_for(&probe, &["succeeded", "dead_lettered"], WITHIN);
    let logs = gantry.logs(&probe, 1);
    assert_eq!(job["state"], "succeeded", "{job}\n{logs}");
    let lines = printed(&logs);
    let defaults = DockerOptions::default();
    assert_eq!(value(&lines, "uid:"), Some("1000"), "not root: {logs}");
    assert_eq!(value(&lines, "gid:"), Some("1000"), "{logs}");
    assert!(
        lines.contains(&"stdout rootfs-readonly".to_owned()),
        "{logs}"
    );
    assert!(lines.contains(&"stdout tmp-writable".to_owned()), "{logs}");
    assert_eq!(
        value(&lines, "net:"),
        Some("lo"),
        "no network but loopback: {logs}"
    );
    // /proc/net/dev: two header lines, then one line per interface.
    assert_eq!(
        value(&lines, "netdev:"),
        Some("Inter-| face lo:"),
        "only loopback: {logs}"
    );
    assert_eq!(value(&lines, "CapEff:"), Some("0000000000000000"), "{logs}");
    assert_eq!(value(&lines, "CapBnd:"), Some("0000000000000000"), "{logs}");
    assert_eq!(value(&lines, "NoNewPrivs:"), Some("1"), "{logs}");
    assert_eq!(
        value(&lines, "Seccomp:"),
        Some("2"),
        "seccomp filter mode: {logs}"
    );
    assert_eq!(
        value(&lines, "mem:"),
        Some((64u64 << 20).to_string().as_str()),
        "memory limit (cgroup v2 or v1): {logs}"
    );
    assert_eq!(
        value(&lines, "pids:"),
        Some(defaults.pids_limit.to_string().as_str()),
        "{logs}"
    );
    assert_eq!(
        value(&lines, "nofile:"),
        Some(defaults.nofile.to_string().as_str()),
        "{logs}"
    );
    assert_eq!(
        value(&lines, "nproc:"),
        Some(defaults.nproc.to_string().as_str()),
        "{logs}"
    );
    let init = value(&lines, "pid1:").unwrap_or("");
    assert!(
        ["docker-init", "tini", "catatonit"].contains(&init),
        "PID 1 is an init, not the job: {logs}"
    );
    assert_ne!(value(&lines, "self:"), Some("1"), "{logs}");
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

/// Removes every container of a job when dropped, so a failed test leaves none running.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        runtime.block_on(async {
            let Ok(docker) = bollard::Docker::connect_with_local_defaults() else {
                return;
            };
            let filters =
                HashMap::from([("label".to_owned(), vec![format!("gantry.job={}", self.0)])]);
            let listed = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .unwrap_or_default();
            for id in listed.into_iter().filter_map(|c| c.id) {
                let options = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&id, Some(options)).await;
            }
        });
    }
}

/// One attempt of a `sh -c script` job, its log under `dir`.
fn attempt(script: &str, dir: &Path) -> RunSpec {
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "direct", "image": image(), "command": ["sh", "-c", script],
        "resources": { "cpu_millis": 500, "memory_bytes": 64u64 << 20 },
    }))
    .expect("job spec");
    RunSpec {
        job_id: uuid::Uuid::now_v7(),
        attempt: 1,
        spec,
        gpu_uuids: vec![],
        log_path: dir.join("attempt-1.log"),
        started_at_ms: None,
        secrets: Default::default(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Polls `check` until it holds; panics with `what` after `within`.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How many lines of the log are exactly `<stream> <text>`.
fn count(log: &str, line: &str) -> usize {
    printed(log).iter().filter(|l| *l == line).count()
}

async fn running(docker: &bollard::Docker, id: &str) -> Option<bool> {
    docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()?
        .state?
        .running
}

async fn signal(docker: &bollard::Docker, id: &str, signal: &str) {
    docker
        .kill_container(
            id,
            Some(KillContainerOptions {
                signal: signal.into(),
            }),
        )
        .await
        .expect("signal the container");
}

/// Prints `begin`, then ends with `code` (printing `end` and `end-err`) on SIGTERM, which the
/// container's init forwards to it.
fn until_term(code: i32) -> String {
    format!(
        "trap 'echo end; echo end-err >&2; exit {code}' TERM; echo begin; while :; do sleep 1; done"
    )
}

#[test]
fn an_attempt_that_ended_unwatched_is_read_after_a_restart() {
    let Some(docker) = docker() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let run = attempt(&until_term(3), dir.path());
    let _cleanup = RemoveOnDrop(run.job_id.to_string());

    // gantry before it went down: starts the attempt and begins to wait, then its process ends
    // (the runtime and every task on it go away).
    let before = runtime();
    let handle = before.block_on(async {
        let executor = DockerExecutor::connect().await.expect("engine");
        let handle = executor.start(&run).await.expect("started");
        let waiter = (executor.clone(), handle.clone(), run.clone());
        tokio::spawn(async move { waiter.0.wait(&waiter.1, &waiter.2).await });
        until("the first collector copies output", WITHIN, async || {
            count(&read(&run.log_path), "stdout begin") == 1
        })
        .await;
        handle
    });
    drop(before);

    let now = runtime();
    now.block_on(async {
        // It ends while nobody watches.
        signal(&docker, &handle, "TERM").await;
        until("the container exits", WITHIN, async || {
            running(&docker, &handle).await == Some(false)
        })
        .await;

        let executor = DockerExecutor::connect().await.expect("engine");
        let found = executor.find(run.job_id, run.attempt).await;
        assert_eq!(
            found,
            Some(Found::Exited(handle.clone())),
            "not removed by find"
        );
        let outcome = executor.wait(&handle, &run).await;
        assert_eq!(
            outcome,
            Outcome::Exited {
                code: 3,
                oom_killed: false
            }
        );
        let log = read(&run.log_path);
        for line in ["stdout begin", "stdout end", "stderr end-err"] {
            assert_eq!(count(&log, line), 1, "{line:?} once in the log:\n{log}");
        }
        assert_eq!(
            running(&docker, &handle).await,
            None,
            "the container is removed"
        );
        assert_eq!(executor.find(run.job_id, run.attempt).await, None);
    });
    assert_eq!(containers_of(&docker, &run.job_id.to_string()), 0);
}

#[test]
fn a_second_wait_joins_the_first_collector() {
    let Some(docker) = docker() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let run = attempt(&until_term(0), dir.path());
    let _cleanup = RemoveOnDrop(run.job_id.to_string());
    runtime().block_on(async {
        let executor = DockerExecutor::connect().await.expect("engine");
        let handle = executor.start(&run).await.expect("started");

        // The first waiter is dropped half way, as when the worker restarts.
        let first = {
            let (executor, handle, run) = (executor.clone(), handle.clone(), run.clone());
            tokio::spawn(async move { executor.wait(&handle, &run).await })
        };
        until("the first collector copies output", WITHIN, async || {
            count(&read(&run.log_path), "stdout begin") == 1
        })
        .await;
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(
            executor.stats().collectors_running,
            1,
            "it survives its waiter"
        );

        // Two more waiters, and the end.
        let (a, b, ()) = tokio::join!(
            executor.wait(&handle, &run),
            executor.wait(&handle, &run),
            async {
                signal(&docker, &handle, "TERM").await;
            }
        );
        let ended = Outcome::Exited {
            code: 0,
            oom_killed: false,
        };
        assert_eq!((&a, &b), (&ended, &ended));
        let stats = executor.stats();
        assert_eq!(
            stats.collectors_started, 1,
            "one collector for three waits: {stats:?}"
        );
        assert_eq!(stats.collectors_peak, 1, "{stats:?}");
        assert_eq!(stats.collectors_running, 0, "{stats:?}");
        let log = read(&run.log_path);
        for line in ["stdout begin", "stdout end", "stderr end-err"] {
            assert_eq!(count(&log, line), 1, "{line:?} once in the log:\n{log}");
        }

        // A wait after the end gets the same outcome and leaves the log alone.
        assert_eq!(executor.wait(&handle, &run).await, ended);
        assert_eq!(read(&run.log_path), log);
        assert_eq!(executor.stats().collectors_started, 1);
    });
    assert_eq!(containers_of(&docker, &run.job_id.to_string()), 0);
}

#[test]
fn discard_after_an_abandoned_start_leaves_no_container() {
    let Some(docker) = docker() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = attempt("sleep 300", dir.path());
    let job = run.job_id.to_string();
    let _cleanup = RemoveOnDrop(job.clone());
    runtime().block_on(async {
        let executor = DockerExecutor::connect().await.expect("engine");
        // Dropped at different points of the start: before, while and after the engine creates
        // and starts the container.
        for (attempt, after_ms) in [0u64, 2, 5, 10, 20, 40, 80, 160].into_iter().enumerate() {
            run.attempt = attempt as u32 + 1;
            let start = executor.start(&run);
            let _ = tokio::time::timeout(Duration::from_millis(after_ms), start).await;
            executor.discard(run.job_id, run.attempt).await;
            assert_eq!(
                containers_of_async(&docker, &job).await,
                0,
                "dropped after {after_ms} ms"
            );
        }

        // A start that finished: the engine holds the sandbox settings; discard removes it.
        run.attempt = 100;
        let handle = executor.start(&run).await.expect("started");
        let inspected = docker
            .inspect_container(&handle, None::<InspectContainerOptions>)
            .await
            .expect("inspect");
        let host = inspected.host_config.expect("host config");
        assert_eq!(host.init, Some(true));
        let log = host.log_config.expect("log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let log = log.config.unwrap_or_default();
        assert!(
            log.contains_key("max-size") && log.contains_key("max-file"),
            "{log:?}"
        );
        let ulimits = host.ulimits.unwrap_or_default();
        assert!(
            ulimits
                .iter()
                .any(|u| u.name.as_deref() == Some("nofile") && u.hard == Some(1024)),
            "{ulimits:?}"
        );
        executor.discard(run.job_id, run.attempt).await;
        assert_eq!(running(&docker, &handle).await, None);
        assert_eq!(containers_of_async(&docker, &job).await, 0);
    });
}

#[test]
fn a_pull_that_hangs_times_out() {
    let Some(docker) = docker() else { return };
    // A registry that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    {
        let connections = connections.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                connections.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = attempt("true", dir.path());
    run.spec.image = format!("127.0.0.1:{port}/gantry-test/never:1");
    let _cleanup = RemoveOnDrop(run.job_id.to_string());
    runtime().block_on(async {
        let options = DockerOptions {
            pull_timeout: Duration::from_secs(2),
            ..DockerOptions::default()
        };
        let executor = DockerExecutor::connect_with(options).await.expect("engine");
        let began = Instant::now();
        let outcome = executor.start(&run).await;
        if connections.load(Ordering::SeqCst) == 0 {
            let _: Option<()> = unavailable(
                "docker engine on this host's loopback",
                &format!(
                    "the engine never reached 127.0.0.1:{port} ({outcome:?}); a remote engine?"
                ),
            );
            return;
        }
        assert_eq!(outcome, Err(Outcome::PullTimedOut { after_secs: 2 }));
        let took = began.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(20),
            "{took:?}"
        );
        executor.discard(run.job_id, run.attempt).await;
    });
    assert_eq!(containers_of(&docker, &run.job_id.to_string()), 0);
}

#[test]
fn an_oom_killed_container_says_so() {
    let Some(docker) = docker() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // A shell variable doubling until the kernel kills the shell (the image has no python).
    let mut hog = attempt("echo growing; x=a; while :; do x=$x$x; done", dir.path());
    hog.spec.resources.memory_bytes = 16 << 20;
    let _cleanup = RemoveOnDrop(hog.job_id.to_string());
    let mut calm = attempt("echo calm", dir.path());
    calm.log_path = dir.path().join("calm.log");
    let _cleanup_calm = RemoveOnDrop(calm.job_id.to_string());
    runtime().block_on(async {
        let executor = DockerExecutor::connect().await.expect("engine");
        let handle = executor.start(&hog).await.expect("started");
        let outcome = tokio::time::timeout(WITHIN, executor.wait(&handle, &hog))
            .await
            .expect("the hog ends");
        let log = read(&hog.log_path);
        assert!(
            matches!(outcome, Outcome::Exited { code, oom_killed: true } if code != 0),
            "{outcome:?}\n{log}"
        );
        assert_eq!(count(&log, "stdout growing"), 1, "{log}");

        // One that stays within its memory is not reported as OOM-killed.
        let handle = executor.start(&calm).await.expect("started");
        assert_eq!(
            executor.wait(&handle, &calm).await,
            Outcome::Exited {
                code: 0,
                oom_killed: false
            }
        );
    });
    assert_eq!(containers_of(&docker, &hog.job_id.to_string()), 0);
}

async fn containers_of_async(docker: &bollard::Docker, job: &str) -> usize {
    let filters = HashMap::from([("label".to_owned(), vec![format!("gantry.job={job}")])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list")
        .len()
}

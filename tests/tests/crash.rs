//! `kill -9` of `gantry up` while jobs run, then a restart on the same data: every job reaches
//! exactly one terminal state, the chain verifies, and the views equal a rebuild. With Docker
//! the containers outlive the crash and are re-attached; local processes cannot be, so their
//! attempts fail as `node_lost` and are retried.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_events::{EmbeddedLog, verify_log};
use gantry_nodes::client::Client;
use gantry_projections::Projections;
use gantry_tests::services::unavailable;
use gantry_tests::system::{all_events, job_event_types};
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(data: &Path, port: u16, executor: &str) -> (Child, Client) {
    let child = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args(["up", "--executor", executor, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start gantry");
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("/healthz").is_err() {
        assert!(Instant::now() < deadline, "gantry never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, client)
}

fn wait_all(client: &Client, ids: &[String], states: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let jobs: Vec<Value> = ids
            .iter()
            .map(|id| client.get(&format!("/v1/jobs/{id}")).unwrap_or(Value::Null))
            .collect();
        if jobs.iter().all(|j| states.iter().any(|s| j["state"] == *s)) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs never reached {states:?}: {jobs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn crash_and_recover(executor: &str, image: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut first, client) = start(dir.path(), port, executor);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let spec = json!({
                "name": format!("job-{i}"), "image": image,
                "command": ["sh", "-c", "echo begin; sleep 3; echo end"],
                "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
                "retry": { "max_attempts": 3, "backoff_initial_ms": 100 },
            });
            client.post("/v1/jobs", &spec).expect("submit")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    wait_all(&client, &ids, &["running"]);
    first.kill().expect("kill -9");
    first.wait().expect("reap");

    let (mut second, client) = start(dir.path(), port, executor);
    let jobs = wait_all(&client, &ids, &["succeeded", "dead_lettered", "cancelled"]);
    let all = all_events(&client);
    for id in &ids {
        let types = job_event_types(&all, id);
        let terminal = types
            .iter()
            .filter(|t| {
                ["job.succeeded", "job.dead_lettered", "job.cancelled"].contains(&t.as_str())
            })
            .count();
        assert_eq!(terminal, 1, "job {id}: {types:?}");
    }
    // A clean stop, then the chain and the views are checked offline.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status();
    second.wait().expect("stopped");
    let data = dir.path().to_owned();
    actix_rt::System::new().block_on(async move {
        let log = EmbeddedLog::open_read_only(&data).await.expect("log");
        verify_log(&log, 1, None)
            .await
            .expect("answers")
            .expect("chain holds after kill -9");
        let live = Projections::open(data.join("views")).expect("views");
        let rebuilt_dir = tempfile::tempdir().expect("tempdir");
        let rebuilt = Projections::open(rebuilt_dir.path()).expect("views");
        rebuilt.catch_up(&log, |_, _| {}).await.expect("rebuild");
        assert_eq!(
            live.dump().expect("dump"),
            rebuilt.dump().expect("dump"),
            "views equal a rebuild"
        );
    });
    jobs
}

#[test]
fn kill_9_with_local_processes_retries_lost_attempts() {
    let jobs = crash_and_recover("process", "busybox");
    for job in &jobs {
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(
            job["attempt"], 2,
            "the lost attempt was retried once: {job}"
        );
    }
}

#[test]
fn kill_9_with_docker_reattaches_running_containers() {
    let image =
        std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into());
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _: Option<()> = unavailable("docker", &format!("no engine or no test image {image}"));
        return;
    }
    let jobs = crash_and_recover("docker", &image);
    for job in &jobs {
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["attempt"], 1, "re-attached, not retried: {job}");
    }
}

fn test_image() -> Option<String> {
    let image =
        std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into());
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return unavailable("docker", &format!("no engine or no test image {image}"));
    }
    Some(image)
}

fn submit(client: &Client, spec: &Value) -> String {
    client.post("/v1/jobs", spec).expect("submit")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Waits until the attempt's container has exited (no gantry is watching it).
fn wait_container_exited(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("docker")
            .args(["ps", "-a", "--filter"])
            .arg(format!("label=gantry.job={id}"))
            .args(["--filter", "status=exited", "--format", "{{.ID}}"])
            .output()
            .expect("docker ps");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the container never exited");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts gantry on `data` with Docker, submits `spec`, and kills gantry with SIGKILL once
/// the job runs. Returns the job's id.
fn run_then_kill_9(data: &Path, port: u16, spec: &Value) -> String {
    let (mut first, client) = start(data, port, "docker");
    let id = submit(&client, spec);
    wait_all(&client, std::slice::from_ref(&id), &["running"]);
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    id
}

/// Waits until the one job ends.
fn wait_end(client: &Client, id: &str) -> Value {
    wait_all(
        client,
        &[id.to_owned()],
        &["succeeded", "dead_lettered", "cancelled"],
    )
    .remove(0)
}

fn event_time_ns(events: &[Value], id: &str, ty: &str) -> u64 {
    events
        .iter()
        .find(|e| e["event"]["job_id"] == id && e["type"] == ty)
        .and_then(|e| e["time_ns"].as_u64())
        .unwrap_or_else(|| panic!("no {ty} for {id}"))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// A container that exits while gantry is down is reported with its real exit code and its
/// output, not re-run as a lost attempt.
#[test]
fn kill_9_then_a_container_that_exited_meanwhile_reports_its_real_exit() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let id = run_then_kill_9(
        dir.path(),
        port,
        &json!({
            "name": "exits-while-down", "image": image,
            "command": ["sh", "-c", "echo begin; sleep 2; echo finished; exit 3"],
            "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
            "retry": { "max_attempts": 1 },
        }),
    );
    wait_container_exited(&id);

    let (second, client) = start(dir.path(), port, "docker");
    let job = wait_end(&client, &id);
    assert_eq!(job["state"], "dead_lettered", "{job}");
    assert_eq!(job["attempt"], 1, "not re-run: {job}");
    assert_eq!(
        job["last_cause"],
        json!({ "kind": "non_zero_exit", "code": 3 }),
        "{job}"
    );
    let logs = client
        .get_raw(&format!("/v1/jobs/{id}/logs?attempt=1"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .expect("logs");
    assert!(
        logs.contains("begin") && logs.contains("finished"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("finished").count(),
        1,
        "output collected once: {logs}"
    );
    stop(second);
}

/// A timeout counts from the attempt's start as the log recorded it: gantry down for longer
/// than the timeout stops the container as soon as it is back, not a full timeout later.
#[test]
fn a_timeout_counts_from_the_recorded_start_across_a_restart() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let id = run_then_kill_9(
        dir.path(),
        port,
        &json!({
            "name": "slow", "image": image,
            "command": ["sh", "-c", "sleep 120"],
            "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
            "timeout_secs": 4,
            "retry": { "max_attempts": 1 },
        }),
    );
    // Down for longer than the whole timeout.
    std::thread::sleep(Duration::from_secs(5));

    let (second, client) = start(dir.path(), port, "docker");
    let job = wait_end(&client, &id);
    assert_eq!(
        job["last_cause"],
        json!({ "kind": "timeout", "after_secs": 4 }),
        "{job}"
    );
    let events = all_events(&client);
    let started = event_time_ns(&events, &id, "job.started");
    let failed = event_time_ns(&events, &id, "job.failed");
    let ran = Duration::from_nanos(failed.saturating_sub(started));
    // 5 s down + start-up; a timeout counted from the re-attach would end after 9 s or more.
    assert!(
        ran < Duration::from_millis(8500),
        "timed out {ran:?} after the recorded start"
    );
    stop(second);
}

/// Files under `dir` that process `pid` holds open.
fn open_files_under(pid: &str, dir: &Path) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

/// Pids of the job processes a local-process gantry left in its work dir.
fn job_pids(data: &Path) -> Vec<String> {
    let mut pids = Vec::new();
    let Ok(jobs) = std::fs::read_dir(data.join("work")) else {
        return pids;
    };
    for job in jobs.filter_map(Result::ok) {
        for attempt in std::fs::read_dir(job.path())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if let Ok(pid) = std::fs::read_to_string(attempt.path().join("pid")) {
                pids.push(pid.trim().to_owned());
            }
        }
    }
    pids
}

/// A restart right after `kill -9` always comes up: the job processes the killed gantry left
/// behind hold none of its files (so not the data dir's lock), and a lock still held by a
/// process that is exiting is waited for, not reported as "in use".
#[test]
fn a_restart_right_after_kill_9_always_comes_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    for round in 0..5 {
        let (mut child, client) = start(dir.path(), port, "process");
        let id = submit(
            &client,
            &json!({
                "name": format!("outlives-{round}"), "image": "busybox",
                "command": ["sh", "-c", "sleep 20"],
                "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
            }),
        );
        wait_all(&client, std::slice::from_ref(&id), &["running"]);
        for pid in job_pids(dir.path()) {
            let held = open_files_under(&pid, dir.path());
            assert!(
                held.is_empty(),
                "job process {pid} holds gantry's files: {held:?}"
            );
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        // No pause: start again at once.
    }
    let (child, client) = start(dir.path(), port, "process");
    // Ready (200) once the views have caught up with the log the restart found.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        match client.get("/readyz") {
            Ok(ready) => break ready,
            Err(e) => assert!(Instant::now() < deadline, "never ready: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready["log_head"].as_u64().unwrap_or(0) > 0, "{ready}");
    stop(child);
}

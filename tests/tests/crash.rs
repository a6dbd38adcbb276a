//! `kill -9` of `gantry up` while jobs run, then a restart on the same data: every job reaches
//! exactly one terminal state, the chain verifies, and the views equal a rebuild. With Docker
//! the containers outlive the crash and are re-attached; local processes cannot be, so their
//! attempts fail as `node_lost` and are retried.

use std::path::Path;
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

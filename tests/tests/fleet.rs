//! Fleet mode end to end: real `nats-server` processes, and control planes and worker nodes as
//! separate `gantry` processes (the `gantry-node` binary), started the way users start them.
//!
//! - placement by GPU count, model and memory lands on the right one of three nodes;
//! - `kill -9` of a node mid-job: `node.lost` within the timeout, the job finishes elsewhere,
//!   exactly once, with both attempts in its history;
//! - `kill -9` of the leading control plane: the other leads within 3 s, nothing is lost or
//!   run twice, the chain verifies, and a signed checkpoint covering it all is in the KV
//!   bucket;
//! - a NATS server restart mid-run loses nothing acknowledged;
//! - with NATS authorization, a node's account runs jobs but cannot publish events or speak
//!   for another node.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_nodes::client::Client;
use gantry_tests::services::NatsServer;
use gantry_tests::system::{all_events, job_event_types};
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A gantry process, killed (SIGKILL) when dropped.
struct Proc(Child);

impl Proc {
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn gantry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry-node"));
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env("GANTRY_LOG", "error");
    command
}

/// Starts a control plane; waits for its gateway.
fn control_plane(nats: &str, data: &Path, auth: &[(&str, &str)]) -> (Proc, Client) {
    let port = free_port();
    let mut child = gantry()
        .args(["up", "--nats", nats, "--node-timeout", "3s", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .envs(auth.iter().copied())
        .spawn()
        .expect("start a control plane");
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("/healthz").is_err() {
        assert!(Instant::now() < deadline, "control plane never answered");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the control plane exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), client)
}

/// A nats-server, a temp dir and a control plane on them (`None`: no nats-server here).
fn fleet() -> Option<(NatsServer, tempfile::TempDir, Proc, Client)> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cp, client) = control_plane(&nats.url(), &dir.path().join("cp"), &[]);
    Some((nats, dir, cp, client))
}

/// Starts a worker node with a fake GPU inventory (`[]`: CPU-only).
fn node(nats: &str, name: &str, data: &Path, gpus: &Value, auth: &[(&str, &str)]) -> Proc {
    node_with(nats, name, data, gpus, auth, &[])
}

/// [`node`] with more arguments.
fn node_with(
    nats: &str,
    name: &str,
    data: &Path,
    gpus: &Value,
    auth: &[(&str, &str)],
    more: &[&str],
) -> Proc {
    let child = gantry()
        .args([
            "node",
            "--nats",
            nats,
            "--name",
            name,
            "--executor",
            "process",
        ])
        .args(more)
        .arg("--data")
        .arg(data)
        .env("GANTRY_FAKE_GPUS", gpus.to_string())
        .envs(auth.iter().copied())
        .spawn()
        .expect("start a node");
    Proc(child)
}

fn wait_until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nodes_ready(client: &Client, names: &[&str]) {
    wait_until("nodes to join", Duration::from_secs(60), || {
        let nodes = client.get("/v1/nodes").ok()?;
        let ready = names.iter().all(|name| {
            nodes["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["id"] == *name && n["status"] == "ready")
        });
        ready.then_some(())
    });
}

fn leads(client: &Client) -> bool {
    client
        .get("/readyz")
        .ok()
        .is_some_and(|r| r["leading"] == true)
}

fn submit(client: &Client, spec: Value) -> String {
    let reply = wait_until(
        "a control plane to take the job",
        Duration::from_secs(30),
        || match client.post("/v1/jobs", &spec) {
            Ok(reply) => Some(reply),
            Err(error) => {
                eprintln!("submit: {error}");
                None
            }
        },
    );
    reply["id"].as_str().expect("id").to_owned()
}

fn job(client: &Client, id: &str) -> Value {
    client.get(&format!("/v1/jobs/{id}")).unwrap_or(Value::Null)
}

fn wait_state(client: &Client, id: &str, states: &[&str], within: Duration) -> Value {
    wait_until(&format!("job {id} to reach {states:?}"), within, || {
        let job = job(client, id);
        states.iter().any(|s| job["state"] == *s).then_some(job)
    })
}

fn spec(name: &str, command: &str, gpus: Value) -> Value {
    json!({
        "name": name, "image": "busybox",
        "command": ["sh", "-c", command],
        "resources": { "cpus": 0.1, "memory_bytes": 32u64 << 20, "gpus": gpus },
        "retry": { "max_attempts": 1 },
    })
}

fn gpu(uuid: &str, name: &str, gib: u64) -> Value {
    json!({ "uuid": uuid, "name": name, "memory_bytes": gib << 30, "driver_version": "580.65.06" })
}

/// The node the job's last attempt ran on.
fn ran_on(job: &Value) -> Value {
    job["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .map_or(Value::Null, |a| a["node"].clone())
}

/// Waits for job `id` to succeed after its first attempt, on `from`, was lost (`node_lost`);
/// returns the job, whose last attempt ran elsewhere.
fn finished_elsewhere(client: &Client, id: &str, from: &str) -> Value {
    let finished = wait_state(
        client,
        id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_ne!(ran_on(&finished), from, "{finished}");
    let attempts = finished["attempts"].as_array().expect("attempts");
    assert_eq!(attempts[0]["node"], from, "{finished}");
    assert_eq!(attempts[0]["cause"]["kind"], "node_lost", "{finished}");
    finished
}

fn terminal_count(events: &[Value], id: &str) -> usize {
    job_event_types(events, id)
        .iter()
        .filter(|t| ["job.succeeded", "job.dead_lettered", "job.cancelled"].contains(&t.as_str()))
        .count()
}

fn verify_chain(nats: &str) {
    let out = gantry()
        .args(["log", "verify", "--nats", nats])
        .stdout(Stdio::piped())
        .output()
        .expect("gantry log verify");
    assert!(
        out.status.success(),
        "the chain does not verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn placement_by_gpu_count_model_and_memory_lands_on_the_right_node() {
    let Some((nats, dir, _cp, client)) = fleet() else {
        return;
    };
    let h100s = json!([
        gpu("GPU-h100-0", "NVIDIA H100 80GB HBM3", 80),
        gpu("GPU-h100-1", "NVIDIA H100 80GB HBM3", 80)
    ]);
    let a100 = json!([gpu("GPU-a100-0", "NVIDIA A100-SXM4-40GB", 40)]);
    let _a = node(&nats.url(), "h100-node", &dir.path().join("a"), &h100s, &[]);
    let _b = node(&nats.url(), "a100-node", &dir.path().join("b"), &a100, &[]);
    let _c = node(
        &nats.url(),
        "cpu-node",
        &dir.path().join("c"),
        &json!([]),
        &[],
    );
    nodes_ready(&client, &["h100-node", "a100-node", "cpu-node"]);

    let cases = [
        ("two-gpus", json!({ "count": 2 }), "h100-node"),
        ("a100", json!({ "count": 1, "model": "A100" }), "a100-node"),
        (
            "big-memory",
            json!({ "count": 1, "min_memory_bytes": 60u64 << 30 }),
            "h100-node",
        ),
    ];
    let mut ids = Vec::new();
    for (name, gpus, want) in &cases {
        let id = submit(
            &client,
            spec(name, &format!("echo ran-{name}"), gpus.clone()),
        );
        ids.push((id, *name, *want));
    }
    for (id, name, want) in &ids {
        let job = wait_state(
            &client,
            id,
            &["succeeded", "failed", "dead_lettered"],
            Duration::from_secs(60),
        );
        assert_eq!(job["state"], "succeeded", "{name}: {job}");
        assert_eq!(ran_on(&job), *want, "{name} ran on the wrong node: {job}");
        // The output left the node: any gateway reads it from NATS.
        let output = wait_until("the output to be shipped", Duration::from_secs(20), || {
            let text = client.get_raw(&format!("/v1/jobs/{id}/logs")).ok()?;
            let text = String::from_utf8_lossy(&text).into_owned();
            text.contains(&format!("ran-{name}")).then_some(text)
        });
        assert!(output.contains(&format!("ran-{name}")), "{output}");
    }
    // A GPU job never lands on the CPU-only node, and the fleet shows free resources.
    let nodes = client.get("/v1/nodes").expect("nodes");
    let cpu = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == "cpu-node")
        .expect("cpu node")
        .clone();
    assert!(cpu["last_heartbeat_ms"].as_u64().is_some(), "{cpu}");
    assert!(cpu["free"]["cpu_millis"].as_u64().is_some(), "{cpu}");
    verify_chain(&nats.url());
}

#[test]
fn a_node_killed_mid_job_is_lost_and_its_job_finishes_elsewhere_once() {
    let Some((nats, dir, _cp, client)) = fleet() else {
        return;
    };
    let mut one = node(&nats.url(), "one", &dir.path().join("one"), &json!([]), &[]);
    let mut two = node(&nats.url(), "two", &dir.path().join("two"), &json!([]), &[]);
    nodes_ready(&client, &["one", "two"]);

    let id = submit(&client, spec("survivor", "sleep 3; echo done", json!(null)));
    let running = wait_state(&client, &id, &["running"], Duration::from_secs(60));
    let first = running["node"].as_str().expect("node").to_owned();
    let killed_at = Instant::now();
    if first == "one" {
        one.kill9();
    } else {
        two.kill9();
    }
    wait_until("node.lost", Duration::from_secs(30), || {
        all_events(&client)
            .iter()
            .any(|e| e["type"] == "node.lost" && e["event"]["node_id"] == first.as_str())
            .then_some(())
    });
    let lost_after = killed_at.elapsed();
    eprintln!(
        "node.lost recorded {} ms after the kill (timeout 3 s)",
        lost_after.as_millis()
    );
    assert!(
        lost_after >= Duration::from_secs(3),
        "lost before its timeout: {lost_after:?}"
    );
    assert!(
        lost_after < Duration::from_secs(8),
        "lost after {lost_after:?}"
    );
    let finished = finished_elsewhere(&client, &id, &first);
    let events = all_events(&client);
    assert_eq!(
        terminal_count(&events, &id),
        1,
        "{:?}",
        job_event_types(&events, &id)
    );
    assert_eq!(
        finished["attempts"].as_array().map(Vec::len),
        Some(2),
        "{finished}"
    );
    verify_chain(&nats.url());
}

#[test]
fn the_leading_control_plane_killed_mid_run_is_replaced_within_seconds() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (cp1, client1) = control_plane(&nats.url(), &dir.path().join("cp1"), &[]);
    wait_until("a leader", Duration::from_secs(30), || {
        leads(&client1).then_some(())
    });
    let (cp2, client2) = control_plane(&nats.url(), &dir.path().join("cp2"), &[]);
    let _n = node(
        &nats.url(),
        "worker",
        &dir.path().join("n"),
        &json!([]),
        &[],
    );
    nodes_ready(&client2, &["worker"]);
    assert!(!leads(&client2), "two leaders");

    let ids: Vec<String> = (0..4)
        .map(|i| {
            submit(
                &client2,
                spec(&format!("job-{i}"), "sleep 2; echo done", json!(null)),
            )
        })
        .collect();
    wait_state(&client2, &ids[0], &["running"], Duration::from_secs(60));
    let (mut leader, follower) = (cp1, client2);
    let _keep = cp2;
    leader.kill9();
    let killed = Instant::now();
    wait_until("the follower to lead", Duration::from_secs(10), || {
        leads(&follower).then_some(())
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(3), "takeover took {took:?}");
    eprintln!(
        "failover: the follower led {} ms after the leader was killed",
        took.as_millis()
    );

    let events = wait_until("every job to end", Duration::from_secs(90), || {
        let done = ids
            .iter()
            .all(|id| job(&follower, id)["state"] == "succeeded");
        done.then(|| all_events(&follower))
    });
    for id in &ids {
        assert_eq!(
            terminal_count(&events, id),
            1,
            "{:?}",
            job_event_types(&events, id)
        );
        let starts = job_event_types(&events, id)
            .iter()
            .filter(|t| *t == "job.started")
            .count();
        assert_eq!(
            starts,
            1,
            "job {id} ran twice: {:?}",
            job_event_types(&events, id)
        );
    }
    verify_chain(&nats.url());
    checkpoint_in_the_bucket_covers(&nats.url(), &follower, &events);
}

/// The control planes' Auditor signed a checkpoint covering `events` (with the key every
/// control plane on this machine shares) and published it to the fleet's KV bucket:
/// `gantry audit watch --nats` reads it there and checks its signature.
fn checkpoint_in_the_bucket_covers(nats: &str, client: &Client, events: &[Value]) {
    let last = events
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .expect("events");
    let key = gantry()
        .args(["audit", "key"])
        .stdout(Stdio::piped())
        .output()
        .expect("gantry audit key");
    assert!(key.status.success());
    let key = String::from_utf8(key.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let server = client.base().to_owned();
    let seen = wait_until(
        "a signed checkpoint in the bucket covering every job",
        Duration::from_secs(60),
        || {
            let out = gantry()
                .args(["audit", "watch", "--once", "--nats", nats, "--server"])
                .arg(&server)
                .args(["--key", &key])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .expect("gantry audit watch");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // Exit 2 while the bucket holds nothing yet; exit 1 would be a refused checkpoint.
            assert_ne!(out.status.code(), Some(1), "{text}");
            if !out.status.success() {
                eprintln!("not yet: {}", String::from_utf8_lossy(&out.stderr).trim());
                return None;
            }
            let size: u64 = text.split(" of ").nth(1)?.split(' ').next()?.parse().ok()?;
            (size >= last).then_some(text)
        },
    );
    assert!(seen.contains(": signed"), "{seen}");
}

/// Runs three jobs, disrupts the fleet while the first runs, submits one more, and checks that
/// every job ends exactly once.
fn jobs_survive(client: &Client, disrupt: impl FnOnce()) {
    let ids: Vec<String> = (0..3)
        .map(|i| {
            submit(
                client,
                spec(&format!("job-{i}"), "sleep 2; echo done", json!(null)),
            )
        })
        .collect();
    wait_state(client, &ids[0], &["running"], Duration::from_secs(60));
    disrupt();
    // Accepted after the disruption too.
    let late = submit(client, spec("late", "echo late", json!(null)));
    let mut all = ids.clone();
    all.push(late);
    // A liveness bound, generous for a loaded 2-core machine where the cluster's elections
    // and the control plane's catching up share the cores with the three servers.
    let deadline = Instant::now() + Duration::from_secs(240);
    let events = loop {
        let states: Vec<String> = all
            .iter()
            .map(|id| job(client, id)["state"].as_str().unwrap_or("?").to_owned())
            .collect();
        // A JetStream cluster electing a new stream leader answers 503 for a moment.
        if states.iter().all(|s| s == "succeeded")
            && let Ok(events) = gantry_tests::system::try_all_events(client)
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for every job to end; states now: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for id in &all {
        assert_eq!(
            terminal_count(&events, id),
            1,
            "{:?}",
            job_event_types(&events, id)
        );
    }
}

#[test]
fn a_nats_server_restart_mid_run_loses_nothing_acknowledged() {
    let Some((mut nats, dir, _cp, client)) = fleet() else {
        return;
    };
    let _n = node(
        &nats.url(),
        "worker",
        &dir.path().join("n"),
        &json!([]),
        &[],
    );
    nodes_ready(&client, &["worker"]);
    jobs_survive(&client, || nats.restart());
    verify_chain(&nats.url());
}

/// What a node's account may do (the same list `deploy/nats.conf` gives each node).
fn node_permissions(name: &str) -> String {
    format!(
        r#"{{ publish: {{ allow: [
            "gantry.node.{name}.>", "gantry.logs.{name}.>",
            "$JS.API.INFO", "$JS.API.STREAM.INFO.GANTRY_EVENTS", "$JS.API.STREAM.MSG.GET.GANTRY_EVENTS",
            "$JS.API.DIRECT.GET.GANTRY_EVENTS.>",
            "$JS.API.CONSUMER.CREATE.GANTRY_EVENTS", "$JS.API.CONSUMER.CREATE.GANTRY_EVENTS.>",
            "$JS.API.CONSUMER.MSG.NEXT.GANTRY_EVENTS.>", "$JS.API.CONSUMER.DELETE.GANTRY_EVENTS.>",
            "$JS.API.CONSUMER.INFO.GANTRY_EVENTS.>",
            "$JS.API.STREAM.INFO.GANTRY_LOGS", "$JS.API.STREAM.MSG.GET.GANTRY_LOGS",
            "$JS.API.DIRECT.GET.GANTRY_LOGS.>"
          ] }}, subscribe: {{ allow: ["_INBOX_{name}.>"] }} }}"#
    )
}

/// The server's next error (within 5 s) is a permissions violation.
async fn expect_violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) {
    let refused = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    assert!(
        refused.to_lowercase().contains("permissions violation"),
        "{what}: {refused:?}"
    );
}

#[test]
fn a_node_account_runs_jobs_but_cannot_publish_events_or_speak_for_another_node() {
    let config = format!(
        "authorization {{ users = [\n  {{ user: control, password: control-secret }}\n  {{ user: node-a, password: node-secret, permissions: {} }}\n] }}\n",
        node_permissions("a")
    );
    let Some(nats) = NatsServer::start_with_config(Some(&config)) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let control = [
        ("GANTRY_NATS_USER", "control"),
        ("GANTRY_NATS_PASSWORD", "control-secret"),
    ];
    let node_auth = [
        ("GANTRY_NATS_USER", "node-a"),
        ("GANTRY_NATS_PASSWORD", "node-secret"),
    ];
    let (_cp, client) = control_plane(&nats.url(), &dir.path().join("cp"), &control);
    let _a = node(
        &nats.url(),
        "a",
        &dir.path().join("a"),
        &json!([]),
        &node_auth,
    );
    nodes_ready(&client, &["a"]);
    // With a secret: the node asks the leader for it on its own subject and gets the answer
    // in its own inbox, the only one its account may read.
    let mut restricted = spec(
        "restricted",
        "echo \"token=$TOKEN len=${#TOKEN}\"",
        json!(null),
    );
    restricted["secrets"] = json!({ "TOKEN": "fleet-s3cr3t-value" });
    let id = submit(&client, restricted);
    let done = wait_state(
        &client,
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    // Shipped through NATS: it may land a moment after the job's end.
    wait_until("the masked output", Duration::from_secs(30), || {
        let output = client.get_raw(&format!("/v1/jobs/{id}/logs")).ok()?;
        let output = String::from_utf8_lossy(&output);
        assert!(!output.contains("fleet-s3cr3t-value"), "{output}");
        output.contains("token=*** len=18").then_some(())
    });

    // The same account, used directly: NATS refuses what a node may not do.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
        let nc = async_nats::ConnectOptions::with_user_and_password(
            "node-a".into(),
            "node-secret".into(),
        )
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = errors_tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .expect("connect as node-a");
        // Replies meant for other connections (another node's secrets) are out of reach.
        let _inboxes = nc.subscribe("_INBOX.>").await.expect("subscribe");
        nc.flush().await.expect("flush");
        expect_violation(&mut errors, "subscribing _INBOX.>").await;
        for subject in [
            "gantry.events.job.succeeded",
            "gantry.node.b.report",
            "gantry.node.b.secrets",
            "gantry.cp.command",
        ] {
            nc.publish(subject, "forged".into()).await.expect("publish");
            nc.flush().await.expect("flush");
            expect_violation(&mut errors, subject).await;
        }
        // Its own heartbeat subject is allowed: no error follows.
        nc.publish("gantry.node.a.heartbeat", "x".into())
            .await
            .expect("publish");
        nc.flush().await.expect("flush");
        assert!(
            tokio::time::timeout(Duration::from_millis(500), errors.recv())
                .await
                .is_err(),
            "its own subject was refused"
        );
    });
    // Nothing forged reached the log.
    let events = all_events(&client);
    assert!(events.iter().all(|e| e.get("undecodable").is_none()));
}

#[test]
fn one_server_of_a_three_server_cluster_killed_mid_run_loses_nothing() {
    let Some(mut cluster) = gantry_tests::services::NatsCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = gantry()
        .args(["up", "--nats", &url, "--nats-replicas", "3", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.path().join("cp"))
        .spawn()
        .expect("start a control plane");
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_until(
        "the control plane on the cluster",
        Duration::from_secs(90),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the control plane exited: {status}");
            }
            leads(&client).then_some(())
        },
    );
    let _cp = Proc(child);
    let _n = node(&url, "worker", &dir.path().join("n"), &json!([]), &[]);
    nodes_ready(&client, &["worker"]);
    jobs_survive(&client, || cluster.servers[0].stop());
    let survivors = format!("{},{}", cluster.servers[1].url(), cluster.servers[2].url());
    verify_chain(&survivors);
}

#[test]
fn a_partitioned_node_is_lost_its_job_re_placed_and_on_healing_its_stale_reports_are_fenced() {
    let Some(partition) = gantry_tests::services::Partition::create() else {
        return;
    };
    let Some(nats) = NatsServer::start_on(&partition.host_ip, None) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cp, client) = control_plane(&nats.url(), &dir.path().join("cp"), &[]);
    // `far` runs inside the namespace and reaches NATS only over the veth pair.
    let far = partition
        .command(env!("CARGO_BIN_EXE_gantry-node"))
        .args([
            "node",
            "--nats",
            &nats.url(),
            "--name",
            "far",
            "--executor",
            "process",
        ])
        .arg("--data")
        .arg(dir.path().join("far"))
        .env("GANTRY_FAKE_GPUS", "[]")
        .env("GANTRY_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the far node");
    let _far = Proc(far);
    let _near = node(
        &nats.url(),
        "near",
        &dir.path().join("near"),
        &json!([]),
        &[],
    );
    nodes_ready(&client, &["far", "near"]);

    // The job goes to `far`: `near` is cordoned until `far` runs it.
    client
        .post("/v1/nodes/near/cordon", &json!({}))
        .expect("cordon near");
    let id = submit(
        &client,
        spec("partitioned", "sleep 6; echo far-done", json!(null)),
    );
    let running = wait_state(&client, &id, &["running"], Duration::from_secs(60));
    assert_eq!(ran_on(&running), "far", "{running}");
    client
        .post("/v1/nodes/near/uncordon", &json!({}))
        .expect("uncordon near");

    partition.cut();
    let finished = finished_elsewhere(&client, &id, "far");
    assert_eq!(ran_on(&finished), "near", "{finished}");

    // Heal after `far`'s own attempt has ended there: its report of that end is stale.
    std::thread::sleep(Duration::from_secs(4));
    partition.heal();
    wait_until("far to rejoin", Duration::from_secs(60), || {
        let events = all_events(&client);
        let lost = events
            .iter()
            .position(|e| e["type"] == "node.lost" && e["event"]["node_id"] == "far")?;
        events[lost..]
            .iter()
            .any(|e| e["type"] == "node.joined" && e["event"]["node_id"] == "far")
            .then_some(())
    });
    nodes_ready(&client, &["far"]);
    // Give the healed node time to deliver its stale report; it must change nothing.
    std::thread::sleep(Duration::from_secs(3));
    let events = all_events(&client);
    let types = job_event_types(&events, &id);
    assert_eq!(terminal_count(&events, &id), 1, "{types:?}");
    let of_attempt_one: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["job_id"] == id.as_str() && e["event"]["attempt"] == 1)
        .collect();
    assert!(
        of_attempt_one.iter().all(|e| e["type"] != "job.succeeded"),
        "a stale report was applied: {types:?}"
    );
    assert_eq!(job(&client, &id)["state"], "succeeded");
    verify_chain(&nats.url());
}

/// Starts a node that leaves as `on_stop` says on SIGTERM.
fn leaving_node(nats: &str, name: &str, data: &Path, on_stop: &str) -> Proc {
    node_with(nats, name, data, &json!([]), &[], &["--on-stop", on_stop])
}

fn terminate(node: &mut Proc) -> Instant {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(node.0.id().to_string())
        .status();
    Instant::now()
}

/// A job running on node `leaving` when it was told to stop, and the fleet around it.
struct Leaving {
    client: Client,
    job: String,
    node: Proc,
    stopped: Instant,
    /// The NATS server, data, control plane and the node that stays: alive while the test runs.
    _fleet: (NatsServer, tempfile::TempDir, Proc, Proc),
}

/// Runs one job on `leaving` (the other node cordoned meanwhile), then stops `leaving`.
fn job_on_leaving_node(on_stop: &str) -> Leaving {
    let (nats, dir, cp, client) = fleet().expect("nats-server");
    let mut leaving = leaving_node(&nats.url(), "leaving", &dir.path().join("l"), on_stop);
    let stays = node(&nats.url(), "stays", &dir.path().join("s"), &json!([]), &[]);
    nodes_ready(&client, &["leaving", "stays"]);
    client
        .post("/v1/nodes/stays/cordon", &json!({}))
        .expect("cordon");
    let job = submit(&client, spec("leaver", "sleep 4; echo done", json!(null)));
    let running = wait_state(&client, &job, &["running"], Duration::from_secs(60));
    assert_eq!(ran_on(&running), "leaving", "{running}");
    client
        .post("/v1/nodes/stays/uncordon", &json!({}))
        .expect("uncordon");
    let stopped = terminate(&mut leaving);
    Leaving {
        client,
        job,
        node: leaving,
        stopped,
        _fleet: (nats, dir, cp, stays),
    }
}

#[test]
fn a_node_stopped_with_hand_back_hands_its_attempt_back_to_run_elsewhere() {
    if NatsServer::start().is_none() {
        return;
    }
    let Leaving {
        client,
        job: id,
        node: mut leaving,
        stopped,
        _fleet,
    } = job_on_leaving_node("hand-back");
    let finished = finished_elsewhere(&client, &id, "leaving");
    assert_eq!(ran_on(&finished), "stays", "{finished}");
    // It left without waiting for the attempt's own end.
    let status = wait_until("the node to exit", Duration::from_secs(20), || {
        leaving.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_node_stopped_with_finish_lets_its_attempt_end_there_first() {
    if NatsServer::start().is_none() {
        return;
    }
    let Leaving {
        client,
        job: id,
        node: mut leaving,
        _fleet,
        ..
    } = job_on_leaving_node("finish");
    let status = wait_until("the node to exit", Duration::from_secs(30), || {
        leaving.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
    let finished = wait_state(
        &client,
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(10),
    );
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(ran_on(&finished), "leaving", "{finished}");
    assert_eq!(
        finished["attempts"].as_array().map(Vec::len),
        Some(1),
        "{finished}"
    );
    let nodes = client.get("/v1/nodes").expect("nodes");
    let leaving = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == "leaving")
        .expect("leaving node");
    assert_eq!(leaving["status"], "draining", "{leaving}");
}

#[test]
fn a_nodes_outputs_go_to_the_fleets_bucket_and_download_through_any_gateway() {
    let Some(s3) = gantry_tests::services::S3Server::start() else {
        return;
    };
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = s3.endpoint();
    let mut env: Vec<(&str, String)> = s3.env().to_vec();
    env.extend([
        ("GANTRY_S3_BUCKET", "fleet-artifacts".to_owned()),
        ("GANTRY_S3_ENDPOINT", endpoint),
        ("GANTRY_S3_PATH_STYLE", "true".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_cp, client) = control_plane(&nats.url(), &dir.path().join("cp"), &env);
    let _a = node(&nats.url(), "a", &dir.path().join("a"), &json!([]), &env);
    nodes_ready(&client, &["a"]);
    let id = submit(
        &client,
        spec(
            "with-outputs",
            "echo 'epoch 3' > \"$GANTRY_OUTPUT_DIR/metrics.txt\"",
            json!(null),
        ),
    );
    let done = wait_state(
        &client,
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let listed = client
        .get(&format!("/v1/jobs/{id}/artifacts"))
        .expect("artifacts");
    let names: Vec<&str> = listed["artifacts"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, [".gantry/output.log", "metrics.txt"]);
    let bytes = client
        .get_raw(&format!("/v1/jobs/{id}/artifacts/metrics.txt"))
        .expect("download");
    assert_eq!(bytes, b"epoch 3\n");

    // A pipeline through the fleet: the leader starts the second stage once the first has
    // ended, with the first's output (in the bucket) as its input.
    let stage =
        |name: &str, script: &str| json!({ "name": name, "job": spec(name, script, json!(null)) });
    let mut second = stage(
        "second",
        "cat \"$GANTRY_INPUT_DIR/m.txt\" > \"$GANTRY_OUTPUT_DIR/copy.txt\"",
    );
    second["inputs"] = json!([{ "stage": "first", "artifact": "metrics.txt", "path": "m.txt" }]);
    let reply = client
        .post(
            "/v1/pipelines",
            &json!({
                "name": "through-the-fleet",
                "stages": [
                    stage("first", "echo 'epoch 4' > \"$GANTRY_OUTPUT_DIR/metrics.txt\""),
                    second,
                ],
            }),
        )
        .expect("pipeline accepted");
    let pipeline = reply["id"].as_str().expect("id").to_owned();
    let view = wait_until("the pipeline to end", Duration::from_secs(60), || {
        let view = client.get(&format!("/v1/pipelines/{pipeline}")).ok()?;
        (view["state"] != "running").then_some(view)
    });
    assert_eq!(view["state"], "succeeded", "{view}");
    let copy = view["stages"][1]["job_id"].as_str().expect("second ran");
    let bytes = client
        .get_raw(&format!("/v1/jobs/{copy}/artifacts/copy.txt"))
        .expect("download");
    assert_eq!(bytes, b"epoch 4\n");
}

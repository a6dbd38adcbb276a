//! Pipelines through the real `gantry`: stages run in dependency order, a stage reads the
//! outputs of the stages before it (from a real S3 server), a failed stage skips its
//! dependents unless they run always, a bad pipeline is refused naming the stage and field, a
//! dry run starts nothing, a cancel stops what is left, and the views rebuilt from the log equal
//! the live ones.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_events::{EmbeddedLog, EventLog};
use gantry_nodes::client::{Client, ClientError};
use gantry_nodes::up::ExecutorChoice;
use gantry_projections::Projections;
use gantry_tests::services::S3Server;
use gantry_tests::system::{Gantry, all_events};
use serde_json::{Value, json};

fn stage(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "job": {
            "image": "busybox", "command": ["sh", "-c", script],
            "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
            "retry": { "max_attempts": 1 },
        },
    })
}

/// Polls a pipeline until it leaves `running`.
fn wait_pipeline(client: &Client, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let view = client
            .get(&format!("/v1/pipelines/{id}"))
            .expect("pipeline");
        if view["state"] != "running" {
            return view;
        }
        assert!(Instant::now() < deadline, "pipeline never ended: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stage_of<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {view}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `gantry up` (the real binary) with its artifacts on `s3`'s bucket.
fn start_on_s3(data: &Path, s3: &S3Server, profiles: &Path) -> (Child, Client, String) {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry-node"));
    command
        .args(["up", "--executor", "process", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .arg("--profiles")
        .arg(profiles)
        .args(["--s3-bucket", "pipeline-artifacts", "--s3-path-style"])
        .arg("--s3-endpoint")
        .arg(s3.endpoint())
        .envs(s3.env())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command.spawn().expect("start gantry");
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new(&base);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("/healthz").is_err() {
        assert!(Instant::now() < deadline, "gantry never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, client, base)
}

fn gantry_cli(client_base: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args(args)
        .args(["--server", client_base])
        .env_remove("GANTRY_API_KEY")
        .output()
        .expect("run gantry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_two_stage_pipeline_on_s3_passes_the_first_stages_output_to_the_second() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = dir.path().join("profiles.json");
    std::fs::write(
        &profiles,
        json!({ "small": { "cpus": 0.5, "memory_bytes": 64u64 << 20 } }).to_string(),
    )
    .expect("profiles");
    let data = dir.path().join("data");
    let (mut child, client, base) = start_on_s3(&data, &s3, &profiles);

    let mut train = stage(
        "train",
        "wc -l < \"$GANTRY_INPUT_DIR/data/rows.csv\" > \"$GANTRY_OUTPUT_DIR/rows.txt\"",
    );
    train["inputs"] =
        json!([{ "stage": "prepare", "artifact": "rows.csv", "path": "data/rows.csv" }]);
    train["job"]["profile"] = json!("small");
    train["job"]["resources"] = json!({ "memory_bytes": 32u64 << 20 });
    let pipeline = json!({
        "name": "prepare-then-train",
        "stages": [
            train,
            stage("prepare", "printf 'a\\nb\\nc\\n' > \"$GANTRY_OUTPUT_DIR/rows.csv\""),
        ],
    });
    let file = dir.path().join("pipeline.json");
    std::fs::write(&file, pipeline.to_string()).expect("write pipeline");
    let file = file.to_str().expect("utf-8");

    // A dry run prints the order and starts nothing.
    let (ok, out) = gantry_cli(&base, &["pipeline", "submit", file, "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("order: prepare → train"), "{out}");
    assert!(
        client.get("/v1/pipelines").expect("list")["pipelines"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a dry run records nothing"
    );

    let (ok, out) = gantry_cli(&base, &["pipeline", "submit", file, "--wait"]);
    assert!(ok, "the pipeline succeeds: {out}");
    let id = out
        .split_whitespace()
        .skip_while(|w| *w != "pipeline")
        .nth(1)
        .expect("id printed")
        .trim_end_matches(':')
        .to_owned();
    let view = wait_pipeline(&client, &id, Duration::from_secs(60));
    assert_eq!(view["state"], "succeeded", "{view}");
    let prepare = stage_of(&view, "prepare");
    let train = stage_of(&view, "train");
    let prepare_job = prepare["job_id"].as_str().expect("prepare ran");
    let train_job = train["job_id"].as_str().expect("train ran");

    // The second stage read the first's output, by its hash, and wrote what it found.
    let stored = client
        .get(&format!("/v1/jobs/{prepare_job}/artifacts"))
        .expect("artifacts")["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "rows.csv").cloned())
        .expect("rows.csv stored");
    let job = client.get(&format!("/v1/jobs/{train_job}")).expect("job");
    let input = &job["spec"]["inputs"][0];
    assert_eq!(input["from"], json!(prepare_job));
    assert_eq!(input["sha256"], stored["sha256"], "{job}");
    assert_eq!(job["pipeline"]["stage"], "train", "{job}");
    assert_eq!(
        job["spec"]["resources"]["cpu_millis"], 500,
        "the profile's CPUs"
    );
    assert_eq!(
        job["spec"]["resources"]["memory_bytes"],
        32u64 << 20,
        "the stage's own memory over the profile's"
    );
    let rows = client
        .get_raw(&format!("/v1/jobs/{train_job}/artifacts/rows.txt"))
        .expect("download");
    assert_eq!(String::from_utf8_lossy(&rows).trim(), "3");
    let csv = client
        .get_raw(&format!("/v1/jobs/{prepare_job}/artifacts/rows.csv"))
        .expect("download");
    assert_eq!(csv, b"a\nb\nc\n", "byte for byte from the bucket");
    assert!(
        !data.join("artifacts/sha256").exists(),
        "the outputs went to the bucket, not the data dir"
    );

    // `gantry pipeline show` names each stage and its job.
    let (ok, out) = gantry_cli(&base, &["pipeline", "show", &id]);
    assert!(ok, "{out}");
    assert!(
        out.contains("succeeded") && out.contains(train_job),
        "{out}"
    );

    // The views rebuilt from the log equal the live ones, pipelines included (after a clean
    // stop, so the live views are flushed).
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(stopped.success());
    let status = child.wait().expect("gantry exits");
    assert!(status.success(), "a clean stop: {status}");
    actix_rt::System::new().block_on(async move {
        let log = EmbeddedLog::open_read_only(&data).await.expect("log");
        let live = Projections::open(data.join("views")).expect("views");
        let rebuilt_dir = tempfile::tempdir().expect("tempdir");
        let rebuilt = Projections::open(rebuilt_dir.path()).expect("views");
        // Up to where the live views stand: a stop appends its own events (the node drains)
        // after the projector has stopped; the next start catches up on them.
        let through = live.checkpoint().expect("checkpoint").seq;
        let mut next = 1;
        while next <= through {
            let entries = log.read(next, 4096).await.expect("read");
            let entries: Vec<_> = entries.into_iter().filter(|e| e.seq <= through).collect();
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            rebuilt.apply(&entries).expect("rebuild");
            next = last + 1;
        }
        assert_eq!(
            live.dump().expect("dump"),
            rebuilt.dump().expect("dump"),
            "views equal a rebuild"
        );
        let id = id.parse().expect("id");
        assert_eq!(
            rebuilt.pipeline_in(&id, None).expect("read"),
            live.pipeline_in(&id, None).expect("read")
        );
    });
}

fn refused(gantry: &Gantry, body: &Value) -> (u16, String, Option<String>) {
    match gantry.client.post("/v1/pipelines", body) {
        Err(ClientError::Api {
            status,
            code,
            field,
            ..
        }) => (status, code, field),
        other => panic!("accepted {body}: {other:?}"),
    }
}

#[test]
fn a_failed_stage_skips_its_dependents_unless_they_run_always_and_bad_pipelines_are_refused() {
    let gantry = Gantry::start(ExecutorChoice::Process);

    // Refused whole, naming the stage and the field.
    for (stages, code, field) in [
        (
            json!([stage("a", "true"), stage("a", "true")]),
            "duplicate_name",
            "stages[1].name",
        ),
        (
            json!([stage("a", "true"), {"name": "b", "after": ["c"], "job": stage("b", "true")["job"]}]),
            "unknown_stage",
            "stages[1].after[0]",
        ),
        (
            json!([
                {"name": "a", "after": ["b"], "job": stage("a", "true")["job"]},
                {"name": "b", "after": ["a"], "job": stage("b", "true")["job"]},
            ]),
            "cycle",
            "stages[0].after",
        ),
        (
            json!([{"name": "a", "job": {"image": "busybox", "resources": []}}]),
            "invalid_type",
            "stages[0].job.resources",
        ),
        (
            json!([{"name": "a", "job": {"image": "busybox", "profile": "h100"}}]),
            "unknown_profile",
            "stages[0].job.profile",
        ),
        (
            json!([{"name": "a", "job": {"image": "busybox", "inputs": [{"from": uuid::Uuid::now_v7(), "artifact": "x"}]}}]),
            "input_not_found",
            "stages[0].job.inputs[0].from",
        ),
        (
            json!([stage("a", "true"), {"name": "b", "inputs": [{"stage": "a", "artifact": "../../etc/passwd"}], "job": stage("b", "true")["job"]}]),
            "invalid_name",
            "stages[1].inputs[0].artifact",
        ),
        (
            json!([{"name": "a", "job": {"image": "busybox", "typo": 1}}]),
            "invalid_json",
            "stages[0].job",
        ),
    ] {
        let (status, got_code, got_field) =
            refused(&gantry, &json!({ "name": "bad", "stages": stages }));
        assert_eq!(status, 400, "{stages}");
        assert_eq!(got_code, code, "{stages}");
        assert!(
            got_field.as_deref().is_some_and(|f| f.starts_with(field)),
            "{got_field:?} for {stages}"
        );
    }
    let jobs = gantry.client.get("/v1/jobs").expect("jobs")["jobs"].clone();
    assert_eq!(jobs, json!([]), "a refused pipeline starts no job");

    // prepare fails: train (on success) is skipped, report (always) runs.
    let mut train = stage("train", "true");
    train["after"] = json!(["prepare"]);
    let mut report = stage("report", "echo reporting");
    report["after"] = json!(["train", "prepare"]);
    report["run_if"] = json!("always");
    let reply = gantry
        .client
        .post(
            "/v1/pipelines",
            &json!({
                "name": "fails-early",
                "stages": [stage("prepare", "exit 3"), train, report],
            }),
        )
        .expect("accepted");
    let id = reply["id"].as_str().expect("id").to_owned();
    assert_eq!(reply["order"], json!(["prepare", "train", "report"]));
    let view = wait_pipeline(&gantry.client, &id, Duration::from_secs(60));
    assert_eq!(view["state"], "failed", "{view}");
    assert_eq!(stage_of(&view, "prepare")["state"], "dead_lettered");
    let train = stage_of(&view, "train");
    assert_eq!(train["state"], "skipped", "{view}");
    assert!(train["job_id"].is_null(), "a skipped stage runs no job");
    assert!(
        train["skipped"]
            .as_str()
            .is_some_and(|r| r.contains("prepare")),
        "{train}"
    );
    let report = stage_of(&view, "report");
    assert_eq!(report["state"], "succeeded", "{view}");
    let out = gantry.logs(report["job_id"].as_str().expect("ran"), 1);
    assert!(out.contains("reporting"), "{out}");

    // Cancelling: the running stage is cancelled, the waiting one skipped, nothing starts.
    let mut second = stage("second", "true");
    second["after"] = json!(["first"]);
    let reply = gantry
        .client
        .post(
            "/v1/pipelines",
            &json!({ "name": "long", "stages": [stage("first", "sleep 30"), second] }),
        )
        .expect("accepted");
    let long = reply["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stage_of(
        &gantry
            .client
            .get(&format!("/v1/pipelines/{long}"))
            .expect("get"),
        "first",
    )["state"]
        != "running"
    {
        assert!(Instant::now() < deadline, "first never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    gantry
        .client
        .post(
            &format!("/v1/pipelines/{long}/cancel"),
            &json!({"reason": "enough"}),
        )
        .expect("cancel accepted");
    let view = wait_pipeline(&gantry.client, &long, Duration::from_secs(60));
    assert_eq!(view["state"], "cancelled", "{view}");
    assert_eq!(stage_of(&view, "first")["state"], "cancelled", "{view}");
    assert_eq!(stage_of(&view, "second")["state"], "skipped", "{view}");
    assert_eq!(view["cancelled"]["reason"], "enough");
    match gantry
        .client
        .post(&format!("/v1/pipelines/{long}/cancel"), &json!({}))
    {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 409, "an ended pipeline"),
        other => panic!("{other:?}"),
    }
    match gantry
        .client
        .get(&format!("/v1/pipelines/{}", uuid::Uuid::now_v7()))
    {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 404),
        other => panic!("{other:?}"),
    }

    // Every step is in the log.
    let types: Vec<String> = all_events(&gantry.client)
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.starts_with("pipeline."))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        types,
        [
            "pipeline.submitted",
            "pipeline.stage_skipped",
            "pipeline.submitted",
            "pipeline.cancelled",
            "pipeline.stage_skipped",
        ]
    );
}

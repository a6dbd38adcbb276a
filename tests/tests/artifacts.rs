//! A job's outputs (files under `$GANTRY_OUTPUT_DIR`) and its kept output are stored when the
//! attempt ends, on success and on failure, recorded by `artifact.stored` events, listed and
//! downloaded byte for byte (whole, by range, with the SHA-256 as ETag) through the gateway
//! and the CLI; links out of the output dir are never followed.

use std::process::Command;
use std::time::Duration;

use gantry_events::Hash;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::{Gantry, all_events, raw_http};
use serde_json::{Value, json};

fn job(name: &str, script: &str) -> Value {
    json!({
        "name": name, "image": "busybox", "command": ["sh", "-c", script],
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
        "retry": { "max_attempts": 1 },
    })
}

fn artifacts(gantry: &Gantry, id: &str) -> Vec<Value> {
    gantry
        .client
        .get(&format!("/v1/jobs/{id}/artifacts"))
        .expect("artifacts")["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn download(
    gantry: &Gantry,
    id: &str,
    name: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(gantry.addr).expect("connect");
    let mut head = format!(
        "GET /v1/jobs/{id}/artifacts/{name} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        gantry.addr
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, response[split + 4..].to_vec())
}

#[test]
fn outputs_are_stored_listed_and_downloaded_byte_for_byte() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    // 1 MiB of varied bytes, a nested file, and links out of the output dir.
    let script = "cd \"$GANTRY_OUTPUT_DIR\" && mkdir -p ckpt && echo '{\"loss\": 0.25}' > metrics.json \
        && i=0; while [ $i -lt 16384 ]; do printf '%08d-abcdefghijklmnopqrstuvwxyz-0123456789-ABCDEFGHIJKLMNOP\\n' $i; i=$((i+1)); done > ckpt/weights.bin \
        && ln -s /etc/passwd leak && ln -s / root && echo done";
    let id = gantry.submit(job("outputs", script));
    let done = gantry.wait_for(
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done}");

    let listed = artifacts(&gantry, &id);
    let names: Vec<&str> = listed.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(
        names,
        [".gantry/output.log", "ckpt/weights.bin", "metrics.json"]
    );
    let weights = listed
        .iter()
        .find(|a| a["name"] == "ckpt/weights.bin")
        .expect("weights");
    assert_eq!(weights["size_bytes"], 16384 * 64);
    assert_eq!(weights["attempt"], 1);

    // Whole, byte for byte, hashing to what was recorded.
    let (status, head, body) = download(&gantry, &id, "ckpt/weights.bin", &[]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body.len(), 16384 * 64);
    assert_eq!(
        Some(Hash::of(&body).to_hex().as_str()),
        weights["sha256"].as_str()
    );
    assert!(body.starts_with(b"00000000-abcdefghijklmnopqrstuvwxyz-"));
    let etag = format!("\"{}\"", Hash::of(&body).to_hex());
    assert!(head.contains(&format!("etag: {etag}")), "{head}");
    // A range, the unchanged answer, a range past the end.
    let (status, head, part) = download(
        &gantry,
        &id,
        "ckpt/weights.bin",
        &[("Range", "bytes=64-71")],
    );
    assert_eq!(status, 206);
    assert_eq!(part, b"00000001");
    assert!(
        head.contains("content-range: bytes 64-71/1048576"),
        "{head}"
    );
    let (status, _, _) = download(
        &gantry,
        &id,
        "ckpt/weights.bin",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(status, 304);
    let (status, _, _) = download(
        &gantry,
        &id,
        "ckpt/weights.bin",
        &[("Range", "bytes=2000000-")],
    );
    assert_eq!(status, 416);
    // The output log, stored like the files.
    let (_, _, log) = download(&gantry, &id, ".gantry/output.log", &[]);
    assert!(String::from_utf8_lossy(&log).contains("stdout done"));
    // Links were not followed, and names that leave the job's artifacts find nothing.
    for name in [
        "leak",
        "root/etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "ckpt/../metrics.json",
    ] {
        let (status, _, body) = download(&gantry, &id, name, &[]);
        assert_eq!(status, 404, "{name}: {}", String::from_utf8_lossy(&body));
    }

    // Each one is an `artifact.stored` event of attempt 1, before the job's end.
    let events = all_events(&gantry.client);
    let stored: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "artifact.stored" && e["event"]["job_id"] == json!(id))
        .collect();
    assert_eq!(stored.len(), 3);
    let end = events
        .iter()
        .position(|e| e["type"] == "job.succeeded" && e["event"]["job_id"] == json!(id))
        .expect("end");
    assert!(
        events[..end]
            .iter()
            .filter(|e| e["type"] == "artifact.stored")
            .count()
            >= 3
    );

    // The CLI downloads the same bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("weights.bin");
    let cli = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args(["artifacts", &id, "--get", "ckpt/weights.bin", "-o"])
        .arg(&target)
        .args(["--server", &format!("http://{}", gantry.addr)])
        .output()
        .expect("gantry artifacts");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(std::fs::read(&target).expect("downloaded"), body);
}

#[test]
fn a_failed_attempt_keeps_its_outputs_and_too_many_fail_the_job() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let id = gantry.submit(job(
        "fails",
        "echo partial > \"$GANTRY_OUTPUT_DIR/partial.txt\"; exit 3",
    ));
    let done = gantry.wait_for(
        &id,
        &["dead_lettered", "succeeded"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "dead_lettered");
    let names: Vec<String> = artifacts(&gantry, &id)
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains(&"partial.txt".to_owned()), "{names:?}");

    // More files than a job may leave: the job fails with the limit named, and what fitted is
    // listed.
    let id = gantry.submit(job(
        "too-many",
        "cd \"$GANTRY_OUTPUT_DIR\"; i=0; while [ $i -lt 1005 ]; do : > f$i; i=$((i+1)); done",
    ));
    let done = gantry.wait_for(
        &id,
        &["dead_lettered", "succeeded"],
        Duration::from_secs(90),
    );
    assert_eq!(done["state"], "dead_lettered", "{done}");
    assert_eq!(done["last_cause"]["kind"], "outputs_too_large", "{done}");
    let kept = artifacts(&gantry, &id).len();
    assert_eq!(kept, 1_000 + 1, "the first 1,000 files and the output log");
    let (status, _, _) = raw_http(gantry.addr, "GET", "/v1/jobs/not-a-job/artifacts", &[], b"");
    assert_eq!(status, 400);
}

#[test]
fn a_docker_job_leaves_outputs_in_its_mounted_folder() {
    let image =
        std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into());
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        gantry_tests::services::unavailable::<()>("Docker", &format!("test image {image} missing"));
        return;
    }
    let gantry = Gantry::start(ExecutorChoice::Docker);
    let mut spec = job(
        "in-docker",
        "echo \"model from $(id -u)\" > \"$GANTRY_OUTPUT_DIR/model.txt\"; echo ok",
    );
    spec["image"] = json!(image);
    let id = gantry.submit(spec);
    let done = gantry.wait_for(
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(90),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let names: Vec<String> = artifacts(&gantry, &id)
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, [".gantry/output.log", "model.txt"]);
    let (status, _, body) = download(&gantry, &id, "model.txt", &[]);
    assert_eq!(status, 200);
    assert_eq!(body, b"model from 1000\n", "written by the job's own user");

    // A second container reads it as an input, read-only.
    let mut reader = job(
        "reads-in-docker",
        "cat \"$GANTRY_INPUT_DIR/model.txt\"; (echo x > \"$GANTRY_INPUT_DIR/model.txt\") 2>/dev/null || echo READ-ONLY",
    );
    reader["image"] = json!(image);
    reader["inputs"] = json!([{ "from": id, "artifact": "model.txt" }]);
    let second = gantry.submit(reader);
    let done = gantry.wait_for(
        &second,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(90),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let output = gantry.logs(&second, 1);
    assert!(output.contains("stdout model from 1000"), "{output}");
    assert!(output.contains("stdout READ-ONLY"), "{output}");
}

#[test]
fn a_job_reads_an_earlier_jobs_output_read_only_and_a_corrupted_one_stops_it() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let first = gantry.submit(job(
        "prepare",
        "mkdir -p \"$GANTRY_OUTPUT_DIR/data\" && echo 'x,y' > \"$GANTRY_OUTPUT_DIR/data/train.csv\"",
    ));
    let done = gantry.wait_for(
        &first,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let stored = artifacts(&gantry, &first)
        .into_iter()
        .find(|a| a["name"] == "data/train.csv")
        .expect("stored");

    let mut second = job(
        "train",
        "cat \"$GANTRY_INPUT_DIR/in/train.csv\"; \
         (echo changed > \"$GANTRY_INPUT_DIR/in/train.csv\") 2>/dev/null && echo WROTE || echo READ-ONLY",
    );
    second["inputs"] =
        json!([{ "from": first, "artifact": "data/train.csv", "path": "in/train.csv" }]);
    let id = gantry.submit(second.clone());
    let done = gantry.wait_for(
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let input = &done["spec"]["inputs"][0];
    assert_eq!(
        input["sha256"], stored["sha256"],
        "the input is recorded by its hash"
    );
    let output = gantry.logs(&id, 1);
    assert!(output.contains("stdout x,y"), "{output}");
    assert!(output.contains("stdout READ-ONLY"), "{output}");

    // Inputs that name nothing, or a path out of the input folder, are refused at the edge.
    for (inputs, field) in [
        (
            json!([{ "from": first, "artifact": "nope.csv" }]),
            "inputs[0].artifact",
        ),
        (
            json!([{ "from": uuid::Uuid::now_v7(), "artifact": "data/train.csv" }]),
            "inputs[0].from",
        ),
        (
            json!([{ "from": first, "artifact": "data/train.csv", "path": "../escape" }]),
            "inputs[0].path",
        ),
    ] {
        let mut spec = job("bad-input", "true");
        spec["inputs"] = inputs;
        match gantry.try_submit(&spec) {
            Err(gantry_nodes::client::ClientError::Api {
                status, field: f, ..
            }) => {
                assert_eq!((status, f.as_deref()), (400, Some(field)));
            }
            other => panic!("{other:?}"),
        }
    }

    // The stored bytes change under gantry: a job reading them fails as input_corrupt and
    // never starts.
    let hex = stored["sha256"].as_str().expect("sha256");
    let blob = gantry
        .data()
        .join("artifacts/sha256")
        .join(&hex[..2])
        .join(hex);
    std::fs::write(&blob, b"x,z\n").expect("tamper");
    let third = gantry.submit(second);
    let done = gantry.wait_for(
        &third,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "dead_lettered", "{done}");
    assert_eq!(done["last_cause"]["kind"], "input_corrupt", "{done}");
    let events = all_events(&gantry.client);
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "job.started" && e["event"]["job_id"] == json!(third)),
        "never started"
    );
}

#[test]
fn a_receipt_cites_each_fact_and_verify_names_a_changed_output() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let first = gantry.submit(job(
        "makes",
        "echo 'weights v1' > \"$GANTRY_OUTPUT_DIR/model.bin\"",
    ));
    gantry.wait_for(&first, &["succeeded"], Duration::from_secs(60));
    let mut second = job(
        "uses",
        "cat \"$GANTRY_INPUT_DIR/model.bin\" > \"$GANTRY_OUTPUT_DIR/copy.bin\"",
    );
    second["inputs"] = json!([{ "from": first, "artifact": "model.bin" }]);
    let id = gantry.submit(second);
    gantry.wait_for(&id, &["succeeded"], Duration::from_secs(60));

    let receipt = gantry
        .client
        .get(&format!("/v1/jobs/{id}/receipt"))
        .expect("receipt");
    let facts = receipt["facts"].as_array().expect("facts");
    let kinds: Vec<&str> = facts.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "job.submitted",
            "job.placed",
            "job.started",
            "artifact.stored",
            "artifact.stored",
            "job.succeeded"
        ]
    );
    // Each cited event is the log's own.
    let events = all_events(&gantry.client);
    for f in facts {
        let seq = f["seq"].as_u64().expect("seq");
        let logged = events.iter().find(|e| e["seq"] == seq).expect("in the log");
        assert_eq!(logged["hash"], f["hash"]);
    }
    let submitted = &facts[0]["fact"];
    assert_eq!(submitted["inputs"][0]["artifact"], "model.bin");
    assert!(submitted["spec_sha256"].is_string());
    let ran = facts[2]["fact"]["ran"].as_str().expect("what ran");
    assert!(
        ran.contains("@sha256:"),
        "the executable and its hash: {ran}"
    );
    let copy = facts
        .iter()
        .find(|f| f["fact"]["output"] == "copy.bin")
        .expect("output");
    let input_sha = &submitted["inputs"][0]["sha256"];
    assert_eq!(
        &copy["fact"]["sha256"], input_sha,
        "the same bytes in and out"
    );

    let verify = |expect_ok: bool| {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
            .args([
                "receipt",
                &id,
                "--verify",
                "--server",
                &format!("http://{}", gantry.addr),
            ])
            .output()
            .expect("gantry receipt");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.success(), expect_ok, "{text}");
        text
    };
    assert!(verify(true).contains("verified: 6 events, 2 outputs"));

    // Change the stored bytes of an output: verify names it.
    let hex = copy["fact"]["sha256"].as_str().expect("sha");
    let blob = gantry
        .data()
        .join("artifacts/sha256")
        .join(&hex[..2])
        .join(hex);
    std::fs::write(&blob, b"weights v2\n").expect("tamper");
    let text = verify(false);
    assert!(text.contains("output copy.bin changed"), "{text}");
}

#[test]
fn retention_prunes_ended_jobs_outputs_keeping_bytes_another_output_shares() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    // Both jobs store the same `shared.txt`; only the first asks to be pruned after 1 s.
    let mut short = job(
        "short-lived",
        "echo shared > \"$GANTRY_OUTPUT_DIR/shared.txt\"; \
         printf '\\377\\376own' > \"$GANTRY_OUTPUT_DIR/own.bin\"",
    );
    short["artifact_ttl_secs"] = json!(1);
    let keeper = job("keeper", "echo shared > \"$GANTRY_OUTPUT_DIR/shared.txt\"");
    let short = gantry.submit(short);
    let keeper = gantry.submit(keeper);
    for id in [&short, &keeper] {
        let done = gantry.wait_for(id, &["succeeded", "dead_lettered"], Duration::from_secs(60));
        assert_eq!(done["state"], "succeeded", "{done}");
    }

    // Small artifacts inline, as text or base64.
    let listed = gantry
        .client
        .get(&format!("/v1/jobs/{keeper}/artifacts?inline=true"))
        .expect("list");
    let shared = listed["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "shared.txt"))
        .expect("shared.txt");
    assert_eq!(shared["content_encoding"], "utf-8");
    assert_eq!(shared["content"], "shared\n");

    let wait_pruned = |id: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all = artifacts(&gantry, id);
            if !all.is_empty() && all.iter().all(|a| a["pruned_ns"].is_u64()) {
                return all;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never pruned: {all:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let pruned = wait_pruned(&short);
    assert!(
        pruned.iter().any(|a| a["name"] == "own.bin"),
        "the listing keeps pruned outputs: {pruned:?}"
    );
    assert!(
        pruned[0]["pruned_reason"]
            .as_str()
            .is_some_and(|r| r.contains("ttl 1s")),
        "{pruned:?}"
    );
    // A pruned output answers 410; its bytes are gone unless another output has them.
    let (status, _, body) = download(&gantry, &short, "own.bin", &[]);
    assert_eq!(status, 410, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("artifact_pruned"));
    let blob = |sha: &Value| {
        let hex = sha.as_str().expect("sha256").to_owned();
        gantry
            .data()
            .join("artifacts/sha256")
            .join(&hex[..2])
            .join(hex)
    };
    let own = pruned.iter().find(|a| a["name"] == "own.bin").expect("own");
    assert!(!blob(&own["sha256"]).exists(), "own.bin's bytes deleted");
    let (status, _, body) = download(&gantry, &keeper, "shared.txt", &[]);
    assert_eq!(
        (status, body.as_slice()),
        (200, b"shared\n".as_slice()),
        "bytes another output shares are kept"
    );
    // The keeper's outputs were not pruned at all.
    assert!(
        artifacts(&gantry, &keeper)
            .iter()
            .all(|a| a["pruned_ns"].is_null())
    );

    // The log records each pruning once; a job cannot read a pruned output; the receipt says
    // pruned and still verifies.
    let events = all_events(&gantry.client);
    let pruned_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "artifact.pruned")
        .collect();
    let short_outputs = artifacts(&gantry, &short).len();
    assert_eq!(pruned_events.len(), short_outputs, "{pruned_events:?}");
    let mut reads = job("reads-pruned", "true");
    reads["inputs"] = json!([{ "from": short, "artifact": "own.bin" }]);
    match gantry.try_submit(&reads) {
        Err(gantry_nodes::client::ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "input_pruned"));
        }
        other => panic!("{other:?}"),
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args([
            "receipt",
            &short,
            "--verify",
            "--server",
            &format!("http://{}", gantry.addr),
        ])
        .output()
        .expect("gantry receipt");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("own.bin was pruned by retention"), "{text}");
}

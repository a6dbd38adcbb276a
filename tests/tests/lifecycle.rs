//! The job lifecycle through REST on the embedded system (local process executor): success,
//! retry then dead-letter, cancel of a running job, timeout, idempotency, bad input; the
//! chain verifies and the views equal a rebuild afterwards.

use std::time::Duration;

use gantry_events::{EmbeddedLog, verify_log};
use gantry_nodes::client::ClientError;
use gantry_nodes::up::ExecutorChoice;
use gantry_projections::Projections;
use gantry_tests::system::{Gantry, job_event_types};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(60);

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": "busybox", "command": ["sh", "-c", script] })
}

#[test]
fn lifecycle_through_rest() {
    let mut gantry = Gantry::start(ExecutorChoice::Process);

    let ok = gantry.submit(sh("ok", "echo out; echo err >&2"));
    let mut flaky = sh("flaky", "echo attempt; exit 7");
    flaky["retry"] =
        json!({ "max_attempts": 3, "backoff_initial_ms": 50, "retry_user_failures": true });
    let flaky = gantry.submit(flaky);
    let strict = gantry.submit(sh("strict", "exit 2"));
    let sleeper = gantry.submit(sh("sleeper", "sleep 300"));
    let mut slow = sh("slow", "sleep 300");
    slow["timeout_secs"] = json!(1);
    let slow = gantry.submit(slow);

    let done = gantry.wait_for(&ok, &["succeeded"], WITHIN);
    assert_eq!(done["attempt"], 1);
    let logs = gantry.logs(&ok, 1);
    assert!(
        logs.contains(" stdout out") && logs.contains(" stderr err"),
        "{logs}"
    );

    let dead = gantry.wait_for(&flaky, &["dead_lettered"], WITHIN);
    assert_eq!(dead["attempt"], 3, "three attempts: {dead}");
    assert_eq!(
        dead["last_cause"],
        json!({ "kind": "non_zero_exit", "code": 7 })
    );
    let dead = gantry.wait_for(&strict, &["dead_lettered"], WITHIN);
    assert_eq!(
        dead["attempt"], 1,
        "user failures are not retried unless asked"
    );

    gantry.wait_for(&sleeper, &["running"], WITHIN);
    let reply = gantry
        .client
        .post(
            &format!("/v1/jobs/{sleeper}/cancel"),
            &json!({ "reason": "test" }),
        )
        .expect("cancel accepted");
    assert_eq!(
        reply["state"], "running",
        "a running job is stopped by its worker"
    );
    gantry.wait_for(&sleeper, &["cancelled"], WITHIN);
    // Cancelling a finished job is a conflict.
    match gantry
        .client
        .post(&format!("/v1/jobs/{ok}/cancel"), &json!({}))
    {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("expected 409, got {other:?}"),
    }

    let timed_out = gantry.wait_for(&slow, &["dead_lettered"], WITHIN);
    assert_eq!(timed_out["last_cause"]["kind"], "timeout");

    // Lists and filters.
    let listed = gantry
        .client
        .get("/v1/jobs?state=dead_lettered")
        .expect("list");
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3));
    let page = gantry.client.get("/v1/jobs?limit=2").expect("page");
    assert!(page["next"].is_string());
    let nodes = gantry.client.get("/v1/nodes").expect("nodes");
    assert_eq!(nodes["nodes"][0]["executor"], "process");
    let ready = gantry.client.get("/readyz").expect("ready");
    assert_eq!(ready["ready"], true);

    // The log tells each job's story exactly once.
    let events = gantry.events();
    assert_eq!(
        job_event_types(&events, &ok),
        [
            "job.submitted",
            "job.placed",
            "job.started",
            "job.succeeded"
        ]
    );
    assert_eq!(
        job_event_types(&events, &sleeper),
        [
            "job.submitted",
            "job.placed",
            "job.started",
            "job.cancel_requested",
            "job.failed",
            "job.cancelled"
        ]
    );
    let retries = job_event_types(&events, &flaky)
        .iter()
        .filter(|t| *t == "job.retry_scheduled")
        .count();
    assert_eq!(retries, 2);

    let data = gantry.data().to_owned();
    gantry.stop();
    // The chain verifies, and the views equal a rebuild from the log.
    actix_rt::System::new().block_on(async move {
        let log = EmbeddedLog::open_read_only(&data).await.expect("log");
        let verified = verify_log(&log, 1, None)
            .await
            .expect("log answers")
            .expect("chain holds");
        assert!(verified.count >= 30, "{verified:?}");
        let live = Projections::open(data.join("views")).expect("views");
        let rebuilt_dir = tempfile::tempdir().expect("tempdir");
        let rebuilt = Projections::open(rebuilt_dir.path()).expect("views");
        rebuilt.catch_up(&log, |_, _| {}).await.expect("rebuild");
        assert_eq!(
            live.checkpoint().expect("cp"),
            rebuilt.checkpoint().expect("cp")
        );
        assert_eq!(live.dump().expect("dump"), rebuilt.dump().expect("dump"));
    });
}

#[test]
fn same_idempotency_key_same_job() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let mut spec = sh("once", "true");
    spec["idempotency_key"] = json!("nightly-2026-11-22");
    let first = gantry.try_submit(&spec).expect("accepted");
    let second = gantry.try_submit(&spec).expect("accepted");
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["existing"], true);
}

#[test]
fn bad_input_is_refused_with_the_field_and_appends_nothing() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let head = || gantry.events().len();
    let before = head();
    let refused = |spec: serde_json::Value| match gantry.try_submit(&spec) {
        Err(ClientError::Api {
            status,
            code,
            field,
            ..
        }) => (status, code, field),
        other => panic!("expected a refusal for {spec}, got {other:?}"),
    };
    let mut bad_image = sh("x", "true");
    bad_image["image"] = json!("Not An Image!");
    assert_eq!(
        refused(bad_image),
        (400, "invalid_image".into(), Some("image".into()))
    );
    let mut negative = sh("x", "true");
    negative["resources"] = json!({ "cpus": -2 });
    assert_eq!(
        refused(negative),
        (400, "out_of_range".into(), Some("resources.cpus".into()))
    );
    let mut absurd = sh("x", "true");
    absurd["resources"] = json!({ "memory_bytes": 1u64 << 62 });
    assert_eq!(
        refused(absurd),
        (
            400,
            "out_of_range".into(),
            Some("resources.memory_bytes".into())
        )
    );
    let mut env = sh("x", "true");
    env["env"] = json!({ "9LIVES": "x" });
    assert_eq!(
        refused(env),
        (400, "invalid_env_key".into(), Some("env.9LIVES".into()))
    );
    let mut unknown = sh("x", "true");
    unknown["imagee"] = json!("typo");
    let (status, code, field) = refused(unknown);
    assert_eq!(
        (status, code.as_str(), field.as_deref()),
        (400, "invalid_json", Some("imagee"))
    );
    let mut huge = sh("x", "true");
    huge["env"] = json!({ "BIG": "x".repeat(100 << 10) });
    assert_eq!(refused(huge).0, 413);

    // Malformed JSON, straight over HTTP.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut response = agent
        .post(format!("http://{}/v1/jobs", gantry.addr))
        .content_type("application/json")
        .send("{\"name\": ")
        .expect("answered");
    assert_eq!(response.status().as_u16(), 400);
    let body = response.body_mut().read_to_string().expect("body");
    assert!(body.contains("\"code\":\"invalid_json\""), "{body}");
    // Unknown job, bad id.
    assert!(matches!(
        gantry.client.get("/v1/jobs/not-a-uuid"),
        Err(ClientError::Api { status: 400, .. })
    ));
    assert!(matches!(
        gantry
            .client
            .get("/v1/jobs/01920000-0000-7000-8000-000000000001"),
        Err(ClientError::Api { status: 404, .. })
    ));

    assert_eq!(head(), before, "nothing was appended");
}

#[test]
fn events_stream_over_a_websocket_history_then_live() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let first = gantry.submit(sh("first", "true"));
    gantry.wait_for(&first, &["succeeded"], WITHIN);
    let (mut socket, _) =
        tungstenite::connect(format!("ws://{}/v1/events/ws?after=0", gantry.addr))
            .expect("websocket");
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(WITHIN)).expect("timeout");
    }
    let mut next_event = || -> serde_json::Value {
        loop {
            match socket.read().expect("message") {
                tungstenite::Message::Text(text) => {
                    return serde_json::from_str(&text).expect("json");
                }
                _ => continue,
            }
        }
    };
    // History: from sequence 1, in order.
    let mut seq = 0;
    let mut seen_first = false;
    while !seen_first {
        let event = next_event();
        assert_eq!(
            event["seq"].as_u64(),
            Some(seq + 1),
            "in order, no gap: {event}"
        );
        seq += 1;
        seen_first = event["type"] == "job.succeeded" && event["event"]["job_id"] == first.as_str();
    }
    // Live: a job submitted now shows up on the open socket.
    let second = gantry.submit(sh("second", "true"));
    loop {
        let event = next_event();
        assert_eq!(event["seq"].as_u64(), Some(seq + 1));
        seq += 1;
        if event["type"] == "job.succeeded" && event["event"]["job_id"] == second.as_str() {
            break;
        }
    }
}

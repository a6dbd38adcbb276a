//! `GET /metrics` of the real gantry, in Prometheus text format: jobs by queue and state, queue
//! depth, projection lag, append latency and batch size, placement latency, HTTP requests by
//! route and status, and open event streams — each a value that follows what happened.

use std::time::Duration;

use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::Gantry;
use serde_json::json;

/// The value of the series `name{labels}` (labels as Prometheus prints them, sorted), if any.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_follow_jobs_appends_placements_and_requests() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let ok = gantry.submit(json!({
        "name": "ok", "image": "busybox", "command": ["sh", "-c", "true"],
        "queue": "metrics-q",
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
    }));
    // More GPUs than the node has: it stays queued.
    let waits = gantry.submit(json!({
        "name": "waits", "image": "busybox", "command": ["true"],
        "queue": "metrics-q",
        "resources": { "gpus": { "count": 8 } },
    }));
    gantry.wait_for(&ok, &["succeeded"], Duration::from_secs(60));
    let _ = gantry.client.get("/v1/jobs/not-an-id");

    let text =
        String::from_utf8(gantry.client.get_raw("/metrics").expect("metrics")).expect("utf-8");
    assert_eq!(
        value(&text, r#"gantry_jobs{queue="metrics-q",state="succeeded"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"gantry_jobs{queue="metrics-q",state="queued"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"gantry_queue_depth{queue="metrics-q"}"#),
        Some(1.0)
    );
    assert!(value(&text, "gantry_log_head_seq").is_some_and(|v| v >= 6.0));
    assert!(value(&text, "gantry_projection_lag_events").is_some());
    assert!(value(&text, "gantry_append_duration_seconds_count").is_some_and(|v| v >= 3.0));
    assert!(value(&text, "gantry_append_batch_events_count").is_some_and(|v| v >= 3.0));
    assert!(value(&text, "gantry_placement_latency_seconds_count").is_some_and(|v| v >= 1.0));
    assert!(
        value(
            &text,
            r#"gantry_http_requests_total{method="POST",route="/v1/jobs",status="202"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"gantry_http_requests_total{method="GET",route="/v1/jobs/{id}",status="400"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "requests are counted by route pattern, not path: {text}"
    );
    assert!(text.contains("gantry_http_request_duration_seconds_bucket"));
    assert_eq!(value(&text, "gantry_event_streams_open"), Some(0.0));

    // A count that drops to zero reads zero, not its last value.
    gantry
        .client
        .post(&format!("/v1/jobs/{waits}/cancel"), &json!({}))
        .expect("cancel");
    let text =
        String::from_utf8(gantry.client.get_raw("/metrics").expect("metrics")).expect("utf-8");
    assert_eq!(
        value(&text, r#"gantry_jobs{queue="metrics-q",state="queued"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"gantry_queue_depth{queue="metrics-q"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"gantry_jobs{queue="metrics-q",state="cancelled"}"#),
        Some(1.0)
    );
}

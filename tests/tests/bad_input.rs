//! Bad input at the edge: each malformed request gets a 4xx with a stable code and, where one
//! field is at fault, its JSON path — and nothing is appended to the log.

use std::io::{Read, Write};
use std::net::TcpStream;

use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::{Gantry, raw_http};
use serde_json::{Value, json};

/// One raw HTTP/1.1 exchange: (status, headers in lower case, JSON body or Null).
fn send(
    gantry: &Gantry,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, Value) {
    let headers: Vec<(&str, &str)> = content_type
        .map(|t| ("Content-Type", t))
        .into_iter()
        .collect();
    raw_http(gantry.addr, method, path, &headers, body)
}

/// (method, path, content type, body, status, code, field).
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
    Option<&'a str>,
);

fn job(name: &str) -> Value {
    json!({
        "name": name, "image": "busybox", "command": ["sh", "-c", "true"],
        // More GPUs than any node has: it stays queued, so a wrong cancel would show.
        "resources": { "gpus": { "count": 8 } },
    })
}

fn head(gantry: &Gantry) -> u64 {
    gantry
        .events()
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

#[test]
fn malformed_requests_get_a_4xx_with_the_field_and_append_nothing() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let queued = gantry.submit(job("stays-queued"));
    let mut keyed = job("keyed");
    keyed["idempotency_key"] = json!("nightly-1");
    gantry.submit(keyed.clone());
    // Let the placement round record why the jobs wait, so the head is still afterwards.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = head(&gantry);
    let cancel = format!("/v1/jobs/{queued}/cancel");
    let json_type = Some("application/json");

    let with = |patch: &dyn Fn(&mut Value)| {
        let mut spec = job("bad");
        patch(&mut spec);
        serde_json::to_vec(&spec).expect("json")
    };
    let mut conflicting = keyed.clone();
    conflicting["command"] = json!(["sh", "-c", "false"]);

    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/v1/events?after=18446744073709551615".into(),
            None,
            vec![],
            400,
            "out_of_range",
            Some("after"),
        ),
        (
            "GET",
            "/v1/events?after=-1".into(),
            None,
            vec![],
            400,
            "invalid_query",
            None,
        ),
        (
            "GET",
            "/v1/jobs?state=bogus".into(),
            None,
            vec![],
            400,
            "invalid_state",
            Some("state"),
        ),
        (
            "GET",
            "/v1/jobs?bogus=1".into(),
            None,
            vec![],
            400,
            "invalid_query",
            Some("bogus"),
        ),
        (
            "GET",
            "/v1/nope".into(),
            None,
            vec![],
            404,
            "not_found",
            None,
        ),
        (
            "DELETE",
            "/v1/jobs".into(),
            None,
            vec![],
            405,
            "method_not_allowed",
            None,
        ),
        (
            "GET",
            cancel.clone(),
            None,
            vec![],
            405,
            "method_not_allowed",
            None,
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            b"{not json".to_vec(),
            400,
            "invalid_json",
            None,
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            br#"{"reason": 5}"#.to_vec(),
            400,
            "invalid_json",
            Some("reason"),
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            br#"{"why": "x"}"#.to_vec(),
            400,
            "invalid_json",
            Some("why"),
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            b"[]".to_vec(),
            400,
            "invalid_type",
            Some("$"),
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            serde_json::to_vec(&json!({ "reason": "x".repeat(2000) })).expect("json"),
            400,
            "invalid_reason",
            Some("reason"),
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            serde_json::to_vec(&json!({ "reason": "bell\u{7}" })).expect("json"),
            400,
            "invalid_reason",
            Some("reason"),
        ),
        (
            "POST",
            cancel.clone(),
            json_type,
            vec![b' '; 70 << 10],
            413,
            "too_large",
            None,
        ),
        (
            "POST",
            cancel.clone(),
            Some("text/plain"),
            br#"{"reason": "x"}"#.to_vec(),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            b"[]".to_vec(),
            400,
            "invalid_type",
            Some("$"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            b"\xff\xfe".to_vec(),
            400,
            "invalid_json",
            None,
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["resources"] = json!([1, 2])),
            400,
            "invalid_type",
            Some("resources"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["resources"]["gpus"] = json!({ "count": 1, "modle": "A100" })),
            400,
            "invalid_json",
            Some("resources.gpus.modle"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["image"] = json!("../etc/passwd")),
            400,
            "invalid_image",
            Some("image"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["image"] = json!("./x")),
            400,
            "invalid_image",
            Some("image"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["image"] = json!("localhost:99999999999/x")),
            400,
            "invalid_image",
            Some("image"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["retry"] = json!({ "backoff_max_ms": 1u64 << 40 })),
            400,
            "out_of_range",
            Some("retry.backoff_max_ms"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            with(&|s| s["priority"] = json!("high")),
            400,
            "invalid_json",
            Some("priority"),
        ),
        (
            "POST",
            "/v1/jobs".into(),
            json_type,
            serde_json::to_vec(&conflicting).expect("json"),
            409,
            "idempotency_conflict",
            Some("idempotency_key"),
        ),
        (
            "POST",
            "/v1/nodes/no-such-node/cordon".into(),
            None,
            vec![],
            404,
            "not_found",
            None,
        ),
        (
            "POST",
            "/v1/nodes/x/explode".into(),
            None,
            vec![],
            404,
            "not_found",
            Some("action"),
        ),
    ];
    for (method, path, content_type, body, status, code, field) in cases {
        let (got, headers, answer) = send(&gantry, method, &path, content_type, &body);
        let what = format!("{method} {path} ({} bytes): {got} {answer}", body.len());
        assert_eq!(got, status, "{what}");
        assert_eq!(answer["error"]["code"], code, "{what}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{what}");
        }
        if status == 405 {
            assert!(headers.contains("\nallow: "), "{what}: {headers}");
        }
    }

    assert_eq!(
        head(&gantry),
        before,
        "a refused request appended to the log"
    );
    let job = gantry.job(&queued);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["cancel_requested"], false, "{job}");
    // A well-formed cancel still works, with or without a body.
    let (status, _, _) = send(&gantry, "POST", &cancel, None, b"");
    assert_eq!(status, 202);
}

/// The status of a websocket handshake for the event stream sent with `origin`.
fn ws_handshake(gantry: &Gantry, origin: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(gantry.addr).expect("connect");
    let mut request = format!(
        "GET /v1/events/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        gantry.addr
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..read])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn only_the_gateways_own_pages_may_open_the_event_websocket() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    // Not a browser: no Origin.
    assert_eq!(ws_handshake(&gantry, None), 101);
    // A page served by the gateway itself.
    let own = format!("http://{}", gantry.addr);
    assert_eq!(ws_handshake(&gantry, Some(&own)), 101);
    // Any other page a user happens to visit.
    assert_eq!(ws_handshake(&gantry, Some("https://evil.example")), 403);
    assert_eq!(ws_handshake(&gantry, Some("null")), 403);
}

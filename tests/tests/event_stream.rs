//! The event stream as dashboards use it, against the real gantry: filters (`types`, `job`,
//! `queue`) on the page, the websocket and Server-Sent Events alike; CloudEvents on request;
//! SSE resumed with `Last-Event-ID` without a gap or a duplicate; heartbeats; and
//! read-your-writes with `min_seq`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gantry_nodes::client::ClientError;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::Gantry;
use serde_json::{Value, json};

fn job(name: &str, queue: &str) -> Value {
    json!({
        "name": name, "image": "busybox", "command": ["sh", "-c", "echo hi"],
        "queue": queue,
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
        "retry": { "max_attempts": 1 },
    })
}

fn page(gantry: &Gantry, query: &str) -> Vec<Value> {
    gantry
        .client
        .get(&format!("/v1/events?limit=1000&{query}"))
        .expect("events")["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// Opens `/v1/events/sse?query` with these headers; returns a line reader past the head.
fn sse(gantry: &Gantry, query: &str, headers: &[(&str, &str)]) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(gantry.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut head = format!(
        "GET /v1/events/sse?{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
        gantry.addr
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.contains(" 200 "), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line.to_ascii_lowercase().starts_with("content-type") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
        if line == "\r\n" {
            return reader;
        }
    }
}

/// One SSE item: (`id`, `event`, `data`) of an event, or `None` fields for a comment.
fn next_item(reader: &mut BufReader<TcpStream>) -> (Option<u64>, Option<String>, Option<Value>) {
    let (mut id, mut event, mut data, mut comment) = (None, None, None, false);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("sse line");
        // Chunked framing: a size line between chunks is not part of the stream.
        let text = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = text.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = text.strip_prefix("event: ") {
            event = Some(v.to_owned());
        } else if let Some(v) = text.strip_prefix("data: ") {
            data = serde_json::from_str(v).ok();
        } else if text.starts_with(':') {
            comment = true;
        } else if text.is_empty() && (id.is_some() || comment) {
            return (id, event, data);
        }
    }
}

#[test]
fn filters_formats_resume_heartbeats_and_read_your_writes() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let submit = |name: &str, queue: &str| {
        let reply = gantry
            .client
            .post("/v1/jobs", &job(name, queue))
            .expect("submit");
        let seq = reply["seq"].as_u64().expect("the submission's sequence");
        assert!(seq > 0);
        // Read-your-writes: at once, the job is there.
        let id = reply["id"].as_str().expect("id").to_owned();
        let got = gantry
            .client
            .get(&format!("/v1/jobs/{id}?min_seq={seq}"))
            .expect("read after the write");
        assert_eq!(got["id"], json!(id));
        id
    };
    let a = submit("a", "alpha");
    let b = submit("b", "beta");
    for id in [&a, &b] {
        gantry.wait_for(id, &["succeeded"], Duration::from_secs(60));
    }

    // Filters on the page.
    let submitted = page(&gantry, "types=job.submitted");
    assert_eq!(types(&submitted), ["job.submitted", "job.submitted"]);
    let jobs = page(&gantry, "types=job.*");
    assert!(jobs.len() >= 8, "{jobs:?}");
    assert!(types(&jobs).iter().all(|t| t.starts_with("job.")));
    let mixed = page(&gantry, "types=node.joined,job.succeeded");
    assert_eq!(
        types(&mixed),
        ["node.joined", "job.succeeded", "job.succeeded"]
    );
    let only_b = page(&gantry, &format!("job={b}"));
    assert!(!only_b.is_empty());
    assert!(only_b.iter().all(|e| e["event"]["job_id"] == json!(b)));
    let alpha = page(&gantry, "queue=alpha");
    assert!(
        alpha.iter().any(|e| e["type"] == "artifact.stored"),
        "{alpha:?}"
    );
    assert!(alpha.iter().all(|e| e["event"]["job_id"] == json!(a)));
    for (query, field) in [
        ("types=job.nope", "types"),
        ("types=nope.*", "types"),
        ("job=not-an-id", "job"),
        ("format=xml", "format"),
    ] {
        match gantry.client.get(&format!("/v1/events?{query}")) {
            Err(ClientError::Api {
                status,
                code,
                field: f,
                ..
            }) => {
                assert_eq!(
                    (status, code.as_str(), f.as_deref()),
                    (400, "invalid_filter", Some(field))
                );
            }
            other => panic!("{query}: {other:?}"),
        }
    }

    // CloudEvents 1.0, structured.
    let cloud = page(
        &gantry,
        &format!("format=cloudevents&job={a}&types=job.submitted"),
    );
    assert_eq!(cloud.len(), 1);
    let ce = &cloud[0];
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], "dev.gantry.job.submitted");
    assert_eq!(ce["subject"], json!(a));
    assert!(
        ce["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("gantry/"))
    );
    assert!(ce["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(ce["data"]["spec"]["queue"], "alpha");
    let seq = ce["gantryseq"].as_u64().expect("gantryseq");
    let same = page(&gantry, &format!("after={}", seq - 1));
    assert_eq!(same[0]["hash"].as_str(), ce["gantryhash"].as_str());

    // SSE: history, then resumed after the first with Last-Event-ID: no gap, no duplicate.
    let mut stream = sse(&gantry, "types=job.succeeded", &[]);
    let (first, kind, data) = next_item(&mut stream);
    assert_eq!(kind.as_deref(), Some("job.succeeded"));
    let first = first.expect("an id");
    assert_eq!(data.expect("data")["seq"], first);
    let (second, _, _) = next_item(&mut stream);
    let second = second.expect("an id");
    assert!(second > first);
    // Live: nothing more is due, so the next item is a heartbeat comment.
    let started = Instant::now();
    let (id, _, _) = next_item(&mut stream);
    assert_eq!(id, None, "a comment");
    assert!(started.elapsed() < Duration::from_secs(8));
    drop(stream);
    let mut resumed = sse(
        &gantry,
        "types=job.succeeded",
        &[("Last-Event-ID", &first.to_string())],
    );
    let (next, _, _) = next_item(&mut resumed);
    assert_eq!(
        next,
        Some(second),
        "resumed right after the last one received"
    );

    // The websocket, filtered by job: only that job's events; then a ping as a heartbeat.
    let mut ws = gantry
        .client
        .websocket(&format!("/v1/events/ws?job={a}&types=job.*"))
        .expect("handshake");
    let mut seen = Vec::new();
    let mut pinged = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !(pinged && seen.contains(&"job.succeeded".to_owned())) {
        match ws.read().expect("read") {
            tungstenite::Message::Text(text) => {
                let event: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(event["event"]["job_id"], json!(a), "{event}");
                seen.push(event["type"].as_str().unwrap_or("").to_owned());
            }
            tungstenite::Message::Ping(_) => pinged = true,
            _ => {}
        }
    }
    assert!(seen.iter().all(|t| t.starts_with("job.")), "{seen:?}");
    assert_eq!(seen.first().map(String::as_str), Some("job.submitted"));
    assert!(seen.contains(&"job.succeeded".to_owned()), "{seen:?}");
    assert!(pinged, "the server pings an idle websocket");

    // A read that names a sequence the views cannot reach answers 503 after a bounded wait.
    let started = Instant::now();
    match gantry
        .client
        .get(&format!("/v1/jobs/{a}?min_seq=999999999"))
    {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (503, "views_behind"));
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn live_logs_stream_each_attempt_then_the_end_and_logs_follow_uses_them() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let id = gantry.submit(json!({
        "name": "talks", "image": "busybox",
        "command": ["sh", "-c", "for i in 1 2 3; do echo line-$i; sleep 0.3; done; exit 2"],
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
        "retry": { "max_attempts": 2, "retry_user_failures": true, "backoff_initial_ms": 100 },
    }));
    let mut ws = gantry
        .client
        .websocket(&format!("/v1/jobs/{id}/logs/ws"))
        .expect("handshake");
    let mut text = [String::new(), String::new(), String::new()];
    let mut started = Vec::new();
    let end = loop {
        match ws.read().expect("read") {
            tungstenite::Message::Text(t) => {
                let m: Value = serde_json::from_str(&t).expect("json");
                if m["end"] == true {
                    break m;
                }
                let attempt = m["attempt"].as_u64().expect("attempt") as usize;
                if m["started"] == true {
                    started.push(attempt);
                    continue;
                }
                assert_eq!(
                    m["offset"].as_u64(),
                    Some(text[attempt].len() as u64),
                    "chunks follow each other: {m}"
                );
                text[attempt].push_str(m["data"].as_str().expect("data"));
            }
            tungstenite::Message::Close(frame) => panic!("closed before the end: {frame:?}"),
            _ => {}
        }
    };
    assert_eq!(started, [2], "the retry's attempt is announced");
    for attempt in [1, 2] {
        for i in 1..=3 {
            assert!(
                text[attempt].contains(&format!("stdout line-{i}")),
                "attempt {attempt}: {}",
                text[attempt]
            );
        }
        assert_eq!(
            text[attempt],
            gantry.logs(&id, attempt as u32),
            "the stream is the kept output"
        );
    }
    assert_eq!(end["state"], "dead_lettered", "{end}");
    assert_eq!(end["attempt"], 2);
    assert_eq!(end["exit_code"], 2);

    // `gantry logs -f` follows through the same stream and ends with the job; on an ended
    // job, like `gantry logs`, it starts at the last attempt.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args([
            "logs",
            "-f",
            &id,
            "--server",
            &format!("http://{}", gantry.addr),
        ])
        .output()
        .expect("gantry logs -f");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed, text[2]);
}

/// Reads websocket messages until the stream ends: (the sequences of the events received, the
/// close reason if a close frame came).
fn drain(socket: &mut tungstenite::WebSocket<TcpStream>) -> (Vec<u64>, Option<String>) {
    let mut seqs = Vec::new();
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let event: Value = serde_json::from_str(&text).expect("JSON");
                seqs.push(event["seq"].as_u64().expect("seq"));
            }
            Ok(tungstenite::Message::Close(frame)) => {
                return (seqs, frame.map(|f| f.reason.to_string()));
            }
            Ok(_) => {}
            Err(_) => return (seqs, None),
        }
    }
}

#[test]
fn a_client_that_stops_reading_is_closed_with_where_to_resume_and_others_keep_up() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let mut stalled = gantry
        .client
        .websocket("/v1/events/ws?after=0")
        .expect("websocket");
    let mut reader = gantry
        .client
        .websocket("/v1/events/ws?after=0")
        .expect("websocket");
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");

    // Large events (about 48 KiB each), more than the socket buffers between the gateway and
    // a client that does not read hold. The jobs wait for GPUs the node does not have.
    let env: serde_json::Map<String, Value> = (0..48)
        .map(|i| (format!("PAD_{i}"), Value::String("x".repeat(1000))))
        .collect();
    let mut last = 0;
    for i in 0..300 {
        let answer = gantry
            .client
            .post(
                "/v1/jobs",
                &json!({
                    "name": format!("big-{i}"), "image": "busybox", "command": ["true"],
                    "env": env, "resources": { "gpus": { "count": 8 } },
                }),
            )
            .expect("submit");
        last = answer["seq"].as_u64().expect("seq");
    }

    // The reading client gets everything while the other one stalls.
    let started = Instant::now();
    let mut seen = 0;
    while seen < last {
        match reader
            .read()
            .expect("the reading client keeps being served")
        {
            tungstenite::Message::Text(text) => {
                let event: Value = serde_json::from_str(&text).expect("JSON");
                let seq = event["seq"].as_u64().expect("seq");
                assert_eq!(seq, seen + 1, "no gap, no duplicate");
                seen = seq;
            }
            _ => continue,
        }
    }
    assert!(
        started.elapsed() < gantry_gateway::SEND_TIMEOUT,
        "the reading client was held up by the stalled one ({:?})",
        started.elapsed()
    );

    // Past the send timeout the stalled client is closed; what it had been sent is still in
    // order, and the close names the sequence to resume after.
    std::thread::sleep(gantry_gateway::SEND_TIMEOUT + Duration::from_secs(3));
    let (seqs, reason) = drain(&mut stalled);
    assert!(!seqs.is_empty());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] == 1,
        "in order from the start"
    );
    let got = *seqs.last().expect("some");
    assert!(
        got < last,
        "it was closed before it had everything ({got} of {last})"
    );
    assert_eq!(
        reason,
        Some(format!("slow consumer: resume with after={got}")),
        "the close, after what had been sent, names the last sequence sent"
    );
    // Resuming after what it got continues without a gap.
    let mut resumed = gantry
        .client
        .websocket(&format!("/v1/events/ws?after={got}"))
        .expect("websocket");
    let first = loop {
        if let tungstenite::Message::Text(text) = resumed.read().expect("message") {
            break serde_json::from_str::<Value>(&text).expect("JSON");
        }
    };
    assert_eq!(first["seq"].as_u64(), Some(got + 1));

    let metrics =
        String::from_utf8(gantry.client.get_raw("/metrics").expect("metrics")).expect("utf-8");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"gantry_event_streams_dropped_total{reason="slow"}"#)),
        "the drop is counted: {metrics}"
    );
}

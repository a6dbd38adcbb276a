//! Webhooks against a real local HTTP receiver that checks the signature: an event that
//! matches is POSTed, a failed delivery is retried with backoff, every attempt is listed, the
//! secret is never stored in the clear, and a deleted webhook gets nothing more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_nodes::client::ClientError;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::{Gantry, file_containing};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One request the receiver took: its headers (lower-case names) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

/// An HTTP receiver on loopback: answers 500 to the first request, 200 to the others.
fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).expect("header");
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).expect("body");
            let first = {
                let mut seen = seen.lock().expect("lock");
                seen.push((headers, body));
                seen.len() == 1
            };
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (url, got)
}

/// HMAC-SHA256 (RFC 2104), written here so the check does not lean on gantry's own.
fn hmac(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize(),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn job(name: &str) -> Value {
    json!({
        "name": name, "image": "busybox", "command": ["sh", "-c", "true"],
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
    })
}

#[test]
fn matching_events_are_posted_signed_retried_and_listed() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let (url, got) = receiver();

    for (body, code, field) in [
        (json!({ "url": "ftp://x/hook" }), "invalid_url", "url"),
        (
            json!({ "url": url, "types": ["job.nope"] }),
            "invalid_filter",
            "types",
        ),
        (json!({ "url": url, "extra": 1 }), "invalid_json", "extra"),
    ] {
        match gantry.client.post("/v1/webhooks", &body) {
            Err(ClientError::Api {
                status,
                code: c,
                field: f,
                ..
            }) => assert_eq!((status, c.as_str(), f.as_deref()), (400, code, Some(field))),
            other => panic!("{body}: {other:?}"),
        }
    }

    let created = gantry
        .client
        .post(
            "/v1/webhooks",
            &json!({ "url": url, "types": ["job.succeeded"] }),
        )
        .expect("created");
    let hook = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret once").to_owned();
    let listed = gantry.client.get("/v1/webhooks").expect("list");
    assert!(
        !listed.to_string().contains(&secret),
        "listings never show the secret"
    );

    let id = gantry.submit(job("hooked"));
    gantry.wait_for(&id, &["succeeded"], Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().expect("lock").len() < 2 {
        assert!(Instant::now() < deadline, "not retried after a 500");
        std::thread::sleep(Duration::from_millis(100));
    }
    let requests = got.lock().expect("lock").clone();
    for (headers, body) in &requests {
        let event: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(event["type"], "job.succeeded");
        assert_eq!(event["event"]["job_id"], json!(id));
        assert_eq!(header(headers, "gantry-webhook-id"), hook);
        assert_eq!(
            header(headers, "gantry-event-seq"),
            event["seq"].to_string()
        );
        // t=<seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
        let signature = header(headers, "gantry-signature");
        let (t, v1) = signature
            .split_once(",v1=")
            .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
            .expect("t=…,v1=…");
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(body);
        assert_eq!(v1, hmac(secret.as_bytes(), &signed), "signature checks");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(t.parse::<u64>().is_ok_and(|t| now.abs_diff(t) < 120));
    }
    assert_eq!(requests[0].1, requests[1].1, "the same event, retried");

    let deliveries = gantry
        .client
        .get(&format!("/v1/webhooks/{hook}/deliveries"))
        .expect("deliveries");
    let attempts = deliveries["deliveries"].as_array().expect("list");
    assert_eq!(attempts.len(), 2, "{deliveries}");
    assert_eq!(attempts[0]["attempt"], 2);
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(attempts[1]["outcome"], "retrying");
    assert_eq!(attempts[1]["status"], 500);

    // The secret is only in the encrypted store, never in the log or the views.
    assert_eq!(file_containing(gantry.data(), secret.as_bytes()), None);

    // Deleted: nothing more.
    gantry
        .client
        .delete(&format!("/v1/webhooks/{hook}"))
        .expect("deleted");
    let later = gantry.submit(job("after-delete"));
    gantry.wait_for(&later, &["succeeded"], Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        got.lock().expect("lock").len(),
        2,
        "no delivery after delete"
    );
}

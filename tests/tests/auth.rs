//! Who may do what at the gateway, against a real `gantry up` with authentication on: the
//! bootstrap token makes the first admin key, keys are stored only as keyed hashes, roles and
//! groups decide what a key sees and does (a job of another group is 404), the key's id is
//! recorded in the events it causes, revoked keys stop working, and the Host check, the rate
//! limit and the websocket limits answer with JSON errors.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use gantry_nodes::edge::{AuthMode, EdgeOptions};
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::{Gantry, file_containing, raw_http};
use serde_json::{Value, json};

/// One raw HTTP/1.1 exchange with these extra headers: (status, headers in lower case, JSON
/// body or Null).
fn send(
    gantry: &Gantry,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = headers.to_vec();
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    raw_http(gantry.addr, method, path, &headers, body.as_bytes())
}

/// A request with `key` as its bearer token.
fn with_key(
    gantry: &Gantry,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let bearer = format!("Bearer {key}");
    let (status, _, json) = send(gantry, method, path, &[("Authorization", &bearer)], body);
    (status, json)
}

fn edge() -> EdgeOptions {
    EdgeOptions {
        auth: AuthMode::On,
        ..EdgeOptions::default()
    }
}

/// `gantry keys create` through the real binary; returns the key it printed.
fn cli_create_key(gantry: &Gantry, args: &[&str], env_key: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry-node"));
    command
        .args(["keys", "create", "--server"])
        .arg(format!("http://{}", gantry.addr))
        .args(args)
        .env_remove("GANTRY_API_KEY");
    if let Some(key) = env_key {
        command.env("GANTRY_API_KEY", key);
    }
    let output = command.output().expect("run gantry keys create");
    assert!(
        output.status.success(),
        "gantry keys create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn queued_job(name: &str) -> Value {
    // More GPUs than the node has: it stays queued, so cancels are visible.
    json!({
        "name": name, "image": "busybox", "command": ["sh", "-c", "true"],
        "resources": { "gpus": { "count": 8 } },
    })
}

#[test]
fn keys_roles_and_groups_decide_what_each_caller_sees_and_does() {
    let gantry = Gantry::start_with_edge(ExecutorChoice::Process, edge());

    // Nothing without a key, except the health checks.
    for path in [
        "/v1/jobs",
        "/v1/nodes",
        "/v1/events",
        "/v1/queues",
        "/v1/keys",
    ] {
        let (status, _, body) = send(&gantry, "GET", path, &[], None);
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
    }
    let (status, _) = with_key(
        &gantry,
        "gantry_0011223344556677_00",
        "GET",
        "/v1/jobs",
        None,
    );
    assert_eq!(status, 401, "a made-up key");
    assert_eq!(send(&gantry, "GET", "/healthz", &[], None).0, 200);
    let (status, _) = with_key(
        &gantry,
        "gantry_bad",
        "POST",
        "/v1/jobs",
        Some(&queued_job("x")),
    );
    assert_eq!(status, 401);

    // The bootstrap token (written by `gantry up`, mode 0600) makes the first admin key once.
    let token_file = gantry.data().join("bootstrap.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("bootstrap token written")
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "only the owner may read the bootstrap token"
    );
    let token = std::fs::read_to_string(&token_file).expect("token");
    let token_arg = token_file.display().to_string();
    let admin = cli_create_key(
        &gantry,
        &[
            "--role",
            "admin",
            "--name",
            "root",
            "--bootstrap-token-file",
            &token_arg,
        ],
        None,
    );
    assert!(admin.starts_with("gantry_"), "{admin}");
    assert!(!token_file.exists(), "the spent token's file is removed");
    let (status, _) = with_key(
        &gantry,
        token.trim(),
        "POST",
        "/v1/keys",
        Some(&json!({ "role": "admin" })),
    );
    assert_eq!(status, 401, "the bootstrap token works once");

    // The admin makes keys for two groups.
    let key = |role: &str, group: &str| {
        cli_create_key(&gantry, &["--role", role, "--group", group], Some(&admin))
    };
    let alice = key("submitter", "vision");
    let bob = key("submitter", "vision");
    let viewer = key("viewer", "vision");
    let operator = key("operator", "vision");
    let other = key("submitter", "audio");
    let (status, body) = with_key(
        &gantry,
        &alice,
        "POST",
        "/v1/keys",
        Some(&json!({ "role": "admin" })),
    );
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, body) = with_key(
        &gantry,
        &admin,
        "POST",
        "/v1/keys",
        Some(&json!({ "role": "root" })),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "role");

    // Alice submits; the job is her group's and records her key's id.
    let (status, body) = with_key(&gantry, &alice, "POST", "/v1/jobs", Some(&queued_job("a")));
    assert_eq!(status, 202, "{body}");
    let job = body["id"].as_str().expect("id").to_owned();
    let alice_id = alice.split('_').nth(1).expect("key id").to_owned();
    let (status, view) = with_key(&gantry, &viewer, "GET", &format!("/v1/jobs/{job}"), None);
    assert_eq!(status, 200);
    assert_eq!(view["group"], "vision");
    assert_eq!(view["submitted_by"], json!(alice_id));

    // Another group's key: the job does not exist for it, anywhere.
    let (status, body) = with_key(&gantry, &other, "GET", &format!("/v1/jobs/{job}"), None);
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let (status, body) = with_key(&gantry, &other, "GET", "/v1/jobs", None);
    assert_eq!(status, 200);
    assert_eq!(body["jobs"].as_array().map(Vec::len), Some(0));
    for path in [
        format!("/v1/jobs/{job}/logs"),
        format!("/v1/jobs/{job}/cancel"),
    ] {
        let method = if path.ends_with("cancel") {
            "POST"
        } else {
            "GET"
        };
        let (status, _) = with_key(&gantry, &other, method, &path, None);
        assert_eq!(status, 404, "{path}");
    }
    let (_, events) = with_key(&gantry, &other, "GET", "/v1/events?limit=1000", None);
    let seen: Vec<&Value> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .collect();
    assert!(
        seen.iter().all(|e| e["event"]["job_id"] != json!(job)),
        "another group's job events are left out"
    );
    assert!(seen.iter().any(|e| e["type"] == "node.joined"));
    assert!(
        seen.iter()
            .all(|e| !e["type"].as_str().unwrap_or("").starts_with("key.")),
        "key events are for admins"
    );

    // Viewer and a fellow submitter may not cancel it; the operator of its group may.
    let cancel = format!("/v1/jobs/{job}/cancel");
    assert_eq!(with_key(&gantry, &viewer, "POST", &cancel, None).0, 403);
    assert_eq!(
        with_key(&gantry, &viewer, "POST", "/v1/jobs", Some(&queued_job("v"))).0,
        403
    );
    assert_eq!(with_key(&gantry, &bob, "POST", &cancel, None).0, 403);
    let node = gantry
        .client_with_key(&admin)
        .get("/v1/nodes")
        .expect("nodes")["nodes"][0]["id"]
        .as_str()
        .expect("node id")
        .to_owned();
    let cordon = format!("/v1/nodes/{node}/cordon");
    assert_eq!(with_key(&gantry, &bob, "POST", &cordon, None).0, 403);
    assert_eq!(with_key(&gantry, &operator, "POST", &cordon, None).0, 202);
    let (status, body) = with_key(&gantry, &operator, "POST", &cancel, None);
    assert_eq!(status, 202, "{body}");

    // Each event a request caused names the key (its id), never the key.
    let operator_id = operator.split('_').nth(1).expect("key id");
    let all = gantry_tests::system::all_events(&gantry.client_with_key(&admin));
    let by = |kind: &str| {
        all.iter()
            .find(|e| e["type"] == kind)
            .map(|e| e["event"]["by"].clone())
    };
    assert_eq!(by("job.submitted"), Some(json!(alice_id)));
    assert_eq!(by("job.cancel_requested"), Some(json!(operator_id)));
    assert_eq!(by("node.cordoned"), Some(json!(operator_id)));
    assert!(all.iter().any(|e| e["type"] == "key.created"));

    // Keys are listed without their secrets, and never stored anywhere in the data dir.
    let (status, listed) = with_key(&gantry, &admin, "GET", "/v1/keys", None);
    assert_eq!(status, 200);
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(6));
    for key in [&admin, &alice, &bob, &viewer, &operator, &other] {
        assert!(!listed.to_string().contains(key.as_str()));
        let secret = key.rsplit('_').next().expect("secret part");
        assert_eq!(file_containing(gantry.data(), key.as_bytes()), None);
        assert_eq!(file_containing(gantry.data(), secret.as_bytes()), None);
    }

    // A revoked key stops working at once.
    let bob_id = bob.split('_').nth(1).expect("key id");
    let (status, _) = with_key(
        &gantry,
        &admin,
        "POST",
        &format!("/v1/keys/{bob_id}/revoke"),
        None,
    );
    assert_eq!(status, 202);
    assert_eq!(with_key(&gantry, &bob, "GET", "/v1/jobs", None).0, 401);
    let (status, _) = with_key(
        &gantry,
        &admin,
        "POST",
        "/v1/keys/00000000deadbeef/revoke",
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn host_names_the_gateway_does_not_serve_are_refused() {
    let gantry = Gantry::start_with_edge(
        ExecutorChoice::Process,
        EdgeOptions {
            allowed_hosts: vec!["gantry.example.com".into()],
            ..EdgeOptions::default()
        },
    );
    // Authentication is off on loopback: a page on a rebound name is what it must stop.
    let (status, _, body) = send(
        &gantry,
        "GET",
        "/v1/jobs",
        &[("Host", "rebind.attacker.test:7700")],
        None,
    );
    assert_eq!(status, 421);
    assert_eq!(body["error"]["code"], "unknown_host");
    for host in ["gantry.example.com", "localhost:7700", "127.0.0.1"] {
        let (status, _, _) = send(&gantry, "GET", "/v1/jobs", &[("Host", host)], None);
        assert_eq!(status, 200, "{host}");
    }
}

/// The first admin key, made with the bootstrap token.
fn first_admin(gantry: &Gantry) -> String {
    let token = std::fs::read_to_string(gantry.data().join("bootstrap.token")).expect("token");
    gantry
        .client_with_key(token.trim())
        .post("/v1/keys", &json!({ "role": "admin" }))
        .expect("first admin")["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

#[test]
fn past_its_rate_a_key_gets_429_with_retry_after() {
    let gantry = Gantry::start_with_edge(
        ExecutorChoice::Process,
        EdgeOptions {
            rate_limit: 1.0,
            rate_burst: 5.0,
            ..edge()
        },
    );
    let admin = first_admin(&gantry);
    let bearer = format!("Bearer {admin}");
    let statuses: Vec<(u16, String)> = (0..8)
        .map(|_| {
            let (status, headers, _) = send(
                &gantry,
                "GET",
                "/v1/jobs",
                &[("Authorization", &bearer)],
                None,
            );
            (status, headers)
        })
        .collect();
    assert!(
        statuses[..5].iter().all(|(s, _)| *s == 200),
        "the burst passes"
    );
    let (status, headers) = &statuses[7];
    assert_eq!(*status, 429);
    assert!(headers.contains("retry-after: 1"), "{headers}");
}

/// Opens the event websocket with these headers; returns the socket, or the refusal's status.
fn open_ws(
    gantry: &Gantry,
    headers: &[(&str, &str)],
) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let stream = TcpStream::connect(gantry.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = tungstenite::http::Request::builder()
        .uri(format!("ws://{}/v1/events/ws", gantry.addr))
        .header("Host", gantry.addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        );
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    match tungstenite::client(request.body(()).expect("request"), stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// The next text message, or `None` once the socket closes.
fn next_text(socket: &mut tungstenite::WebSocket<TcpStream>) -> Option<Value> {
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("json"));
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[test]
fn the_event_websocket_takes_a_key_by_header_subprotocol_or_first_message_and_is_bounded() {
    let gantry = Gantry::start_with_edge(
        ExecutorChoice::Process,
        EdgeOptions {
            max_streams_per_key: 1,
            ..edge()
        },
    );
    let admin = first_admin(&gantry);
    let viewer = gantry
        .client_with_key(&admin)
        .post("/v1/keys", &json!({ "role": "viewer", "group": "vision" }))
        .expect("viewer")["key"]
        .as_str()
        .expect("key")
        .to_owned();

    // No key anywhere: the first message must bring one, or the stream closes.
    let mut socket = open_ws(&gantry, &[]).expect("upgrade");
    socket
        .send(tungstenite::Message::text("not a key"))
        .expect("send");
    assert_eq!(next_text(&mut socket), None, "closed without a key");
    // Its slot (one per client address until a key is known) is given back once it ends.
    std::thread::sleep(Duration::from_millis(200));

    // A key as the first message: events flow (a viewer sees node events, not key events).
    let mut socket = open_ws(&gantry, &[]).expect("upgrade");
    socket
        .send(tungstenite::Message::text(
            json!({ "token": viewer }).to_string(),
        ))
        .expect("send");
    let first = next_text(&mut socket).expect("an event");
    assert!(first["seq"].as_u64().is_some(), "{first}");
    assert!(!first["type"].as_str().unwrap_or("").starts_with("key."));

    // As a subprotocol (what browsers can do), with a bound of one stream per key.
    let protocol = format!("gantry, gantry.bearer.{admin}");
    let mut held = open_ws(&gantry, &[("Sec-WebSocket-Protocol", &protocol)]).expect("upgrade");
    assert!(next_text(&mut held).is_some());
    assert_eq!(
        open_ws(&gantry, &[("Sec-WebSocket-Protocol", &protocol)]).err(),
        Some(503),
        "one stream per key"
    );
    // A wrong key in the header is refused before the upgrade.
    assert_eq!(
        open_ws(&gantry, &[("Authorization", "Bearer gantry_00_00")]).err(),
        Some(401)
    );
}

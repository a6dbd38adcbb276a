//! `GET /openapi.json` against what the real gantry answers: every operation the document
//! names is called, every answer's status must be documented for its operation, and every JSON
//! answer (and the first message of each stream) must match the documented schema — made
//! strict here, so a field the server sends but the document does not name fails too.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::Duration;

use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::{Gantry, raw_http};
use serde_json::{Value, json};

/// The document with every object schema closed: objects refuse properties they do not name
/// (`additionalProperties: false`), and compositions refuse what none of their parts names
/// (`unevaluatedProperties: false`; their parts stay open so each sees only its share).
fn closed(schema: &mut Value, in_composition: bool) {
    match schema {
        Value::Object(map) => {
            let composed = map.contains_key("allOf");
            if composed {
                map.insert("unevaluatedProperties".into(), Value::Bool(false));
            } else if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !in_composition
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                closed(value, key == "allOf");
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| closed(v, in_composition)),
        _ => {}
    }
}

struct Contract {
    doc: Value,
    components: Value,
    called: BTreeSet<(String, String)>,
}

impl Contract {
    fn new(doc: Value) -> Contract {
        let mut components = doc["components"].clone();
        // Schemas reached by `$ref` from a composition's parts are themselves parts there.
        let composed: BTreeSet<String> = refs_in_compositions(&components);
        if let Some(schemas) = components["schemas"].as_object_mut() {
            for (name, schema) in schemas.iter_mut() {
                closed(schema, composed.contains(name));
            }
        }
        Contract {
            doc,
            components,
            called: BTreeSet::new(),
        }
    }

    /// Checks one answer of `method path` (the document's path template).
    fn check(&mut self, method: &str, path: &str, status: u16, content_type: &str, body: &Value) {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        self.called.insert((method.to_owned(), path.to_owned()));
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
        let media = content_type.split(';').next().unwrap_or("").trim();
        if response["content"].is_null() {
            return;
        }
        let documented = match &response["content"][media] {
            Value::Null => &response["content"]["*/*"],
            exact => exact,
        };
        assert!(
            documented.is_object(),
            "{method} {path} {status} answered {media:?}; the document says {}",
            response["content"]
        );
        if media == "application/json" {
            let schema = documented["schema"].clone();
            self.validate(&format!("{method} {path} {status}"), &schema, body);
        }
    }

    /// Whether `instance` matches `schema` (with the document's components).
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut schema = schema.clone();
        closed(&mut schema, false);
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.components,
            "allOf": [schema],
        });
        let validator = jsonschema::draft202012::new(&root).expect("the schema compiles");
        validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Checks `instance` against `schema`.
    fn validate(&self, what: &str, schema: &Value, instance: &Value) {
        let errors = self.errors(schema, instance);
        assert!(
            errors.is_empty(),
            "{what}: the answer does not match the document:\n{}\n{instance:#}",
            errors.join("\n")
        );
    }

    fn component(&self, name: &str) -> Value {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                all.insert((method.clone(), path.clone()));
            }
        }
        all
    }
}

fn refs_in_compositions(value: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn walk(value: &Value, inside: bool, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if inside && let Some(Value::String(r)) = map.get("$ref") {
                    out.insert(r.rsplit('/').next().unwrap_or_default().to_owned());
                }
                for (key, v) in map {
                    walk(v, inside || key == "allOf", out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, inside, out)),
            _ => {}
        }
    }
    walk(value, false, &mut out);
    out
}

/// One request: (status, content type, JSON body or Null).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String, Value) {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if body.is_some() {
        all.push(("Content-Type", "application/json"));
    }
    let (status, head, value) = raw_http(addr, method, path, &all, bytes.as_bytes());
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    (status, content_type, value)
}

/// The first text message of a websocket, as JSON (pings skipped).
fn first_text(socket: &mut tungstenite::WebSocket<std::net::TcpStream>) -> Value {
    loop {
        match socket.read().expect("message") {
            tungstenite::Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The head and the first `data:` line of a Server-Sent Events stream.
fn first_sse_event(addr: SocketAddr, path: &str) -> (u16, String, Value) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
    let mut reader = BufReader::new(stream);
    let mut status = 0;
    let mut content_type = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read") == 0 {
            panic!("the SSE stream ended before an event");
        }
        let l = line.trim_end();
        if status == 0 {
            status = l
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = l.to_lowercase().strip_prefix("content-type:") {
            content_type = v.trim().to_owned();
        } else if let Some(data) = l.strip_prefix("data:") {
            return (
                status,
                content_type,
                serde_json::from_str(data.trim()).expect("JSON"),
            );
        }
    }
}

#[test]
fn every_documented_operation_answers_as_the_document_says() {
    let gantry = Gantry::start(ExecutorChoice::Process);
    let addr = gantry.addr;
    let (status, content_type, doc) = call(addr, "GET", "/openapi.json", &[], None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0", "OpenAPI 3.1");
    let mut c = Contract::new(doc.clone());
    c.check("get", "/openapi.json", status, &content_type, &doc);

    // Every route is documented, with the errors it gives.
    for (method, path) in c.operations() {
        let responses = &c.doc["paths"][&path][&method]["responses"];
        assert!(
            responses.as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} lists no answers"
        );
    }
    assert!(
        c.doc["paths"]["/v1/jobs"]["post"]["responses"]["400"].is_object(),
        "errors are documented"
    );

    let get = |c: &mut Contract, template: &str, path: &str| {
        let (status, ct, body) = call(addr, "GET", path, &[], None);
        c.check("get", template, status, &ct, &body);
        (status, body)
    };

    // Meta.
    for path in ["/healthz", "/readyz", "/metrics", "/docs", "/"] {
        let (status, _) = get(&mut c, path, path);
        assert_eq!(status, 200, "{path}");
    }

    // Jobs: one that writes an output and ends, one that runs until cancelled.
    let spec = json!({
        "name": "contract", "image": "busybox",
        "command": ["sh", "-c", "echo hello; echo out > $GANTRY_OUTPUT_DIR/result.txt"],
        "labels": { "suite": "openapi" },
    });
    let (status, ct, submitted) = call(addr, "POST", "/v1/jobs", &[], Some(&spec));
    c.check("post", "/v1/jobs", status, &ct, &submitted);
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["id"].as_str().expect("id").to_owned();
    let seq = submitted["seq"].as_u64().expect("seq");
    let (status, ct, refused) = call(addr, "POST", "/v1/jobs", &[], Some(&json!({"image": 5})));
    c.check("post", "/v1/jobs", status, &ct, &refused);
    assert_eq!(status, 400);
    gantry.wait_for(&id, &["succeeded"], Duration::from_secs(60));

    let (status, job) = get(
        &mut c,
        "/v1/jobs/{id}",
        &format!("/v1/jobs/{id}?min_seq={seq}"),
    );
    assert_eq!((status, job["state"].as_str()), (200, Some("succeeded")));
    // The check is strict: a field the document does not name, at the top or nested, fails.
    let detail = c.component("JobDetail");
    let mut extra = job.clone();
    extra["undocumented"] = json!(1);
    assert!(
        !c.errors(&detail, &extra).is_empty(),
        "an extra top-level field is caught"
    );
    let mut extra = job.clone();
    extra["spec"]["undocumented"] = json!(1);
    assert!(
        !c.errors(&detail, &extra).is_empty(),
        "an extra nested field is caught"
    );
    let mut missing = job.clone();
    missing.as_object_mut().expect("object").remove("state");
    assert!(
        !c.errors(&detail, &missing).is_empty(),
        "a missing field is caught"
    );
    assert_eq!(get(&mut c, "/v1/jobs/{id}", "/v1/jobs/not-a-uuid").0, 400);
    let unknown = "0190a000-0000-7000-8000-000000000000";
    assert_eq!(
        get(&mut c, "/v1/jobs/{id}", &format!("/v1/jobs/{unknown}")).0,
        404
    );
    let (status, list) = get(&mut c, "/v1/jobs", "/v1/jobs?state=succeeded&limit=10");
    assert_eq!(
        (status, list["jobs"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    assert_eq!(get(&mut c, "/v1/jobs", "/v1/jobs?state=nonsense").0, 400);
    assert_eq!(
        get(&mut c, "/v1/jobs/{id}/logs", &format!("/v1/jobs/{id}/logs")).0,
        200
    );
    let (status, artifacts) = get(
        &mut c,
        "/v1/jobs/{id}/artifacts",
        &format!("/v1/jobs/{id}/artifacts?inline=true"),
    );
    assert_eq!(status, 200);
    let result = artifacts["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "result.txt"))
        .expect("result.txt listed");
    assert_eq!(result["content"], "out\n");
    let download = "/v1/jobs/{id}/artifacts/{name}";
    assert_eq!(
        get(
            &mut c,
            download,
            &format!("/v1/jobs/{id}/artifacts/result.txt")
        )
        .0,
        200
    );
    assert_eq!(
        get(
            &mut c,
            download,
            &format!("/v1/jobs/{id}/artifacts/none.txt")
        )
        .0,
        404
    );
    let (status, ct, body) = call(
        addr,
        "GET",
        &format!("/v1/jobs/{id}/artifacts/result.txt"),
        &[("Range", "bytes=0-1")],
        None,
    );
    c.check("get", download, status, &ct, &body);
    assert_eq!(status, 206);
    let (status, receipt) = get(
        &mut c,
        "/v1/jobs/{id}/receipt",
        &format!("/v1/jobs/{id}/receipt"),
    );
    assert_eq!(
        (status, receipt["state"].as_str()),
        (200, Some("succeeded"))
    );

    let long = json!({ "name": "long", "image": "busybox", "command": ["sleep", "60"] });
    let (_, _, long) = call(addr, "POST", "/v1/jobs", &[], Some(&long));
    let long = long["id"].as_str().expect("id").to_owned();
    gantry.wait_for(&long, &["running"], Duration::from_secs(30));
    let cancel = "/v1/jobs/{id}/cancel";
    let body = json!({ "reason": "contract test" });
    let (status, ct, answer) = call(
        addr,
        "POST",
        &format!("/v1/jobs/{long}/cancel"),
        &[],
        Some(&body),
    );
    c.check("post", cancel, status, &ct, &answer);
    assert_eq!(status, 202, "{answer}");
    gantry.wait_for(&long, &["cancelled"], Duration::from_secs(30));
    let (status, ct, answer) = call(addr, "POST", &format!("/v1/jobs/{id}/cancel"), &[], None);
    c.check("post", cancel, status, &ct, &answer);
    assert_eq!(status, 409, "an ended job: {answer}");

    // Streams: the first message of each.
    let client = &gantry.client;
    let mut socket = client
        .websocket(&format!("/v1/jobs/{id}/logs/ws"))
        .expect("log websocket");
    c.called
        .insert(("get".into(), "/v1/jobs/{id}/logs/ws".into()));
    let first = first_text(&mut socket);
    c.validate("log websocket", &c.component("LogMessage"), &first);
    assert!(
        first["data"].as_str().is_some_and(|d| d.contains("hello")),
        "{first}"
    );
    let mut socket = client
        .websocket("/v1/events/ws?after=0")
        .expect("event websocket");
    c.called.insert(("get".into(), "/v1/events/ws".into()));
    let first = first_text(&mut socket);
    c.validate("event websocket", &c.component("Envelope"), &first);
    let (status, ct, first) = first_sse_event(addr, "/v1/events/sse?format=cloudevents");
    c.check("get", "/v1/events/sse", status, &ct, &Value::Null);
    c.validate("SSE", &c.component("CloudEvent"), &first);
    let (status, page) = get(&mut c, "/v1/events", "/v1/events?after=0&limit=50");
    assert!(status == 200 && page["events"].as_array().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        get(
            &mut c,
            "/v1/events",
            "/v1/events?format=cloudevents&types=job.*"
        )
        .0,
        200
    );
    assert_eq!(
        get(&mut c, "/v1/events", "/v1/events?types=nonsense").0,
        400
    );

    // Pipelines.
    let pipeline = json!({ "name": "p", "stages": [
        { "name": "a", "job": { "image": "busybox", "command": ["true"] } },
        { "name": "b", "after": ["a"], "job": { "image": "busybox", "command": ["sleep", "60"] } },
    ]});
    let (status, ct, dry) = call(
        addr,
        "POST",
        "/v1/pipelines?dry_run=true",
        &[],
        Some(&pipeline),
    );
    c.check("post", "/v1/pipelines", status, &ct, &dry);
    assert_eq!(status, 200, "{dry}");
    let (status, ct, made) = call(addr, "POST", "/v1/pipelines", &[], Some(&pipeline));
    c.check("post", "/v1/pipelines", status, &ct, &made);
    assert_eq!(status, 202, "{made}");
    let pid = made["id"].as_str().expect("id").to_owned();
    let bad = json!({ "name": "p", "stages": [{ "name": "a", "after": ["a"], "job": { "image": "x" } }] });
    let (status, ct, refused) = call(addr, "POST", "/v1/pipelines", &[], Some(&bad));
    c.check("post", "/v1/pipelines", status, &ct, &refused);
    assert_eq!(status, 400);
    assert_eq!(get(&mut c, "/v1/pipelines", "/v1/pipelines").0, 200);
    assert_eq!(
        get(
            &mut c,
            "/v1/pipelines/{id}",
            &format!("/v1/pipelines/{pid}")
        )
        .0,
        200
    );
    let (status, ct, answer) = call(
        addr,
        "POST",
        &format!("/v1/pipelines/{pid}/cancel"),
        &[],
        None,
    );
    c.check("post", "/v1/pipelines/{id}/cancel", status, &ct, &answer);
    assert_eq!(status, 202, "{answer}");

    // Webhooks (the receiver does not exist: deliveries fail and are listed).
    let hook = json!({ "url": "http://127.0.0.1:9/hook", "types": ["job.*"] });
    let (status, ct, created) = call(addr, "POST", "/v1/webhooks", &[], Some(&hook));
    c.check("post", "/v1/webhooks", status, &ct, &created);
    assert_eq!(status, 201, "{created}");
    let wid = created["id"].as_str().expect("id").to_owned();
    let (status, ct, refused) = call(
        addr,
        "POST",
        "/v1/webhooks",
        &[],
        Some(&json!({ "url": "ftp://x" })),
    );
    c.check("post", "/v1/webhooks", status, &ct, &refused);
    assert_eq!(status, 400);
    assert_eq!(get(&mut c, "/v1/webhooks", "/v1/webhooks").0, 200);
    let deliveries = "/v1/webhooks/{id}/deliveries";
    assert_eq!(
        get(
            &mut c,
            deliveries,
            &format!("/v1/webhooks/{wid}/deliveries")
        )
        .0,
        200
    );
    let (status, ct, answer) = call(addr, "DELETE", &format!("/v1/webhooks/{wid}"), &[], None);
    c.check("delete", "/v1/webhooks/{id}", status, &ct, &answer);
    assert_eq!(status, 200);
    let (status, ct, answer) = call(addr, "DELETE", "/v1/webhooks/none", &[], None);
    c.check("delete", "/v1/webhooks/{id}", status, &ct, &answer);
    assert_eq!(status, 404);

    // Nodes and queues.
    let (status, nodes) = get(&mut c, "/v1/nodes", "/v1/nodes");
    assert_eq!(status, 200);
    let node = nodes["nodes"][0]["id"].as_str().expect("a node").to_owned();
    for action in ["cordon", "uncordon", "explode"] {
        let (status, ct, answer) = call(
            addr,
            "POST",
            &format!("/v1/nodes/{node}/{action}"),
            &[],
            None,
        );
        c.check("post", "/v1/nodes/{id}/{action}", status, &ct, &answer);
        assert_eq!(
            status,
            if action == "explode" { 404 } else { 202 },
            "{answer}"
        );
    }
    assert_eq!(get(&mut c, "/v1/queues", "/v1/queues").0, 200);

    // Secrets.
    let (status, ct, answer) = call(
        addr,
        "PUT",
        "/v1/secrets/token",
        &[],
        Some(&json!({ "value": "s3cr3t" })),
    );
    c.check("put", "/v1/secrets/{name}", status, &ct, &answer);
    assert_eq!(status, 200, "{answer}");
    let (status, ct, answer) = call(
        addr,
        "PUT",
        "/v1/secrets/token",
        &[],
        Some(&json!({ "value": "" })),
    );
    c.check("put", "/v1/secrets/{name}", status, &ct, &answer);
    assert_eq!(status, 400);
    assert_eq!(get(&mut c, "/v1/secrets", "/v1/secrets").0, 200);
    for expected in [200, 404] {
        let (status, ct, answer) = call(addr, "DELETE", "/v1/secrets/token", &[], None);
        c.check("delete", "/v1/secrets/{name}", status, &ct, &answer);
        assert_eq!(status, expected);
    }

    // Keys (authentication is off on loopback: the key is sent, not needed).
    let (status, ct, key) = call(
        addr,
        "POST",
        "/v1/keys",
        &[],
        Some(&json!({ "role": "admin", "name": "contract" })),
    );
    c.check("post", "/v1/keys", status, &ct, &key);
    assert_eq!(status, 201, "{key}");
    let bearer = format!("Bearer {}", key["key"].as_str().expect("key"));
    let auth = [("Authorization", bearer.as_str())];
    let (status, ct, keys) = call(addr, "GET", "/v1/keys", &auth, None);
    c.check("get", "/v1/keys", status, &ct, &keys);
    assert_eq!(status, 200, "{keys}");
    let (status, ct, other) = call(
        addr,
        "POST",
        "/v1/keys",
        &auth,
        Some(&json!({ "role": "viewer" })),
    );
    c.check("post", "/v1/keys", status, &ct, &other);
    let other_id = other["key_id"].as_str().expect("key id").to_owned();
    let (status, ct, answer) = call(
        addr,
        "POST",
        &format!("/v1/keys/{other_id}/revoke"),
        &auth,
        None,
    );
    c.check("post", "/v1/keys/{id}/revoke", status, &ct, &answer);
    assert_eq!(status, 202, "{answer}");

    // Provable history. The first signed checkpoint comes within a minute in tests: before it,
    // 404 `no_checkpoint`; proofs of sizes named answer either way.
    let (status, body) = get(&mut c, "/v1/audit/checkpoint", "/v1/audit/checkpoint");
    assert!(
        status == 200 || (status == 404 && body["error"]["code"] == "no_checkpoint"),
        "{status} {body}"
    );
    let (status, body) = get(
        &mut c,
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/inclusion?seq=1&size=2",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["proof"].as_array().map(Vec::len), Some(1), "{body}");
    let (status, body) = get(
        &mut c,
        "/v1/audit/proof/consistency",
        "/v1/audit/proof/consistency?from=1&to=2",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &mut c,
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/inclusion?seq=5&size=2",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "seq", "{body}");

    let missed: Vec<_> = c.operations().difference(&c.called).cloned().collect();
    assert!(missed.is_empty(), "operations not exercised: {missed:?}");
}

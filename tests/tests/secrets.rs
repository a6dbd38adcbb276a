//! Secrets never reach the log: a job with a stored secret (`secret://NAME`) and an inline one
//! gets both in its environment, and then no file of the data dir, no exported log, no API
//! answer, no websocket message and (under Docker) no `docker inspect` of its container holds
//! either value; its kept output shows them masked.

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use gantry_nodes::edge::EdgeOptions;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::services::unavailable;
use gantry_tests::system::{Gantry, all_events, file_containing};
use serde_json::{Value, json};

const STORED: &str = "stored-s3cr3t-hf-token";
const INLINE: &str = "inline-s3cr3t-password";

fn assert_no_secret(what: &str, text: &str) {
    for value in [STORED, INLINE] {
        assert!(!text.contains(value), "{what} holds a secret value: {text}");
    }
}

/// Every event over the websocket, until the one at `head`.
fn websocket_text(gantry: &Gantry, head: u64) -> String {
    let stream = TcpStream::connect(gantry.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (mut socket, _) = tungstenite::client(format!("ws://{}/v1/events/ws", gantry.addr), stream)
        .expect("websocket");
    let mut all = String::new();
    loop {
        match socket.read().expect("message") {
            tungstenite::Message::Text(text) => {
                let event: Value = serde_json::from_str(&text).expect("json");
                all.push_str(&text);
                if event["seq"].as_u64() >= Some(head) {
                    return all;
                }
            }
            _ => continue,
        }
    }
}

/// Runs one job that prints both secrets (masked in its output) and their lengths, while it
/// `sleep`s `pause` seconds first; `during` runs while it sleeps, with the job's id.
fn run_job_with_secrets(
    gantry: &Gantry,
    image: &str,
    pause: u32,
    during: impl FnOnce(&str),
) -> String {
    let client = &gantry.client;
    client
        .put("/v1/secrets/hf-token", &json!({ "value": STORED }))
        .expect("secret stored");
    let job = json!({
        "name": "with-secrets", "image": image,
        "command": ["sh", "-c", format!(
            "sleep {pause}; echo \"token=$HF_TOKEN pass=$API_PASSWORD\"; \
             echo \"lengths ${{#HF_TOKEN}} ${{#API_PASSWORD}} plain=$PLAIN\"")],
        "env": { "PLAIN": "visible", "HF_TOKEN": "secret://hf-token" },
        "secrets": { "API_PASSWORD": INLINE },
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
    });
    let id = gantry.submit(job);
    gantry.wait_for(
        &id,
        &["running", "succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    during(&id);
    let done = gantry.wait_for(
        &id,
        &["succeeded", "dead_lettered"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let output = gantry.logs(&id, 1);
    assert!(output.contains("token=*** pass=***"), "{output}");
    assert!(
        output.contains(&format!(
            "lengths {} {} plain=visible",
            STORED.len(),
            INLINE.len()
        )),
        "both values reached the job: {output}"
    );
    id
}

/// Everything a client can read: the job (its spec names the secrets, never the values),
/// lists, events (REST and websocket) and the secret list.
fn check_answers(gantry: &Gantry, id: &str) {
    let client = &gantry.client;
    let job = gantry.job(id);
    assert_no_secret("the job view", &job.to_string());
    let secrets = &job["spec"]["secrets"];
    assert_eq!(secrets["HF_TOKEN"]["name"], "default/hf-token", "{job}");
    assert!(secrets["API_PASSWORD"]["hash"].is_string(), "{job}");
    assert!(job["spec"]["env"].get("HF_TOKEN").is_none(), "{job}");
    for path in ["/v1/jobs", "/v1/secrets", "/v1/queues", "/v1/nodes"] {
        let answer = client.get(path).expect(path);
        assert_no_secret(path, &answer.to_string());
    }
    assert_eq!(
        client.get("/v1/secrets").expect("secrets")["secrets"],
        json!(["hf-token"])
    );
    let events = all_events(client);
    assert!(events.iter().any(|e| e["type"] == "secret.set"));
    let events_text = serde_json::to_string(&events).expect("json");
    assert_no_secret("/v1/events", &events_text);
    let head = events.last().and_then(|e| e["seq"].as_u64()).expect("head");
    assert_no_secret("the websocket", &websocket_text(gantry, head));
}

/// No file under the data dir, and no export of the log, holds a value.
fn check_files(gantry: &mut Gantry) {
    let data = gantry.data().to_owned();
    gantry.stop();
    for value in [STORED, INLINE] {
        assert_eq!(
            file_containing(&data, value.as_bytes()),
            None,
            "{value} on disk"
        );
    }
    let export = data.join("export.bin");
    let exported = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args(["log", "export", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&export)
        .output()
        .expect("gantry log export");
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let mut bytes = Vec::new();
    std::fs::File::open(&export)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("export");
    assert!(bytes.len() > 100, "an export was written");
    for value in [STORED, INLINE] {
        assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()));
    }
}

#[test]
fn secrets_reach_the_job_and_nothing_else() {
    let mut gantry = Gantry::start_with_edge(ExecutorChoice::Process, EdgeOptions::default());
    let id = run_job_with_secrets(&gantry, "busybox", 0, |_| {});
    check_answers(&gantry, &id);

    // A reference to a secret the group does not have is refused at the edge, naming it.
    let missing = gantry.try_submit(&json!({
        "name": "missing", "image": "busybox", "command": ["true"],
        "env": { "TOKEN": "secret://nope" },
    }));
    match missing {
        Err(gantry_nodes::client::ClientError::Api {
            status,
            code,
            field,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (400, "secret_not_found"));
            assert_eq!(field.as_deref(), Some("env.TOKEN"));
        }
        other => panic!("{other:?}"),
    }
    // The same submission with its idempotency key is the same job, though its inline value
    // is stored under a fresh name each time.
    let keyed = json!({
        "name": "keyed", "image": "busybox", "command": ["true"],
        "secrets": { "PASSWORD": INLINE }, "idempotency_key": "secret-retry",
    });
    let first = gantry.try_submit(&keyed).expect("first");
    let again = gantry.try_submit(&keyed).expect("a retry");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["existing"], true);
    check_files(&mut gantry);
}

fn docker_image() -> Option<String> {
    let image =
        std::env::var("GANTRY_TEST_IMAGE").unwrap_or_else(|_| "gantry-test/busybox:latest".into());
    let inspected = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output();
    match inspected {
        Ok(out) if out.status.success() => Some(image),
        Ok(out) => unavailable(
            "Docker",
            &format!(
                "test image {image} missing: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => unavailable("Docker", &format!("no docker client: {e}")),
    }
}

#[test]
fn under_docker_the_container_configuration_holds_no_secret() {
    let Some(image) = docker_image() else {
        return;
    };
    let mut gantry = Gantry::start_with_edge(ExecutorChoice::Docker, EdgeOptions::default());
    let mut inspected = false;
    let id = run_job_with_secrets(&gantry, &image, 3, |id| {
        let name = format!("gantry-{id}-1");
        let out = Command::new("docker")
            .args(["inspect", &name])
            .output()
            .expect("docker inspect");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            assert!(
                text.contains("PLAIN=visible"),
                "the container is this job's: {text}"
            );
            assert_no_secret("docker inspect", &text);
            inspected = true;
        }
    });
    assert!(inspected, "the running container was inspected");
    check_answers(&gantry, &id);
    check_files(&mut gantry);
}

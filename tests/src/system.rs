//! A whole gantry (`gantry up`) started in-process on a free port with its data in a temp dir,
//! stopped on drop, and a blocking REST client for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_events::event::Gpu;
use gantry_nodes::audit::AuditOptions;
use gantry_nodes::client::{Client, ClientError};
use gantry_nodes::edge::EdgeOptions;
use gantry_nodes::up::{ExecutorChoice, UpOptions, up};
use serde_json::Value;

/// A running gantry.
#[derive(Debug)]
pub struct Gantry {
    pub addr: SocketAddr,
    pub client: Client,
    data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The audit settings of tests: re-checks every second, so tests see damage found while gantry
/// runs; checkpoints every minute (tests that look at checkpoints ask for them sooner).
pub fn test_audit() -> AuditOptions {
    AuditOptions {
        audit_recheck_every: Duration::from_secs(1),
        checkpoint_every: Duration::from_secs(60),
        ..AuditOptions::default()
    }
}

impl Gantry {
    /// Starts gantry on a fresh data directory.
    pub fn start(executor: ExecutorChoice) -> Gantry {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_owned();
        let mut gantry = Gantry::start_on(&data, executor, 64 << 10);
        gantry._dir = Some(dir);
        gantry
    }

    /// Starts gantry on a fresh data directory, on a node reporting these (fake) GPUs.
    pub fn start_with_gpus(executor: ExecutorChoice, gpus: Vec<Gpu>) -> Gantry {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_owned();
        let edge = EdgeOptions::default();
        let mut gantry = Gantry::launch(&data, executor, 64 << 10, Some(gpus), edge, test_audit());
        gantry._dir = Some(dir);
        gantry
    }

    /// Starts gantry on a fresh data directory with these edge settings (API keys, hosts,
    /// limits). Without a secret key file, one is made beside the data directory.
    pub fn start_with_edge(executor: ExecutorChoice, mut edge: EdgeOptions) -> Gantry {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        if edge.secret_key_file.is_none() {
            edge.secret_key_file = Some(dir.path().join("secret.key"));
        }
        let mut gantry = Gantry::launch(&data, executor, 64 << 10, None, edge, test_audit());
        gantry._dir = Some(dir);
        gantry
    }

    /// Starts gantry on `data` (kept after drop) with these audit settings (its key, the
    /// checkpoint file, how often it checkpoints and re-checks).
    pub fn start_with_audit(data: &Path, audit: AuditOptions) -> Gantry {
        Gantry::launch(
            data,
            ExecutorChoice::Process,
            64 << 10,
            None,
            EdgeOptions::default(),
            audit,
        )
    }

    /// Starts gantry on `data` (kept after drop), with a request body limit.
    pub fn start_on(data: &Path, executor: ExecutorChoice, max_body_bytes: usize) -> Gantry {
        Gantry::launch(
            data,
            executor,
            max_body_bytes,
            None,
            EdgeOptions::default(),
            test_audit(),
        )
    }

    fn launch(
        data: &Path,
        executor: ExecutorChoice,
        max_body_bytes: usize,
        fake_gpus: Option<Vec<Gpu>>,
        edge: EdgeOptions,
        mut audit: AuditOptions,
    ) -> Gantry {
        // Tests keep the Auditor's key with the data (gantry's default is the config dir).
        if audit.audit_key_file.is_none() {
            audit.audit_key_file = Some(data.join("audit.key"));
        }
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let options = UpOptions {
            data: data.to_owned(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            executor,
            fake_gpus,
            max_body_bytes,
            edge,
            s3: Default::default(),
            profiles: test_profiles(),
            // Jobs that ask for a short `artifact_ttl_secs` see it applied within a second.
            retention: gantry_nodes::retention::RetentionOptions {
                artifact_ttl: Vec::new(),
                retention_every: Duration::from_secs(1),
            },
            snapshot_every: gantry_nodes::up::SNAPSHOT_EVERY_EVENTS,
            views_cache_bytes: gantry_projections::DEFAULT_CACHE_BYTES,
            audit,
        };
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let (started_tx, started_rx) = tokio::sync::oneshot::channel();
                actix_rt::spawn(async move {
                    if let Ok(addr) = started_rx.await {
                        let _ = addr_tx.send(addr);
                    }
                });
                if let Err(e) = up(options, Some(started_tx), async {
                    let _ = stop_rx.await;
                })
                .await
                {
                    eprintln!("gantry up failed: {e}");
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("gantry started");
        Gantry {
            addr,
            client: Client::new(&format!("http://{addr}")),
            data: data.to_owned(),
            _dir: None,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A client of this gantry that sends `key`.
    pub fn client_with_key(&self, key: &str) -> Client {
        Client::new(&format!("http://{}", self.addr)).with_key(Some(key.to_owned()))
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Submits a job spec; returns its id.
    pub fn submit(&self, spec: Value) -> String {
        let reply = self
            .client
            .post("/v1/jobs", &spec)
            .expect("submit accepted");
        reply["id"].as_str().expect("id").to_owned()
    }

    pub fn try_submit(&self, spec: &Value) -> Result<Value, ClientError> {
        self.client.post("/v1/jobs", spec)
    }

    pub fn job(&self, id: &str) -> Value {
        self.client.get(&format!("/v1/jobs/{id}")).expect("job")
    }

    /// Waits until the job is in one of `states`; panics after `within`.
    pub fn wait_for(&self, id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id);
            if states.iter().any(|s| job["state"] == *s) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached {states:?}: {job}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self, id: &str, attempt: u32) -> String {
        let raw = self
            .client
            .get_raw(&format!("/v1/jobs/{id}/logs?attempt={attempt}"))
            .expect("logs");
        String::from_utf8_lossy(&raw).to_string()
    }

    /// Every event in the log, as JSON.
    pub fn events(&self) -> Vec<Value> {
        all_events(&self.client)
    }

    /// Stops gantry (as Ctrl-C would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every event a gateway serves, as JSON, page by page.
pub fn all_events(client: &Client) -> Vec<Value> {
    try_all_events(client).expect("events")
}

/// [`all_events`], or the gateway's error (a 503 while the log cannot be read, say).
pub fn try_all_events(client: &Client) -> Result<Vec<Value>, ClientError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let reply = client.get(&format!("/v1/events?after={after}&limit=1000"))?;
        let batch = reply["events"].as_array().cloned().unwrap_or_default();
        // Where the page stopped (events the key may not see are left out of it).
        let next = reply["next_after"].as_u64().expect("next_after");
        if next <= after {
            break;
        }
        after = next;
        out.extend(batch);
    }
    Ok(out)
}

/// The lifecycle of one job, by event type, from a list of events. `job.waiting` (which only
/// says why a queued job is not placed yet, and depends on what else is running) and the
/// job's stored outputs are left out.
pub fn job_event_types(events: &[Value], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"]["job_id"] == id && e["type"] != "job.waiting")
        // Its outputs (`artifact.stored`) are not steps of its lifecycle.
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("job.")))
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// What a job printed, from an attempt's output without timestamps: `<stream> <text>` per line.
pub fn printed(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_owned())
        .collect()
}

/// The text after `prefix` on the first stdout line of `lines` that starts with it.
pub fn printed_value<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("stdout ")?.strip_prefix(prefix))
        .map(str::trim)
}

/// One raw HTTP/1.1 exchange with `addr`, for requests a client library would not send:
/// (status, the head in lower case, the JSON body or `Null`). `Host` is `addr` unless
/// `headers` name one. A body past a server limit may be cut off before it is all sent.
pub fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        head.to_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The first file under `dir` (searched depth first) whose bytes hold `needle`.
pub fn file_containing(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = file_containing(&path, needle) {
                return Some(found);
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return Some(path);
        }
    }
    None
}

/// The resource profiles every test gantry is started with: `small` (half a CPU, 64 MiB).
pub fn test_profiles() -> std::collections::BTreeMap<String, gantry_actors::spec::ResourceRequest> {
    std::collections::BTreeMap::from([(
        "small".to_owned(),
        gantry_actors::spec::ResourceRequest {
            cpus: Some(0.5),
            memory_bytes: Some(64 << 20),
            gpus: None,
        },
    )])
}

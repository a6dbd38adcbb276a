//! The web dashboard in a real headless Chromium, driven through the DevTools protocol: the
//! page loads from the gateway, a job submitted through the API appears and reaches
//! `succeeded` without a reload, and its output is shown when it is clicked. A screenshot is
//! kept in the test's output dir (`CARGO_TARGET_TMPDIR/dashboard.png`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use gantry_nodes::client::Client;
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::services::unavailable;
use gantry_tests::system::Gantry;
use serde_json::{Value, json};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
}

/// A headless Chromium, killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it took into the profile dir.
        let file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium never opened DevTools");
            std::thread::sleep(Duration::from_millis(100));
        };
        Browser {
            child,
            _profile: profile,
            port,
        }
    }

    /// The DevTools session of the browser's page.
    fn page(&self) -> Page {
        let list: Value = ureq::get(format!("http://127.0.0.1:{}/json/list", self.port))
            .call()
            .expect("targets")
            .body_mut()
            .read_json()
            .expect("json");
        let url = list
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
            .expect("a ws:// URL");
        let socket = Client::new(&format!("http://127.0.0.1:{}", self.port))
            .websocket(&path)
            .expect("devtools handshake");
        Page { socket, next: 0 }
    }
}

struct Page {
    socket: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl Page {
    /// Sends a DevTools command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let message = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .expect("send");
        loop {
            if let tungstenite::Message::Text(text) = self.socket.read().expect("read") {
                let reply: Value = serde_json::from_str(&text).expect("json");
                if reply["id"] == id {
                    assert!(reply["error"].is_null(), "{method}: {reply}");
                    return reply["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )["result"]["value"]
            .clone()
    }

    /// Waits until `expression` is true in the page.
    fn wait_for(&mut self, what: &str, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "{what}; the page shows:\n{}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn the_dashboard_shows_a_job_reach_succeeded_live_and_its_output() {
    let Some(binary) = chromium() else {
        return unavailable("chromium", "not installed (apt-get install chromium)").unwrap_or(());
    };
    let gantry = Gantry::start(ExecutorChoice::Process);
    let browser = Browser::start(&binary);
    let mut page = browser.page();
    page.call("Page.enable", json!({}));
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/", gantry.addr) }),
    );
    page.wait_for(
        "the dashboard is live",
        "document.getElementById('conn')?.textContent === 'live'",
        Duration::from_secs(30),
    );

    // Submitted after the page loaded: it must arrive through the event stream.
    let id = gantry.submit(json!({
        "name": "from-the-api", "image": "busybox",
        "command": ["sh", "-c", "sleep 1; echo hello from the dashboard test"],
        "resources": { "cpus": 0.25, "memory_bytes": 64u64 << 20 },
    }));
    let row = format!("document.querySelector('tr[data-job=\"{id}\"]')");
    page.wait_for(
        "the job appears",
        &format!("{row} !== null"),
        Duration::from_secs(30),
    );
    page.wait_for(
        "the job reaches succeeded without a reload",
        &format!("{row}?.innerText.includes('succeeded')"),
        Duration::from_secs(60),
    );
    page.eval(&format!("{row}.click(); true"));
    page.wait_for(
        "its output is shown",
        "document.getElementById('log').textContent.includes('hello from the dashboard test')",
        Duration::from_secs(30),
    );
    page.wait_for(
        "its end and artifacts are shown",
        "document.getElementById('log-state').textContent.includes('succeeded') \
         && document.getElementById('artifacts').innerText.includes('output.log')",
        Duration::from_secs(30),
    );
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation').length"),
        json!(1),
        "never reloaded"
    );
    let nodes = page.eval("document.getElementById('nodes').innerText");
    assert!(
        nodes.as_str().is_some_and(|n| n.contains("process")),
        "{nodes}"
    );
    page.wait_for(
        "the queue counts follow the job's end",
        "document.getElementById('queues').innerText.includes('succeeded 1') \
         && !document.getElementById('queues').innerText.includes('running')",
        Duration::from_secs(30),
    );

    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot"))
        .expect("base64");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}

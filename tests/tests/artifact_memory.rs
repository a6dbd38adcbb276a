//! A 1 GiB output moves through the real `gantry up` — stored to a real S3 server when its job
//! ends, then downloaded through the gateway — while gantry's resident memory grows by less
//! than 100 MiB: neither side holds an artifact in memory. The peak is read from the kernel
//! (`VmHWM`, reset through `clear_refs` once gantry is up).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_nodes::client::Client;
use gantry_tests::services::S3Server;
use serde_json::json;
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;
const BOUND: u64 = 100 << 20;

/// A field of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

struct HashWriter(Sha256, u64);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_1_gib_output_is_stored_and_downloaded_with_bounded_memory() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args(["up", "--executor", "process", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--s3-bucket", "big-artifacts", "--s3-path-style"])
        .arg("--s3-endpoint")
        .arg(s3.endpoint())
        .envs(s3.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gantry");
    let pid = child.id();
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("/healthz").is_err() {
        assert!(Instant::now() < deadline, "gantry never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    // From here on the kernel's peak is measured from gantry's resident set now.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak");
    let before = status_bytes(pid, "VmRSS:");

    let id = client
        .post(
            "/v1/jobs",
            &json!({
                "name": "one-gib", "image": "busybox",
                "command": ["sh", "-c", format!(
                    "head -c {GIB} /dev/urandom > \"$GANTRY_OUTPUT_DIR/big.bin\""
                )],
                "resources": { "cpus": 1, "memory_bytes": 256u64 << 20 },
                "retry": { "max_attempts": 1 },
            }),
        )
        .expect("submit")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(600);
    let job = loop {
        let job = client.get(&format!("/v1/jobs/{id}")).expect("job");
        if ["succeeded", "dead_lettered", "cancelled"]
            .contains(&job["state"].as_str().unwrap_or(""))
        {
            break job;
        }
        assert!(Instant::now() < deadline, "the job never ended: {job}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    let stored = client
        .get(&format!("/v1/jobs/{id}/artifacts"))
        .expect("list")["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "big.bin").cloned())
        .expect("big.bin stored");
    assert_eq!(stored["size_bytes"], GIB);

    let mut hasher = HashWriter(Sha256::new(), 0);
    client
        .download(
            &format!("/v1/jobs/{id}/artifacts/big.bin"),
            &mut hasher,
            &mut |_, _| {},
        )
        .expect("download");
    assert_eq!(hasher.1, GIB);
    assert_eq!(
        hex::encode(hasher.0.finalize()),
        stored["sha256"].as_str().expect("sha256"),
        "the bytes back are the bytes stored"
    );

    let peak = status_bytes(pid, "VmHWM:");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "gantry resident memory: {} MiB before, peak {} MiB while storing and serving 1 GiB (+{} MiB, bound {} MiB)",
        before >> 20,
        peak >> 20,
        growth >> 20,
        BOUND >> 20
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        growth < BOUND,
        "gantry's resident memory grew by {} MiB moving a 1 GiB artifact",
        growth >> 20
    );
}

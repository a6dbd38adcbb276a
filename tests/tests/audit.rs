//! The Auditor re-verifies the log as gantry runs: an entry altered on disk is reported loudly
//! (health degraded, naming the sequence), never silently.

use std::time::{Duration, Instant};

use gantry_events::file::{FRAME_OVERHEAD, Format, FrameReader, HEADER_LEN, seal_frame};
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::Gantry;
use serde_json::json;

/// The store's bytes with one bit of entry 2's stored hash flipped and its frame sealed again,
/// as a person editing the store (not a bad disk: the frame checksum would catch that) would;
/// and where that frame starts.
fn entry_2_edited(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
    frames.next_frame().expect("io").expect("entry 1");
    let second = frames.next_frame().expect("io").expect("entry 2");
    let mut edited = bytes.to_vec();
    let last = second.offset as usize + FRAME_OVERHEAD + second.entry.len() - 1;
    edited[last] ^= 0x01;
    let frame = second.offset as usize..second.end(Format::CURRENT) as usize;
    seal_frame(&mut edited[frame], second.flags, Format::CURRENT);
    (edited, second.offset as usize)
}

/// Waits (30 s at most) for the Auditor to report entry 2's hash mismatch in `/readyz`, and
/// returns that answer.
fn audit_names_entry_2(gantry: &Gantry) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = gantry.client.get("/readyz").expect("ready");
        let audit = &ready["health"]["audit"];
        if audit["ok"] == false {
            let detail = audit["detail"].as_str().unwrap_or("");
            assert!(
                detail.contains("sequence 2") && detail.contains("hash mismatch"),
                "{detail}"
            );
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "the auditor never noticed: {ready}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tampered_entry_degrades_health_and_names_the_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let gantry = Gantry::start_on(dir.path(), ExecutorChoice::Process, 1 << 20);
        let id = gantry.submit(json!({ "name": "a", "image": "busybox", "command": ["true"] }));
        gantry.wait_for(&id, &["succeeded"], Duration::from_secs(30));
        let health = gantry.client.get("/readyz").expect("ready");
        assert_eq!(health["health"]["audit"]["ok"], true, "{health}");
    }

    let path = dir.path().join(gantry_events::embedded::LOG_FILE);
    let (edited, _) = entry_2_edited(&std::fs::read(&path).expect("read log"));
    std::fs::write(&path, &edited).expect("write log");

    let gantry = Gantry::start_on(dir.path(), ExecutorChoice::Process, 1 << 20);
    let ready = audit_names_entry_2(&gantry);
    assert_eq!(ready["health"]["status"], "degraded");
}

/// An entry altered on disk while gantry runs — after the Auditor verified it as it arrived —
/// is found by the Auditor's re-check of the stored chain, and from then on appends are
/// stopped: a submission is refused (503) saying why, and health names the sequence.
#[test]
fn an_entry_altered_while_gantry_runs_is_found_by_the_recheck_and_stops_appends() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let gantry = Gantry::start_on(dir.path(), ExecutorChoice::Process, 1 << 20);
    let id = gantry.submit(json!({ "name": "a", "image": "busybox", "command": ["true"] }));
    gantry.wait_for(&id, &["succeeded"], Duration::from_secs(30));
    let health = gantry.client.get("/readyz").expect("ready");
    assert_eq!(health["health"]["audit"]["ok"], true, "{health}");

    // Entry 2 edited, written in place (the running process keeps its file open).
    let path = dir.path().join(gantry_events::embedded::LOG_FILE);
    let (edited, at) = entry_2_edited(&std::fs::read(&path).expect("read log"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open log")
        .write_all_at(&edited[at..], at as u64)
        .expect("write");

    audit_names_entry_2(&gantry);
    let refused = gantry
        .client
        .post(
            "/v1/jobs",
            &json!({ "name": "b", "image": "busybox", "command": ["true"] }),
        )
        .expect_err("appends are stopped");
    let said = refused.to_string();
    assert!(
        said.contains("503") && said.contains("appends stopped") && said.contains("sequence 2"),
        "{said}"
    );
}

/// A frame damaged on disk (its checksum fails: a bad disk, not a power loss) is found when
/// gantry starts: it refuses to start, naming the sequence and the byte offset, and leaves
/// every byte where it was.
#[test]
fn a_damaged_frame_stops_gantry_at_start_naming_sequence_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let gantry = Gantry::start_on(dir.path(), ExecutorChoice::Process, 1 << 20);
        let id = gantry.submit(json!({ "name": "a", "image": "busybox", "command": ["true"] }));
        gantry.wait_for(&id, &["succeeded"], Duration::from_secs(30));
    }
    let path = dir.path().join(gantry_events::embedded::LOG_FILE);
    let mut bytes = std::fs::read(&path).expect("read log");
    let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
    frames.next_frame().expect("io").expect("entry 1");
    let second = frames.next_frame().expect("io").expect("entry 2");
    bytes[second.offset as usize + FRAME_OVERHEAD + 3] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write log");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args([
            "up",
            "--executor",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .expect("run gantry up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gantry started on a damaged log");
    assert!(
        stderr.contains("sequence 2") && stderr.contains(&format!("byte {}", second.offset)),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "nothing moved or cut"
    );
}

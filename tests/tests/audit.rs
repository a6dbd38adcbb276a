//! The Auditor re-verifies the log as gantry runs: an entry altered on disk is reported loudly
//! (health degraded, naming the sequence), never silently.

use std::time::{Duration, Instant};

use gantry_events::file::{FRAME_OVERHEAD, Format, FrameReader, HEADER_LEN, seal_frame};
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::system::Gantry;
use serde_json::json;

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

    // Flip one bit of entry 2's stored hash and seal the frame again, as a person editing the
    // store (not a bad disk: the frame checksum would catch that at open) would.
    let path = dir.path().join(gantry_events::embedded::LOG_FILE);
    let mut bytes = std::fs::read(&path).expect("read log");
    let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
    frames.next_frame().expect("io").expect("entry 1");
    let second = frames.next_frame().expect("io").expect("entry 2");
    let last = second.offset as usize + FRAME_OVERHEAD + second.entry.len() - 1;
    bytes[last] ^= 0x01;
    let frame = second.offset as usize..second.end(Format::CURRENT) as usize;
    seal_frame(&mut bytes[frame], second.flags, Format::CURRENT);
    std::fs::write(&path, &bytes).expect("write log");

    let gantry = Gantry::start_on(dir.path(), ExecutorChoice::Process, 1 << 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = gantry.client.get("/readyz").expect("ready");
        let audit = &ready["health"]["audit"];
        if audit["ok"] == false {
            assert_eq!(ready["health"]["status"], "degraded");
            let detail = audit["detail"].as_str().unwrap_or("");
            assert!(
                detail.contains("sequence 2") && detail.contains("hash mismatch"),
                "{detail}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the auditor never noticed: {ready}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

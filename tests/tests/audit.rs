//! The Auditor re-verifies the log as gantry runs: an entry altered on disk is reported loudly
//! (health degraded, naming the sequence), never silently.

use std::time::{Duration, Instant};

use gantry_events::file::{FrameReader, HEADER_LEN};
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

    // Flip one bit of entry 2's stored hash, as a bad disk (or a person) would.
    let path = dir.path().join(gantry_events::embedded::LOG_FILE);
    let mut bytes = std::fs::read(&path).expect("read log");
    let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
    frames.next_frame().expect("io").expect("entry 1");
    let second = frames.next_frame().expect("io").expect("entry 2");
    let last = second.offset as usize + 5 + second.entry.len() - 1;
    bytes[last] ^= 0x01;
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

//! The Scheduler's snapshot through the real `gantry up` process: taken as the log grows,
//! loaded after `kill -9` with only the log after it replayed, and never trusted when it does
//! not match the log (another log's, damaged) — then the state is rebuilt from the whole log,
//! and either way the state after the restart is the log's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_tests::process::GantryProcess;
use serde_json::{Value, json};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gantry-node"))
}

const ARGS: &[&str] = &["--snapshot-every", "10"];

fn snapshot_file(data: &Path) -> PathBuf {
    data.join("snapshots").join("scheduler.snapshot")
}

fn wait_state(gantry: &GantryProcess, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = gantry.client.get(&format!("/v1/jobs/{id}")).expect("job");
        if job["state"] == want {
            return job;
        }
        assert!(Instant::now() < deadline, "never {want}: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn submit(gantry: &GantryProcess, name: &str, gpus: u32) -> String {
    let mut body = json!({ "name": name, "image": "busybox", "command": ["true"] });
    if gpus > 0 {
        body["resources"] = json!({ "gpus": { "count": gpus } });
    }
    gantry.client.post("/v1/jobs", &body).expect("submit")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn log_says(file: &Path, what: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| text.contains(what))
}

/// What the restarted Scheduler holds, seen from outside: the waiting job still waits and can
/// be cancelled, an ended job's cancel is refused as ended, and a new job runs to its end.
fn check_state(gantry: &GantryProcess, waiting: &str, ended: &str, round: &str) {
    assert_eq!(
        gantry
            .client
            .get(&format!("/v1/jobs/{waiting}"))
            .expect("job")["state"],
        "queued"
    );
    let refused = gantry
        .client
        .post(&format!("/v1/jobs/{ended}/cancel"), &json!({}))
        .expect_err("an ended job cannot be cancelled");
    assert!(
        refused.to_string().contains("409"),
        "ended job's cancel: {refused}"
    );
    let fresh = submit(gantry, &format!("after-{round}"), 0);
    wait_state(gantry, &fresh, "succeeded");
    let stats = gantry.client.get("/readyz").expect("readyz");
    assert_eq!(stats["ready"], true, "{stats}");
}

#[test]
fn a_restart_loads_the_snapshot_and_one_that_does_not_match_the_log_is_rebuilt_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log_file = dir.path().join("gantry.log");

    let gantry = GantryProcess::start_in(bin(), &data, ARGS, Some(&log_file));
    // A job no node can take stays queued across restarts; the others end.
    let waiting = submit(&gantry, "waits-for-a-gpu", 1);
    let mut ended = Vec::new();
    for i in 0..6 {
        ended.push(submit(&gantry, &format!("ends-{i}"), 0));
    }
    for id in &ended {
        wait_state(&gantry, id, "succeeded");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_says(&log_file, "scheduler snapshot taken") {
        assert!(Instant::now() < deadline, "no snapshot was taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(snapshot_file(&data).exists());
    gantry.kill9();

    // kill -9, then a start from the snapshot.
    let gantry = GantryProcess::start_in(bin(), &data, ARGS, Some(&log_file));
    assert!(
        log_says(&log_file, "scheduler state loaded from its snapshot"),
        "the snapshot was not used"
    );
    check_state(&gantry, &waiting, &ended[0], "snapshot");
    gantry.kill9();

    // A snapshot whose covered entry is not the log's (another log's snapshot: its hash
    // differs) is not trusted.
    let mut raw = std::fs::read(snapshot_file(&data)).expect("snapshot");
    raw[28] ^= 0xff;
    std::fs::write(snapshot_file(&data), &raw).expect("write");
    let gantry = GantryProcess::start_in(bin(), &data, ARGS, Some(&log_file));
    assert!(
        log_says(
            &log_file,
            "scheduler snapshot does not match the log; rebuilding from the whole log"
        ),
        "a snapshot of another log was not refused"
    );
    check_state(&gantry, &waiting, &ended[1], "foreign");
    gantry.kill9();

    // A damaged snapshot (its checksum fails) is not trusted either.
    let mut raw = std::fs::read(snapshot_file(&data)).expect("snapshot");
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    std::fs::write(snapshot_file(&data), &raw).expect("write");
    let gantry = GantryProcess::start_in(bin(), &data, ARGS, Some(&log_file));
    assert!(
        log_says(
            &log_file,
            "scheduler snapshot ignored; rebuilding from the whole log"
        ),
        "a damaged snapshot was not refused"
    );
    check_state(&gantry, &waiting, &ended[2], "damaged");
    // The waiting job is cancelled like any live one.
    gantry
        .client
        .post(&format!("/v1/jobs/{waiting}/cancel"), &json!({}))
        .expect("cancel");
    wait_state(&gantry, &waiting, "cancelled");
}

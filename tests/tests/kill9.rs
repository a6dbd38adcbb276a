//! An acknowledged append survives `kill -9` of the appending process, right after the
//! acknowledgement, on both backends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use gantry_events::{EmbeddedLog, EventLog, Hash, verify_log};
use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
use gantry_tests::services::NatsServer;

/// Runs the appender until it has acknowledged `at_least` events, kills it with SIGKILL and
/// returns every acknowledgement it printed.
fn append_then_kill(args: &[&str], at_least: usize) -> BTreeMap<u64, Hash> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_log-appender"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start log-appender");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = BTreeMap::new();
    while acked.len() < at_least {
        let line = lines
            .next()
            .expect("appender exited early")
            .expect("read line");
        let (seq, hash) = line.split_once(' ').expect("`seq hash`");
        acked.insert(
            seq.parse().expect("seq"),
            Hash::from_hex(hash).expect("hash"),
        );
    }
    // SIGKILL: no destructor, no flush, no goodbye.
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // Acknowledgements already in the pipe were also given before the kill.
    for line in lines.map_while(Result::ok) {
        if let Some((seq, hash)) = line.split_once(' ')
            && let (Ok(seq), Some(hash)) = (seq.parse(), Hash::from_hex(hash))
        {
            acked.insert(seq, hash);
        }
    }
    acked
}

async fn check_survivors(log: &dyn EventLog, acked: &BTreeMap<u64, Hash>) {
    let verified = verify_log(log, 1, None)
        .await
        .expect("log answers")
        .unwrap_or_else(|b| panic!("chain must hold after kill -9: {b}"));
    let last_acked = *acked.keys().last().expect("some acks");
    assert!(
        verified.last_seq >= last_acked,
        "log ends at {} but {last_acked} was acknowledged",
        verified.last_seq
    );
    for (seq, hash) in acked {
        let entry = &log.read(*seq, 1).await.expect("read")[0];
        assert_eq!(
            entry.stored_hash().expect("hash"),
            *hash,
            "acknowledged seq {seq}"
        );
    }
}

#[tokio::test]
async fn embedded_acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8 path");
    let mut acked = append_then_kill(&["--data", path], 3000);
    // Twice, so the second run also recovers whatever tail the first kill left.
    acked.extend(append_then_kill(&["--data", path], 3000));
    let log = EmbeddedLog::open(dir.path())
        .await
        .expect("reopen after kill");
    assert!(log.damage().is_none(), "{:?}", log.damage());
    check_survivors(&log, &acked).await;
}

#[tokio::test]
async fn jetstream_acknowledged_appends_survive_kill_9() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let acked = append_then_kill(&["--nats", &url], 2000);
    let log = JetStreamLog::connect(JetStreamOptions {
        url,
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect");
    check_survivors(&log, &acked).await;
}

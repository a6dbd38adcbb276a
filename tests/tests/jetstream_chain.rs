//! The JetStream log never stores a broken chain and never acknowledges one: two processes
//! appending with pipelining against one real nats-server, the server-side atomicity of a
//! batch, and the checks made when the log opens.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use gantry_events::{EventLog, Hash, NewEvent, Source, verify_log};
use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
use gantry_tests::services::NatsServer;

fn appender(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_log-appender"))
        .args(["--nats", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start log-appender")
}

/// What one process was told is stored, filled as its `seq hash` lines come (read as they
/// come: a full pipe would stall the appender).
type Acks = Arc<Mutex<BTreeMap<u64, Hash>>>;

fn acknowledged(child: &mut Child) -> (Acks, std::thread::JoinHandle<()>) {
    let stdout = child.stdout.take().expect("stdout");
    let acks = Acks::default();
    let filled = acks.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((seq, hash)) = line.split_once(' ')
                && let (Ok(seq), Some(hash)) = (seq.parse::<u64>(), Hash::from_hex(hash))
            {
                let mut acks = filled.lock().unwrap_or_else(|e| e.into_inner());
                assert!(
                    acks.insert(seq, hash).is_none(),
                    "sequence {seq} acknowledged twice to one process"
                );
            }
        }
    });
    (acks, reader)
}

fn count(acks: &Acks) -> usize {
    acks.lock().unwrap_or_else(|e| e.into_inner()).len()
}

async fn open(url: &str) -> JetStreamLog {
    JetStreamLog::connect(JetStreamOptions {
        url: url.to_owned(),
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect")
}

/// Two processes, four pipelining writers each, one stream: the chain on the server verifies,
/// and every entry either process was told is stored is in it, at that sequence, with that
/// hash, and was acknowledged to one process only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_appending_with_pipelining_never_break_the_chain() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    // Create the stream first, so the two processes do not race to create it.
    let log = open(&url).await;
    let mut a = appender(&url);
    let mut b = appender(&url);
    let (acks_a, reader_a) = acknowledged(&mut a);
    let (acks_b, reader_b) = acknowledged(&mut b);
    // Until both have had many appends acknowledged while the other was appending too. Under
    // this much contention one process can hold the head for long stretches (it pipelines,
    // the other must read the head and try again), hence the generous deadline.
    let deadline = Instant::now() + Duration::from_secs(240);
    while count(&acks_a) < 300 || count(&acks_b) < 300 {
        assert!(
            Instant::now() < deadline,
            "after 240 s: a has {} acknowledged, b {} (one starves the other?)\n{}",
            count(&acks_a),
            count(&acks_b),
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for child in [&mut a, &mut b] {
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
    reader_a.join().expect("reader a");
    reader_b.join().expect("reader b");
    let acked_a = acks_a.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let acked_b = acks_b.lock().unwrap_or_else(|e| e.into_inner()).clone();

    let verified = verify_log(&log, 1, None)
        .await
        .expect("log answers")
        .unwrap_or_else(|broken| panic!("the chain on the server is broken: {broken}"));
    for (name, acked) in [("a", &acked_a), ("b", &acked_b)] {
        for (seq, hash) in acked {
            assert!(*seq <= verified.last_seq, "{name}: {seq} past the end");
            let entry = &log.read(*seq, 1).await.expect("read")[0];
            assert_eq!(
                entry.stored_hash().expect("hash"),
                *hash,
                "process {name} was told {seq} is stored with another hash"
            );
        }
    }
    for seq in acked_a.keys() {
        assert!(
            !acked_b.contains_key(seq),
            "sequence {seq} acknowledged to both processes"
        );
    }

    // `gantry log verify --nats` agrees.
    let out = Command::new(env!("CARGO_BIN_EXE_gantry-node"))
        .args(["log", "verify", "--nats", &url])
        .output()
        .expect("run gantry log verify");
    assert!(
        out.status.success(),
        "gantry log verify --nats failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn event(i: u32) -> NewEvent {
    NewEvent::new(
        Source::new("test", "test"),
        gantry_events::event::NodeLost {
            node_id: format!("n{i}"),
            reason: "atomicity test".into(),
        },
    )
}

/// The server applies an atomic batch whole or not at all: a batch whose expected last
/// sequence is stale stores nothing, not even its first messages.
#[tokio::test]
async fn a_batch_with_a_stale_expected_sequence_stores_nothing() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let log = open(&url).await;
    log.append((0..3).map(event).collect())
        .await
        .expect("append");
    let before = log.head().await.expect("head");
    assert_eq!(before.seq, 3);

    // A batch of three that claims the stream ends at 2 (it ends at 3).
    let client = async_nats::connect(&url).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let batch_id = uuid::Uuid::now_v7().simple().to_string();
    for i in 1..=3u32 {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", batch_id.as_str());
        headers.insert("Nats-Batch-Sequence", i.to_string().as_str());
        if i == 1 {
            headers.insert("Nats-Expected-Last-Sequence", "2");
        }
        let subject = "gantry.events.node.lost";
        let payload = bytes::Bytes::from(format!("stale {i}"));
        if i < 3 {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .expect("publish");
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            let ack = js
                .publish_with_headers(subject, headers, payload)
                .await
                .expect("send")
                .await;
            assert!(ack.is_err(), "a stale batch was acknowledged: {ack:?}");
        }
    }
    let after = log.head().await.expect("head");
    assert_eq!(after, before, "nothing of the stale batch is stored");
    assert!(
        verify_log(&log, 1, None)
            .await
            .expect("log answers")
            .is_ok()
    );
    // And gantry's own next batch lands after it, whole.
    let appended = log
        .append((3..6).map(event).collect())
        .await
        .expect("append");
    assert_eq!(
        appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
        [4, 5, 6]
    );
}

/// A stream made without atomic batches is refused when the log opens, naming the setting.
#[tokio::test]
async fn a_stream_without_atomic_batches_is_refused() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "GANTRY_EVENTS".into(),
        subjects: vec!["gantry.events.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let opened = JetStreamLog::connect(JetStreamOptions {
        url,
        ..JetStreamOptions::default()
    })
    .await;
    let Err(error) = opened else {
        panic!("a stream without allow_atomic must be refused");
    };
    let message = error.to_string();
    assert!(message.contains("allow_atomic"), "{message}");
}

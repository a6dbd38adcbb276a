//! Event log benchmarks. Every figure is printed next to a baseline measured in the same run:
//!
//! 1. chained appends/s vs the same backend storing the same bytes without chaining
//!    (embedded: raw frames + fdatasync per batch, and sled batch insert + flush; JetStream:
//!    plain async publishes with pipelined acks);
//! 2. embedded durable appends/s with group commit from 16 concurrent writers;
//! 3. `verify` rate on one core.
//!
//! Run: `cargo bench -p gantry-tests --bench log` (needs `nats-server` on PATH for the
//! JetStream part; it is skipped with a notice otherwise). `GANTRY_BENCH_SCALE=0.1` shrinks it.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::try_join_all;
use gantry_events::event::NodeLost;
use gantry_events::{EmbeddedLog, Entry, EventLog, Hash, NewEvent, Source, Verifier, seal};
use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
use gantry_tests::services::NatsServer;

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1000)
}

fn event(i: usize) -> NewEvent {
    NewEvent::new(
        Source::new("bench-node", "bench"),
        NodeLost {
            node_id: format!("node-{i:08}"),
            reason: "benchmark".into(),
        },
    )
}

fn sealed_chain(n: usize) -> Vec<Entry> {
    let mut prev = Hash::GENESIS;
    (0..n)
        .map(|i| {
            let (entry, hash) = seal(i as u64 + 1, &prev, &event(i)).expect("seal");
            prev = hash;
            entry
        })
        .collect()
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn row(name: &str, n: usize, elapsed: Duration) -> f64 {
    let r = rate(n, elapsed);
    println!(
        "  {name:<58} {n:>9} events {:>9.1} ms {r:>12.0} /s",
        elapsed.as_secs_f64() * 1e3
    );
    r
}

fn ratio(name: &str, value: f64, baseline: f64, target: f64) {
    let x = value / baseline;
    let verdict = if x >= target { "meets" } else { "BELOW" };
    println!("  => {name}: {x:.2}x (target >= {target}x: {verdict})");
}

async fn embedded_chained(n: usize, batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path()).await.expect("open");
    let events = batches(n, batch);
    let start = Instant::now();
    for b in events {
        log.append(b).await.expect("append");
    }
    let elapsed = start.elapsed();
    log.close().await.expect("close");
    elapsed
}

/// The same events encoded into the same envelope and framed the same way, one `pwrite` +
/// `fdatasync` per batch, but not chained: no previous hash looked up, no SHA-256 computed.
fn unchained(n: usize, batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::create(dir.path().join("unchained.log")).expect("create");
    let batches = batches(n, batch);
    let mut end = 0u64;
    let mut buf = Vec::new();
    let mut seq = 0;
    let start = Instant::now();
    for b in batches {
        buf.clear();
        for e in &b {
            seq += 1;
            let frame = buf.len();
            buf.extend_from_slice(&[0; 5]);
            gantry_events::record::encode_record(&mut buf, seq, &Hash::GENESIS, e).expect("encode");
            let len = (buf.len() - frame - 5) as u32;
            buf[frame..frame + 4].copy_from_slice(&len.to_le_bytes());
            buf[frame + 4] = 1;
        }
        file.write_all_at(&buf, end).expect("write");
        file.sync_data().expect("sync");
        end += buf.len() as u64;
        // Dropped inside the timing, as the log drops the batches it was given.
        drop(b);
    }
    start.elapsed()
}

fn batches(n: usize, batch: usize) -> Vec<Vec<NewEvent>> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| c.iter().map(|&i| event(i)).collect())
        .collect()
}

/// Already-sealed bytes, framed, one `pwrite` + `fdatasync` per batch: the IO floor.
fn raw_frames(entries: &[Entry], batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw.log"))
        .expect("open");
    let mut end = 0u64;
    let mut buf = Vec::new();
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        buf.clear();
        for e in chunk {
            gantry_events::file::write_frame(&mut buf, &e.bytes, 1);
        }
        file.write_all_at(&buf, end).expect("write");
        file.sync_data().expect("sync");
        end += buf.len() as u64;
    }
    start.elapsed()
}

fn sled_batches(entries: &[Entry], batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path()).expect("sled");
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        let mut b = sled::Batch::default();
        for e in chunk {
            b.insert(&e.seq.to_be_bytes(), e.bytes.as_ref());
        }
        db.apply_batch(b).expect("batch");
        db.flush().expect("flush");
    }
    start.elapsed()
}

async fn group_commit(writers: usize, per_writer: usize, in_flight: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(EmbeddedLog::open(dir.path()).await.expect("open"));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                // Each writer keeps `in_flight` single-event appends outstanding.
                for round in 0..per_writer / in_flight {
                    let appends = (0..in_flight)
                        .map(|k| log.append(vec![event(w * per_writer + round * in_flight + k)]));
                    try_join_all(appends).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    start.elapsed()
}

fn verify_rate(entries: &[Entry], payloads: bool) -> Duration {
    let start = Instant::now();
    let mut v = Verifier::from_genesis().check_payloads(payloads);
    for e in entries {
        v.push(e).expect("sound chain");
    }
    let verified = v.finish().expect("sound");
    assert_eq!(verified.count as usize, entries.len());
    start.elapsed()
}

async fn jetstream(n: usize, batch: usize) {
    let Some(server) = NatsServer::start() else {
        println!("  (JetStream part skipped: no nats-server)");
        return;
    };
    let log = JetStreamLog::connect(JetStreamOptions {
        url: server.url(),
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect");
    let entries = sealed_chain(n);

    // Baseline: the same payloads, published into a plain stream, acks pipelined.
    let client = log.client().clone();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            acks.push(
                js.publish("raw.node.lost", Bytes::clone(&e.bytes))
                    .await
                    .expect("publish"),
            );
        }
        try_join_all(acks.into_iter().map(|a| a.into_future()))
            .await
            .expect("acks");
    }
    let raw = row(
        "JetStream async publish, same bytes, no chain (baseline)",
        n,
        start.elapsed(),
    );

    // The same atomic-batch protocol with the same bytes, but nothing sealed or hashed: what
    // JetStream itself costs for all-or-nothing batches.
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RAW_ATOMIC".into(),
        subjects: vec!["rawatomic.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .expect("atomic stream");
    let start = Instant::now();
    for (k, chunk) in entries.chunks(batch).enumerate() {
        let id = format!("b{k}");
        for (i, e) in chunk.iter().enumerate() {
            // Every header gantry sends but the chain's own (expected last sequence).
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i + 1 < chunk.len() {
                log.client()
                    .publish_with_headers("rawatomic.node.lost", headers, Bytes::clone(&e.bytes))
                    .await
                    .expect("publish");
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                js.publish_with_headers("rawatomic.node.lost", headers, Bytes::clone(&e.bytes))
                    .await
                    .expect("publish")
                    .await
                    .expect("commit");
            }
        }
    }
    let atomic = row(
        "JetStream atomic batches + msg ids, same bytes, no chain (baseline)",
        n,
        start.elapsed(),
    );

    let log = Arc::new(log);
    for appenders in [1usize, 4] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|a| {
                let log = log.clone();
                let mine: Vec<usize> = (0..n).filter(|i| i % appenders == a).collect();
                tokio::spawn(async move {
                    for chunk in mine.chunks(batch) {
                        let b = chunk.iter().map(|&i| event(i)).collect();
                        log.append(b).await.expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("appender");
        }
        let chained = row(
            &format!("JetStream chained, batches of {batch}, {appenders} appender(s)"),
            n,
            start.elapsed(),
        );
        ratio(
            &format!("JetStream chained ({appenders} appender(s)) vs plain publish"),
            chained,
            raw,
            0.8,
        );
        ratio(
            &format!("JetStream chained ({appenders} appender(s)) vs unchained atomic batches"),
            chained,
            atomic,
            0.8,
        );
    }

    let single = scale(5_000).min(n);
    let start = Instant::now();
    for i in 0..single {
        log.append(vec![event(i)]).await.expect("append");
    }
    row(
        "JetStream chained append, one event per append",
        single,
        start.elapsed(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = scale(200_000);
    let batch = 1000;
    println!(
        "gantry event log benchmarks ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    println!(
        "\n1. embedded: chained appends vs the same bytes unchained (batches of {batch}, fdatasync per batch)"
    );
    let entries = sealed_chain(n);
    row(
        "pre-sealed bytes + fdatasync (IO floor, for reference)",
        n,
        raw_frames(&entries, batch),
    );
    let sled = row(
        "sled batch insert of the sealed bytes + flush (baseline)",
        n,
        sled_batches(&entries, batch),
    );
    let plain = row(
        "same envelope encoded + framed + fdatasync, unchained (baseline)",
        n,
        unchained(n, batch),
    );
    let chained = row(
        "embedded chained append",
        n,
        embedded_chained(n, batch).await,
    );
    ratio(
        "embedded chained vs unchained, same backend",
        chained,
        plain,
        0.8,
    );
    ratio("embedded chained vs sled batch insert", chained, sled, 0.8);

    println!("\n2. embedded group commit: 16 concurrent writers, single-event appends");
    let per_writer = scale(10_000);
    let one = row(
        "16 writers x 1 append in flight",
        16 * per_writer,
        group_commit(16, per_writer, 1).await,
    );
    let many = row(
        "16 writers x 32 appends in flight",
        16 * per_writer,
        group_commit(16, per_writer, 32).await,
    );
    let serial = row(
        "1 writer x 1 append in flight (no grouping possible)",
        scale(5_000),
        group_commit(1, scale(5_000), 1).await,
    );
    println!(
        "  => group commit speed-up over one writer: {:.1}x / {:.1}x (target >= 50,000 /s)",
        one / serial,
        many / serial
    );

    println!("\n3. verify on one core");
    let big = sealed_chain(scale(1_000_000));
    let mut hashed = 0usize;
    let start = Instant::now();
    for e in &big {
        hashed ^= Hash::of(&e.bytes).0[0] as usize;
    }
    std::hint::black_box(hashed);
    let sha = row(
        "SHA-256 of every entry alone (baseline)",
        big.len(),
        start.elapsed(),
    );
    let full = row(
        "verify: links, hashes and typed payload decode",
        big.len(),
        verify_rate(&big, true),
    );
    let chain_only = row(
        "verify: links and hashes only",
        big.len(),
        verify_rate(&big, false),
    );
    println!(
        "  => verify vs bare hashing: {:.2}x / {:.2}x (target >= 1,000,000 /s)",
        full / sha,
        chain_only / sha
    );

    println!("\n4. JetStream");
    jetstream(scale(100_000), batch).await;
    std::io::stdout().flush().ok();
}

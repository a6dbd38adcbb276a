//! `gantry log …` against both backends, run in-process, and offline verification of exports.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use gantry_events::{EmbeddedLog, EventLog, NewEvent, Source};
use gantry_nodes::cli::{self, Cli, EXIT_BROKEN};
use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
use gantry_tests::conformance::event;
use gantry_tests::services::NatsServer;

/// Runs `gantry <args>` in-process; returns the exit code and what it printed.
async fn gantry(args: &[&str]) -> (ExitCode, String) {
    let cli = Cli::try_parse_from(std::iter::once("gantry").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("arguments {args:?}: {e}"));
    let mut out = Vec::new();
    let code = cli::run(cli, &mut out)
        .await
        .unwrap_or_else(|e| panic!("gantry {args:?} failed: {e}"));
    (code, String::from_utf8(out).expect("utf-8 output"))
}

async fn fill(log: &dyn EventLog, n: usize) {
    for start in (0..n).step_by(10) {
        log.append((start..n.min(start + 10)).map(|i| event(0, i)).collect())
            .await
            .expect("append");
    }
}

fn flip_byte_of_frame(path: &Path, seq: u64) {
    use gantry_events::file::{FRAME_OVERHEAD, FrameReader, HEADER_LEN, Header};
    let mut bytes = std::fs::read(path).expect("read");
    let header = Header::decode(&bytes).expect("header");
    let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
    let mut at = None;
    let mut n = header.first_seq;
    while let Some(frame) = frames.next_frame().expect("io") {
        if n == seq {
            at = Some(frame.offset as usize + FRAME_OVERHEAD + frame.entry.len() / 3);
        }
        n += 1;
    }
    let at = at.expect("frame present");
    bytes[at] ^= 0x04;
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test]
async fn embedded_verify_export_and_offline_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let log = EmbeddedLog::open(data).await.expect("open");
    fill(&log, 100).await;
    log.close().await.expect("close");

    let (code, out) = gantry(&["log", "status", "--data", data]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("chain     ok: 100 events verified"), "{out}");

    let (code, out) = gantry(&["log", "verify", "--data", data]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.starts_with("ok: 100 events verified (sequences 1..=100)"),
        "{out}"
    );
    let head = out.trim().rsplit(' ').next().expect("head hash").to_owned();

    let export = dir.path().join("export.glog");
    let export = export.to_str().expect("utf-8");
    let (code, out) = gantry(&["log", "export", "--data", data, "--out", export]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.starts_with("exported 100 events"), "{out}");

    let (code, out) = gantry(&["log", "verify", "--file", export]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains(&head),
        "offline check ends at the same head: {out}"
    );

    // A partial export verifies on its own, anchored in its header.
    let tail = dir.path().join("tail.glog");
    let tail = tail.to_str().expect("utf-8");
    gantry(&[
        "log", "export", "--data", data, "--out", tail, "--from", "60",
    ])
    .await;
    let (code, out) = gantry(&["log", "verify", "--file", tail, "--json"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["count"], 41);
    assert_eq!(json["first_seq"], 60);
    assert_eq!(json["head"].as_str(), Some(head.as_str()));
    // Its anchor is the file's own claim until checked against a hash from a trusted log: an
    // invented one (a forged header) is named.
    let (code, out) = gantry(&["log", "verify", "--file", tail]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("is the file's own claim"), "{out}");
    let (_, out) = gantry(&["log", "verify", "--data", data, "--to", "59", "--json"]).await;
    let entry_59: serde_json::Value = serde_json::from_str(&out).expect("json");
    let entry_59 = entry_59["head"].as_str().expect("hash").to_owned();
    let (code, out) = gantry(&["log", "verify", "--file", tail, "--anchor", &entry_59]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(!out.contains("own claim"), "{out}");
    let invented = "11".repeat(32);
    let (code, out) = gantry(&["log", "verify", "--file", tail, "--anchor", &invented]).await;
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.starts_with("ANCHOR NOT MET"), "{out}");

    // Tampering with the export is found offline, at the right sequence.
    flip_byte_of_frame(Path::new(export), 37);
    let (code, out) = gantry(&["log", "verify", "--file", export]).await;
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.starts_with("BROKEN at sequence 37:"), "{out}");
    // Checking only the stretch before it passes.
    let (code, _) = gantry(&["log", "verify", "--file", export, "--to", "36"]).await;
    assert_eq!(code, ExitCode::SUCCESS);

    // And tampering with the store itself.
    flip_byte_of_frame(&Path::new(data).join("events.log"), 12);
    let (code, out) = gantry(&["log", "verify", "--data", data]).await;
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.starts_with("BROKEN at sequence 12:"), "{out}");
}

#[tokio::test]
async fn tail_prints_events_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let log = EmbeddedLog::open(data).await.expect("open");
    fill(&log, 20).await;
    log.close().await.expect("close");
    let (code, out) = gantry(&["log", "tail", "--data", data, "--from", "15", "--json"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs, (15..=20).collect::<Vec<_>>());
    let (_, human) = gantry(&["log", "tail", "--data", data, "--from", "20"]).await;
    assert!(
        human.contains("node.lost") && human.contains("writer-0/conformance"),
        "{human}"
    );
}

#[tokio::test]
async fn jetstream_verify_names_a_message_that_bypassed_the_chain() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let log = JetStreamLog::connect(JetStreamOptions {
        url: url.clone(),
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect");
    fill(&log, 30).await;

    let (code, out) = gantry(&["log", "verify", "--nats", &url]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.starts_with("ok: 30 events verified"), "{out}");

    let export = tempfile::NamedTempFile::new().expect("temp file");
    let export = export.path().to_str().expect("utf-8");
    let (code, _) = gantry(&["log", "export", "--nats", &url, "--out", export]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let (code, out) = gantry(&["log", "verify", "--file", export]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");

    // A well-formed gantry record, sealed after the wrong head and published around gantry.
    let forged = NewEvent::new(Source::new("intruder", "none"), event(7, 0).event);
    let (entry, _) =
        gantry_events::seal(31, &gantry_events::Hash::of(b"wrong"), &forged).expect("seal");
    let js = async_nats::jetstream::new(log.client().clone());
    js.publish("gantry.events.node.lost", entry.bytes.clone())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let (code, out) = gantry(&["log", "verify", "--nats", &url]).await;
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(
        out.starts_with("BROKEN at sequence 31: broken link"),
        "{out}"
    );
    // gantry refuses to build on top of it.
    let fresh = JetStreamLog::connect(JetStreamOptions {
        url,
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect");
    assert!(matches!(
        fresh.append(vec![event(0, 99)]).await,
        Err(gantry_events::Error::Broken { seq: 31, .. })
    ));
}

/// `gantry log verify` of the store in `data` against the signed checkpoint in `checkpoint`.
async fn verify_against(data: &str, checkpoint: &str, key: &str) -> (ExitCode, String) {
    gantry(&[
        "log",
        "verify",
        "--data",
        data,
        "--checkpoint",
        checkpoint,
        "--key",
        key,
    ])
    .await
}

/// A signed checkpoint catches what the chain alone cannot — a cut tail and a history
/// rewritten with fresh hashes — and a checkpoint whose signature fails, or that another key
/// signed, is refused; each named.
#[tokio::test]
async fn verify_against_a_signed_checkpoint_catches_a_cut_tail_and_a_rewrite() {
    use gantry_events::checkpoint::{Checkpoint, NoteSigner};
    use gantry_events::file::{Format, FrameReader, HEADER_LEN};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = EmbeddedLog::open(&data).await.expect("open");
    // One event per append: every frame ends its batch, so any frame boundary is a clean end.
    for i in 0..10 {
        log.append(vec![event(0, i)]).await.expect("append");
    }
    let mut tree = gantry_events::merkle::MerkleTree::new();
    for entry in log.read(1, 10).await.expect("read") {
        tree.push(&entry.stored_hash().expect("hash"));
    }
    log.close().await.expect("close");
    let signer = NoteSigner::new("gantry-test", &[3; 32]).expect("signer");
    let key = signer.verifier_key();
    let promised = Checkpoint {
        origin: "gantry/cli-test".into(),
        size: 10,
        root: tree.root(),
        extensions: Vec::new(),
    };
    let note = signer.sign(&promised);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8").to_owned()
    };
    let good = write("checkpoint", &note);
    let data = data.to_str().expect("utf-8").to_owned();
    let broken = ExitCode::from(EXIT_BROKEN);

    let (code, out) = verify_against(&data, &good, &key).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("checkpoint ok"), "{out}");

    // A forged size under the real signature; a checkpoint another key signed.
    let forged = write("forged", &note.replacen("\n10\n", "\n9\n", 1));
    let (code, out) = verify_against(&data, &forged, &key).await;
    assert_eq!(code, broken, "{out}");
    assert!(
        out.contains("CHECKPOINT NOT MET") && out.contains("signature"),
        "{out}"
    );
    let other_key = NoteSigner::new("gantry-test", &[4; 32]).expect("signer");
    let foreign = write("foreign", &other_key.sign(&promised));
    let (code, out) = verify_against(&data, &foreign, &key).await;
    assert_eq!(code, broken, "{out}");
    assert!(out.contains("no signature by key gantry-test"), "{out}");

    // The tail cut after entry 7: the chain alone still holds; the checkpoint does not.
    let path = Path::new(&data).join(gantry_events::embedded::LOG_FILE);
    let bytes = std::fs::read(&path).expect("read");
    let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
    let mut end = 0;
    for _ in 0..7 {
        end = frames
            .next_frame()
            .expect("io")
            .expect("frame")
            .end(Format::CURRENT);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(end)
        .expect("cut");
    let (code, out) = gantry(&["log", "verify", "--data", &data]).await;
    assert_eq!(
        code,
        ExitCode::SUCCESS,
        "the chain alone cannot see a cut tail: {out}"
    );
    let (code, out) = verify_against(&data, &good, &key).await;
    assert_eq!(code, broken, "{out}");
    assert!(
        out.contains("ends at sequence 7") && out.contains("cut"),
        "{out}"
    );

    // A whole history of the same length written again with fresh hashes: a sound chain.
    let rewritten = dir.path().join("rewritten");
    let log = EmbeddedLog::open(&rewritten).await.expect("open");
    for i in 0..10 {
        log.append(vec![event(1, i)]).await.expect("append");
    }
    log.close().await.expect("close");
    let rewritten = rewritten.to_str().expect("utf-8");
    let (code, out) = gantry(&["log", "verify", "--data", rewritten]).await;
    assert_eq!(
        code,
        ExitCode::SUCCESS,
        "the chain alone cannot see a rewrite: {out}"
    );
    let (code, out) = verify_against(rewritten, &good, &key).await;
    assert_eq!(code, broken, "{out}");
    assert!(out.contains("rewritten"), "{out}");
}

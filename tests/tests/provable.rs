//! Provable history on a running gantry: the Auditor signs checkpoints of the log's Merkle
//! root and publishes them to a file outside the data dir; the gateway serves them and proofs,
//! which are checked here by a separate RFC 6962 implementation and a separate Ed25519 check;
//! a receipt verifies offline with the public key alone; `gantry audit watch` names a rollback
//! and a split view; and at a restart a cut tail or a rewritten history is caught against the
//! published checkpoint, and stops appends.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use gantry_events::file::{FLAG_BATCH_END, Format, FrameReader, HEADER_LEN};
use gantry_events::{EmbeddedLog, EventLog, NewEvent};
use gantry_nodes::audit::AuditOptions;
use gantry_nodes::cli::{self, Cli, EXIT_BROKEN};
use gantry_tests::system::{Gantry, raw_http, test_audit};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Runs `gantry <args>` in-process, in its own actix System.
fn gantry_cli(args: &[&str]) -> (ExitCode, String) {
    let cli = Cli::try_parse_from(std::iter::once("gantry").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("arguments {args:?}: {e}"));
    let mut out = Vec::new();
    let code = actix_rt::System::new()
        .block_on(cli::run(cli, &mut out))
        .unwrap_or_else(|e| panic!("gantry {args:?} failed: {e}"));
    (code, String::from_utf8(out).expect("utf-8 output"))
}

// ---- An RFC 6962 verifier and a signed-note reader written apart from gantry's ----

type H = [u8; 32];

fn sha(parts: &[&[u8]]) -> H {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn leaf(entry_hash: &H) -> H {
    sha(&[&[0], entry_hash])
}

fn node(l: &H, r: &H) -> H {
    sha(&[&[1], l, r])
}

fn largest_power_of_two_below(n: u64) -> u64 {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root PATH(m, D[n]) leads to from `leaf` (RFC 6962 §2.1.1, read backwards: the path's
/// last hash is the sibling nearest the root).
fn climb(leaf: H, m: u64, n: u64, path: &[H]) -> Option<H> {
    if n == 1 {
        return path.is_empty().then_some(leaf);
    }
    let k = largest_power_of_two_below(n);
    let (sibling, rest) = path.split_last()?;
    Some(if m < k {
        node(&climb(leaf, m, k, rest)?, sibling)
    } else {
        node(sibling, &climb(leaf, m - k, n - k, rest)?)
    })
}

/// The (old, new) roots SUBPROOF(m, D[n], b) leads to (RFC 6962 §2.1.2, read backwards).
fn subproof(m: u64, n: u64, whole: bool, proof: &[H], old_root: &H) -> Option<(H, H)> {
    if m == n {
        return if whole {
            proof.is_empty().then_some((*old_root, *old_root))
        } else {
            (proof.len() == 1).then(|| (proof[0], proof[0]))
        };
    }
    let k = largest_power_of_two_below(n);
    let (last, rest) = proof.split_last()?;
    if m <= k {
        let (old, new) = subproof(m, k, whole, rest, old_root)?;
        Some((old, node(&new, last)))
    } else {
        let (old, new) = subproof(m - k, n - k, false, rest, old_root)?;
        Some((node(last, &old), node(last, &new)))
    }
}

fn hex32(value: &Value) -> H {
    hex::decode(value.as_str().expect("hex string"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn path_of(value: &Value) -> Vec<H> {
    value.as_array().expect("proof").iter().map(hex32).collect()
}

/// A signed note's (origin, size, root), its Ed25519 signature checked with the verifier key
/// `name+id+base64(0x01 ‖ key)`.
fn open_note(note: &str, verifier_key: &str) -> (String, u64, H) {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let parts: Vec<&str> = verifier_key.splitn(3, '+').collect();
    let raw = STANDARD.decode(parts[2]).expect("key base64");
    assert_eq!(raw[0], 1, "Ed25519");
    let key = VerifyingKey::from_bytes(&raw[1..].try_into().expect("32")).expect("key");
    let (body, signatures) = note.split_once("\n\n").expect("blank line");
    let signed = format!("{body}\n");
    let line = signatures
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {} ", parts[0])))
        .expect("a signature by the key's name");
    let sig = STANDARD
        .decode(line.rsplit(' ').next().expect("sig"))
        .expect("sig base64");
    assert_eq!(hex::encode(&sig[..4]), parts[1], "key id");
    let signature = Signature::from_bytes(&sig[4..].try_into().expect("64"));
    key.verify(signed.as_bytes(), &signature)
        .expect("the note is signed by the Auditor's key");
    let lines: Vec<&str> = body.lines().collect();
    let root = STANDARD.decode(lines[2]).expect("root base64");
    (
        lines[0].to_owned(),
        lines[1].parse().expect("size"),
        root.try_into().expect("32"),
    )
}

// ---- helpers ----

fn audit_options(dir: &Path) -> AuditOptions {
    AuditOptions {
        audit_key_file: Some(dir.join("keys/audit.key")),
        checkpoint_file: Some(dir.join("published/checkpoint")),
        checkpoint_every: Duration::from_millis(300),
        ..test_audit()
    }
}

/// The sequence of a job's last event. (Not the log's head: the Auditor's own checkpoint
/// event may be the head, and it never checkpoints only that.)
fn last_seq_of(gantry: &Gantry, job: &str) -> u64 {
    gantry
        .events()
        .iter()
        .filter(|e| e["event"]["job_id"] == job)
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .expect("the job's events")
}

/// The latest signed note, once it covers `at_least` entries (30 s at most).
fn signed_note(gantry: &Gantry, at_least: u64, key: &str) -> (String, u64, H) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(raw) = gantry.client.get_raw("/v1/audit/checkpoint") {
            let note = String::from_utf8(raw).expect("utf-8");
            let (_, size, root) = open_note(&note, key);
            if size >= at_least {
                return (note, size, root);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {at_least} entries"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (30 s at most) for the Auditor to report a broken chain whose detail contains
/// `words`, then checks that a submission is refused because appends stopped.
fn appends_stop_naming(gantry: &Gantry, words: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // 503 while not ready (the views a moment behind, or the chain broken): read it all.
        let (_, _, ready) = raw_http(gantry.addr, "GET", "/readyz", &[], b"");
        let audit = &ready["health"]["audit"];
        if audit["ok"] == false {
            let detail = audit["detail"].as_str().unwrap_or("");
            for word in words {
                assert!(detail.contains(word), "{word:?} in {detail}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the auditor never noticed: {ready}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = gantry
        .try_submit(&json!({ "name": "after", "image": "busybox", "command": ["true"] }))
        .expect_err("appends stopped");
    assert!(refused.to_string().contains("appends stopped"), "{refused}");
}

#[test]
fn signed_checkpoints_prove_entries_and_catch_a_cut_tail_or_a_rewrite_at_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let audit = audit_options(dir.path());
    let key_file = dir.path().join("keys/audit.key");
    let (code, key) = gantry_cli(&[
        "audit",
        "key",
        "--audit-key-file",
        key_file.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let key = key.trim().to_owned();
    assert!(key.starts_with("gantry+"), "{key}");

    let mut gantry = Gantry::start_with_audit(&data, audit.clone());
    let first = gantry.submit(json!({ "name": "a", "image": "busybox", "command": ["echo", "a"] }));
    gantry.wait_for(&first, &["succeeded"], Duration::from_secs(30));
    let (old_note, old_size, old_root) = signed_note(&gantry, last_seq_of(&gantry, &first), &key);
    assert_eq!(open_note(&old_note, &key).0, "gantry");
    // The same note was published to the file outside the data dir.
    let published = dir.path().join("published/checkpoint");
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_note(
        &std::fs::read_to_string(&published).unwrap_or_default(),
        &key,
    )
    .1 < old_size
    {
        assert!(
            Instant::now() < deadline,
            "the checkpoint file was not written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every entry's inclusion proof, checked apart from gantry's verifier.
    let events = gantry.events();
    for seq in 1..=old_size {
        let proof = gantry
            .client
            .get(&format!(
                "/v1/audit/proof/inclusion?seq={seq}&size={old_size}"
            ))
            .expect("inclusion proof");
        let entry_hash = hex32(&proof["entry_hash"]);
        assert_eq!(
            entry_hash,
            hex32(&events[seq as usize - 1]["hash"]),
            "the proof is about entry {seq}"
        );
        assert_eq!(
            climb(
                leaf(&entry_hash),
                seq - 1,
                old_size,
                &path_of(&proof["proof"])
            ),
            Some(old_root),
            "entry {seq}: {proof}"
        );
        // Another entry's hash does not climb to the root.
        let mut other = entry_hash;
        other[0] ^= 1;
        assert_ne!(
            climb(leaf(&other), seq - 1, old_size, &path_of(&proof["proof"])),
            Some(old_root)
        );
    }
    // A proof past the log, or of nothing, is refused with its field named.
    let refused = gantry
        .client
        .get("/v1/audit/proof/inclusion?seq=0&size=1")
        .expect_err("seq 0");
    assert!(refused.to_string().contains("out_of_range"), "{refused}");

    // The watcher saves what it saw; more history later extends it consistently.
    let state = dir.path().join("watch.state");
    let server = format!("http://{}", gantry.addr);
    let watch = |state: &Path| {
        gantry_cli(&[
            "audit",
            "watch",
            "--once",
            "--server",
            &server,
            "--key",
            &key,
            "--state",
            state.to_str().expect("utf-8"),
        ])
    };
    let (code, out) = watch(&state);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let second =
        gantry.submit(json!({ "name": "b", "image": "busybox", "command": ["echo", "b"] }));
    gantry.wait_for(&second, &["succeeded"], Duration::from_secs(30));
    let (new_note, new_size, new_root) = signed_note(&gantry, last_seq_of(&gantry, &second), &key);
    assert!(new_size > old_size);
    let proof = gantry
        .client
        .get(&format!(
            "/v1/audit/proof/consistency?from={old_size}&to={new_size}"
        ))
        .expect("consistency proof");
    assert_eq!(
        subproof(
            old_size,
            new_size,
            true,
            &path_of(&proof["proof"]),
            &old_root
        ),
        Some((old_root, new_root)),
        "{proof}"
    );
    // The proof checks offline against the checkpoint kept earlier; one that starts from the
    // empty log (which every history extends) does not stand in for it.
    let old_file = dir.path().join("old.note");
    std::fs::write(&old_file, &old_note).expect("write");
    let verify_proof = |proof: &Value| {
        let file = dir.path().join("proof.json");
        std::fs::write(&file, proof.to_string()).expect("write");
        gantry_cli(&[
            "audit",
            "verify-proof",
            file.to_str().expect("utf-8"),
            "--key",
            &key,
            "--from-checkpoint",
            old_file.to_str().expect("utf-8"),
        ])
    };
    let mut signed = proof.clone();
    signed["to_checkpoint"] = json!(new_note);
    let (code, out) = verify_proof(&signed);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let from_nothing = json!({
        "from": 0, "to": new_size,
        "from_root": hex::encode(Sha256::digest([])), "to_root": proof["to_root"],
        "proof": [], "from_checkpoint": null, "to_checkpoint": new_note,
    });
    let (code, out) = verify_proof(&from_nothing);
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(
        out.contains(&format!("not the trusted one of {old_size}")),
        "{out}"
    );
    let (code, out) = watch(&state);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains(&format!("extends the one of {old_size} entries")),
        "{out}"
    );

    // A watcher that saw a longer log, or another root for this size (both signed with the
    // Auditor's own key, as a compromised server would), names a rollback and a split view.
    let signer = audit.signer().expect("signer");
    let forge = |size: u64, root: [u8; 32]| {
        signer.sign(&gantry_events::checkpoint::Checkpoint {
            origin: "gantry".into(),
            size,
            root: gantry_events::Hash(root),
            extensions: Vec::new(),
        })
    };
    let forged_state = dir.path().join("forged.state");
    std::fs::write(&forged_state, forge(new_size + 10, [7; 32])).expect("write");
    let (code, out) = watch(&forged_state);
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.contains("rollback"), "{out}");
    let latest = open_note(
        &String::from_utf8(gantry.client.get_raw("/v1/audit/checkpoint").expect("note"))
            .expect("utf-8"),
        &key,
    );
    std::fs::write(&forged_state, forge(latest.1, [7; 32])).expect("write");
    let (code, out) = watch(&forged_state);
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.contains("split view"), "{out}");

    // A receipt checks offline with the key alone; an edited one does not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let receipt = loop {
        let receipt = gantry
            .client
            .get(&format!("/v1/jobs/{first}/receipt"))
            .expect("receipt");
        if receipt["checkpoint"].is_string() {
            break receipt;
        }
        assert!(Instant::now() < deadline, "no proofs in {receipt}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let saved = dir.path().join("receipt.json");
    std::fs::write(&saved, receipt.to_string()).expect("write");
    let offline = |file: &Path| {
        gantry_cli(&[
            "receipt",
            &first,
            "--verify",
            "--offline",
            "--key",
            &key,
            "--file",
            file.to_str().expect("utf-8"),
            "--server",
            "http://127.0.0.1:9",
        ])
    };
    let (code, out) = offline(&saved);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("verified offline"), "{out}");
    let mut edited = receipt.clone();
    let facts = edited["facts"].as_array_mut().expect("facts");
    let succeeded = facts
        .iter_mut()
        .find(|f| f["type"] == "job.succeeded")
        .expect("succeeded fact");
    succeeded["fact"]["duration_ms"] = json!(1);
    std::fs::write(&saved, edited.to_string()).expect("write");
    let (code, out) = offline(&saved);
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.contains("states something its entry does not"), "{out}");
    gantry.stop();

    // A restart on the same log meets the published checkpoint; appends wait until it is
    // checked (503 "appends held"), then go on.
    let mut gantry = Gantry::start_with_audit(&data, audit.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let third = loop {
        match gantry.try_submit(&json!({ "name": "c", "image": "busybox", "command": ["true"] })) {
            Ok(reply) => break reply["id"].as_str().expect("id").to_owned(),
            Err(error) => {
                assert!(error.to_string().contains("appends held"), "{error}");
                assert!(Instant::now() < deadline, "appends still held: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    gantry.wait_for(&third, &["succeeded"], Duration::from_secs(30));
    let (_, published_after, _) = signed_note(&gantry, last_seq_of(&gantry, &third), &key);
    assert!(published_after > new_size);
    gantry.stop();

    // The same history written again with fresh hashes (the same events, appended anew: a
    // sound chain, as an attacker with the store would write it), kept for later.
    let published_size = open_note(&std::fs::read_to_string(&published).expect("file"), &key).1;
    let rewritten = dir.path().join("rewritten");
    actix_rt::System::new().block_on(async {
        let log = EmbeddedLog::open(&data).await.expect("open");
        let head = log.head().await.expect("head").seq;
        let entries = log.read(1, head as usize).await.expect("read");
        log.close().await.expect("close");
        let copy = EmbeddedLog::open(&rewritten).await.expect("open");
        for entry in entries {
            let envelope = entry.open().expect("decodes");
            copy.append(vec![NewEvent::new(envelope.source, envelope.event)])
                .await
                .expect("append");
        }
        copy.close().await.expect("close");
    });

    // The tail cut well below the published checkpoint, at a batch boundary (the chain alone
    // still holds): at restart the Auditor names the cut and appends stop.
    let path = data.join(gantry_events::embedded::LOG_FILE);
    let original = std::fs::read(&path).expect("read");
    let mut frames = FrameReader::new(&original[HEADER_LEN..], HEADER_LEN as u64);
    let (mut end, mut count) = (HEADER_LEN as u64, 0u64);
    while let Some(frame) = frames.next_frame().expect("io") {
        count += 1;
        if count > published_size / 2 {
            break;
        }
        if frame.flags & FLAG_BATCH_END != 0 {
            end = frame.end(Format::CURRENT);
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(end)
        .expect("cut");
    let mut gantry = Gantry::start_with_audit(&data, audit.clone());
    appends_stop_naming(
        &gantry,
        &["cut", &format!("covers {published_size} entries")],
    );
    gantry.stop();

    // The rewritten history: the root at the published size is not the signed one.
    let mut gantry = Gantry::start_with_audit(&rewritten, audit);
    appends_stop_naming(&gantry, &["rewritten", "Merkle root"]);
    gantry.stop();
}

/// Runs `f` in a fresh actix System on its own thread: every actor it starts stops with it.
fn in_system<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || actix_rt::System::new().block_on(f()))
        .join()
        .expect("system thread")
}

/// Replaces the JetStream event stream with `count` fresh events of writer `writer` (as an
/// attacker with the server's credentials would: a sound chain of another history).
async fn replace_stream(url: &str, writer: usize, count: usize) {
    use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream("GANTRY_EVENTS").await;
    let log = JetStreamLog::connect(JetStreamOptions {
        url: url.to_owned(),
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect");
    for i in 0..count {
        log.append(vec![gantry_tests::conformance::event(writer, i)])
            .await
            .expect("append");
    }
}

/// Starts the control plane's actors on the JetStream log with checkpoints published to the
/// KV bucket; returns the Auditor's status once `done` holds (30 s at most).
async fn audit_on_jetstream(
    url: String,
    done: impl Fn(&gantry_actors::actor::auditor::AuditStatus) -> bool,
) -> gantry_actors::actor::auditor::AuditStatus {
    use gantry_actors::actor::auditor::{AuditSettings, GetAudit};
    use gantry_actors::actor::supervisor::start_control_plane;
    use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
    let log = JetStreamLog::connect(JetStreamOptions {
        url: url.clone(),
        ..JetStreamOptions::default()
    })
    .await
    .expect("connect");
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let kv = gantry_nodes::audit::KvSink::open(&js, 1)
        .await
        .expect("bucket");
    let settings = AuditSettings {
        checkpoint_every: Duration::from_millis(100),
        checkpoint_events: 10,
        recheck_every: Duration::from_secs(3600),
        signer: Some(std::sync::Arc::new(
            gantry_events::checkpoint::NoteSigner::new("gantry", &[1; 32]).expect("signer"),
        )),
        sinks: vec![std::sync::Arc::new(kv)],
    };
    let actors = start_control_plane(
        std::sync::Arc::new(log),
        Default::default(),
        gantry_events::Source::new("cp", "scheduler"),
        settings,
        None,
        None,
    )
    .await
    .expect("control plane");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = actors.auditor.send(GetAudit).await.expect("auditor");
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn on_jetstream_the_checkpoint_in_the_kv_bucket_catches_a_replaced_stream() {
    use gantry_actors::actor::auditor::CheckpointSink;
    use gantry_events::Fault;
    let Some(server) = gantry_tests::services::NatsServer::start() else {
        return;
    };
    let url = server.url();
    let key = gantry_events::checkpoint::NoteSigner::new("gantry", &[1; 32])
        .expect("signer")
        .verifier();
    // 30 events; the Auditor checkpoints them and publishes the note to the bucket.
    let u = url.clone();
    in_system(move || async move {
        replace_stream(&u, 0, 30).await;
        audit_on_jetstream(u, |s| s.checkpoint.is_some() && s.verified_seq >= 30).await
    });
    // Deleting or purging entries through the JetStream API is refused by the stream itself
    // (only deleting the whole stream gets around it, which the checkpoint catches below).
    let u = url.clone();
    in_system(move || async move {
        let js = async_nats::jetstream::new(async_nats::connect(&u).await.expect("nats"));
        let stream = js.get_stream("GANTRY_EVENTS").await.expect("stream");
        assert!(
            stream.delete_message(3).await.is_err(),
            "deleting an entry is refused"
        );
        assert!(stream.purge().await.is_err(), "purging is refused");
    });
    let published = in_system({
        let url = url.clone();
        move || async move {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("nats"));
            let kv = gantry_nodes::audit::KvSink::open(&js, 1)
                .await
                .expect("bucket");
            kv.last()
                .await
                .expect("read")
                .expect("a published checkpoint")
        }
    });
    let checkpoint = key.open(&published).expect("signed by the Auditor's key");
    assert!(checkpoint.size >= 30, "{published}");
    // A restart on the same stream meets it.
    let u = url.clone();
    let status = in_system(move || async move {
        audit_on_jetstream(u, |s| s.verified_seq > checkpoint.size).await
    });
    assert_eq!(status.broken, None);

    // The stream replaced by a longer history of fresh hashes: the root differs.
    let u = url.clone();
    let status = in_system(move || async move {
        replace_stream(&u, 1, 50).await;
        audit_on_jetstream(u, |s| s.broken.is_some()).await
    });
    let broken = status.broken.expect("broken");
    assert!(
        matches!(broken.fault, Fault::RootMismatch { size, .. } if size == checkpoint.size),
        "{broken}"
    );
    // The stream replaced by a shorter one: named as cut.
    let u = url.clone();
    let status = in_system(move || async move {
        replace_stream(&u, 2, 5).await;
        audit_on_jetstream(u, |s| s.broken.is_some()).await
    });
    let broken = status.broken.expect("broken");
    assert!(
        matches!(broken.fault, Fault::ShorterThanCheckpoint { head: 5, size } if size == checkpoint.size),
        "{broken}"
    );
    // `gantry log verify --nats` against the published note names it too.
    let note = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(note.path(), &published).expect("write");
    let (code, out) = gantry_cli(&[
        "log",
        "verify",
        "--nats",
        &url,
        "--checkpoint",
        note.path().to_str().expect("utf-8"),
        "--key",
        &gantry_events::checkpoint::NoteSigner::new("gantry", &[1; 32])
            .expect("signer")
            .verifier_key(),
    ]);
    assert_eq!(code, ExitCode::from(EXIT_BROKEN), "{out}");
    assert!(out.contains("tail was cut"), "{out}");
}

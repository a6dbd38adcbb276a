//! A golden chain for a second implementation: seven entries from genesis
//! (`events/testdata/golden/chain/entry-N.bin`, each `record ‖ hash`), the checkpoint of all
//! seven signed by a published test key (`checkpoint.note`, `verifier.key`), and the proofs as
//! the gateway serves them (`inclusion-3-of-7.json`, `consistency-4-to-7.json`). A verifier
//! written from `events/FORMAT.md` alone must find the chain sound, the note signed, the root
//! the note's, and both proofs valid.
//!
//! The files are checked in; this test checks they still hold and that gantry still writes
//! them byte for byte. Write them (only when missing) with
//! `GANTRY_BLESS=1 cargo test -p gantry-events --test golden_chain`.

use std::path::PathBuf;

use gantry_events::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use gantry_events::event::{NodeJoined, NodeLost};
use gantry_events::merkle::{MerkleTree, leaf_hash, verify_consistency, verify_inclusion};
use gantry_events::{Entry, Hash, NewEvent, Source, Verifier, seal};
use serde_json::{Value, json};
use uuid::Uuid;

const SIZE: u64 = 7;
/// The test key's seed: published here on purpose, never a real key.
const SEED: [u8; 32] = [0x5a; 32];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/chain")
}

/// The chain, sealed from genesis.
fn chain() -> Vec<(Entry, Hash)> {
    let mut prev = Hash::GENESIS;
    (1..=SIZE)
        .map(|seq| {
            let event = if seq % 2 == 1 {
                NodeJoined {
                    node_id: format!("node-{seq}"),
                    hostname: "golden".into(),
                    cpu_millis: 4000,
                    memory_bytes: 8 << 30,
                    gpus: Vec::new(),
                    executor: "process".into(),
                    labels: Default::default(),
                }
                .into()
            } else {
                NodeLost {
                    node_id: format!("node-{}", seq - 1),
                    reason: "golden".into(),
                }
                .into()
            };
            let new = NewEvent {
                id: Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0002_0000 + seq as u128),
                time_ns: 1_795_000_000_000_000_000 + seq,
                source: Source::new("node-a", "golden"),
                event,
            };
            let (entry, hash) = seal(seq, &prev, &new).expect("seal");
            prev = hash;
            (entry, hash)
        })
        .collect()
}

fn signer() -> NoteSigner {
    NoteSigner::new("gantry-golden", &SEED).expect("signer")
}

fn hex_all(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(Hash::to_hex).collect()
}

/// Every file, by name, as gantry writes it today.
fn files() -> Vec<(String, Vec<u8>)> {
    let entries = chain();
    let mut tree = MerkleTree::new();
    for (_, hash) in &entries {
        tree.push(hash);
    }
    let signer = signer();
    let note = |size: u64| {
        signer.sign(&Checkpoint {
            origin: "gantry-golden".into(),
            size,
            root: tree.root_at(size).expect("root"),
            extensions: vec!["time 1795000000".into()],
        })
    };
    let inclusion = json!({
        "seq": 3,
        "size": SIZE,
        "entry_hash": entries[2].1,
        "root": tree.root(),
        "proof": hex_all(&tree.inclusion_proof(2, SIZE).expect("proof")),
        "checkpoint": note(SIZE),
    });
    let consistency = json!({
        "from": 4,
        "to": SIZE,
        "from_root": tree.root_at(4).expect("root"),
        "to_root": tree.root(),
        "proof": hex_all(&tree.consistency_proof(4, SIZE).expect("proof")),
        "from_checkpoint": note(4),
        "to_checkpoint": note(SIZE),
    });
    let pretty = |v: &Value| (serde_json::to_string_pretty(v).expect("json") + "\n").into_bytes();
    let mut files: Vec<(String, Vec<u8>)> = entries
        .iter()
        .enumerate()
        .map(|(i, (entry, _))| (format!("entry-{}.bin", i + 1), entry.bytes.to_vec()))
        .collect();
    files.push(("checkpoint.note".into(), note(SIZE).into_bytes()));
    files.push((
        "verifier.key".into(),
        (signer.verifier_key() + "\n").into_bytes(),
    ));
    files.push(("inclusion-3-of-7.json".into(), pretty(&inclusion)));
    files.push(("consistency-4-to-7.json".into(), pretty(&consistency)));
    files
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("golden {name}: {e}"))
}

fn hash(value: &Value) -> Hash {
    Hash::from_hex(value.as_str().expect("hex")).expect("hash")
}

#[test]
fn the_golden_chain_its_checkpoint_and_its_proofs_hold() {
    if std::env::var_os("GANTRY_BLESS").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        for (name, bytes) in files() {
            let path = dir().join(&name);
            if !path.exists() {
                std::fs::write(path, bytes).expect("write");
            }
        }
    }
    // From the files alone: the chain is sound from genesis.
    let mut verifier = Verifier::from_genesis();
    let mut tree = MerkleTree::new();
    for seq in 1..=SIZE {
        let entry = Entry {
            seq,
            bytes: read(&format!("entry-{seq}.bin")).into(),
        };
        verifier.push(&entry).expect("sound chain");
        tree.push(&entry.stored_hash().expect("hash"));
    }
    // The note is signed by the published key and states this chain's root.
    let key = String::from_utf8(read("verifier.key")).expect("utf-8");
    let verifier = NoteVerifier::parse(key.trim()).expect("key");
    let note = String::from_utf8(read("checkpoint.note")).expect("utf-8");
    let checkpoint = verifier.open(&note).expect("signed");
    assert_eq!(
        (checkpoint.size, checkpoint.root),
        (SIZE, tree.root()),
        "the note states the chain's root"
    );
    // Both proofs check against signed roots.
    let inclusion: Value = serde_json::from_slice(&read("inclusion-3-of-7.json")).expect("json");
    let path: Vec<Hash> = serde_json::from_value(inclusion["proof"].clone()).expect("proof");
    assert!(verify_inclusion(
        &leaf_hash(&hash(&inclusion["entry_hash"]).0),
        2,
        SIZE,
        &path,
        &checkpoint.root
    ));
    let consistency: Value =
        serde_json::from_slice(&read("consistency-4-to-7.json")).expect("json");
    let from = verifier
        .open(consistency["from_checkpoint"].as_str().expect("note"))
        .expect("signed");
    let path: Vec<Hash> = serde_json::from_value(consistency["proof"].clone()).expect("proof");
    assert!(verify_consistency(
        from.size,
        SIZE,
        &from.root,
        &checkpoint.root,
        &path
    ));
    // And gantry still writes every file byte for byte.
    for (name, bytes) in files() {
        assert_eq!(
            read(&name),
            bytes,
            "{name}: gantry writes it differently now"
        );
    }
}

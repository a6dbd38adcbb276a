//! What provable history costs, measured on a real embedded log of job histories.
//!
//! 1. Verifying the log with its Merkle root (chain + tree, what `gantry log verify
//!    --checkpoint` and the Auditor do per entry) beside verifying the chain alone (the
//!    baseline: the same reading and checking, no tree), one thread, page cache warm.
//! 2. Proofs from the views (`Projections::inclusion_proof` / `consistency_proof`: the stored
//!    upper levels plus the lowest levels read back from the log), at the log's head, for
//!    random entries; beside them, reading one entry from the log (the baseline: the cheapest
//!    read a proof includes).
//! 3. The Auditor's checkpoint work: the tree's right edge kept per entry and one signature
//!    per checkpoint, as a share of one core at 100,000 appends/s (checkpoints every 10,000
//!    events, gantry's default), beside the chain verification the Auditor already does per
//!    entry (measured in 1).
//!
//! Run: `cargo bench -p gantry-tests --bench provable`. `GANTRY_BENCH_SCALE=0.1` shrinks the
//! log (1,000,000 events at scale 1).

use std::time::Instant;

use gantry_events::checkpoint::{Checkpoint, NoteSigner};
use gantry_events::merkle::Frontier;
use gantry_events::{EmbeddedLog, EventLog, Verifier};
use gantry_projections::Projections;
use gantry_tests::history::write_job_histories;

fn scale() -> f64 {
    std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// A small deterministic generator (no dependency, same sequence every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[actix_rt::main]
async fn main() {
    let events = (1_000_000.0 * scale()) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let started = Instant::now();
    write_job_histories(&data, events).await;
    let log = EmbeddedLog::open(&data).await.expect("log");
    let head = log.head().await.expect("head").seq;
    println!(
        "log: {head} events of job histories written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. Verify: chain alone vs chain + Merkle root; the same reads, one thread. Twice: with
    // every payload decoded into its typed event (gantry's default), and with the record's
    // structure only (what an independent verifier checks, `events/FORMAT.md` §1).
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let mut root = None;
    let mut chain = 0.0;
    println!("verify, one thread, best of 3:");
    for typed in [true, false] {
        let mut chain_rates = Vec::new();
        let mut merkle_rates = Vec::new();
        for _ in 0..3 {
            for with_tree in [false, true] {
                let began = Instant::now();
                let mut verifier = Verifier::from_genesis().check_payloads(typed);
                let mut tree = Frontier::new();
                let mut next = 1;
                while next <= head {
                    let entries = log.read(next, 4096).await.expect("read");
                    for entry in &entries {
                        verifier.push(entry).expect("sound chain");
                        if with_tree {
                            tree.push(&entry.stored_hash().expect("hash"));
                        }
                    }
                    next += entries.len() as u64;
                }
                let rate = head as f64 / began.elapsed().as_secs_f64();
                if with_tree {
                    root = Some(tree.root());
                    merkle_rates.push(rate);
                } else {
                    chain_rates.push(rate);
                }
            }
        }
        let (alone, merkle) = (best(&chain_rates), best(&merkle_rates));
        if typed {
            chain = alone;
        }
        let what = if typed {
            "payloads decoded (default)"
        } else {
            "structure only"
        };
        println!("  {what}: chain alone (baseline) {alone:>10.0} events/s");
        println!(
            "  {what}: chain + Merkle root     {merkle:>10.0} events/s = {:.2}x the baseline",
            merkle / alone
        );
    }
    println!("  root {}", root.expect("root"));

    // 2. Proofs from the views at the head.
    let views = Projections::open(dir.path().join("views")).expect("views");
    let began = Instant::now();
    views.catch_up(&log, |_, _| {}).await.expect("views");
    println!(
        "views built from the log in {:.1} s (tree size {})",
        began.elapsed().as_secs_f64(),
        views.tree_size().expect("size")
    );
    let tree_root = views.tree_root(&log, head).await.expect("root");
    assert_eq!(Some(tree_root), root, "the views' root is the verifier's");
    let mut rng = Lcg(7);
    let samples = 2000;
    let timed = |label: &str, times: &mut Vec<f64>| {
        times.sort_by(|a, b| a.total_cmp(b));
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "  {label:<34} mean {mean:>7.1} µs  p50 {:>7.1}  p99 {:>7.1}",
            percentile(times, 0.5),
            percentile(times, 0.99)
        );
        mean
    };
    let mut reads = Vec::new();
    let mut inclusions = Vec::new();
    let mut consistencies = Vec::new();
    for _ in 0..samples {
        let seq = 1 + rng.below(head);
        let t = Instant::now();
        let entry = log.read(seq, 1).await.expect("read");
        reads.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(entry.len(), 1);
        let t = Instant::now();
        let (proof, _) = views.inclusion_proof(&log, seq, head).await.expect("proof");
        inclusions.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(!proof.is_empty() || head == 1);
        let from = 1 + rng.below(head);
        let t = Instant::now();
        views
            .consistency_proof(&log, from, head)
            .await
            .expect("proof");
        consistencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!("proofs at {head} events, {samples} random entries:");
    let read = timed("one entry read (baseline)", &mut reads);
    let inclusion = timed("inclusion proof", &mut inclusions);
    let consistency = timed("consistency proof (random from)", &mut consistencies);
    println!(
        "  inclusion = {:.1}x a read, consistency = {:.1}x a read",
        inclusion / read,
        consistency / read
    );

    // 3. The Auditor's checkpoint work per entry and per checkpoint.
    let hashes: Vec<_> = log
        .read(1, head.min(1 << 20) as usize)
        .await
        .expect("read")
        .iter()
        .map(|e| e.stored_hash().expect("hash"))
        .collect();
    let t = Instant::now();
    let mut edge = Frontier::new();
    for hash in &hashes {
        edge.push(hash);
    }
    let push_ns = t.elapsed().as_secs_f64() * 1e9 / hashes.len() as f64;
    let signer = NoteSigner::new("gantry", &[9; 32]).expect("signer");
    let t = Instant::now();
    let signs = 2000;
    for size in 0..signs {
        let note = signer.sign(&Checkpoint {
            origin: "gantry".into(),
            size,
            root: edge.root(),
            extensions: vec![format!("time {size}")],
        });
        assert!(note.len() > 64);
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / signs as f64;
    let verify_ns = 1e9 / chain;
    let rate = 100_000.0;
    let share = (rate * push_ns * 1e-9) + (rate / 10_000.0) * sign_us * 1e-6;
    println!("checkpoint work (the Auditor, one core):");
    println!("  tree edge per entry:            {push_ns:>8.0} ns");
    println!("  root + signed note per checkpoint: {sign_us:>5.1} µs");
    println!("  chain verification per entry (baseline, from 1): {verify_ns:>5.0} ns");
    println!(
        "  at 100,000 appends/s, checkpoints every 10,000: {:.2}% of a core (chain verification: {:.2}%)",
        share * 100.0,
        rate * verify_ns * 1e-9 * 100.0
    );
}

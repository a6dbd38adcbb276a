//! How long `gantry up` (its own process, embedded) takes to be ready again after `kill -9`,
//! as its log grows: 100,000, 1,000,000 and 5,000,000 events of job histories. Beside it, in
//! the same run on the same data dir, the same restart with the Scheduler's snapshot removed
//! (the baseline: the whole log replayed, as every start did before snapshots). And the
//! resident memory of the process, idle and at each size.
//!
//! Each size: the log is written straight into a fresh data dir; `gantry up` starts on it (the
//! views and the Scheduler's state built from the whole log, then a snapshot taken), is killed
//! with `kill -9`, and started again (timed: spawn → `/readyz` answers 200); killed again, its
//! snapshot deleted, started again (timed). Ready means the gateway answers, the Scheduler's
//! state is the log's and the views have caught up with the log.
//!
//! Run: `cargo bench -p gantry-tests --bench restart`. `GANTRY_BENCH_SCALE=0.1` shrinks the
//! sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_tests::history::write_job_histories;
use gantry_tests::process::{GantryProcess, rss_bytes};

fn scale() -> f64 {
    std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gantry-node"))
}

fn snapshot_file(data: &Path) -> std::path::PathBuf {
    data.join("snapshots").join("scheduler.snapshot")
}

/// gantry's own account of a step of its start in its log lines (`elapsed_ms`).
fn step_ms(log_file: &Path, step: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log_file).ok()?;
    text.lines()
        .filter(|l| l.contains(step))
        .filter_map(|l| l.split("elapsed_ms=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next_back()
}

/// Where a start's time went: the log opened (its frames scanned), the views opened, the
/// Scheduler's state rebuilt.
fn steps(log_file: &Path) -> String {
    let ms = |step| step_ms(log_file, step).map_or("?".to_owned(), |v| v.to_string());
    format!(
        "{}/{}/{}",
        ms("event log opened"),
        ms("views opened"),
        ms("scheduler rebuilt from the log")
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Waits for the process to settle (a snapshot written, views flushed) and reads its RSS.
fn settle_rss(gantry: &GantryProcess) -> u64 {
    std::thread::sleep(Duration::from_secs(2));
    rss_bytes(gantry.pid())
}

fn main() {
    println!(
        "gantry restart after kill -9 ({} build, this machine: {} CPUs)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    {
        let dir = tempfile::tempdir().expect("tempdir");
        let gantry = GantryProcess::start_in(bin(), &dir.path().join("data"), &[], None);
        println!(
            "\nidle, empty log: ready in {:.0} ms, RSS {:.1} MiB",
            gantry.ready_after.as_secs_f64() * 1e3,
            mib(settle_rss(&gantry))
        );
    }

    println!(
        "\n{:>10} {:>9} | {:>12} {:>10} | {:>12} {:>14} | {:>11} {:>14} | {:>9} {:>9}",
        "events",
        "jobs",
        "first start",
        "RSS",
        "kill -9 →",
        "log/views/",
        "no snapshot",
        "log/views/",
        "ratio",
        "RSS"
    );
    println!(
        "{:>10} {:>9} | {:>12} {:>10} | {:>12} {:>14} | {:>11} {:>14} | {:>9} {:>9}",
        "",
        "",
        "(build all)",
        "",
        "ready",
        "scheduler ms",
        "(baseline)",
        "scheduler ms",
        "",
        "after"
    );
    for events in [100_000usize, 1_000_000, 5_000_000] {
        let events = ((events as f64 * scale()) as usize).max(1_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let written = Instant::now();
        let jobs = runtime.block_on(write_job_histories(&data, events)).len();
        let write_s = written.elapsed().as_secs_f64();
        let log_file = dir.path().join("gantry.log");
        // The default interval (100,000 events), smaller only when the bench is scaled down.
        let every = (events as u64 / 2).min(100_000).to_string();
        let args = ["--snapshot-every", every.as_str()];

        // First start: everything built from the whole log; then the snapshot is taken.
        let gantry = GantryProcess::start_in(bin(), &data, &args, Some(&log_file));
        let first = gantry.ready_after;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !snapshot_file(&data).exists() {
            assert!(Instant::now() < deadline, "no snapshot was taken");
            std::thread::sleep(Duration::from_millis(100));
        }
        let rss_first = settle_rss(&gantry);
        gantry.kill9();

        // kill -9, then a start from the snapshot and the log after it.
        let gantry = GantryProcess::start_in(bin(), &data, &args, Some(&log_file));
        let with_snapshot = gantry.ready_after;
        let steps_with = steps(&log_file);
        let rss_after = settle_rss(&gantry);
        gantry.kill9();

        // The same start without the snapshot: the whole log replayed.
        std::fs::remove_file(snapshot_file(&data)).expect("remove the snapshot");
        let gantry = GantryProcess::start_in(bin(), &data, &args, Some(&log_file));
        let without = gantry.ready_after;
        let steps_without = steps(&log_file);
        gantry.kill9();

        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        println!(
            "{events:>10} {jobs:>9} | {:>12} {:>6.1} MiB | {:>12} {:>14} | {:>11} {:>14} | {:>8.2}x {:>5.1} MiB",
            ms(first),
            mib(rss_first),
            ms(with_snapshot),
            steps_with,
            ms(without),
            steps_without,
            without.as_secs_f64() / with_snapshot.as_secs_f64(),
            mib(rss_after),
        );
        println!(
            "{:>10} (log written in {write_s:.1} s, {:.0} MiB on disk)",
            "",
            mib(std::fs::metadata(data.join("events.log")).map_or(0, |m| m.len()))
        );
    }
    println!(
        "\ngoal: ready < 2 s after kill -9 at 1,000,000 events, flat as the log grows \
         (100k → 1M → 5M)"
    );
}

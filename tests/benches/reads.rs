//! Reads through `gantry up` (its own process, embedded) with 100,000 and 1,000,000 jobs in
//! the views, beside the gateway's static `/healthz` handler in the same process, same
//! clients, same run: `GET /v1/jobs/{id}` of jobs picked at random over the whole history,
//! and filtered list pages (one index; two indexes; four) starting at random points of the
//! history.
//!
//! Run: `cargo bench -p gantry-tests --bench reads`. `GANTRY_BENCH_SCALE=0.1` shrinks the
//! sizes, `GANTRY_BENCH_SECONDS` (default 3) sets each step's length. 4 client threads, on
//! the same 2 cores as gantry.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_events::event::JobId;
use gantry_tests::history::{NODE, write_job_histories};
use gantry_tests::process::{GantryProcess, rss_bytes};

const CLIENTS: usize = 4;

fn scale() -> f64 {
    std::env::var("GANTRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn seconds() -> f64 {
    std::env::var("GANTRY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

/// A small xorshift, so each client picks its own jobs without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Requests per second from `CLIENTS` threads for `seconds()`, each request's path made by
/// `path` from a random number; every answer must be 200 with a body.
fn hammer(base: &str, path: Arc<dyn Fn(u64) -> String + Send + Sync>) -> f64 {
    let until = Instant::now() + Duration::from_secs_f64(seconds());
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let base = base.to_owned();
            let path = path.clone();
            std::thread::spawn(move || {
                let agent = ureq::Agent::config_builder().build().new_agent();
                let mut state = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                let mut done = 0u64;
                while Instant::now() < until {
                    let url = format!("{base}{}", path(next(&mut state)));
                    let mut answer = agent.get(&url).call().expect("get");
                    let body = answer.body_mut().read_to_vec().expect("body");
                    assert!(!body.is_empty(), "{url}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: u64 = threads.into_iter().map(|t| t.join().expect("client")).sum();
    done as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    println!(
        "gantry reads ({} build, {CLIENTS} clients, {:.0} s per step, this machine: {} CPUs)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        seconds(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bin = Path::new(env!("CARGO_BIN_EXE_gantry-node"));
    for jobs in [100_000usize, 1_000_000] {
        let jobs = ((jobs as f64 * scale()) as usize).max(1_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // About four events a job (one in a hundred only submitted).
        let ids: Arc<Vec<JobId>> =
            Arc::new(runtime.block_on(write_job_histories(&data, jobs * 4 - jobs * 3 / 100)));
        let gantry = GantryProcess::start_in(bin, &data, &[], None);
        println!(
            "\n{} jobs in the views (built from {} events in {:.1} s at the first start), RSS {:.0} MiB",
            ids.len(),
            gantry.head(),
            gantry.ready_after.as_secs_f64(),
            rss_bytes(gantry.pid()) as f64 / (1 << 20) as f64
        );
        let base = gantry.base.clone();
        let healthz = hammer(&base, Arc::new(|_| "/healthz".to_owned()));
        println!(
            "  {:<66} {healthz:>9.0} /s",
            "GET /healthz, static (baseline)"
        );
        let pick = {
            let ids = ids.clone();
            move |r: u64| ids[(r % ids.len() as u64) as usize]
        };
        let by_id = {
            let pick = pick.clone();
            hammer(&base, Arc::new(move |r| format!("/v1/jobs/{}", pick(r))))
        };
        println!(
            "  {:<66} {by_id:>9.0} /s  {:.2}x the static handler (goal >= 0.5x)",
            "GET /v1/jobs/{id}, a random job of the whole history",
            by_id / healthz
        );
        let pages: [(&str, String); 3] = [
            ("state=succeeded", "state=succeeded".to_owned()),
            (
                "state=succeeded & label team=t3",
                "state=succeeded&label=team%3Dt3".to_owned(),
            ),
            (
                "state=succeeded & label & queue & node",
                format!("state=succeeded&label=team%3Dt3&queue=default&node={NODE}"),
            ),
        ];
        for (what, query) in pages {
            let pick = pick.clone();
            let rate = hammer(
                &base,
                Arc::new(move |r| format!("/v1/jobs?{query}&limit=50&after={}", pick(r))),
            );
            println!(
                "  {:<66} {rate:>9.0} /s  {:.2}x the static handler",
                format!("GET /v1/jobs?{what}, a page of 50 from a random point"),
                rate / healthz
            );
        }
        println!(
            "  RSS after the reads: {:.0} MiB (views cache: the default {} MiB)",
            rss_bytes(gantry.pid()) as f64 / (1 << 20) as f64,
            gantry_projections::DEFAULT_CACHE_BYTES >> 20
        );
        // The same views with 1 GiB of them kept in memory: what memory buys reads.
        gantry.kill9();
        let gantry = GantryProcess::start_in(bin, &data, &["--views-cache-mb", "1024"], None);
        let base = gantry.base.clone();
        let healthz = hammer(&base, Arc::new(|_| "/healthz".to_owned()));
        // Once to warm the cache, once measured.
        for round in ["warming", "measured"] {
            let pick = pick.clone();
            let by_id = hammer(&base, Arc::new(move |r| format!("/v1/jobs/{}", pick(r))));
            if round == "measured" {
                println!(
                    "  {:<66} {by_id:>9.0} /s  {:.2}x the static handler ({healthz:.0} /s); RSS {:.0} MiB",
                    "GET /v1/jobs/{id} with --views-cache-mb 1024",
                    by_id / healthz,
                    rss_bytes(gantry.pid()) as f64 / (1 << 20) as f64
                );
            }
        }
    }
}

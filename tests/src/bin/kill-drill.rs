//! The kill -9 drill: starts `gantry up` (the `gantry-node` binary beside this one), submits
//! jobs in bursts from several clients, kills gantry with SIGKILL at a random moment, restarts
//! it on the same data, and repeats. Then it lets every job finish and checks: every
//! acknowledged job is there, each has exactly one terminal event, none is stuck, none was
//! dead-lettered, the views equal a rebuild from the log, the chain verifies, and no restart
//! failed. Prints a table and exits non-zero when any check fails.
//!
//! Usage: `kill-drill [--kills N] [--executor process|docker] [--image IMAGE]`
//! (`scripts/kill-drill` builds and runs it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gantry_events::{EmbeddedLog, verify_log};
use gantry_nodes::client::Client;
use gantry_projections::Projections;
use serde_json::json;

struct Options {
    kills: usize,
    executor: String,
    image: String,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        kills: 20,
        executor: "process".into(),
        image: "busybox".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--kills" => options.kills = value.parse().context("--kills")?,
            "--executor" => options.executor = value.clone(),
            "--image" => options.image = value.clone(),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

fn gantry_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("gantry-node");
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build -p gantry-tests --bins`",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts gantry and waits until it answers; `Err` is a failed restart.
fn start(bin: &Path, data: &Path, port: u16, executor: &str) -> anyhow::Result<(Child, Client)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("stderr.log"))?;
    let mut child = Command::new(bin)
        .args(["up", "--executor", executor, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("/healthz").is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("gantry exited during start: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("gantry did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, client))
}

/// A few milliseconds of pseudo-randomness without a dependency.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % max_ms.max(1))
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    let bin = gantry_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut restarts_failed = 0usize;
    let mut submitted_total = 0usize;

    for round in 0..=options.kills {
        let (mut child, client) = match start(&bin, &data, port, &options.executor) {
            Ok(started) => started,
            Err(e) => {
                eprintln!("round {round}: restart failed: {e:#}");
                restarts_failed += 1;
                continue;
            }
        };
        if round == options.kills {
            // The last start: no kill, let everything finish.
            return finish(
                &options,
                child,
                &client,
                &data,
                &acked,
                restarts_failed,
                submitted_total,
            );
        }
        // A burst from four clients, killed at a random moment in the middle of it.
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..4 {
            let (stop, acked, base) = (stop.clone(), acked.clone(), port);
            let image = options.image.clone();
            clients.push(std::thread::spawn(move || {
                let client = Client::new(&format!("http://127.0.0.1:{base}"));
                let mut sent = 0usize;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let spec = json!({
                        "name": format!("drill-{round}-{c}-{i}"),
                        "image": image,
                        "command": ["sh", "-c", "sleep 0.3"],
                        "resources": { "cpus": 0.1, "memory_bytes": 32u64 << 20 },
                        "retry": { "max_attempts": 1 },
                    });
                    sent += 1;
                    // Only a 202 with an id is an acknowledgement.
                    if let Ok(reply) = client.post("/v1/jobs", &spec)
                        && let Some(id) = reply["id"].as_str()
                    {
                        acked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id.to_owned());
                    }
                }
                sent
            }));
        }
        std::thread::sleep(Duration::from_millis(300) + jitter(1200));
        child.kill()?;
        child.wait()?;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            submitted_total += c.join().unwrap_or(0);
        }
        eprintln!(
            "round {round}: killed; {} jobs acknowledged so far",
            acked.lock().unwrap_or_else(|e| e.into_inner()).len()
        );
    }
    bail!("the last start failed")
}

fn finish(
    options: &Options,
    mut child: Child,
    client: &Client,
    data: &Path,
    acked: &Mutex<BTreeSet<String>>,
    restarts_failed: usize,
    submitted_total: usize,
) -> anyhow::Result<()> {
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Every job reaches an end.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    loop {
        states.clear();
        let mut after = String::new();
        loop {
            let page = client.get(&format!("/v1/jobs?limit=1000{after}"))?;
            let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
            let Some(last) = jobs.last() else { break };
            after = format!("&after={}", last["id"].as_str().unwrap_or(""));
            for job in &jobs {
                states.insert(
                    job["id"].as_str().unwrap_or("").to_owned(),
                    job["state"].as_str().unwrap_or("").to_owned(),
                );
            }
        }
        let live = states
            .values()
            .filter(|s| !["succeeded", "dead_lettered", "cancelled"].contains(&s.as_str()))
            .count();
        if live == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let events = gantry_tests::system::all_events(client);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    child.wait()?;

    let mut terminal: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost_attempts = 0usize;
    for e in &events {
        let ty = e["type"].as_str().unwrap_or("");
        let id = e["event"]["job_id"].as_str().unwrap_or("").to_owned();
        if ["job.succeeded", "job.dead_lettered", "job.cancelled"].contains(&ty) {
            *terminal.entry(id).or_default() += 1;
        } else if ty == "job.failed" && e["event"]["cause"]["kind"] == "node_lost" {
            lost_attempts += 1;
        }
    }
    let missing = acked.iter().filter(|id| !states.contains_key(*id)).count();
    let not_one_end = states
        .keys()
        .filter(|id| terminal.get(*id).copied().unwrap_or(0) != 1)
        .count();
    let stuck = states
        .values()
        .filter(|s| !["succeeded", "dead_lettered", "cancelled"].contains(&s.as_str()))
        .count();
    let dead = states.values().filter(|s| *s == "dead_lettered").count();
    let succeeded = states.values().filter(|s| *s == "succeeded").count();

    let (chain, views) = actix_rt::System::new().block_on(async {
        let log = EmbeddedLog::open_read_only(data).await?;
        let chain = match verify_log(&log, 1, None).await? {
            Ok(v) => format!("verified 1..={}", v.last_seq),
            Err(b) => format!("BROKEN: {b}"),
        };
        let live = Projections::open(data.join("views"))?;
        let rebuilt_dir = tempfile::tempdir()?;
        let rebuilt = Projections::open(rebuilt_dir.path())?;
        rebuilt.catch_up(&log, |_, _| {}).await?;
        let views = live.dump()? == rebuilt.dump()?;
        anyhow::Ok((chain, views))
    })?;

    let rows = [
        (
            "kills (SIGKILL during submission bursts)",
            options.kills.to_string(),
            true,
        ),
        (
            "restarts that failed",
            restarts_failed.to_string(),
            restarts_failed == 0,
        ),
        ("submissions sent", submitted_total.to_string(), true),
        (
            "jobs acknowledged (202)",
            acked.len().to_string(),
            !acked.is_empty(),
        ),
        ("jobs in the views", states.len().to_string(), true),
        (
            "acknowledged jobs missing",
            missing.to_string(),
            missing == 0,
        ),
        (
            "jobs without exactly one terminal event",
            not_one_end.to_string(),
            not_one_end == 0,
        ),
        ("jobs stuck (not terminal)", stuck.to_string(), stuck == 0),
        ("jobs succeeded", succeeded.to_string(), true),
        ("jobs dead-lettered", dead.to_string(), dead == 0),
        (
            "attempts lost to the kills (node_lost, retried)",
            lost_attempts.to_string(),
            true,
        ),
        ("views equal a rebuild", views.to_string(), views),
        (
            "gantry log verify",
            chain.clone(),
            !chain.starts_with("BROKEN"),
        ),
    ];
    println!("| check | result | ok |");
    println!("|---|---|---|");
    let mut all_ok = true;
    for (name, value, ok) in rows {
        all_ok &= ok;
        println!("| {name} | {value} | {} |", if ok { "yes" } else { "NO" });
    }
    if !all_ok {
        bail!(
            "the drill found faults (gantry's stderr: {})",
            data.with_extension("stderr.log").display()
        );
    }
    Ok(())
}

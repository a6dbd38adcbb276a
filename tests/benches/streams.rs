//! Benchmarks of what watchers see, against `gantry up` run as its own process (embedded, the
//! process executor), each beside a baseline measured in the same run:
//!
//! 1. Event websockets: delivery lag (append time → received by the client) while jobs are
//!    submitted at a target event rate, with 1 subscriber (the baseline), then with many, then
//!    with many plus one that never reads; gantry's RSS per subscriber and its CPU.
//! 2. Live logs: a job writing ~10 MB/s of timestamped lines, followed through
//!    `/v1/jobs/{id}/logs/ws` and by `tail -f` of the same file at once; lag of each line and
//!    the CPU each follower used.
//!
//! Run: `cargo bench -p gantry-tests --bench streams`. `GANTRY_BENCH_SUBSCRIBERS` (default
//! 1000) and `GANTRY_BENCH_EVENT_RATE` (default 5000/s) change the load. Clients run on the
//! same machine as gantry and share its cores.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry_nodes::client::Client;
use gantry_tests::process::{self, GantryProcess, cpu_of, rss_bytes};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    process::percentile(sorted, p).map_or(f64::NAN, |v| v as f64 / 1e3)
}

type Gantry = GantryProcess;

fn start(streams: usize) -> Gantry {
    let streams = streams.to_string();
    GantryProcess::start(
        Path::new(env!("CARGO_BIN_EXE_gantry-node")),
        &["--max-streams", &streams, "--max-streams-per-key", &streams],
    )
}

/// Lags (µs) of the events one subscriber received, with their sequences.
type Samples = Arc<Mutex<Vec<(u64, u64)>>>;

/// A subscriber thread from `after`, recording the lag of every `every`-th event until `stop`.
fn subscribe(
    client: &Client,
    after: u64,
    every: u64,
    samples: Samples,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut socket = client
        .websocket(&format!("/v1/events/ws?after={after}"))
        .expect("websocket");
    socket
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut mine = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let received = now_ns();
                    // The envelope starts `{"seq":N,"id":"…","time_ns":T,…`.
                    let number = |key: &str| {
                        text.find(key).and_then(|i| {
                            text[i + key.len()..]
                                .split(|c: char| !c.is_ascii_digit())
                                .next()
                                .and_then(|d| d.parse::<u64>().ok())
                        })
                    };
                    if let (Some(seq), Some(appended)) =
                        (number("\"seq\":"), number("\"time_ns\":"))
                        && seq % every == 0
                    {
                        mine.push((seq, received.saturating_sub(appended) / 1_000));
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        samples.lock().expect("samples").extend(mine);
    })
}

/// Submits jobs that wait for GPUs the node does not have (each makes `job.submitted` and
/// `job.waiting`) at `events_per_s`, from a few threads, until `stop`.
fn load(
    base: &str,
    events_per_s: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    let threads = 8;
    let per_thread = (events_per_s as f64 / 2.0) / threads as f64;
    (0..threads)
        .map(|t| {
            let client = Client::new(base);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = started + Duration::from_secs_f64(sent as f64 / per_thread);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = client.post(
                        "/v1/jobs",
                        &json!({
                            "name": format!("load-{t}-{sent}"), "image": "busybox",
                            "command": ["true"], "resources": { "gpus": { "count": 8 } },
                        }),
                    );
                    sent += 1;
                }
                sent
            })
        })
        .collect()
}

struct Phase {
    name: String,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_share: f64,
}

/// Runs the load for `seconds` with `subscribers` readers (plus a never-reading one when
/// `stalled`); the lag percentiles of the readers.
fn phase(
    gantry: &Gantry,
    base: &str,
    name: &str,
    subscribers: usize,
    stalled: bool,
    rate: usize,
    seconds: u64,
) -> Phase {
    let head = gantry.head();
    let samples: Samples = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Sample so that each phase keeps about a million lags in all.
    let every = ((rate as u64 * seconds * subscribers as u64) / 1_000_000).max(1);
    let readers: Vec<_> = (0..subscribers)
        .map(|_| subscribe(&gantry.client, head, every, samples.clone(), stop.clone()))
        .collect();
    // A client that connects from the start of history and never reads a byte.
    let _stalled = stalled.then(|| {
        gantry
            .client
            .websocket("/v1/events/ws?after=0")
            .expect("websocket")
    });
    std::thread::sleep(Duration::from_millis(500));
    let cpu_before = cpu_of(gantry.pid());
    let started = Instant::now();
    let load_stop = Arc::new(AtomicBool::new(false));
    let loaders = load(base, rate, load_stop.clone());
    std::thread::sleep(Duration::from_secs(seconds));
    load_stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_of(gantry.pid()) - cpu_before;
    let end = gantry.head();
    // Let the readers take what was appended, then stop them.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    let mut lags: Vec<u64> = samples
        .lock()
        .expect("samples")
        .iter()
        .filter(|(seq, _)| *seq > head && *seq <= end)
        .map(|(_, lag)| *lag)
        .collect();
    lags.sort_unstable();
    let expected = (end - head) / every * subscribers as u64;
    if (lags.len() as u64) < expected * 99 / 100 {
        println!(
            "  ({name}: readers received {} of about {expected} sampled events)",
            lags.len()
        );
    }
    Phase {
        name: name.to_owned(),
        events_per_s: (end - head) as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&lags, 0.50),
        p99_ms: percentile(&lags, 0.99),
        max_ms: percentile(&lags, 1.0),
        cpu_share: cpu.as_secs_f64() / elapsed.as_secs_f64(),
    }
}

fn bench_event_streams() {
    let subscribers = env_usize("GANTRY_BENCH_SUBSCRIBERS", 1000);
    let rate = env_usize("GANTRY_BENCH_EVENT_RATE", 5000);
    println!("event websockets: {subscribers} subscribers, jobs submitted for {rate} events/s");
    let gantry = start(subscribers + 16);
    let base = gantry.base.clone();

    // Resident memory per open, caught-up subscriber.
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_bytes(gantry.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let held: Vec<_> = (0..subscribers)
        .map(|_| subscribe(&gantry.client, 0, u64::MAX, Arc::default(), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let with = rss_bytes(gantry.pid());
    stop.store(true, Ordering::Relaxed);
    for h in held {
        let _ = h.join();
    }
    std::thread::sleep(Duration::from_secs(1));

    let seconds = 8;
    let phases: Vec<Phase> = [
        ("1 subscriber (baseline)".to_owned(), 1, false),
        (format!("{subscribers} subscribers"), subscribers, false),
        (
            format!("{subscribers} subscribers + 1 never reading"),
            subscribers,
            true,
        ),
    ]
    .into_iter()
    .map(|(name, readers, stalled)| phase(&gantry, &base, &name, readers, stalled, rate, seconds))
    .collect();
    println!(
        "  {:<44} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "", "events/s", "p50 ms", "p99 ms", "max ms", "CPU"
    );
    for p in &phases {
        println!(
            "  {:<44} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>8.0}%",
            p.name,
            p.events_per_s,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.cpu_share * 100.0
        );
    }
    println!(
        "  p99 lag with {subscribers} subscribers: {:.1}× the single subscriber's (goal: p99 < 100 ms)",
        phases[1].p99_ms / phases[0].p99_ms
    );
    println!(
        "  a never-reading client: readers' p99 {:.1} ms beside {:.1} ms without it ({:.2}×; goal: no effect)",
        phases[2].p99_ms,
        phases[1].p99_ms,
        phases[2].p99_ms / phases[1].p99_ms
    );
    println!(
        "  gantry RSS: {:.1} MiB idle, {:.1} MiB with {subscribers} subscribers: {:.1} KiB per subscriber",
        idle as f64 / 1048576.0,
        with as f64 / 1048576.0,
        with.saturating_sub(idle) as f64 / 1024.0 / subscribers as f64
    );
}

/// The attempt log a local job writes, once it exists.
fn find_log(dir: &Path, job: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.ends_with(format!("{job}/attempt-1.log")) {
                    return path;
                }
            }
        }
        assert!(Instant::now() < deadline, "no log file for {job}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lag (µs) of a line `… T=<ns> …` received now.
fn line_lag(line: &str) -> Option<u64> {
    let at = line.find("T=")?;
    let ns: u64 = line[at + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(now_ns().saturating_sub(ns) / 1_000)
}

fn bench_live_logs() {
    let seconds = 8;
    println!("live logs: a job writing ~10 MB/s of 1 KiB lines for {seconds} s");
    let gantry = start(16);
    // 10 MB/s: 10,000 lines of 1 KiB a second, each stamped with when it was written.
    let script = format!(
        "import time,sys\n\
         pad='x'*990\n\
         end=time.time()+{seconds}\n\
         n=0\n\
         start=time.time()\n\
         while time.time()<end:\n\
         \x20   sys.stdout.write('T=%d %s\\n' % (time.time_ns(), pad))\n\
         \x20   n+=1\n\
         \x20   if n%100==0:\n\
         \x20       sys.stdout.flush()\n\
         \x20       d=start+n/10000.0-time.time()\n\
         \x20       if d>0: time.sleep(d)\n\
         sys.stdout.flush()\n"
    );
    let run = |follow: bool| {
        let cpu_before = cpu_of(gantry.pid());
        let id = gantry
            .client
            .post(
                "/v1/jobs",
                &json!({
                    "name": "chatty", "image": "busybox",
                    "command": ["python3", "-c", script],
                    "retry": { "max_attempts": 1 },
                }),
            )
            .expect("submit")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let mut result = None;
        if follow {
            let path = find_log(&gantry.data, &id);
            let mut tail = Command::new("tail")
                .args(["-n", "+1", "-f"])
                .arg(&path)
                .stdout(Stdio::piped())
                .spawn()
                .expect("tail");
            let tail_pid = tail.id();
            let tail_out = tail.stdout.take().expect("stdout");
            let tail_lags = Arc::new(Mutex::new(Vec::new()));
            let bytes_by_tail = Arc::new(AtomicU64::new(0));
            let tail_reader = {
                let lags = tail_lags.clone();
                let bytes = bytes_by_tail.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(tail_out).lines() {
                        let Ok(line) = line else { break };
                        bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                        if let Some(lag) = line_lag(&line) {
                            lags.lock().expect("lags").push(lag);
                        }
                    }
                })
            };
            let mut socket = gantry
                .client
                .websocket(&format!("/v1/jobs/{id}/logs/ws"))
                .expect("log websocket");
            let mut ws_lags = Vec::new();
            let mut partial = String::new();
            let mut ws_bytes = 0u64;
            loop {
                match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        let message: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                        if message["end"] == true {
                            break;
                        }
                        let Some(data) = message["data"].as_str() else {
                            continue;
                        };
                        ws_bytes += data.len() as u64;
                        partial.push_str(data);
                        while let Some(nl) = partial.find('\n') {
                            if let Some(lag) = line_lag(&partial[..nl]) {
                                ws_lags.push(lag);
                            }
                            partial.drain(..=nl);
                        }
                    }
                    Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let tail_cpu = cpu_of(tail_pid);
            std::thread::sleep(Duration::from_millis(500));
            let _ = tail.kill();
            let _ = tail.wait();
            let _ = tail_reader.join();
            let mut tail_lags = tail_lags.lock().expect("lags").clone();
            tail_lags.sort_unstable();
            ws_lags.sort_unstable();
            result = Some((
                ws_lags,
                ws_bytes,
                tail_lags,
                bytes_by_tail.load(Ordering::Relaxed),
                tail_cpu,
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = gantry.client.get(&format!("/v1/jobs/{id}")).expect("job");
            if ["succeeded", "dead_lettered", "cancelled"]
                .contains(&job["state"].as_str().unwrap_or(""))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the job never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
        (cpu_of(gantry.pid()) - cpu_before, result)
    };
    let (cpu_alone, _) = run(false);
    let (cpu_followed, result) = run(true);
    let (ws, ws_bytes, tail, tail_bytes, tail_cpu) = result.expect("followed");
    println!(
        "  {:<36} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "lines", "MB", "p50 ms", "p99 ms", "CPU s"
    );
    println!(
        "  {:<36} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>10.2}",
        "gantry /v1/jobs/{id}/logs/ws",
        ws.len(),
        ws_bytes as f64 / 1e6,
        percentile(&ws, 0.5),
        percentile(&ws, 0.99),
        (cpu_followed.saturating_sub(cpu_alone)).as_secs_f64()
    );
    println!(
        "  {:<36} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>10.2}",
        "tail -f (baseline)",
        tail.len(),
        tail_bytes as f64 / 1e6,
        percentile(&tail, 0.5),
        percentile(&tail, 0.99),
        tail_cpu.as_secs_f64()
    );
    println!(
        "  gantry's CPU for the job: {:.2} s alone, {:.2} s while followed (the difference is the stream's)",
        cpu_alone.as_secs_f64(),
        cpu_followed.as_secs_f64()
    );
    println!(
        "  p99 lag: {:.1}× tail -f's",
        percentile(&ws, 0.99) / percentile(&tail, 0.99)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bench_event_streams();
    bench_live_logs();
}

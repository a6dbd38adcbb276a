//! The job commands of the CLI: they talk to a running gateway (`gantry up`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use gantry_actors::spec::{ResourceRequest, RetryRequest, SubmitRequest};
use gantry_events::event::{GpuRequest, Network};
use serde_json::Value;

use crate::cli::Error;
use crate::client::{Client, blocking};

/// Where the gateway is.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Gateway URL.
    #[arg(
        long,
        env = "GANTRY_SERVER",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    pub server: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A spec file (JSON, or TOML when it ends in .toml) instead of flags.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub image: Option<String>,
    /// CPU cores (fractions allowed).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory, e.g. 512Mi, 2Gi, 1G or bytes.
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    #[arg(long)]
    pub gpus: Option<u32>,
    #[arg(long)]
    pub gpu_model: Option<String>,
    /// Seconds before an attempt is stopped.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Attempts in all, the first included.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Retry when the job itself fails (non-zero exit, OOM, timeout), not only the platform.
    #[arg(long)]
    pub retry_user_failures: bool,
    /// Initial retry backoff in milliseconds.
    #[arg(long)]
    pub backoff_ms: Option<u64>,
    #[arg(long)]
    pub priority: Option<i32>,
    #[arg(long)]
    pub queue: Option<String>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Give the job a network (none by default).
    #[arg(long)]
    pub network: bool,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait until the job ends, showing its progress.
    #[arg(long)]
    pub wait: bool,
    /// Stream the job's output until it ends.
    #[arg(long)]
    pub follow: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Parses `512Mi`, `2Gi`, `1G`, `100k` or plain bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        other => return Err(format!("unknown size unit {other:?}")),
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

fn pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>, Error> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| Error::Usage(format!("--{what} takes KEY=VALUE, got {item:?}")))
        })
        .collect()
}

/// Builds the request from a file and/or flags (flags win).
pub fn submit_request(args: &SubmitArgs) -> Result<SubmitRequest, Error> {
    let mut req = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("reading {}: {e}", path.display())))?;
            if path.extension().is_some_and(|e| e == "toml") {
                toml::from_str(&text)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
            }
        }
        None => SubmitRequest::default(),
    };
    if let Some(v) = &args.name {
        req.name = v.clone();
    }
    if let Some(v) = &args.image {
        req.image = v.clone();
    }
    if !args.command.is_empty() {
        req.command = args.command.clone();
    }
    if args.cpus.is_some() || args.memory.is_some() || args.gpus.is_some() {
        let r = &mut req.resources;
        *r = ResourceRequest {
            cpus: args.cpus.or(r.cpus),
            memory_bytes: args.memory.or(r.memory_bytes),
            gpus: match args.gpus {
                Some(count) => Some(GpuRequest {
                    count,
                    model: args.gpu_model.clone(),
                    min_memory_bytes: None,
                }),
                None => r.gpus.clone(),
            },
        };
    }
    if args.timeout.is_some() {
        req.timeout_secs = args.timeout;
    }
    if args.max_attempts.is_some() || args.retry_user_failures || args.backoff_ms.is_some() {
        let r = req.retry.get_or_insert_with(RetryRequest::default);
        r.max_attempts = args.max_attempts.or(r.max_attempts);
        r.backoff_initial_ms = args.backoff_ms.or(r.backoff_initial_ms);
        if args.retry_user_failures {
            r.retry_user_failures = Some(true);
        }
    }
    if let Some(p) = args.priority {
        req.priority = p;
    }
    if args.queue.is_some() {
        req.queue = args.queue.clone();
    }
    req.env.extend(pairs(&args.env, "env")?);
    req.labels.extend(pairs(&args.labels, "label")?);
    if args.network {
        req.network = Some(Network::Bridge);
    }
    if args.idempotency_key.is_some() {
        req.idempotency_key = args.idempotency_key.clone();
    }
    if req.name.is_empty() {
        return Err(Error::Usage("a job needs --name (or a spec file)".into()));
    }
    if req.image.is_empty() {
        return Err(Error::Usage("a job needs --image (or a spec file)".into()));
    }
    Ok(req)
}

/// Writes one line and flushes it.
pub(crate) fn out_line(
    out: &mut (dyn Write + Send),
    text: impl std::fmt::Display,
) -> Result<(), Error> {
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            context: "writing output".into(),
            source,
        })
}

/// A gateway error, as the CLI reports it.
pub(crate) fn api(e: crate::client::ClientError) -> Error {
    Error::Usage(e.to_string())
}

const TERMINAL: [&str; 3] = ["succeeded", "cancelled", "dead_lettered"];

/// Submits a job; with `--wait`/`--follow`, follows it to its end and exits non-zero unless it
/// succeeded.
pub async fn submit(
    server: &ServerArgs,
    args: SubmitArgs,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let req = submit_request(&args)?;
    let client = Client::new(&server.server);
    let body = serde_json::to_value(&req).map_err(|e| Error::Usage(e.to_string()))?;
    let c = client.clone();
    let reply = blocking(move || c.post("/v1/jobs", &body))
        .await
        .map_err(api)?;
    let id = reply["id"].as_str().unwrap_or_default().to_owned();
    if server.json && !(args.wait || args.follow) {
        out_line(out, &reply)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !server.json {
        let note = if reply["existing"].as_bool() == Some(true) {
            " (existing job for this idempotency key)"
        } else {
            ""
        };
        out_line(out, format!("submitted {id}{note}"))?;
    }
    if !(args.wait || args.follow) {
        return Ok(ExitCode::SUCCESS);
    }
    let job = follow_job(&client, &id, args.follow, !server.json, out).await?;
    if server.json {
        out_line(out, &job)?;
    }
    Ok(if job["state"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Polls a job until it ends, printing state changes (and output with `logs`).
pub async fn follow_job(
    client: &Client,
    id: &str,
    logs: bool,
    progress: bool,
    out: &mut (dyn Write + Send),
) -> Result<Value, Error> {
    let mut last = String::new();
    let mut printed: (u64, usize) = (0, 0);
    loop {
        let c = client.clone();
        let path = format!("/v1/jobs/{id}");
        let job = blocking(move || c.get(&path)).await.map_err(api)?;
        let state = job["state"].as_str().unwrap_or("").to_owned();
        let attempt = job["attempt"].as_u64().unwrap_or(0);
        let line = format!("{state} (attempt {attempt})");
        if progress && line != last {
            out_line(out, format!("  {id}  {line}"))?;
            last = line;
        }
        if logs && attempt > 0 {
            let c = client.clone();
            let path = format!("/v1/jobs/{id}/logs?attempt={attempt}");
            let text = blocking(move || c.get_raw(&path)).await.map_err(api)?;
            if printed.0 != attempt {
                printed = (attempt, 0);
            }
            if text.len() > printed.1 {
                let fresh = String::from_utf8_lossy(&text[printed.1..]).to_string();
                write!(out, "{fresh}").map_err(|source| Error::Io {
                    context: "writing output".into(),
                    source,
                })?;
                printed.1 = text.len();
            }
        }
        if TERMINAL.contains(&state.as_str()) {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `gantry jobs`.
pub async fn jobs(
    server: &ServerArgs,
    state: Option<String>,
    queue: Option<String>,
    label: Option<String>,
    limit: usize,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let mut query = vec![format!("limit={limit}")];
    for (k, v) in [("state", state), ("queue", queue), ("label", label)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", v.replace('&', "%26").replace('=', "%3D")));
        }
    }
    let client = Client::new(&server.server);
    let path = format!("/v1/jobs?{}", query.join("&"));
    let reply = blocking(move || client.get(&path)).await.map_err(api)?;
    if server.json {
        out_line(out, &reply)?;
        return Ok(ExitCode::SUCCESS);
    }
    out_line(
        out,
        format!(
            "{:<36}  {:<20}  {:<13}  {:>7}  {:<10}  {}",
            "ID", "NAME", "STATE", "ATTEMPT", "QUEUE", "REASON / LAST CAUSE"
        ),
    )?;
    for job in reply["jobs"].as_array().into_iter().flatten() {
        // A queued job says why it waits; any other says how its last attempt failed.
        let reason = match job["pending"]["message"].as_str() {
            Some(message) if job["state"] == "queued" => message,
            _ => job["last_cause"]["kind"].as_str().unwrap_or(""),
        };
        out_line(
            out,
            format!(
                "{:<36}  {:<20}  {:<13}  {:>7}  {:<10}  {reason}",
                job["id"].as_str().unwrap_or(""),
                job["spec"]["name"].as_str().unwrap_or(""),
                job["state"].as_str().unwrap_or(""),
                job["attempt"],
                job["spec"]["queue"].as_str().unwrap_or(""),
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry job ID`.
pub async fn job(
    server: &ServerArgs,
    id: String,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = Client::new(&server.server);
    let reply = blocking(move || client.get(&format!("/v1/jobs/{id}")))
        .await
        .map_err(api)?;
    if server.json {
        out_line(out, &reply)?;
    } else {
        if reply["state"] == "queued"
            && let Some(message) = reply["pending"]["message"].as_str()
        {
            out_line(out, format!("waiting: {message}"))?;
        }
        for sample in reply["gpu_telemetry"].as_array().into_iter().flatten() {
            let util = sample["utilisation_pct"]
                .as_u64()
                .map_or("?".to_owned(), |u| format!("{u}%"));
            out_line(
                out,
                format!(
                    "gpu {}: util {util} now",
                    sample["uuid"].as_str().unwrap_or("")
                ),
            )?;
        }
        out_line(
            out,
            serde_json::to_string_pretty(&reply).unwrap_or_default(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry logs [-f] ID`.
pub async fn logs(
    server: &ServerArgs,
    id: String,
    follow: bool,
    attempt: Option<u32>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = Client::new(&server.server);
    if follow {
        follow_job(&client, &id, true, false, out).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = match attempt {
        Some(a) => format!("/v1/jobs/{id}/logs?attempt={a}"),
        None => format!("/v1/jobs/{id}/logs"),
    };
    let text = blocking(move || client.get_raw(&path)).await.map_err(api)?;
    out.write_all(&text).map_err(|source| Error::Io {
        context: "writing output".into(),
        source,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `gantry cancel ID`.
pub async fn cancel(
    server: &ServerArgs,
    id: String,
    reason: Option<String>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    post_with_reason(
        server,
        format!("/v1/jobs/{id}/cancel"),
        reason,
        "state",
        out,
    )
    .await
}

/// Posts `{"reason": …}` to `path` and prints the answer: its `id` and its `field`, or JSON.
async fn post_with_reason(
    server: &ServerArgs,
    path: String,
    reason: Option<String>,
    field: &str,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = Client::new(&server.server);
    let body = serde_json::json!({ "reason": reason });
    let reply = blocking(move || client.post(&path, &body))
        .await
        .map_err(api)?;
    if server.json {
        out_line(out, &reply)?;
    } else {
        out_line(
            out,
            format!(
                "{}: {}",
                reply["id"].as_str().unwrap_or(""),
                reply[field].as_str().unwrap_or("")
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry nodes`.
pub async fn nodes(server: &ServerArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let client = Client::new(&server.server);
    let c = client.clone();
    let reply = blocking(move || c.get("/v1/nodes")).await.map_err(api)?;
    if server.json {
        out_line(out, &reply)?;
        return Ok(ExitCode::SUCCESS);
    }
    out_line(
        out,
        format!(
            "{:<28}  {:<8}  {:>9}  {:>15}  {:>5}  {:>9}  {:<8}  {}",
            "NODE", "STATUS", "HEARTBEAT", "FREE CPU/MEM", "GPUS", "FREE GPUS", "EXECUTOR", "NOTE"
        ),
    )?;
    let now_ms = gantry_events::record::now_ns() / 1_000_000;
    for n in reply["nodes"].as_array().into_iter().flatten() {
        let executor = n["executor"].as_str().unwrap_or("");
        let note = if executor == "process" {
            "not a sandbox: jobs run as local processes"
        } else {
            ""
        };
        out_line(
            out,
            format!(
                "{:<28}  {:<8}  {:>9}  {:>15}  {:>5}  {:>9}  {:<8}  {note}",
                n["id"].as_str().unwrap_or(""),
                n["status"].as_str().unwrap_or(""),
                match n["last_heartbeat_ms"].as_u64() {
                    Some(ms) => format!("{:.1}s ago", now_ms.saturating_sub(ms) as f64 / 1000.0),
                    None => "-".into(),
                },
                match n["free"]["cpu_millis"].as_u64() {
                    Some(cpu) => format!(
                        "{}/{} {}/{}G",
                        cpu / 1000,
                        n["cpu_millis"].as_u64().unwrap_or(0) / 1000,
                        n["free"]["memory_bytes"].as_u64().unwrap_or(0) >> 30,
                        n["memory_bytes"].as_u64().unwrap_or(0) >> 30,
                    ),
                    None => format!(
                        "-/{} -/{}G",
                        n["cpu_millis"].as_u64().unwrap_or(0) / 1000,
                        n["memory_bytes"].as_u64().unwrap_or(0) >> 30
                    ),
                },
                n["gpus"].as_array().map_or(0, Vec::len),
                n["free"]["gpus"]
                    .as_array()
                    .map_or("-".to_owned(), |g| g.len().to_string()),
                executor,
            ),
        )?;
        // One line per GPU: what it is and, when sampled, how busy it is now.
        for gpu in n["gpus"].as_array().into_iter().flatten() {
            let uuid = gpu["uuid"].as_str().unwrap_or("");
            let sample = n["gpu_telemetry"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["uuid"] == uuid);
            out_line(out, format!("  {uuid}  {}", gpu_line(gpu, sample)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "NVIDIA H100 80GB HBM3, 80 GiB, util 45%, 12 GiB used, 61°C, 312 W" (what was sampled).
fn gpu_line(gpu: &Value, sample: Option<&Value>) -> String {
    let mut parts = vec![
        gpu["name"].as_str().unwrap_or("").to_owned(),
        format!("{} GiB", gpu["memory_bytes"].as_u64().unwrap_or(0) >> 30),
    ];
    if let Some(s) = sample {
        if let Some(u) = s["utilisation_pct"].as_u64() {
            parts.push(format!("util {u}%"));
        }
        if let Some(m) = s["memory_used_bytes"].as_u64() {
            parts.push(format!("{} GiB used", m >> 30));
        }
        if let Some(t) = s["temperature_c"].as_u64() {
            parts.push(format!("{t}°C"));
        }
        if let Some(w) = s["power_watts"].as_f64() {
            parts.push(format!("{w:.0} W"));
        }
    }
    parts.join(", ")
}

/// `gantry events [--follow]`.
pub async fn events(
    server: &ServerArgs,
    after: u64,
    follow: bool,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = Client::new(&server.server);
    let mut after = after;
    loop {
        let c = client.clone();
        let path = format!("/v1/events?after={after}&limit=1000");
        let reply = blocking(move || c.get(&path)).await.map_err(api)?;
        let events = reply["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            after = e["seq"].as_u64().unwrap_or(after);
            if server.json {
                out_line(out, e)?;
            } else {
                out_line(
                    out,
                    format!(
                        "{:>8} {:<22} {}",
                        e["seq"],
                        e["type"].as_str().unwrap_or("?"),
                        e["event"]
                    ),
                )?;
            }
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `gantry node drain|cordon|uncordon NAME`.
pub async fn change_node(
    server: &ServerArgs,
    name: String,
    action: &'static str,
    reason: Option<String>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    post_with_reason(
        server,
        format!("/v1/nodes/{name}/{action}"),
        reason,
        "status",
        out,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("-1").is_err());
    }
}

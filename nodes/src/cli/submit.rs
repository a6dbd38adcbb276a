//! `gantry submit`: a job from flags or a spec file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use gantry_actors::spec::{GpuAsk, ResourceRequest, RetryRequest, SubmitRequest};
use gantry_events::event::Network;

use super::error::{Error, api};
use super::output::out_line;
use super::server::ServerArgs;
use super::server::follow_job;
use crate::client::blocking;

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
                Some(count) => Some(GpuAsk {
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

/// Submits a job; with `--wait`/`--follow`, follows it to its end and exits non-zero unless it
/// succeeded.
pub async fn submit(
    server: &ServerArgs,
    args: SubmitArgs,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let req = submit_request(&args)?;
    let client = server.client()?;
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

//! `gantry nodes`: the fleet.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use super::error::Error;
use super::output::out_line;
use super::server::{ServerArgs, get_for_table};

/// `gantry nodes`.
pub async fn nodes(server: &ServerArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let Some(reply) = get_for_table(server, "/v1/nodes".into(), out).await? else {
        return Ok(ExitCode::SUCCESS);
    };
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

//! `gantry jobs`: list jobs.

use std::io::Write;
use std::process::ExitCode;

use super::error::Error;
use super::output::out_line;
use super::server::{ServerArgs, get_for_table};

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
    let path = format!("/v1/jobs?{}", query.join("&"));
    let Some(reply) = get_for_table(server, path, out).await? else {
        return Ok(ExitCode::SUCCESS);
    };
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

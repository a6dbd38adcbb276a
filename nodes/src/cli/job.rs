//! `gantry job ID`: one job.

use std::io::Write;
use std::process::ExitCode;

use super::error::{Error, api};
use super::output::out_line;
use super::server::ServerArgs;
use crate::client::blocking;

/// `gantry job ID`.
pub async fn job(
    server: &ServerArgs,
    id: String,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = server.client()?;
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

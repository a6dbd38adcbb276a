//! `gantry artifacts ID [--get NAME [-o FILE]]`: a job's stored outputs, listed or downloaded
//! (streamed to the file, with a progress bar on a terminal).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::error::{Error, api};
use super::output::out_line;
use super::server::{ServerArgs, get_for_table};
use crate::client::blocking;

pub async fn artifacts(
    server: &ServerArgs,
    id: String,
    get: Option<String>,
    output: Option<PathBuf>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let Some(name) = get else {
        let Some(reply) = get_for_table(server, format!("/v1/jobs/{id}/artifacts"), out).await?
        else {
            return Ok(ExitCode::SUCCESS);
        };
        out_line(
            out,
            format!(
                "{:<48}  {:>7}  {:>12}  {}",
                "NAME", "ATTEMPT", "BYTES", "SHA-256"
            ),
        )?;
        for a in reply["artifacts"].as_array().into_iter().flatten() {
            out_line(
                out,
                format!(
                    "{:<48}  {:>7}  {:>12}  {}",
                    a["name"].as_str().unwrap_or(""),
                    a["attempt"].as_u64().unwrap_or(0),
                    a["size_bytes"].as_u64().unwrap_or(0),
                    a["sha256"].as_str().unwrap_or(""),
                ),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let target = output
        .unwrap_or_else(|| PathBuf::from(name.rsplit('/').next().unwrap_or("artifact").to_owned()));
    let client = server.client()?;
    let path = format!("/v1/jobs/{id}/artifacts/{name}");
    let file_path = target.clone();
    let written = blocking(move || {
        let file = std::fs::File::create(&file_path).map_err(|e| {
            crate::client::ClientError::Unreachable {
                url: file_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let mut file = std::io::BufWriter::new(file);
        let bar = std::io::stderr()
            .is_terminal()
            .then(indicatif::ProgressBar::no_length);
        let mut progress = |total: Option<u64>, n: u64| {
            if let (Some(bar), Some(total)) = (&bar, total) {
                bar.set_length(total);
                bar.inc(n);
            }
        };
        let written = client.download(&path, &mut file, &mut progress)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        file.flush()
            .map_err(|e| crate::client::ClientError::Unreachable {
                url: String::new(),
                reason: e.to_string(),
            })?;
        Ok(written)
    })
    .await
    .map_err(|e| {
        let _ = std::fs::remove_file(&target);
        api(e)
    })?;
    out_line(
        out,
        format!("{written} bytes written to {}", target.display()),
    )?;
    Ok(ExitCode::SUCCESS)
}

//! What every command that talks to a running gateway shares: where it is, and following a
//! job to its end.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::error::{Error, api};
use super::output::out_line;
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
    /// A file holding the API key to send. Without it, the key is read from the
    /// `GANTRY_API_KEY` environment variable (never from a flag, which other users could read
    /// in the process list).
    #[arg(long, env = "GANTRY_API_KEY_FILE", global = true)]
    pub api_key_file: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The API key to send, if any.
    pub fn api_key(&self) -> Result<Option<String>, Error> {
        if let Some(path) = &self.api_key_file {
            let key = std::fs::read_to_string(path).map_err(super::error::io_context(format!(
                "reading the API key {}",
                path.display()
            )))?;
            return Ok(Some(key.trim().to_owned()));
        }
        Ok(std::env::var("GANTRY_API_KEY")
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty()))
    }

    /// A client of the gateway that sends the API key.
    pub fn client(&self) -> Result<Client, Error> {
        Ok(Client::new(&self.server).with_key(self.api_key()?))
    }
}

const TERMINAL: [&str; 3] = ["succeeded", "cancelled", "dead_lettered"];

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

/// Posts `{"reason": …}` to `path` and prints the answer: its `id` and its `field`, or JSON.
pub(crate) async fn post_with_reason(
    server: &ServerArgs,
    path: String,
    reason: Option<String>,
    field: &str,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = server.client()?;
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

/// GETs `path` from the gateway: with `--json`, prints the answer and returns `None`; else
/// returns it for the caller to print as a table.
pub(crate) async fn get_for_table(
    server: &ServerArgs,
    path: String,
    out: &mut (dyn Write + Send),
) -> Result<Option<Value>, Error> {
    let client = server.client()?;
    let reply = blocking(move || client.get(&path)).await.map_err(api)?;
    if server.json {
        out_line(out, &reply)?;
        return Ok(None);
    }
    Ok(Some(reply))
}

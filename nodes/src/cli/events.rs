//! `gantry events [--follow]`: the event stream from a gateway.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::error::{Error, api};
use super::output::out_line;
use super::server::ServerArgs;
use crate::client::blocking;

/// `gantry events [--follow]`.
pub async fn events(
    server: &ServerArgs,
    after: u64,
    follow: bool,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = server.client()?;
    let mut after = after;
    loop {
        let c = client.clone();
        let path = format!("/v1/events?after={after}&limit=1000");
        let reply = blocking(move || c.get(&path)).await.map_err(api)?;
        let events = reply["events"].as_array().cloned().unwrap_or_default();
        // The gateway leaves out what this key may not see; `next_after` is where it stopped.
        let next = reply["next_after"].as_u64().unwrap_or_else(|| {
            events
                .last()
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or(after)
        });
        let advanced = next > after;
        after = next;
        for e in &events {
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
        if !advanced {
            if !follow {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

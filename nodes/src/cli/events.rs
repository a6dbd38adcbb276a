//! `gantry events [--follow]`: the event stream from a gateway.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::error::{Error, api};
use super::output::out_line;
use super::server::ServerArgs;
use crate::client::{Client, blocking};

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

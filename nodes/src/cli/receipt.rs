//! `gantry receipt ID [--verify]`: how a job's results were made, each fact citing the event
//! that records it. `--verify` checks every cited event against the log and re-hashes every
//! stored output, naming what does not match; it exits non-zero then.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{Error, api};
use super::output::out_line;
use super::server::ServerArgs;
use crate::client::blocking;

pub async fn receipt(
    server: &ServerArgs,
    id: String,
    verify: bool,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = server.client()?;
    let path = format!("/v1/jobs/{id}/receipt");
    let c = client.clone();
    let receipt = blocking(move || c.get(&path)).await.map_err(api)?;
    let facts = receipt["facts"].as_array().cloned().unwrap_or_default();
    if server.json && !verify {
        out_line(out, &receipt)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !verify {
        for f in &facts {
            out_line(
                out,
                format!(
                    "{:>8}  {:<20}  {}  {}",
                    f["seq"],
                    f["type"].as_str().unwrap_or(""),
                    f["hash"].as_str().unwrap_or(""),
                    f["fact"]
                ),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut problems = Vec::new();
    for f in &facts {
        let seq = f["seq"].as_u64().unwrap_or(0);
        let c = client.clone();
        let page = format!("/v1/events?after={}&limit=1", seq.saturating_sub(1));
        let logged = blocking(move || c.get(&page)).await.map_err(api)?;
        let event = &logged["events"][0];
        if event["seq"].as_u64() != Some(seq) || event["hash"] != f["hash"] {
            problems.push(format!("event {seq} is not what the receipt cites"));
        }
    }
    let outputs: Vec<&Value> = facts
        .iter()
        .filter(|f| f["type"] == "artifact.stored")
        .collect();
    // Outputs retention deleted (recorded in the log) cannot be re-hashed: said, not failed.
    let pruned: Vec<(&str, &str)> = facts
        .iter()
        .filter(|f| f["type"] == "artifact.pruned")
        .map(|f| {
            (
                f["fact"]["output"].as_str().unwrap_or(""),
                f["fact"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for f in &outputs {
        let name = f["fact"]["output"].as_str().unwrap_or("").to_owned();
        if let Some((_, reason)) = pruned.iter().find(|(p, _)| *p == name) {
            out_line(
                out,
                format!("output {name} was pruned by retention ({reason}); not re-hashed"),
            )?;
            continue;
        }
        let c = client.clone();
        let path = format!("/v1/jobs/{id}/artifacts/{name}");
        let got = blocking(move || {
            let mut hasher = HashWriter(Sha256::new());
            c.download(&path, &mut hasher, &mut |_, _| {})?;
            Ok(hex::encode(hasher.0.finalize()))
        })
        .await;
        match got {
            Ok(hash) if Some(hash.as_str()) == f["fact"]["sha256"].as_str() => {}
            Ok(_) => problems.push(format!("output {name} changed since it was stored")),
            Err(e) => problems.push(format!("output {name} unreadable: {e}")),
        }
    }
    for problem in &problems {
        out_line(out, format!("MISMATCH: {problem}"))?;
    }
    if problems.is_empty() {
        out_line(
            out,
            format!(
                "receipt of {id} verified: {} events, {} outputs",
                facts.len(),
                outputs.len()
            ),
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(super::EXIT_BROKEN))
    }
}

/// Hashes what is written to it.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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

/// `gantry receipt ID --verify --offline --key KEY [--file FILE]`: checks every fact of the
/// receipt with the Auditor's key alone — the checkpoint's signature, each entry's hash and
/// that it states the fact about this job, and its inclusion proof against the checkpoint.
pub async fn offline(
    server: &ServerArgs,
    id: String,
    key: String,
    file: Option<std::path::PathBuf>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let verifier = gantry_events::checkpoint::NoteVerifier::parse(&key)
        .map_err(|e| Error::Usage(format!("--key: {e}")))?;
    let receipt: Value = match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(super::error::io_context(
                format!("reading {}", path.display()),
            ))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::Usage(format!("{}: not JSON: {e}", path.display())))?
        }
        None => {
            let client = server.client()?;
            let path = format!("/v1/jobs/{id}/receipt");
            blocking(move || client.get(&path)).await.map_err(api)?
        }
    };
    let problems = check_offline(&receipt, &id, &verifier);
    for problem in &problems {
        out_line(out, format!("MISMATCH: {problem}"))?;
    }
    if problems.is_empty() {
        let facts = receipt["facts"].as_array().map_or(0, Vec::len);
        out_line(
            out,
            format!(
                "receipt of {id} verified offline: {facts} facts proven in the signed log (each fact is in it; that none was left out is not proven)"
            ),
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(super::EXIT_BROKEN))
    }
}

/// What is wrong with a receipt, checked with the verifier key alone.
fn check_offline(
    receipt: &Value,
    id: &str,
    verifier: &gantry_events::checkpoint::NoteVerifier,
) -> Vec<String> {
    use base64::Engine;
    use gantry_events::merkle::{leaf_hash, verify_inclusion};
    use gantry_events::{Entry, Hash, Verifier};
    let mut problems = Vec::new();
    if receipt["job"].as_str() != Some(id) {
        problems.push(format!(
            "the receipt is of job {}, not {id}",
            receipt["job"]
        ));
    }
    let checkpoint = match receipt["checkpoint"]
        .as_str()
        .map(|note| verifier.open(note))
    {
        Some(Ok(checkpoint)) => checkpoint,
        Some(Err(e)) => return vec![format!("the receipt's checkpoint: {e}")],
        None => {
            return vec![
                "the receipt carries no signed checkpoint yet (the Auditor signs one every few seconds; fetch it again)"
                    .into(),
            ];
        }
    };
    let facts = receipt["facts"].as_array().cloned().unwrap_or_default();
    if facts.is_empty() {
        problems.push("the receipt states no facts".into());
    }
    // A state the receipt claims must be among its facts (each of which is proven below).
    let ended = |t: &str| facts.iter().any(|f| f["type"] == t);
    let claimed = receipt["state"].as_str().unwrap_or("");
    for (state, event) in [
        ("succeeded", "job.succeeded"),
        ("cancelled", "job.cancelled"),
        ("dead_lettered", "job.dead_lettered"),
    ] {
        if claimed == state && !ended(event) {
            problems.push(format!(
                "the receipt says {state}, and states no {event} fact"
            ));
        }
    }
    for f in &facts {
        let seq = f["seq"].as_u64().unwrap_or(0);
        let bytes = match f["entry"]
            .as_str()
            .map(|e| base64::engine::general_purpose::STANDARD.decode(e))
        {
            Some(Ok(bytes)) => bytes,
            _ => {
                problems.push(format!("fact {seq}: no readable entry"));
                continue;
            }
        };
        let entry = Entry {
            seq,
            bytes: bytes.into(),
        };
        // The entry's hash is SHA-256(prev ‖ record), its record at its sequence.
        let prev = entry.view().map(|v| v.prev).unwrap_or(Hash::GENESIS);
        if let Err(broken) = Verifier::anchored(seq, prev).push(&entry) {
            problems.push(format!("fact {seq}: {}", broken.fault));
            continue;
        }
        let Ok(envelope) = entry.open() else {
            problems.push(format!("fact {seq}: the entry does not decode"));
            continue;
        };
        if Some(envelope.hash.to_hex().as_str()) != f["hash"].as_str() {
            problems.push(format!(
                "fact {seq}: the receipt cites another hash than its entry's"
            ));
        }
        if envelope.event.job_id().map(|j| j.to_string()).as_deref() != Some(id) {
            problems.push(format!("fact {seq}: the entry is not about job {id}"));
        }
        if f["type"].as_str() != Some(envelope.type_name.as_str())
            || f["fact"] != gantry_gateway::receipt_fact(&envelope.event)
            || f["time_ns"].as_u64() != Some(envelope.time_ns)
        {
            problems.push(format!(
                "fact {seq}: the receipt states something its entry does not"
            ));
        }
        let proof: Option<Vec<Hash>> = serde_json::from_value(f["proof"].clone()).ok();
        match proof {
            Some(proof)
                if seq >= 1
                    && verify_inclusion(
                        &leaf_hash(&envelope.hash.0),
                        seq - 1,
                        checkpoint.size,
                        &proof,
                        &checkpoint.root,
                    ) => {}
            Some(_) => problems.push(format!(
                "fact {seq}: its entry is not in the log of {} entries the checkpoint signs",
                checkpoint.size
            )),
            None => problems.push(format!("fact {seq}: no inclusion proof")),
        }
    }
    problems
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

//! `gantry audit`: the Auditor's public key, its signed checkpoints, Merkle proofs against
//! them, checking a proof offline with the public key alone, and watching a gantry's
//! checkpoints for a rollback or a split view.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use gantry_events::checkpoint::{Checkpoint, NoteVerifier};
use gantry_events::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use gantry_gateway::audit::{ConsistencyProof, InclusionProof};

use super::EXIT_BROKEN;
use super::error::{Error, api, io_context};
use super::output::out_line;
use super::server::ServerArgs;
use crate::client::blocking;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the Auditor's verifier key (`name+keyid+base64`), for checking its checkpoints;
    /// creates the signing key if there is none yet.
    Key {
        #[command(flatten)]
        audit: crate::audit::AuditOptions,
    },
    /// Print the latest checkpoint the Auditor signed (or the one of `--size` entries).
    Checkpoint {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        size: Option<u64>,
    },
    /// Print a Merkle proof from the gateway as JSON; with `--key`, check it too.
    #[command(subcommand)]
    Prove(ProveCommand),
    /// Check a proof (a file `gantry audit prove` wrote, `-` for stdin) offline, with the
    /// Auditor's verifier key alone.
    VerifyProof {
        file: PathBuf,
        /// The Auditor's verifier key (`gantry audit key`).
        #[arg(long)]
        key: String,
        /// For a consistency proof: a checkpoint of its `from` size the caller trusts (saved
        /// earlier). Without it, the proof's own signed `from` checkpoint is used.
        #[arg(long)]
        from_checkpoint: Option<PathBuf>,
    },
    /// Fetch the gateway's signed checkpoint every `--every`, check its signature, and check
    /// that it extends the last one seen (a consistency proof): exits 1 naming a rollback, a
    /// split view (two roots for one size) or a history that does not extend.
    Watch(WatchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProveCommand {
    /// That entry `--seq` is in the log of `--size` entries (default: the latest signed
    /// checkpoint's).
    Inclusion {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        size: Option<u64>,
        /// Check the proof with this verifier key before printing it.
        #[arg(long)]
        key: Option<String>,
    },
    /// That the log of `--from` entries is a prefix of the log of `--to` entries (default:
    /// the latest signed checkpoint's).
    Consistency {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
        /// Check the proof with this verifier key before printing it.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Read the checkpoint from the fleet's NATS KV bucket (`gantry_checkpoints`) instead of
    /// the gateway (proofs still come from the gateway).
    #[command(flatten)]
    pub nats: crate::nats::NatsArgs,
    /// The Auditor's verifier key (`gantry audit key`).
    #[arg(long)]
    pub key: String,
    /// Where the last checkpoint seen is kept between runs (a rollback across restarts of
    /// the watcher is caught too).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Check once and exit.
    #[arg(long)]
    pub once: bool,
}

pub(crate) async fn audit(
    command: AuditCommand,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    match command {
        AuditCommand::Key { audit } => {
            let signer = audit.signer().map_err(|e| Error::Usage(e.to_string()))?;
            out_line(out, signer.verifier_key())?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint { server, size } => {
            let note = fetch_note(&server, size).await?;
            write!(out, "{note}").map_err(io_context("writing output"))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prove(ProveCommand::Inclusion {
            server,
            seq,
            size,
            key,
        }) => {
            let size = size.map(|s| format!("&size={s}")).unwrap_or_default();
            let proof = fetch(
                &server,
                format!("/v1/audit/proof/inclusion?seq={seq}{size}"),
            )
            .await?;
            out_line(out, &proof)?;
            match key {
                Some(key) => report(out, check_inclusion_json(&proof, &verifier(&key)?)),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        AuditCommand::Prove(ProveCommand::Consistency {
            server,
            from,
            to,
            key,
        }) => {
            let to = to.map(|s| format!("&to={s}")).unwrap_or_default();
            let proof = fetch(
                &server,
                format!("/v1/audit/proof/consistency?from={from}{to}"),
            )
            .await?;
            out_line(out, &proof)?;
            match key {
                Some(key) => report(out, check_consistency_json(&proof, &verifier(&key)?, None)),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        AuditCommand::VerifyProof {
            file,
            key,
            from_checkpoint,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(io_context("reading stdin"))?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(io_context(format!("reading {}", file.display())))?
            };
            let proof: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Usage(format!("{}: not JSON: {e}", file.display())))?;
            let verifier = verifier(&key)?;
            let trusted = match from_checkpoint {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(io_context(format!("reading {}", path.display())))?,
                ),
                None => None,
            };
            let checked = if proof.get("seq").is_some() {
                check_inclusion_json(&proof, &verifier)
            } else {
                check_consistency_json(&proof, &verifier, trusted.as_deref())
            };
            report(out, checked)
        }
        AuditCommand::Watch(args) => watch(args, out).await,
    }
}

fn verifier(key: &str) -> Result<NoteVerifier, Error> {
    NoteVerifier::parse(key).map_err(|e| Error::Usage(format!("--key: {e}")))
}

/// Prints what a check found; exit 1 when it failed.
fn report(
    out: &mut (dyn Write + Send),
    checked: Result<String, String>,
) -> Result<ExitCode, Error> {
    match checked {
        Ok(line) => {
            out_line(out, format!("proof ok: {line}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            out_line(out, format!("PROOF FAILED: {why}"))?;
            Ok(ExitCode::from(EXIT_BROKEN))
        }
    }
}

async fn fetch(server: &ServerArgs, path: String) -> Result<serde_json::Value, Error> {
    let client = server.client()?;
    blocking(move || client.get(&path)).await.map_err(api)
}

async fn fetch_note(server: &ServerArgs, size: Option<u64>) -> Result<String, Error> {
    let client = server.client()?;
    let path = match size {
        Some(size) => format!("/v1/audit/checkpoint?size={size}"),
        None => "/v1/audit/checkpoint".to_owned(),
    };
    let raw = blocking(move || client.get_raw(&path)).await.map_err(api)?;
    String::from_utf8(raw).map_err(|_| Error::Usage("the checkpoint is not UTF-8".into()))
}

/// Opens a signed note, naming what it is.
fn open(verifier: &NoteVerifier, note: Option<&str>, what: &str) -> Result<Checkpoint, String> {
    let note =
        note.ok_or_else(|| format!("no signed checkpoint of the {what} size comes with it"))?;
    verifier
        .open(note)
        .map_err(|e| format!("the {what} checkpoint: {e}"))
}

/// Checks an inclusion proof against its signed checkpoint.
pub(crate) fn check_inclusion(
    proof: &InclusionProof,
    verifier: &NoteVerifier,
) -> Result<String, String> {
    let checkpoint = open(verifier, proof.checkpoint.as_deref(), "proof's")?;
    if checkpoint.size != proof.size || checkpoint.root != proof.root {
        return Err(format!(
            "the proof is about a log of {} entries with root {}, the signed checkpoint about {} entries with root {}",
            proof.size, proof.root, checkpoint.size, checkpoint.root
        ));
    }
    if proof.seq == 0
        || !verify_inclusion(
            &leaf_hash(&proof.entry_hash.0),
            proof.seq - 1,
            proof.size,
            &proof.proof,
            &checkpoint.root,
        )
    {
        return Err(format!(
            "entry {} with hash {} is not in the signed log of {} entries",
            proof.seq, proof.entry_hash, proof.size
        ));
    }
    Ok(format!(
        "entry {} ({}) is in the log {} of {} entries signed by {}",
        proof.seq,
        proof.entry_hash,
        checkpoint.origin,
        checkpoint.size,
        verifier.name()
    ))
}

fn check_inclusion_json(
    proof: &serde_json::Value,
    verifier: &NoteVerifier,
) -> Result<String, String> {
    let proof: InclusionProof = serde_json::from_value(proof.clone())
        .map_err(|e| format!("not an inclusion proof: {e}"))?;
    check_inclusion(&proof, verifier)
}

/// Checks a consistency proof: its `to` checkpoint must be signed, and its `from` root must be
/// the one of `trusted` (a checkpoint the caller kept) or, without one, of its own signed
/// `from` checkpoint (the empty log needs none).
pub(crate) fn check_consistency(
    proof: &ConsistencyProof,
    verifier: &NoteVerifier,
    trusted: Option<&str>,
) -> Result<String, String> {
    let to = open(verifier, proof.to_checkpoint.as_deref(), "`to`")?;
    if to.size != proof.to || to.root != proof.to_root {
        return Err(format!(
            "the proof's `to` log ({} entries, root {}) is not the signed one ({} entries, root {})",
            proof.to, proof.to_root, to.size, to.root
        ));
    }
    // A checkpoint the caller trusts binds the proof's start, whatever size the proof
    // names (a proof "from 0" extends every history, so it must not stand in for one).
    if trusted.is_some() || proof.from > 0 {
        let from = open(
            verifier,
            trusted.or(proof.from_checkpoint.as_deref()),
            "`from`",
        )?;
        if from.size != proof.from {
            return Err(format!(
                "the proof starts from a log of {} entries, not the trusted one of {}",
                proof.from, from.size
            ));
        }
        if from.root != proof.from_root {
            return Err(format!(
                "the trusted log of {} entries has root {}, the proof starts from root {}: the history was rewritten",
                from.size, from.root, proof.from_root
            ));
        }
    }
    if !verify_consistency(
        proof.from,
        proof.to,
        &proof.from_root,
        &proof.to_root,
        &proof.proof,
    ) {
        return Err(format!(
            "the log of {} entries is not a prefix of the log of {} entries: the history was rewritten",
            proof.from, proof.to
        ));
    }
    Ok(format!(
        "the log {} of {} entries extends the one of {} entries",
        to.origin, proof.to, proof.from
    ))
}

fn check_consistency_json(
    proof: &serde_json::Value,
    verifier: &NoteVerifier,
    trusted: Option<&str>,
) -> Result<String, String> {
    let proof: ConsistencyProof = serde_json::from_value(proof.clone())
        .map_err(|e| format!("not a consistency proof: {e}"))?;
    check_consistency(&proof, verifier, trusted)
}

/// Where `watch` reads checkpoints from.
enum Source {
    Gateway,
    Kv(Box<crate::audit::KvSink>),
}

async fn watch(args: WatchArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    use gantry_actors::actor::auditor::CheckpointSink;
    let verifier = verifier(&args.key)?;
    let source = match &args.nats.url {
        Some(_) => {
            let client = args
                .nats
                .connect("gantry audit watch", None)
                .await
                .map_err(|e| Error::Usage(e.to_string()))?;
            let js = async_nats::jetstream::new(client);
            let kv = js
                .get_key_value(crate::audit::CHECKPOINT_BUCKET)
                .await
                .map_err(|e| Error::Usage(format!("the checkpoint bucket: {e}")))?;
            Source::Kv(Box::new(crate::audit::KvSink(kv)))
        }
        None => Source::Gateway,
    };
    let mut last: Option<(String, Checkpoint)> = match &args.state {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(note) => {
                let checkpoint = verifier
                    .open(&note)
                    .map_err(|e| Error::Usage(format!("the state {}: {e}", path.display())))?;
                Some((note, checkpoint))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_context(format!("reading {}", path.display()))(e)),
        },
        None => None,
    };
    loop {
        let note = match &source {
            Source::Gateway => fetch_note(&args.server, None).await,
            Source::Kv(kv) => kv
                .last()
                .await
                .map_err(Error::Usage)?
                .ok_or_else(|| Error::Usage("no checkpoint in the bucket yet".into())),
        };
        // A proof the gateway cannot give yet (its views behind the bucket, a restart) is
        // waited for like a checkpoint: `last` stays as it is.
        let checked = match note {
            Ok(note) => check_next(&args.server, &verifier, last.as_ref(), &note)
                .await
                .map(|checked| (note, checked)),
            Err(error) => Err(error),
        };
        match checked {
            Ok((note, checked)) => match checked {
                Ok((line, checkpoint)) => {
                    out_line(out, line)?;
                    if let Some(path) = &args.state {
                        crate::audit::FileSink::write_now(path, &note)
                            .map_err(io_context(format!("writing {}", path.display())))?;
                    }
                    last = Some((note, checkpoint));
                }
                Err(why) => {
                    out_line(out, format!("CHECKPOINT REFUSED: {why}"))?;
                    return Ok(ExitCode::from(EXIT_BROKEN));
                }
            },
            // Not there yet (no checkpoint signed, the gateway restarting): try again.
            Err(error) if !args.once => out_line(out, format!("waiting: {error}"))?,
            Err(error) => return Err(error),
        }
        out.flush().map_err(io_context("writing output"))?;
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(args.every).await;
    }
}

/// Checks a new signed note against the last one seen.
async fn check_next(
    server: &ServerArgs,
    verifier: &NoteVerifier,
    last: Option<&(String, Checkpoint)>,
    note: &str,
) -> Result<Result<(String, Checkpoint), String>, Error> {
    let checkpoint = match verifier.open(note) {
        Ok(checkpoint) => checkpoint,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some((last_note, seen)) = last else {
        return Ok(Ok((
            format!(
                "checkpoint {} of {} entries, root {}: signed",
                checkpoint.origin, checkpoint.size, checkpoint.root
            ),
            checkpoint,
        )));
    };
    if checkpoint.origin != seen.origin {
        return Ok(Err(format!(
            "the checkpoint is of log {:?}, not {:?}",
            checkpoint.origin, seen.origin
        )));
    }
    if checkpoint.size < seen.size {
        return Ok(Err(format!(
            "rollback: the log now has {} entries, and {} were signed before",
            checkpoint.size, seen.size
        )));
    }
    if checkpoint.size == seen.size {
        return Ok(if checkpoint.root == seen.root {
            Ok((
                format!("checkpoint of {} entries: unchanged", checkpoint.size),
                checkpoint,
            ))
        } else {
            Err(format!(
                "split view: two signed roots for {} entries ({} before, {} now)",
                seen.size, seen.root, checkpoint.root
            ))
        });
    }
    let proof = fetch(
        server,
        format!(
            "/v1/audit/proof/consistency?from={}&to={}",
            seen.size, checkpoint.size
        ),
    )
    .await?;
    let mut proof: ConsistencyProof = match serde_json::from_value(proof) {
        Ok(proof) => proof,
        Err(e) => return Ok(Err(format!("not a consistency proof: {e}"))),
    };
    if proof.from != seen.size || proof.to != checkpoint.size {
        return Ok(Err(format!(
            "asked for a proof from {} to {} entries, the gateway answered one from {} to {}",
            seen.size, checkpoint.size, proof.from, proof.to
        )));
    }
    // The checkpoint being checked is the `to` one, whatever the gateway sends with the proof.
    proof.to_checkpoint = Some(note.to_owned());
    Ok(check_consistency(&proof, verifier, Some(last_note)).map(|line| (line, checkpoint)))
}

//! `gantry log status|verify|tail|export`: inspect, verify and export the event log,
//! embedded or on JetStream.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use futures::StreamExt;
use gantry_events::checkpoint::{Checkpoint, NoteVerifier};
use gantry_events::file::{FLAG_BATCH_END, FrameEnd, FrameReader, HEADER_LEN, Header};
use gantry_events::{
    Break, EmbeddedLog, Entry, EventLog, Fault, Hash, Verified, Verifier, verify_log,
};

use gantry_events::merkle::Frontier;

use super::EXIT_BROKEN;
use super::error::{Error, io_context};
use super::output::write_out;
use crate::jetstream::{JetStreamLog, JetStreamOptions};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Head, size and health of the log.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check the hash chain. Exits 0 and prints the count and head hash when it holds,
    /// 1 and the first bad sequence when it does not.
    Verify(VerifyArgs),
    /// Print events from a sequence on.
    Tail(TailArgs),
    /// Write the log (or its tail) to a file that `gantry log verify --file` checks offline.
    Export(ExportArgs),
}

/// Which log to use: the embedded store (default) or a NATS JetStream server.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory of the embedded store.
    #[arg(long, env = "GANTRY_DATA", default_value = "gantry-data")]
    pub data: PathBuf,
    /// Use the JetStream log on this NATS server instead of the embedded store.
    #[arg(long, env = "GANTRY_NATS_URL")]
    pub nats: Option<String>,
    /// JetStream stream holding the log.
    #[arg(long, env = "GANTRY_STREAM", default_value = "GANTRY_EVENTS")]
    pub stream: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Verify an exported log file offline instead (no server, no store).
    #[arg(long, conflicts_with = "nats")]
    pub file: Option<PathBuf>,
    /// First sequence to check.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Last sequence to check (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// A signed checkpoint the log was promised to hold: the log must reach its size and have
    /// its Merkle root there (catches a cut tail and a history rewritten with fresh hashes,
    /// which the chain alone cannot).
    /// With `--file`, the export must start at entry 1. The whole log is verified then (not
    /// with `--from`/`--to`).
    #[arg(long, requires = "key", conflicts_with_all = ["from", "to"])]
    pub checkpoint: Option<PathBuf>,
    /// The verifier key the checkpoint must be signed with (`name+keyid+base64`).
    #[arg(long, requires = "checkpoint")]
    pub key: Option<String>,
    /// With `--file`, for an export that starts after entry 1: the hash of the entry before
    /// it, taken from a log you trust. The export's own anchor must be that hash; without
    /// it, the anchor is only the file's claim (said in the output).
    #[arg(long, requires = "file")]
    pub anchor: Option<String>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// First sequence to print.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Keep printing new events as they are appended.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// File to write.
    #[arg(long)]
    pub out: PathBuf,
    /// First sequence to export.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
}

/// Whether a command appends to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Appends: takes the embedded store's lock.
    ReadWrite,
    /// Only reads: works beside a running `gantry up`.
    ReadOnly,
}

/// Opens the log the arguments name.
pub async fn open_log(store: &StoreArgs, access: Access) -> Result<Arc<dyn EventLog>, Error> {
    Ok(match &store.nats {
        Some(url) => Arc::new(
            JetStreamLog::connect(JetStreamOptions {
                url: url.clone(),
                stream: store.stream.clone(),
                ..JetStreamOptions::default()
            })
            .await?,
        ),
        None if access == Access::ReadOnly => {
            Arc::new(EmbeddedLog::open_read_only(&store.data).await?)
        }
        None => Arc::new(EmbeddedLog::open(&store.data).await?),
    })
}

fn describe(store: &StoreArgs) -> String {
    match &store.nats {
        Some(url) => format!("JetStream stream {} on {url}", store.stream),
        None => format!("embedded store {}", store.data.display()),
    }
}

fn exit_for(verified: &Result<Verified, Break>) -> ExitCode {
    match verified {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_BROKEN),
    }
}

fn print_verified(
    out: &mut (dyn Write + Send),
    verified: &Result<Verified, Break>,
) -> Result<(), Error> {
    match verified {
        Ok(v) => write_out(
            out,
            format_args!(
                "  chain     ok: {} events verified, head {} = {}\n",
                v.count, v.last_seq, v.head
            ),
        ),
        Err(b) => write_out(
            out,
            format_args!("  chain     BROKEN at sequence {}: {}\n", b.seq, b.fault),
        ),
    }
}

pub(crate) async fn status(
    store: &StoreArgs,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let log = open_log(store, Access::ReadOnly).await?;
    let head = log.head().await?;
    let verified = verify_log(&*log, 1, None).await?;
    write_out(out, format_args!("log       {}\n", describe(store)))?;
    write_out(
        out,
        format_args!("head      {} = {}\n", head.seq, head.hash),
    )?;
    print_verified(out, &verified)?;
    Ok(exit_for(&verified))
}

pub(crate) async fn verify(
    args: VerifyArgs,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let (verified, promised) = match &args.file {
        Some(file) => {
            let promised = match (&args.checkpoint, &args.key) {
                (Some(path), Some(key)) => Some(match open_checkpoint(path, key)? {
                    Ok(checkpoint) => file_meets(file, &checkpoint)?,
                    Err(why) => Err(why),
                }),
                _ => None,
            };
            let anchored = check_anchor(file, args.anchor.as_deref())?;
            if let Err(why) = &anchored {
                write_out(out, format_args!("ANCHOR NOT MET: {why}\n"))?;
                return Ok(ExitCode::from(EXIT_BROKEN));
            }
            if let Ok(Some(note)) = &anchored
                && !args.json
            {
                write_out(out, format_args!("note: {note}\n"))?;
            }
            (verify_file(file, args.from, args.to)?, promised)
        }
        None => {
            let log = open_log(&args.store, Access::ReadOnly).await?;
            let promised = match (&args.checkpoint, &args.key) {
                (Some(path), Some(key)) => Some(match open_checkpoint(path, key)? {
                    Ok(checkpoint) => log_meets(&*log, &checkpoint).await?,
                    Err(why) => Err(why),
                }),
                _ => None,
            };
            (verify_log(&*log, args.from, args.to).await?, promised)
        }
    };
    if let Some(promised) = &promised {
        match promised {
            Ok(line) => write_out(
                out,
                format_args!(
                    "checkpoint ok: {line}
"
                ),
            )?,
            Err(why) => write_out(
                out,
                format_args!(
                    "CHECKPOINT NOT MET: {why}
"
                ),
            )?,
        }
        if promised.is_err() {
            return Ok(ExitCode::from(EXIT_BROKEN));
        }
    }
    if args.json {
        let json = match &verified {
            Ok(v) => serde_json::json!({ "ok": true, "count": v.count, "first_seq": v.first_seq,
                "last_seq": v.last_seq, "head": v.head }),
            Err(b) => serde_json::json!({ "ok": false, "seq": b.seq, "fault": b.fault,
                "message": b.to_string() }),
        };
        write_out(out, format_args!("{json}\n"))?;
    } else {
        match &verified {
            Ok(v) => write_out(
                out,
                format_args!(
                    "ok: {} events verified (sequences {}..={}), head {}\n",
                    v.count, v.first_seq, v.last_seq, v.head
                ),
            )?,
            Err(b) => write_out(
                out,
                format_args!("BROKEN at sequence {}: {}\n", b.seq, b.fault),
            )?,
        }
    }
    Ok(exit_for(&verified))
}

/// Reads a signed checkpoint and checks its signature by `key`: `Ok(Err(why))` when it is not
/// signed by that key; `Err` when the file or the key cannot be read.
fn open_checkpoint(path: &Path, key: &str) -> Result<Result<Checkpoint, String>, Error> {
    let note =
        std::fs::read_to_string(path).map_err(io_context(format!("reading {}", path.display())))?;
    let verifier = NoteVerifier::parse(key).map_err(|e| Error::Usage(format!("--key: {e}")))?;
    Ok(verifier.open(&note).map_err(|e| e.to_string()))
}

/// Whether a log of which `count` entries were read from entry 1 (at most the checkpoint's
/// size), their tree being `tree`, meets the checkpoint: as many as it covers, with its root.
fn meets(checkpoint: &Checkpoint, count: u64, tree: &Frontier) -> Result<String, String> {
    if count < checkpoint.size {
        return Err(format!(
            "the log ends at sequence {count} but the signed checkpoint covers {} entries: its tail was cut",
            checkpoint.size
        ));
    }
    if tree.root() != checkpoint.root {
        return Err(format!(
            "the log's Merkle root at size {} is not the one the checkpoint signed: the history was rewritten",
            checkpoint.size
        ));
    }
    Ok(format!(
        "the log holds the {} entries the checkpoint of {} covers, with its root",
        checkpoint.size, checkpoint.origin
    ))
}

/// Checks a log against a signed checkpoint: it must reach its size and have its Merkle root
/// there. `Ok(Ok(what held))`, `Ok(Err(what is wrong))`; `Err` only when the log cannot be
/// read.
async fn log_meets(
    log: &dyn EventLog,
    checkpoint: &Checkpoint,
) -> Result<Result<String, String>, Error> {
    match gantry_events::merkle::frontier_of(log, checkpoint.size).await {
        Ok(tree) => Ok(meets(checkpoint, tree.size(), &tree)),
        Err(gantry_events::Error::Broken { seq, reason }) => {
            Ok(Err(format!("entry {seq}: {reason}")))
        }
        Err(error) => Err(error.into()),
    }
}

/// Checks an export against a signed checkpoint (the export must start at entry 1).
fn file_meets(path: &Path, checkpoint: &Checkpoint) -> Result<Result<String, String>, Error> {
    let (header, mut frames) = open_export(path)?;
    if header.first_seq != 1 {
        return Ok(Err(format!(
            "the export starts at entry {}: a checkpoint's root covers the log from entry 1",
            header.first_seq
        )));
    }
    let mut tree = Frontier::new();
    while tree.size() < checkpoint.size {
        let Some(frame) = frames
            .next_frame()
            .map_err(io_context(format!("reading {}", path.display())))?
        else {
            break;
        };
        let entry = Entry {
            seq: tree.size() + 1,
            bytes: frame.entry,
        };
        match entry.stored_hash() {
            Ok(hash) => tree.push(&hash),
            Err(error) => return Ok(Err(format!("entry {}: {error}", entry.seq))),
        }
    }
    Ok(meets(checkpoint, tree.size(), &tree))
}

/// Opens an export (or a copy of a store's `events.log`): its header, and a reader of the
/// frames after it. Exports written before frame checksums (format 1) still read.
fn open_export(path: &Path) -> Result<(Header, FrameReader<BufReader<std::fs::File>>), Error> {
    let file =
        std::fs::File::open(path).map_err(io_context(format!("opening {}", path.display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN];
    std::io::Read::read_exact(&mut reader, &mut header).map_err(io_context(format!(
        "reading the header of {}",
        path.display()
    )))?;
    let (header, format) =
        Header::decode_any(&header).map_err(|reason| gantry_events::Error::NotALog {
            path: path.to_owned(),
            reason,
        })?;
    Ok((
        header,
        FrameReader::with_format(reader, HEADER_LEN as u64, format),
    ))
}

/// Checks an export's anchor: an export from entry 1 must be anchored at genesis; a later one
/// at `trusted` when given. `Ok(Ok(Some(note)))`: the anchor could not be checked (said).
fn check_anchor(
    path: &Path,
    trusted: Option<&str>,
) -> Result<Result<Option<String>, String>, Error> {
    let (header, _) = open_export(path)?;
    if header.first_seq <= 1 {
        return Ok(if header.anchor == Hash::GENESIS {
            Ok(None)
        } else {
            Err(format!(
                "the export starts at entry 1 but claims the anchor {}: an export from entry 1 is anchored at genesis",
                header.anchor
            ))
        });
    }
    let before = header.first_seq - 1;
    Ok(match trusted {
        None => Ok(Some(format!(
            "the export starts at entry {}; its anchor, the hash of entry {before} ({}), is the file's own claim: pass --anchor with entry {before}'s hash from a log you trust",
            header.first_seq, header.anchor
        ))),
        Some(text) => match Hash::from_hex(text.trim()) {
            Some(hash) if hash == header.anchor => Ok(None),
            Some(hash) => Err(format!(
                "the export's anchor is {}, but entry {before} of the trusted log is {hash}: the export was forged or is of another log",
                header.anchor
            )),
            None => return Err(Error::Usage("--anchor: a 64-digit hex hash".into())),
        },
    })
}

/// Verifies an exported file (or a copy of an embedded store's `events.log`) offline.
pub fn verify_file(
    path: &Path,
    from: u64,
    to: Option<u64>,
) -> Result<Result<Verified, Break>, Error> {
    let (header, mut frames) = open_export(path)?;
    let to = to.unwrap_or(u64::MAX);
    // Entries before `from` are skipped; the last one skipped anchors the check.
    let mut anchor = header.anchor;
    let mut verifier: Option<Verifier> = None;
    let mut seq = header.first_seq;
    while seq <= to {
        let Some(frame) = frames
            .next_frame()
            .map_err(io_context(format!("reading {}", path.display())))?
        else {
            break;
        };
        let entry = Entry {
            seq,
            bytes: frame.entry,
        };
        seq += 1;
        if entry.seq < from {
            anchor = entry.stored_hash().unwrap_or(Hash::GENESIS);
            continue;
        }
        let verifier = verifier.get_or_insert_with(|| Verifier::anchored(entry.seq, anchor));
        if let Err(broken) = verifier.push(&entry) {
            return Ok(Err(broken));
        }
    }
    match frames.end() {
        Some(FrameEnd::Torn { offset }) | Some(FrameEnd::Corrupt { offset, .. }) if seq <= to => {
            Ok(Err(Break {
                seq,
                fault: Fault::Undecodable {
                    reason: format!("frame at byte {offset} is cut short or impossible"),
                },
            }))
        }
        _ => Ok(verifier.map_or(
            Ok(Verified {
                count: 0,
                first_seq: 0,
                last_seq: 0,
                head: anchor,
            }),
            |v| v.finish(),
        )),
    }
}

pub(crate) async fn tail(args: TailArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let log = open_log(&args.store, Access::ReadOnly).await?;
    let from = args.from.max(1);
    if args.follow {
        let mut events = log.subscribe(from).await?;
        while let Some(entry) = events.next().await {
            print_entry(out, &entry?, args.json)?;
            out.flush().map_err(io_context("writing output"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let head = log.head().await?;
    let mut next = from;
    while next <= head.seq {
        let entries = log.read(next, 1000).await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in &entries {
            print_entry(out, entry, args.json)?;
        }
        next = last + 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entry(out: &mut (dyn Write + Send), entry: &Entry, json: bool) -> Result<(), Error> {
    let envelope = match entry.open() {
        Ok(envelope) => envelope,
        Err(e) => {
            return write_out(out, format_args!("{:>8} <undecodable: {e}>\n", entry.seq));
        }
    };
    if json {
        let line =
            serde_json::to_string(&envelope).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        write_out(out, format_args!("{line}\n"))
    } else {
        let payload = serde_json::to_string(&envelope.event).unwrap_or_default();
        write_out(
            out,
            format_args!(
                "{:>8} {} {:<22} {}/{} {}\n",
                envelope.seq,
                envelope.time_rfc3339(),
                envelope.type_name,
                envelope.source.node,
                envelope.source.actor,
                payload
            ),
        )
    }
}

pub(crate) async fn export(
    args: ExportArgs,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let log = open_log(&args.store, Access::ReadOnly).await?;
    let from = args.from.max(1);
    let anchor = if from == 1 {
        Hash::GENESIS
    } else {
        let before = log.read(from - 1, 1).await?;
        let entry = before
            .first()
            .ok_or_else(|| Error::Usage(format!("the log has no sequence {}", from - 1)))?;
        entry
            .stored_hash()
            .map_err(|e| Error::Usage(format!("sequence {}: {e}", from - 1)))?
    };
    let head = log.head().await?;
    let tmp = args.out.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(io_context(format!("creating {}", tmp.display())))?,
    );
    let write_err = io_context(format!("writing {}", tmp.display()));
    let mut buf = Header {
        first_seq: from,
        anchor,
    }
    .encode()
    .to_vec();
    let mut next = from;
    let mut count = 0u64;
    let mut last_hash = anchor;
    while next <= head.seq {
        let entries = log.read(next, 4096).await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in entries.iter().filter(|e| e.seq <= head.seq) {
            gantry_events::file::write_frame(&mut buf, &entry.bytes, FLAG_BATCH_END);
            last_hash = entry.stored_hash().unwrap_or(Hash::GENESIS);
            count += 1;
        }
        file.write_all(&buf).map_err(|e| Error::Io {
            context: "writing export".into(),
            source: e,
        })?;
        buf.clear();
        next = last + 1;
    }
    file.write_all(&buf).map_err(write_err)?;
    let file = file.into_inner().map_err(|e| Error::Io {
        context: "flushing export".into(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_context("syncing export"))?;
    std::fs::rename(&tmp, &args.out)
        .map_err(io_context(format!("renaming to {}", args.out.display())))?;
    write_out(
        out,
        format_args!(
            "exported {count} events ({from}..={}) to {}, head {last_hash}\n",
            from + count.saturating_sub(1),
            args.out.display()
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

//! The embedded log: one append-only file on local disk, the default backend.
//!
//! One writer thread owns appends. It takes every request waiting in its queue, seals them into
//! one buffer, writes that buffer with a single `pwrite`, calls `fdatasync` once, and only then
//! publishes the new head and acknowledges each request: group commit. Readers use positional
//! reads on their own file handle and only ever see entries that are already durable.
//!
//! # Opening: torn writes and damage
//!
//! On open, the file is scanned to rebuild the in-memory index of frame offsets, and what
//! follows the last intact frame is judged. The rule rests on what the writer does: it
//! acknowledges a batch only after the `fdatasync` that covers its batch-end frame, and it
//! writes the next group only after that sync. So only the bytes after the last acknowledged
//! batch end can be unfinished, and a crash or power loss can leave there only a prefix of the
//! last write (the file ends inside a frame), or the file grown to its new length with the
//! sectors that never landed reading as zeros, from a sector boundary to the end of the file.
//!
//! Let X be the first frame that is not intact (impossible header, cut short by the end of the
//! file, or, in format 2, a checksum mismatch). What follows X is a *torn tail*, never
//! acknowledged, when:
//!
//! 1. every byte from X to the end of the file is zero (a zero-filled tail);
//! 2. the file ends inside the frame at X, and (format 2) neither is that frame intact once
//!    its length is taken to reach the end of the file, nor does an intact frame start after X
//!    (either would mean a damaged length field, not an unfinished write);
//! 3. (format 2) the frame at X lies inside the file, its checksum fails, and every byte from
//!    the last sector boundary inside it to the end of the file is zero (its length landed, the
//!    rest of it did not).
//!
//! A torn tail, with the frames of an unfinished batch before it, is moved aside into
//! `events.log.torn-<offset>` (unless it is all zeros, which carries nothing) and cut off, so
//! a batch is all or nothing even across a power loss, and appends go on.
//!
//! Anything else is damage to what was acknowledged: a flipped bit keeps the file's length
//! and leaves no zero-filled sectors at its end, so it matches none of the rules, wherever the
//! frame is, last or not. Then nothing in the file is changed: the store refuses appends with
//! an error naming the sequence and the byte offset ([`EmbeddedLog::damage`],
//! [`EventLog::fault`]), and reads go on, the damaged frame included when its length is
//! possible, so `verify` can name the fault. The rule errs towards damage: a power loss that
//! landed a later sector of the last write but not an earlier one is reported as damage too,
//! and an operator looks, rather than risk cutting off an acknowledged batch.
//!
//! A format 1 store (no checksums) keeps format 1: it is read, recovered with rules 1 and 2,
//! its last entry checked against the chain, and appended in format 1. `events/FORMAT.md`
//! section 4 says how to move it to format 2.
//!
//! # A failed sync
//!
//! After a failed `fdatasync` the kernel may have dropped the dirty pages: what is on disk is
//! unknown, so the writer stops taking writes (the log is *poisoned*, see
//! [`EventLog::fault`]) until the store is reopened and its tail re-checked.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::file::{self, FLAG_BATCH_END, Format, Frame, FrameEnd, FrameReader, HEADER_LEN, Header};
use crate::log::{Appended, EventLog, Head, MAX_ENTRY_BYTES, Subscription, check_batch};
use crate::record::seal_into;
use crate::{Entry, Error, Hash, NewEvent};

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "events.log";

/// Requests waiting for the writer; senders wait when it is full.
const QUEUE_DEPTH: usize = 4096;
/// Longest a group commit waits for the writers of the previous group to come back. A sync
/// takes about as long, so this at most doubles one lone writer's latency after a busy spell.
const GATHER_MAX: Duration = Duration::from_micros(200);
/// Most events sealed into one group commit.
const GROUP_MAX_EVENTS: usize = 65_536;
/// Most bytes returned by one read.
const READ_MAX_BYTES: u64 = 16 << 20;
/// How often a read-only subscription looks for entries another process appended.
const READ_ONLY_POLL: Duration = Duration::from_millis(100);
/// Entries fetched per step while a subscription catches up.
const SUBSCRIBE_CHUNK: usize = 1024;
/// Bytes read at a time when recovery looks at or copies a tail.
const TAIL_CHUNK: usize = 64 << 10;

/// The embedded, file-backed event log.
#[derive(Debug)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// Damage found when the store was opened: where, and what is wrong. Appends are refused
/// while it stands; the file is left exactly as it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Sequence of the damaged entry: the one its frame holds (or would hold).
    pub seq: u64,
    /// Offset of the damaged frame's first byte in the file.
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl Damage {
    /// The error appends (and reads past the damage) answer with.
    fn error(&self) -> Error {
        Error::Broken {
            seq: self.seq,
            reason: format!("frame at byte {}: {}", self.offset, self.reason),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sequence {} (frame at byte {}): {}",
            self.seq, self.offset, self.reason
        )
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Read handle; positional reads only.
    file: File,
    /// The store's frame layout; appends keep it.
    format: Format,
    index: RwLock<Index>,
    /// Follows the durable head; ends when the writer stops.
    heads: watch::Receiver<Head>,
    /// Set at open when the stored chain does not add up; appends are refused.
    damage: Option<Damage>,
    /// Set once by the writer when a write could not be undone or a sync failed: why appends
    /// are refused from then on. Shared so that [`EventLog::fault`] can report it.
    poisoned: OnceLock<String>,
    /// Test hook ([`EmbeddedLog::inject_sync_failure`]): the next sync fails.
    fail_next_sync: AtomicBool,
    /// Opened without the lock, beside a writer in another process: picks up that writer's
    /// appends by re-reading the file, never writes.
    read_only: bool,
}

#[derive(Debug)]
struct Index {
    /// `offsets[i]` is where the frame of sequence `i + 1` starts.
    offsets: Vec<u64>,
    /// End of the last durable frame.
    end: u64,
    head: Head,
}

type Reply = oneshot::Sender<Result<Vec<Appended>, Error>>;

#[derive(Debug)]
struct Request {
    batch: Vec<NewEvent>,
    reply: Reply,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`. Fails with [`Error::Locked`] if another process
    /// has it open.
    pub async fn open(dir: impl AsRef<Path>) -> Result<EmbeddedLog, Error> {
        let dir = dir.as_ref().to_owned();
        tokio::task::spawn_blocking(move || open_blocking(&dir))
            .await
            .map_err(|e| Error::backend("open task", e))?
    }

    /// Opens the log for reading only, without taking the lock, so it can be inspected while
    /// another process appends to it. Appends fail with [`Error::Closed`]; new entries written
    /// by the other process become visible as it commits them.
    pub async fn open_read_only(dir: impl AsRef<Path>) -> Result<EmbeddedLog, Error> {
        let dir = dir.as_ref().to_owned();
        tokio::task::spawn_blocking(move || open_read_only_blocking(&dir))
            .await
            .map_err(|e| Error::backend("open task", e))?
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The store's frame layout: format 2 for stores created by this build, format 1 for
    /// older ones, which stay in format 1.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// Where the store is damaged (sequence and byte offset), if opening found damage.
    pub fn damage(&self) -> Option<&Damage> {
        self.inner.damage.as_ref()
    }

    /// Test hook: makes the next group commit's `fdatasync` fail as a failing disk's would,
    /// so tests can see what a failed sync does without one. Never called by gantry itself.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.inner.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// Stops the writer after the appends already queued and releases the file lock.
    pub async fn close(mut self) -> Result<(), Error> {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| Error::backend("close task", e))?
                .map_err(|_| Error::backend("close", "writer thread panicked"))?;
        }
        Ok(())
    }
}

fn open_blocking(dir: &Path) -> Result<EmbeddedLog, Error> {
    fs::create_dir_all(dir)?;
    let path = dir.join(LOG_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(path)),
        Err(fs::TryLockError::Error(e)) => return Err(e.into()),
    }

    let len = file.metadata()?.len();
    let fresh = Header::GENESIS.encode();
    if (len as usize) < HEADER_LEN {
        // Either new, or a crash while the header was being written: a prefix of a fresh
        // header is safe to complete. Anything else is someone else's file.
        let mut existing = Vec::new();
        file.read_to_end(&mut existing)?;
        if existing[..] != fresh[..existing.len()] {
            return Err(Error::NotALog {
                path,
                reason: "too short for a header".into(),
            });
        }
        file.write_all_at(&fresh, 0)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
    }

    let format = check_header(&file, &path)?;
    let recovered = recover(&file, &path, format, true)?;
    let (head_tx, heads) = watch::channel(recovered.index.head);
    let inner = Arc::new(Inner {
        path,
        file: file.try_clone()?,
        format,
        index: RwLock::new(recovered.index),
        heads,
        damage: recovered.damage,
        poisoned: OnceLock::new(),
        fail_next_sync: AtomicBool::new(false),
        read_only: false,
    });
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("gantry-log-writer".into())
            .spawn(move || write_loop(file, inner, rx, head_tx))?
    };
    Ok(EmbeddedLog {
        inner,
        requests: Some(tx),
        writer: Some(writer),
    })
}

/// The file must start with a store's header (first sequence 1); returns its frame layout.
fn check_header(file: &File, path: &Path) -> Result<Format, Error> {
    let not_a_log = |reason: String| Error::NotALog {
        path: path.to_owned(),
        reason,
    };
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| not_a_log("too short for a header".into()))?;
    let (header, format) = Header::decode_any(&header).map_err(not_a_log)?;
    if header != Header::GENESIS {
        return Err(not_a_log(
            "a store must start at sequence 1 (is this an export?)".into(),
        ));
    }
    Ok(format)
}

fn open_read_only_blocking(dir: &Path) -> Result<EmbeddedLog, Error> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path)?;
    let format = check_header(&file, &path)?;
    let recovered = recover(&file, &path, format, false)?;
    let (_, heads) = watch::channel(recovered.index.head);
    Ok(EmbeddedLog {
        inner: Arc::new(Inner {
            path,
            file,
            format,
            index: RwLock::new(recovered.index),
            heads,
            damage: recovered.damage,
            poisoned: OnceLock::new(),
            fail_next_sync: AtomicBool::new(false),
            read_only: true,
        }),
        requests: None,
        writer: None,
    })
}

/// Read-only handles: picks up entries another process committed since the last look. A frame
/// that is not intact yet (the other writer is still writing it) ends the look; only whole
/// batches are taken.
fn refresh(inner: &Inner) -> Result<(), Error> {
    if !inner.read_only || inner.damage.is_some() {
        return Ok(());
    }
    let len = inner.file.metadata()?.len();
    let (end, count) = {
        let index = read_index(inner);
        (index.end, index.offsets.len() as u64)
    };
    if len <= end {
        return Ok(());
    }
    let mut tail = vec![0u8; (len - end) as usize];
    inner.file.read_exact_at(&mut tail, end)?;
    let mut frames = FrameReader::with_format(&tail[..], end, inner.format);
    let mut offsets = Vec::new();
    let mut committed = 0;
    let mut committed_end = end;
    let mut head = None;
    while let Some(frame) = frames.next_frame()? {
        offsets.push(frame.offset);
        if frame.flags & FLAG_BATCH_END != 0 {
            committed = offsets.len();
            committed_end = frame.end(inner.format);
            head = Some(frame.entry);
        }
    }
    let Some(head_bytes) = head else {
        return Ok(());
    };
    offsets.truncate(committed);
    let seq = count + committed as u64;
    let hash = Entry {
        seq,
        bytes: head_bytes,
    }
    .stored_hash()
    .unwrap_or(Hash::GENESIS);
    let mut index = inner.index.write().unwrap_or_else(|e| e.into_inner());
    if index.end == end {
        index.offsets.extend_from_slice(&offsets);
        index.end = committed_end;
        index.head = Head { seq, hash };
    }
    Ok(())
}

struct Recovered {
    index: Index,
    damage: Option<Damage>,
}

/// Frames seen so far by recovery: every offset, and what the last committed batch ends with.
struct Scan {
    format: Format,
    offsets: Vec<u64>,
    /// Frames up to and including the last batch end.
    committed: usize,
    /// Where the last batch-end frame ends: the file is cut there if the rest is torn.
    committed_end: u64,
    /// Where the last frame seen ends.
    parsed_end: u64,
    /// The last two committed entries, to check the head without keeping every entry.
    last_two: [Option<Bytes>; 2],
    /// The entry of the frame before, when it is in the batch still open.
    open_batch_last: Option<Bytes>,
}

impl Scan {
    fn new(format: Format) -> Scan {
        Scan {
            format,
            offsets: Vec::new(),
            committed: 0,
            committed_end: HEADER_LEN as u64,
            parsed_end: HEADER_LEN as u64,
            last_two: [None, None],
            open_batch_last: None,
        }
    }

    fn push(&mut self, frame: Frame) {
        self.offsets.push(frame.offset);
        self.parsed_end = frame.end(self.format);
        if frame.flags & FLAG_BATCH_END != 0 {
            self.committed = self.offsets.len();
            self.committed_end = self.parsed_end;
            let before = self
                .open_batch_last
                .take()
                .or_else(|| self.last_two[1].take());
            self.last_two = [before, Some(frame.entry)];
        } else {
            self.open_batch_last = Some(frame.entry);
        }
    }

    /// The sequence the next frame holds.
    fn next_seq(&self) -> u64 {
        self.offsets.len() as u64 + 1
    }

    /// The index, its head at the last batch end. A healthy store indexes only what was
    /// committed, so no reader sees an unfinished batch. A damaged one indexes every frame
    /// read (`everything`): nothing will be cut, and `verify` must be able to read up to the
    /// damage to name it; subscribers still stop at the head.
    fn into_index(mut self, everything: bool) -> Index {
        let end = if everything {
            self.parsed_end
        } else {
            self.offsets.truncate(self.committed);
            self.committed_end
        };
        Index {
            head: head_of(&self.last_two, self.committed as u64),
            offsets: self.offsets,
            end,
        }
    }
}

/// Scans the frames, tells a torn tail from damage (see the module docs), cuts off a torn
/// tail (only when `repair`; a reader just ignores it), and checks the last kept entry.
fn recover(file: &File, path: &Path, format: Format, repair: bool) -> Result<Recovered, Error> {
    let file_len = file.metadata()?.len();
    let mut reader = file.try_clone()?;
    reader.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    let mut frames = FrameReader::with_format(
        BufReader::with_capacity(1 << 20, reader),
        HEADER_LEN as u64,
        format,
    );
    let mut scan = Scan::new(format);
    let mut mismatched = None;
    while let Some((frame, mismatch)) = frames.next_frame_or_mismatch()? {
        match mismatch {
            None => scan.push(frame),
            Some(mismatch) => {
                mismatched = Some((frame, mismatch));
                break;
            }
        }
    }

    // The first frame that is not intact, if any: torn (`Ok`, where) or damage (`Err`).
    let verdict: Option<Result<u64, Damage>> = match mismatched {
        Some((frame, mismatch)) => {
            let end = frame.end(format);
            let partly_written = match file::last_sector_boundary_inside(frame.offset, end) {
                Some(boundary) => all_zero(file, boundary, file_len)?,
                None => false,
            };
            if partly_written {
                Some(Ok(frame.offset))
            } else {
                let damage = Damage {
                    seq: scan.next_seq(),
                    offset: frame.offset,
                    reason: mismatch.to_string(),
                };
                // Read on past it, damaged frames included, so readers (and `verify`) see
                // everything the file holds after the damage.
                scan.push(frame);
                while let Some((frame, _)) = frames.next_frame_or_mismatch()? {
                    scan.push(frame);
                }
                Some(Err(damage))
            }
        }
        None => match frames.end().cloned() {
            Some(FrameEnd::Torn { offset }) => {
                // Shorter than one frame, so it fits in memory.
                let mut tail = vec![0u8; (file_len - offset) as usize];
                file.read_exact_at(&mut tail, offset)?;
                match file::cut_short_is_damage(&tail, format) {
                    None => Some(Ok(offset)),
                    Some(reason) => Some(Err(Damage {
                        seq: scan.next_seq(),
                        offset,
                        reason,
                    })),
                }
            }
            Some(FrameEnd::Corrupt { offset, reason }) => {
                if all_zero(file, offset, file_len)? {
                    Some(Ok(offset))
                } else {
                    Some(Err(Damage {
                        seq: scan.next_seq(),
                        offset,
                        reason,
                    }))
                }
            }
            Some(FrameEnd::Clean) | None => None,
        },
    };

    if let Some(Err(damage)) = verdict {
        // Not a torn write: keep every byte and refuse appends.
        tracing::error!(
            path = %path.display(),
            seq = damage.seq,
            offset = damage.offset,
            reason = %damage.reason,
            "event log is damaged; appends refused, file left as found"
        );
        return Ok(Recovered {
            index: scan.into_index(true),
            damage: Some(damage),
        });
    }

    // Everything after the last batch end was never acknowledged: the frames of an unfinished
    // batch, and the torn tail after them.
    let keep_end = scan.committed_end;
    if let Some(Ok(torn_at)) = verdict {
        debug_assert!(
            torn_at >= keep_end,
            "only frames after the last batch end are cut"
        );
    }

    // The last kept entry must be sound before anything is cut off after it.
    let seq = scan.committed as u64;
    if let Some(newest) = &scan.last_two[1] {
        let offset = scan.offsets[scan.committed - 1];
        let entry = Entry {
            seq,
            bytes: newest.clone(),
        };
        let anchor = match &scan.last_two[0] {
            Some(before) => Entry {
                seq: seq - 1,
                bytes: before.clone(),
            }
            .stored_hash()
            .ok(),
            None => Some(Hash::GENESIS),
        };
        let mut verifier = match anchor {
            Some(prev) => crate::Verifier::anchored(seq, prev),
            None => crate::Verifier::unanchored(seq),
        }
        .check_payloads(false);
        if let Err(broken) = verifier.push(&entry) {
            tracing::error!(
                path = %path.display(),
                seq,
                offset,
                fault = %broken.fault,
                "event log head is damaged; appends refused, file left as found"
            );
            return Ok(Recovered {
                index: scan.into_index(true),
                damage: Some(Damage {
                    seq,
                    offset,
                    reason: broken.fault.to_string(),
                }),
            });
        }
    }

    if repair && keep_end < file_len {
        cut_tail(file, path, keep_end, file_len)?;
    }
    Ok(Recovered {
        index: scan.into_index(false),
        damage: None,
    })
}

/// Whether every byte of the file from `from` to `to` is zero.
fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; TAIL_CHUNK];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(buf.len(), |left| left.min(buf.len()));
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Cuts the file at `keep_end`, first copying what is cut to `events.log.torn-<keep_end>`
/// beside it (synced, so the bytes survive even if the cut is followed by a power loss),
/// unless it is all zeros: a zero-filled tail carries nothing worth keeping.
fn cut_tail(file: &File, path: &Path, keep_end: u64, file_len: u64) -> Result<(), Error> {
    let zeros = all_zero(file, keep_end, file_len)?;
    let aside = path.with_extension(format!("log.torn-{keep_end}"));
    if !zeros {
        let mut out = File::create(&aside)?;
        let mut buf = vec![0u8; TAIL_CHUNK];
        let mut at = keep_end;
        while at < file_len {
            let n = usize::try_from(file_len - at).map_or(buf.len(), |left| left.min(buf.len()));
            file.read_exact_at(&mut buf[..n], at)?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        out.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    file.set_len(keep_end)?;
    file.sync_all()?;
    if zeros {
        tracing::warn!(
            path = %path.display(),
            offset = keep_end,
            bytes = file_len - keep_end,
            "cut off a zero-filled tail left by an interrupted write"
        );
    } else {
        tracing::warn!(
            path = %path.display(),
            offset = keep_end,
            bytes = file_len - keep_end,
            kept_at = %aside.display(),
            "cut off an unacknowledged tail left by an interrupted write"
        );
    }
    Ok(())
}

fn head_of(last_two: &[Option<Bytes>; 2], seq: u64) -> Head {
    match &last_two[1] {
        Some(bytes) => Head {
            seq,
            hash: Entry {
                seq,
                bytes: bytes.clone(),
            }
            .stored_hash()
            .unwrap_or(Hash::GENESIS),
        },
        None => Head::EMPTY,
    }
}

/// Marks the log as refusing appends from now on, keeping the first reason given.
fn poison(inner: &Inner, reason: String) {
    let _ = inner.poisoned.set(reason);
}

fn write_loop(
    file: File,
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<Request>,
    head_tx: watch::Sender<Head>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut group: Vec<Request> = Vec::new();
    // Requests in the previous group: when that many writers were active, wait briefly for
    // them to come back before syncing, rather than syncing for whoever happened to be first.
    let mut expected = 1usize;
    while let Some(first) = requests.blocking_recv() {
        let mut events = first.batch.len();
        group.push(first);
        let gather_until = Instant::now() + GATHER_MAX;
        while events < GROUP_MAX_EVENTS {
            match requests.try_recv() {
                Ok(next) => {
                    events += next.batch.len();
                    group.push(next);
                }
                Err(TryRecvError::Empty)
                    if group.len() < expected && Instant::now() < gather_until =>
                {
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        expected = group.len();

        if let Some(damage) = &inner.damage {
            for req in group.drain(..) {
                let _ = req.reply.send(Err(damage.error()));
            }
            continue;
        }
        if inner.poisoned.get().is_some() {
            for req in group.drain(..) {
                let _ = req.reply.send(Err(Error::Poisoned));
            }
            continue;
        }

        let (start_head, end) = {
            let index = read_index(&inner);
            (index.head, index.end)
        };
        let mut head = start_head;
        let mut offsets = Vec::with_capacity(events);
        let mut sealed: Vec<(Reply, Vec<Appended>)> = Vec::with_capacity(group.len());
        buf.clear();
        for req in group.drain(..) {
            let mark = (buf.len(), offsets.len(), head);
            match seal_batch(
                &req.batch,
                inner.format,
                &mut head,
                end,
                &mut buf,
                &mut offsets,
            ) {
                Ok(appended) => sealed.push((req.reply, appended)),
                Err(e) => {
                    // This request alone is rejected; the rest of the group goes ahead.
                    buf.truncate(mark.0);
                    offsets.truncate(mark.1);
                    head = mark.2;
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if buf.is_empty() {
            continue;
        }

        if let Err(e) = file.write_all_at(&buf, end) {
            // Nothing was acknowledged; put the file back as it was.
            if let Err(undo) = file.set_len(end).and_then(|()| file.sync_data()) {
                tracing::error!(
                    path = %inner.path.display(),
                    error = %e,
                    undo_error = %undo,
                    offset = end,
                    "event log write failed and could not be undone; refusing further writes"
                );
                poison(
                    &inner,
                    format!("a failed write could not be undone: {undo}"),
                );
            } else {
                tracing::error!(path = %inner.path.display(), error = %e, offset = end, "event log write failed");
            }
            reply_all(sealed, || {
                Error::Io(io::Error::new(e.kind(), e.to_string()))
            });
            continue;
        }
        let synced = if inner.fail_next_sync.swap(false, Ordering::SeqCst) {
            Err(io::Error::other("injected sync failure"))
        } else {
            file.sync_data()
        };
        if let Err(e) = synced {
            // After a failed fsync the kernel may have dropped the dirty pages: what is on
            // disk is unknown, so stop taking writes (reopening re-checks the tail).
            tracing::error!(
                path = %inner.path.display(),
                error = %e,
                first_seq = start_head.seq + 1,
                last_seq = head.seq,
                offset = end,
                "event log fsync failed; refusing further writes"
            );
            poison(&inner, format!("fdatasync failed: {e}"));
            reply_all(sealed, || Error::Poisoned);
            continue;
        }

        {
            let mut index = inner.index.write().unwrap_or_else(|e| e.into_inner());
            debug_assert_eq!(index.head, start_head, "only the writer moves the head");
            index.offsets.extend_from_slice(&offsets);
            index.end = end + buf.len() as u64;
            index.head = head;
            debug_assert_eq!(index.offsets.len() as u64, head.seq);
        }
        head_tx.send_replace(head);
        for (reply, appended) in sealed {
            let _ = reply.send(Ok(appended));
        }
        if buf.capacity() > 64 << 20 {
            buf = Vec::with_capacity(1 << 20);
        }
    }
}

fn reply_all(sealed: Vec<(Reply, Vec<Appended>)>, error: impl Fn() -> Error) {
    for (reply, _) in sealed {
        let _ = reply.send(Err(error()));
    }
}

/// Seals one batch after `head` into `buf` as frames of `format`, recording frame offsets
/// relative to the file.
fn seal_batch(
    batch: &[NewEvent],
    format: Format,
    head: &mut Head,
    file_end: u64,
    buf: &mut Vec<u8>,
    offsets: &mut Vec<u64>,
) -> Result<Vec<Appended>, Error> {
    let overhead = format.frame_overhead();
    let mut appended = Vec::with_capacity(batch.len());
    for (i, event) in batch.iter().enumerate() {
        let seq = head.seq + 1;
        // Frame header first, filled in once the entry is sealed after it.
        let frame = buf.len();
        buf.resize(frame + overhead, 0);
        let hash = seal_into(buf, seq, &head.hash, event)?;
        let len = buf.len() - frame - overhead;
        if len > MAX_ENTRY_BYTES {
            return Err(Error::EntryTooLarge {
                type_name: event.event.type_name(),
                size: len,
                max: MAX_ENTRY_BYTES,
            });
        }
        let flags = if i + 1 == batch.len() {
            FLAG_BATCH_END
        } else {
            0
        };
        file::seal_frame(&mut buf[frame..], flags, format);
        offsets.push(file_end + frame as u64);
        *head = Head { seq, hash };
        appended.push(Appended {
            seq,
            id: event.id,
            hash,
        });
    }
    Ok(appended)
}

fn read_index(inner: &Inner) -> std::sync::RwLockReadGuard<'_, Index> {
    inner.index.read().unwrap_or_else(|e| e.into_inner())
}

/// Reads up to `max` durable entries from `from`.
fn read_blocking(inner: &Inner, from: u64, max: usize) -> Result<Vec<Entry>, Error> {
    if from == 0 {
        return Err(Error::InvalidSequence(0));
    }
    if inner.read_only && from > read_index(inner).head.seq {
        refresh(inner)?;
    }
    let (start, stop, last) = {
        let index = read_index(inner);
        let count = index.offsets.len() as u64;
        if from > count || max == 0 {
            // A damaged store never seems to end cleanly: a read past its last frame meets the
            // damage, so `verify` names it even when the chain itself holds (only a frame's
            // checksum was hit), as the refused appends do.
            return match &inner.damage {
                Some(damage) if max > 0 => Err(damage.error()),
                _ => Ok(Vec::new()),
            };
        }
        let start = index.offsets[(from - 1) as usize];
        let mut last = count.min(from.saturating_add(max as u64 - 1));
        // Keep one read under READ_MAX_BYTES (but always at least one entry).
        let within = index
            .offsets
            .partition_point(|&o| o <= start + READ_MAX_BYTES) as u64;
        last = last.min(within.max(from));
        let stop = if last == count {
            index.end
        } else {
            index.offsets[last as usize]
        };
        (start, stop, last)
    };
    let mut buf = vec![0u8; (stop - start) as usize];
    inner.file.read_exact_at(&mut buf, start)?;
    let entries = file::parse_frames(&Bytes::from(buf), from, inner.format)
        .map_err(|reason| Error::Broken { seq: from, reason })?;
    debug_assert_eq!(entries.len() as u64, last - from + 1);
    Ok(entries)
}

impl EventLog for EmbeddedLog {
    fn append(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Appended>, Error>> {
        async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            check_batch(&batch)?;
            let requests = self.requests.as_ref().ok_or(Error::Closed)?;
            let (reply, answer) = oneshot::channel();
            requests
                .send(Request { batch, reply })
                .await
                .map_err(|_| Error::Closed)?;
            answer.await.map_err(|_| Error::Closed)?
        }
        .boxed()
    }

    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Entry>, Error>> {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || read_blocking(&inner, from, max))
                .await
                .map_err(|e| Error::backend("read task", e))?
        }
        .boxed()
    }

    fn head(&self) -> BoxFuture<'_, Result<Head, Error>> {
        let inner = self.inner.clone();
        async move {
            if inner.read_only {
                let refresh_inner = inner.clone();
                tokio::task::spawn_blocking(move || refresh(&refresh_inner))
                    .await
                    .map_err(|e| Error::backend("read task", e))??;
            }
            Ok(read_index(&inner).head)
        }
        .boxed()
    }

    fn fault(&self) -> Option<String> {
        if let Some(damage) = &self.inner.damage {
            return Some(format!(
                "event log is damaged at {damage}; appends refused until an operator looks"
            ));
        }
        self.inner.poisoned.get().map(|reason| {
            format!("event log refuses appends since {reason}; reopening re-checks its tail")
        })
    }

    fn subscribe(&self, from: u64) -> BoxFuture<'_, Result<Subscription, Error>> {
        let inner = self.inner.clone();
        async move {
            if from == 0 {
                return Err(Error::InvalidSequence(0));
            }
            let state = Follow {
                heads: inner.heads.clone(),
                inner,
                next: from,
                ready: VecDeque::new(),
                done: false,
            };
            let stream = futures::stream::unfold(state, Follow::step);
            Ok(stream.boxed())
        }
        .boxed()
    }
}

struct Follow {
    inner: Arc<Inner>,
    heads: watch::Receiver<Head>,
    next: u64,
    ready: VecDeque<Entry>,
    done: bool,
}

impl Follow {
    async fn step(mut self) -> Option<(Result<Entry, Error>, Follow)> {
        loop {
            if let Some(entry) = self.ready.pop_front() {
                return Some((Ok(entry), self));
            }
            if self.done {
                return None;
            }
            // Mark the head seen before reading, so an append that lands after this line
            // wakes `changed` below.
            let head = if self.inner.read_only {
                read_index(&self.inner).head
            } else {
                *self.heads.borrow_and_update()
            };
            if self.next <= head.seq {
                let inner = self.inner.clone();
                let next = self.next;
                // Never past the head: a damaged store indexes frames after it.
                let max = usize::try_from(head.seq - next + 1)
                    .map_or(SUBSCRIBE_CHUNK, |left| left.min(SUBSCRIBE_CHUNK));
                let read = tokio::task::spawn_blocking(move || read_blocking(&inner, next, max))
                    .await
                    .map_err(|e| Error::backend("read task", e))
                    .and_then(|r| r);
                match read {
                    Ok(entries) => {
                        self.next += entries.len() as u64;
                        self.ready.extend(entries);
                    }
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
                continue;
            }
            if self.inner.read_only {
                // No writer in this process to wake us: look at the file now and then.
                tokio::time::sleep(READ_ONLY_POLL).await;
                let inner = self.inner.clone();
                let refreshed = tokio::task::spawn_blocking(move || refresh(&inner))
                    .await
                    .map_err(|e| Error::backend("read task", e))
                    .and_then(|r| r);
                if let Err(e) = refreshed {
                    self.done = true;
                    return Some((Err(e), self));
                }
                continue;
            }
            if self.heads.changed().await.is_err() {
                // The writer stopped: the log is closed.
                return None;
            }
        }
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Dropping the sender lets the writer finish what is queued and exit.
        self.requests = None;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::event::NodeLost;
    use crate::file::FRAME_OVERHEAD;
    use crate::{Source, seal, verify, verify_log};

    fn lost(i: u64) -> NewEvent {
        lost_because(i, "test")
    }

    fn lost_because(i: u64, reason: &str) -> NewEvent {
        NewEvent::new(
            Source::new("n1", "test"),
            NodeLost {
                node_id: format!("node-{i}"),
                reason: reason.into(),
            },
        )
    }

    async fn all(log: &EmbeddedLog) -> Vec<Entry> {
        log.read(1, usize::MAX).await.expect("read")
    }

    /// A store in `dir` holding batches of the given sizes, closed; its path, head and bytes.
    async fn store_with(dir: &Path, batches: &[u64]) -> (PathBuf, Head, Vec<u8>) {
        let log = EmbeddedLog::open(dir).await.expect("open");
        let mut next = 1;
        for &size in batches {
            log.append((next..next + size).map(lost).collect())
                .await
                .expect("append");
            next += size;
        }
        let head = log.head().await.expect("head");
        let path = log.path().to_owned();
        log.close().await.expect("close");
        let bytes = fs::read(&path).expect("read");
        (path, head, bytes)
    }

    /// Every frame of a format 2 store's bytes.
    fn frames_of(bytes: &[u8]) -> Vec<Frame> {
        let mut reader = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame().expect("io") {
            frames.push(frame);
        }
        assert_eq!(reader.end(), Some(&FrameEnd::Clean), "a sound store");
        frames
    }

    fn torn_files(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".torn-"))
            .collect()
    }

    /// A torn tail was cut off: the store is back to `bytes`, healthy, at `head`, and takes the
    /// next append at the sequence after it.
    async fn check_recovered(dir: &Path, path: &Path, bytes: &[u8], head: Head) {
        let log = EmbeddedLog::open(dir).await.expect("reopen");
        assert_eq!(log.damage(), None);
        assert_eq!(log.fault(), None);
        assert_eq!(log.head().await.expect("head"), head);
        assert_eq!(
            fs::read(path).expect("read"),
            bytes,
            "cut back to the last batch"
        );
        let appended = log.append(vec![lost(99)]).await.expect("append goes on");
        assert_eq!(appended[0].seq, head.seq + 1);
        log.close().await.expect("close");
        let log = EmbeddedLog::open(dir).await.expect("reopen");
        assert_eq!(
            verify(&all(&log).await).expect("verifies").count,
            head.seq + 1
        );
    }

    /// Damage at `seq`, frame at `offset`, was found: appends are refused naming both, reads
    /// go on, `verify` names the sequence, and the file is exactly `bytes`, even after the
    /// refused appends and another open.
    async fn check_damaged(dir: &Path, path: &Path, bytes: &[u8], seq: u64, offset: u64) {
        for _ in 0..2 {
            let log = EmbeddedLog::open(dir).await.expect("open a damaged store");
            let damage = log.damage().expect("damage found");
            assert_eq!((damage.seq, damage.offset), (seq, offset), "{damage}");
            for attempt in 0..2 {
                let err = log
                    .append(vec![lost(99)])
                    .await
                    .expect_err("appends refused");
                assert!(
                    matches!(err, Error::Broken { seq: s, .. } if s == seq),
                    "attempt {attempt}: {err}"
                );
                let message = err.to_string();
                assert!(
                    message.contains(&format!("sequence {seq}"))
                        && message.contains(&format!("byte {offset}")),
                    "{message}"
                );
            }
            let fault = log.fault().expect("a damaged log says why");
            assert!(
                fault.contains(&format!("sequence {seq}"))
                    && fault.contains(&format!("byte {offset}")),
                "{fault}"
            );
            let broken = verify_log(&log, 1, None)
                .await
                .expect("log answers")
                .expect_err("verify finds the damage");
            assert_eq!(broken.seq, seq, "{broken}");
            let before = verify_log(&log, 1, Some(seq - 1))
                .await
                .expect("log answers")
                .expect("the chain before the damage holds");
            assert_eq!(before.last_seq, seq - 1);
            log.close().await.expect("close");
            assert_eq!(fs::read(path).expect("read"), bytes, "not one byte changed");
            assert!(torn_files(dir).is_empty(), "nothing moved aside");
        }
    }

    /// Case (a): a power loss after the file grew but before the new bytes landed.
    #[tokio::test]
    async fn zero_filled_tail_is_cut_off_and_appends_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head, bytes) = store_with(dir.path(), &[3, 2]).await;
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(bytes.len() as u64 + 3 * 4096).expect("grow");
        drop(file);

        check_recovered(dir.path(), &path, &bytes, head).await;
        assert!(torn_files(dir.path()).is_empty(), "zeros are not kept");
    }

    /// Case (b): a crash halfway through a two-event batch: the first frame landed, the
    /// second (with the batch-end flag) only partly.
    #[tokio::test]
    async fn unfinished_batch_is_cut_off_and_kept_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head, bytes) = store_with(dir.path(), &[3]).await;
        let (entry, _) = seal(4, &head.hash, &lost(4)).expect("seal");
        let mut torn = Vec::new();
        file::write_frame(&mut torn, &entry.bytes, 0);
        torn.extend_from_slice(&[7, 0, 0]);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&torn).expect("write");
        drop(f);

        check_recovered(dir.path(), &path, &bytes, head).await;
        let aside = path.with_extension(format!("log.torn-{}", bytes.len()));
        assert_eq!(fs::read(aside).expect("kept aside"), torn);
    }

    /// Case (b), power-loss shape: the last write's batch-end frame had its length land, but
    /// the sectors from a boundary inside it on read back as zeros. Its checksum fails, and
    /// that is a torn write, not damage.
    #[tokio::test]
    async fn partly_written_last_frame_is_cut_off_and_kept_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head, bytes) = store_with(dir.path(), &[3]).await;
        let (first, first_hash) = seal(4, &head.hash, &lost(4)).expect("seal");
        // Big enough to cross a sector boundary.
        let (second, _) = seal(5, &first_hash, &lost_because(5, &"x".repeat(2000))).expect("seal");
        let mut written = bytes.clone();
        file::write_frame(&mut written, &first.bytes, 0);
        let second_at = written.len() as u64;
        file::write_frame(&mut written, &second.bytes, FLAG_BATCH_END);
        let boundary = file::last_sector_boundary_inside(second_at, written.len() as u64)
            .expect("the frame crosses a sector boundary");
        written[boundary as usize..].fill(0);
        fs::write(&path, &written).expect("write");

        check_recovered(dir.path(), &path, &bytes, head).await;
        let aside = path.with_extension(format!("log.torn-{}", bytes.len()));
        assert_eq!(
            fs::read(aside).expect("kept aside"),
            &written[bytes.len()..]
        );
    }

    /// Case (c): a flipped byte inside the last frame, a batch end that was synced and
    /// acknowledged. Nothing is cut; appends stop naming sequence and offset.
    #[tokio::test]
    async fn damaged_last_frame_stops_appends_and_keeps_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _, mut bytes) = store_with(dir.path(), &[3, 2]).await;
        let last = frames_of(&bytes).pop().expect("frames");
        assert_ne!(last.flags & FLAG_BATCH_END, 0);
        bytes[last.offset as usize + FRAME_OVERHEAD + last.entry.len() / 2] ^= 0x04;
        fs::write(&path, &bytes).expect("write");

        check_damaged(dir.path(), &path, &bytes, 5, last.offset).await;
    }

    /// Case (c), another shape: the last frame's length field is damaged so that the frame
    /// seems to run past the end of the file, like a write cut short. The checksum shows the
    /// frame is whole, so it is damage, not a torn write.
    #[tokio::test]
    async fn damaged_length_of_last_frame_is_not_taken_for_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _, mut bytes) = store_with(dir.path(), &[3, 2]).await;
        let last = frames_of(&bytes).pop().expect("frames");
        bytes[last.offset as usize + 1] ^= 0x01; // length + 256
        fs::write(&path, &bytes).expect("write");

        check_damaged(dir.path(), &path, &bytes, 5, last.offset).await;
    }

    /// Case (d): damage to a frame in the middle of the file, in its entry or in its header.
    #[tokio::test]
    async fn damaged_frame_in_the_middle_stops_appends_and_keeps_every_byte() {
        for (what, at_in_frame) in [
            ("entry byte", FRAME_OVERHEAD + 40),
            // The entry is intact and chains; only its checksum says otherwise. Still damage,
            // and `verify` still names it (a read past the last frame meets the damage).
            ("checksum byte", 6),
            ("flags byte", 4),
            ("length byte", 3),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (path, head, mut bytes) = store_with(dir.path(), &[25, 25, 25, 25]).await;
            let target = frames_of(&bytes).swap_remove(49);
            bytes[target.offset as usize + at_in_frame] ^= 0x20;
            fs::write(&path, &bytes).expect("write");

            check_damaged(dir.path(), &path, &bytes, 50, target.offset).await;
            if what == "entry byte" {
                // The frame's length still holds, so everything after it stays readable.
                let log = EmbeddedLog::open(dir.path()).await.expect("open");
                assert_eq!(log.head().await.expect("head"), head, "{what}");
                assert_eq!(log.read(51, 10).await.expect("read on").len(), 10);
            }
        }
    }

    #[tokio::test]
    async fn damaged_head_refuses_appends_but_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _, mut bytes) = store_with(dir.path(), &[3]).await;
        let last_frame = frames_of(&bytes).pop().expect("frames").offset;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // last byte of the head's stored hash
        fs::write(&path, &bytes).expect("write");

        check_damaged(dir.path(), &path, &bytes, 3, last_frame).await;
        let log = EmbeddedLog::open(dir.path()).await.expect("reopen");
        assert_eq!(all(&log).await.len(), 3, "the damaged head is still read");
    }

    /// A failed fsync poisons the log: that append fails, later ones are refused even though
    /// the disk would take them, and `fault` says why. Reopening re-checks the tail.
    #[tokio::test]
    async fn failed_sync_poisons_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path()).await.expect("open");
        log.append(vec![lost(1), lost(2)]).await.expect("append");
        let before = log.head().await.expect("head");
        assert_eq!(log.fault(), None);

        log.inject_sync_failure();
        let err = log.append(vec![lost(3)]).await.expect_err("sync failed");
        assert!(matches!(err, Error::Poisoned), "{err}");
        let err = log.append(vec![lost(4)]).await.expect_err("poisoned");
        assert!(matches!(err, Error::Poisoned), "{err}");
        let fault = log.fault().expect("a poisoned log says why");
        assert!(fault.contains("fdatasync failed"), "{fault}");
        assert_eq!(
            log.head().await.expect("head"),
            before,
            "nothing acknowledged"
        );
        assert_eq!(
            all(&log).await.len(),
            2,
            "readers see only what was acknowledged"
        );
        log.close().await.expect("close");

        // Whether the unacknowledged entry landed is the disk's business: here it did, whole.
        let log = EmbeddedLog::open(dir.path()).await.expect("reopen");
        assert_eq!(log.fault(), None);
        let head = log.head().await.expect("head");
        assert!(head.seq >= before.seq);
        let appended = log.append(vec![lost(5)]).await.expect("appends again");
        assert_eq!(appended[0].seq, head.seq + 1);
        assert_eq!(
            verify(&all(&log).await).expect("verifies").count,
            head.seq + 1
        );
    }

    /// A store written before checksums is read, recovered and appended in its own format.
    #[tokio::test]
    async fn format_1_store_stays_format_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOG_FILE);
        let mut bytes = Header::GENESIS.encode_as(Format::V1).to_vec();
        let mut prev = Hash::GENESIS;
        for seq in 1..=3 {
            let (entry, hash) = seal(seq, &prev, &lost(seq)).expect("seal");
            file::write_frame_as(&mut bytes, &entry.bytes, FLAG_BATCH_END, Format::V1);
            prev = hash;
        }
        // And a zero-filled tail, as a power loss leaves in either format.
        let sound = bytes.len();
        bytes.resize(sound + 1000, 0);
        fs::write(&path, &bytes).expect("write");

        let log = EmbeddedLog::open(dir.path()).await.expect("open");
        assert_eq!(log.format(), Format::V1);
        assert_eq!(log.damage(), None);
        assert_eq!(log.head().await.expect("head"), Head { seq: 3, hash: prev });
        log.append(vec![lost(4), lost(5)]).await.expect("append");
        log.close().await.expect("close");

        let bytes = fs::read(&path).expect("read");
        let (_, format) = Header::decode_any(&bytes).expect("header");
        assert_eq!(format, Format::V1, "the store keeps its format");
        let mut reader = FrameReader::with_format(&bytes[HEADER_LEN..], HEADER_LEN as u64, format);
        let mut entries = Vec::new();
        while let Some(frame) = reader.next_frame().expect("io") {
            entries.push(Entry {
                seq: entries.len() as u64 + 1,
                bytes: frame.entry,
            });
        }
        assert_eq!(reader.end(), Some(&FrameEnd::Clean));
        assert_eq!(verify(&entries).expect("verifies").count, 5);
        let log = EmbeddedLog::open(dir.path()).await.expect("reopen");
        assert_eq!(verify(&all(&log).await).expect("verifies").count, 5);
    }

    #[tokio::test]
    async fn a_reader_follows_a_writer_without_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = EmbeddedLog::open(dir.path()).await.expect("open");
        writer
            .append((0..3).map(lost).collect())
            .await
            .expect("append");
        let reader = EmbeddedLog::open_read_only(dir.path())
            .await
            .expect("open reader");
        assert_eq!(reader.head().await.expect("head").seq, 3);
        assert!(matches!(
            reader.append(vec![lost(9)]).await,
            Err(Error::Closed)
        ));
        let mut follow = reader.subscribe(2).await.expect("subscribe");
        writer
            .append((3..6).map(lost).collect())
            .await
            .expect("append");
        for seq in 2..=6 {
            let entry = tokio::time::timeout(std::time::Duration::from_secs(5), follow.next())
                .await
                .expect("reader sees the writer's appends")
                .expect("open")
                .expect("entry");
            assert_eq!(entry.seq, seq);
        }
        assert_eq!(
            reader.head().await.expect("head"),
            writer.head().await.expect("head")
        );
        assert_eq!(verify(&all(&reader).await).expect("verifies").count, 6);
    }

    #[tokio::test]
    async fn a_second_process_is_locked_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _log = EmbeddedLog::open(dir.path()).await.expect("open");
        assert!(matches!(
            EmbeddedLog::open(dir.path()).await,
            Err(Error::Locked(_))
        ));
    }

    #[tokio::test]
    async fn foreign_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(LOG_FILE),
            b"not a log at all, but long enough to have a header of 56 bytes",
        )
        .expect("write");
        assert!(matches!(
            EmbeddedLog::open(dir.path()).await,
            Err(Error::NotALog { .. })
        ));
    }
}

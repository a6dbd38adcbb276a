//! The embedded log: one append-only file on local disk, the default backend.
//!
//! One writer thread owns appends. It takes every request waiting in its queue, seals them into
//! one buffer, writes that buffer with a single `pwrite`, calls `fdatasync` once, and only then
//! publishes the new head and acknowledges each request: group commit. Readers use positional
//! reads on their own file handle and only ever see entries that are already durable.
//!
//! On open, the file is scanned to rebuild the in-memory index of frame offsets. A tail left by
//! a crash in the middle of a write (a torn frame, or frames of a batch whose last frame never
//! landed) was never acknowledged: it is moved aside into `events.log.torn-<offset>` and cut
//! off, so a batch is all or nothing even across `kill -9`. Anything else that does not add up
//! marks the store broken: reads still work, so `verify` can point at the damage, but appends
//! are refused.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::file::{self, FLAG_BATCH_END, FrameEnd, FrameReader, HEADER_LEN, Header};
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

/// The embedded, file-backed event log.
#[derive(Debug)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Read handle; positional reads only.
    file: File,
    index: RwLock<Index>,
    /// Follows the durable head; ends when the writer stops.
    heads: watch::Receiver<Head>,
    /// Set at open when the stored chain does not add up; appends are refused.
    damage: Option<(u64, String)>,
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

    /// Where the store is broken, if opening found damage.
    pub fn damage(&self) -> Option<(u64, &str)> {
        self.inner
            .damage
            .as_ref()
            .map(|(seq, reason)| (*seq, reason.as_str()))
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

    check_header(&file, &path)?;
    let recovered = recover(&file, &path, true)?;
    let (head_tx, heads) = watch::channel(recovered.index.head);
    let inner = Arc::new(Inner {
        path,
        file: file.try_clone()?,
        index: RwLock::new(recovered.index),
        heads,
        damage: recovered.damage,
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

/// The file must start with a store's header (first sequence 1).
fn check_header(file: &File, path: &Path) -> Result<(), Error> {
    let not_a_log = |reason: String| Error::NotALog {
        path: path.to_owned(),
        reason,
    };
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| not_a_log("too short for a header".into()))?;
    let header = Header::decode(&header).map_err(not_a_log)?;
    if header != Header::GENESIS {
        return Err(not_a_log(
            "a store must start at sequence 1 (is this an export?)".into(),
        ));
    }
    Ok(())
}

fn open_read_only_blocking(dir: &Path) -> Result<EmbeddedLog, Error> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path)?;
    check_header(&file, &path)?;
    let recovered = recover(&file, &path, false)?;
    let (_, heads) = watch::channel(recovered.index.head);
    Ok(EmbeddedLog {
        inner: Arc::new(Inner {
            path,
            file,
            index: RwLock::new(recovered.index),
            heads,
            damage: recovered.damage,
            read_only: true,
        }),
        requests: None,
        writer: None,
    })
}

/// Read-only handles: picks up entries another process committed since the last look.
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
    let mut frames = FrameReader::new(&tail[..], end);
    let mut offsets = Vec::new();
    let mut committed = 0;
    let mut committed_end = end;
    let mut head = None;
    while let Some(frame) = frames.next_frame()? {
        offsets.push(frame.offset);
        if frame.flags & FLAG_BATCH_END != 0 {
            committed = offsets.len();
            committed_end = frame.offset + (file::FRAME_OVERHEAD + frame.entry.len()) as u64;
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
    damage: Option<(u64, String)>,
}

/// Scans the frames, cuts off an unacknowledged tail (only when `repair`; a reader just
/// ignores it), and checks the last kept entry.
fn recover(file: &File, path: &Path, repair: bool) -> Result<Recovered, Error> {
    let mut reader = file.try_clone()?;
    reader.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    let mut frames = FrameReader::new(BufReader::with_capacity(1 << 20, reader), HEADER_LEN as u64);
    let mut offsets = Vec::new();
    // Entries after the last batch end, and the last two committed entries, to check the
    // head without keeping every entry in memory.
    let mut committed = 0usize;
    let mut last_two: [Option<Bytes>; 2] = [None, None];
    let mut pending: Vec<Bytes> = Vec::new();
    while let Some(frame) = frames.next_frame()? {
        offsets.push(frame.offset);
        pending.push(frame.entry);
        if frame.flags & FLAG_BATCH_END != 0 {
            committed = offsets.len();
            let mut tail = pending.drain(..).rev();
            let newest = tail.next();
            let before = tail.next().or_else(|| last_two[1].take());
            last_two = [before, newest];
        }
    }
    let file_len = file.metadata()?.len();

    if let Some(FrameEnd::Corrupt { offset, reason }) = frames.end() {
        // Not a torn write: keep every byte and refuse appends.
        let seq = offsets.len() as u64 + 1;
        tracing::error!(path = %path.display(), seq, offset, %reason, "event log is damaged; appends refused");
        let head = head_of(&last_two, committed as u64);
        return Ok(Recovered {
            index: Index {
                end: *offset,
                offsets,
                head,
            },
            damage: Some((seq, reason.clone())),
        });
    }

    // Everything after the last batch end was never acknowledged.
    let keep_end = if committed == 0 {
        HEADER_LEN as u64
    } else if committed < offsets.len() {
        offsets[committed]
    } else {
        match frames.end() {
            Some(FrameEnd::Torn { offset }) => *offset,
            _ => file_len,
        }
    };
    offsets.truncate(committed);

    // The last kept entry must be sound before anything is cut off after it.
    let seq = committed as u64;
    if let Some(newest) = &last_two[1] {
        let entry = Entry {
            seq,
            bytes: newest.clone(),
        };
        let anchor = match &last_two[0] {
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
            tracing::error!(path = %path.display(), seq, fault = %broken.fault, "event log head is damaged; appends refused");
            return Ok(Recovered {
                index: Index {
                    offsets,
                    end: keep_end,
                    head: Head {
                        seq,
                        hash: entry.stored_hash().unwrap_or(Hash::GENESIS),
                    },
                },
                damage: Some((seq, broken.fault.to_string())),
            });
        }
    }

    if repair && keep_end < file_len {
        // Keep the cut bytes beside the log rather than destroying them.
        let mut tail = vec![0u8; (file_len - keep_end) as usize];
        file.read_exact_at(&mut tail, keep_end)?;
        let aside = path.with_extension(format!("log.torn-{keep_end}"));
        fs::write(&aside, &tail)?;
        file.set_len(keep_end)?;
        file.sync_all()?;
        tracing::warn!(
            path = %path.display(),
            bytes = tail.len(),
            kept_at = %aside.display(),
            "cut off an unacknowledged tail left by an interrupted write"
        );
    }

    Ok(Recovered {
        index: Index {
            offsets,
            end: keep_end,
            head: head_of(&last_two, committed as u64),
        },
        damage: None,
    })
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

fn write_loop(
    file: File,
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<Request>,
    head_tx: watch::Sender<Head>,
) {
    let mut poisoned = false;
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

        if let Some((seq, reason)) = &inner.damage {
            for req in group.drain(..) {
                let _ = req.reply.send(Err(Error::Broken {
                    seq: *seq,
                    reason: reason.clone(),
                }));
            }
            continue;
        }
        if poisoned {
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
            match seal_batch(&req.batch, &mut head, end, &mut buf, &mut offsets) {
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
            let restored = file.set_len(end).and_then(|()| file.sync_data());
            if restored.is_err() {
                poisoned = true;
            }
            tracing::error!(error = %e, "event log write failed");
            reply_all(sealed, || {
                Error::Io(io::Error::new(e.kind(), e.to_string()))
            });
            continue;
        }
        if let Err(e) = file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: what is on
            // disk is unknown, so stop taking writes (reopening re-checks the tail).
            poisoned = true;
            tracing::error!(error = %e, "event log fsync failed; refusing further writes");
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

/// Seals one batch after `head` into `buf`, recording frame offsets relative to the file.
fn seal_batch(
    batch: &[NewEvent],
    head: &mut Head,
    file_end: u64,
    buf: &mut Vec<u8>,
    offsets: &mut Vec<u64>,
) -> Result<Vec<Appended>, Error> {
    let mut appended = Vec::with_capacity(batch.len());
    for (i, event) in batch.iter().enumerate() {
        let seq = head.seq + 1;
        // Frame header first, filled in once the entry's length is known.
        let frame = buf.len();
        buf.extend_from_slice(&[0; file::FRAME_OVERHEAD]);
        let hash = seal_into(buf, seq, &head.hash, event)?;
        let len = buf.len() - frame - file::FRAME_OVERHEAD;
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
        buf[frame..frame + 4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[frame + 4] = flags;
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
            return match &inner.damage {
                Some((seq, reason)) if from >= *seq && max > 0 => Err(Error::Broken {
                    seq: *seq,
                    reason: reason.clone(),
                }),
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
    let entries = file::parse_frames(&Bytes::from(buf), from)
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
                let read = tokio::task::spawn_blocking(move || {
                    read_blocking(&inner, next, SUBSCRIBE_CHUNK)
                })
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
    use crate::{Source, seal, verify};

    fn lost(i: u64) -> NewEvent {
        NewEvent::new(
            Source::new("n1", "test"),
            NodeLost {
                node_id: format!("node-{i}"),
                reason: "test".into(),
            },
        )
    }

    async fn all(log: &EmbeddedLog) -> Vec<Entry> {
        log.read(1, usize::MAX).await.expect("read")
    }

    #[tokio::test]
    async fn unfinished_batch_is_cut_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path()).await.expect("open");
        log.append((0..3).map(lost).collect())
            .await
            .expect("append");
        let path = log.path().to_owned();
        log.close().await.expect("close");

        // Simulate a crash halfway through a two-event batch: the first frame landed, the
        // second (with the batch-end flag) did not.
        let head = {
            let log = EmbeddedLog::open(dir.path()).await.expect("open");
            let head = log.head().await.expect("head");
            log.close().await.expect("close");
            head
        };
        let (entry, _) = seal(4, &head.hash, &lost(4)).expect("seal");
        let mut frame = Vec::new();
        file::write_frame(&mut frame, &entry.bytes, 0);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open file");
        f.write_all(&frame).expect("write");
        f.write_all(&[7, 0, 0]).expect("write torn bytes");
        drop(f);

        let log = EmbeddedLog::open(dir.path()).await.expect("reopen");
        assert_eq!(log.head().await.expect("head"), head);
        assert!(log.damage().is_none());
        let entries = all(&log).await;
        assert_eq!(verify(&entries).expect("verifies").count, 3);
        let aside = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("torn-"));
        assert!(aside, "the cut tail is kept beside the log");
        // And the log goes on from there.
        let appended = log.append(vec![lost(9)]).await.expect("append");
        assert_eq!(appended[0].seq, 4);
        assert_eq!(verify(&all(&log).await).expect("verifies").count, 4);
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
    async fn damaged_head_refuses_appends_but_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path()).await.expect("open");
        log.append((0..3).map(lost).collect())
            .await
            .expect("append");
        let path = log.path().to_owned();
        log.close().await.expect("close");
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // last byte of the head's stored hash
        fs::write(&path, &bytes).expect("write");

        let log = EmbeddedLog::open(dir.path()).await.expect("reopen");
        assert_eq!(log.damage().map(|d| d.0), Some(3));
        assert!(matches!(
            log.append(vec![lost(4)]).await,
            Err(Error::Broken { seq: 3, .. })
        ));
        let broken = verify(&all(&log).await).expect_err("damage is found");
        assert_eq!(broken.seq, 3);
        assert_eq!(
            fs::read(&path).expect("read").len(),
            bytes.len(),
            "nothing cut"
        );
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

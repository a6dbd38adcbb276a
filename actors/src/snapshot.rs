//! Snapshots of the scheduler's state, so a start replays only the log after them.
//!
//! A snapshot is a cache of the log, never a second source of truth: it names the sequence it
//! covers and the hash the log has there, and it is used only when the log holds that very
//! entry (and the snapshot's own checksum holds). Anything else — a log cut short or
//! rewritten, a snapshot of another log, a damaged or foreign file, another layout — and the
//! state is rebuilt from the whole log instead.
//!
//! The file, all integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 16 | magic `gantry snapshot\n` |
//! | 4 | layout ([`FORMAT`]) |
//! | 8 | sequence covered |
//! | 32 | the log's entry hash at that sequence |
//! | 8 | body length |
//! | 32 | SHA-256 of the body |
//! | … | body: the state as named MessagePack |
//!
//! It is written to a temporary file, synced, and renamed over the old one, so a crash leaves
//! the old snapshot or the new one, never half of one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use gantry_events::{EventLog, Hash};
use sha2::{Digest, Sha256};

/// The layout of the body this build writes; a snapshot of another layout is not loaded.
/// Bump it whenever a type the scheduler's state is made of changes.
pub const FORMAT: u32 = 1;

const MAGIC: &[u8; 16] = b"gantry snapshot\n";
const HEADER_LEN: usize = 16 + 4 + 8 + 32 + 8 + 32;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot file: {0}")]
    Io(#[from] io::Error),
    #[error("not a usable snapshot: {0}")]
    Unusable(String),
    #[error("the state could not be encoded: {0}")]
    Encode(String),
    #[error("the snapshot's state could not be decoded: {0}")]
    Decode(String),
}

/// A state and the log position it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub hash: Hash,
    pub body: Vec<u8>,
}

impl Snapshot {
    /// Whether `log` holds this snapshot's entry: `Err` says why not.
    pub async fn check_against(&self, log: &dyn EventLog) -> Result<(), String> {
        let head = log.head().await.map_err(|e| e.to_string())?;
        if head.seq < self.seq {
            return Err(format!(
                "it covers sequence {} but the log ends at {}",
                self.seq, head.seq
            ));
        }
        let entries = log.read(self.seq, 1).await.map_err(|e| e.to_string())?;
        match entries.first() {
            Some(entry) if entry.seq == self.seq && entry.stored_hash().ok() == Some(self.hash) => {
                Ok(())
            }
            Some(_) => Err(format!(
                "the log holds another entry at sequence {} than the snapshot was taken after",
                self.seq
            )),
            None => Err(format!("the log has no entry {}", self.seq)),
        }
    }
}

/// Where one snapshot is kept.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn new(path: impl Into<PathBuf>) -> SnapshotFile {
        SnapshotFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored snapshot; `None` when there is none. A file that is damaged, cut short,
    /// foreign or of another layout is `Err`, for the caller to report and ignore.
    pub fn load(&self) -> Result<Option<Snapshot>, Error> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        decode(&raw).map(Some)
    }

    /// Stores `snapshot` in place of the one before, durably.
    pub fn store(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&header(snapshot))?;
            file.write_all(&snapshot.body)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

fn header(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&snapshot.seq.to_be_bytes());
    out.extend_from_slice(&snapshot.hash.0);
    out.extend_from_slice(&(snapshot.body.len() as u64).to_be_bytes());
    out.extend_from_slice(&Sha256::digest(&snapshot.body));
    out
}

fn decode(raw: &[u8]) -> Result<Snapshot, Error> {
    let unusable = |why: &str| Error::Unusable(why.to_owned());
    if raw.len() < HEADER_LEN {
        return Err(unusable("shorter than its header"));
    }
    let (head, body) = raw.split_at(HEADER_LEN);
    if &head[..16] != MAGIC {
        return Err(unusable("no snapshot magic"));
    }
    let field = |at: usize, len: usize| &head[at..at + len];
    let format = u32::from_be_bytes(field(16, 4).try_into().unwrap_or_default());
    if format != FORMAT {
        return Err(Error::Unusable(format!(
            "layout {format}, and this gantry reads layout {FORMAT}"
        )));
    }
    let seq = u64::from_be_bytes(field(20, 8).try_into().unwrap_or_default());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(field(28, 32));
    let len = u64::from_be_bytes(field(60, 8).try_into().unwrap_or_default());
    if len != body.len() as u64 {
        return Err(Error::Unusable(format!(
            "its body should be {len} bytes and is {}",
            body.len()
        )));
    }
    if Sha256::digest(body).as_slice() != field(68, 32) {
        return Err(unusable("its body does not match its checksum"));
    }
    Ok(Snapshot {
        seq,
        hash: Hash(hash),
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            seq: 42,
            hash: Hash([7; 32]),
            body: b"the state".to_vec(),
        }
    }

    #[test]
    fn a_stored_snapshot_loads_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::new(dir.path().join("s").join("scheduler.snapshot"));
        assert_eq!(file.load().expect("none yet"), None);
        file.store(&sample()).expect("store");
        assert_eq!(file.load().expect("load"), Some(sample()));
    }

    #[test]
    fn a_damaged_cut_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::new(dir.path().join("scheduler.snapshot"));
        file.store(&sample()).expect("store");
        let good = fs::read(file.path()).expect("read");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("flipped body", {
                let mut raw = good.clone();
                *raw.last_mut().expect("body") ^= 1;
                raw
            }),
            ("cut short", good[..good.len() - 1].to_vec()),
            ("no header", good[..10].to_vec()),
            ("another layout", {
                let mut raw = good.clone();
                raw[19] ^= 0xff;
                raw
            }),
            (
                "foreign",
                b"hello world, this is not a snapshot at all, no indeed, not one bit of it"
                    .to_vec(),
            ),
        ];
        for (what, raw) in cases {
            fs::write(file.path(), raw).expect("write");
            assert!(
                matches!(file.load(), Err(Error::Unusable(_))),
                "{what}: {:?}",
                file.load()
            );
        }
    }
}

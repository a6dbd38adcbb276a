//! The Merkle tree over the log (`gantry_events::merkle`) as a view, so any gateway serves
//! roots and proofs without holding the tree in memory: the hashes of complete subtrees of 64
//! leaves and more are stored (`t ‖ level ‖ index`, about one byte per entry), and the leaves
//! below them are read back from the log when a proof needs them (at most a few chunks of 64).
//! The checkpoints the Auditor recorded in the log (`audit.checkpointed`) are kept by the size
//! they cover (`v ‖ size`).
//!
//! Proofs come from what is stored: they show what the log holds, and a client checks them
//! against a checkpoint signed by the Auditor's key — a proof over a damaged log fails there.

use std::collections::HashMap;

use gantry_events::event::AuditCheckpointed;
use gantry_events::merkle::{self, Nodes};
use gantry_events::{EventLog, Hash};
use serde::{Deserialize, Serialize};

use crate::{Error, Projections};

/// Levels below this are not stored: subtrees of fewer than 64 leaves are hashed from the log.
pub const FLOOR: u32 = 6;
const CHUNK: u64 = 1 << FLOOR;

/// Kind of the stored tree nodes: `t ‖ level ‖ index (u64 BE)`.
const NODE: u8 = b't';
/// Kind of the recorded checkpoints: `v ‖ size (u64 BE)`.
const CHECKPOINT: u8 = b'v';
/// The leaves of the chunk not yet complete, concatenated (kind `m`, metadata).
const PENDING: &[u8] = b"mmerkle-pending";

fn node_key(level: u32, index: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[0] = NODE;
    key[1] = level as u8;
    key[2..].copy_from_slice(&index.to_be_bytes());
    key
}

fn checkpoint_key(size: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = CHECKPOINT;
    key[1..].copy_from_slice(&size.to_be_bytes());
    key
}

/// A checkpoint the Auditor recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointView {
    /// How many entries it covers.
    pub size: u64,
    /// Their Merkle root.
    #[schema(value_type = String)]
    pub root: Hash,
    /// The checkpoint signed by the Auditor's key, as a note (`None`: recorded unsigned).
    pub note: Option<String>,
    /// The sequence of the `audit.checkpointed` event that records it.
    pub recorded_seq: u64,
}

/// What one batch adds to the tree, written with the batch.
#[derive(Default)]
pub(crate) struct TreeOverlay {
    /// The leaves of the incomplete chunk (`None`: not read yet).
    pending: Option<Vec<Hash>>,
    nodes: HashMap<(u32, u64), Hash>,
    checkpoints: Vec<CheckpointView>,
}

impl TreeOverlay {
    /// Adds entry `seq` (its leaf is `seq - 1`) by its hash.
    pub(crate) fn push(&mut self, views: &Projections, seq: u64, hash: &Hash) -> Result<(), Error> {
        let pending = match &mut self.pending {
            Some(pending) => pending,
            none => {
                let stored = views.tree.get(PENDING)?;
                let leaves = stored
                    .as_deref()
                    .unwrap_or_default()
                    .chunks_exact(32)
                    .map(|c| Hash(c.try_into().unwrap_or([0; 32])))
                    .collect();
                none.insert(leaves)
            }
        };
        pending.push(merkle::leaf_hash(&hash.0));
        if !seq.is_multiple_of(CHUNK) {
            return Ok(());
        }
        if pending.len() as u64 != CHUNK {
            return Err(Error::Corrupt(format!(
                "the Merkle view holds {} leaves of the chunk ending at entry {seq}",
                pending.len()
            )));
        }
        let mut hash = merkle::root_of_leaves(pending);
        pending.clear();
        let (mut level, mut index) = (FLOOR, seq / CHUNK - 1);
        loop {
            self.nodes.insert((level, index), hash);
            if index.is_multiple_of(2) {
                return Ok(());
            }
            let left = self.node(views, level, index - 1)?;
            hash = merkle::node_hash(&left, &hash);
            level += 1;
            index /= 2;
        }
    }

    fn node(&self, views: &Projections, level: u32, index: u64) -> Result<Hash, Error> {
        match self.nodes.get(&(level, index)) {
            Some(hash) => Ok(*hash),
            None => views.stored_node(level, index),
        }
    }

    /// Keeps a checkpoint recorded at `seq`.
    pub(crate) fn checkpointed(&mut self, seq: u64, c: &AuditCheckpointed) {
        if let Some(root) = c.root {
            self.checkpoints.push(CheckpointView {
                size: c.through_seq,
                root,
                note: c.note.clone(),
                recorded_seq: seq,
            });
        }
    }

    /// Writes what it gathered into the batch.
    pub(crate) fn write(self, batch: &mut sled::Batch) -> Result<(), Error> {
        if let Some(pending) = self.pending {
            batch.insert(
                PENDING,
                pending.iter().flat_map(|h| h.0).collect::<Vec<u8>>(),
            );
        }
        for ((level, index), hash) in self.nodes {
            batch.insert(&node_key(level, index), &hash.0);
        }
        for checkpoint in self.checkpoints {
            batch.insert(
                &checkpoint_key(checkpoint.size),
                crate::encode(&checkpoint)?,
            );
        }
        Ok(())
    }
}

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The request names sizes or entries the views do not have (`field`: which). 400.
    #[error("{message}")]
    OutOfRange {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Views(#[from] Error),
}

/// Stored nodes, and the chunks of leaves read from the log so far.
struct ViewNodes<'a> {
    views: &'a Projections,
    leaves: HashMap<u64, Vec<Hash>>,
}

enum Miss {
    Chunk(u64),
    Views(Error),
}

impl Nodes for ViewNodes<'_> {
    type Error = Miss;

    fn node(&self, level: u32, index: u64) -> Result<Hash, Miss> {
        if level >= FLOOR {
            return self.views.stored_node(level, index).map_err(Miss::Views);
        }
        let first = index << level;
        let chunk = first / CHUNK;
        let leaves = self.leaves.get(&chunk).ok_or(Miss::Chunk(chunk))?;
        let start = (first - chunk * CHUNK) as usize;
        leaves
            .get(start..start + (1 << level))
            .map(merkle::root_of_leaves)
            .ok_or_else(|| {
                Miss::Views(Error::Corrupt(format!("the log ends inside chunk {chunk}")))
            })
    }
}

impl Projections {
    fn stored_node(&self, level: u32, index: u64) -> Result<Hash, Error> {
        match self.tree.get(node_key(level, index))? {
            Some(raw) if raw.len() == 32 => Ok(Hash(raw.as_ref().try_into().unwrap_or([0; 32]))),
            _ => Err(Error::Corrupt(format!(
                "the Merkle view has no node {index} at level {level}"
            ))),
        }
    }

    /// How many entries the tree in the views covers (every entry applied).
    pub fn tree_size(&self) -> Result<u64, Error> {
        Ok(self.checkpoint()?.seq)
    }

    /// The checkpoint the Auditor recorded for exactly `size` entries, or (`None`) the latest.
    pub fn audit_checkpoint(&self, size: Option<u64>) -> Result<Option<CheckpointView>, Error> {
        let raw = match size {
            Some(size) => self.tree.get(checkpoint_key(size))?,
            None => self
                .tree
                .scan_prefix([CHECKPOINT])
                .next_back()
                .transpose()?
                .map(|(_, v)| v),
        };
        raw.map(|raw| crate::decode(&raw)).transpose()
    }

    /// The signed checkpoints among the last `lookback` recorded, latest first.
    pub fn signed_checkpoints(&self, lookback: usize) -> Result<Vec<CheckpointView>, Error> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([CHECKPOINT]).rev().take(lookback) {
            let view: CheckpointView = crate::decode(&item?.1)?;
            if view.note.is_some() {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Runs `make` over the stored nodes, reading from the log the chunks of leaves it needs.
    async fn with_nodes<T>(
        &self,
        log: &dyn EventLog,
        (field, size): (&'static str, u64),
        make: impl Fn(&ViewNodes<'_>) -> Result<T, Miss>,
    ) -> Result<T, ProofError> {
        let have = self.tree_size()?;
        if size > have {
            return Err(ProofError::OutOfRange {
                field,
                message: format!("the views cover {have} entries, not {size}"),
            });
        }
        let mut nodes = ViewNodes {
            views: self,
            leaves: HashMap::new(),
        };
        loop {
            match make(&nodes) {
                Ok(value) => return Ok(value),
                Err(Miss::Views(error)) => return Err(error.into()),
                Err(Miss::Chunk(chunk)) => {
                    if nodes.leaves.contains_key(&chunk) {
                        return Err(Error::Corrupt(format!("chunk {chunk} asked for twice")).into());
                    }
                    let first = chunk * CHUNK + 1;
                    let count = CHUNK.min(size.saturating_sub(first - 1)) as usize;
                    let mut entries = Vec::with_capacity(count);
                    while entries.len() < count {
                        let next = first + entries.len() as u64;
                        let read = log
                            .read(next, count - entries.len())
                            .await
                            .map_err(Error::Log)?;
                        if read.is_empty() {
                            break;
                        }
                        entries.extend(read);
                    }
                    let mut leaves = Vec::with_capacity(count);
                    for (entry, seq) in entries.iter().zip(first..) {
                        let hash = entry
                            .stored_hash()
                            .ok()
                            .filter(|_| entry.seq == seq)
                            .ok_or_else(|| Error::Corrupt(format!("the log has no entry {seq}")))?;
                        leaves.push(merkle::leaf_hash(&hash.0));
                    }
                    nodes.leaves.insert(chunk, leaves);
                }
            }
        }
    }

    /// The Merkle root of the first `size` entries.
    pub async fn tree_root(&self, log: &dyn EventLog, size: u64) -> Result<Hash, ProofError> {
        self.with_nodes(log, ("size", size), |nodes| merkle::root(nodes, size))
            .await
    }

    /// The inclusion proof of entry `seq` in the tree of the first `size` entries, with that
    /// tree's root.
    pub async fn inclusion_proof(
        &self,
        log: &dyn EventLog,
        seq: u64,
        size: u64,
    ) -> Result<(Vec<Hash>, Hash), ProofError> {
        if seq == 0 || seq > size {
            return Err(ProofError::OutOfRange {
                field: "seq",
                message: format!("entry {seq} is not among the first {size}"),
            });
        }
        self.with_nodes(log, ("size", size), |nodes| {
            Ok((
                merkle::inclusion_proof(nodes, seq - 1, size)?,
                merkle::root(nodes, size)?,
            ))
        })
        .await
    }

    /// The consistency proof from the first `from` entries to the first `to`, with both roots.
    pub async fn consistency_proof(
        &self,
        log: &dyn EventLog,
        from: u64,
        to: u64,
    ) -> Result<(Vec<Hash>, Hash, Hash), ProofError> {
        if from > to {
            return Err(ProofError::OutOfRange {
                field: "from",
                message: format!("from ({from}) is past to ({to})"),
            });
        }
        self.with_nodes(log, ("to", to), |nodes| {
            Ok((
                merkle::consistency_proof(nodes, from, to)?,
                merkle::root(nodes, from)?,
                merkle::root(nodes, to)?,
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use gantry_events::merkle::MerkleTree;
    use gantry_events::{EmbeddedLog, NewEvent, Source};

    use super::*;

    #[tokio::test]
    async fn proofs_from_the_views_are_those_of_the_whole_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path().join("log"))
            .await
            .expect("log");
        let mut tree = MerkleTree::new();
        // Checkpoint events: the views keep those carrying a root by the size they cover.
        let events: Vec<NewEvent> = (1..=300u64)
            .map(|i| {
                NewEvent::new(
                    Source::new("n1", "test"),
                    AuditCheckpointed {
                        through_seq: i - 1,
                        through_hash: Hash::of(&i.to_le_bytes()),
                        events_verified: 1,
                        root: (i % 100 == 0).then(|| Hash::of(b"root")),
                        note: (i == 200).then(|| "a note".to_owned()),
                    },
                )
            })
            .collect();
        log.append(events).await.expect("append");
        for entry in log.read(1, 300).await.expect("read") {
            tree.push(&entry.stored_hash().expect("hash"));
        }
        // Applied in uneven batches, the views reopened in between: the leaves of a chunk not
        // yet complete survive the reopening.
        let mut applied = 0u64;
        for batch in [1u64, 62, 2, 70, 5, 100, 60] {
            let views = Projections::open(dir.path().join("views")).expect("views");
            views
                .apply(&log.read(applied + 1, batch as usize).await.expect("read"))
                .expect("apply");
            applied += batch;
            views.flush().await.expect("flush");
            drop(views);
        }
        assert_eq!(applied, 300);
        let views = Projections::open(dir.path().join("views")).expect("views");
        assert_eq!(views.tree_size().expect("size"), 300);
        for size in [1u64, 2, 63, 64, 65, 128, 129, 200, 255, 256, 257, 300] {
            assert_eq!(
                views.tree_root(&log, size).await.expect("root"),
                tree.root_at(size).expect("root"),
                "root of {size}"
            );
            for seq in [1, size / 2 + 1, size] {
                let (proof, root) = views.inclusion_proof(&log, seq, size).await.expect("proof");
                assert_eq!(
                    Some(proof),
                    tree.inclusion_proof(seq - 1, size),
                    "{seq} in {size}"
                );
                assert_eq!(Some(root), tree.root_at(size));
            }
            for from in [0, 1, size / 3, size - 1, size] {
                let (proof, from_root, to_root) = views
                    .consistency_proof(&log, from, size)
                    .await
                    .expect("proof");
                assert_eq!(
                    Some(proof),
                    tree.consistency_proof(from, size),
                    "{from} → {size}"
                );
                assert_eq!(Some(from_root), tree.root_at(from));
                assert_eq!(Some(to_root), tree.root_at(size));
            }
        }
        // Out of range: named, never a panic.
        assert!(matches!(
            views.inclusion_proof(&log, 301, 301).await,
            Err(ProofError::OutOfRange { .. })
        ));
        assert!(matches!(
            views.inclusion_proof(&log, 0, 10).await,
            Err(ProofError::OutOfRange { .. })
        ));
        assert!(matches!(
            views.consistency_proof(&log, 20, 10).await,
            Err(ProofError::OutOfRange { .. })
        ));
        // Checkpoints by size, the latest last.
        let latest = views.audit_checkpoint(None).expect("read").expect("latest");
        assert_eq!((latest.size, latest.recorded_seq), (299, 300));
        let signed = views
            .audit_checkpoint(Some(199))
            .expect("read")
            .expect("at 199");
        assert_eq!(signed.note.as_deref(), Some("a note"));
        assert_eq!(views.audit_checkpoint(Some(150)).expect("read"), None);
    }
}

//! The `EventLog` trait every backend implements, and what its operations return.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::Serialize;
use uuid::Uuid;

use crate::{Entry, Hash, NewEvent};

/// The head of a chain: its last sequence and that entry's hash. An empty log has sequence 0
/// and [`Hash::GENESIS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: Hash::GENESIS,
    };
}

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub seq: u64,
    pub id: Uuid,
    pub hash: Hash,
}

/// Entries in sequence order, replayed from history and then followed live.
pub type Subscription = BoxStream<'static, Result<Entry, crate::Error>>;

/// Largest batch one append accepts. JetStream's atomic batches hold at most 1,000 messages
/// by default; every backend keeps the same limit so code behaves the same on both.
pub const MAX_BATCH: usize = 1_000;

/// Largest stored entry (record and hash), in bytes.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// The log of record.
///
/// Implementations: [`crate::embedded::EmbeddedLog`] (local disk, the default) and the
/// JetStream log in `gantry-nodes`. The conformance suite in `tests/` runs against both.
pub trait EventLog: Send + Sync + 'static {
    /// Appends a batch, all or nothing, after the current head. Returns once every event is
    /// durable, with the sequences and hashes assigned, in batch order. An empty batch is a
    /// no-op.
    fn append(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Appended>, crate::Error>>;

    /// Up to `max` entries starting at sequence `from` (≥ 1), in order. Fewer (or none) when the
    /// log ends sooner.
    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Entry>, crate::Error>>;

    /// The current head.
    fn head(&self) -> BoxFuture<'_, Result<Head, crate::Error>>;

    /// Every entry from sequence `from` (≥ 1) on: history first, then new appends as they
    /// become durable, each exactly once and in order.
    fn subscribe(&self, from: u64) -> BoxFuture<'_, Result<Subscription, crate::Error>>;

    /// Why this log refuses appends (poisoned after a failed fsync, damage found at open), or
    /// `None` when healthy.
    ///
    /// Answered from memory, without IO, so health checks can ask it often. A backend that
    /// only learns of faults as it appends (JetStream: the server refuses) keeps the default,
    /// `None`; its appends still fail with the reason.
    fn fault(&self) -> Option<String> {
        None
    }
}

/// Checks a batch against the limits every backend shares.
pub fn check_batch(batch: &[NewEvent]) -> Result<(), crate::Error> {
    if batch.len() > MAX_BATCH {
        return Err(crate::Error::BatchTooLarge {
            len: batch.len(),
            max: MAX_BATCH,
        });
    }
    Ok(())
}

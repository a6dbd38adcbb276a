use std::path::PathBuf;

use crate::EncodeError;

/// What can go wrong with the event log. Each variant's doc says how the gateway answers it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local store could not be read or written. 503.
    #[error("event log storage: {0}")]
    Io(#[from] std::io::Error),
    /// An event could not be encoded. 500 (a bug: validated events always encode).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// More events in one batch than [`crate::log::MAX_BATCH`]. 413.
    #[error("batch of {len} events is over the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    /// One event encodes to more than [`crate::log::MAX_ENTRY_BYTES`]. 413.
    #[error("event {type_name} is {size} bytes, over the limit of {max}")]
    EntryTooLarge {
        type_name: &'static str,
        size: usize,
        max: usize,
    },
    /// Sequences start at 1. 400.
    #[error("sequence {0} is out of range: sequences start at 1")]
    InvalidSequence(u64),
    /// The stored chain is damaged at `seq`; appends are refused until an operator looks. 503.
    #[error("event log is broken at sequence {seq}: {reason}")]
    Broken { seq: u64, reason: String },
    /// Other writers kept appending first; the append gave up after `attempts` tries. 503.
    #[error("append lost the race to other writers {attempts} times in a row")]
    Contended { attempts: u32 },
    /// The embedded store is open in another process. 503.
    #[error("event log at {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// A file is not a gantry log (wrong magic or format version). 400 for uploads, 503 for
    /// the store.
    #[error("{} is not a gantry event log: {reason}", path.display())]
    NotALog { path: PathBuf, reason: String },
    /// A sync to disk failed: whether the last writes landed is unknown, so the store refuses
    /// writes until it is reopened and its tail re-checked. 503.
    #[error("event log stopped taking writes after a failed sync; reopen it")]
    Poisoned,
    /// The backend (NATS) could not be reached or answered with an error. 503.
    #[error("event log backend: {context}: {source}")]
    Backend {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The log was closed while the operation was waiting. 503.
    #[error("event log is closed")]
    Closed,
}

impl Error {
    /// Wraps a backend error with what was being done.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Backend {
            context,
            source: source.into(),
        }
    }
}

//! gantry's event log: the single source of truth every other part is rebuilt from.
//!
//! - [`event`]: the typed events, one enum per stream, each type with a stable name and an
//!   explicit version, and the table that decodes every version ever written.
//! - [`record`]: the envelope (sequence, id, time, source, previous hash, body) and its
//!   canonical MessagePack bytes; [`Hash`]: `SHA-256(prev ‖ record)`.
//! - [`verify`]: walks any stretch of the chain and names the first bad sequence and why.
//! - [`log`]: the [`EventLog`] trait (append a batch, read, head, subscribe) that every backend
//!   implements; [`embedded`]: the default backend, an append-only file with group commit.
//! - [`file`]: the framed file format shared by the embedded store and exports.
//! - [`merkle`]: the RFC 6962 Merkle tree over entry hashes, with inclusion and consistency
//!   proofs and their verification; [`checkpoint`]: checkpoints (origin, size, root) as
//!   Ed25519-signed notes in the transparency-log text format.
//!
//! The byte-level contract is `events/FORMAT.md`.
//!
//! This crate must not depend on any other gantry crate, and does no network IO: the JetStream
//! backend lives in `gantry-nodes`. It knows nothing of actors, HTTP, Docker or GPUs.

pub mod checkpoint;
pub mod embedded;
mod error;
pub mod event;
pub mod file;
mod hash;
pub mod log;
pub mod merkle;
pub mod record;
pub mod verify;

pub use embedded::EmbeddedLog;
pub use error::Error;
pub use event::Event;
pub use hash::Hash;
pub use log::{Appended, EventLog, Head, Subscription};
pub use record::{
    EncodeError, Entry, Envelope, NewEvent, RecordError, Source, encode_record, seal, seal_into,
};
pub use verify::{Break, Fault, Verified, Verifier, verify, verify_log};

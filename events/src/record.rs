//! The envelope and its canonical byte form: how one event becomes one byte string.
//!
//! The layout is specified in `events/FORMAT.md`; this module is its reference implementation.
//! A stored entry is `record ‖ hash`, where `record` is a MessagePack array of ten elements and
//! `hash = SHA-256(prev ‖ record)`. Decoding never re-serialises: the hash is always computed
//! over the bytes as they were stored.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::Hash;
use crate::event::{self, DecodeError, Event};

/// The value of a record's first element. Bumped only if the envelope itself changes shape.
pub const FORMAT_VERSION: u64 = 1;

/// Elements in the envelope array.
const ENVELOPE_LEN: u32 = 10;

/// Who appended an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Source {
    /// The node's id (stable across restarts).
    pub node: String,
    /// The component that decided, e.g. `scheduler`, `worker`, `gateway`, `cli`.
    pub actor: String,
}

impl Source {
    pub fn new(node: impl Into<String>, actor: impl Into<String>) -> Source {
        Source {
            node: node.into(),
            actor: actor.into(),
        }
    }
}

/// An event on its way into the log: everything but its place in the chain.
///
/// The id is fixed here, before the first append attempt, so a retried append carries the same
/// id and the JetStream backend can deduplicate it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    pub source: Source,
    pub event: Event,
}

impl NewEvent {
    /// A new event with a fresh UUID v7 and the current time.
    pub fn new(source: Source, event: impl Into<Event>) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            time_ns: now_ns(),
            source,
            event: event.into(),
        }
    }
}

/// The current Unix time in nanoseconds (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An event as it sits in the chain, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Envelope {
    pub seq: u64,
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub time_ns: u64,
    pub source: Source,
    pub prev: Hash,
    pub hash: Hash,
    #[serde(rename = "type")]
    pub type_name: String,
    pub version: u32,
    /// The payload: its fields per type are given in `events/FORMAT.md`.
    #[schema(value_type = Object)]
    pub event: Event,
}

impl Envelope {
    /// The event time as RFC 3339 (UTC, nanoseconds).
    pub fn time_rfc3339(&self) -> String {
        let time = UNIX_EPOCH + std::time::Duration::from_nanos(self.time_ns);
        humantime::format_rfc3339_nanos(time).to_string()
    }
}

/// One stored entry: `record ‖ hash`, at position `seq` of its store.
///
/// `seq` is where the store holds the entry (line number in the embedded file, stream sequence
/// in JetStream); the record repeats its own sequence inside, and [`crate::verify`] checks that
/// the two agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub bytes: Bytes,
}

/// The fields of a record, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub id: Uuid,
    pub time_ns: u64,
    pub node: &'a str,
    pub actor: &'a str,
    pub prev: Hash,
    pub type_name: &'a str,
    pub version: u32,
    pub payload: &'a [u8],
}

/// Why a stored entry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("entry is {0} bytes, shorter than a hash and a record")]
    TooShort(usize),
    #[error("record is not a gantry envelope: {0}")]
    Malformed(String),
    #[error("record has envelope format {0}, this build reads format {FORMAT_VERSION}")]
    UnsupportedFormat(u64),
    #[error(transparent)]
    Payload(#[from] DecodeError),
}

impl Entry {
    /// The record part: everything but the trailing 32-byte hash.
    pub fn record(&self) -> Result<&[u8], RecordError> {
        let len = self.bytes.len();
        if len <= 32 {
            return Err(RecordError::TooShort(len));
        }
        Ok(&self.bytes[..len - 32])
    }

    /// The hash stored with the record.
    pub fn stored_hash(&self) -> Result<Hash, RecordError> {
        let len = self.bytes.len();
        if len <= 32 {
            return Err(RecordError::TooShort(len));
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.bytes[len - 32..]);
        Ok(Hash(out))
    }

    /// The record's fields, without decoding the payload.
    pub fn view(&self) -> Result<RecordView<'_>, RecordError> {
        parse_record(self.record()?)
    }

    /// Decodes the whole envelope, payload included. Does not check the hash: see
    /// [`crate::verify`].
    pub fn open(&self) -> Result<Envelope, RecordError> {
        let view = self.view()?;
        let event = event::decode(view.type_name, view.version, view.payload)?;
        Ok(Envelope {
            seq: view.seq,
            id: view.id,
            time_ns: view.time_ns,
            source: Source::new(view.node, view.actor),
            prev: view.prev,
            hash: self.stored_hash()?,
            type_name: view.type_name.to_owned(),
            version: view.version,
            event,
        })
    }
}

/// Why an event could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("event {type_name} does not encode: {reason}")]
pub struct EncodeError {
    pub type_name: &'static str,
    pub reason: String,
}

/// Places `event` at `seq` after `prev`: encodes the record and computes its hash.
pub fn seal(seq: u64, prev: &Hash, event: &NewEvent) -> Result<(Entry, Hash), EncodeError> {
    let mut buf = Vec::with_capacity(160 + event.source.node.len());
    let hash = seal_into(&mut buf, seq, prev, event)?;
    Ok((
        Entry {
            seq,
            bytes: Bytes::from(buf),
        },
        hash,
    ))
}

/// Like [`seal`], but appends the entry (`record ‖ hash`) to `buf`, so a batch is encoded
/// into one buffer without a copy per event. Returns the hash.
pub fn seal_into(
    buf: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    event: &NewEvent,
) -> Result<Hash, EncodeError> {
    let start = buf.len();
    encode_record(buf, seq, prev, event)?;
    let hash = Hash::chain(prev, &buf[start..]);
    buf.extend_from_slice(&hash.0);
    Ok(hash)
}

/// Appends the record of `event` at `seq` after `prev` to `buf`: the envelope and payload,
/// without the hash. On error `buf` is left as it was.
pub fn encode_record(
    buf: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    event: &NewEvent,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let written = write_envelope(buf, seq, event, prev)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            event
                .event
                .encode_payload_into(buf)
                .map_err(|e| e.to_string())
        });
    written.map_err(|reason| {
        buf.truncate(start);
        EncodeError {
            type_name: event.event.type_name(),
            reason,
        }
    })
}

fn write_envelope(
    buf: &mut Vec<u8>,
    seq: u64,
    event: &NewEvent,
    prev: &Hash,
) -> Result<(), rmp::encode::ValueWriteError> {
    use rmp::encode::{write_array_len, write_bin, write_str, write_uint};
    write_array_len(buf, ENVELOPE_LEN)?;
    write_uint(buf, FORMAT_VERSION)?;
    write_uint(buf, seq)?;
    write_bin(buf, event.id.as_bytes())?;
    write_uint(buf, event.time_ns)?;
    write_str(buf, &event.source.node)?;
    write_str(buf, &event.source.actor)?;
    write_bin(buf, &prev.0)?;
    write_str(buf, event.event.type_name())?;
    write_uint(buf, u64::from(event.event.version()))?;
    Ok(())
}

fn parse_record(record: &[u8]) -> Result<RecordView<'_>, RecordError> {
    let malformed = |what: &str| RecordError::Malformed(what.to_owned());
    let mut rd = record;
    let len = rmp::decode::read_array_len(&mut rd).map_err(|_| malformed("not an array"))?;
    if len != ENVELOPE_LEN {
        return Err(RecordError::Malformed(format!(
            "envelope has {len} elements, expected {ENVELOPE_LEN}"
        )));
    }
    let format: u64 = rmp::decode::read_int(&mut rd).map_err(|_| malformed("format"))?;
    if format != FORMAT_VERSION {
        return Err(RecordError::UnsupportedFormat(format));
    }
    let seq: u64 = rmp::decode::read_int(&mut rd).map_err(|_| malformed("seq"))?;
    let id = read_bin(&mut rd, "id")?;
    let id = Uuid::from_slice(id).map_err(|_| malformed("id is not 16 bytes"))?;
    let time_ns: u64 = rmp::decode::read_int(&mut rd).map_err(|_| malformed("time"))?;
    let node = read_str(&mut rd, "node")?;
    let actor = read_str(&mut rd, "actor")?;
    let prev: [u8; 32] = read_bin(&mut rd, "prev")?
        .try_into()
        .map_err(|_| malformed("prev is not 32 bytes"))?;
    let type_name = read_str(&mut rd, "type")?;
    let version: u32 = rmp::decode::read_int(&mut rd).map_err(|_| malformed("version"))?;
    // The payload is the rest of the record and must be a map.
    match rd.first() {
        Some(&m) if m & 0xf0 == 0x80 || m == 0xde || m == 0xdf => {}
        _ => return Err(malformed("payload is not a map")),
    }
    Ok(RecordView {
        seq,
        id,
        time_ns,
        node,
        actor,
        prev: Hash(prev),
        type_name,
        version,
        payload: rd,
    })
}

fn read_bin<'a>(rd: &mut &'a [u8], what: &str) -> Result<&'a [u8], RecordError> {
    let len = rmp::decode::read_bin_len(rd)
        .map_err(|_| RecordError::Malformed(format!("{what} is not bin")))? as usize;
    take(rd, len, what)
}

fn read_str<'a>(rd: &mut &'a [u8], what: &str) -> Result<&'a str, RecordError> {
    let len = rmp::decode::read_str_len(rd)
        .map_err(|_| RecordError::Malformed(format!("{what} is not str")))? as usize;
    let bytes = take(rd, len, what)?;
    std::str::from_utf8(bytes).map_err(|_| RecordError::Malformed(format!("{what} is not UTF-8")))
}

fn take<'a>(rd: &mut &'a [u8], len: usize, what: &str) -> Result<&'a [u8], RecordError> {
    if rd.len() < len {
        return Err(RecordError::Malformed(format!("{what} runs past the end")));
    }
    let (head, tail) = rd.split_at(len);
    *rd = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NodeDrained, NodeJoined};

    fn joined() -> NewEvent {
        NewEvent::new(
            Source::new("node-a", "cli"),
            NodeJoined {
                node_id: "node-a".into(),
                hostname: "host".into(),
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                gpus: vec![],
                executor: "process".into(),
                labels: Default::default(),
            },
        )
    }

    #[test]
    fn seal_then_open_round_trips() {
        let new = joined();
        let (entry, hash) = seal(1, &Hash::GENESIS, &new).expect("seal");
        assert_eq!(entry.stored_hash().expect("hash"), hash);
        assert_eq!(
            hash,
            Hash::chain(&Hash::GENESIS, entry.record().expect("record"))
        );
        let env = entry.open().expect("open");
        assert_eq!(env.seq, 1);
        assert_eq!(env.id, new.id);
        assert_eq!(env.time_ns, new.time_ns);
        assert_eq!(env.source, new.source);
        assert_eq!(env.prev, Hash::GENESIS);
        assert_eq!(env.type_name, "node.joined");
        assert_eq!(env.version, 1);
        assert_eq!(env.event, new.event);
    }

    #[test]
    fn encoding_is_deterministic() {
        let new = joined();
        let a = seal(7, &Hash::of(b"p"), &new).expect("seal").0;
        let b = seal(7, &Hash::of(b"p"), &new).expect("seal").0;
        assert_eq!(a.bytes, b.bytes);
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let entry = Entry {
            seq: 1,
            bytes: Bytes::from_static(b"hello"),
        };
        assert_eq!(entry.open(), Err(RecordError::TooShort(5)));
        let mut bytes = vec![0x93u8, 1, 2, 3];
        bytes.extend_from_slice(&[0; 32]);
        let entry = Entry {
            seq: 1,
            bytes: bytes.into(),
        };
        assert!(matches!(entry.open(), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn unknown_type_is_reported_not_guessed() {
        let new = NewEvent::new(
            Source::new("n", "a"),
            NodeDrained {
                node_id: "n".into(),
                reason: "r".into(),
                by: None,
            },
        );
        let (entry, _) = seal(1, &Hash::GENESIS, &new).expect("seal");
        let mut bytes = entry.bytes.to_vec();
        // Rename the type in place ("node.drained" → "node.draineX").
        let at = bytes
            .windows(12)
            .position(|w| w == b"node.drained")
            .expect("type name present");
        bytes[at + 11] = b'X';
        let entry = Entry {
            seq: 1,
            bytes: bytes.into(),
        };
        assert!(matches!(
            entry.open(),
            Err(RecordError::Payload(DecodeError::UnknownType { .. }))
        ));
    }
}

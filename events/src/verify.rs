//! Walks a stretch of the chain and names the first entry that breaks it.

use std::fmt;

use serde::Serialize;

use crate::event;
use crate::{Entry, Error, EventLog, Hash, RecordError};

/// What is wrong with the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// The entry is not where the chain expects it: a sequence was skipped or repeated, or the
    /// record claims a different sequence than the position it is stored at.
    Gap { expected: u64, found: u64 },
    /// The record's `prev` is not the hash of the entry before it.
    BrokenLink { expected: Hash, found: Hash },
    /// The stored hash is not `SHA-256(prev ‖ record)`: the record or its hash was altered.
    HashMismatch { stored: Hash, computed: Hash },
    /// The entry is not a readable gantry record.
    Undecodable { reason: String },
    /// The chain holds, but the entry's hash is not the one a reader verified there before:
    /// the history up to it was rewritten with fresh hashes (found by the Auditor's re-checks,
    /// never by a single pass).
    Rewritten { seen: Hash, now: Hash },
    /// The log ends before the size a signed checkpoint published outside it covers: entries
    /// it promised are gone (the tail was cut, or an older copy was put back).
    ShorterThanCheckpoint { head: u64, size: u64 },
    /// The log's Merkle root at a signed checkpoint's size is not the signed one: the history
    /// that checkpoint covers was rewritten.
    RootMismatch {
        size: u64,
        signed: Hash,
        computed: Hash,
    },
    /// The signed checkpoint published outside the log cannot be read or is not this log's
    /// (another key, another origin): nothing can be checked against it.
    BadCheckpoint { reason: String },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Gap { expected, found } => {
                write!(f, "gap: expected sequence {expected}, found {found}")
            }
            Fault::BrokenLink { expected, found } => {
                write!(f, "broken link: prev is {found}, expected {expected}")
            }
            Fault::HashMismatch { stored, computed } => {
                write!(f, "hash mismatch: stored {stored}, computed {computed}")
            }
            Fault::Undecodable { reason } => write!(f, "undecodable record: {reason}"),
            Fault::Rewritten { seen, now } => write!(
                f,
                "rewritten: the entry's hash is now {now}, and it was {seen} when verified"
            ),
            Fault::BadCheckpoint { reason } => {
                write!(f, "the published checkpoint cannot be trusted: {reason}")
            }
            Fault::ShorterThanCheckpoint { head, size } => write!(
                f,
                "cut: the log ends at sequence {head}, but a signed checkpoint covers {size} entries"
            ),
            Fault::RootMismatch {
                size,
                signed,
                computed,
            } => write!(
                f,
                "rewritten: the Merkle root of the first {size} entries is {computed}, but a signed checkpoint says {signed}"
            ),
        }
    }
}

/// The first bad entry of a verified stretch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("chain breaks at sequence {seq}: {fault}")]
pub struct Break {
    pub seq: u64,
    pub fault: Fault,
}

/// A stretch of the chain that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Entries checked.
    pub count: u64,
    /// Sequence of the first entry checked (0 if none).
    pub first_seq: u64,
    /// Sequence of the last entry checked: the head of the stretch (0 if none).
    pub last_seq: u64,
    /// Hash of the last entry checked ([`Hash::GENESIS`] if none).
    pub head: Hash,
}

/// Checks entries one at a time, in order.
///
/// Each entry must sit at the sequence after the previous one, link to the previous hash, hash
/// to its stored hash, and decode to a known event type. Once an entry fails, the verifier
/// keeps returning that failure.
#[derive(Debug, Clone)]
pub struct Verifier {
    next_seq: u64,
    /// The hash the next entry must link to; `None` when starting mid-chain without an anchor,
    /// in which case the first entry's own `prev` is taken on trust.
    prev: Option<Hash>,
    first_seq: u64,
    count: u64,
    broken: Option<Break>,
    check_payloads: bool,
}

impl Verifier {
    /// Verifies a chain from its start: the first entry must be sequence 1 and link to
    /// [`Hash::GENESIS`].
    pub fn from_genesis() -> Verifier {
        Verifier::anchored(1, Hash::GENESIS)
    }

    /// Verifies from `next_seq`, whose entry must link to `prev` (the hash of `next_seq - 1`).
    pub fn anchored(next_seq: u64, prev: Hash) -> Verifier {
        Verifier {
            next_seq,
            prev: Some(prev),
            first_seq: 0,
            count: 0,
            broken: None,
            check_payloads: true,
        }
    }

    /// Verifies from `next_seq` without knowing the hash before it: the first entry's `prev` is
    /// trusted. Used for exports that start mid-chain.
    pub fn unanchored(next_seq: u64) -> Verifier {
        Verifier {
            prev: None,
            ..Verifier::anchored(next_seq, Hash::GENESIS)
        }
    }

    /// Whether to decode every payload into its typed event (the default). Turning it off
    /// checks only what an independent verifier checks: framing, sequence, links and hashes.
    pub fn check_payloads(mut self, check: bool) -> Verifier {
        self.check_payloads = check;
        self
    }

    /// The sequence the next entry must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Checks one entry.
    pub fn push(&mut self, entry: &Entry) -> Result<(), Break> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        match self.check(entry) {
            Ok(hash) => {
                if self.count == 0 {
                    self.first_seq = entry.seq;
                }
                self.count += 1;
                self.next_seq = entry.seq + 1;
                self.prev = Some(hash);
                Ok(())
            }
            Err(fault) => {
                let broken = Break {
                    seq: entry.seq,
                    fault,
                };
                self.broken = Some(broken.clone());
                Err(broken)
            }
        }
    }

    fn check(&self, entry: &Entry) -> Result<Hash, Fault> {
        let undecodable = |e: RecordError| Fault::Undecodable {
            reason: e.to_string(),
        };
        if entry.seq != self.next_seq {
            return Err(Fault::Gap {
                expected: self.next_seq,
                found: entry.seq,
            });
        }
        let view = entry.view().map_err(undecodable)?;
        if view.seq != entry.seq {
            return Err(Fault::Gap {
                expected: entry.seq,
                found: view.seq,
            });
        }
        if let Some(expected) = self.prev
            && view.prev != expected
        {
            return Err(Fault::BrokenLink {
                expected,
                found: view.prev,
            });
        }
        let stored = entry.stored_hash().map_err(undecodable)?;
        let computed = Hash::chain(&view.prev, entry.record().map_err(undecodable)?);
        if stored != computed {
            return Err(Fault::HashMismatch { stored, computed });
        }
        if self.check_payloads {
            event::decode(view.type_name, view.version, view.payload)
                .map_err(|e| undecodable(e.into()))?;
        }
        Ok(stored)
    }

    /// The result so far.
    pub fn finish(&self) -> Result<Verified, Break> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        Ok(Verified {
            count: self.count,
            first_seq: if self.count == 0 { 0 } else { self.first_seq },
            last_seq: if self.count == 0 {
                0
            } else {
                self.next_seq - 1
            },
            head: self.prev.unwrap_or(Hash::GENESIS),
        })
    }
}

/// Verifies a whole chain held in memory, from genesis.
pub fn verify<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Result<Verified, Break> {
    let mut verifier = Verifier::from_genesis();
    for entry in entries {
        verifier.push(entry)?;
    }
    verifier.finish()
}

/// Entries read per step by [`verify_log`].
const VERIFY_CHUNK: usize = 4096;

/// Verifies a log from sequence `from` (≥ 1) through `to` (its end when `None`).
///
/// Starting mid-chain, the entry before `from` anchors the check. The outer error is the log
/// failing to answer; the inner one is the chain breaking.
pub async fn verify_log(
    log: &dyn EventLog,
    from: u64,
    to: Option<u64>,
) -> Result<Result<Verified, Break>, Error> {
    let from = from.max(1);
    let to = to.unwrap_or(u64::MAX);
    let mut verifier = if from == 1 {
        Verifier::from_genesis()
    } else {
        match log.read(from - 1, 1).await {
            Ok(before) => match before.first().map(Entry::stored_hash) {
                Some(Ok(anchor)) => Verifier::anchored(from, anchor),
                _ => Verifier::unanchored(from),
            },
            Err(Error::Broken { .. }) => Verifier::unanchored(from),
            Err(e) => return Err(e),
        }
    };
    let mut next = from;
    while next <= to {
        let want = usize::try_from(to - next + 1)
            .unwrap_or(usize::MAX)
            .min(VERIFY_CHUNK);
        let entries = match log.read(next, want).await {
            Ok(entries) => entries,
            Err(Error::Broken { seq, reason }) => {
                return Ok(Err(Break {
                    seq,
                    fault: Fault::Undecodable { reason },
                }));
            }
            Err(e) => return Err(e),
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in entries.iter().filter(|e| e.seq <= to) {
            if let Err(broken) = verifier.push(entry) {
                return Ok(Err(broken));
            }
        }
        next = last + 1;
    }
    Ok(verifier.finish())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::event::NodeLost;
    use crate::{NewEvent, Source, seal};

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = Hash::GENESIS;
        (1..=n)
            .map(|seq| {
                let event = NewEvent::new(
                    Source::new("n1", "test"),
                    NodeLost {
                        node_id: format!("n{seq}"),
                        reason: "test".into(),
                    },
                );
                let (entry, hash) = seal(seq, &prev, &event).expect("seal");
                prev = hash;
                entry
            })
            .collect()
    }

    fn fault_at(entries: &[Entry]) -> (u64, Fault) {
        let broken = verify(entries).expect_err("chain should break");
        (broken.seq, broken.fault)
    }

    #[test]
    fn a_sound_chain_verifies() {
        let entries = chain(5);
        let ok = verify(&entries).expect("verifies");
        assert_eq!((ok.count, ok.first_seq, ok.last_seq), (5, 1, 5));
        assert_eq!(ok.head, entries[4].stored_hash().expect("hash"));
        assert_eq!(verify(&[]).expect("empty").head, Hash::GENESIS);
    }

    #[test]
    fn flipped_payload_byte_is_a_hash_mismatch() {
        let mut entries = chain(5);
        let mut bytes = entries[2].bytes.to_vec();
        let at = bytes.len() - 40; // inside the payload, before the hash
        bytes[at] ^= 0x01;
        entries[2].bytes = Bytes::from(bytes);
        let (seq, fault) = fault_at(&entries);
        assert_eq!(seq, 3);
        assert!(
            matches!(
                fault,
                Fault::HashMismatch { .. } | Fault::Undecodable { .. }
            ),
            "{fault}"
        );
    }

    #[test]
    fn flipped_hash_byte_is_a_hash_mismatch() {
        let mut entries = chain(5);
        let mut bytes = entries[3].bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        entries[3].bytes = Bytes::from(bytes);
        let (seq, fault) = fault_at(&entries);
        assert_eq!(seq, 4);
        assert!(matches!(fault, Fault::HashMismatch { .. }), "{fault}");
    }

    #[test]
    fn a_replaced_entry_is_a_broken_link() {
        let mut entries = chain(5);
        let other = chain(5);
        // Entry 3 of another chain is sound on its own but does not link to this entry 2.
        entries[2] = other[2].clone();
        let (seq, fault) = fault_at(&entries);
        assert_eq!(seq, 3);
        assert!(matches!(fault, Fault::BrokenLink { .. }), "{fault}");
    }

    #[test]
    fn a_missing_entry_is_a_gap() {
        let mut entries = chain(5);
        entries.remove(1);
        assert_eq!(
            fault_at(&entries),
            (
                3,
                Fault::Gap {
                    expected: 2,
                    found: 3
                }
            )
        );
    }

    #[test]
    fn a_record_stored_at_the_wrong_position_is_a_gap() {
        let mut entries = chain(3);
        entries[1].seq = 2;
        entries[2] = Entry {
            seq: 3,
            bytes: entries[1].bytes.clone(),
        };
        let (seq, fault) = fault_at(&entries);
        assert_eq!(seq, 3);
        assert_eq!(
            fault,
            Fault::Gap {
                expected: 3,
                found: 2
            }
        );
    }

    #[test]
    fn garbage_is_undecodable() {
        let mut entries = chain(3);
        entries.push(Entry {
            seq: 4,
            bytes: Bytes::from_static(b"published around the chain"),
        });
        let (seq, fault) = fault_at(&entries);
        assert_eq!(seq, 4);
        assert!(matches!(fault, Fault::Undecodable { .. }), "{fault}");
    }

    #[test]
    fn mid_chain_verification_uses_the_anchor() {
        let entries = chain(6);
        let anchor = entries[2].stored_hash().expect("hash");
        let mut v = Verifier::anchored(4, anchor);
        for e in &entries[3..] {
            v.push(e).expect("links to the anchor");
        }
        assert_eq!(v.finish().expect("ok").first_seq, 4);
        let mut wrong = Verifier::anchored(4, Hash::of(b"not it"));
        assert!(matches!(
            wrong.push(&entries[3]),
            Err(Break {
                seq: 4,
                fault: Fault::BrokenLink { .. }
            })
        ));
        let mut trusting = Verifier::unanchored(4);
        for e in &entries[3..] {
            trusting.push(e).expect("first prev trusted");
        }
    }
}

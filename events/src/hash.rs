//! The chain hash: a SHA-256 digest that links every event to the one before it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
///
/// Written as 32 raw bytes (MessagePack `bin 8`) in binary formats and as 64 lowercase hex
/// digits in human-readable ones (JSON).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev` of the first event of every chain: 32 zero bytes.
    pub const GENESIS: Hash = Hash([0; 32]);

    /// The chain hash of an event: `SHA-256(prev ‖ record)`, where `record` is the event's stored
    /// bytes exactly as written (see `events/FORMAT.md`).
    pub fn chain(prev: &Hash, record: &[u8]) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(prev.0);
        hasher.update(record);
        Hash(hasher.finalize().into())
    }

    /// SHA-256 of arbitrary bytes (artifact contents, for example).
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Hash(out))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Hash::from_hex(&text).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
        } else {
            let bytes: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(deserializer)?;
            let array: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| D::Error::invalid_length(bytes.len(), &"32 bytes"))?;
            Ok(Hash(array))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_covers_prev_and_record() {
        let a = Hash::chain(&Hash::GENESIS, b"record");
        let b = Hash::chain(&Hash::of(b"x"), b"record");
        let c = Hash::chain(&Hash::GENESIS, b"recorD");
        assert_ne!(a, b);
        assert_ne!(a, c);
        // SHA-256 of 32 zero bytes followed by "record", computed independently.
        let mut input = vec![0u8; 32];
        input.extend_from_slice(b"record");
        assert_eq!(a, Hash::of(&input));
    }

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"gantry");
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("zz"), None);
        assert_eq!(
            Hash::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

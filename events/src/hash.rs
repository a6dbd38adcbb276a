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

/// In JSON a hash is 64 lowercase hex digits.
impl utoipa::PartialSchema for Hash {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some("^[0-9a-f]{64}$"))
            .description(Some("SHA-256, 64 lowercase hex digits"))
            .into()
    }
}

impl utoipa::ToSchema for Hash {}

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
        // Either form is taken whatever the format claims: serde buffers the fields of an
        // internally tagged enum and then reports them as human-readable even when they came
        // from MessagePack as bytes.
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Hash;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("32 bytes or 64 hex digits")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Hash, E> {
                Hash::from_hex(text).ok_or_else(|| E::custom("expected 64 hex digits"))
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Hash, E> {
                let array: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| E::invalid_length(bytes.len(), &"32 bytes"))?;
                Ok(Hash(array))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Hash, E> {
                self.visit_bytes(&bytes)
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Visitor)
        } else {
            deserializer.deserialize_bytes(Visitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_decodes_from_bytes_inside_an_internally_tagged_enum() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        enum Tagged {
            One { hash: Hash },
        }
        let value = Tagged::One {
            hash: Hash::of(b"x"),
        };
        let bytes = rmp_serde::to_vec_named(&value).expect("encode");
        assert_eq!(
            rmp_serde::from_slice::<Tagged>(&bytes).expect("decode"),
            value
        );
        let json = serde_json::to_string(&value).expect("json");
        assert_eq!(serde_json::from_str::<Tagged>(&json).expect("json"), value);
    }

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

//! Checkpoints of the log — (origin, size, Merkle root) — as signed notes in the text format
//! transparency logs use (C2SP `tlog-checkpoint` inside a C2SP `signed-note`), so tools
//! outside gantry can check them with the public key alone:
//!
//! ```text
//! gantry                     origin: names the log (`gantry up --log-name`)
//! 1234                       size: entries covered
//! <base64 root>              the RFC 6962 root of those entries (see [`crate::merkle`])
//! [extension lines]          e.g. `time 1764400000` (Unix seconds)
//!
//! — <key name> <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! The signature covers the text up to and including the newline before the blank line. The
//! key id is the first 4 bytes of `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key)`; a verifier
//! key is written `<name>+<key id, 8 hex digits>+<base64(0x01 ‖ public key)>`.
//!
//! The Auditor signs them (`gantry_actors::actor::auditor`); `gantry audit` and
//! `gantry log verify --checkpoint` check them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// The signature algorithm byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// What starts a signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a checkpoint or a key could not be read or trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("malformed verifier key: {0}")]
    BadKey(String),
    #[error("the checkpoint carries no signature by key {0}")]
    NotSigned(String),
    #[error("the signature by key {0} does not match the checkpoint")]
    BadSignature(String),
}

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Names the log (one line, not empty).
    pub origin: String,
    /// How many entries it covers.
    pub size: u64,
    /// The Merkle root of those entries.
    pub root: Hash,
    /// Further lines, each non-empty.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The signed text: one line each, ending with a newline.
    pub fn body(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root.0)
        );
        for line in &self.extensions {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the text does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| malformed("no origin line"))?;
        let size = lines.next().ok_or_else(|| malformed("no size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(malformed("the size is not a decimal number"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| malformed("the size is too large"))?;
        let root = lines.next().ok_or_else(|| malformed("no root line"))?;
        let root: [u8; 32] = STANDARD
            .decode(root)
            .ok()
            .and_then(|raw| raw.try_into().ok())
            .ok_or_else(|| malformed("the root is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed("an empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root: Hash(root),
            extensions,
        })
    }
}

fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519]);
    hasher.update(public.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(CheckpointError::BadKey(format!(
            "the key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// Signs checkpoints with an Ed25519 key of a name.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key", &"***")
            .finish()
    }
}

impl NoteSigner {
    /// The signer of the Ed25519 key with this 32-byte seed.
    pub fn new(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, CheckpointError> {
        check_name(name)?;
        Ok(NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// The verifier key, for anyone checking the checkpoints.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key();
        let mut raw = vec![ED25519];
        raw.extend_from_slice(public.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, &public)),
            STANDARD.encode(raw)
        )
    }

    /// The name it signs as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What checks its signatures.
    pub fn verifier(&self) -> NoteVerifier {
        let key = self.key.verifying_key();
        NoteVerifier {
            name: self.name.clone(),
            id: key_id(&self.name, &key),
            key,
        }
    }

    /// The checkpoint as a signed note.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes());
        let mut raw = key_id(&self.name, &self.key.verifying_key()).to_vec();
        raw.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(raw)
        )
    }
}

/// Checks signed checkpoints against one verifier key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The name of the key it checks.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads a verifier key (`name+keyid+base64`).
    pub fn parse(text: &str) -> Result<NoteVerifier, CheckpointError> {
        let bad = |why: &str| CheckpointError::BadKey(why.to_owned());
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected name+keyid+key"));
        };
        check_name(name)?;
        let raw = STANDARD
            .decode(key)
            .map_err(|_| bad("the key is not base64"))?;
        let (Some(&ED25519), Ok(public)) =
            (raw.first(), <[u8; 32]>::try_from(&raw[1.min(raw.len())..]))
        else {
            return Err(bad("not an Ed25519 key"));
        };
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("not a valid Ed25519 key"))?;
        let want = key_id(name, &key);
        if hex::decode(id).ok().as_deref() != Some(&want[..]) {
            return Err(bad("the key id does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            id: want,
            key,
        })
    }

    /// The checkpoint a signed note states, once its signature by this key is checked.
    /// Signatures by other keys are ignored; a note this key did not sign is refused.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let split = note
            .find("\n\n")
            .ok_or_else(|| malformed("no blank line before the signatures"))?;
        let (body, signatures) = (&note[..=split], &note[split + 2..]);
        let checkpoint = Checkpoint::parse_body(body)?;
        let mut found = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix(SIGNATURE_PREFIX) else {
                return Err(malformed("a signature line does not start with an em dash"));
            };
            let Some((name, signature)) = rest.split_once(' ') else {
                return Err(malformed("a signature line has no signature"));
            };
            let raw = STANDARD
                .decode(signature)
                .map_err(|_| malformed("a signature is not base64"))?;
            if name != self.name || raw.len() < 4 || raw[..4] != self.id {
                continue;
            }
            found = true;
            let signature = <[u8; 64]>::try_from(&raw[4..])
                .map(|b| Signature::from_bytes(&b))
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            self.key
                .verify(body.as_bytes(), &signature)
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(CheckpointError::NotSigned(self.name.clone()));
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "gantry/test-log".into(),
            size: 42,
            root: Hash([9; 32]),
            extensions: vec!["time 1764400000000".into()],
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_states_what_was_signed() {
        let signer = NoteSigner::new("gantry-audit", &[7; 32]).expect("signer");
        let note = signer.sign(&checkpoint());
        assert!(note.starts_with("gantry/test-log\n42\n"), "{note}");
        assert!(note.contains("\n\n\u{2014} gantry-audit "), "{note}");
        let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("key");
        assert_eq!(verifier.open(&note), Ok(checkpoint()));
        // Ed25519 is deterministic: the same key signs the same text the same way.
        assert_eq!(note, signer.sign(&checkpoint()));
    }

    #[test]
    fn a_changed_checkpoint_another_key_or_a_forged_key_is_refused() {
        let signer = NoteSigner::new("gantry-audit", &[7; 32]).expect("signer");
        let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("key");
        let note = signer.sign(&checkpoint());

        // A larger size, the same signature.
        let bigger = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            verifier.open(&bigger),
            Err(CheckpointError::BadSignature("gantry-audit".into()))
        );
        // Signed by another key of the same name: not this key's signature.
        let other = NoteSigner::new("gantry-audit", &[8; 32]).expect("signer");
        assert_eq!(
            verifier.open(&other.sign(&checkpoint())),
            Err(CheckpointError::NotSigned("gantry-audit".into()))
        );
        // A verifier key whose id does not match its key.
        let key = signer.verifier_key();
        let mut parts: Vec<&str> = key.splitn(3, '+').collect();
        parts[1] = "00000000";
        assert!(matches!(
            NoteVerifier::parse(&parts.join("+")),
            Err(CheckpointError::BadKey(_))
        ));
        // Malformed notes.
        for bad in [
            "",
            "gantry/x\n42\n",
            "gantry/x\nforty-two\nAAAA\n\n\u{2014} gantry-audit AAAA\n",
            "gantry/x\n042\nAAAA\n\n\u{2014} gantry-audit AAAA\n",
            "gantry/x\n42\nnot-base64!\n\n\u{2014} gantry-audit AAAA\n",
        ] {
            assert!(
                matches!(verifier.open(bad), Err(CheckpointError::Malformed(_))),
                "{bad:?}: {:?}",
                verifier.open(bad)
            );
        }
    }

    #[test]
    fn a_verifier_key_whose_base64_holds_a_plus_reads_back() {
        // The standard base64 alphabet has `+`: only the first two separate the fields.
        let signer = (0u8..=255)
            .map(|seed| NoteSigner::new("gantry", &[seed; 32]).expect("signer"))
            .find(|s| {
                s.verifier_key()
                    .splitn(3, '+')
                    .nth(2)
                    .is_some_and(|k| k.contains('+'))
            })
            .expect("some seed's key has a + in its base64");
        let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("parses");
        assert_eq!(verifier.open(&signer.sign(&checkpoint())), Ok(checkpoint()));
    }
}

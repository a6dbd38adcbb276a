//! Secrets for jobs: values that must never reach the log, a view, an API answer or a
//! container's configuration.
//!
//! A job names its secret environment variables either inline (`secrets` in the request) or by
//! reference (`env` values `secret://NAME`, a secret stored with `gantry secrets set NAME`).
//! The gateway puts inline values into the [`SecretStore`] before the job is submitted, so what
//! the Scheduler decides on and the log records is only, per variable, the secret's name in
//! the store and a keyed hash of its value. A node asks the control plane for the values of the
//! attempt it was placed (and of no other), hands them to the executor at start, and masks them
//! in the output it keeps.
//!
//! Names in the store are `<group>/<name>`: a job reaches only its own group's secrets.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A secret value: serialised as itself (it crosses to the store and the executor), printed
/// as `***` by `Debug` so no log line shows it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

/// A secret value: a string the API takes and never gives back.
impl utoipa::PartialSchema for SecretString {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Password,
            )))
            .write_only(true)
            .into()
    }
}

impl utoipa::ToSchema for SecretString {}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The secret environment of one attempt: variable name to value.
pub type SecretValues = BTreeMap<String, SecretString>;

/// Why the secret store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The store cannot be reached or written; 503.
    #[error("secret store unavailable: {0}")]
    Unavailable(String),
    /// A stored value does not decrypt under this server's key (a different key, or damage).
    #[error("secret {name} does not decrypt: {reason}")]
    Undecryptable { name: String, reason: String },
}

/// Where secret values are kept, encrypted at rest. Implementations live in `gantry-nodes`:
/// files under the data dir (embedded) and a NATS key-value bucket (fleet).
pub trait SecretStore: Send + Sync + 'static {
    /// Stores (or replaces) `name`, durably before answering.
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), SecretError>>;

    /// The value of `name`, if stored.
    fn get<'a>(&'a self, name: &'a str)
    -> BoxFuture<'a, Result<Option<SecretString>, SecretError>>;

    /// Deletes `name` (nothing when absent).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SecretError>>;

    /// Every stored name starting with `prefix`.
    fn names<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>>;
}

/// The scheme of an `env` value that names a stored secret: `secret://hf-token`.
pub const SECRET_SCHEME: &str = "secret://";

/// Shortest secret value masked in output: shorter ones would mask ordinary text.
pub const MIN_MASKED_BYTES: usize = 4;

/// What replaces a secret value in kept output.
pub const MASK: &str = "***";

/// Replaces every secret value (and each line of a multi-line one) in a line of output.
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a value that contains another is masked whole.
    needles: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("values", &self.needles.len())
            .finish()
    }
}

impl Masker {
    pub fn new(values: &SecretValues) -> Masker {
        let mut needles: Vec<String> = values
            .values()
            .flat_map(|v| std::iter::once(v.0.clone()).chain(v.0.lines().map(str::to_owned)))
            .filter(|n| n.len() >= MIN_MASKED_BYTES)
            .collect();
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Masker { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The line with every secret replaced by `***`.
    pub fn mask<'a>(&self, line: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(line);
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(needle.as_str(), MASK));
            }
        }
        out
    }
}

/// A secret's own name (`hf-token`): 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The name in the store of secret `name` of `group`.
pub fn stored_name(group: &str, name: &str) -> String {
    format!("{group}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_whole_and_line_by_line_and_never_debug_printed() {
        let values = SecretValues::from([
            ("TOKEN".into(), SecretString("hunter2-token".into())),
            ("KEY".into(), SecretString("line-one\nline-two".into())),
            ("PIN".into(), SecretString("42".into())),
        ]);
        let masker = Masker::new(&values);
        assert_eq!(masker.mask("token=hunter2-token!"), "token=***!");
        assert_eq!(masker.mask("got line-two here"), "got *** here");
        assert_eq!(masker.mask("answer 42"), "answer 42", "too short to mask");
        assert_eq!(format!("{values:?}").matches("***").count(), 3);
        assert!(!format!("{values:?}").contains("hunter2"));
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(valid_name("hf-token.v2"));
        for bad in ["", "a/b", "../x", "with space", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(stored_name("vision", "hf"), "vision/hf");
    }
}

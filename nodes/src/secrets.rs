//! The secret stores: values sealed with XChaCha20-Poly1305 under a key derived from the
//! server's secret key (kept outside the data dir), each bound to its name (swapping two sealed
//! values is detected), in files under the data dir (embedded) or a NATS key-value bucket
//! (fleet, where every control plane shares the secret key and nodes never see the bucket).

use std::path::{Path, PathBuf};

use async_nats::jetstream::kv;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::secrets::{SecretError, SecretStore, SecretString};

/// Format of a sealed value: this byte, the 24-byte nonce, then the ciphertext and tag.
const SEALED_V1: u8 = 1;
const NONCE_BYTES: usize = 24;

/// Seals and opens secret values.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer under a key derived from the server's secret key.
    pub fn new(secret_key: &[u8]) -> Sealer {
        let key = gantry_gateway::auth::hmac_sha256(secret_key, b"gantry secret store v1");
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    pub fn seal(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Unavailable(e.to_string()))?;
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unavailable("sealing failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        let undecryptable = |reason: &str| SecretError::Undecryptable {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if sealed.len() < 1 + NONCE_BYTES || sealed[0] != SEALED_V1 {
            return Err(undecryptable("not a sealed value of a known format"));
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&sealed[1..1 + NONCE_BYTES]),
                Payload {
                    msg: &sealed[1 + NONCE_BYTES..],
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| undecryptable("wrong secret key, or damaged"))
    }

    fn open_string(&self, name: &str, sealed: &[u8]) -> Result<SecretString, SecretError> {
        let plain = self.open(name, sealed)?;
        String::from_utf8(plain)
            .map(SecretString)
            .map_err(|_| SecretError::Undecryptable {
                name: name.to_owned(),
                reason: "not UTF-8".into(),
            })
    }
}

/// Names as file names and bucket keys: hex, so no name can reach outside its folder.
fn encode_name(name: &str) -> String {
    hex::encode(name.as_bytes())
}

fn decode_name(encoded: &str) -> Option<String> {
    String::from_utf8(hex::decode(encoded).ok()?).ok()
}

/// Secrets in files under a folder of the data dir (mode 0700), one sealed file each.
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    dir: PathBuf,
    sealer: Sealer,
}

impl FileSecretStore {
    pub fn open(dir: &Path, sealer: Sealer) -> std::io::Result<FileSecretStore> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(FileSecretStore {
            dir: dir.to_owned(),
            sealer,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(encode_name(name))
    }
}

fn unavailable(e: impl std::fmt::Display) -> SecretError {
    SecretError::Unavailable(e.to_string())
}

/// Writes `bytes` to `path` durably: a temporary file, fsynced, renamed, the folder fsynced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl SecretStore for FileSecretStore {
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        async move {
            let sealed = self.sealer.seal(name, value.0.as_bytes())?;
            let path = self.path(name);
            tokio::task::spawn_blocking(move || write_durably(&path, &sealed))
                .await
                .map_err(unavailable)?
                .map_err(unavailable)
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        async move {
            match tokio::fs::read(self.path(name)).await {
                Ok(sealed) => Ok(Some(self.sealer.open_string(name, &sealed)?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SecretError>> {
        async move {
            match tokio::fs::remove_file(self.path(name)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(unavailable(e)),
            }
        }
        .boxed()
    }

    fn names<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        async move {
            let mut out = Vec::new();
            let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(unavailable)?;
            while let Some(entry) = entries.next_entry().await.map_err(unavailable)? {
                if let Some(name) = entry.file_name().to_str().and_then(decode_name)
                    && name.starts_with(prefix)
                {
                    out.push(name);
                }
            }
            out.sort();
            Ok(out)
        }
        .boxed()
    }
}

/// The fleet's secret bucket.
pub const BUCKET: &str = "gantry_secrets";

/// Secrets in a NATS key-value bucket, sealed before they leave the control plane.
#[derive(Clone)]
pub struct KvSecretStore {
    kv: kv::Store,
    sealer: Sealer,
}

impl std::fmt::Debug for KvSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvSecretStore")
    }
}

impl KvSecretStore {
    /// Opens (or creates) the bucket.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        replicas: usize,
        sealer: Sealer,
    ) -> Result<KvSecretStore, SecretError> {
        let kv = crate::nats::open_bucket(js, BUCKET, replicas)
            .await
            .map_err(|e| unavailable(format!("the secret bucket: {e}")))?;
        Ok(KvSecretStore { kv, sealer })
    }
}

impl SecretStore for KvSecretStore {
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        async move {
            let sealed = self.sealer.seal(name, value.0.as_bytes())?;
            self.kv
                .put(encode_name(name), sealed.into())
                .await
                .map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        async move {
            match self.kv.get(encode_name(name)).await.map_err(unavailable)? {
                Some(sealed) => Ok(Some(self.sealer.open_string(name, &sealed)?)),
                None => Ok(None),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SecretError>> {
        async move {
            self.kv
                .purge(encode_name(name))
                .await
                .map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn names<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        async move {
            use futures::TryStreamExt;
            let keys: Vec<String> = match self.kv.keys().await {
                Ok(keys) => keys.try_collect().await.map_err(unavailable)?,
                Err(e) => return Err(unavailable(e)),
            };
            let mut out: Vec<String> = keys
                .iter()
                .filter_map(|k| decode_name(k))
                .filter(|n| n.starts_with(prefix))
                .collect();
            out.sort();
            Ok(out)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_name() {
        let sealer = Sealer::new(&[1; 32]);
        let sealed = sealer.seal("vision/hf", b"hunter2").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(sealer.open("vision/hf", &sealed).expect("open"), b"hunter2");
        assert!(
            sealer.open("audio/hf", &sealed).is_err(),
            "bound to its name"
        );
        assert!(Sealer::new(&[2; 32]).open("vision/hf", &sealed).is_err());
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(sealer.open("vision/hf", &damaged).is_err());
    }

    #[tokio::test]
    async fn the_file_store_keeps_values_sealed_and_lists_by_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileSecretStore::open(&dir.path().join("secrets"), Sealer::new(&[3; 32]))
            .expect("open");
        let value = SecretString("s3cr3t-value".into());
        store.put("vision/a", &value).await.expect("put");
        store.put("audio/b", &value).await.expect("put");
        assert_eq!(store.get("vision/a").await.expect("get"), Some(value));
        assert_eq!(store.get("vision/none").await.expect("get"), None);
        assert_eq!(
            store.names("vision/").await.expect("names"),
            vec!["vision/a".to_owned()]
        );
        for entry in std::fs::read_dir(dir.path().join("secrets")).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(!bytes.windows(12).any(|w| w == b"s3cr3t-value"));
        }
        store.delete("vision/a").await.expect("delete");
        assert_eq!(store.get("vision/a").await.expect("get"), None);
    }
}

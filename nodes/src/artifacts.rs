//! The local artifact store: content-addressed files under the data dir
//! (`artifacts/sha256/<2 hex>/<64 hex>`), so identical outputs are kept once. A file is copied
//! to a temporary name while it is hashed, fsynced, then renamed into place.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use gantry_actors::artifacts::{ArtifactError, ArtifactStore, Stored};
use gantry_events::Hash;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read or written at a time.
const CHUNK: usize = 256 << 10;

/// Artifacts in a folder of this machine.
#[derive(Debug, Clone)]
pub struct LocalArtifactStore {
    root: PathBuf,
}

fn unavailable(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Unavailable(e.to_string())
}

impl LocalArtifactStore {
    pub fn open(root: &Path) -> std::io::Result<LocalArtifactStore> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(LocalArtifactStore {
            root: root.to_owned(),
        })
    }

    /// The file of a location this store made (`sha256/<64 hex>`); any other text is refused,
    /// so no location can name a path outside the store.
    fn path_of(&self, location: &str) -> Result<PathBuf, ArtifactError> {
        let hex = location
            .strip_prefix("sha256/")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ArtifactError::NotFound(location.to_owned()))?;
        Ok(self.root.join("sha256").join(&hex[..2]).join(hex))
    }

    fn put_blocking(&self, source: &Path) -> Result<Stored, ArtifactError> {
        let mut input = std::fs::File::open(source).map_err(unavailable)?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(unavailable)?;
        let tmp = self.root.join("tmp").join(hex::encode(tag));
        let mut output = std::fs::File::create(&tmp).map_err(unavailable)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let copied = (|| -> std::io::Result<()> {
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n])?;
                size += n as u64;
            }
            output.sync_all()
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(unavailable(e));
        }
        let sha256 = Hash(hasher.finalize().into());
        let location = format!("sha256/{}", sha256.to_hex());
        let path = self.path_of(&location)?;
        if path.exists() {
            // The same bytes are already kept.
            let _ = std::fs::remove_file(&tmp);
        } else {
            let dir = path.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            std::fs::rename(&tmp, &path).map_err(unavailable)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(unavailable)?;
        }
        Ok(Stored {
            location,
            sha256,
            size_bytes: size,
        })
    }
}

impl ArtifactStore for LocalArtifactStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn put_file<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Stored, ArtifactError>> {
        let (store, path) = (self.clone(), path.to_owned());
        async move {
            tokio::task::spawn_blocking(move || store.put_blocking(&path))
                .await
                .map_err(unavailable)?
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        location: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, ArtifactError>>, ArtifactError>>
    {
        async move {
            let path = self.path_of(location)?;
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ArtifactError::NotFound(location.to_owned()));
                }
                Err(e) => return Err(unavailable(e)),
            };
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(unavailable)?;
            let remaining = end.saturating_sub(start);
            let stream =
                futures::stream::unfold((file, remaining), |(mut file, left)| async move {
                    if left == 0 {
                        return None;
                    }
                    let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
                    match file.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
                        }
                        Err(e) => Some((Err(unavailable(e)), (file, 0))),
                    }
                });
            Ok(Box::pin(stream) as BoxStream<'static, _>)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<(), ArtifactError>> {
        async move {
            let path = self.path_of(location)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(unavailable(e)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn files_are_kept_once_by_content_and_read_back_by_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalArtifactStore::open(&dir.path().join("artifacts")).expect("open");
        let a = dir.path().join("a");
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &body).expect("write");
        let b = dir.path().join("b");
        std::fs::write(&b, &body).expect("write");
        let first = store.put_file(&a).await.expect("put");
        let second = store.put_file(&b).await.expect("put");
        assert_eq!(first, second, "the same bytes, one location");
        assert_eq!(first.sha256, Hash::of(&body));
        assert_eq!(first.size_bytes, body.len() as u64);
        let read = |start, end| {
            let store = store.clone();
            let location = first.location.clone();
            async move {
                let mut stream = store.read(&location, start, end).await.expect("read");
                let mut out = Vec::new();
                while let Some(chunk) = stream.next().await {
                    out.extend_from_slice(&chunk.expect("chunk"));
                }
                out
            }
        };
        assert_eq!(read(0, body.len() as u64).await, body);
        assert_eq!(read(10, 20).await, body[10..20]);
        for bad in ["../../etc/passwd", "sha256/../../x", "sha256/zz"] {
            assert!(matches!(
                store.read(bad, 0, 1).await.err(),
                Some(ArtifactError::NotFound(_))
            ));
        }
    }
}

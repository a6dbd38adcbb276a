//! The S3 artifact store (aws-sdk-s3; AWS, MinIO or any S3-compatible endpoint). Keys are
//! content-addressed, `<prefix>sha256/<hex>`, so the same bytes are uploaded once: a file is
//! hashed first, and uploaded only when its key is not there yet. Up to 4 GiB it goes up in one
//! PUT streamed from the file, carrying its SHA-256 (`x-amz-checksum-sha256`), which the server
//! checks: a file that changed after it was hashed is refused. Larger files go up as a
//! multipart upload of 16 MiB parts, re-hashed as they are read and aborted on any failure.
//! Memory stays bounded whatever the size. The SDK retries throttled and failed requests with
//! backoff.

use std::io::Read;
use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use gantry_actors::artifacts::{ArtifactError, ArtifactStore, Stored};
use gantry_events::Hash;
use sha2::{Digest, Sha256};

/// Bytes per part (S3 wants at least 5 MiB for every part but the last).
const PART: usize = 16 << 20;

/// Files up to this size go up in one streamed PUT (S3 takes up to 5 GiB in one).
pub const SINGLE_PUT_MAX: u64 = 4 << 30;

/// Where and how to reach the bucket.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Options {
    /// Keep artifacts in this S3 bucket instead of the data dir. Credentials come from the
    /// usual AWS environment variables or profile.
    #[arg(long, env = "GANTRY_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// An S3-compatible endpoint (MinIO: `http://minio:9000`); default: AWS.
    #[arg(long, env = "GANTRY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region (default: from the AWS configuration, else us-east-1).
    #[arg(long, env = "GANTRY_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and most S3-compatible
    /// servers want.
    #[arg(long, env = "GANTRY_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// A prefix for every key gantry writes (`gantry/`).
    #[arg(long, env = "GANTRY_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
}

/// Artifacts in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3ArtifactStore {
    client: Client,
    bucket: String,
    prefix: String,
    /// Larger files go up in parts.
    single_put_max: u64,
}

fn unavailable(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Unavailable(e.to_string())
}

/// The full message of an SDK error (its `Display` is only the outermost layer).
fn sdk(e: impl std::error::Error) -> ArtifactError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    ArtifactError::Unavailable(message)
}

impl S3ArtifactStore {
    /// A client for `bucket`, over HTTPS with rustls and ring (or plain HTTP endpoints), with
    /// the credentials of the AWS environment variables or profile.
    pub async fn connect(options: &S3Options) -> Result<S3ArtifactStore, ArtifactError> {
        S3ArtifactStore::connect_with(options, None).await
    }

    /// The same, with this access key and secret instead of the AWS configuration's.
    pub async fn connect_with(
        options: &S3Options,
        credentials: Option<(&str, &str)>,
    ) -> Result<S3ArtifactStore, ArtifactError> {
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let bucket = options
            .s3_bucket
            .clone()
            .ok_or_else(|| unavailable("no bucket given"))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .load()
            .await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(options.s3_path_style);
        let region = options
            .s3_region
            .clone()
            .or_else(|| shared.region().map(|r| r.to_string()))
            .unwrap_or_else(|| "us-east-1".into());
        config = config.region(aws_sdk_s3::config::Region::new(region));
        if let Some(endpoint) = &options.s3_endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some((key, secret)) = credentials {
            config = config.credentials_provider(aws_sdk_s3::config::Credentials::new(
                key, secret, None, None, "gantry",
            ));
        }
        Ok(S3ArtifactStore {
            client: Client::from_conf(config.build()),
            bucket,
            prefix: options.s3_prefix.clone(),
            single_put_max: SINGLE_PUT_MAX,
        })
    }

    /// Uploads files larger than `bytes` in parts (tests use it to reach the multipart path
    /// with small files).
    pub fn single_put_max(mut self, bytes: u64) -> S3ArtifactStore {
        self.single_put_max = bytes;
        self
    }

    /// One PUT streamed from the file, with its SHA-256 for the server to check.
    async fn put_whole(
        &self,
        path: &Path,
        key: &str,
        sha256: Hash,
        size: u64,
    ) -> Result<(), ArtifactError> {
        use base64::Engine;
        let body = ByteStream::read_from()
            .path(path)
            .length(aws_sdk_s3::primitives::Length::Exact(size))
            .build()
            .await
            .map_err(unavailable)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(i64::try_from(size).map_err(unavailable)?)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256.0))
            .body(body)
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    /// Creates the bucket when it is not there (tests, first runs against MinIO).
    pub async fn ensure_bucket(&self) -> Result<(), ArtifactError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    fn key(&self, location: &str) -> Result<String, ArtifactError> {
        let valid = location
            .strip_prefix("sha256/")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return Err(ArtifactError::NotFound(location.to_owned()));
        }
        Ok(format!("{}{location}", self.prefix))
    }

    async fn exists(&self, key: &str) -> Result<bool, ArtifactError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    /// Reads up to one part of `file` (blocking, off the async threads).
    async fn next_part(
        file: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
    ) -> Result<Vec<u8>, ArtifactError> {
        tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            let mut buf = vec![0u8; PART];
            let mut filled = 0;
            while filled < PART {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
        .map_err(unavailable)?
    }

    /// The file's SHA-256 and size, in one read.
    async fn hash_file(path: &Path) -> Result<(Hash, u64), ArtifactError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(unavailable)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(unavailable)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Ok((Hash(hasher.finalize().into()), size))
        })
        .await
        .map_err(unavailable)?
    }

    async fn upload(&self, path: &Path, key: &str, want: Hash) -> Result<(), ArtifactError> {
        let file = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::open(path).map_err(unavailable)?,
        ));
        let first = Self::next_part(file.clone()).await?;
        let mut hasher = Sha256::new();
        hasher.update(&first);
        if first.len() < PART {
            // One part: checked against the first read, then one PUT.
            if Hash(hasher.finalize().into()) != want {
                return Err(unavailable("the file changed while it was stored"));
            }
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(sdk)?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(sdk)?;
        let id = upload
            .upload_id()
            .ok_or_else(|| unavailable("no upload id"))?
            .to_owned();
        let parts = async {
            let mut parts = Vec::new();
            let mut chunk = first;
            let mut number = 1;
            loop {
                if chunk.is_empty() {
                    break;
                }
                let done = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .map_err(sdk)?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(done.e_tag().map(str::to_owned))
                        .build(),
                );
                number += 1;
                chunk = Self::next_part(file.clone()).await?;
                hasher.update(&chunk);
            }
            if Hash(hasher.finalize().into()) != want {
                return Err(unavailable("the file changed while it was stored"));
            }
            Ok(parts)
        }
        .await;
        let parts = match parts {
            Ok(parts) => parts,
            Err(e) => {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }
}

impl ArtifactStore for S3ArtifactStore {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn put_file<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Stored, ArtifactError>> {
        async move {
            let (sha256, size_bytes) = Self::hash_file(path).await?;
            let location = format!("sha256/{}", sha256.to_hex());
            let key = self.key(&location)?;
            if !self.exists(&key).await? {
                if size_bytes <= self.single_put_max {
                    self.put_whole(path, &key, sha256, size_bytes).await?;
                } else {
                    self.upload(path, &key, sha256).await?;
                }
            }
            Ok(Stored {
                location,
                sha256,
                size_bytes,
            })
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
            let key = self.key(location)?;
            if end <= start {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'static, _>);
            }
            let object = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .range(format!("bytes={start}-{}", end - 1))
                .send()
                .await
                .map_err(|e| {
                    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                        ArtifactError::NotFound(location.to_owned())
                    } else {
                        sdk(e)
                    }
                })?;
            let stream = futures::stream::unfold(object.body, |mut body| async move {
                match body.next().await {
                    Some(Ok(bytes)) => Some((Ok(bytes), body)),
                    Some(Err(e)) => Some((Err(unavailable(e)), body)),
                    None => None,
                }
            });
            Ok(Box::pin(stream) as BoxStream<'static, _>)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<(), ArtifactError>> {
        async move {
            let key = self.key(location)?;
            // S3 answers a delete of a missing key with success.
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(sdk)?;
            Ok(())
        }
        .boxed()
    }
}

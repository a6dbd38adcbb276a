//! The Auditor's settings on the command line: its signing key (kept outside the data dir), the
//! log's name in checkpoints, how often it checkpoints and re-checks, and where signed
//! checkpoints are published besides the log — a file the operator names, and in fleet mode a
//! NATS KV bucket only the control planes' account may write.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::actor::auditor::{AuditSettings, CheckpointSink};
use gantry_events::checkpoint::NoteSigner;

/// The Auditor's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditOptions {
    /// The Auditor's Ed25519 signing key (32 random bytes, hex), kept outside the data dir: it
    /// signs the log's checkpoints. Created (mode 0600) when missing. Default:
    /// `$XDG_CONFIG_HOME/gantry/audit.key` (or `~/.config/gantry/audit.key`). Every control
    /// plane of a fleet needs the same one. `gantry audit key` prints its public key.
    #[arg(long, env = "GANTRY_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// The log's name in its checkpoints (their first line, and the key's name).
    #[arg(long, env = "GANTRY_LOG_NAME", default_value = "gantry")]
    pub log_name: String,
    /// A file the latest signed checkpoint is written to: keep it where a writer of the data
    /// dir cannot rewrite it. At start the log must reach that checkpoint's size with its
    /// Merkle root (appends wait until it is checked), or appends stop: a cut tail or a
    /// rewritten history. Without it (and outside a fleet) checkpoints are only in the log.
    #[arg(long, env = "GANTRY_CHECKPOINT_FILE")]
    pub checkpoint_file: Option<PathBuf>,
    /// How often the Auditor checkpoints the log, when it has grown.
    #[arg(long, env = "GANTRY_CHECKPOINT_EVERY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub checkpoint_every: Duration,
    /// The Auditor also checkpoints as soon as the log has grown by this many events.
    #[arg(long, env = "GANTRY_CHECKPOINT_EVENTS", default_value_t = 10_000)]
    pub checkpoint_events: u64,
    /// How often the Auditor reads and verifies the whole stored log again (a broken chain
    /// stops appends until an operator repairs it).
    #[arg(long, env = "GANTRY_AUDIT_RECHECK_EVERY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub audit_recheck_every: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            audit_key_file: None,
            log_name: "gantry".into(),
            checkpoint_file: None,
            checkpoint_every: Duration::from_secs(10),
            checkpoint_events: 10_000,
            audit_recheck_every: gantry_actors::actor::auditor::DEFAULT_RECHECK_EVERY,
        }
    }
}

/// Why the audit settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the audit key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("--log-name {0:?}: {1}")]
    LogName(String, String),
}

impl AuditOptions {
    /// Where the signing key is.
    pub fn key_path(&self) -> PathBuf {
        self.audit_key_file
            .clone()
            .unwrap_or_else(|| crate::edge::default_key_file("audit.key"))
    }

    /// The signer, with its key read (or created).
    pub fn signer(&self) -> Result<NoteSigner, Error> {
        let path = self.key_path();
        let key = crate::edge::key_file(&path, "the Auditor's signing key").map_err(|reason| {
            Error::Key {
                path: path.clone(),
                reason,
            }
        })?;
        let seed: [u8; 32] = key[..32].try_into().map_err(|_| Error::Key {
            path: path.clone(),
            reason: "shorter than 32 bytes".into(),
        })?;
        NoteSigner::new(&self.log_name, &seed)
            .map_err(|e| Error::LogName(self.log_name.clone(), e.to_string()))
    }

    /// The Auditor's settings; `more` are published to besides the checkpoint file.
    pub fn settings(&self, more: Vec<Arc<dyn CheckpointSink>>) -> Result<AuditSettings, Error> {
        let mut sinks = more;
        if let Some(path) = &self.checkpoint_file {
            sinks.insert(0, Arc::new(FileSink::new(path.clone())));
        }
        Ok(AuditSettings {
            checkpoint_every: self.checkpoint_every,
            checkpoint_events: self.checkpoint_events.max(1),
            recheck_every: self.audit_recheck_every,
            signer: Some(Arc::new(self.signer()?)),
            sinks,
        })
    }
}

/// The size a signed note states (its second line), unchecked: used only to never replace a
/// published checkpoint with a smaller one.
fn note_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

/// The latest signed checkpoint in a file, replaced whole (written beside it, synced,
/// renamed), one write at a time and never by a smaller checkpoint.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    writing: Arc<std::sync::Mutex<()>>,
}

impl FileSink {
    pub fn new(path: PathBuf) -> FileSink {
        FileSink {
            path,
            writing: Arc::default(),
        }
    }

    /// Replaces the file's contents with `note`, durably.
    pub fn write_now(path: &Path, note: &str) -> std::io::Result<()> {
        use std::io::Write;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)?;
        }
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp.{}", hex::encode(tag)));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(note.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    }

    /// Writes `note` unless the file already holds a checkpoint at least as large.
    fn replace(&self, note: &str) -> std::io::Result<()> {
        let _one_at_a_time = self
            .writing
            .lock()
            .map_err(|_| std::io::Error::other("an earlier write panicked"))?;
        let current = match std::fs::read_to_string(&self.path) {
            Ok(text) => note_size(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if current.is_some_and(|size| Some(size) >= note_size(note)) {
            return Ok(());
        }
        FileSink::write_now(&self.path, note)
    }
}

impl CheckpointSink for FileSink {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn last(&self) -> BoxFuture<'_, Result<Option<String>, String>> {
        let path = self.path.clone();
        async move {
            match tokio::fs::read_to_string(&path).await {
                Ok(note) => Ok(Some(note)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }

    fn publish(&self, note: String) -> BoxFuture<'_, Result<(), String>> {
        let sink = self.clone();
        async move {
            tokio::task::spawn_blocking(move || sink.replace(&note))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// The fleet's checkpoint bucket: only the control planes' NATS account may write it.
pub const CHECKPOINT_BUCKET: &str = "gantry_checkpoints";
/// The key of the latest signed checkpoint in it.
pub const CHECKPOINT_KEY: &str = "latest";

/// The latest signed checkpoint in a NATS KV bucket (with its history, as the bucket keeps it).
#[derive(Clone)]
pub struct KvSink(pub async_nats::jetstream::kv::Store);

impl std::fmt::Debug for KvSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvSink")
    }
}

impl KvSink {
    /// Opens (or creates) the bucket, keeping the last 64 checkpoints.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        replicas: usize,
    ) -> Result<KvSink, String> {
        if let Ok(kv) = js.get_key_value(CHECKPOINT_BUCKET).await {
            return Ok(KvSink(kv));
        }
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: CHECKPOINT_BUCKET.into(),
            history: 64,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map(KvSink)
        .map_err(|e| e.to_string())
    }
}

impl CheckpointSink for KvSink {
    fn describe(&self) -> String {
        format!("NATS KV {CHECKPOINT_BUCKET}/{CHECKPOINT_KEY}")
    }

    fn last(&self) -> BoxFuture<'_, Result<Option<String>, String>> {
        async move {
            match self
                .0
                .get(CHECKPOINT_KEY)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| "not UTF-8".to_owned()),
                None => Ok(None),
            }
        }
        .boxed()
    }

    /// Publishes `note` unless the bucket already holds a checkpoint at least as large: a
    /// compare-and-set on the key's revision, so two control planes (a leader and one that
    /// has just lost the lease) never move it back.
    fn publish(&self, note: String) -> BoxFuture<'_, Result<(), String>> {
        async move {
            for _ in 0..5 {
                let current = self
                    .0
                    .entry(CHECKPOINT_KEY)
                    .await
                    .map_err(|e| e.to_string())?;
                let written = match current {
                    Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                        let held = std::str::from_utf8(&entry.value).ok().and_then(note_size);
                        if held.is_some_and(|size| Some(size) >= note_size(&note)) {
                            return Ok(());
                        }
                        self.0
                            .update(
                                CHECKPOINT_KEY,
                                note.clone().into_bytes().into(),
                                entry.revision,
                            )
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                    _ => self
                        .0
                        .create(CHECKPOINT_KEY, note.clone().into_bytes().into())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if written.is_ok() {
                    return Ok(());
                }
                // Another writer got there first: read again.
            }
            Err("the bucket kept changing under five attempts".into())
        }
        .boxed()
    }
}

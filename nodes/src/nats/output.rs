//! Attempt output leaves the node: each node ships the output files its Worker writes to the
//! `GANTRY_LOGS` stream (`gantry.logs.<node>.<job>.<attempt>`, in chunks, every second while
//! an attempt runs), and any gateway reads it back from there. At most [`LIMIT`] bytes per
//! attempt travel through NATS; the full output stays on the node (and, as the artifacts work
//! lands, in the artifact store).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::{self, StorageType};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use gantry_events::event::JobId;
use gantry_gateway::AttemptOutput;

/// The stream of shipped output.
pub const STREAM: &str = "GANTRY_LOGS";

/// Most output bytes per attempt shipped through NATS.
pub const LIMIT: u64 = 1 << 20;

/// One message's worth of output.
const CHUNK: usize = 64 * 1024;

/// Header naming the offset of a chunk in the attempt's output.
const OFFSET: &str = "Gantry-Offset";

fn subject(node: &str, job: &str, attempt: u32) -> String {
    format!("gantry.logs.{node}.{job}.{attempt}")
}

/// Creates the output stream if it does not exist (a control plane's job): file storage,
/// output older than 7 days or beyond 10 GiB in all dropped oldest first.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<(), super::Error> {
    js.get_or_create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["gantry.logs.>".into()],
        storage: StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: 10 << 30,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| super::Error::Setup(format!("creating the {STREAM} stream: {e}")))?;
    Ok(())
}

/// A node's side: ships new output of every attempt under `logs_dir`, every second, until the
/// task is dropped.
pub async fn ship(js: async_nats::jetstream::Context, node: String, logs_dir: PathBuf) {
    // (job, attempt) → bytes shipped so far.
    let mut shipped: HashMap<(String, u32), u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream = None;
    loop {
        tick.tick().await;
        // The control plane makes the stream; until it exists there is nowhere to ship to.
        if stream.is_none() {
            stream = js.get_stream(STREAM).await.ok();
        }
        let Some(stream) = &stream else { continue };
        for (job, attempt, path, len, idle) in outputs(&logs_dir) {
            let key = (job.clone(), attempt);
            if idle > SETTLED {
                // Finished long ago: shipped already, or left on the node (see SETTLED).
                shipped.remove(&key);
                continue;
            }
            let done = match shipped.get(&key) {
                Some(done) => *done,
                // First sight (or after a restart): resume after what the stream holds.
                None => resume_offset(stream, &subject(&node, &job, attempt)).await,
            };
            let want = len.min(LIMIT);
            let mut at = done;
            while at < want {
                let end = (at + CHUNK as u64).min(want);
                let Some(bytes) = read_range(&path, at, end) else {
                    break;
                };
                let mut bytes = bytes;
                if end == LIMIT && len > LIMIT {
                    bytes.extend_from_slice(
                        format!("\n[gantry: output cut at {LIMIT} bytes here; the whole of it stays on node {node}]\n").as_bytes(),
                    );
                }
                let mut headers = HeaderMap::new();
                headers.insert(OFFSET, at.to_string().as_str());
                headers.insert("Nats-Msg-Id", format!("{job}.{attempt}.{at}").as_str());
                let sent = js
                    .publish_with_headers(subject(&node, &job, attempt), headers, bytes.into())
                    .await;
                match sent {
                    Ok(ack) => match ack.await {
                        Ok(_) => at = end,
                        Err(error) => {
                            tracing::debug!(%error, "output chunk not stored; retrying");
                            break;
                        }
                    },
                    Err(error) => {
                        tracing::debug!(%error, "output chunk not sent; retrying");
                        break;
                    }
                }
            }
            shipped.insert(key, at);
        }
    }
}

/// Output not written to for this long is left alone: each pass then looks only at recent
/// attempts, however many a node ran. Output a node could not ship within it (the node or NATS
/// down that long) stays on the node only.
const SETTLED: Duration = Duration::from_secs(600);

/// Every attempt output file: `<logs_dir>/<job>/attempt-<n>.log`, with its length and how
/// long ago it was last written.
fn outputs(logs_dir: &Path) -> Vec<(String, u32, PathBuf, u64, Duration)> {
    let mut found = Vec::new();
    let Ok(jobs) = std::fs::read_dir(logs_dir) else {
        return found;
    };
    for job in jobs.flatten() {
        let name = job.file_name().to_string_lossy().into_owned();
        if name.parse::<JobId>().is_err() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(job.path()) else {
            continue;
        };
        for file in files.flatten() {
            let file_name = file.file_name().to_string_lossy().into_owned();
            let Some(attempt) = file_name
                .strip_prefix("attempt-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(meta) = file.metadata() {
                let idle = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .unwrap_or_default();
                found.push((name.clone(), attempt, file.path(), meta.len(), idle));
            }
        }
    }
    found
}

fn read_range(path: &Path, from: u64, to: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = vec![0; (to - from) as usize];
    file.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

/// Where shipping resumes for a subject: after the last chunk stored.
async fn resume_offset(stream: &stream::Stream, subject: &str) -> u64 {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let offset = message
                .headers
                .get(OFFSET)
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0);
            let len = message.payload.len() as u64;
            (offset + len).min(LIMIT)
        }
        Err(_) => 0,
    }
}

/// A gateway's side: reads an attempt's shipped output back, from whichever node ran it.
#[derive(Debug, Clone)]
pub struct ShippedOutput {
    js: async_nats::jetstream::Context,
}

impl ShippedOutput {
    pub fn new(js: async_nats::jetstream::Context) -> ShippedOutput {
        ShippedOutput { js }
    }

    async fn collect(&self, job: JobId, attempt: u32) -> Result<Vec<u8>, String> {
        let stream = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let filter = format!("gantry.logs.*.{job}.{attempt}");
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let pending = consumer.cached_info().num_pending;
        let mut output = Vec::new();
        if pending == 0 {
            return Ok(output);
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(Ok(message))) = next else {
                break;
            };
            let offset = message
                .headers
                .as_ref()
                .and_then(|h| h.get(OFFSET))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            // Chunks in order; a chunk stored twice (a node that restarted mid-send) once.
            if offset == Some(output.len() as u64) || offset.is_none() {
                output.extend_from_slice(&message.payload);
            }
            let left = message.info().map(|i| i.pending).unwrap_or(0);
            if left == 0 {
                break;
            }
        }
        Ok(output)
    }
}

impl AttemptOutput for ShippedOutput {
    fn read(&self, job: JobId, attempt: u32) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        self.collect(job, attempt).boxed()
    }
}

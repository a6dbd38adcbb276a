//! gantry's read side: views of jobs, queues, nodes and artifacts, rebuilt from the event log
//! into sled.
//!
//! Every batch of events is applied in one sled transaction together with the checkpoint (the
//! sequence and hash of the last event applied), so a view and its checkpoint never disagree.
//! Events at or below the checkpoint are skipped, so applying an event twice changes nothing;
//! an event that does not follow the checkpoint is refused. Projections only read the log:
//! they never append, and everything here can be deleted and rebuilt (`gantry projections
//! rebuild`). A job's state is folded with the domain's own [`gantry_actors::job::Job::apply`],
//! so the views and the scheduler cannot disagree about what an event means.
//!
//! Must not depend on: `gantry-gateway`, `gantry-nodes`.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_actors::job::Job;
use gantry_events::event::{ArtifactEvent, Gpu, JobEvent, JobId, NodeEvent};
use gantry_events::{Entry, Envelope, Event, EventLog, Hash};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

/// What can go wrong with the views.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed. 503.
    #[error("projection store: {0}")]
    Store(#[from] sled::Error),
    /// A stored view does not decode (written by another version?). 500.
    #[error("projection data: {0}")]
    Corrupt(String),
    /// An event was offered out of order. 500 (a bug in the caller).
    #[error("event {got} does not follow checkpoint {checkpoint}")]
    OutOfOrder { checkpoint: u64, got: u64 },
    /// The log failed while catching up. 503.
    #[error(transparent)]
    Log(#[from] gantry_events::Error),
}

/// Where the views stand in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Hash,
}

/// A job as the gateway shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub state: String,
    pub attempt: u32,
    pub node: Option<String>,
    pub queue: String,
    pub priority: i32,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub cancel_requested: bool,
    pub last_cause: Option<gantry_events::event::FailureCause>,
    /// Unix ns of submission and of the last change.
    pub submitted_ns: u64,
    pub updated_ns: u64,
    /// Sequence of the last event about this job.
    pub updated_seq: u64,
    /// The domain state, for folding the next event.
    pub job: JobState,
}

/// The folded domain job, stored beside the view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub spec: gantry_events::event::JobSpec,
    pub gpu_uuids: Vec<String>,
    pub handle: Option<String>,
    pub not_before_ms: u64,
}

/// A node as the gateway shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub executor: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// `ready`, `drained` or `lost`.
    pub status: String,
    pub reason: Option<String>,
    pub updated_ns: u64,
}

/// A stored artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactView {
    pub job_id: JobId,
    pub attempt: u32,
    pub name: String,
    pub location: String,
    pub sha256: Hash,
    pub size_bytes: u64,
}

/// One stored row: tree, key, value.
pub type DumpRow = (String, Vec<u8>, Vec<u8>);

/// Filters for listing jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<String>,
    pub queue: Option<String>,
    /// `key=value`.
    pub label: Option<String>,
}

/// The sled-backed views.
#[derive(Debug, Clone)]
pub struct Projections {
    db: sled::Db,
    jobs: sled::Tree,
    by_state: sled::Tree,
    by_queue: sled::Tree,
    by_label: sled::Tree,
    nodes: sled::Tree,
    artifacts: sled::Tree,
    counts: sled::Tree,
    meta: sled::Tree,
}

const CHECKPOINT: &[u8] = b"checkpoint";

fn key(prefix: &str, id: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 17);
    k.extend_from_slice(prefix.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn count_key(queue: &str, state: &str) -> Vec<u8> {
    let mut k = queue.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(state.as_bytes());
    k
}

type Tx = ConflictableTransactionError<Error>;

fn abort(e: Error) -> Tx {
    ConflictableTransactionError::Abort(e)
}

fn bump(counts: &TransactionalTree, key: &[u8], delta: i64) -> Result<(), Tx> {
    let current = counts
        .get(key)?
        .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        counts.remove(key)?;
    } else {
        counts.insert(key, &next.to_be_bytes())?;
    }
    Ok(())
}

impl Projections {
    /// Opens (or creates) the views in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Projections, Error> {
        let db = sled::Config::new().path(dir.as_ref()).open()?;
        Ok(Projections {
            jobs: db.open_tree("jobs")?,
            by_state: db.open_tree("jobs_by_state")?,
            by_queue: db.open_tree("jobs_by_queue")?,
            by_label: db.open_tree("jobs_by_label")?,
            nodes: db.open_tree("nodes")?,
            artifacts: db.open_tree("artifacts")?,
            counts: db.open_tree("queue_counts")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Where the views stand.
    pub fn checkpoint(&self) -> Result<Checkpoint, Error> {
        Ok(decode_checkpoint(self.meta.get(CHECKPOINT)?.as_deref()))
    }

    /// Applies a batch of consecutive entries atomically with the checkpoint. Entries already
    /// applied are skipped.
    pub fn apply(&self, entries: &[Entry]) -> Result<Checkpoint, Error> {
        let envelopes = entries
            .iter()
            .map(|e| {
                e.open()
                    .map_err(|err| Error::Corrupt(format!("seq {}: {err}", e.seq)))
            })
            .collect::<Result<Vec<Envelope>, Error>>()?;
        let trees = (
            &self.jobs,
            &self.by_state,
            &self.by_queue,
            &self.by_label,
            &self.nodes,
            &self.artifacts,
            &self.counts,
            &self.meta,
        );
        let result = trees.transaction(
            |(jobs, by_state, by_queue, by_label, nodes, artifacts, counts, meta)| {
                let mut checkpoint = decode_checkpoint(meta.get(CHECKPOINT)?.as_deref());
                for env in &envelopes {
                    if env.seq <= checkpoint.seq {
                        continue;
                    }
                    if env.seq != checkpoint.seq + 1 {
                        return Err(abort(Error::OutOfOrder {
                            checkpoint: checkpoint.seq,
                            got: env.seq,
                        }));
                    }
                    match &env.event {
                        Event::Job(e) => {
                            apply_job(env, e, jobs, by_state, by_queue, by_label, counts)?
                        }
                        Event::Node(e) => apply_node(env, e, nodes)?,
                        Event::Artifact(ArtifactEvent::Stored(a)) => {
                            let view = ArtifactView {
                                job_id: a.job_id,
                                attempt: a.attempt,
                                name: a.name.clone(),
                                location: a.location.clone(),
                                sha256: a.sha256,
                                size_bytes: a.size_bytes,
                            };
                            let json = serde_json::to_vec(&view)
                                .map_err(|e| abort(Error::Corrupt(e.to_string())))?;
                            artifacts.insert(key(&a.name, &a.job_id), json)?;
                        }
                        Event::Audit(_) => {}
                    }
                    checkpoint = Checkpoint {
                        seq: env.seq,
                        hash: env.hash,
                    };
                }
                let mut raw = checkpoint.seq.to_be_bytes().to_vec();
                raw.extend_from_slice(&checkpoint.hash.0);
                meta.insert(CHECKPOINT, raw)?;
                Ok(checkpoint)
            },
        );
        match result {
            Ok(c) => Ok(c),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(Error::Store(e)),
        }
    }

    /// Reads the log from the checkpoint to its head and applies it.
    pub async fn catch_up(
        &self,
        log: &dyn EventLog,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Checkpoint, Error> {
        let head = log.head().await?.seq;
        let mut checkpoint = self.checkpoint()?;
        while checkpoint.seq < head {
            let entries = log.read(checkpoint.seq + 1, 2048).await?;
            if entries.is_empty() {
                break;
            }
            checkpoint = self.apply(&entries)?;
            progress(checkpoint.seq, head);
        }
        self.flush().await?;
        Ok(checkpoint)
    }

    /// Catches up, then applies new entries as the log gets them, publishing the checkpoint
    /// sequence after each batch. Returns only when the log's subscription ends or fails.
    pub async fn follow(
        &self,
        log: &dyn EventLog,
        progress: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), Error> {
        use futures::StreamExt;
        let checkpoint = self.catch_up(log, |_, _| {}).await?;
        progress.send_replace(checkpoint.seq);
        let mut batches = log.subscribe(checkpoint.seq + 1).await?.ready_chunks(1024);
        while let Some(batch) = batches.next().await {
            let entries = batch.into_iter().collect::<Result<Vec<Entry>, _>>()?;
            let checkpoint = self.apply(&entries)?;
            progress.send_replace(checkpoint.seq);
        }
        Ok(())
    }

    /// Makes everything applied so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Deletes every view (the log is untouched).
    pub fn clear(&self) -> Result<(), Error> {
        for tree in [
            &self.jobs,
            &self.by_state,
            &self.by_queue,
            &self.by_label,
            &self.nodes,
            &self.artifacts,
            &self.counts,
            &self.meta,
        ] {
            tree.clear()?;
        }
        Ok(())
    }

    pub fn job(&self, id: &JobId) -> Result<Option<JobView>, Error> {
        self.jobs
            .get(id.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string())))
            .transpose()
    }

    /// Jobs in submission order after `after` (a cursor: the last id of the previous page).
    pub fn jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobView>, Error> {
        let index = match (&filter.state, &filter.queue, &filter.label) {
            (Some(s), _, _) => Some((&self.by_state, s.clone())),
            (None, Some(q), _) => Some((&self.by_queue, q.clone())),
            (None, None, Some(l)) => Some((&self.by_label, l.clone())),
            (None, None, None) => None,
        };
        let mut out = Vec::new();
        let keep = |view: &JobView| {
            filter.state.as_ref().is_none_or(|s| &view.state == s)
                && filter.queue.as_ref().is_none_or(|q| &view.queue == q)
                && filter.label.as_ref().is_none_or(|l| {
                    l.split_once('=')
                        .is_some_and(|(k, v)| view.labels.get(k).is_some_and(|x| x == v))
                })
        };
        match index {
            Some((tree, prefix)) => {
                let start = match after {
                    Some(id) => {
                        let mut k = key(&prefix, &id);
                        k.push(0);
                        k
                    }
                    None => key(&prefix, &JobId::nil()),
                };
                let mut end = prefix.as_bytes().to_vec();
                end.push(1);
                for item in tree.range(start..end.clone()) {
                    let (k, _) = item?;
                    let id = JobId::from_slice(&k[k.len() - 16..])
                        .map_err(|e| Error::Corrupt(e.to_string()))?;
                    if let Some(view) = self.job(&id)?
                        && keep(&view)
                    {
                        out.push(view);
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
            }
            None => {
                let range = match after {
                    Some(id) => {
                        let mut k = id.as_bytes().to_vec();
                        k.push(0);
                        self.jobs.range(k..)
                    }
                    None => self.jobs.iter(),
                };
                for item in range {
                    let (_, v) = item?;
                    out.push(
                        serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?,
                    );
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        self.nodes
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| Error::Corrupt(e.to_string())))
            .collect()
    }

    /// Per queue: how many jobs in each state.
    pub fn queues(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, Error> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for item in self.counts.iter() {
            let (k, v) = item?;
            let text = String::from_utf8_lossy(&k).to_string();
            let Some((queue, state)) = text.split_once('\0') else {
                continue;
            };
            let n = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            out.entry(queue.to_owned())
                .or_default()
                .insert(state.to_owned(), n);
        }
        Ok(out)
    }

    /// Every view, serialised, for comparing two builds.
    pub fn dump(&self) -> Result<Vec<DumpRow>, Error> {
        let mut out = Vec::new();
        for (name, tree) in [
            ("jobs", &self.jobs),
            ("by_state", &self.by_state),
            ("by_queue", &self.by_queue),
            ("by_label", &self.by_label),
            ("nodes", &self.nodes),
            ("artifacts", &self.artifacts),
            ("counts", &self.counts),
            ("meta", &self.meta),
        ] {
            for item in tree.iter() {
                let (k, v) = item?;
                out.push((name.to_owned(), k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

fn decode_checkpoint(raw: Option<&[u8]>) -> Checkpoint {
    match raw {
        Some(raw) if raw.len() == 40 => {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&raw[..8]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&raw[8..]);
            Checkpoint {
                seq: u64::from_be_bytes(seq),
                hash: Hash(hash),
            }
        }
        _ => Checkpoint {
            seq: 0,
            hash: Hash::GENESIS,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_job(
    env: &Envelope,
    event: &JobEvent,
    jobs: &TransactionalTree,
    by_state: &TransactionalTree,
    by_queue: &TransactionalTree,
    by_label: &TransactionalTree,
    counts: &TransactionalTree,
) -> Result<(), Tx> {
    let corrupt = |e: serde_json::Error| abort(Error::Corrupt(e.to_string()));
    let (mut job, mut view) = match event {
        JobEvent::Submitted(s) => {
            let job = Job::submitted(s);
            let view = JobView {
                id: job.id,
                name: job.spec.name.clone(),
                state: String::new(),
                attempt: 0,
                node: None,
                queue: job.spec.queue.clone(),
                priority: job.spec.priority,
                image: job.spec.image.clone(),
                labels: job.spec.labels.clone(),
                cancel_requested: false,
                last_cause: None,
                submitted_ns: env.time_ns,
                updated_ns: env.time_ns,
                updated_seq: env.seq,
                job: JobState {
                    spec: job.spec.clone(),
                    gpu_uuids: Vec::new(),
                    handle: None,
                    not_before_ms: 0,
                },
            };
            for (k, v) in &job.spec.labels {
                by_label.insert(key(&format!("{k}={v}"), &job.id), &[])?;
            }
            by_queue.insert(key(&job.spec.queue, &job.id), &[])?;
            (job, view)
        }
        other => {
            let Some(id) = Event::Job(other.clone()).job_id() else {
                return Ok(());
            };
            let Some(raw) = jobs.get(id.as_bytes())? else {
                tracing::warn!(job = %id, seq = env.seq, "projection: event for an unknown job");
                return Ok(());
            };
            let view: JobView = serde_json::from_slice(&raw).map_err(corrupt)?;
            let job = Job {
                id: view.id,
                spec: view.job.spec.clone(),
                state: parse_state(&view.state),
                attempt: view.attempt,
                node: view.node.clone(),
                gpu_uuids: view.job.gpu_uuids.clone(),
                handle: view.job.handle.clone(),
                not_before_ms: view.job.not_before_ms,
                cancel_requested: view.cancel_requested,
                last_cause: view.last_cause.clone(),
            };
            (job, view)
        }
    };
    let old_state = view.state.clone();
    job.apply(event);
    let new_state = job.state.as_str().to_owned();
    if old_state != new_state {
        if !old_state.is_empty() {
            by_state.remove(key(&old_state, &job.id))?;
            bump(counts, &count_key(&view.queue, &old_state), -1)?;
        }
        by_state.insert(key(&new_state, &job.id), &[])?;
        bump(counts, &count_key(&view.queue, &new_state), 1)?;
    }
    view.state = new_state;
    view.attempt = job.attempt;
    view.node = job.node.clone();
    view.cancel_requested = job.cancel_requested;
    view.last_cause = job.last_cause.clone();
    view.updated_ns = env.time_ns;
    view.updated_seq = env.seq;
    view.job.gpu_uuids = job.gpu_uuids.clone();
    view.job.handle = job.handle.clone();
    view.job.not_before_ms = job.not_before_ms;
    jobs.insert(
        job.id.as_bytes(),
        serde_json::to_vec(&view).map_err(corrupt)?,
    )?;
    Ok(())
}

fn parse_state(s: &str) -> gantry_actors::job::JobState {
    use gantry_actors::job::JobState::*;
    match s {
        "placed" => Placed,
        "running" => Running,
        "succeeded" => Succeeded,
        "cancelled" => Cancelled,
        "dead_lettered" => DeadLettered,
        _ => Queued,
    }
}

fn apply_node(env: &Envelope, event: &NodeEvent, nodes: &TransactionalTree) -> Result<(), Tx> {
    let corrupt = |e: serde_json::Error| abort(Error::Corrupt(e.to_string()));
    let get = |id: &str| -> Result<Option<NodeView>, Tx> {
        nodes
            .get(id.as_bytes())?
            .map(|raw| serde_json::from_slice(&raw).map_err(corrupt))
            .transpose()
    };
    let view = match event {
        NodeEvent::Joined(j) => Some(NodeView {
            id: j.node_id.clone(),
            hostname: j.hostname.clone(),
            executor: j.executor.clone(),
            cpu_millis: j.cpu_millis,
            memory_bytes: j.memory_bytes,
            gpus: j.gpus.clone(),
            status: "ready".into(),
            reason: None,
            updated_ns: env.time_ns,
        }),
        NodeEvent::GpusObserved(g) => get(&g.node_id)?.map(|mut v| {
            v.gpus = g.gpus.clone();
            v.updated_ns = env.time_ns;
            v
        }),
        NodeEvent::Lost(l) => get(&l.node_id)?.map(|mut v| {
            v.status = "lost".into();
            v.reason = Some(l.reason.clone());
            v.updated_ns = env.time_ns;
            v
        }),
        NodeEvent::Drained(d) => get(&d.node_id)?.map(|mut v| {
            v.status = "drained".into();
            v.reason = Some(d.reason.clone());
            v.updated_ns = env.time_ns;
            v
        }),
    };
    if let Some(view) = view {
        nodes.insert(
            view.id.as_bytes(),
            serde_json::to_vec(&view).map_err(corrupt)?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use gantry_events::event::{JobPlaced, JobStarted, JobSubmitted, JobSucceeded, NodeJoined};
    use gantry_events::{EmbeddedLog, NewEvent, Source};

    use super::*;

    fn spec(queue: &str) -> gantry_events::event::JobSpec {
        let req = gantry_actors::spec::SubmitRequest {
            name: "j".into(),
            image: "busybox".into(),
            queue: Some(queue.into()),
            labels: BTreeMap::from([("team".into(), "a".into())]),
            ..Default::default()
        };
        gantry_actors::spec::validate(&req, &Default::default()).expect("valid")
    }

    fn events() -> Vec<Event> {
        let mut out: Vec<Event> = vec![
            NodeJoined {
                node_id: "n1".into(),
                hostname: "h".into(),
                cpu_millis: 4000,
                memory_bytes: 1 << 30,
                gpus: vec![],
                executor: "process".into(),
                labels: Default::default(),
            }
            .into(),
        ];
        for i in 0..20u128 {
            let job_id = JobId::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0000 + i);
            out.push(
                JobSubmitted {
                    job_id,
                    spec: Box::new(spec(if i % 2 == 0 { "a" } else { "b" })),
                }
                .into(),
            );
            if i % 3 == 0 {
                out.push(
                    JobPlaced {
                        job_id,
                        attempt: 1,
                        node_id: "n1".into(),
                        gpu_uuids: vec![],
                    }
                    .into(),
                );
                out.push(
                    JobStarted {
                        job_id,
                        attempt: 1,
                        node_id: "n1".into(),
                        handle: None,
                    }
                    .into(),
                );
            }
            if i % 6 == 0 {
                out.push(
                    JobSucceeded {
                        job_id,
                        attempt: 1,
                        duration_ms: 3,
                    }
                    .into(),
                );
            }
        }
        out
    }

    #[tokio::test]
    async fn rebuild_equals_incremental_and_replays_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path().join("log"))
            .await
            .expect("log");
        let incremental = Projections::open(dir.path().join("views")).expect("views");
        for event in events() {
            let appended = log
                .append(vec![NewEvent::new(Source::new("n1", "test"), event)])
                .await
                .expect("append");
            let entries = log.read(appended[0].seq, 1).await.expect("read");
            incremental.apply(&entries).expect("apply");
            // The same entry again: no change.
            incremental.apply(&entries).expect("apply twice");
        }
        let rebuilt = Projections::open(dir.path().join("rebuilt")).expect("views");
        rebuilt.catch_up(&log, |_, _| {}).await.expect("rebuild");
        assert_eq!(
            incremental.dump().expect("dump"),
            rebuilt.dump().expect("dump")
        );
        assert_eq!(
            incremental.checkpoint().expect("cp"),
            rebuilt.checkpoint().expect("cp")
        );

        let running = rebuilt
            .jobs(
                &JobFilter {
                    state: Some("running".into()),
                    ..Default::default()
                },
                None,
                100,
            )
            .expect("list");
        assert_eq!(
            running.len(),
            3,
            "placed at 3, 9, 15; 0, 6, 12, 18 succeeded"
        );
        let queue_a = rebuilt
            .jobs(
                &JobFilter {
                    queue: Some("a".into()),
                    ..Default::default()
                },
                None,
                100,
            )
            .expect("list");
        assert_eq!(queue_a.len(), 10);
        // Cursor pagination walks every job once.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = rebuilt.jobs(&JobFilter::default(), after, 7).expect("page");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            seen.extend(page.into_iter().map(|v| v.id));
        }
        assert_eq!(seen.len(), 20);
        let counts = rebuilt.queues().expect("queues");
        assert_eq!(
            counts["a"]["succeeded"] + counts["b"].get("succeeded").copied().unwrap_or(0),
            4
        );
        assert_eq!(rebuilt.nodes().expect("nodes")[0].status, "ready");
    }

    #[tokio::test]
    async fn out_of_order_entries_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path().join("log"))
            .await
            .expect("log");
        for event in events().into_iter().take(3) {
            log.append(vec![NewEvent::new(Source::new("n1", "test"), event)])
                .await
                .expect("append");
        }
        let views = Projections::open(dir.path().join("views")).expect("views");
        let third = log.read(3, 1).await.expect("read");
        assert!(matches!(
            views.apply(&third),
            Err(Error::OutOfOrder {
                checkpoint: 0,
                got: 3
            })
        ));
        assert_eq!(
            views.checkpoint().expect("cp").seq,
            0,
            "nothing half-applied"
        );
    }
}

//! Retention: the stored outputs of ended jobs are deleted once their time is up, per job
//! (`artifact_ttl_secs`) or per queue (`--artifact-ttl QUEUE=DURATION`). The log is never
//! pruned: each deletion is recorded first (`artifact.pruned`, the `artifact.stored` record
//! stays), then the bytes go — unless another output not yet pruned has the same SHA-256 (the
//! stores keep one copy per content), in which case they stay for it.
//!
//! A sweep reads the artifact views whole (one scan per `--retention-every`), so its cost grows
//! with the outputs kept, not with the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gantry_actors::actor::scheduler::Prune;
use gantry_actors::artifacts::ArtifactStore;
use gantry_actors::control::Control;
use gantry_events::event::{ArtifactPruned, JobId};
use gantry_events::record::now_ns;
use gantry_projections::{ArtifactView, JobView, Projections};
use tokio::sync::watch;

/// Most outputs recorded as pruned in one command.
const PER_COMMAND: usize = 256;

/// How long outputs of ended jobs are kept, and how often that is looked at.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionOptions {
    /// Keep the outputs of ended jobs of QUEUE for DURATION (`QUEUE=DURATION`, e.g.
    /// `scratch=1d`; `*=DURATION` for every other queue; repeatable). A job's own
    /// `artifact_ttl_secs` comes first. Default: kept.
    #[arg(long = "artifact-ttl", env = "GANTRY_ARTIFACT_TTL", value_delimiter = ',', value_parser = parse_ttl)]
    pub artifact_ttl: Vec<(String, Duration)>,
    /// How often retention looks for outputs whose time is up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub retention_every: Duration,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        RetentionOptions {
            artifact_ttl: Vec::new(),
            retention_every: Duration::from_secs(60),
        }
    }
}

fn parse_ttl(text: &str) -> Result<(String, Duration), String> {
    let (queue, duration) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: QUEUE=DURATION, e.g. scratch=7d"))?;
    if queue.is_empty() {
        return Err(format!("{text:?}: a queue name, or * for every queue"));
    }
    let duration = humantime::parse_duration(duration).map_err(|e| format!("{text:?}: {e}"))?;
    if duration.is_zero() {
        return Err(format!("{text:?}: a duration above zero"));
    }
    Ok((queue.to_owned(), duration))
}

impl RetentionOptions {
    /// How long `job`'s outputs are kept after it ends (`None`: kept).
    fn ttl_of(&self, job: &JobView) -> Option<Duration> {
        if let Some(secs) = job.spec.artifact_ttl_secs {
            return Some(Duration::from_secs(secs));
        }
        let by_queue: BTreeMap<&str, Duration> = self
            .artifact_ttl
            .iter()
            .map(|(q, d)| (q.as_str(), *d))
            .collect();
        by_queue
            .get(job.spec.queue.as_str())
            .or_else(|| by_queue.get("*"))
            .copied()
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Outputs recorded as pruned.
    pub pruned: usize,
    /// Objects deleted from the store (fewer when outputs shared their bytes).
    pub deleted: usize,
}

/// The outputs whose time is up at `now_ns` and not pruned yet, with the reason to record.
fn due(
    views: &Projections,
    options: &RetentionOptions,
    now_ns: u64,
) -> Result<Vec<(ArtifactView, String)>, gantry_projections::Error> {
    let mut jobs: HashMap<JobId, Option<(u64, Duration)>> = HashMap::new();
    let mut out = Vec::new();
    for artifact in views.all_artifacts() {
        let artifact = artifact?;
        if artifact.pruned_ns.is_some() {
            continue;
        }
        let ended = match jobs.get(&artifact.job_id) {
            Some(ended) => *ended,
            None => {
                let ended = views.job(&artifact.job_id)?.and_then(|job| {
                    let terminal =
                        ["succeeded", "cancelled", "dead_lettered"].contains(&job.state.as_str());
                    let ttl = options.ttl_of(&job)?;
                    terminal.then_some((job.updated_ns, ttl))
                });
                jobs.insert(artifact.job_id, ended);
                ended
            }
        };
        let Some((ended_ns, ttl)) = ended else {
            continue;
        };
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        if ended_ns.saturating_add(ttl_ns) <= now_ns {
            let reason = format!(
                "ttl {} after the job ended",
                humantime::format_duration(ttl)
            );
            out.push((artifact, reason));
        }
    }
    Ok(out)
}

/// Waits (a bounded time) for the views to reach `seq`.
async fn views_reach(views_seq: &mut watch::Receiver<u64>, seq: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(10), views_seq.wait_for(|s| *s >= seq))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// One sweep: records the outputs whose time is up as pruned, then deletes the bytes no other
/// kept output shares.
pub async fn sweep(
    views: &Projections,
    views_seq: &mut watch::Receiver<u64>,
    control: &dyn Control,
    store: &dyn ArtifactStore,
    options: &RetentionOptions,
) -> Result<Swept, String> {
    let due = due(views, options, now_ns()).map_err(|e| e.to_string())?;
    let mut swept = Swept::default();
    for chunk in due.chunks(PER_COMMAND) {
        let pruned: Vec<ArtifactPruned> = chunk
            .iter()
            .map(|(a, reason)| ArtifactPruned {
                job_id: a.job_id,
                attempt: a.attempt,
                name: a.name.clone(),
                sha256: a.sha256,
                reason: reason.clone(),
            })
            .collect();
        let seq = control
            .prune(Prune(pruned))
            .await
            .map_err(|e| e.to_string())?;
        if seq == 0 {
            continue;
        }
        if !views_reach(views_seq, seq).await {
            return Err("the views did not reach the recorded prune".into());
        }
        let mut looked = std::collections::HashSet::new();
        for (artifact, _) in chunk {
            let Some(now) = views
                .artifact(&artifact.job_id, &artifact.name)
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            if now.pruned_ns.is_none() || now.sha256 != artifact.sha256 {
                continue;
            }
            swept.pruned += 1;
            if !looked.insert(artifact.location.clone()) {
                continue;
            }
            let shared = views
                .artifacts_with(&artifact.sha256)
                .map_err(|e| e.to_string())?
                .iter()
                .any(|other| other.pruned_ns.is_none());
            if shared {
                tracing::debug!(location = %artifact.location, "bytes kept: another output has them");
                continue;
            }
            store
                .delete(&artifact.location)
                .await
                .map_err(|e| e.to_string())?;
            swept.deleted += 1;
        }
    }
    Ok(swept)
}

/// Sweeps every `options.retention_every` for as long as gantry runs (only while `leading`,
/// when given: one control plane of a fleet at a time). Does nothing without a TTL to apply.
pub async fn run(
    views: Projections,
    mut views_seq: watch::Receiver<u64>,
    control: Arc<dyn Control>,
    store: Arc<dyn ArtifactStore>,
    options: RetentionOptions,
    leading: Option<watch::Receiver<bool>>,
) {
    let mut tick = tokio::time::interval(options.retention_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if leading.as_ref().is_some_and(|l| !*l.borrow()) {
            continue;
        }
        match sweep(&views, &mut views_seq, &*control, &*store, &options).await {
            Ok(swept) if swept.pruned > 0 => tracing::info!(
                pruned = swept.pruned,
                deleted = swept.deleted,
                "retention deleted outputs of ended jobs"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention sweep failed; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_as_queue_equals_duration() {
        assert_eq!(
            parse_ttl("scratch=1d"),
            Ok(("scratch".into(), Duration::from_secs(86_400)))
        );
        for bad in ["scratch", "=1d", "x=soon", "x=0s"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

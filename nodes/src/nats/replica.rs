//! A worker node's replica of the log: the same [`World`] the Scheduler folds, followed from
//! the log of record, so the node learns its placements' specs and what is live on it without
//! asking the control plane (and keeps working through a failover).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gantry_actors::actor::scheduler::CommandError;
use gantry_actors::job::Job;
use gantry_actors::spec::Limits;
use gantry_actors::world::World;
use gantry_events::EventLog;
use gantry_events::event::JobId;
use tokio::sync::watch;

/// How long a read waits for the replica to reach the sequence it needs.
const CATCH_UP: Duration = Duration::from_secs(10);

/// A cheap-to-clone handle on the replica.
#[derive(Clone)]
pub struct Replica {
    world: Arc<Mutex<World>>,
    seq: watch::Receiver<u64>,
    log: Arc<dyn EventLog>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("seq", &self.seq()).finish()
    }
}

impl Replica {
    /// Starts following `log` from its beginning, for as long as the process runs (a failed
    /// subscription is taken up again after the last applied entry).
    pub fn follow(log: Arc<dyn EventLog>) -> Replica {
        let world = Arc::new(Mutex::new(World::new(Limits::default())));
        let (tx, seq) = watch::channel(0u64);
        tokio::spawn(run(log.clone(), world.clone(), tx));
        Replica { world, seq, log }
    }

    /// The sequence applied so far.
    pub fn seq(&self) -> u64 {
        *self.seq.borrow()
    }

    async fn reach(&self, seq: u64) -> Result<(), CommandError> {
        let mut rx = self.seq.clone();
        match tokio::time::timeout(CATCH_UP, rx.wait_for(|s| *s >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CommandError::Unavailable(format!(
                "this node's replica of the log has not reached sequence {seq} yet (at {})",
                self.seq()
            ))),
        }
    }

    /// The job as of sequence `at_seq` or later.
    pub async fn job(&self, id: JobId, at_seq: u64) -> Result<Option<Job>, CommandError> {
        self.reach(at_seq).await?;
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Ok(world.job(&id).cloned())
    }

    /// What is live on `node`, as of the log's head now.
    pub async fn live_on(&self, node: &str) -> Result<Vec<Job>, CommandError> {
        let head = self.log.head().await?;
        self.reach(head.seq).await?;
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Ok(world
            .live_on(node)
            .into_iter()
            .filter_map(|(id, _, _)| world.job(&id).cloned())
            .collect())
    }
}

async fn run(log: Arc<dyn EventLog>, world: Arc<Mutex<World>>, seq: watch::Sender<u64>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let from = *seq.borrow() + 1;
        match log.subscribe(from).await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(error) => {
                            tracing::warn!(%error, "replica lost the log; following again");
                            break;
                        }
                    };
                    match entry.open() {
                        Ok(envelope) => {
                            let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
                            world.apply(
                                envelope.seq,
                                envelope.time_ns / 1_000_000,
                                &envelope.event,
                            );
                        }
                        Err(error) => {
                            tracing::error!(seq = entry.seq, %error, "replica skipped an undecodable entry")
                        }
                    }
                    seq.send_replace(entry.seq);
                    pause = Duration::from_millis(100);
                }
            }
            Err(error) => tracing::warn!(%error, "replica cannot follow the log yet"),
        }
        if seq.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

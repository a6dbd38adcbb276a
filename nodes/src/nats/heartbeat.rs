//! Heartbeats: each node publishes one about every second (not an event: liveness is not
//! history); every control plane listens, to show the last one and the GPUs' latest samples;
//! the leader declares a node lost when it has been silent past the timeout, and the Scheduler
//! re-places what ran there.

use std::time::Duration;

use actix::Addr;
use futures::StreamExt;
use gantry_actors::actor::scheduler::{NodeSilent, Scheduler, Stats};
use gantry_actors::actor::worker::{GetWorkerStats, Worker};
use gantry_actors::placement::NodeStatus;
use gantry_actors::telemetry::Telemetry;
use gantry_events::record::now_ns;

use super::wire::{self, Heartbeat};

/// How often a node sends a heartbeat.
pub const EVERY: Duration = Duration::from_secs(1);

/// Default silence after which a node is lost.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// A node's side: publishes heartbeats until the task is dropped.
pub async fn send(
    client: async_nats::Client,
    node: String,
    worker: Addr<Worker>,
    telemetry: Telemetry,
) {
    let subject = wire::heartbeat_subject(&node);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let running = worker
            .send(GetWorkerStats)
            .await
            .map(|s| s.running as u32)
            .unwrap_or(0);
        let beat = Heartbeat {
            sent_ms: now_ms(),
            running,
            gpus: telemetry.node(&node),
        };
        match wire::encode(&beat) {
            Ok(bytes) => {
                if let Err(error) = client.publish(subject.clone(), bytes.into()).await {
                    tracing::debug!(%error, "heartbeat not sent");
                }
            }
            Err(error) => tracing::error!(%error, "heartbeat not encodable"),
        }
    }
}

/// Every control plane: records when each node was last heard from, and its GPU samples.
pub async fn listen(client: async_nats::Client, telemetry: Telemetry) -> Result<(), super::Error> {
    let mut beats = client
        .subscribe(wire::NODE_HEARTBEATS)
        .await
        .map_err(|e| super::Error::Setup(format!("subscribing to heartbeats: {e}")))?;
    tokio::spawn(async move {
        while let Some(message) = beats.next().await {
            let Some(node) = wire::node_of(&message.subject) else {
                continue;
            };
            match wire::decode::<Heartbeat>(&message.payload) {
                Ok(beat) => {
                    telemetry.heard(node, now_ms());
                    telemetry.record(node, beat.gpus);
                }
                Err(error) => tracing::debug!(node, %error, "undecodable heartbeat"),
            }
        }
    });
    Ok(())
}

/// The leader's side: every half second, a node the log has as not lost that has been silent
/// for `timeout` — counted from its last heartbeat, or from when this leader began, whichever
/// is later — is declared lost. A draining node with nothing left on it left cleanly and is
/// not declared lost.
pub async fn track(scheduler: Addr<Scheduler>, telemetry: Telemetry, timeout: Duration) {
    let began_ms = now_ms();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok((_, nodes)) = scheduler.send(Stats).await else {
            return;
        };
        let now = now_ms();
        for node in nodes {
            if node.status == NodeStatus::Lost {
                continue;
            }
            let idle = node.free_cpu_millis == node.cpu_millis
                && node.free_memory_bytes == node.memory_bytes
                && node.free_gpus.len() == node.gpus.len();
            if node.status == NodeStatus::Draining && idle {
                continue;
            }
            let heard = telemetry.last_heard(&node.id).unwrap_or(0).max(began_ms);
            let silent = Duration::from_millis(now.saturating_sub(heard));
            if silent < timeout {
                continue;
            }
            // Once recorded, the node is `lost` and skipped above; a failed append is asked
            // again at the next tick.
            let reason = format!("no heartbeat for {} s", silent.as_secs());
            let silent = NodeSilent {
                node: node.id.clone(),
                reason,
            };
            match scheduler.send(silent).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(node = %node.id, %error, "node loss not recorded; will retry")
                }
                Err(_) => return,
            }
        }
    }
}

//! The GpuProbe: samples this node's GPUs every few seconds into [`Telemetry`] (utilisation,
//! memory used, temperature, power: never into the log), and checks the inventory less often,
//! recording a `node.gpus_observed` event only when it changed — a GPU appearing, disappearing
//! or falling off the bus. A change counts as recorded only once its append succeeded; a
//! failed append is tried again at the next check.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::{Gpu, NodeGpusObserved};

use crate::control::Control;
use crate::executor::GpuInventory;
use crate::telemetry::Telemetry;

/// How often GPUs are sampled for telemetry.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

pub struct GpuProbe {
    node: String,
    inventory: Arc<dyn GpuInventory>,
    control: Arc<dyn Control>,
    every: Duration,
    telemetry: Telemetry,
    /// The inventory as the log has it (what the node joined with, then each recorded change).
    recorded: Vec<Gpu>,
    /// A change is being appended.
    recording: bool,
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProbe")
            .field("node", &self.node)
            .finish()
    }
}

/// The part of a GPU that, when it changes, is worth an event.
fn identity(gpus: &[Gpu]) -> Vec<(String, String, u64, Option<String>)> {
    gpus.iter()
        .map(|g| {
            (
                g.uuid.clone(),
                g.name.clone(),
                g.memory_bytes,
                g.driver_version.clone(),
            )
        })
        .collect()
}

impl GpuProbe {
    /// `initial` is what the node joined with.
    pub fn new(
        node: String,
        inventory: Arc<dyn GpuInventory>,
        control: Arc<dyn Control>,
        every: Duration,
        telemetry: Telemetry,
        initial: Vec<Gpu>,
    ) -> GpuProbe {
        GpuProbe {
            node,
            inventory,
            control,
            every,
            telemetry,
            recorded: initial,
            recording: false,
        }
    }

    fn sample(&mut self, ctx: &mut Context<Self>) {
        // NVML calls block: off the actor's thread, which other actors share.
        let inventory = self.inventory.clone();
        let telemetry = self.telemetry.clone();
        let node = self.node.clone();
        ctx.spawn(
            async move {
                match tokio::task::spawn_blocking(move || inventory.samples()).await {
                    Ok(Ok(samples)) => telemetry.record(&node, samples),
                    Ok(Err(error)) => tracing::warn!(%node, %error, "GPU sample failed"),
                    Err(error) => tracing::warn!(%node, %error, "GPU sample task failed"),
                }
            }
            .into_actor(self),
        );
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.recording {
            return;
        }
        let gpus = match self.inventory.gpus() {
            Ok(gpus) => crate::executor::inventory_only(gpus),
            Err(error) => {
                tracing::warn!(node = %self.node, %error, "GPU probe failed");
                return;
            }
        };
        if identity(&gpus) == identity(&self.recorded) {
            return;
        }
        tracing::info!(node = %self.node, before = self.recorded.len(), now = gpus.len(), "GPU inventory changed");
        self.recording = true;
        let event = NodeGpusObserved {
            node_id: self.node.clone(),
            gpus: gpus.clone(),
        };
        let control = self.control.clone();
        ctx.spawn(
            async move { control.record(event.into()).await }
                .into_actor(self)
                .map(move |result, act, _| {
                    act.recording = false;
                    match result {
                        Ok(()) => act.recorded = gpus,
                        Err(error) => {
                            tracing::warn!(node = %act.node, %error, "GPU change not recorded; will retry")
                        }
                    }
                }),
        );
    }
}

impl Actor for GpuProbe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.sample(ctx);
        ctx.run_interval(SAMPLE_EVERY.min(self.every), |act, ctx| act.sample(ctx));
        ctx.run_interval(self.every, |act, ctx| act.check(ctx));
    }
}

impl Supervised for GpuProbe {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A record in flight died with the old context: check again.
        self.recording = false;
    }
}

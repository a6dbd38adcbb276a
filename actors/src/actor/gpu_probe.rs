//! The GpuProbe: reads this node's GPU inventory now and then and records a
//! `node.gpus_observed` event only when it changed (utilisation excluded, it always moves).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gantry_events::event::{Gpu, NodeGpusObserved};

use crate::actor::scheduler::{Record, Scheduler};
use crate::executor::GpuInventory;

pub struct GpuProbe {
    node: String,
    inventory: Arc<dyn GpuInventory>,
    scheduler: Addr<Scheduler>,
    every: Duration,
    last: Vec<Gpu>,
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
        scheduler: Addr<Scheduler>,
        every: Duration,
        initial: Vec<Gpu>,
    ) -> GpuProbe {
        GpuProbe {
            node,
            inventory,
            scheduler,
            every,
            last: initial,
        }
    }

    fn probe(&mut self) {
        match self.inventory.gpus() {
            Ok(gpus) if identity(&gpus) != identity(&self.last) => {
                tracing::info!(node = %self.node, count = gpus.len(), "GPU inventory changed");
                self.last = gpus.clone();
                self.scheduler.do_send(Record(
                    NodeGpusObserved {
                        node_id: self.node.clone(),
                        gpus,
                    }
                    .into(),
                ));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(node = %self.node, %error, "GPU probe failed"),
        }
    }
}

impl Actor for GpuProbe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.every, |act, _| act.probe());
    }
}

impl Supervised for GpuProbe {}

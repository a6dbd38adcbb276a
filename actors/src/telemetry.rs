//! GPU telemetry: utilisation, memory used, temperature and power, sampled every few seconds
//! by the GpuProbe. It is not history, so it never goes into the log (the log records only
//! inventory changes); the latest sample per GPU is kept here, for the gateway to show beside
//! the node and job views and for metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// One GPU, sampled once. A field the driver did not answer is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuSample {
    pub uuid: String,
    pub utilisation_pct: Option<u8>,
    pub memory_used_bytes: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_watts: Option<f64>,
    /// Unix ns of the sample.
    pub sampled_ns: u64,
}

/// The latest samples of every node this process knows of. A cheap-to-clone handle.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    nodes: Arc<RwLock<BTreeMap<String, Vec<GpuSample>>>>,
    /// When each node's last heartbeat arrived (Unix ms); fleet mode only.
    heard: Arc<RwLock<BTreeMap<String, u64>>>,
}

impl Telemetry {
    /// Replaces a node's samples with new ones.
    pub fn record(&self, node: &str, samples: Vec<GpuSample>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.insert(node.to_owned(), samples);
    }

    /// A node's latest samples (empty when none were taken).
    /// Every node's latest samples.
    pub fn all(&self) -> BTreeMap<String, Vec<GpuSample>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn node(&self, node: &str) -> Vec<GpuSample> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(node).cloned().unwrap_or_default()
    }

    /// The latest samples of these GPUs, wherever they are.
    pub fn gpus(&self, uuids: &[String]) -> Vec<GpuSample> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes
            .values()
            .flatten()
            .filter(|s| uuids.contains(&s.uuid))
            .cloned()
            .collect()
    }

    /// A heartbeat from `node` arrived at `at_ms` (Unix ms).
    pub fn heard(&self, node: &str, at_ms: u64) {
        let mut heard = self.heard.write().unwrap_or_else(|e| e.into_inner());
        heard.insert(node.to_owned(), at_ms);
    }

    /// When `node`'s last heartbeat arrived (Unix ms), if this process heard one.
    pub fn last_heard(&self, node: &str) -> Option<u64> {
        let heard = self.heard.read().unwrap_or_else(|e| e.into_inner());
        heard.get(node).copied()
    }
}

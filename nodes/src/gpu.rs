//! GPU inventories: NVML on NVIDIA nodes, nothing on the rest, a fixed list for tests.

use gantry_actors::executor::GpuInventory;
use gantry_events::event::Gpu;
use nvml_wrapper::Nvml;

/// NVML-backed inventory. Without the NVIDIA library or driver the node is CPU-only: that is
/// said once, in one log line, and is not an error.
pub struct NvmlInventory {
    nvml: Option<Nvml>,
}

impl std::fmt::Debug for NvmlInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlInventory")
            .field("nvml", &self.nvml.is_some())
            .finish()
    }
}

impl NvmlInventory {
    pub fn detect() -> NvmlInventory {
        match Nvml::init() {
            Ok(nvml) => NvmlInventory { nvml: Some(nvml) },
            Err(error) => {
                tracing::info!(%error, "no NVIDIA library or driver: this is a CPU-only node");
                NvmlInventory { nvml: None }
            }
        }
    }
}

impl GpuInventory for NvmlInventory {
    fn source(&self) -> &'static str {
        if self.nvml.is_some() { "nvml" } else { "none" }
    }

    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        let Some(nvml) = &self.nvml else {
            return Ok(Vec::new());
        };
        let driver = nvml.sys_driver_version().ok();
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
            gpus.push(Gpu {
                uuid: device.uuid().map_err(|e| e.to_string())?,
                name: device.name().map_err(|e| e.to_string())?,
                memory_bytes: device.memory_info().map_err(|e| e.to_string())?.total,
                utilisation_pct: device
                    .utilization_rates()
                    .ok()
                    .map(|u| u8::try_from(u.gpu.min(100)).unwrap_or(100)),
                driver_version: driver.clone(),
            });
        }
        Ok(gpus)
    }
}

/// A fixed inventory from configuration (`GANTRY_FAKE_GPUS`, JSON list of GPUs), for tests and
/// for machines whose GPUs NVML cannot see.
#[derive(Debug, Clone)]
pub struct FakeInventory(pub Vec<Gpu>);

impl GpuInventory for FakeInventory {
    fn source(&self) -> &'static str {
        "fake"
    }

    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_means_a_cpu_only_node_not_a_failure() {
        let inventory = NvmlInventory::detect();
        let gpus = inventory.gpus().expect("never an error without NVML");
        if inventory.source() == "none" {
            assert!(gpus.is_empty());
        } else {
            // On a GPU machine: every GPU has an id and memory.
            assert!(
                gpus.iter()
                    .all(|g| g.uuid.starts_with("GPU-") && g.memory_bytes > 0),
                "{gpus:?}"
            );
        }
    }
}

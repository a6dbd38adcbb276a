//! GPU inventories: NVML on NVIDIA nodes, nothing on the rest, a fixed list for tests.

use std::sync::{Arc, Mutex};

use gantry_actors::executor::GpuInventory;
use gantry_actors::telemetry::GpuSample;
use gantry_events::event::Gpu;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;

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
            let described = nvml.device_by_index(index).and_then(|device| {
                Ok(Gpu {
                    uuid: device.uuid()?,
                    name: device.name()?,
                    memory_bytes: device.memory_info()?.total,
                    utilisation_pct: device
                        .utilization_rates()
                        .ok()
                        .map(|u| u8::try_from(u.gpu.min(100)).unwrap_or(100)),
                    driver_version: driver.clone(),
                })
            });
            match described {
                Ok(gpu) => gpus.push(gpu),
                // Fallen off the bus (or otherwise unreadable): not a GPU jobs can have.
                Err(error @ (NvmlError::GpuLost | NvmlError::Unknown)) => {
                    tracing::warn!(index, %error, "GPU lost; leaving it out of the inventory");
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(gpus)
    }

    fn samples(&self) -> Result<Vec<GpuSample>, String> {
        let Some(nvml) = &self.nvml else {
            return Ok(Vec::new());
        };
        let now = gantry_events::record::now_ns();
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let mut samples = Vec::with_capacity(count as usize);
        for index in 0..count {
            // A GPU that cannot be read now is left out of this sample; the inventory check
            // decides whether it is gone.
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            let Ok(uuid) = device.uuid() else { continue };
            samples.push(GpuSample {
                uuid,
                utilisation_pct: device
                    .utilization_rates()
                    .ok()
                    .map(|u| u8::try_from(u.gpu.min(100)).unwrap_or(100)),
                memory_used_bytes: device.memory_info().ok().map(|m| m.used),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                sampled_ns: now,
            });
        }
        Ok(samples)
    }
}

/// A fixed inventory from configuration (`GANTRY_FAKE_GPUS`, JSON list of GPUs), for tests and
/// for machines whose GPUs NVML cannot see. Tests can change it (a GPU lost, one added) while
/// gantry runs; samples repeat each GPU's configured utilisation.
#[derive(Debug, Clone, Default)]
pub struct FakeInventory {
    gpus: Arc<Mutex<Vec<Gpu>>>,
}

impl FakeInventory {
    pub fn new(gpus: Vec<Gpu>) -> FakeInventory {
        FakeInventory {
            gpus: Arc::new(Mutex::new(gpus)),
        }
    }

    /// Replaces the GPUs this node has from now on.
    pub fn set(&self, gpus: Vec<Gpu>) {
        *self.gpus.lock().unwrap_or_else(|e| e.into_inner()) = gpus;
    }
}

impl GpuInventory for FakeInventory {
    fn source(&self) -> &'static str {
        "fake"
    }

    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        Ok(self.gpus.lock().unwrap_or_else(|e| e.into_inner()).clone())
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

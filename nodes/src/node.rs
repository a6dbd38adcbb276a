//! This machine as a gantry node: a stable id and the capacity it offers.
//!
//! Its GPUs come from the GPU inventory (`crate::gpu`), its executor from `crate::up`.

use std::io;
use std::path::Path;

/// File in the data directory holding the node id, so it survives restarts.
const NODE_ID_FILE: &str = "node-id";

/// What this node is and offers.
#[derive(Debug, Clone, PartialEq)]
pub struct ThisNode {
    pub id: String,
    pub hostname: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
}

/// Reads (or creates) the node id in `data_dir` and measures this machine.
pub fn this_node(data_dir: &Path) -> io::Result<ThisNode> {
    std::fs::create_dir_all(data_dir)?;
    let hostname = hostname();
    let path = data_dir.join(NODE_ID_FILE);
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        Ok(_) | Err(_) => {
            let suffix = uuid::Uuid::now_v7().simple().to_string();
            let id = format!("{hostname}-{}", &suffix[suffix.len() - 6..]);
            std::fs::write(&path, format!("{id}\n"))?;
            id
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(ThisNode {
        id,
        hostname,
        cpu_millis: u32::try_from(cpus * 1000).unwrap_or(u32::MAX),
        memory_bytes: total_memory().unwrap_or(0),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

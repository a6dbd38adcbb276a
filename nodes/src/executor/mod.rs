//! Executors: Docker (the default when an engine answers) and local processes.

pub mod docker;
pub mod process;

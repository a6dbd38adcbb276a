//! gantry's adapters to the outside world, and the processes assembled from them.
//!
//! - [`jetstream`]: the [`gantry_events::EventLog`] on a NATS JetStream server (fleet mode).
//! - [`nats`]: the fleet's traffic over NATS (wire contract, services, lease, heartbeats).
//! - [`fleet`]: `gantry up --nats` (a control plane) and `gantry node` (a worker node).
//! - [`node`]: this machine as a node: its stable id and capacity.
//! - [`cli`]: the `gantry` command line (`src/main.rs` only parses and calls it).
//!
//! This is the only crate that talks to NATS (and, as they arrive, Docker, NVML and S3). It
//! implements the traits the inner crates define; nothing else depends on it except the
//! integration tests.

pub mod artifacts;
pub mod audit;
pub mod cli;
pub mod client;
pub mod edge;
pub mod executor;
pub mod fleet;
pub mod gpu;
pub mod jetstream;
pub mod nats;
pub mod node;
pub mod retention;
pub mod s3;
pub mod secrets;
pub mod up;

//! gantry's decisions: the Supervisor, Scheduler, Worker, GpuProbe and Auditor actors, and the
//! plain-Rust domain logic they run (job state machine, placement, retry rules).
//!
//! An actor decides by reading state rebuilt from the event log and appending events through
//! [`gantry_events::EventLog`]; state only changes by applying appended events. The outside
//! world (containers, GPUs, artifact storage, the message bus) is reached through small traits
//! defined here and implemented in `gantry-nodes`.
//!
//! - [`job`], [`spec`], [`pipeline`], [`placement`], [`world`]: the decisions, as plain
//!   functions and data;
//! - [`control`]: how a node's actors and the gateway reach the control plane, in-process or
//!   over NATS;
//! - [`executor`]: the traits workers run attempts and read GPUs through;
//! - [`snapshot`]: the scheduler's state saved with the log position it covers, so a start
//!   replays only the log's tail;
//! - [`telemetry`]: the latest GPU samples, kept beside the views, never in the log;
//! - [`actor`]: the five actix actors, one file each, thin wrappers around the above.
//!
//! Must not depend on: `gantry-nodes`, `gantry-gateway`, or any client of Docker, NVML, S3 or
//! NATS.

pub mod actor;
pub mod artifacts;
pub mod control;
pub mod executor;
pub mod job;
pub mod pipeline;
pub mod placement;
pub mod secrets;
pub mod snapshot;
pub mod spec;
pub mod telemetry;
pub mod world;

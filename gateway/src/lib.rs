//! gantry's HTTP gateway: REST and websocket endpoints that read projections and send
//! commands to the actors.
//!
//! The gateway validates input at the edge and never mutates a view directly: every change
//! goes through a command, which an actor turns into events.
//!
//! Must not depend on: `gantry-nodes` (no Docker, NVML, S3 or NATS clients here). The endpoints
//! arrive with the job lifecycle issue; this crate holds their home.

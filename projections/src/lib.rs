//! gantry's read side: views of jobs, queues, nodes and artifacts, rebuilt from the event log
//! into sled, each with its checkpoint (sequence and hash) stored atomically with its data.
//!
//! Projections only read the log: they never append events, and anything here can be deleted
//! and rebuilt from the log.
//!
//! Must not depend on: `gantry-actors`, `gantry-gateway`, `gantry-nodes`. The views arrive
//! with the job lifecycle issue; this crate holds their home.

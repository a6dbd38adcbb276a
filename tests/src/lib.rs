//! Helpers for gantry's integration tests and benchmarks: real servers started per test
//! ([`services`]) and the `EventLog` conformance suite every backend runs ([`conformance`]).
//!
//! Test code only: nothing in the product depends on this crate.

pub mod conformance;
pub mod history;
pub mod process;
pub mod services;
pub mod system;

//! The five actors, one file each. They are thin: decisions live in [`crate::world`],
//! [`crate::job`] and [`crate::placement`].

pub mod auditor;
pub mod gpu_probe;
pub mod scheduler;
pub mod supervisor;
pub mod worker;

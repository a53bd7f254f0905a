//! Cgroup pressure per pod and container: PSI, CPU usage and throttling and
//! memory events from the cgroup files (v2, v1 and hybrid hosts), run-queue
//! latency and its culprits from the scheduler probes, and the node detector's
//! verdicts and findings ([`crate::noisy`]).

pub mod delta;
pub mod files;
pub mod mounts;
pub mod psi;
pub mod read;
pub mod records;
pub mod runqueue;
pub mod source;
pub mod stat;

pub use source::{CgroupInfo, Config, PressureSource};

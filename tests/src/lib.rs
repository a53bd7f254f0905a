//! Harness for podlens's privileged tests: crafted packets and the programs in
//! test-run mode, and (for end-to-end tests) pods emulated exactly as the
//! kubelet lays them out, each with its own network namespace.

pub mod agent;
pub mod cluster;
pub mod collector;
pub mod cpu_limit;
pub mod dns_records;
pub mod http;
pub mod kernel;
pub mod packets;
pub mod pki;
pub mod privileged;
pub mod raw;
pub mod records;

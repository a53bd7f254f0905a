//! podlens collector: node batches in, records out to consumers.
//!
//! The same [`hub::Hub`] and Observe service run inside the agent in
//! standalone mode and in the central `podlens-collector`.

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config_file;
pub mod dedup;
pub mod filter;
pub mod findings;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod minutes;
pub mod observe;
pub mod policy;
pub mod pressure;
pub mod query;
pub mod runtime;
pub mod server;
pub mod talkers;
pub mod tls;
pub mod workloads;

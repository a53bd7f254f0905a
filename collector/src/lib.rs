//! podlens collector: node batches in, records out to consumers.
//!
//! The same [`hub::Hub`] and Observe service run inside the agent in
//! standalone mode and in the central `podlens-collector`.

pub mod cli;
pub mod filter;
pub mod hub;
pub mod observe;
pub mod server;

//! The `podlens` command-line client.

pub mod connect;
pub mod findings;
pub mod format;
pub mod observe;
pub mod policy;
pub mod policy_report;
pub mod query;
pub mod top;

//! The `podlens` command-line client.

pub mod format;
pub mod observe;

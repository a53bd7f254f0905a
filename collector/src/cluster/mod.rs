//! Cluster state for the collector's detectors: pods, namespaces, services,
//! endpoint slices, nodes, NetworkPolicies and workload owners, from a
//! directory of manifests (a GitOps repo).

pub mod manifests;

#[cfg(test)]
mod manifests_tests;

//! Cluster state for the collector's detectors: pods, namespaces, services,
//! endpoint slices, nodes, NetworkPolicies and workload owners, from a
//! directory of manifests (a GitOps repo) or from the Kubernetes API.

pub mod kube;
pub mod manifests;

#[cfg(test)]
mod kube_tests;
#[cfg(test)]
mod manifests_tests;

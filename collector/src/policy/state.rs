//! The cluster as the policy detector sees it: the evaluator's view, services,
//! owners, and the lookups flow records need, indexed once per snapshot.

use std::{collections::HashMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Node, Pod};

use super::{
    eval::ClusterView,
    owners::{OwnerIndex, OwnerObject, Workload},
    selector::{Cidr, Labels},
    services::ServiceIndex,
};
use crate::cluster::manifests::Manifests;

/// The cluster as the detector sees it.
pub struct ClusterState {
    pub view: ClusterView,
    pub services: ServiceIndex,
    pub owners: OwnerIndex,
    pub pods: Vec<Pod>,
    pub policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>,
    /// Manifest and policy problems (the rest loaded).
    pub errors: Vec<String>,
    /// (namespace, name) -> index into `pods`: lookups run per flow record.
    by_name: HashMap<(String, String), usize>,
    /// The nodes' pod networks (spec.podCIDRs): an address there that no pod
    /// of the view has is a pod newer than the view, not the internet.
    pod_networks: Vec<Cidr>,
}

impl ClusterState {
    pub fn from_manifests(m: &Manifests) -> Self {
        let (view, policy_errors) = ClusterView::new(&m.pods, &m.namespaces, &m.policies);
        let view = view.with_nodes(&m.nodes);
        let owners = OwnerIndex::new(m.owners.iter().map(|o| OwnerObject {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
            owner_references: o.owner_references.clone(),
            labels: o.labels.clone(),
        }));
        let mut errors: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
        errors.extend(policy_errors.iter().map(ToString::to_string));
        Self {
            view,
            services: ServiceIndex::new(&m.services, &m.endpoint_slices),
            owners,
            by_name: m
                .pods
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let ns = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                    Some(((ns, p.metadata.name.clone()?), i))
                })
                .collect(),
            pods: m.pods.clone(),
            policies: m.policies.clone(),
            errors,
            pod_networks: pod_networks(&m.nodes),
        }
    }

    /// Whether `ip` is a node's own address (status.addresses, or a
    /// host-network pod's): cluster infrastructure, not the internet.
    pub fn is_node_address(&self, ip: IpAddr) -> bool {
        self.view.is_node_address(ip)
    }

    /// Whether `ip` is in a node's pod network.
    pub fn in_pod_network(&self, ip: IpAddr) -> bool {
        self.pod_networks.iter().any(|n| n.contains(ip))
    }

    pub fn pod(&self, pod: &(String, String)) -> Option<&Pod> {
        self.by_name.get(pod).and_then(|i| self.pods.get(*i))
    }

    pub fn labels(&self, pod: &(String, String)) -> Option<Labels> {
        Some(self.pod(pod)?.metadata.labels.clone().unwrap_or_default())
    }

    pub fn workload(&self, pod: &(String, String)) -> Option<Workload> {
        Some(self.owners.workload_of(self.pod(pod)?))
    }
}

fn pod_networks(nodes: &[Node]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = Vec::new();
    for spec in nodes.iter().filter_map(|n| n.spec.as_ref()) {
        let listed = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
        for cidr in listed.filter_map(|c| Cidr::parse(c).ok()) {
            if !out.contains(&cidr) {
                out.push(cidr);
            }
        }
    }
    out
}

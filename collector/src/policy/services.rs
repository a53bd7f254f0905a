//! ClusterIP services indexed by address and port, so an observed flow to a
//! service can be classified against the pods behind it.
//!
//! Depending on the CNI and kube-proxy mode, the agent sees either a service's
//! ClusterIP (iptables/IPVS DNAT happens later, in the node's network
//! namespace, after the pod's cgroup hooks ran) or a backend's own address
//! (socket-level load balancing rewrites the destination at `connect()`).
//! The classifier uses a pod address directly and resolves a ClusterIP here.
//!
//! Choices:
//! - Only `spec.clusterIP`/`spec.clusterIPs` are indexed: headless and
//!   ExternalName services have no address to be seen on the wire, and node
//!   ports or load-balancer addresses reach pods through the node, which the
//!   agent attributes to the node rather than a service.
//! - A ClusterIP maps to backends of its own family only, as kube-proxy
//!   programs each family separately.
//! - Backends come from EndpointSlices labelled `kubernetes.io/service-name`,
//!   using the slice port whose name equals the service port's name; when
//!   neither the service nor the slice has more than one port, that port is
//!   used whatever its name, as hand-written slices often leave names out.
//! - Ready endpoints are used; when a port has none, serving ones are (the
//!   terminating-endpoint fallback of kube-proxy). Endpoints that are neither
//!   receive no traffic, so classifying them would only add noise.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{EndpointPort, EndpointSlice},
};

use super::eval::Protocol;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What a service address and port lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub namespace: String,
    pub service: String,
    /// Backend address and target port, sorted; empty when the service has no
    /// endpoints for this port.
    pub backends: Vec<(IpAddr, u16)>,
}

/// Services by (ClusterIP, port, protocol).
#[derive(Debug, Default)]
pub struct ServiceIndex {
    frontends: HashMap<(IpAddr, u16, Protocol), ServiceTarget>,
    /// Every backend (address, target port, protocol): an end that listens there.
    backends: HashSet<(IpAddr, u16, Protocol)>,
}

impl ServiceIndex {
    /// Objects without a namespace are taken to be in `default`. When two
    /// services claim the same address and port (which the apiserver
    /// prevents), the first one listed keeps it.
    pub fn new(services: &[Service], slices: &[EndpointSlice]) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let meta = &slice.metadata;
            let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
            let namespace = meta.namespace.as_deref().unwrap_or("default");
            by_service.entry((namespace, service.as_str())).or_default().push(slice);
        }
        let mut index = ServiceIndex::default();
        for service in services {
            let Some(spec) = service.spec.as_ref() else { continue };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let addresses = cluster_ips(spec);
            let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
            let Some(name) = service.metadata.name.as_deref() else { continue };
            let slices = by_service.get(&(namespace, name)).map_or(&[][..], Vec::as_slice);
            let ports = spec.ports.as_deref().unwrap_or_default();
            for port in ports {
                let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref().unwrap_or("TCP")) else { continue };
                let Ok(number) = u16::try_from(port.port) else { continue };
                let backends = backends(slices, port, ports.len() == 1);
                for &ip in &addresses {
                    let backends: Vec<(IpAddr, u16)> =
                        backends.iter().filter(|(b, _)| b.is_ipv4() == ip.is_ipv4()).copied().collect();
                    index.backends.extend(backends.iter().map(|&(b, p)| (b.to_canonical(), p, protocol)));
                    let target = ServiceTarget { namespace: namespace.to_owned(), service: name.to_owned(), backends };
                    index.frontends.entry((ip, number, protocol)).or_insert(target);
                }
            }
        }
        index
    }

    /// The service answering at `ip:port`, if any. IPv4-mapped IPv6
    /// addresses are looked up as IPv4.
    pub fn resolve(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<&ServiceTarget> {
        self.frontends.get(&(ip.to_canonical(), port, protocol))
    }

    /// Whether `ip:port` is a backend of some service: a server end.
    pub fn serves(&self, ip: IpAddr, port: u16, protocol: Protocol) -> bool {
        self.backends.contains(&(ip.to_canonical(), port, protocol))
    }

    /// Number of indexed (address, port, protocol) frontends.
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }
}

/// The service's addresses; empty for headless services (`None`).
fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    // clusterIPs[0] repeats clusterIP when both are set; older objects have
    // only clusterIP.
    let listed = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.as_ref());
    let parsed = listed.filter_map(|s| s.parse::<IpAddr>().ok()).map(|ip| ip.to_canonical());
    let set: BTreeSet<IpAddr> = parsed.filter(|ip| !ip.is_unspecified()).collect();
    set.into_iter().collect()
}

fn backends(slices: &[&EndpointSlice], port: &ServicePort, only_port: bool) -> Vec<(IpAddr, u16)> {
    let mut ready = BTreeSet::new();
    let mut serving = BTreeSet::new();
    for slice in slices {
        let Some(target) = slice_port(slice.ports.as_deref().unwrap_or_default(), port, only_port) else { continue };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            // The API says an unset condition is to be read as true.
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = conditions.and_then(|c| c.serving).unwrap_or(true);
            let set = match (is_ready, is_serving) {
                (true, _) => &mut ready,
                (false, true) => &mut serving,
                (false, false) => continue,
            };
            let addresses = endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok());
            set.extend(addresses.map(|ip| (ip.to_canonical(), target)));
        }
    }
    if ready.is_empty() {
        serving.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

/// The target port number a slice gives for `port`.
fn slice_port(ports: &[EndpointPort], port: &ServicePort, only_port: bool) -> Option<u16> {
    // The endpoint controller writes an unnamed service port as "" or leaves
    // the name out; both mean the same.
    let wanted = port.name.as_deref().unwrap_or_default();
    let named = ports.iter().find(|p| p.name.as_deref().unwrap_or_default() == wanted);
    let chosen = match (named, ports) {
        (Some(p), _) => p,
        (None, [single]) if only_port => single,
        _ => return None,
    };
    // kube-proxy skips slice ports without a number: nothing is forwarded.
    u16::try_from(chosen.port?).ok().filter(|&n| n != 0)
}

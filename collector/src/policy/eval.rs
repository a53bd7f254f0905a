//! Kubernetes NetworkPolicy (networking.k8s.io/v1) evaluation over a
//! snapshot of pods, namespaces and policies: would this connection be
//! allowed, and by which rules?
//!
//! Choices where the spec leaves room, made to match the common CNIs:
//! - An `ipBlock` peer matches the other end by address whether or not that
//!   end is a pod (the spec means it for cluster-external addresses, but
//!   Calico and others apply it to pod IPs too). A pod found through
//!   [`ClusterView::pod_by_ip`] is matched by that address only; one found by
//!   name is matched by any of its addresses.
//! - Pod and namespace selector peers match pods only; [`Endpoint::External`]
//!   never matches them, even if its address belongs to a pod: use
//!   [`ClusterView::endpoint`] to resolve addresses first.
//! - A host-network pod's address is its node's, shared with every host
//!   process and host-network pod there: such pods are not found by address
//!   ([`ClusterView::pod_by_ip`]), and named as an end they are judged as
//!   their address (policies do not select them in most CNIs).
//! - Exemptions ([`Decision::Exempt`]), for pods a policy isolates: ingress
//!   from an address of the pod's own node (status.hostIPs, and the node's
//!   status.addresses when the view has nodes), as the API specifies for
//!   kubelet probes; and a pod reaching itself. Egress to the own node is
//!   judged by the policies: Calico and Cilium enforce it.
//! - Named ports resolve on the destination pod's `containers` and
//!   `initContainers` (native sidecars can serve) by name and protocol.
//! - Every namespace carries `kubernetes.io/metadata.name`, as the apiserver
//!   guarantees; namespaces missing from the snapshot have only that label.
//! - Objects without a namespace are taken to be in `default`.

use std::{
    borrow::Borrow,
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Container, Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};

pub use super::peer::{PolicyError, Problem};
use super::{peer::CompiledPolicy, selector::Labels};

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the spelling Kubernetes uses (`TCP`, `UDP`, `SCTP`, exact case).
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug)]
struct PodInfo {
    namespace: String,
    name: String,
    labels: Labels,
    ips: Vec<IpAddr>,
    ports: Vec<NamedPort>,
    /// Every declared container port, named or not.
    declared: Vec<(Protocol, u16)>,
    host_network: bool,
    /// Its node's addresses as the pod's status gives them (status.hostIPs).
    host_ips: Vec<IpAddr>,
    /// spec.nodeName.
    node: Option<String>,
}

/// A pod of a [`ClusterView`].
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    pod: &'a PodInfo,
    via: Option<IpAddr>,
}

impl<'a> PodRef<'a> {
    pub fn namespace(&self) -> &'a str {
        &self.pod.namespace
    }
    pub fn name(&self) -> &'a str {
        &self.pod.name
    }
    pub fn labels(&self) -> &'a Labels {
        &self.pod.labels
    }
    /// All of the pod's addresses (two for dual-stack pods).
    pub fn ips(&self) -> &'a [IpAddr] {
        &self.pod.ips
    }
    /// The address this pod was looked up by, if it was.
    pub fn ip(&self) -> Option<IpAddr> {
        self.via
    }
    pub fn container_ports(&self) -> &'a [NamedPort] {
        &self.pod.ports
    }
    /// Whether the pod shares its node's network namespace (and address).
    pub fn host_network(&self) -> bool {
        self.pod.host_network
    }
    /// Whether a container of the pod declares `port` (named or not).
    pub fn declares(&self, port: u16, protocol: Protocol) -> bool {
        self.pod.declared.contains(&(protocol, port))
    }
    /// The addresses an `ipBlock` is checked against.
    pub(crate) fn addresses(&self) -> &[IpAddr] {
        match self.via {
            Some(_) => self.via.as_slice(),
            None => self.ips(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    Pod(PodRef<'a>),
    /// Outside the cluster (or at least not a pod of the view).
    External(IpAddr),
}

#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub from: Endpoint<'a>,
    pub to: Endpoint<'a>,
    /// Destination port.
    pub port: u16,
    pub protocol: Protocol,
}

/// One rule that allows a connection; `rule_index` indexes `spec.ingress` or
/// `spec.egress` as `direction` says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    pub rule_index: usize,
    /// The rule allows it only through a peer that admits everyone (an empty
    /// peer list, `ipBlock` 0.0.0.0/0 or ::/0, or `namespaceSelector: {}`
    /// not narrowed by a pod selector).
    pub broad: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects the pod for this direction: everything is allowed.
    NotIsolated,
    /// Every rule that allows it, sorted.
    Allowed(Vec<RuleRef>),
    /// The pod is isolated, but this traffic is exempt from policy.
    Exempt(Exemption),
    /// Isolated and no rule allows it; the policies isolating the pod as
    /// (namespace, name), sorted.
    Denied { selecting: Vec<(String, String)> },
}

/// Traffic NetworkPolicy never blocks, whatever selects the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemption {
    /// Ingress from an address of the node the pod runs on (kubelet probes).
    OwnNode,
    /// The pod reaching itself.
    SamePod,
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exemption::OwnNode => "own node",
            Exemption::SamePod => "same pod",
        })
    }
}

impl Decision {
    pub fn permits(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }

    /// Allowed, but only by broad rules: the case worth tightening.
    pub fn only_broad(&self) -> bool {
        matches!(self, Decision::Allowed(rules) if rules.iter().all(|r| r.broad))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// None when `from` is external: no egress policy applies to it.
    pub egress: Option<Decision>,
    /// None when `to` is external: no ingress policy applies to it.
    pub ingress: Option<Decision>,
}

impl Verdict {
    /// The connection gets through: both ends let it.
    pub fn permits(&self) -> bool {
        [&self.egress, &self.ingress].into_iter().flatten().all(Decision::permits)
    }
}

/// Pods, namespaces and policies, indexed for [`evaluate`].
#[derive(Debug, Default)]
pub struct ClusterView {
    pods: Vec<PodInfo>,
    by_name: HashMap<String, HashMap<String, usize>>,
    by_ip: HashMap<IpAddr, usize>,
    by_uid: HashMap<String, usize>,
    /// Node name -> its addresses (status.addresses).
    nodes: HashMap<String, Vec<IpAddr>>,
    /// Every node's addresses, host-network pods' (their node's) included.
    node_addresses: HashSet<IpAddr>,
    namespaces: HashMap<String, Labels>,
    policies: HashMap<String, Vec<CompiledPolicy>>,
}

impl ClusterView {
    /// Takes owned objects, references or `Arc`s (as a kube reflector store
    /// hands them out). Unusable policy fields are returned as errors and
    /// select or allow nothing.
    pub fn new<P, N, Q>(
        pods: impl IntoIterator<Item = P>,
        namespaces: impl IntoIterator<Item = N>,
        policies: impl IntoIterator<Item = Q>,
    ) -> (Self, Vec<PolicyError>)
    where
        P: Borrow<Pod>,
        N: Borrow<Namespace>,
        Q: Borrow<NetworkPolicy>,
    {
        let mut view = ClusterView::default();
        for ns in namespaces {
            let meta = &ns.borrow().metadata;
            let Some(name) = meta.name.clone() else { continue };
            let mut labels = meta.labels.clone().unwrap_or_default();
            labels.insert(NAME_LABEL.to_owned(), name.clone());
            view.namespaces.insert(name, labels);
        }
        for pod in pods {
            let pod = pod.borrow();
            let idx = view.pods.len();
            let info = pod_info(pod);
            // A finished pod keeps its IP in status after the IP is reused.
            let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
            // a host-network pod's address is the node's: it names no one pod
            if info.host_network {
                view.node_addresses.extend(&info.ips);
            } else if !finished {
                for ip in &info.ips {
                    view.by_ip.entry(*ip).or_insert(idx);
                }
            }
            view.by_name.entry(info.namespace.clone()).or_default().entry(info.name.clone()).or_insert(idx);
            if let Some(uid) = &pod.metadata.uid {
                view.by_uid.entry(uid.clone()).or_insert(idx);
            }
            view.pods.push(info);
        }
        let mut errors = Vec::new();
        for policy in policies {
            if let Some((ns, compiled)) = CompiledPolicy::compile(policy.borrow(), &mut errors) {
                view.policies.entry(ns).or_default().push(compiled);
            }
        }
        let mentioned: Vec<String> = view.by_name.keys().chain(view.policies.keys()).cloned().collect();
        for ns in mentioned {
            view.namespaces.entry(ns.clone()).or_insert_with(|| Labels::from([(NAME_LABEL.to_owned(), ns)]));
        }
        (view, errors)
    }

    /// Adds the nodes: ingress from any of a node's addresses to its pods is
    /// exempt from policy, not only from the address in the pods' status.
    pub fn with_nodes<N: Borrow<Node>>(mut self, nodes: impl IntoIterator<Item = N>) -> Self {
        for node in nodes {
            let node = node.borrow();
            let Some(name) = node.metadata.name.clone() else { continue };
            let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten();
            let ips = addresses(listed.map(|a| a.address.as_str()), None);
            self.node_addresses.extend(&ips);
            self.nodes.insert(name, ips);
        }
        self
    }

    /// Whether `ip` is a node's own address (see [`ClusterView::with_nodes`]).
    pub fn is_node_address(&self, ip: IpAddr) -> bool {
        self.node_addresses.contains(&ip.to_canonical())
    }

    /// Whether `ip` is an address of the node `pod` runs on.
    fn own_node(&self, pod: &PodInfo, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        pod.host_ips.contains(&ip)
            || pod.node.as_ref().and_then(|n| self.nodes.get(n)).is_some_and(|addresses| addresses.contains(&ip))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodRef<'_>> {
        let idx = *self.by_name.get(namespace)?.get(name)?;
        Some(PodRef { pod: self.pods.get(idx)?, via: None })
    }

    pub fn pod_by_uid(&self, uid: &str) -> Option<PodRef<'_>> {
        let idx = *self.by_uid.get(uid)?;
        Some(PodRef { pod: self.pods.get(idx)?, via: None })
    }

    /// IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodRef<'_>> {
        let ip = ip.to_canonical();
        let idx = *self.by_ip.get(&ip)?;
        Some(PodRef { pod: self.pods.get(idx)?, via: Some(ip) })
    }

    /// The pod with this address, or an external endpoint.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint<'_> {
        self.pod_by_ip(ip).map_or(Endpoint::External(ip.to_canonical()), Endpoint::Pod)
    }

    pub fn pods(&self) -> impl Iterator<Item = PodRef<'_>> {
        self.pods.iter().map(|pod| PodRef { pod, via: None })
    }

    pub(crate) fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace)
    }
}

fn pod_info(pod: &Pod) -> PodInfo {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let mut ips = addresses(
        status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|p| p.ip.as_str()),
        status.and_then(|s| s.pod_ip.as_deref()),
    );
    ips.dedup();
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
    let init = spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten();
    let all: Vec<&Container> = containers.chain(init).collect();
    let ports = all.iter().flat_map(|c| named_ports(c)).collect();
    let declared = all
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let protocol = p.protocol.as_deref().map_or(Some(Protocol::Tcp), Protocol::from_k8s)?;
            Some((protocol, u16::try_from(p.container_port).ok()?))
        })
        .collect();
    PodInfo {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        ips,
        ports,
        declared,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        host_ips: addresses(
            status.and_then(|s| s.host_ips.as_ref()).into_iter().flatten().map(|h| h.ip.as_str()),
            status.and_then(|s| s.host_ip.as_deref()),
        ),
        node: spec.and_then(|s| s.node_name.clone()),
    }
}

/// The parsed addresses of a plural status field (podIPs, hostIPs), or of its
/// singular predecessor (podIP, hostIP) on objects older than the plural one.
fn addresses<'a>(listed: impl Iterator<Item = &'a str>, single: Option<&'a str>) -> Vec<IpAddr> {
    let parse = |s: &str| s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    let ips: Vec<IpAddr> = listed.filter_map(parse).collect();
    if ips.is_empty() {
        return single.and_then(parse).into_iter().collect();
    }
    ips
}

fn named_ports(c: &Container) -> impl Iterator<Item = NamedPort> + '_ {
    c.ports.iter().flatten().filter_map(|p| {
        Some(NamedPort {
            name: p.name.clone()?,
            protocol: p.protocol.as_deref().map_or(Some(Protocol::Tcp), Protocol::from_k8s)?,
            port: u16::try_from(p.container_port).ok()?,
        })
    })
}

/// Decides both directions of `c` independently: egress by the policies
/// selecting `from`, ingress by those selecting `to`.
pub fn evaluate(view: &ClusterView, c: &Connection) -> Verdict {
    let c = Connection { from: as_node(c.from), to: as_node(c.to), ..*c };
    let decide_for = |end: &Endpoint, direction| match end {
        Endpoint::Pod(pod) => Some(decide(view, pod, direction, &c)),
        Endpoint::External(_) => None,
    };
    Verdict { egress: decide_for(&c.from, Direction::Egress), ingress: decide_for(&c.to, Direction::Ingress) }
}

/// A host-network pod is its node's address to policies.
fn as_node(end: Endpoint<'_>) -> Endpoint<'_> {
    match end {
        Endpoint::Pod(p) if p.host_network() => p.addresses().first().map_or(end, |ip| Endpoint::External(*ip)),
        _ => end,
    }
}

fn decide(view: &ClusterView, pod: &PodRef, direction: Direction, c: &Connection) -> Decision {
    let other = match direction {
        Direction::Ingress => &c.from,
        Direction::Egress => &c.to,
    };
    let exemption = match other {
        Endpoint::Pod(o) if std::ptr::eq(o.pod, pod.pod) => Some(Exemption::SamePod),
        Endpoint::External(ip) if direction == Direction::Ingress && view.own_node(pod.pod, *ip) => {
            Some(Exemption::OwnNode)
        }
        _ => None,
    };
    let mut selecting = Vec::new();
    let mut allowed = Vec::new();
    let namespace = pod.namespace();
    for policy in view.policies.get(namespace).into_iter().flatten() {
        let Some(rules) = policy.rules_for(pod.labels(), direction) else { continue };
        selecting.push((namespace.to_owned(), policy.name.clone()));
        for (rule_index, rule) in rules.iter().enumerate() {
            if let Some(broad) = rule.admits(view, namespace, other, &c.to, c.port, c.protocol) {
                let policy = policy.name.clone();
                allowed.push(RuleRef { namespace: namespace.to_owned(), policy, direction, rule_index, broad });
            }
        }
    }
    if selecting.is_empty() {
        Decision::NotIsolated
    } else if let Some(e) = exemption {
        Decision::Exempt(e)
    } else if allowed.is_empty() {
        selecting.sort();
        Decision::Denied { selecting }
    } else {
        allowed.sort();
        Decision::Allowed(allowed)
    }
}

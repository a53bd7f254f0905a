//! Policy coverage of observed flows: for a connection the agent saw, which
//! NetworkPolicy rules let it through on each end, whether an end is not
//! isolated at all, or whether it was seen although policy denies it.
//!
//! Choices:
//! - Client and server: `local_is_client` when the agent knows it (it saw
//!   the SYN). Otherwise a remote service address and port means the local
//!   end is the client, since nothing listens on a ClusterIP; failing that,
//!   the end that declares its port (a containerPort of its pod, or a
//!   service backend address and target port) is the server when only one
//!   does; failing that, the end with the lower port (services listen on
//!   low or well-known ports, clients get ephemeral ones), and on a tie the
//!   local end is the client.
//! - The local pod is found by namespace and name, else by uid, else by the
//!   local address. A name or uid the view does not know is a pod newer than
//!   the snapshot, so the address is not tried: it would belong to the pod
//!   that had it before. An unresolved local end is treated as external.
//! - The remote server is a pod by address, else a ClusterIP resolved through
//!   [`ServiceIndex`] to every backend, else external. A remote client is
//!   never resolved as a service (nothing sends from a ClusterIP).
//! - With several backends the worst class of each direction wins
//!   (EnforcementGap > NotIsolated > AllowedBroad > AllowedSpecific >
//!   NotApplicable): a flow is only as well covered as its least covered
//!   backend. Equal classes merge their rules or policies.
//! - A service without backends leaves nothing to evaluate against; its
//!   client's egress is still reported as NotIsolated when no policy selects
//!   it, as that holds whatever the destination.
//! - Protocols other than TCP, UDP and SCTP are outside NetworkPolicy (CNIs
//!   differ on ICMP), so both directions are NotApplicable.

use std::net::IpAddr;

use super::{
    eval::{evaluate, ClusterView, Connection, Decision, Endpoint, Exemption, PodRef, Protocol, RuleRef},
    services::ServiceIndex,
};

/// IANA protocol numbers NetworkPolicy applies to.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// (namespace, name).
pub type ObjectId = (String, String);

/// What the agent knows of the pod that owns the socket: namespace and name,
/// or only a uid, or nothing (then the local address is used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEnd {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedFlow {
    pub local: FlowEnd,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    /// From the TCP SYN direction; None when unknown.
    pub local_is_client: Option<bool>,
    /// The name the client resolved for the remote address, if seen.
    pub fqdn: Option<String>,
}

/// How one end's policy covers a flow. Variants are declared from least to
/// most worrying, the order [`Class::worst`] ranks them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// That end is outside the cluster, or the protocol is not TCP/UDP/SCTP.
    NotApplicable,
    /// The pod is isolated, and this traffic is exempt from policy (its own
    /// node's probes, itself): covered, and needs no rule.
    Exempt(Exemption),
    /// Allowed by rules naming their peers; the broad rules that also allow it
    /// are left out, as they are not what covers it.
    AllowedSpecific(Vec<RuleRef>),
    /// Allowed only by rules that admit everyone (see [`RuleRef::broad`]).
    AllowedBroad(Vec<RuleRef>),
    /// No policy selects that pod for this direction.
    NotIsolated,
    /// Observed although policy denies it: the CNI does not enforce, or the
    /// snapshot is not what the cluster runs. The isolating policies.
    EnforcementGap { selecting: Vec<ObjectId> },
}

impl Class {
    /// `None` is an end without policy (external).
    pub fn from_decision(decision: Option<Decision>) -> Class {
        let Some(decision) = decision else { return Class::NotApplicable };
        let only_broad = decision.only_broad();
        match decision {
            Decision::Exempt(e) => Class::Exempt(e),
            Decision::NotIsolated => Class::NotIsolated,
            Decision::Allowed(rules) if only_broad => Class::AllowedBroad(rules),
            Decision::Allowed(rules) => Class::AllowedSpecific(rules.into_iter().filter(|r| !r.broad).collect()),
            Decision::Denied { selecting } => Class::EnforcementGap { selecting },
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Class::NotApplicable => 0,
            Class::Exempt(_) => 1,
            Class::AllowedSpecific(_) => 1,
            Class::AllowedBroad(_) => 2,
            Class::NotIsolated => 3,
            Class::EnforcementGap { .. } => 4,
        }
    }

    /// The worse of two classes; equal ones merge their lists.
    pub fn worst(self, other: Class) -> Class {
        match (self, other) {
            (Class::AllowedSpecific(a), Class::AllowedSpecific(b)) => Class::AllowedSpecific(union(a, b)),
            (Class::AllowedBroad(a), Class::AllowedBroad(b)) => Class::AllowedBroad(union(a, b)),
            (Class::EnforcementGap { selecting: a }, Class::EnforcementGap { selecting: b }) => {
                Class::EnforcementGap { selecting: union(a, b) }
            }
            (a, b) if b.rank() > a.rank() => b,
            (a, _) => a,
        }
    }
}

fn union<T: Ord>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    a.extend(b);
    a.sort();
    a.dedup();
    a
}

/// One backend of a service flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendClass {
    pub ip: IpAddr,
    /// The target port, which policies were evaluated against.
    pub port: u16,
    /// None when the backend address is not a pod of the view.
    pub pod: Option<ObjectId>,
    pub egress: Class,
    pub ingress: Class,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowClass {
    /// The service when the server address was a ClusterIP.
    pub service: Option<ObjectId>,
    /// The client's egress.
    pub egress: Class,
    /// The server's ingress.
    pub ingress: Class,
    pub local_is_client: bool,
    pub client_pod: Option<ObjectId>,
    /// The server pod when there is exactly one; a service's backends are in
    /// `backends`.
    pub server_pod: Option<ObjectId>,
    /// The server port as observed: the service port for a ClusterIP flow.
    pub server_port: u16,
    /// IANA protocol number, as observed.
    pub protocol: u8,
    pub fqdn: Option<String>,
    /// Per backend, for service flows only, sorted by address and port.
    pub backends: Vec<BackendClass>,
}

pub fn policy_protocol(iana: u8) -> Option<Protocol> {
    match iana {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Classifies flows against one snapshot; cheap to build (two references).
#[derive(Debug, Clone, Copy)]
pub struct Classifier<'a> {
    view: &'a ClusterView,
    services: &'a ServiceIndex,
}

impl<'a> Classifier<'a> {
    pub fn new(view: &'a ClusterView, services: &'a ServiceIndex) -> Self {
        Classifier { view, services }
    }

    pub fn classify(&self, flow: &ObservedFlow) -> FlowClass {
        let protocol = policy_protocol(flow.protocol);
        let local = self.local_endpoint(flow);
        let frontend = protocol.and_then(|p| Some((p, self.services.resolve(flow.remote_ip, flow.remote_port, p)?)));
        let local_is_client =
            flow.local_is_client.unwrap_or_else(|| frontend.is_some() || self.guess_local_is_client(flow, &local));
        let mut out = FlowClass {
            service: None,
            egress: Class::NotApplicable,
            ingress: Class::NotApplicable,
            local_is_client,
            client_pod: pod_id(&local),
            server_pod: None,
            server_port: flow.remote_port,
            protocol: flow.protocol,
            fqdn: flow.fqdn.clone(),
            backends: Vec::new(),
        };
        if !local_is_client {
            let remote = self.view.endpoint(flow.remote_ip);
            (out.client_pod, out.server_pod, out.server_port) = (pod_id(&remote), pod_id(&local), flow.local_port);
            (out.egress, out.ingress) = self.judge(remote, local, flow.local_port, protocol);
            return out;
        }
        // A pod's address wins over a service claiming it too (only in an
        // inconsistent snapshot): that flow already reached the pod.
        let target = frontend.filter(|_| self.view.pod_by_ip(flow.remote_ip).is_none());
        let Some((protocol, target)) = target else {
            let remote = self.view.endpoint(flow.remote_ip);
            out.server_pod = pod_id(&remote);
            (out.egress, out.ingress) = self.judge(local, remote, flow.remote_port, protocol);
            return out;
        };
        out.service = Some((target.namespace.clone(), target.service.clone()));
        if target.backends.is_empty() {
            let to = Endpoint::External(flow.remote_ip);
            let nowhere = Connection { from: local, to, port: flow.remote_port, protocol };
            if matches!(evaluate(self.view, &nowhere).egress, Some(Decision::NotIsolated)) {
                out.egress = Class::NotIsolated;
            }
            return out;
        }
        for &(ip, port) in &target.backends {
            let server = self.view.endpoint(ip);
            let (egress, ingress) = self.judge(local, server, port, Some(protocol));
            out.egress = out.egress.worst(egress.clone());
            out.ingress = out.ingress.worst(ingress.clone());
            out.backends.push(BackendClass { ip, port, pod: pod_id(&server), egress, ingress });
        }
        if let [only] = out.backends.as_slice() {
            out.server_pod = only.pod.clone();
        }
        out
    }

    /// Without the opening seen: the end that declares its port (a container
    /// port, or a service backend) is the server; failing that, the lower port.
    fn guess_local_is_client(&self, flow: &ObservedFlow, local: &Endpoint) -> bool {
        let Some(protocol) = policy_protocol(flow.protocol) else { return flow.local_port >= flow.remote_port };
        let listens = |end: Option<PodRef>, ip: IpAddr, port: u16| {
            end.is_some_and(|p| p.declares(port, protocol)) || self.services.serves(ip, port, protocol)
        };
        let local_pod = match local {
            Endpoint::Pod(p) => Some(*p),
            Endpoint::External(_) => None,
        };
        let local_listens = listens(local_pod, flow.local_ip, flow.local_port);
        let remote_listens = listens(self.view.pod_by_ip(flow.remote_ip), flow.remote_ip, flow.remote_port);
        match (local_listens, remote_listens) {
            (true, false) => false,
            (false, true) => true,
            _ => flow.local_port >= flow.remote_port,
        }
    }

    fn judge(&self, from: Endpoint, to: Endpoint, port: u16, protocol: Option<Protocol>) -> (Class, Class) {
        let Some(protocol) = protocol else { return (Class::NotApplicable, Class::NotApplicable) };
        let verdict = evaluate(self.view, &Connection { from, to, port, protocol });
        (Class::from_decision(verdict.egress), Class::from_decision(verdict.ingress))
    }

    /// The flow's own end: its pod (by the identity the agent gave, or its
    /// address), or an external endpoint when the view has no such pod.
    pub fn local_endpoint(&self, flow: &ObservedFlow) -> Endpoint<'a> {
        let end = &flow.local;
        // Outer None: no identity given; inner None: one the view lacks.
        let identity = match (&end.namespace, &end.name, &end.uid) {
            (Some(namespace), Some(name), _) => Some(Some((namespace.as_str(), name.as_str()))),
            (_, _, Some(uid)) => Some(self.view.pod_by_uid(uid).map(|p| (p.namespace(), p.name()))),
            _ => None,
        };
        let by_ip = self.view.pod_by_ip(flow.local_ip);
        let pod = match identity {
            None => by_ip,
            Some(None) => None,
            // The flow's own address, when it is the named pod's, is what an
            // ipBlock should be checked against.
            Some(Some(id)) => by_ip.filter(|p| same(p, id)).or_else(|| self.view.pod(id.0, id.1)),
        };
        pod.map_or(Endpoint::External(flow.local_ip.to_canonical()), Endpoint::Pod)
    }
}

/// Classifies one flow.
pub fn classify(view: &ClusterView, services: &ServiceIndex, flow: &ObservedFlow) -> FlowClass {
    Classifier::new(view, services).classify(flow)
}

fn same(pod: &PodRef, (namespace, name): (&str, &str)) -> bool {
    pod.namespace() == namespace && pod.name() == name
}

fn pod_id(end: &Endpoint) -> Option<ObjectId> {
    match end {
        Endpoint::Pod(pod) => Some((pod.namespace().to_owned(), pod.name().to_owned())),
        Endpoint::External(_) => None,
    }
}

//! Policy gaps found in observed traffic: classified flows aggregated over
//! time into findings an operator can act on, each with a stable id.
//!
//! Choices:
//! - Findings are per workload, not per pod, as pod names change on every
//!   rollout. A pod the caller has no workload for stands for itself (kind
//!   `Pod`).
//! - [`GapKind::UnprotectedPod`] is keyed by workload and direction and keeps
//!   the peers it talks to; [`GapKind::UncoveredEgress`] and
//!   [`GapKind::EnforcementGap`] are keyed by workload, direction,
//!   destination (or source), port and protocol. A NotIsolated egress is
//!   reported as both an unprotected pod and uncovered egress: the first says
//!   "isolate this pod", the second lists what its egress rules must allow.
//! - A peer is named, best first: by its workload, by the service the flow
//!   went through, by the FQDN the client resolved, by its
//!   address (grouped into a CIDR when [`GapConfig`] says so), else as an
//!   unknown external end. The address is only known through
//!   [`GapAggregator::add_observed`].
//! - The server workload the caller gives stands for every backend of a
//!   service flow; without one, each backend pod is judged by its own
//!   ingress class, as itself.
//! - Ids are a 64-bit FNV-1a hash of the key's canonical string, in hex:
//!   stable across runs and Rust versions (std's hasher promises neither).
//! - Bounds: at most `max_entries` findings; a flow that would start a new
//!   one when full is counted in [`GapAggregator::dropped`]. An unprotected
//!   pod keeps at most `max_peers` peers: when full, a new peer replaces the
//!   one with the fewest bytes if it already has more, else it is counted in
//!   [`Gap::peers_dropped`]. Heavy peers seen early are thus kept exactly;
//!   this is not an exact top-k over all time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    classify::{Class, FlowClass, ObjectId, ObservedFlow, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    eval::Direction,
    owners::Workload,
};

pub const DEFAULT_MAX_ENTRIES: usize = 50_000;
pub const DEFAULT_MAX_PEERS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GapKind {
    /// No policy selects the pod for `direction`.
    UnprotectedPod,
    /// Egress allowed only because nothing isolates it, or only by broad rules.
    UncoveredEgress,
    /// Seen although the policies deny it.
    EnforcementGap,
}

impl GapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::UnprotectedPod => "unprotected-pod",
            GapKind::UncoveredEgress => "uncovered-egress",
            GapKind::EnforcementGap => "enforcement-gap",
        }
    }
}

/// The other end of a finding's flows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerDesc {
    /// Every peer: an unprotected pod's finding, whose peers are listed apart.
    Any,
    Workload(Workload),
    /// (namespace, name) of the service whose backends have no single workload.
    Service(ObjectId),
    Fqdn(String),
    /// An external address, or the network it was grouped into.
    Cidr {
        network: IpAddr,
        prefix: u8,
    },
    /// An external end whose address is not known.
    External,
}

impl PeerDesc {
    /// The canonical spelling ids are derived from.
    pub fn canonical(&self) -> String {
        match self {
            PeerDesc::Any => "any".to_owned(),
            PeerDesc::Workload(w) => format!("workload:{}", workload_key(w)),
            PeerDesc::Service((ns, name)) => format!("service:{ns}/{name}"),
            PeerDesc::Fqdn(name) => format!("fqdn:{name}"),
            PeerDesc::Cidr { network, prefix } => format!("cidr:{network}/{prefix}"),
            PeerDesc::External => "external".to_owned(),
        }
    }
}

/// One peer of an unprotected pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStat {
    pub peer: PeerDesc,
    pub port: u16,
    pub protocol: u8,
    pub flows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// 16 hex digits, stable across runs for the same key.
    pub id: String,
    pub kind: GapKind,
    /// The pod's workload: the client for egress, the server for ingress.
    pub workload: Workload,
    pub direction: Direction,
    /// The destination for egress, the source for ingress; [`PeerDesc::Any`]
    /// for an unprotected pod.
    pub peer: PeerDesc,
    /// The server port; 0 for an unprotected pod.
    pub port: u16,
    /// IANA protocol number; 0 for an unprotected pod.
    pub protocol: u8,
    pub flows: u64,
    pub bytes: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// (namespace, name): the denying policies of an enforcement gap, the
    /// policies with the broad rules of uncovered egress; sorted.
    pub policies: Vec<(String, String)>,
    /// An unprotected pod's peers, most bytes first.
    pub peers: Vec<PeerStat>,
    /// Flows to peers that did not fit in `peers`.
    pub peers_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapConfig {
    pub max_entries: usize,
    pub max_peers: usize,
    /// External IPv4 addresses are grouped into networks of this prefix.
    pub external_v4_prefix: u8,
    pub external_v6_prefix: u8,
}

impl Default for GapConfig {
    fn default() -> Self {
        GapConfig {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_peers: DEFAULT_MAX_PEERS,
            external_v4_prefix: 32,
            external_v6_prefix: 128,
        }
    }
}

#[derive(Debug, Default)]
pub struct GapAggregator {
    config: GapConfig,
    /// By canonical key, so iteration order is stable.
    gaps: BTreeMap<String, Gap>,
    dropped: u64,
}

impl GapAggregator {
    pub fn new(config: GapConfig) -> Self {
        GapAggregator { config, gaps: BTreeMap::new(), dropped: 0 }
    }

    /// Records one flow without its remote address: external peers are named
    /// by FQDN or left unknown.
    pub fn add(
        &mut self,
        class: &FlowClass,
        client: Option<&Workload>,
        server: Option<&Workload>,
        bytes: u64,
        now_unix_nano: u64,
    ) {
        self.record(class, client, server, None, bytes, now_unix_nano);
    }

    /// Records one flow, naming an external peer by the flow's remote address.
    pub fn add_observed(
        &mut self,
        flow: &ObservedFlow,
        class: &FlowClass,
        client: Option<&Workload>,
        server: Option<&Workload>,
        bytes: u64,
        now_unix_nano: u64,
    ) {
        self.record(class, client, server, Some(flow.remote_ip), bytes, now_unix_nano);
    }

    fn record(
        &mut self,
        class: &FlowClass,
        client: Option<&Workload>,
        server: Option<&Workload>,
        remote_ip: Option<IpAddr>,
        bytes: u64,
        now: u64,
    ) {
        let client = client.cloned().or_else(|| as_workload(class.client_pod.as_ref()));
        let server = server.cloned().or_else(|| as_workload(class.server_pod.as_ref()));
        // The remote address is the server's when the local end is the client.
        let (client_ip, server_ip) = if class.local_is_client { (None, remote_ip) } else { (remote_ip, None) };
        let to = self.server_desc(class, server.as_ref(), server_ip);
        // A client's FQDN would be its own lookup, not its name.
        let from = client.clone().map_or_else(|| self.external_desc(None, client_ip), PeerDesc::Workload);
        let flow = Flow { port: class.server_port, protocol: class.protocol, bytes, now };
        if let Some(client) = &client {
            let egress = Direction::Egress;
            match &class.egress {
                Class::NotIsolated => {
                    self.bump(GapKind::UnprotectedPod, client, egress, PeerDesc::Any, &flow, &[], Some(&to));
                    self.bump(GapKind::UncoveredEgress, client, egress, to.clone(), &flow, &[], None);
                }
                Class::AllowedBroad(rules) => {
                    let policies: Vec<ObjectId> =
                        rules.iter().map(|r| (r.namespace.clone(), r.policy.clone())).collect();
                    self.bump(GapKind::UncoveredEgress, client, egress, to.clone(), &flow, &policies, None);
                }
                Class::EnforcementGap { selecting } => {
                    self.bump(GapKind::EnforcementGap, client, egress, to.clone(), &flow, selecting, None);
                }
                Class::NotApplicable | Class::AllowedSpecific(_) => {}
            }
        }
        // Without the server's workload, a service's backends stand for themselves.
        let servers: Vec<(Workload, &Class)> = match server {
            Some(server) => vec![(server, &class.ingress)],
            None => class.backends.iter().filter_map(|b| Some((as_workload(b.pod.as_ref())?, &b.ingress))).collect(),
        };
        for (server, ingress) in &servers {
            let direction = Direction::Ingress;
            match ingress {
                Class::NotIsolated => {
                    self.bump(GapKind::UnprotectedPod, server, direction, PeerDesc::Any, &flow, &[], Some(&from));
                }
                Class::EnforcementGap { selecting } => {
                    self.bump(GapKind::EnforcementGap, server, direction, from.clone(), &flow, selecting, None);
                }
                _ => {}
            }
        }
    }

    fn server_desc(&self, class: &FlowClass, server: Option<&Workload>, ip: Option<IpAddr>) -> PeerDesc {
        if let Some(w) = server {
            return PeerDesc::Workload(w.clone());
        }
        if let Some(service) = &class.service {
            return PeerDesc::Service(service.clone());
        }
        self.external_desc(class.fqdn.as_deref(), ip)
    }

    fn external_desc(&self, fqdn: Option<&str>, ip: Option<IpAddr>) -> PeerDesc {
        if let Some(name) = fqdn.map(normalize_fqdn).filter(|n| !n.is_empty()) {
            return PeerDesc::Fqdn(name);
        }
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else { return PeerDesc::External };
        let (network, prefix) = match ip {
            IpAddr::V4(v4) => {
                let prefix = self.config.external_v4_prefix.min(32);
                let mask = u32::MAX.checked_shl(u32::from(32 - prefix)).unwrap_or(0);
                (IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)), prefix)
            }
            IpAddr::V6(v6) => {
                let prefix = self.config.external_v6_prefix.min(128);
                let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
                (IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), prefix)
            }
        };
        PeerDesc::Cidr { network, prefix }
    }

    #[allow(clippy::too_many_arguments)]
    fn bump(
        &mut self,
        kind: GapKind,
        workload: &Workload,
        direction: Direction,
        peer: PeerDesc,
        flow: &Flow,
        policies: &[ObjectId],
        listed_peer: Option<&PeerDesc>,
    ) {
        let (port, protocol) = if kind == GapKind::UnprotectedPod { (0, 0) } else { (flow.port, flow.protocol) };
        // `kind|namespace/kind/name|direction|peer|port/protocol`.
        let (w, p, proto) = (workload_key(workload), peer.canonical(), protocol_name(protocol));
        let key = format!("{}|{w}|{direction}|{p}|{port}/{proto}", kind.as_str());
        if !self.gaps.contains_key(&key) && self.gaps.len() >= self.config.max_entries {
            self.dropped += 1;
            return;
        }
        let gap = self.gaps.entry(key).or_insert_with_key(|key| Gap {
            id: stable_id(key),
            kind,
            workload: workload.clone(),
            direction,
            peer,
            port,
            protocol,
            flows: 0,
            bytes: 0,
            first_seen: flow.now,
            last_seen: flow.now,
            policies: Vec::new(),
            peers: Vec::new(),
            peers_dropped: 0,
        });
        gap.flows += 1;
        gap.bytes = gap.bytes.saturating_add(flow.bytes);
        gap.first_seen = gap.first_seen.min(flow.now);
        gap.last_seen = gap.last_seen.max(flow.now);
        if !policies.is_empty() {
            gap.policies.extend(policies.iter().cloned());
            gap.policies.sort();
            gap.policies.dedup();
        }
        if let Some(peer) = listed_peer {
            add_peer(gap, peer, flow, self.config.max_peers);
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &Gap> {
        self.gaps.values()
    }

    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty()
    }

    /// Flows that would have started a finding when the aggregator was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Forgets findings last seen before `older_than_unix_nano`; returns how many.
    pub fn expire(&mut self, older_than_unix_nano: u64) -> usize {
        let before = self.gaps.len();
        self.gaps.retain(|_, gap| gap.last_seen >= older_than_unix_nano);
        before - self.gaps.len()
    }
}

struct Flow {
    port: u16,
    protocol: u8,
    bytes: u64,
    now: u64,
}

fn add_peer(gap: &mut Gap, peer: &PeerDesc, flow: &Flow, max_peers: usize) {
    let found = gap.peers.iter_mut().find(|p| p.peer == *peer && p.port == flow.port && p.protocol == flow.protocol);
    if let Some(stat) = found {
        stat.flows += 1;
        stat.bytes = stat.bytes.saturating_add(flow.bytes);
    } else {
        let stat =
            PeerStat { peer: peer.clone(), port: flow.port, protocol: flow.protocol, flows: 1, bytes: flow.bytes };
        if gap.peers.len() < max_peers {
            gap.peers.push(stat);
        } else {
            // Sorted below, so the last one has the fewest bytes.
            match gap.peers.last_mut() {
                Some(last) if last.bytes < flow.bytes => {
                    gap.peers_dropped += last.flows;
                    *last = stat;
                }
                _ => gap.peers_dropped += 1,
            }
        }
    }
    gap.peers.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.peer.cmp(&b.peer)).then(a.port.cmp(&b.port)));
}

fn as_workload(pod: Option<&ObjectId>) -> Option<Workload> {
    pod.map(|(namespace, name)| Workload { namespace: namespace.clone(), kind: "Pod".to_owned(), name: name.clone() })
}

fn workload_key(w: &Workload) -> String {
    format!("{}/{}/{}", w.namespace, w.kind, w.name)
}

/// Lowercase, without the root's trailing dot.
pub fn normalize_fqdn(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        IPPROTO_SCTP => "sctp".to_owned(),
        other => other.to_string(),
    }
}

/// 64-bit FNV-1a of `key`, as 16 hex digits.
pub fn stable_id(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

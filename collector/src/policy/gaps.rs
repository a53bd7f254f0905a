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
//! - Each record counts only for the side it speaks for ([`Side`]): the
//!   client's egress from the client's record, the server's ingress from the
//!   server's, so a connection both agents saw is counted once per direction.
//! - A service flow is counted per backend workload at the target port (what
//!   policies are evaluated at, after DNAT), not at the service address: the
//!   server's own record names the same workload and port, so both ends of
//!   one connection land in matching findings. Backends of one workload merge
//!   (worst class wins); a service without backends is named as the service.
//! - A peer is named, best first: by its workload, by the service the flow
//!   went through, by the FQDN the client resolved, by its address (grouped
//!   into a CIDR when [`GapConfig`] says so), else as an unknown external end.
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

pub use super::naming::{normalize_fqdn, pod_workload, protocol_name, stable_id, PeerDesc};
use super::{
    classify::{Class, FlowClass, ObjectId},
    eval::Direction,
    naming::workload_key,
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
    /// The aggregator's change count when this gap last changed.
    pub version: u64,
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
    /// Counts changes, so callers can take only what changed since they last looked.
    version: u64,
}

impl GapAggregator {
    pub fn new(config: GapConfig) -> Self {
        GapAggregator { config, gaps: BTreeMap::new(), dropped: 0, version: 0 }
    }

    /// Records one flow record: the sides it speaks for, each end named by
    /// `workload_of` (a pod without one stands for itself).
    pub fn add(&mut self, report: &Report<'_>, workload_of: &dyn Fn(&ObjectId) -> Option<Workload>) {
        let class = report.class;
        let named = |pod: Option<&ObjectId>| pod.map(|p| workload_of(p).unwrap_or_else(|| pod_workload(p)));
        let client = named(class.client_pod.as_ref());
        // The remote address is the server's when the local end is the client.
        let (client_ip, server_ip) =
            if class.local_is_client { (None, report.remote_ip) } else { (report.remote_ip, None) };
        // A client's FQDN would be its own lookup, not its name.
        let from = client.clone().map_or_else(|| self.external_desc(None, client_ip), PeerDesc::Workload);
        let ends = self.server_ends(class, &named, server_ip);
        let flow = |port| Flow { port, protocol: class.protocol, bytes: report.bytes, now: report.now };
        if let (Some(client), true) = (&client, report.side.client()) {
            let egress = Direction::Egress;
            let unprotected: Vec<&ServerEnd> = ends.iter().filter(|e| e.egress == Class::NotIsolated).collect();
            if let Some(first) = unprotected.first() {
                // one flow record, however many of its backends are open
                let key = self.bump(GapKind::UnprotectedPod, client, egress, PeerDesc::Any, &flow(first.port), &[]);
                for (key, end) in key.iter().flat_map(|k| unprotected.iter().map(move |e| (k, e))) {
                    self.add_listed_peer(key, &end.peer, &flow(end.port));
                }
            }
            for end in &ends {
                let to = end.peer.clone();
                match &end.egress {
                    Class::NotIsolated => {
                        self.bump(GapKind::UncoveredEgress, client, egress, to, &flow(end.port), &[]);
                    }
                    Class::AllowedBroad(rules) => {
                        let policies: Vec<ObjectId> =
                            rules.iter().map(|r| (r.namespace.clone(), r.policy.clone())).collect();
                        self.bump(GapKind::UncoveredEgress, client, egress, to, &flow(end.port), &policies);
                    }
                    Class::EnforcementGap { selecting } => {
                        self.bump(GapKind::EnforcementGap, client, egress, to, &flow(end.port), selecting);
                    }
                    Class::NotApplicable | Class::Exempt(_) | Class::AllowedSpecific(_) => {}
                }
            }
        }
        if !report.side.server() {
            return;
        }
        for end in &ends {
            let Some(server) = &end.workload else { continue };
            let ingress = Direction::Ingress;
            match &end.ingress {
                Class::NotIsolated => {
                    let f = flow(end.port);
                    if let Some(key) = self.bump(GapKind::UnprotectedPod, server, ingress, PeerDesc::Any, &f, &[]) {
                        self.add_listed_peer(&key, &from, &f);
                    }
                }
                Class::EnforcementGap { selecting } => {
                    self.bump(GapKind::EnforcementGap, server, ingress, from.clone(), &flow(end.port), selecting);
                }
                _ => {}
            }
        }
    }

    /// The server ends of a flow: the server itself, or a service's backends
    /// merged by workload and target port (the worst class of each wins).
    fn server_ends(
        &self,
        class: &FlowClass,
        named: &dyn Fn(Option<&ObjectId>) -> Option<Workload>,
        server_ip: Option<IpAddr>,
    ) -> Vec<ServerEnd> {
        if class.backends.is_empty() {
            let workload = named(class.server_pod.as_ref());
            return vec![ServerEnd {
                peer: self.server_desc(class, workload.as_ref(), server_ip),
                workload,
                port: class.server_port,
                egress: class.egress.clone(),
                ingress: class.ingress.clone(),
            }];
        }
        let mut ends: Vec<ServerEnd> = Vec::new();
        for b in &class.backends {
            let workload = named(b.pod.as_ref());
            let peer = workload.clone().map_or_else(|| self.external_desc(None, Some(b.ip)), PeerDesc::Workload);
            match ends.iter_mut().find(|e| e.peer == peer && e.port == b.port) {
                Some(e) => {
                    e.egress = std::mem::replace(&mut e.egress, Class::NotApplicable).worst(b.egress.clone());
                    e.ingress = std::mem::replace(&mut e.ingress, Class::NotApplicable).worst(b.ingress.clone());
                }
                None => ends.push(ServerEnd {
                    peer,
                    workload,
                    port: b.port,
                    egress: b.egress.clone(),
                    ingress: b.ingress.clone(),
                }),
            }
        }
        ends
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

    /// Counts a flow into the gap of this key; its key, or None when the
    /// aggregator was full.
    fn bump(
        &mut self,
        kind: GapKind,
        workload: &Workload,
        direction: Direction,
        peer: PeerDesc,
        flow: &Flow,
        policies: &[ObjectId],
    ) -> Option<String> {
        let (port, protocol) = if kind == GapKind::UnprotectedPod { (0, 0) } else { (flow.port, flow.protocol) };
        // `kind|namespace/kind/name|direction|peer|port/protocol`.
        let (w, p, proto) = (workload_key(workload), peer.canonical(), protocol_name(protocol));
        let key = format!("{}|{w}|{direction}|{p}|{port}/{proto}", kind.as_str());
        if !self.gaps.contains_key(&key) && self.gaps.len() >= self.config.max_entries {
            self.dropped += 1;
            return None;
        }
        self.version += 1;
        let version = self.version;
        let gap = self.gaps.entry(key.clone()).or_insert_with_key(|key| Gap {
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
            version,
        });
        gap.version = version;
        gap.flows += 1;
        gap.bytes = gap.bytes.saturating_add(flow.bytes);
        gap.first_seen = gap.first_seen.min(flow.now);
        gap.last_seen = gap.last_seen.max(flow.now);
        if !policies.is_empty() {
            gap.policies.extend(policies.iter().cloned());
            gap.policies.sort();
            gap.policies.dedup();
        }
        Some(key)
    }

    fn add_listed_peer(&mut self, key: &str, peer: &PeerDesc, flow: &Flow) {
        let max_peers = self.config.max_peers;
        if let Some(gap) = self.gaps.get_mut(key) {
            add_peer(gap, peer, flow, max_peers);
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &Gap> {
        self.gaps.values()
    }

    /// The change count now: gaps with a larger `version` changed after this.
    pub fn version(&self) -> u64 {
        self.version
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

/// Which ends of a flow one record speaks for. Each agent reports its own
/// side of a connection: a client's egress comes from the client's record
/// and a server's ingress from the server's, so a connection seen by both
/// ends is counted once per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
    /// Both ends (a caller with one record per connection).
    Both,
}

impl Side {
    fn client(self) -> bool {
        matches!(self, Side::Client | Side::Both)
    }
    fn server(self) -> bool {
        matches!(self, Side::Server | Side::Both)
    }
}

/// One flow record, classified.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub class: &'a FlowClass,
    /// The record's remote address (names an external peer), when known.
    pub remote_ip: Option<IpAddr>,
    pub side: Side,
    pub bytes: u64,
    pub now: u64,
}

/// A server end of a flow: the server, or one backend workload of a service.
struct ServerEnd {
    peer: PeerDesc,
    workload: Option<Workload>,
    /// The port policies were evaluated at (a backend's target port).
    port: u16,
    egress: Class,
    ingress: Class,
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

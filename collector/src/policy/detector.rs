//! The collector's policy detector: every published flow record is classified
//! against the cluster's NetworkPolicies, aggregated into gap findings, and
//! its external destinations checked against each workload's baseline.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use podlens_proto::{compact::Tables, v1 as pb};

pub use super::state::ClusterState;
use super::{
    baseline::{Baseline, BaselineConfig, BaselineError, ExternalDest, UnexpectedEgress},
    classify::{policy_protocol, Class, Classifier, FlowClass, FlowEnd, ObjectId, ObservedFlow},
    coverage::Coverage,
    emit::{gap_finding, unexpected_finding, PendingFindings, SuggestionInput},
    eval::{Direction, Endpoint},
    gaps::{GapAggregator, GapKind, Report, Side},
    observed::ObservedFlows,
    owners::Workload,
    suggest,
};

/// Gaps and unexpected egress, fed with published records.
pub struct PolicyDetector {
    state: ClusterState,
    gaps: GapAggregator,
    baseline: Baseline,
    baseline_path: Option<PathBuf>,
    unexpected: Vec<UnexpectedEgress>,
    /// Gap ids already reported (later reports are `ongoing`).
    reported: HashSet<String>,
    /// External destinations were checked since the baseline was last taken for saving.
    dirty: bool,
    observed: ObservedFlows,
    coverage: Coverage,
    /// The gaps' change count at the last [`PolicyDetector::findings`].
    emitted: u64,
    /// Gaps and workloads not seen for this long are forgotten (ns).
    retention: u64,
    gaps_expired: u64,
    unknown_pod_addresses: u64,
    node_address_flows: u64,
    host_network_records: u64,
    unreadable_records: u64,
}

/// Counters of the detector's bounds, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStats {
    pub gaps: usize,
    /// Flows that would have started a gap when the aggregator was full.
    pub gaps_dropped: u64,
    /// Gaps forgotten after the retention without traffic.
    pub gaps_expired: u64,
    pub observed_workloads: usize,
    /// Flows, pods or workloads the suggestion memory had no room for.
    pub observed_dropped: u64,
    /// Flow ends the coverage report had no room for.
    pub coverage_dropped: u64,
    pub baseline_workloads: usize,
    /// Workloads and destinations the egress baseline had no room for.
    pub baseline_dropped: u64,
    /// Flow records whose other end is an address in a node's pod network
    /// that no pod of the view had (a pod newer than the view, or a node's
    /// bridge or router address): not judged, learned or alerted.
    pub unknown_pod_addresses: u64,
    /// Flows to a node's own address (kubelet, host-network pods, API servers
    /// on control-plane nodes): neither learned nor alerted as external egress.
    pub node_address_flows: u64,
    /// Flow records of host-network pods, left out: NetworkPolicies do not
    /// select them in most CNIs, and their address is the node's.
    pub host_network_records: u64,
    /// Flow records left out because an address did not parse.
    pub unreadable_records: u64,
}

/// How long a gap without traffic stays a finding by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl PolicyDetector {
    /// `baseline_path`: where the unexpected-egress baseline survives restarts.
    pub fn new(state: ClusterState, baseline_path: Option<&Path>) -> Result<Self, BaselineError> {
        let baseline = match baseline_path {
            Some(p) => Baseline::load(p)?,
            None => Baseline::default(),
        };
        Ok(Self {
            state,
            gaps: GapAggregator::default(),
            baseline,
            baseline_path: baseline_path.map(Path::to_path_buf),
            unexpected: Vec::new(),
            reported: HashSet::new(),
            dirty: false,
            observed: ObservedFlows::default(),
            coverage: Coverage::default(),
            emitted: 0,
            retention: nanos(DEFAULT_RETENTION),
            gaps_expired: 0,
            unknown_pod_addresses: 0,
            node_address_flows: 0,
            host_network_records: 0,
            unreadable_records: 0,
        })
    }

    /// How long each workload's external destinations are learned before new
    /// ones become unexpected-egress findings (default 24 h).
    pub fn with_learning(mut self, learning: Duration) -> Self {
        let config = BaselineConfig { learning_nanos: nanos(learning), ..BaselineConfig::default() };
        self.baseline = std::mem::take(&mut self.baseline).with_config(config);
        self
    }

    /// How long a gap, and what a workload was seen doing, outlive their last
    /// flow (default [`DEFAULT_RETENTION`]).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = nanos(retention);
        self
    }

    /// Coverage per namespace of the traffic seen so far.
    pub fn report(&self, namespaces: &[String]) -> pb::PolicyReportResponse {
        pb::PolicyReportResponse {
            enabled: true,
            namespaces: self.coverage.report(namespaces),
            manifest_errors: self.state.errors.clone(),
        }
    }

    pub fn stats(&self) -> PolicyStats {
        PolicyStats {
            gaps: self.gaps.len(),
            gaps_dropped: self.gaps.dropped(),
            gaps_expired: self.gaps_expired,
            observed_workloads: self.observed.len(),
            observed_dropped: self.observed.dropped,
            coverage_dropped: self.coverage.dropped,
            baseline_workloads: self.baseline.workload_count(),
            baseline_dropped: self.baseline.dropped_workloads() + self.baseline.dropped_destinations(),
            unknown_pod_addresses: self.unknown_pod_addresses,
            node_address_flows: self.node_address_flows,
            host_network_records: self.host_network_records,
            unreadable_records: self.unreadable_records,
        }
    }

    /// A reloaded cluster view; the findings so far are kept.
    pub fn set_state(&mut self, state: ClusterState) {
        self.state = state;
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Classifies the flow records of one published batch. Each record
    /// counts for its own side of the connection ([`Side`]).
    pub fn observe(&mut self, records: &[pb::Record], tables: &Tables<'_>, now: u64) {
        let classifier = Classifier::new(&self.state.view, &self.state.services);
        for r in records {
            let Some(pb::record::Kind::Flow(f)) = &r.kind else { continue };
            let addresses = (ip(&f.local_ip), f.remote.as_ref().and_then(|r| Some((ip(&r.ip)?, r))));
            let (Some(local_ip), Some((remote_ip, remote))) = addresses else {
                self.unreadable_records += 1;
                continue;
            };
            let local = match tables.local(f).and_then(|w| w.kind.as_ref()) {
                Some(pb::workload::Kind::Pod(p)) => FlowEnd {
                    namespace: (!p.namespace.is_empty()).then(|| p.namespace.clone()),
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                    uid: (!p.uid.is_empty()).then(|| p.uid.clone()),
                },
                // host processes are not subject to NetworkPolicies
                _ => continue,
            };
            let obs = ObservedFlow {
                local,
                local_ip,
                local_port: f.local_port as u16,
                remote_ip,
                remote_port: remote.port as u16,
                protocol: f.protocol as u8,
                local_is_client: match f.initiator() {
                    pb::Initiator::Local => Some(true),
                    pb::Initiator::Remote => Some(false),
                    pb::Initiator::Unknown => None,
                },
                fqdn: (!remote.fqdn.is_empty()).then(|| remote.fqdn.clone()),
            };
            if matches!(classifier.local_endpoint(&obs), Endpoint::Pod(p) if p.host_network()) {
                self.host_network_records += 1;
                continue;
            }
            let class = classifier.classify(&obs);
            let side = if class.local_is_client { Side::Client } else { Side::Server };
            let remote_pod = if side == Side::Client { &class.server_pod } else { &class.client_pod };
            if remote_pod.is_none() && class.service.is_none() && self.state.in_pod_network(remote_ip) {
                // a pod newer than the view, or a node's bridge or router address
                // (probes on some CNIs): who it is is unknown, so it is not judged
                self.unknown_pod_addresses += 1;
                continue;
            }
            let bytes = f.egress.as_ref().map_or(0, |c| c.bytes) + f.ingress.as_ref().map_or(0, |c| c.bytes);
            let state = &self.state;
            let report = Report { class: &class, remote_ip: Some(remote_ip), side, bytes, now };
            self.gaps.add(&report, &|p| state.workload(p));
            remember(state, &mut self.observed, &obs, &class, side, now);
            let (end, direction_class) = match side {
                Side::Server => (class.server_pod.as_ref(), &class.ingress),
                _ => (class.client_pod.as_ref(), &class.egress),
            };
            if let Some(w) = end.and_then(|p| state.workload(p)) {
                self.coverage.add(&w, side == Side::Server, direction_class, now);
            }
            let mut external =
                class.ingress == Class::NotApplicable && class.service.is_none() && class.server_pod.is_none();
            if external && side == Side::Client && state.is_node_address(remote_ip) {
                self.node_address_flows += 1;
                external = false;
            }
            let client = class.client_pod.as_ref().and_then(|p| state.workload(p));
            if let (true, Some(w), Side::Client, true) = (external, &client, side, class.egress != Class::NotApplicable)
            {
                let dest = ExternalDest::new(remote_ip, class.fqdn.as_deref(), class.server_port);
                // only a destination not known yet changes what must be written
                self.dirty |= !self.baseline.knows(w, &dest);
                if let Some(u) = self.baseline.observe(w, &dest, now) {
                    self.unexpected.push(u);
                }
            }
        }
    }

    /// What `w`'s suggested policy is built from.
    fn suggestion(&self, w: &Workload) -> Option<SuggestionInput> {
        let o = self.observed.get(w)?;
        Some(SuggestionInput::Policy(suggest::Workload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            pod_labels: o.labels.values().cloned().collect(),
            flows: o.flows.iter().cloned().collect(),
            resolved_names: false,
        }))
    }

    /// For traffic a policy selecting `w` denies: that policy and the flows
    /// to add to it.
    fn change(&self, w: &Workload, direction: Direction) -> Option<SuggestionInput> {
        let o = self.observed.get(w)?;
        let denied: Vec<&suggest::Flow> = o.denied.keys().filter(|f| f.direction == direction).collect();
        let first = denied.first().and_then(|f| o.denied.get(*f)).and_then(|s| s.first())?;
        let existing = self.state.policies.iter().find(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == first.0
                && p.metadata.name.as_deref() == Some(&first.1)
        })?;
        Some(SuggestionInput::Change(Box::new(existing.clone()), denied.into_iter().cloned().collect()))
    }

    /// The baseline and where to write it, when it changed since the last
    /// call: saved outside the lock the ingest path takes.
    pub fn baseline_to_save(&mut self) -> Option<(Baseline, PathBuf)> {
        let path = self.baseline_path.clone()?;
        std::mem::take(&mut self.dirty).then(|| (self.baseline.clone(), path))
    }

    /// The gap findings that changed since the last call (traffic, or a new
    /// suggestion for their workload) plus the unexpected egress seen since;
    /// gaps and workloads idle for the retention are forgotten first.
    /// Render the result after releasing whatever lock guards `self`.
    pub fn findings(&mut self, now: u64) -> PendingFindings {
        self.expire(now);
        let mut out = PendingFindings::default();
        let changed = self.observed.take_changed();
        let mut inputs: BTreeMap<&Workload, Option<usize>> = BTreeMap::new();
        for g in self.gaps.entries() {
            if g.version <= self.emitted && !changed.contains(&g.workload) {
                continue;
            }
            let first = self.reported.insert(g.id.clone());
            let input = match g.kind {
                GapKind::UnprotectedPod | GapKind::UncoveredEgress => {
                    *inputs.entry(&g.workload).or_insert_with(|| self.suggestion(&g.workload).map(|i| out.input(i)))
                }
                GapKind::EnforcementGap => self.change(&g.workload, g.direction).map(|i| out.input(i)),
            };
            out.push(gap_finding(g, first), input);
        }
        self.emitted = self.gaps.version();
        for u in self.unexpected.drain(..) {
            out.push(unexpected_finding(&u, now), None);
        }
        out
    }

    fn expire(&mut self, now: u64) {
        let cutoff = now.saturating_sub(self.retention);
        let expired = self.gaps.expire(cutoff);
        if expired > 0 {
            self.gaps_expired += expired as u64;
            let live: HashSet<&str> = self.gaps.entries().map(|g| g.id.as_str()).collect();
            self.reported.retain(|id| live.contains(id.as_str()));
        }
        self.observed.expire(cutoff);
        self.coverage.expire(cutoff);
    }
}

/// Keeps what the suggested policy of the record's own end needs: a client's
/// egress to each server end (a service's backends at their target ports),
/// or a server's ingress from its client.
fn remember(
    state: &ClusterState,
    observed: &mut ObservedFlows,
    obs: &ObservedFlow,
    class: &FlowClass,
    side: Side,
    now: u64,
) {
    let Some(protocol) = policy_protocol(class.protocol) else { return };
    let pod_peer =
        |pod: &ObjectId| state.labels(pod).map(|labels| suggest::Peer::Pod { namespace: pod.0.clone(), labels });
    let (own, direction, peers): (_, _, Vec<(Option<suggest::Peer>, u16, &Class)>) = match side {
        Side::Server => {
            let peer = match &class.client_pod {
                Some(p) => pod_peer(p),
                None => Some(suggest::Peer::External { ip: obs.remote_ip, fqdn: None }),
            };
            (&class.server_pod, Direction::Ingress, vec![(peer, class.server_port, &class.ingress)])
        }
        _ if !class.backends.is_empty() => {
            let peers = class
                .backends
                .iter()
                .map(|b| {
                    let peer = match &b.pod {
                        Some(p) => pod_peer(p),
                        None => Some(suggest::Peer::External { ip: b.ip, fqdn: None }),
                    };
                    (peer, b.port, &b.egress)
                })
                .collect();
            (&class.client_pod, Direction::Egress, peers)
        }
        // a service without backends: nothing it could be allowed to
        _ if class.service.is_some() => return,
        _ => {
            let peer = match &class.server_pod {
                Some(p) => pod_peer(p),
                None => Some(suggest::Peer::External { ip: obs.remote_ip, fqdn: class.fqdn.clone() }),
            };
            (&class.client_pod, Direction::Egress, vec![(peer, class.server_port, &class.egress)])
        }
    };
    let Some(pod) = own else { return };
    let Some(w) = state.workload(pod) else { return };
    let labels = state.labels(pod);
    for (peer, port, judged) in peers {
        // traffic exempt from policy (the pod's own node, itself) needs no rule
        let (Some(peer), false) = (peer, matches!(judged, Class::Exempt(_))) else { continue };
        let denied_by = match judged {
            Class::EnforcementGap { selecting } => Some(selecting.as_slice()),
            _ => None,
        };
        let flow = suggest::Flow { direction, peer, port, protocol };
        observed.add(&w, (&pod.1, labels.as_ref()), flow, denied_by, now);
    }
}

#[cfg(test)]
#[path = "detector_tests.rs"]
mod tests;

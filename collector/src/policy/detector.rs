//! The collector's policy detector: every published flow record is classified
//! against the cluster's NetworkPolicies, aggregated into gap findings, and
//! its external destinations checked against each workload's baseline.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Pod;
use podlens_proto::{compact::Tables, v1 as pb};

use super::{
    baseline::{Baseline, BaselineConfig, BaselineError, ExternalDest, UnexpectedEgress},
    classify::{policy_protocol, Class, Classifier, FlowClass, FlowEnd, ObservedFlow},
    coverage::Coverage,
    eval::{ClusterView, Direction},
    gaps::{protocol_name, Gap, GapAggregator, GapKind},
    owners::{OwnerIndex, OwnerObject, Workload},
    selector::Labels,
    services::ServiceIndex,
    suggest,
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
}

impl ClusterState {
    pub fn from_manifests(m: &Manifests) -> Self {
        let (view, policy_errors) = ClusterView::new(&m.pods, &m.namespaces, &m.policies);
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
        }
    }

    fn pod(&self, pod: &(String, String)) -> Option<&Pod> {
        self.by_name.get(pod).and_then(|i| self.pods.get(*i))
    }

    fn labels(&self, pod: &(String, String)) -> Option<Labels> {
        Some(self.pod(pod)?.metadata.labels.clone().unwrap_or_default())
    }

    fn workload(&self, pod: &(String, String)) -> Option<Workload> {
        Some(self.owners.workload_of(self.pod(pod)?))
    }
}

/// Gaps and unexpected egress, fed with published records.
pub struct PolicyDetector {
    state: ClusterState,
    gaps: GapAggregator,
    baseline: Baseline,
    baseline_path: Option<PathBuf>,
    unexpected: Vec<UnexpectedEgress>,
    reported: HashSet<String>,
    /// External destinations were checked since the baseline was last taken for saving.
    dirty: bool,
    /// Per workload, what it was seen doing and its pods' labels: the input of its suggested policy.
    observed: BTreeMap<Workload, Observed>,
    coverage: Coverage,
}

#[derive(Default)]
struct Observed {
    labels: BTreeMap<String, Labels>,
    flows: BTreeSet<suggest::Flow>,
    /// Flows the policies selecting it deny, with those policies (namespace, name).
    denied: BTreeMap<suggest::Flow, Vec<(String, String)>>,
}

/// Bounds of the suggestion memory (workloads, flows and pods per workload).
const MAX_OBSERVED_WORKLOADS: usize = 10_000;
const MAX_OBSERVED_FLOWS: usize = 256;
const MAX_OBSERVED_PODS: usize = 64;

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
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
            observed: BTreeMap::new(),
            coverage: Coverage::default(),
        })
    }

    /// How long each workload's external destinations are learned before new
    /// ones become unexpected-egress findings (default 24 h).
    pub fn with_learning(mut self, learning: std::time::Duration) -> Self {
        let config = BaselineConfig {
            learning_nanos: u64::try_from(learning.as_nanos()).unwrap_or(u64::MAX),
            ..BaselineConfig::default()
        };
        self.baseline = std::mem::take(&mut self.baseline).with_config(config);
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

    /// A reloaded cluster view; the findings so far are kept.
    pub fn set_state(&mut self, state: ClusterState) {
        self.state = state;
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Classifies the flow records of one published batch.
    pub fn observe(&mut self, records: &[pb::Record], tables: &Tables<'_>, now: u64) {
        let classifier = Classifier::new(&self.state.view, &self.state.services, &self.state.pods);
        for r in records {
            let Some(pb::record::Kind::Flow(f)) = &r.kind else { continue };
            let (Some(local_ip), Some(remote)) = (ip(&f.local_ip), f.remote.as_ref()) else { continue };
            let Some(remote_ip) = ip(&remote.ip) else { continue };
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
                // counts of SYN per direction cannot tell SYN from SYN-ACK: decided by ports
                local_is_client: None,
                fqdn: (!remote.fqdn.is_empty()).then(|| remote.fqdn.clone()),
            };
            let class = classifier.classify(&obs);
            let client = class.client_pod.as_ref().and_then(|p| self.state.workload(p));
            let server = class.server_pod.as_ref().and_then(|p| self.state.workload(p));
            let bytes = f.egress.as_ref().map_or(0, |c| c.bytes) + f.ingress.as_ref().map_or(0, |c| c.bytes);
            self.gaps.add_observed(&obs, &class, client.as_ref(), server.as_ref(), bytes, now);
            remember(&self.state, &mut self.observed, &obs, &class, client.as_ref(), server.as_ref());
            if let Some(w) = &client {
                self.coverage.add(w, false, &class.egress);
            }
            if let Some(w) = &server {
                self.coverage.add(w, true, &class.ingress);
            }
            let external =
                class.ingress == Class::NotApplicable && class.service.is_none() && class.server_pod.is_none();
            if let (true, Some(w), true) = (external, &client, class.egress != Class::NotApplicable) {
                let server_ip = if class.local_is_client { remote_ip } else { local_ip };
                let dest = ExternalDest::new(server_ip, class.fqdn.as_deref(), class.server_port);
                // only a destination not known yet changes what must be written
                self.dirty |= !self.baseline.knows(w, &dest);
                if let Some(u) = self.baseline.observe(w, &dest, now) {
                    self.unexpected.push(u);
                }
            }
        }
    }

    /// A minimal NetworkPolicy (YAML) allowing exactly what `w` was seen doing.
    fn suggestion(&self, w: &Workload) -> String {
        let Some(o) = self.observed.get(w) else { return String::new() };
        let input = suggest::Workload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            pod_labels: o.labels.values().cloned().collect(),
            flows: o.flows.iter().cloned().collect(),
            resolved_names: false,
        };
        suggest::suggest(&input).map(|s| s.yaml).unwrap_or_default()
    }

    /// For traffic a policy selecting `w` denies: that policy with the fewest
    /// rules added to allow what was observed (YAML).
    fn change(&self, w: &Workload, direction: Direction) -> String {
        let Some(o) = self.observed.get(w) else { return String::new() };
        let denied: Vec<&suggest::Flow> = o.denied.keys().filter(|f| f.direction == direction).collect();
        let Some(first) = denied.first().and_then(|f| o.denied.get(*f)).and_then(|s| s.first()) else {
            return String::new();
        };
        let Some(existing) = self.state.policies.iter().find(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == first.0
                && p.metadata.name.as_deref() == Some(&first.1)
        }) else {
            return String::new();
        };
        let flows: Vec<suggest::Flow> = denied.into_iter().cloned().collect();
        let changed = suggest::minimal_change(existing, &flows);
        suggest::to_yaml(&changed, &flows).unwrap_or_default()
    }

    /// The baseline and where to write it, when it changed since the last
    /// call: saved outside the lock the ingest path takes.
    pub fn baseline_to_save(&mut self) -> Option<(Baseline, PathBuf)> {
        let path = self.baseline_path.clone()?;
        std::mem::take(&mut self.dirty).then(|| (self.baseline.clone(), path))
    }

    /// The current gap findings plus the unexpected egress seen since the last call.
    pub fn findings(&mut self, now: u64) -> Vec<pb::Finding> {
        let mut out: Vec<pb::Finding> = Vec::new();
        let mut suggestions: BTreeMap<&Workload, String> = BTreeMap::new();
        for g in self.gaps.entries() {
            let first = self.reported.insert(g.id.clone());
            let mut f = gap_finding(g, first);
            let yaml = match g.kind {
                GapKind::UnprotectedPod | GapKind::UncoveredEgress => {
                    suggestions.entry(&g.workload).or_insert_with(|| self.suggestion(&g.workload)).clone()
                }
                GapKind::EnforcementGap => self.change(&g.workload, g.direction),
            };
            if let Some(pb::finding::Detail::PolicyGap(p)) = &mut f.detail {
                p.suggestion = yaml;
            }
            out.push(f);
        }
        for u in self.unexpected.drain(..) {
            let (peer, port) = match &u.dest {
                ExternalDest::Ip { ip, port } => (ip.to_string(), *port),
                ExternalDest::Fqdn { name, port } => (name.clone(), *port),
            };
            let w = &u.workload;
            out.push(pb::Finding {
                id: format!(
                    "policy-unexpected-{}",
                    super::gaps::stable_id(&format!("{}/{}/{}|{peer}|{port}", w.namespace, w.kind, w.name))
                ),
                kind: pb::FindingKind::UnexpectedEgress as i32,
                state: pb::FindingState::Open as i32,
                start_unix_nano: u.seen,
                end_unix_nano: now.max(u.seen),
                summary: format!("{}/{} {} sent to {peer}:{port} for the first time", w.namespace, w.kind, w.name),
                detail: Some(pb::finding::Detail::PolicyGap(pb::PolicyGap {
                    workload: Some(workload_ref(w)),
                    direction: "egress".into(),
                    peer,
                    port: u32::from(port),
                    ..Default::default()
                })),
            });
        }
        out
    }
}

/// Keeps what a suggested policy for the client's and the server's workload needs.
fn remember(
    state: &ClusterState,
    observed: &mut BTreeMap<Workload, Observed>,
    obs: &ObservedFlow,
    class: &FlowClass,
    client: Option<&Workload>,
    server: Option<&Workload>,
) {
    let Some(protocol) = policy_protocol(class.protocol) else { return };
    let (client_ip, server_ip) =
        if class.local_is_client { (obs.local_ip, obs.remote_ip) } else { (obs.remote_ip, obs.local_ip) };
    let peer_of = |pod: &Option<(String, String)>, ip: IpAddr, fqdn: Option<String>| match pod {
        Some(p) => state.labels(p).map(|labels| suggest::Peer::Pod { namespace: p.0.clone(), labels }),
        None => Some(suggest::Peer::External { ip, fqdn }),
    };
    let to_server = peer_of(&class.server_pod, server_ip, class.fqdn.clone());
    let to_client = peer_of(&class.client_pod, client_ip, None);
    for (w, pod, direction, peer, side) in [
        (client, &class.client_pod, Direction::Egress, to_server, &class.egress),
        (server, &class.server_pod, Direction::Ingress, to_client, &class.ingress),
    ] {
        let (Some(w), Some(pod), Some(peer)) = (w, pod, peer) else { continue };
        if !observed.contains_key(w) && observed.len() >= MAX_OBSERVED_WORKLOADS {
            continue;
        }
        let o = observed.entry(w.clone()).or_default();
        if o.labels.len() < MAX_OBSERVED_PODS {
            if let Some(l) = state.labels(pod) {
                o.labels.insert(pod.1.clone(), l);
            }
        }
        let flow = suggest::Flow { direction, peer, port: class.server_port, protocol };
        if let (Class::EnforcementGap { selecting }, true) = (side, o.denied.len() < MAX_OBSERVED_FLOWS) {
            o.denied.insert(flow.clone(), selecting.clone());
        }
        if o.flows.len() < MAX_OBSERVED_FLOWS {
            o.flows.insert(flow);
        }
    }
}

#[cfg(test)]
#[path = "detector_tests.rs"]
mod tests;

fn workload_ref(w: &Workload) -> pb::WorkloadRef {
    pb::WorkloadRef { namespace: w.namespace.clone(), kind: w.kind.clone(), name: w.name.clone() }
}

fn gap_finding(g: &Gap, first: bool) -> pb::Finding {
    let kind = match g.kind {
        GapKind::UnprotectedPod => pb::FindingKind::UnprotectedPod,
        GapKind::UncoveredEgress => pb::FindingKind::UncoveredEgress,
        GapKind::EnforcementGap => pb::FindingKind::EnforcementGap,
    };
    let w = &g.workload;
    let peer = g.peer.canonical();
    let summary = match g.kind {
        GapKind::UnprotectedPod => {
            format!("{}/{} {}: no policy selects it for {}", w.namespace, w.kind, w.name, g.direction)
        }
        GapKind::UncoveredEgress => format!(
            "{}/{} {} -> {peer} {}/{}: {}",
            w.namespace,
            w.kind,
            w.name,
            g.port,
            protocol_name(g.protocol),
            if g.policies.is_empty() {
                "no egress policy".to_string()
            } else {
                "only a broad rule allows it".to_string()
            }
        ),
        GapKind::EnforcementGap => format!(
            "{}/{} {} {} {peer} {}/{} observed although denied",
            w.namespace,
            w.kind,
            w.name,
            g.direction,
            g.port,
            protocol_name(g.protocol)
        ),
    };
    pb::Finding {
        id: format!("policy-{}", g.id),
        kind: kind as i32,
        state: if first { pb::FindingState::Open } else { pb::FindingState::Ongoing } as i32,
        start_unix_nano: g.first_seen,
        end_unix_nano: g.last_seen,
        summary,
        detail: Some(pb::finding::Detail::PolicyGap(pb::PolicyGap {
            workload: Some(workload_ref(w)),
            direction: g.direction.to_string(),
            peer,
            port: u32::from(g.port),
            protocol: if g.protocol == 0 { String::new() } else { protocol_name(g.protocol).to_ascii_uppercase() },
            flows: g.flows,
            bytes: g.bytes,
            policies: g.policies.iter().map(|(ns, p)| format!("{ns}/{p}")).collect(),
            suggestion: String::new(),
            peers: g
                .peers
                .iter()
                .map(|p| {
                    format!("{} {}/{}", p.peer.canonical(), p.port, protocol_name(p.protocol).to_ascii_uppercase())
                })
                .collect(),
        })),
    }
}

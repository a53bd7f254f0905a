//! Policy gaps and unexpected egress as findings. Suggestions are rendered
//! after the detector's lock is released: [`PendingFindings`] carries the
//! findings and what each one's suggested YAML is built from.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use podlens_proto::v1 as pb;

use super::{
    baseline::{ExternalDest, UnexpectedEgress},
    gaps::{protocol_name, stable_id, Gap, GapKind},
    owners::Workload,
    suggest,
};

/// What a suggestion is built from.
#[derive(Debug, Clone)]
pub enum SuggestionInput {
    /// A new policy allowing exactly what the workload was seen doing.
    Policy(suggest::Workload),
    /// The existing denying policy, changed to allow these flows.
    Change(Box<NetworkPolicy>, Vec<suggest::Flow>),
}

impl SuggestionInput {
    /// The YAML; empty (and logged) when it cannot be built, so the finding
    /// still goes out.
    fn render(&self) -> String {
        let result = match self {
            SuggestionInput::Policy(w) => suggest::suggest(w).map(|s| s.yaml).map_err(|e| e.to_string()),
            SuggestionInput::Change(existing, flows) => {
                suggest::to_yaml(&suggest::minimal_change(existing, flows), flows).map_err(|e| e.to_string())
            }
        };
        result.unwrap_or_else(|error| {
            tracing::warn!(%error, "no suggested policy for a finding");
            String::new()
        })
    }
}

/// Findings whose suggestions are not rendered yet.
#[derive(Debug, Default)]
pub struct PendingFindings {
    pub findings: Vec<pb::Finding>,
    inputs: Vec<SuggestionInput>,
    /// (finding index, input index).
    work: Vec<(usize, usize)>,
}

impl PendingFindings {
    /// Adds `finding`; `input` (an index from [`PendingFindings::input`]) is
    /// what its suggestion is built from.
    pub fn push(&mut self, finding: pb::Finding, input: Option<usize>) {
        if let Some(i) = input {
            self.work.push((self.findings.len(), i));
        }
        self.findings.push(finding);
    }

    /// Registers an input; findings sharing it share one rendering.
    pub fn input(&mut self, input: SuggestionInput) -> usize {
        self.inputs.push(input);
        self.inputs.len() - 1
    }

    pub fn len(&self) -> usize {
        self.findings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    /// Renders every suggestion (YAML): the expensive part, done unlocked.
    pub fn render(mut self) -> Vec<pb::Finding> {
        let yaml: Vec<String> = self.inputs.iter().map(SuggestionInput::render).collect();
        for (finding, input) in self.work {
            let (Some(f), Some(y)) = (self.findings.get_mut(finding), yaml.get(input)) else { continue };
            if let Some(pb::finding::Detail::PolicyGap(p)) = &mut f.detail {
                p.suggestion = y.clone();
            }
        }
        self.findings
    }
}

pub fn workload_ref(w: &Workload) -> pb::WorkloadRef {
    pb::WorkloadRef { namespace: w.namespace.clone(), kind: w.kind.clone(), name: w.name.clone() }
}

pub fn unexpected_finding(u: &UnexpectedEgress, now: u64) -> pb::Finding {
    let (peer, port) = match &u.dest {
        ExternalDest::Ip { ip, port } => (ip.to_string(), *port),
        ExternalDest::Fqdn { name, port } => (name.clone(), *port),
    };
    let w = &u.workload;
    pb::Finding {
        id: format!("policy-unexpected-{}", stable_id(&format!("{}/{}/{}|{peer}|{port}", w.namespace, w.kind, w.name))),
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
    }
}

pub fn gap_finding(g: &Gap, first: bool) -> pb::Finding {
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

//! NetworkPolicy objects compiled for evaluation: each rule's peers and
//! ports, checked once.
//!
//! Anything the apiserver's validation would reject is reported once here and
//! then admits nothing, so a broken rule can only narrow what is allowed,
//! never widen it (a bad entry does not turn a port list into "all ports").

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{
    eval::{ClusterView, Direction, Endpoint, Protocol},
    selector::{AddressBlock, CidrError, Labels, PortError, PortMatch, Selector, SelectorError},
};

/// What is wrong with a policy field. The apiserver rejects all of these, so
/// they come from offline manifests or clusters with validation bypassed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("a peer needs exactly one of ipBlock or podSelector/namespaceSelector")]
    Peer,
    #[error("unknown policy type {0:?} (expected Ingress or Egress)")]
    PolicyType(String),
}

/// A field that could not be used; what it would have selected or allowed is
/// taken to be nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("networkpolicy {namespace}/{policy}{}: {field}: {problem}", rule_label(.rule))]
pub struct PolicyError {
    pub namespace: String,
    pub policy: String,
    /// None for fields outside the rules (`podSelector`, `policyTypes`).
    pub rule: Option<(Direction, usize)>,
    /// Path of the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub problem: Problem,
}

fn rule_label(rule: &Option<(Direction, usize)>) -> String {
    rule.map(|(d, i)| format!(" {d} rule {i}")).unwrap_or_default()
}

/// Collects problems found while compiling one policy.
pub(crate) struct Report<'a> {
    pub namespace: &'a str,
    pub policy: &'a str,
    /// Set while a rule is compiled, so every problem names its rule.
    pub rule: Option<(Direction, usize)>,
    pub out: &'a mut Vec<PolicyError>,
}

impl Report<'_> {
    pub fn push(&mut self, field: String, problem: impl Into<Problem>) {
        self.out.push(PolicyError {
            namespace: self.namespace.to_owned(),
            policy: self.policy.to_owned(),
            rule: self.rule,
            field,
            problem: problem.into(),
        });
    }
}

pub(crate) fn compile_selector(sel: &LabelSelector, field: String, report: &mut Report) -> Option<Selector> {
    Selector::compile(sel).map_err(|e| report.push(field, e)).ok()
}

#[derive(Debug, Clone)]
enum Peer {
    Block(AddressBlock),
    /// `namespaces: None` means the policy's own namespace; `pods: None`
    /// means every pod in the selected namespaces.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
}

impl Peer {
    fn compile(p: &NetworkPolicyPeer, field: &str, report: &mut Report) -> Option<Self> {
        let has_selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
        match (&p.ip_block, has_selector) {
            (Some(_), true) | (None, false) => {
                report.push(field.to_owned(), Problem::Peer);
                None
            }
            (Some(block), false) => match AddressBlock::compile(block) {
                Ok(block) => Some(Peer::Block(block)),
                Err((sub, e)) => {
                    report.push(format!("{field}.ipBlock.{sub}"), e);
                    None
                }
            },
            (None, true) => {
                // Outer None: absent; inner None: present but broken.
                let namespaces = p
                    .namespace_selector
                    .as_ref()
                    .map(|s| compile_selector(s, format!("{field}.namespaceSelector"), report));
                let pods = p.pod_selector.as_ref().map(|s| compile_selector(s, format!("{field}.podSelector"), report));
                if matches!(namespaces, Some(None)) || matches!(pods, Some(None)) {
                    return None;
                }
                Some(Peer::Pods { namespaces: namespaces.flatten(), pods: pods.flatten() })
            }
        }
    }

    /// `Some(broad)` when the peer covers `end`.
    fn matches(&self, view: &ClusterView, policy_ns: &str, end: &Endpoint) -> Option<bool> {
        match self {
            Peer::Block(block) => {
                let hit = match end {
                    Endpoint::External(ip) => block.contains(*ip),
                    Endpoint::Pod(pod) => pod.addresses().iter().any(|ip| block.contains(*ip)),
                };
                hit.then_some(block.is_everything())
            }
            Peer::Pods { namespaces, pods } => {
                let Endpoint::Pod(pod) = end else { return None };
                let in_namespace = match namespaces {
                    None => pod.namespace() == policy_ns,
                    Some(sel) => view.namespace_labels(pod.namespace()).is_some_and(|labels| sel.matches(labels)),
                };
                let hit = in_namespace && pods.as_ref().is_none_or(|sel| sel.matches(pod.labels()));
                let broad =
                    namespaces.as_ref().is_some_and(Selector::is_empty) && pods.as_ref().is_none_or(Selector::is_empty);
                hit.then_some(broad)
            }
        }
    }
}

/// One entry of `spec.ingress` or `spec.egress`.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// None: the rule names no peers, so it admits every peer.
    peers: Option<Vec<Peer>>,
    /// None: the rule names no ports, so it admits every port and protocol.
    ports: Option<Vec<PortMatch>>,
}

impl Rule {
    pub fn compile(
        direction: Direction,
        index: usize,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        report: &mut Report,
    ) -> Self {
        report.rule = Some((direction, index));
        let base = format!("spec.{direction}[{index}]");
        let key = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
            let compiled =
                peers.iter().enumerate().filter_map(|(i, p)| Peer::compile(p, &format!("{base}.{key}[{i}]"), report));
            compiled.collect()
        });
        let ports = ports.filter(|p| !p.is_empty()).map(|ports| {
            let compiled = ports.iter().enumerate().filter_map(|(i, p)| {
                PortMatch::compile(p).map_err(|e| report.push(format!("{base}.ports[{i}].{}", e.field()), e)).ok()
            });
            compiled.collect()
        });
        report.rule = None;
        Rule { peers, ports }
    }

    /// `Some(broad)` when the rule admits a connection between `peer` (the
    /// end the policy does not select) and `dest` (the destination, which is
    /// the selected pod for ingress and `peer` itself for egress); `broad` is
    /// true when only broad peers admit it.
    pub fn admits(
        &self,
        view: &ClusterView,
        policy_ns: &str,
        peer: &Endpoint,
        dest: &Endpoint,
        port: u16,
        protocol: Protocol,
    ) -> Option<bool> {
        if let Some(ports) = &self.ports {
            if !ports.iter().any(|p| p.matches(port, protocol, dest)) {
                return None;
            }
        }
        let Some(peers) = &self.peers else { return Some(true) };
        let mut admitted = None;
        for p in peers {
            match p.matches(view, policy_ns, peer) {
                Some(false) => return Some(false),
                Some(true) => admitted = Some(true),
                None => {}
            }
        }
        admitted
    }
}

/// A policy reduced to what evaluation needs.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub name: String,
    selector: Selector,
    /// None when the policy does not cover the direction.
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

impl CompiledPolicy {
    /// Returns the namespace with the policy; None when its podSelector is
    /// unusable, so that it selects nothing.
    pub fn compile(np: &NetworkPolicy, errors: &mut Vec<PolicyError>) -> Option<(String, Self)> {
        let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let name = np.metadata.name.clone().unwrap_or_default();
        let empty = NetworkPolicySpec::default();
        let spec = np.spec.as_ref().unwrap_or(&empty);
        let mut report = Report { namespace: &namespace, policy: &name, rule: None, out: errors };
        let selector = match &spec.pod_selector {
            None => Some(Selector::default()),
            Some(sel) => compile_selector(sel, "spec.podSelector".to_owned(), &mut report),
        };
        // The apiserver's defaulting: Ingress always, Egress when there are
        // egress rules (an empty `egress: []` does not count).
        let (mut covers_ingress, mut covers_egress) = (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()));
        if let Some(types) = spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
            (covers_ingress, covers_egress) = (false, false);
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => covers_ingress = true,
                    "Egress" => covers_egress = true,
                    other => report.push(format!("spec.policyTypes[{i}]"), Problem::PolicyType(other.to_owned())),
                }
            }
        }
        // Rules of an uncovered direction are compiled anyway for their errors.
        let ingress: Vec<Rule> = (spec.ingress.iter().flatten().enumerate())
            .map(|(i, r)| Rule::compile(Direction::Ingress, i, r.from.as_deref(), r.ports.as_deref(), &mut report))
            .collect();
        let egress: Vec<Rule> = (spec.egress.iter().flatten().enumerate())
            .map(|(i, r)| Rule::compile(Direction::Egress, i, r.to.as_deref(), r.ports.as_deref(), &mut report))
            .collect();
        let policy = CompiledPolicy {
            name,
            selector: selector?,
            ingress: covers_ingress.then_some(ingress),
            egress: covers_egress.then_some(egress),
        };
        Some((namespace, policy))
    }

    /// The rules for `direction` when the policy selects a pod with these
    /// labels for it.
    pub fn rules_for(&self, labels: &Labels, direction: Direction) -> Option<&[Rule]> {
        let rules = match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        };
        rules.filter(|_| self.selector.matches(labels))
    }
}

//! NetworkPolicies suggested from observed traffic: for one workload, the
//! smallest policy that allows exactly what was seen; for a policy that
//! already selects it and denies some of that, the rules to append.
//!
//! Choices:
//! - A suggestion lists both policy types, so the workload ends up isolated in
//!   both directions with exactly the observed allowances. A direction with no
//!   observed traffic gets `[]`, which denies all of it: leaving that type out
//!   would leave the direction open rather than "as observed".
//! - Each rule's peers × ports is a subset of the observed (peer, port) pairs:
//!   peers are grouped by their exact port set, so every peer sits in one rule
//!   with all its ports and peers with equal port sets share a rule.
//! - A pod peer stands for its workload: its stable labels in its namespace
//!   (selected by `kubernetes.io/metadata.name`, which the apiserver sets).
//!   Other pods with those labels are taken to be the same workload, except
//!   observed peers of the same namespace with a strict superset of them: a
//!   `NotIn` expression keeps those out, or they would get this peer's ports.
//! - Pod peers without stable labels are left out and reported: selecting
//!   them would take `podSelector: {}`, every pod of their namespace.
//! - External addresses become /32 or /128 blocks, one per address. Names
//!   are YAML comments only, as NetworkPolicy cannot match names.
//! - DNS is the one widening: TCP 53 is allowed with UDP 53 to the observed
//!   resolvers, which answer over TCP when a reply is truncated. No resolver
//!   is guessed when none was observed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
        NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    eval::{Direction, Protocol},
    selector::Labels,
};

const NAME_LABEL: &str = "kubernetes.io/metadata.name";
const DNS_PORT: u16 = 53;
pub const GENERATED_FROM: &str = "podlens.io/generated-from";
pub const NAME_PREFIX: &str = "podlens-suggested-";

/// Labels that differ between pods of one workload or between its rollouts
/// (revision hashes, per-pod names and indexes, per-run Job names and ids),
/// so a selector on them would miss pods the workload will have.
pub const CHURN_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// The labels every pod shares, churn labels removed: what selects the workload.
pub fn stable_labels<'a>(pods: impl IntoIterator<Item = &'a Labels>) -> Labels {
    let mut pods = pods.into_iter();
    let Some(first) = pods.next() else { return Labels::new() };
    let mut common = without_churn(first);
    for labels in pods {
        common.retain(|k, v| labels.get(k) == Some(v));
    }
    common
}

fn without_churn(labels: &Labels) -> Labels {
    let stable = labels.iter().filter(|(k, _)| !CHURN_LABELS.contains(&k.as_str()));
    stable.map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A pod, by its workload's labels; churn labels are ignored.
    Pod { namespace: String, labels: Labels },
    /// Not a pod; `fqdn` is the name it was resolved from, when known.
    External { ip: IpAddr, fqdn: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// Egress: the workload is the client; ingress: it is the server.
    pub direction: Direction,
    pub peer: Peer,
    /// Destination port: the peer's for egress, the workload's for ingress.
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub namespace: String,
    /// Its controller's name; the policy is named after it.
    pub name: String,
    /// The labels of each of its pods.
    pub pod_labels: Vec<Labels>,
    pub flows: Vec<Flow>,
    /// It resolved names: its egress flows to port 53 become the DNS rule.
    pub resolved_names: bool,
}

#[derive(Debug, Clone)]
pub struct Suggestion {
    pub policy: NetworkPolicy,
    /// The policy as YAML, with address names and left-out flows as comments.
    pub yaml: String,
    /// Flows whose pod peer has no stable labels to be selected by, sorted.
    pub left_out: Vec<Flow>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("workload {0} has no pods to take labels from")]
    NoPods(String),
    #[error("the pods of workload {0} share no stable labels, so no selector picks out just them")]
    NoStableLabels(String),
    #[error("rendering the policy as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The policy isolating `workload` in both directions and allowing exactly
/// its observed flows (plus TCP 53 to its resolvers, see the module docs).
pub fn suggest(workload: &Workload) -> Result<Suggestion, SuggestError> {
    if workload.pod_labels.is_empty() {
        return Err(SuggestError::NoPods(workload.name.clone()));
    }
    let selector = stable_labels(&workload.pod_labels);
    if selector.is_empty() {
        return Err(SuggestError::NoStableLabels(workload.name.clone()));
    }
    let flows: BTreeSet<&Flow> = workload.flows.iter().collect();
    let mut left_out = Vec::new();
    let ingress = plan(&flows, Direction::Ingress, false, &mut left_out);
    let egress = plan(&flows, Direction::Egress, workload.resolved_names, &mut left_out);
    let used = flows.len() - left_out.len();
    let ns = &workload.namespace;
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(format!("{NAME_PREFIX}{}", workload.name)),
            namespace: Some(ns.clone()),
            annotations: Some(BTreeMap::from([(GENERATED_FROM.to_owned(), format!("{used} observed flows"))])),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector), match_expressions: None }),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(ingress.iter().map(|r| ingress_rule(r, ns)).collect()),
            egress: Some(egress.iter().map(|r| egress_rule(r, ns)).collect()),
        }),
    };
    let mut yaml = format!(
        "# Suggested by podlens from {used} observed flows. Both directions are isolated:\n\
         # traffic not allowed below is denied, and an empty list denies the whole direction.\n"
    );
    if !left_out.is_empty() {
        yaml.push_str("# Left out, as these pod peers have no stable labels to select them by:\n");
    }
    for flow in &left_out {
        let Peer::Pod { namespace, .. } = &flow.peer else { continue };
        let (d, port, proto, ns) = (flow.direction, flow.port, flow.protocol, comment_safe(namespace));
        yaml.push_str(&format!("#   {d} {port}/{proto} with an unlabelled pod in {ns}\n"));
    }
    yaml.push_str(&to_yaml(&policy, &workload.flows)?);
    Ok(Suggestion { policy, yaml, left_out })
}

/// `existing` with rules appended so that it allows `observed_not_allowed`,
/// and nothing else changed. Flows in a direction the policy does not isolate
/// are skipped: this policy is not what denies them, and rules for that
/// direction would start isolating it. Flows are allowed exactly as given
/// (no DNS widening); pod peers without stable labels are skipped.
pub fn minimal_change(existing: &NetworkPolicy, observed_not_allowed: &[Flow]) -> NetworkPolicy {
    let mut policy = existing.clone();
    let ns = existing.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
    let (covers_ingress, covers_egress) = existing.spec.as_ref().map_or((true, false), covered);
    let covers = |f: &&Flow| if f.direction == Direction::Ingress { covers_ingress } else { covers_egress };
    let flows: BTreeSet<&Flow> = observed_not_allowed.iter().filter(covers).collect();
    let mut skipped = Vec::new();
    let ingress = plan(&flows, Direction::Ingress, false, &mut skipped);
    let egress = plan(&flows, Direction::Egress, false, &mut skipped);
    if ingress.is_empty() && egress.is_empty() {
        return policy;
    }
    let spec = policy.spec.get_or_insert_with(NetworkPolicySpec::default);
    if !ingress.is_empty() {
        spec.ingress.get_or_insert_with(Vec::new).extend(ingress.iter().map(|r| ingress_rule(r, &ns)));
    }
    if !egress.is_empty() {
        spec.egress.get_or_insert_with(Vec::new).extend(egress.iter().map(|r| egress_rule(r, &ns)));
    }
    policy
}

/// The directions a policy isolates, with the apiserver's defaulting when
/// `policyTypes` is empty: Ingress always, Egress when it has egress rules.
fn covered(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref().filter(|t| !t.is_empty()) {
        Some(types) => (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")),
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// `policy` as YAML, each ipBlock of an address followed by a comment with
/// the names `flows` resolved it from.
pub fn to_yaml(policy: &NetworkPolicy, flows: &[Flow]) -> Result<String, serde_yaml::Error> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for flow in flows {
        if let Peer::External { ip, fqdn: Some(name) } = &flow.peer {
            names.entry(host_cidr(*ip)).or_default().insert(comment_safe(name));
        }
    }
    let text = serde_yaml::to_string(policy)?;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line);
        let value = line.trim_start().trim_start_matches("- ").strip_prefix("cidr: ");
        if let Some(found) = value.and_then(|v| names.get(v.trim_matches(['\'', '"']))) {
            out.push_str(" # ");
            out.push_str(&found.iter().map(String::as_str).collect::<Vec<_>>().join(", "));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Observed names and namespaces go into comments; a line break there would
/// end the comment and inject YAML.
fn comment_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

fn host_cidr(ip: IpAddr) -> String {
    let ip = ip.to_canonical();
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// A peer as a rule selects it; `exclude` holds label values that keep other
/// observed peers out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Pods { namespace: String, labels: Labels, exclude: Exclusions },
    Address(IpAddr),
}

type Exclusions = BTreeMap<String, BTreeSet<String>>;
type PortSet = BTreeSet<(u16, Protocol)>;
/// Peers and ports, every pairing of them observed.
type Rule = (BTreeSet<Target>, PortSet);

/// None when the peer cannot be selected without selecting a whole namespace.
fn target(peer: &Peer) -> Option<Target> {
    match peer {
        Peer::Pod { namespace, labels } => {
            let labels = without_churn(labels);
            let namespace = namespace.clone();
            (!labels.is_empty()).then(|| Target::Pods { namespace, labels, exclude: Exclusions::new() })
        }
        Peer::External { ip, .. } => Some(Target::Address(ip.to_canonical())),
    }
}

/// `base` narrowed so that it no longer matches the other targets of `all`
/// in its namespace whose labels strictly contain its own.
fn narrow(base: &Target, all: &BTreeSet<Target>) -> Target {
    let Target::Pods { namespace, labels, .. } = base else { return base.clone() };
    let mut exclude = Exclusions::new();
    for other in all {
        let Target::Pods { namespace: other_ns, labels: more, .. } = other else { continue };
        if other_ns != namespace || more.len() <= labels.len() || !labels.iter().all(|(k, v)| more.get(k) == Some(v)) {
            continue;
        }
        // Any label it has and `base` lacks tells them apart; the first keeps the output stable.
        if let Some((k, v)) = more.iter().find(|(k, _)| !labels.contains_key(*k)) {
            exclude.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    Target::Pods { namespace: namespace.clone(), labels: labels.clone(), exclude }
}

/// The rules for one direction, sorted by peers, the DNS rule last.
fn plan(flows: &BTreeSet<&Flow>, direction: Direction, dns: bool, left_out: &mut Vec<Flow>) -> Vec<Rule> {
    let mut pairs: BTreeMap<Target, PortSet> = BTreeMap::new();
    let mut resolvers = BTreeSet::new();
    for flow in flows.iter().filter(|f| f.direction == direction) {
        let Some(target) = target(&flow.peer) else {
            left_out.push((*flow).clone());
            continue;
        };
        let is_dns = flow.port == DNS_PORT && matches!(flow.protocol, Protocol::Udp | Protocol::Tcp);
        if dns && direction == Direction::Egress && is_dns {
            resolvers.insert(target);
        } else {
            pairs.entry(target).or_default().insert((flow.port, flow.protocol));
        }
    }
    let all: BTreeSet<Target> = pairs.keys().chain(&resolvers).cloned().collect();
    let mut by_ports: BTreeMap<PortSet, BTreeSet<Target>> = BTreeMap::new();
    for (target, ports) in pairs {
        by_ports.entry(ports).or_default().insert(narrow(&target, &all));
    }
    let mut rules: Vec<Rule> = by_ports.into_iter().map(|(ports, peers)| (peers, ports)).collect();
    rules.sort();
    if !resolvers.is_empty() {
        let peers = resolvers.iter().map(|t| narrow(t, &all)).collect();
        rules.push((peers, PortSet::from([(DNS_PORT, Protocol::Tcp), (DNS_PORT, Protocol::Udp)])));
    }
    rules
}

fn ingress_rule(rule: &Rule, policy_ns: &str) -> NetworkPolicyIngressRule {
    let (peers, ports) = k8s_rule(rule, policy_ns);
    NetworkPolicyIngressRule { from: Some(peers), ports: Some(ports) }
}

fn egress_rule(rule: &Rule, policy_ns: &str) -> NetworkPolicyEgressRule {
    let (peers, ports) = k8s_rule(rule, policy_ns);
    NetworkPolicyEgressRule { to: Some(peers), ports: Some(ports) }
}

fn k8s_rule((peers, ports): &Rule, policy_ns: &str) -> (Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>) {
    let peers = peers.iter().map(|t| k8s_peer(t, policy_ns)).collect();
    let ports = ports.iter().map(|&(port, protocol)| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some(protocol.as_k8s().to_owned()),
        end_port: None,
    });
    (peers, ports.collect())
}

fn k8s_peer(target: &Target, policy_ns: &str) -> NetworkPolicyPeer {
    match target {
        Target::Address(ip) => NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr: host_cidr(*ip), except: None }),
            ..NetworkPolicyPeer::default()
        },
        Target::Pods { namespace, labels, exclude } => {
            let expressions: Vec<LabelSelectorRequirement> = (exclude.iter())
                .map(|(key, values)| LabelSelectorRequirement {
                    key: key.clone(),
                    operator: "NotIn".to_owned(),
                    values: Some(values.iter().cloned().collect()),
                })
                .collect();
            let pods = LabelSelector {
                match_labels: Some(labels.clone()),
                match_expressions: (!expressions.is_empty()).then_some(expressions),
            };
            // Without a namespace selector a pod selector means the policy's own namespace.
            let namespaces = (namespace != policy_ns).then(|| LabelSelector {
                match_labels: Some(BTreeMap::from([(NAME_LABEL.to_owned(), namespace.clone())])),
                match_expressions: None,
            });
            NetworkPolicyPeer { pod_selector: Some(pods), namespace_selector: namespaces, ip_block: None }
        }
    }
}

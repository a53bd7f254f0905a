//! Round trips for suggested policies: each suggestion goes into a cluster
//! view with the pods it was made for, and evaluate() must allow every
//! observed connection in the direction the policy governs, deny probes just
//! outside them, and allow nothing that no observed flow accounts for.
//! Connections are written `from -> to port/PROTO`, an end being
//! `namespace/pod` or an address, optionally `address@name`; a leading
//! `-> ` means from prod/web-a.

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};

use super::{
    eval::{evaluate, ClusterView, Connection, Decision, Direction, Endpoint, Protocol},
    selector::Labels,
    suggest::{minimal_change, stable_labels, suggest, to_yaml, Flow, Peer, SuggestError, Suggestion, Workload},
};

const WEB: &[&str] = &["prod/web-a", "prod/web-b"];

fn pod(id: &str, labels: Value, ip: &str) -> Pod {
    let (ns, name) = id.split_once('/').unwrap();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn cluster() -> Vec<Pod> {
    let sts =
        |n: &str| json!({"app": "db", "statefulset.kubernetes.io/pod-name": n, "controller-revision-hash": "db-5f"});
    vec![
        // Mid-rollout: the two replicas differ only in pod-template-hash.
        pod("prod/web-a", json!({"app": "web", "tier": "frontend", "pod-template-hash": "7d9f"}), "10.0.1.1"),
        pod("prod/web-b", json!({"app": "web", "tier": "frontend", "pod-template-hash": "5c4b"}), "10.0.1.2"),
        pod("prod/api", json!({"app": "api"}), "10.0.1.3"),
        pod("prod/api-canary", json!({"app": "api", "track": "canary"}), "10.0.1.4"),
        pod("prod/cache", json!({"app": "cache"}), "10.0.1.5"),
        pod("prod/gateway", json!({"app": "gateway"}), "10.0.1.6"),
        pod("prod/db-0", json!({"app": "db"}), "10.0.1.7"),
        pod("prod/batch", json!({"job-name": "nightly-2891", "controller-uid": "9e1"}), "10.0.1.8"),
        pod("data/db-0", sts("db-0"), "10.0.2.1"),
        pod("data/db-1", sts("db-1"), "10.0.2.2"),
        pod("mon/prom", json!({"app": "prom"}), "10.0.3.1"),
        pod("kube-system/coredns", json!({"k8s-app": "kube-dns"}), "10.0.0.10"),
        pod("kube-system/metrics", json!({"k8s-app": "metrics-server"}), "10.0.0.11"),
    ]
}

fn view<'a>(policies: impl IntoIterator<Item = &'a NetworkPolicy>) -> ClusterView {
    let (view, errors) = ClusterView::new(cluster(), Vec::<Namespace>::new(), policies);
    assert!(errors.is_empty(), "{errors:?}");
    view
}

fn parse(conn: &str) -> (&str, &str, u16, Protocol) {
    let (from, rest) = conn.strip_prefix("-> ").map_or_else(|| conn.split_once(" -> ").unwrap(), |r| ("prod/web-a", r));
    let (to, port) = rest.split_once(' ').unwrap();
    let (port, protocol) = port.split_once('/').unwrap();
    (from, to, port.parse().unwrap(), Protocol::from_k8s(protocol).unwrap())
}

fn endpoint<'a>(view: &'a ClusterView, end: &str) -> Endpoint<'a> {
    let addr = end.split('@').next().unwrap();
    match addr.parse::<IpAddr>() {
        Ok(ip) => Endpoint::External(ip),
        Err(_) => {
            let (ns, name) = addr.split_once('/').unwrap();
            Endpoint::Pod(view.pod(ns, name).unwrap_or_else(|| panic!("no pod {addr}")))
        }
    }
}

/// The flow the agent reports for `conn` as seen by the workload of `pods`.
fn flow(view: &ClusterView, pods: &[&str], conn: &str) -> Flow {
    let (from, to, port, protocol) = parse(conn);
    let (direction, end) = if pods.contains(&from) { (Direction::Egress, to) } else { (Direction::Ingress, from) };
    let peer = match endpoint(view, end) {
        Endpoint::Pod(p) => Peer::Pod { namespace: p.namespace().to_owned(), labels: p.labels().clone() },
        Endpoint::External(ip) => Peer::External { ip, fqdn: end.split_once('@').map(|(_, n)| n.to_owned()) },
    };
    Flow { direction, peer, port, protocol }
}

/// The decision for the direction a policy on the workload governs.
fn governed(view: &ClusterView, pods: &[&str], conn: &str) -> Decision {
    let (from, to, port, protocol) = parse(conn);
    let verdict = evaluate(view, &Connection { from: endpoint(view, from), to: endpoint(view, to), port, protocol });
    if pods.contains(&from) { verdict.egress } else { verdict.ingress }.unwrap()
}

fn allowed_by(d: &Decision, policy: &str) -> bool {
    matches!(d, Decision::Allowed(rules) if rules.iter().any(|r| r.policy == policy))
}

fn workload(pods: &[&str], observed: &[&str], resolved_names: bool) -> Workload {
    let bare = view([]);
    let pod_labels = pods.iter().map(|id| id.split_once('/').unwrap()).map(|(ns, n)| bare.pod(ns, n).unwrap().labels());
    Workload {
        namespace: "prod".to_owned(),
        name: "web".to_owned(),
        pod_labels: pod_labels.cloned().collect(),
        flows: observed.iter().map(|c| flow(&bare, pods, c)).collect(),
        resolved_names,
    }
}

/// Suggests a policy for the web workload, checks it next to `existing`
/// policies (which must not allow anything themselves) and returns it.
fn round_trip(observed: &[&str], probes: &[&str], resolved_names: bool, existing: &[NetworkPolicy]) -> Suggestion {
    let w = workload(WEB, observed, resolved_names);
    let s = suggest(&w).unwrap();
    let back: NetworkPolicy = serde_yaml::from_str(&s.yaml).unwrap();
    assert_eq!(back, s.policy, "{}", s.yaml);
    let name = s.policy.metadata.name.clone().unwrap();
    let view = view(existing.iter().chain([&s.policy]));
    for conn in observed {
        let d = governed(&view, WEB, conn);
        assert!(allowed_by(&d, &name), "observed {conn} not allowed: {d:?}\n{}", s.yaml);
    }
    for probe in probes {
        let d = governed(&view, WEB, probe);
        assert!(matches!(d, Decision::Denied { .. }), "probe {probe} not denied: {d:?}\n{}", s.yaml);
    }
    // Nothing broader: whatever is allowed to or from any pod or mentioned
    // address on any mentioned port has an observed flow behind it.
    let mut ends: Vec<String> = view.pods().map(|p| format!("{}/{}", p.namespace(), p.name())).collect();
    let mut ports = vec![(53, Protocol::Udp), (53, Protocol::Tcp)];
    for (from, to, port, protocol) in observed.iter().chain(probes).map(|c| parse(c)) {
        ends.extend([from, to].map(|end| end.split('@').next().unwrap().to_owned()));
        ports.push((port, protocol));
    }
    for end in ends.iter().filter(|e| !WEB.contains(&e.as_str())) {
        for &(port, protocol) in &ports {
            for conn in [format!("-> {end} {port}/{protocol}"), format!("{end} -> prod/web-a {port}/{protocol}")] {
                if !governed(&view, WEB, &conn).permits() {
                    continue;
                }
                let f = flow(&view, WEB, &conn);
                let dns = resolved_names && f.direction == Direction::Egress && f.port == 53;
                let justified = w.flows.iter().any(|o| {
                    let same_port = o.port == f.port && (o.protocol == f.protocol || dns && o.port == 53);
                    o.direction == f.direction && same_port && covers(&o.peer, &f.peer)
                });
                assert!(justified, "{conn} allowed without an observed flow\n{}", s.yaml);
            }
        }
    }
    s
}

/// `observed` selects `probe` the way its rule's selector would.
fn covers(observed: &Peer, probe: &Peer) -> bool {
    match (observed, probe) {
        (Peer::Pod { namespace: a, labels: la }, Peer::Pod { namespace: b, labels: lb }) => {
            a == b && stable_labels([la]).iter().all(|(k, v)| lb.get(k) == Some(v))
        }
        (Peer::External { ip: a, .. }, Peer::External { ip: b, .. }) => a.to_canonical() == b.to_canonical(),
        _ => false,
    }
}

fn spec_json(s: &Suggestion) -> Value {
    serde_json::to_value(s.policy.spec.as_ref().unwrap()).unwrap()
}

#[test]
fn same_namespace_pod_to_pod() {
    let observed = ["-> prod/api 8080/TCP", "prod/web-b -> prod/api 8080/TCP"];
    let probes = [
        "-> prod/api 8081/TCP",
        "-> prod/cache 8080/TCP",
        "-> prod/api 8080/UDP",
        "-> 203.0.113.9 8080/TCP",
        "-> prod/db-0 8080/TCP",
        // Both directions are isolated, and no ingress was observed.
        "prod/gateway -> prod/web-a 8080/TCP",
    ];
    let s = round_trip(&observed, &probes, false, &[]);
    assert_eq!(s.policy.metadata.name.as_deref(), Some("podlens-suggested-web"));
    let annotations = s.policy.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["podlens.io/generated-from"], "1 observed flows");
    assert_eq!(
        spec_json(&s),
        json!({
            "podSelector": {"matchLabels": {"app": "web", "tier": "frontend"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 8080, "protocol": "TCP"}]}]
        })
    );
}

#[test]
fn cross_namespace_selects_the_namespace_by_name() {
    let s = round_trip(
        &["-> data/db-0 5432/TCP", "-> data/db-1 5432/TCP"],
        &["-> prod/db-0 5432/TCP", "-> data/db-0 5433/TCP", "-> 10.0.2.1 22/TCP"],
        false,
        &[],
    );
    // Both replicas are one peer: the per-pod StatefulSet labels are dropped.
    assert_eq!(
        spec_json(&s)["egress"],
        json!([{
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
                "podSelector": {"matchLabels": {"app": "db"}}
            }],
            "ports": [{"port": 5432, "protocol": "TCP"}]
        }])
    );
}

#[test]
fn external_addresses_get_host_blocks_and_names_as_comments() {
    let s = round_trip(
        &[
            "-> 203.0.113.7@api.example.com 443/TCP",
            "-> 2001:db8::7@api.example.com 443/TCP",
            "-> ::ffff:198.51.100.1 123/UDP",
        ],
        &[
            "-> 203.0.113.8 443/TCP",
            "-> 2001:db8::8 443/TCP",
            "-> 203.0.113.7 80/TCP",
            "-> 198.51.100.1 123/TCP",
            "-> 198.51.100.1 443/TCP",
        ],
        false,
        &[],
    );
    let egress = &spec_json(&s)["egress"];
    // The IPv4-mapped address is written as the IPv4 one it is.
    assert_eq!(egress[0]["to"], json!([{"ipBlock": {"cidr": "198.51.100.1/32"}}]));
    assert_eq!(
        egress[1]["to"],
        json!([{"ipBlock": {"cidr": "203.0.113.7/32"}}, {"ipBlock": {"cidr": "2001:db8::7/128"}}])
    );
    let commented = s.yaml.lines().filter(|l| l.contains("cidr:") && l.ends_with(" # api.example.com")).count();
    assert_eq!(commented, 2, "{}", s.yaml);
}

#[test]
fn several_ports_to_one_peer_share_a_rule() {
    let observed = ["-> prod/api 8080/TCP", "-> prod/api 8443/TCP", "-> prod/api 9090/UDP"];
    let probes = ["-> prod/api 9090/TCP", "-> prod/api 8081/TCP", "-> prod/cache 8443/TCP"];
    let s = round_trip(&observed, &probes, false, &[]);
    let ports = json!([
        {"port": 8080, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}, {"port": 9090, "protocol": "UDP"}
    ]);
    assert_eq!(
        spec_json(&s)["egress"],
        json!([{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": ports}])
    );
}

#[test]
fn one_port_to_several_peers_never_lends_ports() {
    let observed =
        ["-> prod/api 8080/TCP", "-> prod/gateway 8080/TCP", "-> prod/cache 8080/TCP", "-> prod/cache 6379/TCP"];
    // cache's 6379 must not reach api or gateway, though all share 8080.
    let probes = ["-> prod/api 6379/TCP", "-> prod/gateway 6379/TCP"];
    let s = round_trip(&observed, &probes, false, &[]);
    let sel = |app: &str| json!({"podSelector": {"matchLabels": {"app": app}}});
    let port = |p: u16| json!({"port": p, "protocol": "TCP"});
    assert_eq!(
        spec_json(&s)["egress"],
        json!([
            {"to": [sel("api"), sel("gateway")], "ports": [port(8080)]},
            {"to": [sel("cache")], "ports": [port(6379), port(8080)]}
        ])
    );
}

#[test]
fn observed_peers_with_more_labels_are_kept_out() {
    let observed = ["-> prod/api 8080/TCP", "-> prod/api-canary 9090/TCP"];
    let probes = ["-> prod/api-canary 8080/TCP", "-> prod/api 9090/TCP"];
    let s = round_trip(&observed, &probes, false, &[]);
    let api = &spec_json(&s)["egress"][0]["to"][0]["podSelector"];
    assert_eq!(api["matchExpressions"], json!([{"key": "track", "operator": "NotIn", "values": ["canary"]}]));
}

#[test]
fn ingress_from_two_client_workloads_next_to_default_deny() {
    let deny: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "prod", "name": "default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    let observed = ["prod/gateway -> prod/web-a 8080/TCP", "mon/prom -> prod/web-b 9100/TCP"];
    let probes = [
        "prod/gateway -> prod/web-a 9100/TCP",
        "mon/prom -> prod/web-a 8080/TCP",
        "prod/cache -> prod/web-a 8080/TCP",
        "prod/api -> prod/web-a 9100/TCP",
        "203.0.113.1 -> prod/web-a 8080/TCP",
        "-> prod/api 8080/TCP",
    ];
    let s = round_trip(&observed, &probes, false, &[deny]);
    let spec = spec_json(&s);
    assert_eq!(spec["egress"], json!([]));
    assert_eq!(spec["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "mon");
    assert_eq!(spec["ingress"][1]["from"], json!([{"podSelector": {"matchLabels": {"app": "gateway"}}}]));
}

#[test]
fn dns_rule_allows_both_protocols_to_observed_resolvers_only() {
    let observed = ["-> kube-system/coredns 53/UDP", "-> prod/api 8080/TCP"];
    let mut probes = vec![
        "-> kube-system/metrics 53/UDP",
        "-> 8.8.8.8 53/UDP",
        "-> kube-system/coredns 9153/TCP",
        "-> prod/api 53/UDP",
    ];
    let s = round_trip(&observed, &probes, true, &[]);
    let view = view([&s.policy]);
    assert!(allowed_by(&governed(&view, WEB, "-> kube-system/coredns 53/TCP"), "podlens-suggested-web"));
    let dns = &spec_json(&s)["egress"][1];
    assert_eq!(dns["ports"], json!([{"port": 53, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]));
    assert_eq!(dns["to"][0]["podSelector"], json!({"matchLabels": {"k8s-app": "kube-dns"}}));
    // Without the flag port 53 is one more port, allowed exactly as seen.
    probes.push("-> kube-system/coredns 53/TCP");
    round_trip(&observed, &probes, false, &[]);
}

#[test]
fn stable_labels_drop_churn_and_keep_what_all_pods_share() {
    let labels = |v: Value| -> Labels { serde_json::from_value(v).unwrap() };
    let a = labels(json!({"app": "web", "tier": "frontend", "pod-template-hash": "7d9f", "canary": "yes"}));
    let b = labels(json!({"app": "web", "tier": "frontend", "pod-template-hash": "5c4b"}));
    assert_eq!(stable_labels([&a, &b]), labels(json!({"app": "web", "tier": "frontend"})));
    let job =
        labels(json!({"job-name": "x-1", "batch.kubernetes.io/job-name": "x-1", "controller-uid": "u", "team": "t"}));
    assert_eq!(stable_labels([&job]), labels(json!({"team": "t"})));
    let mut w = workload(&["prod/batch"], &[], false);
    assert!(matches!(suggest(&w), Err(SuggestError::NoStableLabels(_))));
    w.pod_labels.clear();
    assert!(matches!(suggest(&w), Err(SuggestError::NoPods(_))));
}

#[test]
fn unlabelled_pod_peers_are_left_out_and_reported() {
    let observed = ["-> prod/api 8080/TCP", "-> prod/batch 8080/TCP"];
    let w = workload(WEB, &observed, false);
    let s = suggest(&w).unwrap();
    assert_eq!(s.left_out, vec![w.flows[1].clone()]);
    assert!(s.yaml.contains("#   egress 8080/TCP with an unlabelled pod in prod\n"), "{}", s.yaml);
    let view = view([&s.policy]);
    assert!(matches!(governed(&view, WEB, observed[1]), Decision::Denied { .. }));
}

#[test]
fn output_is_deterministic() {
    let observed = ["-> prod/cache 6379/TCP", "prod/gateway -> prod/web-a 8080/TCP", "-> 2001:db8::1 443/TCP"];
    let mut w = workload(WEB, &observed, true);
    let first = suggest(&w).unwrap();
    w.flows.reverse();
    w.pod_labels.reverse();
    let second = suggest(&w).unwrap();
    assert_eq!((first.policy, first.yaml), (second.policy, second.yaml));
}

#[test]
fn minimal_change_appends_only_the_missing_rules() {
    let existing: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "prod", "name": "web-egress", "resourceVersion": "42", "labels": {"team": "a"}},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 8080}]}]
        }
    }))
    .unwrap();
    let before = view([&existing]);
    let denied = "-> prod/cache 6379/TCP";
    let ingress = "prod/gateway -> prod/web-a 8080/TCP";
    assert!(matches!(governed(&before, WEB, denied), Decision::Denied { .. }));
    assert_eq!(governed(&before, WEB, ingress), Decision::NotIsolated);
    let flows = [flow(&before, WEB, denied), flow(&before, WEB, ingress)];
    let changed = minimal_change(&existing, &flows);
    let (old, new) = (existing.spec.as_ref().unwrap(), changed.spec.as_ref().unwrap());
    assert_eq!(changed.metadata, existing.metadata);
    assert_eq!((&new.pod_selector, &new.policy_types, &new.ingress), (&old.pod_selector, &old.policy_types, &None));
    let egress = new.egress.as_deref().unwrap();
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0], old.egress.as_deref().unwrap()[0]);
    let back: NetworkPolicy = serde_yaml::from_str(&to_yaml(&changed, &flows).unwrap()).unwrap();
    assert_eq!(back, changed);

    let after = view([&changed]);
    for conn in [denied, "-> prod/api 8080/TCP"] {
        assert!(allowed_by(&governed(&after, WEB, conn), "web-egress"), "{conn}");
    }
    for probe in ["-> prod/cache 8080/TCP", "-> prod/api 6379/TCP", "-> prod/cache 6379/UDP"] {
        assert!(matches!(governed(&after, WEB, probe), Decision::Denied { .. }), "{probe}");
    }
    // The ingress flow is not this policy's doing: ingress stays open.
    assert_eq!(governed(&after, WEB, ingress), Decision::NotIsolated);
    assert_eq!(minimal_change(&changed, &[]), changed);
}

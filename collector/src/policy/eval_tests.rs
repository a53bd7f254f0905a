//! Table-driven NetworkPolicy evaluation tests over one small cluster. Each
//! case is a set of policies and the flows checked against it, written as
//! `from -> to port/PROTO` where an end is `namespace/pod` or an address
//! (resolved to a pod when one has it).

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};

use super::{
    eval::{
        evaluate, ClusterView, Connection, Decision, Direction, Endpoint, Exemption, PolicyError, Problem, Protocol,
        RuleRef, Verdict,
    },
    selector::{Cidr, CidrError, PortError, SelectorError},
};

fn pod(id: &str, labels: Value, ips: &[&str], ports: &[(&str, i32, &str)]) -> Pod {
    let (ns, name) = id.split_once('/').unwrap();
    let ports: Vec<Value> =
        ports.iter().map(|(n, p, pr)| json!({"name": n, "containerPort": p, "protocol": pr})).collect();
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": ips}
    }))
    .unwrap()
}

fn cluster() -> (Vec<Pod>, Vec<Namespace>) {
    let pods = vec![
        pod("prod/web", json!({"app": "web", "tier": "frontend"}), &["10.0.1.1"], &[("http", 8080, "TCP")]),
        pod(
            "prod/db",
            json!({"app": "db", "tier": "backend"}),
            &["10.0.1.2"],
            &[("pg", 5432, "TCP"), ("sig", 3868, "SCTP")],
        ),
        pod(
            "prod/api",
            json!({"app": "api", "tier": "backend", "version": "v2"}),
            &["10.0.1.3", "fd00::3"],
            &[("http", 8443, "TCP")],
        ),
        pod("prod/batch", json!({"job": "nightly"}), &["10.0.1.4"], &[]),
        pod("prod/v6", json!({"app": "v6"}), &["fd00::6"], &[]),
        pod("dev/web", json!({"app": "web"}), &["10.0.2.1"], &[("http", 8080, "TCP")]),
        pod("dev/tool", json!({"app": "tool"}), &["10.0.2.2"], &[]),
        pod("mon/prom", json!({"app": "prom"}), &["10.0.3.1"], &[]),
        pod("orphan/x", json!({"app": "x"}), &["10.0.4.1"], &[]),
    ];
    let ns = |name: &str, labels: Value| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };
    (
        pods,
        vec![
            ns("prod", json!({"env": "prod"})),
            ns("dev", json!({"env": "dev", "team": "a"})),
            ns("mon", json!({"env": "ops"})),
        ],
    )
}

fn np(id: &str, spec: Value) -> Value {
    let (ns, name) = id.split_once('/').unwrap();
    json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
}

/// Expected decision for one direction; policies are `namespace/name`, rules
/// `(policy, rule_index, broad)`, both in sorted order.
#[derive(Clone, Copy, Debug)]
enum E {
    Na,
    Open,
    Allow(&'static [(&'static str, usize, bool)]),
    Deny(&'static [&'static str]),
}
use E::{Allow, Deny, Na, Open};

fn split(id: &str) -> (String, String) {
    let (ns, name) = id.split_once('/').unwrap();
    (ns.to_owned(), name.to_owned())
}

fn expected(e: E, direction: Direction) -> Option<Decision> {
    match e {
        Na => None,
        Open => Some(Decision::NotIsolated),
        Allow(rules) => Some(Decision::Allowed(
            (rules.iter())
                .map(|&(id, rule_index, broad)| {
                    let (namespace, policy) = split(id);
                    RuleRef { namespace, policy, direction, rule_index, broad }
                })
                .collect(),
        )),
        Deny(ids) => Some(Decision::Denied { selecting: ids.iter().map(|id| split(id)).collect() }),
    }
}

fn endpoint<'a>(view: &'a ClusterView, s: &str) -> Endpoint<'a> {
    match s.parse::<IpAddr>() {
        Ok(ip) => view.endpoint(ip),
        Err(_) => {
            let (ns, name) = s.split_once('/').unwrap();
            Endpoint::Pod(view.pod(ns, name).unwrap_or_else(|| panic!("no pod {s}")))
        }
    }
}

fn connection<'a>(view: &'a ClusterView, flow: &str) -> Connection<'a> {
    let [from, "->", to, port] = flow.split_whitespace().collect::<Vec<_>>()[..] else { panic!("bad flow {flow}") };
    let (port, proto) = port.split_once('/').unwrap();
    let protocol = Protocol::from_k8s(proto).unwrap();
    Connection { from: endpoint(view, from), to: endpoint(view, to), port: port.parse().unwrap(), protocol }
}

struct Case {
    name: &'static str,
    policies: Vec<Value>,
    /// (flow, egress, ingress)
    flows: &'static [(&'static str, E, E)],
}

fn case(name: &'static str, policies: Vec<Value>, flows: &'static [(&'static str, E, E)]) -> Case {
    Case { name, policies, flows }
}

// Hand-aligned so that each flow stays on one line.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let db = json!({"matchLabels": {"app": "db"}});
    let web = json!({"matchLabels": {"app": "web"}});
    let dev = json!({"matchLabels": {"env": "dev"}});
    vec![
        case("no policies", vec![], &[
            ("prod/web -> prod/db 5432/TCP", Open, Open),
            ("203.0.113.5 -> prod/web 8080/TCP", Na, Open),
            ("prod/web -> 203.0.113.5 443/TCP", Open, Na),
        ]),
        case("empty podSelector: all pods of the policy's namespace", vec![
            np("prod/same-ns", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/same-ns", 0, false)])),
            ("prod/db -> prod/web 8080/TCP", Open, Allow(&[("prod/same-ns", 0, false)])),
            ("dev/web -> prod/db 5432/TCP", Open, Deny(&["prod/same-ns"])),
            ("dev/tool -> dev/web 8080/TCP", Open, Open),
            ("203.0.113.5 -> prod/web 8080/TCP", Na, Deny(&["prod/same-ns"])),
        ]),
        case("namespaceSelector alone", vec![
            np("prod/from-dev", json!({"podSelector": db, "ingress": [{"from": [{"namespaceSelector": dev}]}]})),
        ], &[
            ("dev/tool -> prod/db 5432/TCP", Open, Allow(&[("prod/from-dev", 0, false)])),
            ("dev/web -> prod/db 5432/TCP", Open, Allow(&[("prod/from-dev", 0, false)])),
            ("mon/prom -> prod/db 5432/TCP", Open, Deny(&["prod/from-dev"])),
            ("prod/web -> prod/db 5432/TCP", Open, Deny(&["prod/from-dev"])),
            ("prod/web -> prod/api 8443/TCP", Open, Open),
        ]),
        case("namespaceSelector and podSelector in one peer: AND", vec![
            np("prod/and", json!({"podSelector": db,
                "ingress": [{"from": [{"namespaceSelector": dev, "podSelector": web}]}]})),
        ], &[
            ("dev/web -> prod/db 5432/TCP", Open, Allow(&[("prod/and", 0, false)])),
            ("dev/tool -> prod/db 5432/TCP", Open, Deny(&["prod/and"])),
            ("prod/web -> prod/db 5432/TCP", Open, Deny(&["prod/and"])),
        ]),
        case("namespaceSelector and podSelector in two peers: OR", vec![
            np("prod/or", json!({"podSelector": db,
                "ingress": [{"from": [{"namespaceSelector": dev}, {"podSelector": web}]}]})),
        ], &[
            ("dev/tool -> prod/db 5432/TCP", Open, Allow(&[("prod/or", 0, false)])),
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/or", 0, false)])),
            ("mon/prom -> prod/db 5432/TCP", Open, Deny(&["prod/or"])),
            ("prod/api -> prod/db 5432/TCP", Open, Deny(&["prod/or"])),
        ]),
        case("matchExpressions In", vec![
            np("prod/in", json!({
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}]},
                "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["web", "api"]}]}}]}]})),
        ], &[
            ("prod/web -> prod/api 8443/TCP", Open, Allow(&[("prod/in", 0, false)])),
            ("prod/api -> prod/db 5432/TCP", Open, Allow(&[("prod/in", 0, false)])),
            ("prod/batch -> prod/db 5432/TCP", Open, Deny(&["prod/in"])),
            ("prod/api -> prod/web 8080/TCP", Open, Open),
        ]),
        case("matchExpressions NotIn holds when the key is absent", vec![
            np("prod/notin", json!({"podSelector": db, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "NotIn", "values": ["web", "api"]}]}}]}]})),
        ], &[
            ("prod/batch -> prod/db 5432/TCP", Open, Allow(&[("prod/notin", 0, false)])),
            ("prod/web -> prod/db 5432/TCP", Open, Deny(&["prod/notin"])),
            ("prod/api -> prod/db 5432/TCP", Open, Deny(&["prod/notin"])),
        ]),
        case("matchExpressions Exists and DoesNotExist", vec![
            np("prod/exists", json!({
                "podSelector": {"matchExpressions": [{"key": "version", "operator": "Exists"}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "team", "operator": "DoesNotExist"}]}}]}]})),
        ], &[
            ("mon/prom -> prod/api 8443/TCP", Open, Allow(&[("prod/exists", 0, false)])),
            ("prod/web -> prod/api 8443/TCP", Open, Allow(&[("prod/exists", 0, false)])),
            ("dev/tool -> prod/api 8443/TCP", Open, Deny(&["prod/exists"])),
            ("mon/prom -> prod/db 5432/TCP", Open, Open),
        ]),
        case("invalid: unknown operator in a peer matches nothing", vec![
            np("prod/bad-peer", json!({"podSelector": db, "ingress": [
                {"from": [{"podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "Within", "values": ["web"]}]}}]},
                {"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Open, Deny(&["prod/bad-peer"])),
            ("prod/api -> prod/db 5432/TCP", Open, Allow(&[("prod/bad-peer", 1, false)])),
        ]),
        case("invalid: broken ports or peers admit nothing, not everything", vec![
            np("prod/bad-entries", json!({"podSelector": db,
                "ingress": [{"ports": [{"protocol": "ICMP"}]}, {"from": [{}]}]})),
        ], &[("prod/web -> prod/db 5432/TCP", Open, Deny(&["prod/bad-entries"]))]),
        case("invalid: unknown operator in podSelector selects nothing", vec![
            np("prod/bad-sel", json!({
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "in", "values": ["db"]}]}})),
        ], &[("prod/web -> prod/db 5432/TCP", Open, Open)]),
        case("ipBlock with except, IPv4", vec![
            np("prod/out-v4", json!({"podSelector": web, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}]}]})),
        ], &[
            ("prod/web -> 203.0.113.5 443/TCP", Allow(&[("prod/out-v4", 0, false)]), Na),
            ("prod/web -> 203.0.113.127 443/TCP", Allow(&[("prod/out-v4", 0, false)]), Na),
            ("prod/web -> 203.0.113.128 443/TCP", Deny(&["prod/out-v4"]), Na),
            ("prod/web -> 198.51.100.1 443/TCP", Deny(&["prod/out-v4"]), Na),
            ("prod/web -> 2001:db8::5 443/TCP", Deny(&["prod/out-v4"]), Na),
            ("prod/db -> 203.0.113.200 443/TCP", Open, Na),
        ]),
        case("ipBlock with except, IPv6", vec![
            np("prod/out-v6", json!({"podSelector": {"matchLabels": {"app": "v6"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:bad::/48"]}}]}]})),
        ], &[
            ("prod/v6 -> 2001:db8::5 443/TCP", Allow(&[("prod/out-v6", 0, false)]), Na),
            ("prod/v6 -> 2001:db8:bad::1 443/TCP", Deny(&["prod/out-v6"]), Na),
            ("prod/v6 -> 2001:db8:bae:: 443/TCP", Allow(&[("prod/out-v6", 0, false)]), Na),
            ("prod/v6 -> 2001:db9::1 443/TCP", Deny(&["prod/out-v6"]), Na),
        ]),
        case("ipBlock 0.0.0.0/0 is broad; ipBlocks match pod addresses too", vec![
            np("prod/world", json!({"podSelector": web, "policyTypes": ["Egress"], "egress": [
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
                {"to": [{"ipBlock": {"cidr": "10.0.1.0/24"}}]}]})),
        ], &[
            ("prod/web -> 203.0.113.5 443/TCP", Allow(&[("prod/world", 0, true)]), Na),
            ("prod/web -> 10.0.9.9 443/TCP", Deny(&["prod/world"]), Na),
            ("prod/web -> prod/db 5432/TCP", Allow(&[("prod/world", 1, false)]), Open),
            ("prod/web -> dev/web 8080/TCP", Deny(&["prod/world"]), Open),
        ]),
        case("external ends never match pod or namespace selectors", vec![
            np("prod/pods-only", json!({"podSelector": web,
                "ingress": [{"from": [{"namespaceSelector": {}}, {"podSelector": {}}]}]})),
        ], &[
            ("203.0.113.5 -> prod/web 8080/TCP", Na, Deny(&["prod/pods-only"])),
            ("10.0.9.9 -> prod/web 8080/TCP", Na, Deny(&["prod/pods-only"])),
            ("mon/prom -> prod/web 8080/TCP", Open, Allow(&[("prod/pods-only", 0, true)])),
            ("prod/db -> prod/web 8080/TCP", Open, Allow(&[("prod/pods-only", 0, false)])),
        ]),
        case("numeric port, TCP by default", vec![
            np("prod/pg", json!({"podSelector": db, "ingress": [{"ports": [{"port": 5432}]}]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/pg", 0, true)])),
            ("prod/web -> prod/db 5433/TCP", Open, Deny(&["prod/pg"])),
            ("prod/web -> prod/db 5432/UDP", Open, Deny(&["prod/pg"])),
            ("203.0.113.5 -> prod/db 5432/TCP", Na, Allow(&[("prod/pg", 0, true)])),
        ]),
        case("named ports resolve on the destination pod (ingress)", vec![
            np("prod/named-in", json!({"podSelector": {},
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "pg"}, {"port": "http"}]}]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/named-in", 0, false)])),
            ("prod/web -> prod/db 8080/TCP", Open, Deny(&["prod/named-in"])),
            ("prod/db -> prod/web 8080/TCP", Open, Allow(&[("prod/named-in", 0, false)])),
            ("prod/db -> prod/api 8443/TCP", Open, Allow(&[("prod/named-in", 0, false)])),
            ("prod/db -> prod/api 8080/TCP", Open, Deny(&["prod/named-in"])),
            ("prod/web -> prod/batch 5432/TCP", Open, Deny(&["prod/named-in"])),
        ]),
        case("named ports on egress resolve on the destination, never outside", vec![
            np("prod/named-out", json!({"podSelector": web, "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "http"}]}]})),
        ], &[
            ("prod/web -> prod/api 8443/TCP", Allow(&[("prod/named-out", 0, true)]), Open),
            ("10.0.1.1 -> 10.0.1.3 8443/TCP", Allow(&[("prod/named-out", 0, true)]), Open),
            ("prod/web -> prod/api 8080/TCP", Deny(&["prod/named-out"]), Open),
            ("prod/web -> dev/web 8080/TCP", Allow(&[("prod/named-out", 0, true)]), Open),
            ("prod/web -> 203.0.113.5 8080/TCP", Deny(&["prod/named-out"]), Na),
        ]),
        case("protocols: SCTP named port, UDP, TCP default", vec![
            np("prod/proto", json!({"podSelector": db, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"ports": [{"protocol": "SCTP", "port": "sig"}, {"port": "sig"}]}],
                "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})),
        ], &[
            ("prod/web -> prod/db 3868/SCTP", Open, Allow(&[("prod/proto", 0, true)])),
            ("prod/web -> prod/db 3868/TCP", Open, Deny(&["prod/proto"])),
            ("prod/web -> prod/db 3868/UDP", Open, Deny(&["prod/proto"])),
            ("prod/db -> 203.0.113.53 53/UDP", Allow(&[("prod/proto", 0, true)]), Na),
            ("prod/db -> 203.0.113.53 53/TCP", Deny(&["prod/proto"]), Na),
        ]),
        case("endPort range edges", vec![
            np("prod/range", json!({"podSelector": web, "ingress": [{"ports": [{"port": 8000, "endPort": 8080}]}]})),
        ], &[
            ("prod/db -> prod/web 7999/TCP", Open, Deny(&["prod/range"])),
            ("prod/db -> prod/web 8000/TCP", Open, Allow(&[("prod/range", 0, true)])),
            ("prod/db -> prod/web 8080/TCP", Open, Allow(&[("prod/range", 0, true)])),
            ("prod/db -> prod/web 8081/TCP", Open, Deny(&["prod/range"])),
        ]),
        case("empty ports: every port and protocol; empty from: every peer", vec![
            np("prod/empties", json!({"podSelector": db, "ingress": [
                {"from": [{"podSelector": web}], "ports": []}, {"from": [], "ports": [{"port": 5432}]}]})),
        ], &[
            ("prod/web -> prod/db 1/UDP", Open, Allow(&[("prod/empties", 0, false)])),
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/empties", 0, false), ("prod/empties", 1, true)])),
            ("203.0.113.5 -> prod/db 5432/TCP", Na, Allow(&[("prod/empties", 1, true)])),
            ("203.0.113.5 -> prod/db 22/TCP", Na, Deny(&["prod/empties"])),
        ]),
        case("policyTypes omitted, no egress rules: ingress only", vec![
            np("prod/implicit-in", json!({"podSelector": db, "egress": [],
                "ingress": [{"from": [{"podSelector": web}]}]})),
        ], &[
            ("prod/db -> 203.0.113.5 443/TCP", Open, Na),
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/implicit-in", 0, false)])),
            ("prod/api -> prod/db 5432/TCP", Open, Deny(&["prod/implicit-in"])),
        ]),
        case("policyTypes omitted with egress rules: both directions", vec![
            np("prod/implicit-both", json!({"podSelector": db,
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]})),
        ], &[
            ("prod/db -> prod/api 8443/TCP", Allow(&[("prod/implicit-both", 0, false)]), Open),
            ("prod/db -> 203.0.113.5 443/TCP", Deny(&["prod/implicit-both"]), Na),
            ("prod/web -> prod/db 5432/TCP", Open, Deny(&["prod/implicit-both"])),
        ]),
        case("Egress-only policy leaves ingress not isolated", vec![
            np("prod/egress-only", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Deny(&["prod/egress-only"]), Open),
            ("203.0.113.5 -> prod/db 5432/TCP", Na, Open),
        ]),
        case("policies are unioned", vec![
            np("prod/a", json!({"podSelector": db,
                "ingress": [{"from": [{"podSelector": web}], "ports": [{"port": 5432}]}]})),
            np("prod/b", json!({"podSelector": {"matchLabels": {"tier": "backend"}}, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]},
                {"from": [{"podSelector": web}]}]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Open,
                Allow(&[("prod/a", 0, false), ("prod/b", 0, false), ("prod/b", 1, false)])),
            ("prod/web -> prod/db 5433/TCP", Open, Allow(&[("prod/b", 0, false), ("prod/b", 1, false)])),
            ("prod/batch -> prod/db 5432/TCP", Open, Allow(&[("prod/b", 0, false)])),
            ("dev/web -> prod/db 5432/TCP", Open, Deny(&["prod/a", "prod/b"])),
            ("dev/web -> prod/api 8443/TCP", Open, Deny(&["prod/b"])),
        ]),
        case("deny-all in both directions", vec![
            np("prod/deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
        ], &[
            ("prod/web -> prod/db 5432/TCP", Deny(&["prod/deny-all"]), Deny(&["prod/deny-all"])),
            ("dev/web -> prod/db 5432/TCP", Open, Deny(&["prod/deny-all"])),
            ("prod/web -> 203.0.113.5 443/TCP", Deny(&["prod/deny-all"]), Na),
            ("203.0.113.5 -> prod/web 8080/TCP", Na, Deny(&["prod/deny-all"])),
            ("dev/tool -> dev/web 8080/TCP", Open, Open),
        ]),
        case("ingress and egress are decided independently", vec![
            np("prod/no-egress", json!({"podSelector": web, "policyTypes": ["Egress"]})),
            np("dev/web-in", json!({"podSelector": web, "ingress": [{}]})),
            np("dev/deny-in", json!({"podSelector": {"matchLabels": {"app": "tool"}}})),
        ], &[
            ("prod/web -> dev/web 8080/TCP", Deny(&["prod/no-egress"]), Allow(&[("dev/web-in", 0, true)])),
            ("prod/api -> dev/tool 22/TCP", Open, Deny(&["dev/deny-in"])),
            ("dev/tool -> prod/web 8080/TCP", Open, Open),
        ]),
        case("IPv6 and dual-stack pods", vec![
            np("prod/v6-api", json!({"podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/112"}}], "ports": [{"port": "http"}]}]})),
            np("prod/v6-db", json!({"podSelector": db, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64"}}]}]})),
        ], &[
            ("fd00::6 -> fd00::3 8443/TCP", Open, Allow(&[("prod/v6-api", 0, false)])),
            ("prod/v6 -> prod/api 8443/TCP", Open, Allow(&[("prod/v6-api", 0, false)])),
            ("fd00::6 -> fd00::3 8080/TCP", Open, Deny(&["prod/v6-api"])),
            ("10.0.1.1 -> 10.0.1.3 8443/TCP", Open, Deny(&["prod/v6-api"])),
            ("2001:db8::5 -> fd00::3 8443/TCP", Na, Deny(&["prod/v6-api"])),
            // By name a dual-stack pod has both addresses; by IP only the one seen.
            ("prod/api -> prod/db 5432/TCP", Open, Allow(&[("prod/v6-db", 0, false)])),
            ("10.0.1.3 -> prod/db 5432/TCP", Open, Deny(&["prod/v6-db"])),
            ("::ffff:10.0.1.3 -> ::ffff:10.0.1.2 5432/TCP", Open, Deny(&["prod/v6-db"])),
        ]),
        case("namespace name label, also for namespaces without an object", vec![
            np("prod/by-name", json!({"podSelector": db, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "orphan"}}}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "prom"}}}]}]})),
        ], &[
            ("orphan/x -> prod/db 5432/TCP", Open, Allow(&[("prod/by-name", 0, false)])),
            ("mon/prom -> prod/db 5432/TCP", Open, Allow(&[("prod/by-name", 1, false)])),
            ("dev/tool -> prod/db 5432/TCP", Open, Deny(&["prod/by-name"])),
        ]),
        case("broad only when every peer that matches is broad", vec![
            np("prod/mixed", json!({"podSelector": db, "ingress": [
                {"from": [{"ipBlock": {"cidr": "::/0"}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {}}]}]})),
        ], &[
            ("prod/v6 -> prod/db 5432/TCP", Open, Allow(&[("prod/mixed", 0, true), ("prod/mixed", 1, true)])),
            ("prod/web -> prod/db 5432/TCP", Open, Allow(&[("prod/mixed", 0, false), ("prod/mixed", 1, true)])),
            ("2001:db8::5 -> prod/db 5432/TCP", Na, Allow(&[("prod/mixed", 0, true)])),
            ("203.0.113.5 -> prod/db 5432/TCP", Na, Deny(&["prod/mixed"])),
        ]),
    ]
}

#[test]
fn decisions() {
    let (pods, namespaces) = cluster();
    let mut flows = 0;
    for case in cases() {
        let policies: Vec<NetworkPolicy> =
            case.policies.into_iter().map(|p| serde_json::from_value(p).unwrap()).collect();
        let (view, errors) = ClusterView::new(&pods, &namespaces, policies);
        assert_eq!(case.name.starts_with("invalid:"), !errors.is_empty(), "{}: errors {errors:?}", case.name);
        for &(flow, egress, ingress) in case.flows {
            let verdict = evaluate(&view, &connection(&view, flow));
            assert_eq!(verdict.egress, expected(egress, Direction::Egress), "{}: {flow}: egress", case.name);
            assert_eq!(verdict.ingress, expected(ingress, Direction::Ingress), "{}: {flow}: ingress", case.name);
            let denied = matches!(egress, Deny(_)) || matches!(ingress, Deny(_));
            assert_eq!(verdict.permits(), !denied, "{}: {flow}: permits", case.name);
            flows += 1;
        }
    }
    assert!(flows > 100, "{flows} flows");
}

#[test]
fn errors_name_policy_rule_and_field() {
    let policy: NetworkPolicy = serde_json::from_value(np("prod/broken", json!({
        "podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        "policyTypes": ["Ingress", "Sideways"],
        "ingress": [{"from": [
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Within", "values": ["web"]}]}},
            {"ipBlock": {"cidr": "10.0.0.0/33"}},
            {"ipBlock": {"cidr": "10.0.0/8"}},
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
            {},
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}
        ], "ports": [{"protocol": "ICMP"}, {"port": 0}, {"port": 80, "endPort": 79}, {"port": "http", "endPort": 90},
            {"port": "8080"}, {"endPort": 90}, {"port": 80, "endPort": 70000}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/64"]}}]}]
    })))
    .unwrap();
    let (pods, namespaces) = cluster();
    let (view, errors) = ClusterView::new(&pods, &namespaces, [policy]);
    let (i0, e0) = (Some((Direction::Ingress, 0)), Some((Direction::Egress, 0)));
    let sel = |e| Problem::Selector(e);
    let cidr = |e| Problem::Cidr(e);
    let port = |e| Problem::Port(e);
    let outside = |c: &str, e: &str| cidr(CidrError::ExceptOutside { cidr: c.into(), except: e.into() });
    let want = [
        (None, "spec.podSelector", sel(SelectorError::ValuesForbidden { index: 0, operator: "Exists" })),
        (None, "spec.policyTypes[1]", Problem::PolicyType("Sideways".into())),
        (
            i0,
            "spec.ingress[0].from[0].podSelector",
            sel(SelectorError::UnknownOperator { index: 0, operator: "Within".into() }),
        ),
        (i0, "spec.ingress[0].from[1].ipBlock.cidr", cidr(CidrError::PrefixTooLong("10.0.0.0/33".into()))),
        (i0, "spec.ingress[0].from[2].ipBlock.cidr", cidr(CidrError::Syntax("10.0.0/8".into()))),
        (i0, "spec.ingress[0].from[3].ipBlock.except[0]", outside("10.0.0.0/8", "192.168.0.0/16")),
        (i0, "spec.ingress[0].from[4]", Problem::Peer),
        (i0, "spec.ingress[0].from[5]", Problem::Peer),
        (
            i0,
            "spec.ingress[0].from[6].namespaceSelector",
            sel(SelectorError::ValuesRequired { index: 0, operator: "In" }),
        ),
        (i0, "spec.ingress[0].ports[0].protocol", port(PortError::Protocol("ICMP".into()))),
        (i0, "spec.ingress[0].ports[1].port", port(PortError::Port(0))),
        (i0, "spec.ingress[0].ports[2].endPort", port(PortError::EndBelowPort { port: 80, end: 79 })),
        (i0, "spec.ingress[0].ports[3].endPort", port(PortError::EndPortNeedsNumber)),
        (i0, "spec.ingress[0].ports[4].port", port(PortError::Name("8080".into()))),
        (i0, "spec.ingress[0].ports[5].endPort", port(PortError::EndPortNeedsNumber)),
        (i0, "spec.ingress[0].ports[6].endPort", port(PortError::EndPort(70000))),
        (e0, "spec.egress[0].to[0].ipBlock.except[0]", outside("fd00::/64", "fd00::/64")),
    ];
    let want: Vec<PolicyError> = (want.into_iter())
        .map(|(rule, field, problem)| PolicyError {
            namespace: "prod".into(),
            policy: "broken".into(),
            rule,
            field: field.into(),
            problem,
        })
        .collect();
    assert_eq!(errors, want);
    assert_eq!(
        errors[2].to_string(),
        concat!(
            r#"networkpolicy prod/broken ingress rule 0: spec.ingress[0].from[0].podSelector: "#,
            r#"matchExpressions[0]: unknown operator "Within""#
        )
    );
    assert_eq!(
        errors[1].to_string(),
        r#"networkpolicy prod/broken: spec.policyTypes[1]: unknown policy type "Sideways" (expected Ingress or Egress)"#
    );
    // Its podSelector is unusable, so the policy isolates nothing.
    let verdict = evaluate(&view, &connection(&view, "prod/web -> prod/db 5432/TCP"));
    assert_eq!((verdict.egress, verdict.ingress), (Some(Decision::NotIsolated), Some(Decision::NotIsolated)));
}

#[test]
fn cidr_parsing_and_containment() {
    let parsed = [
        ("10.0.0.0/8", Some(("10.0.0.0", 8))),
        ("10.1.2.3/8", Some(("10.0.0.0", 8))),
        ("0.0.0.0/0", Some(("0.0.0.0", 0))),
        ("1.2.3.4/32", Some(("1.2.3.4", 32))),
        ("fd00::1/64", Some(("fd00::", 64))),
        ("::/0", Some(("::", 0))),
        ("::1/128", Some(("::1", 128))),
        ("10.0.0.0", None),
        ("10.0.0.0/", None),
        ("10.0.0.0/+8", None),
        ("10.0.0.0/33", None),
        ("::/129", None),
        ("10.0.0.256/8", None),
        ("fd00::/-1", None),
        (" 10.0.0.0/8", None),
    ];
    for (s, want) in parsed {
        let got = Cidr::parse(s).ok().map(|c| (c.network(), c.prefix()));
        assert_eq!(got, want.map(|(n, p)| (n.parse::<IpAddr>().unwrap(), p)), "{s}");
    }
    let contained = [
        ("10.0.0.0/8", "10.255.255.255", true),
        ("10.0.0.0/8", "11.0.0.0", false),
        ("10.0.0.0/8", "::ffff:10.0.0.1", true),
        ("0.0.0.0/0", "::1", false),
        ("::/0", "10.0.0.1", false),
        ("fd00::/127", "fd00::1", true),
        ("fd00::/127", "fd00::2", false),
        ("1.2.3.4/32", "1.2.3.4", true),
        ("1.2.3.4/32", "1.2.3.5", false),
    ];
    for (c, ip, want) in contained {
        assert_eq!(Cidr::parse(c).unwrap().contains(ip.parse().unwrap()), want, "{c} contains {ip}");
    }
}

#[test]
fn lookups() {
    let finished: Pod = serde_json::from_value(json!({"metadata": {"namespace": "prod", "name": "old-job"},
        "spec": {"containers": [{"name": "main"}]}, "status": {"phase": "Succeeded", "podIP": "10.0.1.2"}}))
    .unwrap();
    let legacy: Pod = serde_json::from_value(json!({"metadata": {"namespace": "prod", "name": "legacy"},
        "spec": {"containers": [{"name": "main"}], "initContainers": [{"name": "proxy", "restartPolicy": "Always",
            "ports": [{"name": "metrics", "containerPort": 9100}]}]}, "status": {"podIP": "10.0.1.9"}}))
    .unwrap();
    let (mut pods, namespaces) = cluster();
    pods.insert(0, finished);
    pods.push(legacy);
    let policy = np("prod/metrics", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "metrics"}]}]}));
    let (view, errors) = ClusterView::new(pods, namespaces, [serde_json::from_value::<NetworkPolicy>(policy).unwrap()]);
    assert!(errors.is_empty());
    let db = view.pod_by_ip("::ffff:10.0.1.2".parse().unwrap()).unwrap();
    assert_eq!((db.namespace(), db.name(), db.ip()), ("prod", "db", Some("10.0.1.2".parse().unwrap())));
    assert_eq!(view.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().name(), "legacy");
    assert_eq!(view.pod("prod", "api").unwrap().ips().len(), 2);
    assert!(view.pod("prod", "nope").is_none());
    assert!(matches!(view.endpoint("10.0.1.200".parse().unwrap()), Endpoint::External(_)));
    assert_eq!(view.pods().count(), 11);
    let metrics = evaluate(&view, &connection(&view, "prod/web -> 10.0.1.9 9100/TCP")).ingress;
    assert_eq!(metrics, expected(Allow(&[("prod/metrics", 0, true)]), Direction::Ingress));
}

#[test]
fn decision_helpers() {
    let rule = |broad| RuleRef {
        namespace: "a".into(),
        policy: "p".into(),
        direction: Direction::Ingress,
        rule_index: 0,
        broad,
    };
    assert!(Decision::Allowed(vec![rule(true), rule(true)]).only_broad());
    assert!(!Decision::Allowed(vec![rule(true), rule(false)]).only_broad());
    assert!(!Decision::NotIsolated.only_broad());
    assert!(Decision::NotIsolated.permits());
    assert!(!Decision::Denied { selecting: vec![] }.permits());
}

#[test]
fn exemptions_own_node_ingress_and_same_pod_and_host_network_ends() {
    let pod = |ns: &str, name: &str, host_network: bool, ip: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
            "spec": {"nodeName": "n1", "hostNetwork": host_network, "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}], "hostIP": "192.168.1.10",
                       "hostIPs": [{"ip": "192.168.1.10"}, {"ip": "fd99::10"}]}
        }))
        .unwrap()
    };
    let pods = [
        pod("prod", "db", false, "10.0.1.2"),
        pod("mon", "exporter", true, "192.168.1.10"),
        // on the same node, isolated by nothing
        pod("dev", "tool", false, "10.0.1.3"),
    ];
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"},
                                 {"type": "ExternalIP", "address": "198.51.100.10"}]}
    }))
    .unwrap();
    let deny_all: NetworkPolicy =
        serde_json::from_value(np("prod/deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})))
            .unwrap();
    let (view, errors) = ClusterView::new(&pods, Vec::<Namespace>::new(), [deny_all]);
    assert!(errors.is_empty(), "{errors:?}");
    let view = view.with_nodes([node]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(matches!(view.endpoint(ip("192.168.1.10")), Endpoint::External(_)), "the node's address is the node's");
    assert!(view.pod("mon", "exporter").is_some_and(|p| p.host_network()));
    let db = Endpoint::Pod(view.pod("prod", "db").unwrap());
    let check =
        |from: Endpoint, to: Endpoint, port| evaluate(&view, &Connection { from, to, port, protocol: Protocol::Tcp });
    let own_node = Some(Decision::Exempt(Exemption::OwnNode));
    let denied = Some(Decision::Denied { selecting: vec![("prod".into(), "deny-all".into())] });
    // the kubelet probing db, from any address of db's node (IPv4-mapped too)
    for from in ["192.168.1.10", "fd99::10", "198.51.100.10", "::ffff:192.168.1.10"] {
        assert_eq!(check(Endpoint::External(ip(from)), db, 5432).ingress, own_node, "{from}");
    }
    // another node is not db's own; egress to its own node is policy's business (Calico, Cilium)
    assert_eq!(check(Endpoint::External(ip("192.168.1.11")), db, 5432).ingress, denied);
    assert_eq!(check(db, view.endpoint(ip("192.168.1.10")), 10250).egress, denied);
    // a host-network pod named as an end is its node's address: no egress policy, own-node ingress
    let exporter = Endpoint::Pod(view.pod("mon", "exporter").unwrap());
    assert_eq!(check(exporter, db, 5432), Verdict { egress: None, ingress: own_node });
    assert_eq!(check(db, exporter, 9100).ingress, None);
    // a pod reaching itself
    let same = Some(Decision::Exempt(Exemption::SamePod));
    assert_eq!(check(db, db, 5432), Verdict { egress: same.clone(), ingress: same });
    // exemptions are for isolated pods: one no policy selects stays not isolated
    let tool = Endpoint::Pod(view.pod("dev", "tool").unwrap());
    assert_eq!(check(Endpoint::External(ip("192.168.1.10")), tool, 80).ingress, Some(Decision::NotIsolated));
}

//! Flow classification, service resolution and workload owners over one small
//! cluster. Classification cases are a set of policies and one observed flow,
//! written as `local -> remote`, where the local pod is `namespace/name`,
//! `uid:...` or `-` (address only).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use serde_json::{json, Value};

use super::{
    classify::{BackendClass, Class, Classifier, FlowEnd, ObservedFlow},
    eval::{ClusterView, Direction, Protocol, RuleRef},
    owners::{OwnerIndex, OwnerObject, Workload},
    services::ServiceIndex,
};

fn pod(id: &str, uid: &str, labels: Value, ips: &[&str]) -> Pod {
    let (ns, name) = id.split_once('/').unwrap();
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let ports = json!([{"name": "http", "containerPort": 8080}]);
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "uid": uid, "labels": labels},
        "spec": {"containers": [{"name": "main", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": ips}
    }))
    .unwrap()
}

fn pods() -> Vec<Pod> {
    vec![
        pod("prod/web", "uid-web", json!({"app": "web"}), &["10.0.1.1"]),
        pod("prod/api-a", "uid-a", json!({"app": "api", "shard": "a"}), &["10.0.1.2"]),
        pod("prod/api-b", "uid-b", json!({"app": "api", "shard": "b"}), &["10.0.1.3", "fd00::3"]),
        pod("prod/db", "uid-db", json!({"app": "db"}), &["10.0.1.4"]),
        pod("dev/tool", "uid-tool", json!({"app": "tool"}), &["10.0.2.1"]),
    ]
}

fn svc(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": "prod", "name": name}, "spec": spec})).unwrap()
}

fn slice(service: &str, family: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": "prod", "name": format!("{service}-{family}"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": family, "ports": ports, "endpoints": endpoints
    }))
    .unwrap()
}

fn services() -> ServiceIndex {
    let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let services = [
        svc(
            "api",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9090}]}),
        ),
        svc("db", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 5432}]})),
        svc("empty", json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80}]})),
        svc("drain", json!({"clusterIP": "10.96.0.40", "ports": [{"name": "http", "port": 80}]})),
        svc("headless", json!({"clusterIP": "None", "ports": [{"port": 80}]})),
        svc(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com", "clusterIP": "10.96.0.50",
                          "ports": [{"port": 80}]}),
        ),
    ];
    let slices = [
        slice(
            "api",
            "IPv4",
            http.clone(),
            json!([
            {"addresses": ["10.0.1.3"], "conditions": {"ready": true}},
            {"addresses": ["10.0.1.2"]},
            {"addresses": ["10.0.1.9"], "conditions": {"ready": false, "serving": false}}]),
        ),
        slice("api", "IPv6", http.clone(), json!([{"addresses": ["fd00::3"]}])),
        // A hand-written slice whose only port is not named like the service's.
        slice("db", "IPv4", json!([{"name": "pg", "port": 5432}]), json!([{"addresses": ["10.0.1.4"]}])),
        slice(
            "drain",
            "IPv4",
            http,
            json!([{"addresses": ["10.0.1.2"], "conditions": {"ready": false, "serving": true}}]),
        ),
        slice("headless", "IPv4", json!([{"port": 80}]), json!([{"addresses": ["10.0.1.4"]}])),
    ];
    ServiceIndex::new(&services, &slices)
}

fn np(id: &str, spec: Value) -> Value {
    let (ns, name) = id.split_once('/').unwrap();
    json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn flow(local: &str, from: &str, to: &str, protocol: u8, local_is_client: Option<bool>) -> ObservedFlow {
    let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let end = match (local.strip_prefix("uid:"), local.split_once('/')) {
        (Some(uid), _) => FlowEnd { uid: Some(uid.to_owned()), ..FlowEnd::default() },
        (None, Some((ns, name))) => FlowEnd { namespace: Some(ns.into()), name: Some(name.into()), uid: None },
        (None, None) => FlowEnd::default(),
    };
    ObservedFlow {
        local: end,
        local_ip: from.ip(),
        local_port: from.port(),
        remote_ip: to.ip(),
        remote_port: to.port(),
        protocol,
        local_is_client,
        fqdn: None,
    }
}

/// Expected class; rules are `(namespace/policy, rule_index)`, sorted.
#[derive(Clone, Copy, Debug)]
enum E {
    Na,
    Open,
    Specific(&'static [(&'static str, usize)]),
    Broad(&'static [(&'static str, usize)]),
    Gap(&'static [&'static str]),
}

fn class(e: E, direction: Direction) -> Class {
    let rules = |rules: &[(&str, usize)], broad| {
        let rule = |&(id, rule_index): &(&str, usize)| {
            let (namespace, policy) = id.split_once('/').unwrap();
            RuleRef { namespace: namespace.into(), policy: policy.into(), direction, rule_index, broad }
        };
        rules.iter().map(rule).collect()
    };
    match e {
        E::Na => Class::NotApplicable,
        E::Open => Class::NotIsolated,
        E::Specific(r) => Class::AllowedSpecific(rules(r, false)),
        E::Broad(r) => Class::AllowedBroad(rules(r, true)),
        E::Gap(p) => Class::EnforcementGap { selecting: p.iter().map(|id| id_of(id).unwrap()).collect() },
    }
}

fn id_of(id: &str) -> Option<(String, String)> {
    id.split_once('/').map(|(ns, name)| (ns.to_owned(), name.to_owned()))
}

fn view(policies: &[Value]) -> ClusterView {
    let namespaces: Vec<Namespace> = ["prod", "dev"]
        .iter()
        .map(|n| serde_json::from_value(json!({"metadata": {"name": n, "labels": {"env": n}}})).unwrap())
        .collect();
    let policies: Vec<NetworkPolicy> = policies.iter().map(|p| serde_json::from_value(p.clone()).unwrap()).collect();
    let (view, errors) = ClusterView::new(pods(), namespaces, policies);
    assert!(errors.is_empty(), "{errors:?}");
    view
}

struct Case {
    name: &'static str,
    policies: Vec<Value>,
    flow: ObservedFlow,
    /// local is client, client pod, server pod, service, server port
    ends: (bool, &'static str, &'static str, &'static str, u16),
    egress: E,
    ingress: E,
}

#[test]
fn classifies_flows() {
    let web_out = np(
        "prod/web-out",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 8080}]}]}),
    );
    let api_in = np(
        "prod/api-in",
        json!({"podSelector": {"matchLabels": {"app": "api"}}, "ingress": [
        {"from": [{"namespaceSelector": {}}]}, {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
    );
    let web_any = np(
        "prod/web-any",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
    );
    let api_ns = np(
        "prod/api-ns",
        json!({"podSelector": {"matchLabels": {"app": "api"}},
        "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    let db_deny =
        np("prod/db-deny", json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}));
    let web_deny =
        np("prod/web-deny", json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}));
    let web_cidr = np(
        "prod/web-cidr",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "93.184.216.0/24"}}], "ports": [{"port": 443}]}]}),
    );
    let web_public = np(
        "prod/web-public",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}]}),
    );
    let db_dns = np(
        "prod/db-dns",
        json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"protocol": "UDP", "port": 5353}]}]}),
    );
    let (web, api_a, db) = ("prod/web", "prod/api-a", "prod/db");
    #[rustfmt::skip]
    let cases = vec![
        Case { name: "pod to pod, specific both ways", policies: vec![web_out, api_in],
            flow: flow(web, "10.0.1.1:40000", "10.0.1.2:8080", 6, Some(true)), ends: (true, web, api_a, "", 8080),
            egress: E::Specific(&[("prod/web-out", 0)]), ingress: E::Specific(&[("prod/api-in", 1)]) },
        Case { name: "only 0.0.0.0/0 allows it", policies: vec![web_any.clone()],
            flow: flow(web, "10.0.1.1:40000", "10.0.1.2:8080", 6, Some(true)), ends: (true, web, api_a, "", 8080),
            egress: E::Broad(&[("prod/web-any", 0)]), ingress: E::Open },
        Case { name: "namespaceSelector {} is broad", policies: vec![api_ns],
            flow: flow("dev/tool", "10.0.2.1:40000", "10.0.1.2:8080", 6, Some(true)),
            ends: (true, "dev/tool", api_a, "", 8080), egress: E::Open, ingress: E::Broad(&[("prod/api-ns", 0)]) },
        Case { name: "not isolated", policies: vec![],
            flow: flow(web, "10.0.1.1:40000", "10.0.1.4:5432", 6, Some(true)), ends: (true, web, db, "", 5432),
            egress: E::Open, ingress: E::Open },
        Case { name: "denied but observed", policies: vec![db_deny.clone(), web_deny],
            flow: flow(web, "10.0.1.1:40000", "10.0.1.4:5432", 6, Some(true)), ends: (true, web, db, "", 5432),
            egress: E::Gap(&["prod/web-deny"]), ingress: E::Gap(&["prod/db-deny"]) },
        Case { name: "external destination", policies: vec![web_cidr],
            flow: flow(web, "10.0.1.1:40000", "93.184.216.34:443", 6, Some(true)), ends: (true, web, "", "", 443),
            egress: E::Specific(&[("prod/web-cidr", 0)]), ingress: E::Na },
        Case { name: "external client to a pod", policies: vec![web_public],
            flow: flow(web, "10.0.1.1:443", "203.0.113.5:51000", 6, Some(false)), ends: (false, "", web, "", 443),
            egress: E::Na, ingress: E::Broad(&[("prod/web-public", 0)]) },
        Case { name: "unknown direction: the lower port serves", policies: vec![],
            flow: flow(api_a, "10.0.1.2:8080", "10.0.1.1:45000", 6, None), ends: (false, web, api_a, "", 8080),
            egress: E::Open, ingress: E::Open },
        Case { name: "unknown direction: a tie makes local the client", policies: vec![],
            flow: flow(web, "10.0.1.1:5000", "10.0.1.4:5000", 6, None), ends: (true, web, db, "", 5000),
            egress: E::Open, ingress: E::Open },
        Case { name: "unknown direction: a service port is a server", policies: vec![db_deny.clone()],
            flow: flow(web, "10.0.1.1:22", "10.96.0.20:5432", 6, None), ends: (true, web, db, "prod/db", 5432),
            egress: E::Open, ingress: E::Gap(&["prod/db-deny"]) },
        Case { name: "UDP allowed by a UDP port", policies: vec![db_dns.clone()],
            flow: flow(web, "10.0.1.1:40000", "10.0.1.4:5353", 17, Some(true)), ends: (true, web, db, "", 5353),
            egress: E::Open, ingress: E::Specific(&[("prod/db-dns", 0)]) },
        Case { name: "TCP to a UDP-only rule", policies: vec![db_dns],
            flow: flow(web, "10.0.1.1:40000", "10.0.1.4:5353", 6, Some(true)), ends: (true, web, db, "", 5353),
            egress: E::Open, ingress: E::Gap(&["prod/db-dns"]) },
        Case { name: "ICMP is not policy-relevant", policies: vec![db_deny],
            flow: flow(web, "10.0.1.1:0", "10.0.1.4:0", 1, None), ends: (true, web, db, "", 0),
            egress: E::Na, ingress: E::Na },
        Case { name: "ICMP to a ClusterIP is not a service flow", policies: vec![],
            flow: flow(web, "10.0.1.1:0", "10.96.0.10:0", 1, None), ends: (true, web, "", "", 0),
            egress: E::Na, ingress: E::Na },
        Case { name: "local pod by uid", policies: vec![web_any.clone()],
            flow: flow("uid:uid-web", "10.0.1.1:40000", "10.0.1.4:5432", 6, Some(true)), ends: (true, web, db, "", 5432),
            egress: E::Broad(&[("prod/web-any", 0)]), ingress: E::Open },
        Case { name: "local pod by address", policies: vec![web_any.clone()],
            flow: flow("-", "10.0.1.1:40000", "10.0.1.4:5432", 6, Some(true)), ends: (true, web, db, "", 5432),
            egress: E::Broad(&[("prod/web-any", 0)]), ingress: E::Open },
        Case { name: "local pod newer than the view", policies: vec![web_any.clone()],
            flow: flow("prod/web-2", "10.0.1.1:40000", "10.0.1.4:5432", 6, Some(true)), ends: (true, "", db, "", 5432),
            egress: E::Na, ingress: E::Open },
        Case { name: "unknown uid", policies: vec![web_any],
            flow: flow("uid:nope", "10.0.1.1:40000", "10.0.1.4:5432", 6, Some(true)), ends: (true, "", db, "", 5432),
            egress: E::Na, ingress: E::Open },
    ];
    let index = services();
    for case in cases {
        let view = view(&case.policies);
        let mut observed = case.flow.clone();
        observed.fqdn = Some("name.example".to_owned());
        let got = Classifier::new(&view, &index, pods()).classify(&observed);
        let (local_is_client, client, server, service, port) = case.ends;
        let name = case.name;
        assert_eq!(got.local_is_client, local_is_client, "{name}: direction");
        assert_eq!(got.client_pod, id_of(client), "{name}: client");
        assert_eq!(got.server_pod, id_of(server), "{name}: server");
        assert_eq!(got.service, id_of(service), "{name}: service");
        assert_eq!(got.server_port, port, "{name}: server port");
        assert_eq!(got.egress, class(case.egress, Direction::Egress), "{name}: egress");
        assert_eq!(got.ingress, class(case.ingress, Direction::Ingress), "{name}: ingress");
        assert_eq!((got.protocol, got.fqdn.as_deref()), (case.flow.protocol, Some("name.example")), "{name}");
    }
}

fn backend(ip: &str, pod: &str, egress: E, ingress: E) -> BackendClass {
    let (egress, ingress) = (class(egress, Direction::Egress), class(ingress, Direction::Ingress));
    BackendClass { ip: ip.parse().unwrap(), port: 8080, pod: id_of(pod), egress, ingress }
}

#[test]
fn service_flows_are_classified_per_backend() {
    let web = json!({"podSelector": {"matchLabels": {"app": "web"}}});
    let allow = |id: &str, shard: &str, port: Value| {
        np(
            id,
            json!({"podSelector": {"matchLabels": {"shard": shard}}, "ingress": [{"from": [web.clone()], "ports": [{"port": port}]}]}),
        )
    };
    let lock_b = np("prod/lock-b", json!({"podSelector": {"matchLabels": {"shard": "b"}}, "policyTypes": ["Ingress"]}));
    let both = [allow("prod/a-in", "a", json!("http")), allow("prod/b-in", "b", json!(8080))];
    let one_locked = [allow("prod/a-in", "a", json!("http")), lock_b];
    let (a, b) = (E::Specific(&[("prod/a-in", 0)]), E::Specific(&[("prod/b-in", 0)]));
    #[rustfmt::skip]
    let cases: [(&str, &[Value], E, Vec<BackendClass>); 2] = [
        ("both allowed, by named and numbered target port", &both,
            E::Specific(&[("prod/a-in", 0), ("prod/b-in", 0)]),
            vec![backend("10.0.1.2", "prod/api-a", E::Open, a), backend("10.0.1.3", "prod/api-b", E::Open, b)]),
        ("one backend denied: the worst wins", &one_locked, E::Gap(&["prod/lock-b"]),
            vec![backend("10.0.1.2", "prod/api-a", E::Open, a),
                 backend("10.0.1.3", "prod/api-b", E::Open, E::Gap(&["prod/lock-b"]))]),
    ];
    let index = services();
    for (name, policies, ingress, backends) in cases {
        let view = view(policies);
        let got = Classifier::new(&view, &index, pods()).classify(&flow(
            "prod/web",
            "10.0.1.1:40000",
            "10.96.0.10:80",
            6,
            Some(true),
        ));
        assert_eq!(got.service, id_of("prod/api"), "{name}");
        assert_eq!((got.server_port, got.server_pod.clone()), (80, None), "{name}");
        assert_eq!(got.egress, Class::NotIsolated, "{name}");
        assert_eq!(got.ingress, class(ingress, Direction::Ingress), "{name}");
        assert_eq!(got.backends, backends, "{name}");
    }
}

#[test]
fn service_without_backends_reports_only_an_open_client() {
    let index = services();
    let deny =
        [np("prod/web-deny", json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}))];
    for (policies, egress) in [(&[][..], Class::NotIsolated), (&deny[..], Class::NotApplicable)] {
        let view = view(policies);
        let got = Classifier::new(&view, &index, pods()).classify(&flow(
            "prod/web",
            "10.0.1.1:40000",
            "10.96.0.30:80",
            6,
            Some(true),
        ));
        assert_eq!(got.service, id_of("prod/empty"));
        assert_eq!(
            (got.egress, got.ingress, got.backends, got.server_pod),
            (egress, Class::NotApplicable, vec![], None)
        );
    }
}

#[test]
fn service_index_resolves_cluster_ips() {
    let index = services();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let resolve = |addr: &str, port, protocol| {
        index.resolve(ip(addr), port, protocol).map(|t| (format!("{}/{}", t.namespace, t.service), t.backends.clone()))
    };
    let api =
        |backends: &[(&str, u16)]| Some(("prod/api".to_owned(), backends.iter().map(|&(a, p)| (ip(a), p)).collect()));
    let tcp = Protocol::Tcp;
    // Not ready and not serving, 10.0.1.9 is left out; each family keeps its own.
    assert_eq!(resolve("10.96.0.10", 80, tcp), api(&[("10.0.1.2", 8080), ("10.0.1.3", 8080)]));
    assert_eq!(resolve("::ffff:10.96.0.10", 80, tcp), api(&[("10.0.1.2", 8080), ("10.0.1.3", 8080)]));
    assert_eq!(resolve("fd00:96::10", 80, tcp), api(&[("fd00::3", 8080)]));
    assert_eq!(resolve("10.96.0.10", 9090, tcp), api(&[]), "no slice port named metrics");
    assert_eq!(resolve("10.96.0.10", 80, Protocol::Udp), None);
    assert_eq!(resolve("10.96.0.10", 8080, tcp), None);
    assert_eq!(resolve("10.96.0.20", 5432, tcp), Some(("prod/db".to_owned(), vec![(ip("10.0.1.4"), 5432)])));
    assert_eq!(resolve("10.96.0.40", 80, tcp), Some(("prod/drain".to_owned(), vec![(ip("10.0.1.2"), 8080)])));
    assert_eq!(resolve("10.96.0.50", 80, tcp), None, "ExternalName");
    // api: 2 addresses x 2 ports, then db, empty and drain; headless and ExternalName are left out.
    assert_eq!(index.len(), 7);
}

#[test]
fn worst_class_wins() {
    let r = |policy: &str, broad| RuleRef {
        namespace: "prod".into(),
        policy: policy.into(),
        direction: Direction::Ingress,
        rule_index: 0,
        broad,
    };
    let gap = |p: &str| Class::EnforcementGap { selecting: vec![("prod".into(), p.into())] };
    let (specific, broad) = (Class::AllowedSpecific(vec![r("s", false)]), Class::AllowedBroad(vec![r("b", true)]));
    let ladder = [Class::NotApplicable, specific.clone(), broad.clone(), Class::NotIsolated, gap("x")];
    for (i, low) in ladder.iter().enumerate() {
        for high in &ladder[i..] {
            assert_eq!(low.clone().worst(high.clone()), *high);
            assert_eq!(high.clone().worst(low.clone()), *high);
        }
    }
    let merged = Class::AllowedSpecific(vec![r("s", false), r("t", false)]);
    assert_eq!(specific.worst(Class::AllowedSpecific(vec![r("t", false), r("s", false)])), merged);
    let both = Class::EnforcementGap { selecting: vec![("prod".into(), "x".into()), ("prod".into(), "y".into())] };
    assert_eq!(gap("y").worst(gap("x")), both);
}

fn reference(api_version: &str, kind: &str, name: &str, uid: &str, controller: bool) -> OwnerReference {
    serde_json::from_value(json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
                                  "controller": controller}))
    .unwrap()
}

fn owner(api_version: &str, kind: &str, name: &str, uid: Option<&str>, refs: Vec<OwnerReference>) -> OwnerObject {
    OwnerObject {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: "prod".into(),
        name: name.into(),
        uid: uid.map(Into::into),
        owner_references: refs,
        labels: Default::default(),
    }
}

#[test]
fn owners_resolve_to_workloads() {
    let rs = |name: &str| reference("apps/v1", "ReplicaSet", name, "", true);
    let layer = |n: usize| reference("example.com/v1", "Layer", &format!("l{n}"), "", true);
    let mut objects = vec![
        owner(
            "apps/v1",
            "ReplicaSet",
            "web-5d8",
            Some("rs-1"),
            vec![reference("apps/v1", "Deployment", "web", "", true)],
        ),
        // Something owning the Deployment is not followed.
        owner("apps/v1", "Deployment", "web", None, vec![reference("example.com/v1", "Platform", "main", "", true)]),
        owner("batch/v1", "Job", "nightly-2900", None, vec![reference("batch/v1", "CronJob", "nightly", "", true)]),
        owner("batch/v1", "CronJob", "nightly", None, vec![]),
        owner("apps/v1", "StatefulSet", "db", None, vec![]),
        owner("apps/v1", "ReplicaSet", "loop-a", None, vec![rs("loop-b")]),
        owner("apps/v1", "ReplicaSet", "loop-b", None, vec![rs("loop-a")]),
    ];
    objects.extend((0..10).map(|n| owner("example.com/v1", "Layer", &format!("l{n}"), None, vec![layer(n + 1)])));
    let index = OwnerIndex::new(objects);
    #[rustfmt::skip]
    let cases = [
        ("Deployment via ReplicaSet", "prod", vec![rs("web-5d8")], ("Deployment", "web")),
        ("CronJob via Job", "prod", vec![reference("batch/v1", "Job", "nightly-2900", "j", true)], ("CronJob", "nightly")),
        ("StatefulSet", "prod", vec![reference("apps/v1", "StatefulSet", "db", "s", true)], ("StatefulSet", "db")),
        ("DaemonSet not listed", "prod", vec![reference("apps/v1", "DaemonSet", "agent", "d", true)], ("DaemonSet", "agent")),
        ("bare pod", "prod", vec![], ("Pod", "p")),
        ("missing ReplicaSet", "prod", vec![rs("gone-6c7")], ("ReplicaSet", "gone-6c7")),
        ("a cycle stops at its last new object", "prod", vec![rs("loop-a")], ("ReplicaSet", "loop-b")),
        ("controller preferred", "prod", vec![reference("v1", "Node", "n1", "", false), rs("web-5d8")], ("Deployment", "web")),
        ("no controller: the first", "prod",
            vec![reference("apps/v1", "StatefulSet", "db", "", false), reference("apps/v1", "ReplicaSet", "web-5d8", "", false)],
            ("StatefulSet", "db")),
        ("long chain bounded", "prod", vec![layer(0)], ("Layer", "l7")),
        ("by uid", "prod", vec![reference("apps/v1", "ReplicaSet", "renamed", "rs-1", true)], ("Deployment", "web")),
        ("another group's kind", "prod", vec![reference("x.io/v1", "ReplicaSet", "web-5d8", "", true)],
            ("ReplicaSet", "web-5d8")),
        ("owners are namespace-local", "dev", vec![rs("web-5d8")], ("ReplicaSet", "web-5d8")),
    ];
    for (name, namespace, refs, (kind, workload)) in cases {
        let want = Workload { namespace: namespace.into(), kind: kind.into(), name: workload.into() };
        assert_eq!(index.workload(namespace, "p", &refs), want, "{name}");
    }
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web-5d8-x", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8", "uid": "rs-1", "controller": true}]}}))
    .unwrap();
    let want = Workload { namespace: "default".into(), kind: "ReplicaSet".into(), name: "web-5d8".into() };
    assert_eq!(index.workload_of(&pod), want, "uid found, but in another namespace; the pod defaults to default");
}

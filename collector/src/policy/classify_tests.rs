//! Flow classification, service resolution and workload owners over one small
//! cluster. Classification cases name the policies in force (from [`policy`])
//! and one observed flow, written as [`flow`] describes.

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
    classify::{BackendClass, Class, Classifier, FlowClass, FlowEnd, ObservedFlow},
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

#[rustfmt::skip]
fn services() -> ServiceIndex {
    let one = |port: u16| json!([{"port": port}]);
    let services = [
        svc("api", json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ports": [
            {"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090}]})),
        svc("db", json!({"clusterIP": "10.96.0.20", "ports": one(5432)})),
        svc("empty", json!({"clusterIP": "10.96.0.30", "ports": one(80)})),
        svc("drain", json!({"clusterIP": "10.96.0.40", "ports": [{"name": "http", "port": 80}]})),
        svc("headless", json!({"clusterIP": "None", "ports": one(80)})),
        svc("ext", json!({"type": "ExternalName", "externalName": "a.example", "clusterIP": "10.96.0.50",
            "ports": one(80)})),
    ];
    let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let slices = [
        slice("api", "IPv4", http.clone(), json!([
            {"addresses": ["10.0.1.3"], "conditions": {"ready": true}}, {"addresses": ["10.0.1.2"]},
            {"addresses": ["10.0.1.9"], "conditions": {"ready": false, "serving": false}}])),
        slice("api", "IPv6", http.clone(), json!([{"addresses": ["fd00::3"]}])),
        // A hand-written slice whose only port is not named like the service's.
        slice("db", "IPv4", json!([{"name": "pg", "port": 5432}]), json!([{"addresses": ["10.0.1.4"]}])),
        slice("drain", "IPv4", http,
            json!([{"addresses": ["10.0.1.2"], "conditions": {"ready": false, "serving": true}}])),
        slice("headless", "IPv4", one(80), json!([{"addresses": ["10.0.1.4"]}])),
    ];
    ServiceIndex::new(&services, &slices)
}

/// The policies cases pick by name, all in `prod`.
#[rustfmt::skip]
fn policy(name: &str) -> Value {
    let is = |key: &str, value: &str| json!({"matchLabels": {key: value}});
    let from_web = json!([{"podSelector": is("app", "web")}]);
    let (web, db, api) = (is("app", "web"), is("app", "db"), is("app", "api"));
    let spec = match name {
        "web-out" => json!({"podSelector": web, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": api}], "ports": [{"port": 8080}]}]}),
        "api-in" => json!({"podSelector": api, "ingress": [{"from": [{"namespaceSelector": {}}]}, {"from": from_web}]}),
        "web-any" => json!({"podSelector": web, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        "api-ns" => json!({"podSelector": api, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        "db-deny" => json!({"podSelector": db, "policyTypes": ["Ingress"]}),
        "web-deny" => json!({"podSelector": web, "policyTypes": ["Egress"]}),
        "web-cidr" => json!({"podSelector": web, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "93.184.216.0/24"}}], "ports": [{"port": 443}]}]}),
        "web-public" => json!({"podSelector": web,
            "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}]}),
        "db-dns" => json!({"podSelector": db,
            "ingress": [{"from": from_web, "ports": [{"protocol": "UDP", "port": 5353}]}]}),
        "a-in" => json!({"podSelector": is("shard", "a"),
            "ingress": [{"from": from_web, "ports": [{"port": "http"}]}]}),
        "b-in" => json!({"podSelector": is("shard", "b"), "ingress": [{"from": from_web, "ports": [{"port": 8080}]}]}),
        "lock-b" => json!({"podSelector": is("shard", "b"), "policyTypes": ["Ingress"]}),
        _ => panic!("no policy {name}"),
    };
    json!({"metadata": {"namespace": "prod", "name": name}, "spec": spec})
}

/// `local address > remote address protocol`, where `>` says the local end
/// is the client, `<` the server and `?` unknown; `local` is `namespace/name`,
/// `uid:...` or `-` (address only).
fn flow(spec: &str) -> ObservedFlow {
    let [local, from, arrow, to, protocol] = spec.split(' ').collect::<Vec<_>>()[..] else { panic!("{spec}") };
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
        protocol: match protocol {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            _ => panic!("{spec}"),
        },
        local_is_client: match arrow {
            ">" => Some(true),
            "<" => Some(false),
            _ => None,
        },
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

fn view(policies: &[&str]) -> ClusterView {
    let namespaces: Vec<Namespace> = ["prod", "dev"]
        .iter()
        .map(|n| serde_json::from_value(json!({"metadata": {"name": n, "labels": {"env": n}}})).unwrap())
        .collect();
    let policies: Vec<NetworkPolicy> = policies.iter().map(|p| serde_json::from_value(policy(p)).unwrap()).collect();
    let (view, errors) = ClusterView::new(pods(), namespaces, policies);
    assert!(errors.is_empty(), "{errors:?}");
    view
}

fn classify(policies: &[&str], spec: &str) -> FlowClass {
    let (view, index) = (view(policies), services());
    Classifier::new(&view, &index).classify(&flow(spec))
}

/// (local is client, client pod, server pod, service, server port); "" for none.
type Ends = (bool, &'static str, &'static str, &'static str, u16);
/// (name, policies, flow, ends, egress, ingress)
type FlowCase = (&'static str, &'static [&'static str], &'static str, Ends, E, E);

#[test]
fn classifies_flows() {
    use E::*;
    const WEB_DB: &str = "prod/web 10.0.1.1:40000 > 10.0.1.4:5432 tcp";
    #[rustfmt::skip]
    let cases: &[FlowCase] = &[
        ("pod to pod, specific both ways; the broad rule left out", &["web-out", "api-in"],
            "prod/web 10.0.1.1:40000 > 10.0.1.2:8080 tcp", (true, "prod/web", "prod/api-a", "", 8080),
            Specific(&[("prod/web-out", 0)]), Specific(&[("prod/api-in", 1)])),
        ("allowed only by 0.0.0.0/0", &["web-any"], "prod/web 10.0.1.1:40000 > 10.0.1.2:8080 tcp",
            (true, "prod/web", "prod/api-a", "", 8080), Broad(&[("prod/web-any", 0)]), Open),
        ("namespaceSelector {} is broad", &["api-ns"], "dev/tool 10.0.2.1:40000 > 10.0.1.2:8080 tcp",
            (true, "dev/tool", "prod/api-a", "", 8080), Open, Broad(&[("prod/api-ns", 0)])),
        ("not isolated", &[], WEB_DB, (true, "prod/web", "prod/db", "", 5432), Open, Open),
        ("denied but observed", &["db-deny", "web-deny"], WEB_DB, (true, "prod/web", "prod/db", "", 5432),
            Gap(&["prod/web-deny"]), Gap(&["prod/db-deny"])),
        ("external destination", &["web-cidr"], "prod/web 10.0.1.1:40000 > 93.184.216.34:443 tcp",
            (true, "prod/web", "", "", 443), Specific(&[("prod/web-cidr", 0)]), Na),
        ("external client", &["web-public"], "prod/web 10.0.1.1:443 < 203.0.113.5:51000 tcp",
            (false, "", "prod/web", "", 443), Na, Broad(&[("prod/web-public", 0)])),
        ("unknown direction: the lower port serves", &[], "prod/api-a 10.0.1.2:8080 ? 10.0.1.1:45000 tcp",
            (false, "prod/web", "prod/api-a", "", 8080), Open, Open),
        ("unknown direction: the declared container port serves, not the lower one", &[],
            "prod/web 10.0.1.1:3000 ? 10.0.1.2:8080 tcp", (true, "prod/web", "prod/api-a", "", 8080), Open, Open),
        ("unknown direction: a service backend's target port serves", &[],
            "prod/db 10.0.1.4:5432 ? 10.0.1.1:80 tcp", (false, "prod/web", "prod/db", "", 5432), Open, Open),
        ("unknown direction: on a tie local is the client", &[], "prod/web 10.0.1.1:5000 ? 10.0.1.4:5000 tcp",
            (true, "prod/web", "prod/db", "", 5000), Open, Open),
        ("unknown direction: a service port serves", &["db-deny"], "prod/web 10.0.1.1:22 ? 10.96.0.20:5432 tcp",
            (true, "prod/web", "prod/db", "prod/db", 5432), Open, Gap(&["prod/db-deny"])),
        ("UDP allowed by a UDP port", &["db-dns"], "prod/web 10.0.1.1:40000 > 10.0.1.4:5353 udp",
            (true, "prod/web", "prod/db", "", 5353), Open, Specific(&[("prod/db-dns", 0)])),
        ("TCP to a UDP-only rule", &["db-dns"], "prod/web 10.0.1.1:40000 > 10.0.1.4:5353 tcp",
            (true, "prod/web", "prod/db", "", 5353), Open, Gap(&["prod/db-dns"])),
        ("ICMP is outside policy", &["db-deny"], "prod/web 10.0.1.1:0 ? 10.0.1.4:0 icmp",
            (true, "prod/web", "prod/db", "", 0), Na, Na),
        ("ICMP to a ClusterIP is no service flow", &[], "prod/web 10.0.1.1:0 ? 10.96.0.10:0 icmp",
            (true, "prod/web", "", "", 0), Na, Na),
        ("local pod by uid", &["web-any"], "uid:uid-web 10.0.1.1:40000 > 10.0.1.4:5432 tcp",
            (true, "prod/web", "prod/db", "", 5432), Broad(&[("prod/web-any", 0)]), Open),
        ("local pod by address", &["web-any"], "- 10.0.1.1:40000 > 10.0.1.4:5432 tcp",
            (true, "prod/web", "prod/db", "", 5432), Broad(&[("prod/web-any", 0)]), Open),
        ("local pod newer than the view", &["web-any"], "prod/web-2 10.0.1.1:40000 > 10.0.1.4:5432 tcp",
            (true, "", "prod/db", "", 5432), Na, Open),
        ("unknown uid", &["web-any"], "uid:nope 10.0.1.1:40000 > 10.0.1.4:5432 tcp",
            (true, "", "prod/db", "", 5432), Na, Open),
    ];
    for &(name, policies, spec, (local_is_client, client, server, service, port), egress, ingress) in cases {
        let (view, index) = (view(policies), services());
        let observed = ObservedFlow { fqdn: Some("name.example".to_owned()), ..flow(spec) };
        let got = Classifier::new(&view, &index).classify(&observed);
        assert_eq!(got.local_is_client, local_is_client, "{name}: direction");
        assert_eq!(got.client_pod, id_of(client), "{name}: client");
        assert_eq!(got.server_pod, id_of(server), "{name}: server");
        assert_eq!(got.service, id_of(service), "{name}: service");
        assert_eq!(got.server_port, port, "{name}: server port");
        assert_eq!(got.egress, class(egress, Direction::Egress), "{name}: egress");
        assert_eq!(got.ingress, class(ingress, Direction::Ingress), "{name}: ingress");
        assert_eq!((got.protocol, got.fqdn.as_deref()), (observed.protocol, Some("name.example")), "{name}");
        assert_eq!(got.backends.len(), usize::from(!service.is_empty()), "{name}: backends");
    }
}

#[test]
fn service_flows_are_classified_per_backend() {
    use E::*;
    let (a, b, locked) = (Specific(&[("prod/a-in", 0)]), Specific(&[("prod/b-in", 0)]), Gap(&["prod/lock-b"]));
    #[rustfmt::skip]
    let cases: [(&str, &[&str], E, [E; 2]); 2] = [
        ("both allowed, by named and numbered target port", &["a-in", "b-in"],
            Specific(&[("prod/a-in", 0), ("prod/b-in", 0)]), [a, b]),
        ("one backend denied: the worst wins", &["a-in", "lock-b"], locked, [a, locked]),
    ];
    for (name, policies, ingress, [ingress_a, ingress_b]) in cases {
        let got = classify(policies, "prod/web 10.0.1.1:40000 > 10.96.0.10:80 tcp");
        assert_eq!(got.service, id_of("prod/api"), "{name}");
        assert_eq!((got.server_port, got.server_pod.clone()), (80, None), "{name}");
        assert_eq!(got.egress, Class::NotIsolated, "{name}");
        assert_eq!(got.ingress, class(ingress, Direction::Ingress), "{name}");
        let want =
            [("10.0.1.2", "prod/api-a", ingress_a), ("10.0.1.3", "prod/api-b", ingress_b)].map(|(ip, pod, e)| {
                let (egress, ingress) = (Class::NotIsolated, class(e, Direction::Ingress));
                BackendClass { ip: ip.parse().unwrap(), port: 8080, pod: id_of(pod), egress, ingress }
            });
        assert_eq!(got.backends, want, "{name}");
    }
}

#[test]
fn service_without_backends_reports_only_an_open_client() {
    for (policies, egress) in [(&[][..], Class::NotIsolated), (&["web-deny"][..], Class::NotApplicable)] {
        let got = classify(policies, "prod/web 10.0.1.1:40000 > 10.96.0.30:80 tcp");
        assert_eq!(got.service, id_of("prod/empty"));
        let want = (egress, Class::NotApplicable, vec![], None);
        assert_eq!((got.egress, got.ingress, got.backends, got.server_pod), want);
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
    let to = |api_version: &str, kind: &str, name: &str| reference(api_version, kind, name, "", true);
    let weak = |api_version: &str, kind: &str, name: &str| reference(api_version, kind, name, "", false);
    let rs = |name: &str| to("apps/v1", "ReplicaSet", name);
    let layer = |n: usize| to("example.com/v1", "Layer", &format!("l{n}"));
    let mut objects = vec![
        owner("apps/v1", "ReplicaSet", "web-5d8", Some("rs-1"), vec![to("apps/v1", "Deployment", "web")]),
        // What owns a Deployment is not followed.
        owner("apps/v1", "Deployment", "web", None, vec![to("example.com/v1", "Platform", "main")]),
        owner("batch/v1", "Job", "nightly-2900", None, vec![to("batch/v1", "CronJob", "nightly")]),
        owner("batch/v1", "CronJob", "nightly", None, vec![]),
        owner("apps/v1", "StatefulSet", "db", None, vec![]),
        // A cycle of three, so that stopping at the hop bound would end elsewhere (loop-b).
        owner("apps/v1", "ReplicaSet", "loop-a", None, vec![rs("loop-b")]),
        owner("apps/v1", "ReplicaSet", "loop-b", None, vec![rs("loop-c")]),
        owner("apps/v1", "ReplicaSet", "loop-c", None, vec![rs("loop-a")]),
    ];
    objects.extend((0..10).map(|n| owner("example.com/v1", "Layer", &format!("l{n}"), None, vec![layer(n + 1)])));
    let index = OwnerIndex::new(objects);
    #[rustfmt::skip]
    let cases = [
        ("Deployment via ReplicaSet", "prod", vec![rs("web-5d8")], ("Deployment", "web")),
        ("CronJob via Job", "prod", vec![to("batch/v1", "Job", "nightly-2900")], ("CronJob", "nightly")),
        ("StatefulSet", "prod", vec![to("apps/v1", "StatefulSet", "db")], ("StatefulSet", "db")),
        ("DaemonSet not listed", "prod", vec![to("apps/v1", "DaemonSet", "agent")], ("DaemonSet", "agent")),
        ("bare pod", "prod", vec![], ("Pod", "p")),
        ("missing ReplicaSet", "prod", vec![rs("gone-6c7")], ("ReplicaSet", "gone-6c7")),
        ("a cycle stops at its last new object", "prod", vec![rs("loop-a")], ("ReplicaSet", "loop-c")),
        ("controller preferred", "prod", vec![weak("v1", "Node", "n1"), rs("web-5d8")], ("Deployment", "web")),
        ("no controller: the first", "prod",
            vec![weak("apps/v1", "StatefulSet", "db"), weak("apps/v1", "ReplicaSet", "web-5d8")],
            ("StatefulSet", "db")),
        ("long chain bounded", "prod", vec![layer(0)], ("Layer", "l7")),
        ("by uid", "prod", vec![reference("apps/v1", "ReplicaSet", "renamed", "rs-1", true)], ("Deployment", "web")),
        ("another group's kind", "prod", vec![to("x.io/v1", "ReplicaSet", "web-5d8")], ("ReplicaSet", "web-5d8")),
        ("owners are namespace-local", "dev", vec![rs("web-5d8")], ("ReplicaSet", "web-5d8")),
    ];
    for (name, namespace, refs, (kind, workload)) in cases {
        let want = Workload { namespace: namespace.into(), kind: kind.into(), name: workload.into() };
        assert_eq!(index.workload(namespace, "p", &refs), want, "{name}");
    }
    // The uid is known, but its object is in prod, and a pod without a namespace is in default.
    for (namespace, want) in
        [(json!("prod"), ("prod", "Deployment", "web")), (Value::Null, ("default", "ReplicaSet", "web-5d8"))]
    {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web-5d8-x", "namespace": namespace,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8", "uid": "rs-1"}]}}))
        .unwrap();
        let want = Workload { namespace: want.0.into(), kind: want.1.into(), name: want.2.into() };
        assert_eq!(index.workload_of(&pod), want);
    }
}

//! Gap aggregation over flows classified against a small cluster, and the
//! unexpected-egress baseline with its persistence.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};

use super::{
    baseline::{Baseline, BaselineConfig, BaselineError, ExternalDest, FORMAT_VERSION},
    classify::{Classifier, FlowClass, FlowEnd, ObservedFlow},
    eval::{ClusterView, Direction},
    gaps::{stable_id, GapAggregator, GapConfig, GapKind, PeerDesc, Report, Side},
    owners::Workload,
    services::ServiceIndex,
};

const HOUR: u64 = 3600 * 1_000_000_000;

fn pod(id: &str, labels: Value, ip: &str) -> Pod {
    let (ns, name) = id.split_once('/').unwrap();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn pods() -> Vec<Pod> {
    vec![
        pod("prod/web", json!({"app": "web"}), "10.0.1.1"),
        pod("prod/api", json!({"app": "api"}), "10.0.1.2"),
        pod("prod/api-2", json!({"app": "api"}), "10.0.1.3"),
        pod("prod/db", json!({"app": "db"}), "10.0.1.4"),
    ]
}

#[rustfmt::skip]
fn policy(name: &str) -> NetworkPolicy {
    let is = |value: &str| json!({"matchLabels": {"app": value}});
    let spec = match name {
        "web-any" => json!({"podSelector": is("web"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        "web-api" => json!({"podSelector": is("web"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": is("api")}]}]}),
        "api-in" => json!({"podSelector": is("api"), "ingress": [{"from": [{"podSelector": is("web")}]}]}),
        "db-deny" => json!({"podSelector": is("db"), "policyTypes": ["Ingress"]}),
        "web-deny" => json!({"podSelector": is("web"), "policyTypes": ["Egress"]}),
        _ => panic!("no policy {name}"),
    };
    serde_json::from_value(json!({"metadata": {"namespace": "prod", "name": name}, "spec": spec})).unwrap()
}

/// `local from > to`, TCP, local end `namespace/name` or `-`.
fn flow(spec: &str, fqdn: Option<&str>) -> ObservedFlow {
    let [local, from, arrow, to] = spec.split(' ').collect::<Vec<_>>()[..] else { panic!("{spec}") };
    let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let local = match local.split_once('/') {
        Some((ns, name)) => FlowEnd { namespace: Some(ns.into()), name: Some(name.into()), uid: None },
        None => FlowEnd::default(),
    };
    ObservedFlow {
        local,
        local_ip: from.ip(),
        local_port: from.port(),
        remote_ip: to.ip(),
        remote_port: to.port(),
        protocol: 6,
        local_is_client: Some(arrow == ">"),
        fqdn: fqdn.map(str::to_owned),
    }
}

fn classify(policies: &[&str], flow: &ObservedFlow) -> FlowClass {
    let namespaces: Vec<Namespace> = vec![serde_json::from_value(json!({"metadata": {"name": "prod"}})).unwrap()];
    let policies: Vec<NetworkPolicy> = policies.iter().map(|p| policy(p)).collect();
    let (view, errors) = ClusterView::new(pods(), namespaces, policies);
    assert!(errors.is_empty(), "{errors:?}");
    let service = json!({"metadata": {"namespace": "prod", "name": "api"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}});
    let slice = json!({"metadata": {"namespace": "prod", "name": "api-1", "labels": {"kubernetes.io/service-name": "api"}},
        "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.0.1.2", "10.0.1.3"]}]});
    let services =
        ServiceIndex::new(&[serde_json::from_value(service).unwrap()], &[serde_json::from_value(slice).unwrap()]);
    Classifier::new(&view, &services).classify(flow)
}

fn deploy(name: &str) -> Workload {
    Workload { namespace: "prod".into(), kind: "Deployment".into(), name: name.into() }
}

/// Adds a flow for both of its ends, with the workloads of its classified
/// ends (`Deployment` named like the pod).
fn add(agg: &mut GapAggregator, policies: &[&str], spec: &str, fqdn: Option<&str>, bytes: u64, now: u64) {
    add_side(agg, policies, spec, Side::Both, bytes, now, fqdn);
}

fn add_side(
    agg: &mut GapAggregator,
    policies: &[&str],
    spec: &str,
    side: Side,
    bytes: u64,
    now: u64,
    fqdn: Option<&str>,
) {
    let flow = flow(spec, fqdn);
    let class = classify(policies, &flow);
    let report = Report { class: &class, remote_ip: Some(flow.remote_ip), side, bytes, now };
    agg.add(&report, &|(_, name)| Some(deploy(name)));
}

fn find(agg: &GapAggregator, kind: GapKind, workload: &str, direction: Direction) -> Vec<super::gaps::Gap> {
    agg.entries()
        .filter(|g| g.kind == kind && g.workload.name == workload && g.direction == direction)
        .cloned()
        .collect()
}

const WEB_API: &str = "prod/web 10.0.1.1:40000 > 10.0.1.2:8080";
const WEB_DB: &str = "prod/web 10.0.1.1:40000 > 10.0.1.4:5432";
const WEB_OUT: &str = "prod/web 10.0.1.1:40000 > 93.184.216.34:443";

#[test]
fn unprotected_pod_lists_peers_by_bytes() {
    let mut agg = GapAggregator::default();
    add(&mut agg, &[], WEB_API, None, 100, 10);
    add(&mut agg, &[], WEB_DB, None, 500, 20);
    add(&mut agg, &[], WEB_API, None, 100, 30);
    let [gap] = &find(&agg, GapKind::UnprotectedPod, "web", Direction::Egress)[..] else { panic!("{agg:?}") };
    assert_eq!((gap.flows, gap.bytes, gap.first_seen, gap.last_seen), (3, 700, 10, 30));
    assert_eq!((gap.peer.clone(), gap.port, gap.protocol), (PeerDesc::Any, 0, 0));
    let peers: Vec<_> = gap.peers.iter().map(|p| (p.peer.clone(), p.port, p.flows, p.bytes)).collect();
    assert_eq!(
        peers,
        [(PeerDesc::Workload(deploy("db")), 5432, 1, 500), (PeerDesc::Workload(deploy("api")), 8080, 2, 200)]
    );
    // The servers are not isolated for ingress either; their peer is web.
    let [api] = &find(&agg, GapKind::UnprotectedPod, "api", Direction::Ingress)[..] else { panic!() };
    assert_eq!(api.peers[0].peer, PeerDesc::Workload(deploy("web")));
    // A pod isolated both ways is no unprotected pod.
    let mut agg = GapAggregator::default();
    add(&mut agg, &["web-api", "api-in"], WEB_API, None, 1, 1);
    assert_eq!(agg.len(), 0, "{agg:?}");
}

#[test]
fn unprotected_pod_peer_list_is_bounded() {
    let mut agg = GapAggregator::new(GapConfig { max_peers: 2, ..GapConfig::default() });
    for (i, bytes) in [10, 20, 5, 30].into_iter().enumerate() {
        add(&mut agg, &[], &format!("prod/web 10.0.1.1:40000 > 198.51.100.{i}:443"), None, bytes, 1);
    }
    let [gap] = &find(&agg, GapKind::UnprotectedPod, "web", Direction::Egress)[..] else { panic!() };
    let bytes: Vec<u64> = gap.peers.iter().map(|p| p.bytes).collect();
    assert_eq!(bytes, [30, 20]);
    assert_eq!(gap.peers_dropped, 2, "the 5-byte flow, and the 10-byte peer replaced");
}

#[test]
fn uncovered_egress_by_destination() {
    let mut agg = GapAggregator::new(GapConfig { external_v4_prefix: 24, ..GapConfig::default() });
    add(&mut agg, &["web-any"], WEB_OUT, None, 10, 1);
    add(&mut agg, &["web-any"], "prod/web 10.0.1.1:40000 > 93.184.216.99:443", None, 10, 2);
    add(&mut agg, &["web-any"], WEB_OUT, Some("Example.COM."), 10, 3);
    add(&mut agg, &["web-any"], WEB_DB, None, 10, 4);
    add(&mut agg, &["web-api"], WEB_API, None, 10, 5);
    let gaps = find(&agg, GapKind::UncoveredEgress, "web", Direction::Egress);
    let got: Vec<_> = gaps.iter().map(|g| (g.peer.clone(), g.port, g.flows, g.policies.clone())).collect();
    let any = vec![("prod".to_owned(), "web-any".to_owned())];
    let net = PeerDesc::Cidr { network: "93.184.216.0".parse().unwrap(), prefix: 24 };
    let mut want = vec![
        (net, 443, 2, any.clone()),
        (PeerDesc::Fqdn("example.com".into()), 443, 1, any.clone()),
        (PeerDesc::Workload(deploy("db")), 5432, 1, any),
    ];
    want.sort();
    let mut got = got;
    got.sort();
    assert_eq!(got, want, "the specific web-api egress is covered");
    // Without web-any the external flow is not isolated: uncovered, no policies.
    let mut agg = GapAggregator::default();
    add(&mut agg, &[], WEB_OUT, None, 10, 1);
    let [gap] = &find(&agg, GapKind::UncoveredEgress, "web", Direction::Egress)[..] else { panic!() };
    let ip: IpAddr = "93.184.216.34".parse().unwrap();
    assert_eq!((gap.peer.clone(), gap.policies.len()), (PeerDesc::Cidr { network: ip, prefix: 32 }, 0));
    // `add` has no remote address: the external peer is unknown.
    let mut agg = GapAggregator::default();
    let class = classify(&[], &flow(WEB_OUT, None));
    agg.add(&Report { class: &class, remote_ip: None, side: Side::Client, bytes: 1, now: 1 }, &|_| None);
    let [gap] = &find(&agg, GapKind::UncoveredEgress, "web", Direction::Egress)[..] else { panic!() };
    assert_eq!((gap.peer.clone(), gap.workload.kind.as_str()), (PeerDesc::External, "Pod"));
}

#[test]
fn service_flows_count_per_backend_workload_at_the_target_port() {
    // api and api-2 are one Deployment; the client's record goes to the
    // ClusterIP at port 80, each server's record is at 8080
    let api = |name: &str| Some(deploy(if name.starts_with("api") { "api" } else { name }));
    let mut agg = GapAggregator::default();
    let f = flow("prod/web 10.0.1.1:40000 > 10.96.0.10:80", None);
    let class = classify(&["db-deny"], &f);
    assert_eq!(class.backends.len(), 2, "{class:?}");
    agg.add(&Report { class: &class, remote_ip: Some(f.remote_ip), side: Side::Client, bytes: 9, now: 1 }, &|p| {
        api(&p.1)
    });
    let [gap] = &find(&agg, GapKind::UncoveredEgress, "web", Direction::Egress)[..] else { panic!("{agg:?}") };
    assert_eq!((gap.peer.clone(), gap.port, gap.flows), (PeerDesc::Workload(deploy("api")), 8080, 1));
    let [open] = &find(&agg, GapKind::UnprotectedPod, "web", Direction::Egress)[..] else { panic!() };
    assert_eq!((open.flows, open.peers.len()), (1, 1), "one record, one merged backend peer");
    assert!(find(&agg, GapKind::UnprotectedPod, "api", Direction::Ingress).is_empty(), "not the server's record");
    // the server's own record of that connection
    let f = flow("prod/api-2 10.0.1.3:8080 < 10.0.1.1:40000", None);
    let class = classify(&["db-deny"], &f);
    agg.add(&Report { class: &class, remote_ip: Some(f.remote_ip), side: Side::Server, bytes: 9, now: 2 }, &|p| {
        api(&p.1)
    });
    let [ingress] = &find(&agg, GapKind::UnprotectedPod, "api", Direction::Ingress)[..] else { panic!("{agg:?}") };
    let peers: Vec<_> = ingress.peers.iter().map(|p| (p.peer.clone(), p.port)).collect();
    assert_eq!(peers, [(PeerDesc::Workload(deploy("web")), 8080)]);
    assert_eq!(find(&agg, GapKind::UncoveredEgress, "web", Direction::Egress)[0].flows, 1, "egress still once");
    // without workloads each backend pod stands for itself
    let mut agg = GapAggregator::default();
    let f = flow("prod/web 10.0.1.1:40000 > 10.96.0.10:80", None);
    let class = classify(&[], &f);
    agg.add(&Report { class: &class, remote_ip: None, side: Side::Client, bytes: 1, now: 1 }, &|_| None);
    let mut got: Vec<_> = find(&agg, GapKind::UncoveredEgress, "web", Direction::Egress)
        .into_iter()
        .map(|g| (g.peer.canonical(), g.port))
        .collect();
    got.sort();
    assert_eq!(got, [("workload:prod/Pod/api".to_owned(), 8080), ("workload:prod/Pod/api-2".to_owned(), 8080)]);
}

#[test]
fn each_record_counts_for_its_own_side_only() {
    let mut agg = GapAggregator::default();
    // one connection web -> db, reported by both agents
    add_side(&mut agg, &["db-deny", "web-deny"], WEB_DB, Side::Client, 7, 1, None);
    add_side(&mut agg, &["db-deny", "web-deny"], "prod/db 10.0.1.4:5432 < 10.0.1.1:40000", Side::Server, 7, 1, None);
    let [egress] = &find(&agg, GapKind::EnforcementGap, "web", Direction::Egress)[..] else { panic!("{agg:?}") };
    let [ingress] = &find(&agg, GapKind::EnforcementGap, "db", Direction::Ingress)[..] else { panic!("{agg:?}") };
    assert_eq!((egress.flows, egress.bytes, ingress.flows, ingress.bytes), (1, 7, 1, 7));
    assert_eq!((ingress.peer.clone(), ingress.port), (PeerDesc::Workload(deploy("web")), 5432));
}

#[test]
fn enforcement_gaps_both_directions() {
    let mut agg = GapAggregator::default();
    add(&mut agg, &["db-deny", "web-deny"], WEB_DB, None, 7, 1);
    let [egress] = &find(&agg, GapKind::EnforcementGap, "web", Direction::Egress)[..] else { panic!("{agg:?}") };
    assert_eq!((egress.peer.clone(), egress.port, egress.protocol), (PeerDesc::Workload(deploy("db")), 5432, 6));
    assert_eq!(egress.policies, [("prod".to_owned(), "web-deny".to_owned())]);
    let [ingress] = &find(&agg, GapKind::EnforcementGap, "db", Direction::Ingress)[..] else { panic!() };
    assert_eq!((ingress.peer.clone(), ingress.bytes), (PeerDesc::Workload(deploy("web")), 7));
    assert_eq!(ingress.policies, [("prod".to_owned(), "db-deny".to_owned())]);
    // An external client denied at the server is named by its address.
    let mut agg = GapAggregator::default();
    add(&mut agg, &["db-deny"], "prod/db 10.0.1.4:5432 < 203.0.113.5:50000", None, 1, 1);
    let [gap] = &find(&agg, GapKind::EnforcementGap, "db", Direction::Ingress)[..] else { panic!("{agg:?}") };
    assert_eq!(gap.peer, PeerDesc::Cidr { network: "203.0.113.5".parse().unwrap(), prefix: 32 });
}

#[test]
fn ids_are_stable_and_distinct() {
    let run = |order: &[&str]| {
        let mut agg = GapAggregator::default();
        for spec in order {
            add(&mut agg, &["db-deny"], spec, None, 1, 1);
        }
        let mut ids: Vec<(String, GapKind, String)> =
            agg.entries().map(|g| (g.id.clone(), g.kind, g.workload.name.clone())).collect();
        ids.sort();
        ids
    };
    let (a, b) = (run(&[WEB_API, WEB_DB, WEB_OUT]), run(&[WEB_OUT, WEB_DB, WEB_API]));
    assert_eq!(a, b);
    let mut unique: Vec<&String> = a.iter().map(|(id, ..)| id).collect();
    unique.dedup();
    assert_eq!(unique.len(), a.len());
    assert!(a.iter().all(|(id, ..)| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())));
    // FNV-1a test vectors: the hash never depends on the process.
    assert_eq!(stable_id(""), "cbf29ce484222325");
    assert_eq!(stable_id("a"), "af63dc4c8601ec8c");
}

#[test]
fn bounded_entries_count_drops_and_expire() {
    let mut agg = GapAggregator::new(GapConfig { max_entries: 2, ..GapConfig::default() });
    add(&mut agg, &["db-deny", "web-deny"], WEB_DB, None, 1, 100);
    assert_eq!((agg.len(), agg.dropped()), (2, 0));
    add(&mut agg, &["db-deny", "web-deny"], WEB_OUT, None, 1, 200);
    assert_eq!((agg.len(), agg.dropped()), (2, 1));
    // Existing entries still count flows when full.
    add(&mut agg, &["db-deny", "web-deny"], WEB_DB, None, 1, 300);
    assert!(agg.entries().all(|g| g.flows == 2 && g.last_seen == 300));
    assert_eq!(agg.expire(300), 0);
    assert_eq!(agg.expire(301), 2);
    assert!(agg.is_empty());
}

fn dest(ip: &str, port: u16) -> ExternalDest {
    ExternalDest::new(ip.parse().unwrap(), None, port)
}

#[test]
fn baseline_learns_then_alerts_once() {
    let mut b = Baseline::default();
    let web = deploy("web");
    assert_eq!(b.observe(&web, &dest("1.1.1.1", 443), 0), None);
    assert_eq!(b.observe(&web, &dest("2.2.2.2", 443), 23 * HOUR), None, "still learning");
    assert!(b.is_learning(&web, 23 * HOUR) && !b.is_learning(&web, 24 * HOUR));
    assert_eq!(b.observe(&web, &dest("2.2.2.2", 443), 25 * HOUR), None, "learned");
    let alert = b.observe(&web, &dest("3.3.3.3", 443), 25 * HOUR).expect("unexpected");
    assert_eq!(
        (alert.workload, alert.dest, alert.seen, alert.workload_first_seen),
        (web.clone(), dest("3.3.3.3", 443), 25 * HOUR, 0)
    );
    assert_eq!(b.observe(&web, &dest("3.3.3.3", 443), 26 * HOUR), None, "only once");
    assert!(b.observe(&web, &dest("3.3.3.3", 80), 26 * HOUR).is_some(), "another port is another destination");
    // Another workload has its own learning period.
    assert_eq!(b.observe(&deploy("api"), &dest("3.3.3.3", 443), 26 * HOUR), None);
    let short = BaselineConfig { learning_nanos: HOUR, ..BaselineConfig::default() };
    let mut b = Baseline::new(short);
    assert_eq!(b.observe(&web, &dest("1.1.1.1", 443), 0), None);
    assert!(b.observe(&web, &ExternalDest::new("1.1.1.1".parse().unwrap(), Some("One.One."), 443), HOUR).is_some());
    assert_eq!(b.observe(&web, &ExternalDest::Fqdn { name: "one.one".into(), port: 443 }, HOUR), None);
}

#[test]
fn baseline_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baseline.json");
    let web = deploy("web");
    let mut b = Baseline::load(&path).unwrap();
    assert_eq!(b.workload_count(), 0, "a missing file is a fresh start");
    b.observe(&web, &dest("1.1.1.1", 443), 0);
    b.observe(&web, &ExternalDest::new("9.9.9.9".parse().unwrap(), Some("dns.quad9.net"), 853), 1);
    b.save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["baseline.json"], "no temporary file left");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("\"version\":{FORMAT_VERSION}")), "{text}");

    let mut b = Baseline::load(&path).unwrap();
    assert_eq!(b.destinations(&web).count(), 2);
    // The learning period counts from the first observation before the restart.
    assert!(!b.is_learning(&web, 25 * HOUR));
    assert_eq!(b.observe(&web, &dest("1.1.1.1", 443), 25 * HOUR), None);
    assert!(b.observe(&web, &dest("4.4.4.4", 443), 25 * HOUR).is_some());
    b.save(&path).unwrap();
    let mut b = Baseline::load(&path).unwrap();
    assert_eq!(b.observe(&web, &dest("4.4.4.4", 443), 26 * HOUR), None, "not alerted again after a restart");
}

#[test]
fn corrupt_or_newer_baseline_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baseline.json");
    std::fs::write(&path, b"{\"version\": 1, \"workl").unwrap();
    let err = Baseline::load(&path).unwrap_err();
    assert!(matches!(err, BaselineError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    std::fs::write(&path, b"{\"version\": 99, \"whatever\": true}").unwrap();
    let err = Baseline::load(&path).unwrap_err();
    assert!(matches!(err, BaselineError::Version { found: 99, .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    let err = Baseline::default().save(&dir.path().join("missing/baseline.json")).unwrap_err();
    assert!(err.to_string().contains("missing/baseline.json"), "{err}");
}

#[test]
fn baseline_bounds_count_extras() {
    let config = BaselineConfig { learning_nanos: 0, max_workloads: 1, max_destinations: 2 };
    let mut b = Baseline::new(config);
    let web = deploy("web");
    assert!(b.observe(&web, &dest("1.1.1.1", 1), 0).is_some());
    assert!(b.observe(&web, &dest("1.1.1.1", 2), 0).is_some());
    assert_eq!(b.observe(&web, &dest("1.1.1.1", 3), 0), None, "full: neither learned nor reported");
    assert_eq!(b.observe(&web, &dest("1.1.1.1", 3), 0), None);
    assert_eq!(b.observe(&deploy("api"), &dest("1.1.1.1", 1), 0), None);
    assert_eq!((b.dropped_destinations(), b.dropped_workloads(), b.workload_count()), (2, 1, 1));
    assert!(b.forget(&web));
    assert_eq!(b.observe(&deploy("api"), &dest("1.1.1.1", 1), 0).map(|u| u.workload), Some(deploy("api")));
}

//! The detector behind a hub: flow records in, policy findings out.

use std::time::Duration;

use podlens_proto::v1 as pb;

use super::*;
use crate::{findings::FindingsFilter, hub::Hub};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: ops}}
- {apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDR: 10.0.0.0/24, podCIDRs: [10.0.0.0/24, "fd00::/64"]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-7d9f-abcde, namespace: shop, uid: u-web, labels: {app: web},
             ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f, uid: rs-web, controller: true}]}
  spec: {containers: [{name: web, image: nginx}]}
  status: {podIP: 10.0.0.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: api-0, namespace: shop, uid: u-api, labels: {app: api}}
  spec: {containers: [{name: api, image: api, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.0.0.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: ops, uid: u-debug, labels: {app: debug}}
  spec: {containers: [{name: sh, image: busybox}]}
  status: {podIP: 10.0.0.12}
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata: {name: web-7d9f, namespace: shop, uid: rs-web,
             ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: d-web, controller: true}]}
- apiVersion: v1
  kind: Service
  metadata: {name: api, namespace: shop}
  spec: {clusterIP: 10.96.0.11, ports: [{port: 80, targetPort: http}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: api-x1, namespace: shop, labels: {kubernetes.io/service-name: api}}
  addressType: IPv4
  ports: [{port: 8080}]
  endpoints: [{addresses: [10.0.0.11]}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: api-from-web, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: api}}
    ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]
"#;

fn state() -> ClusterState {
    let mut m = crate::cluster::manifests::Manifests::default();
    crate::cluster::manifests::parse_file("cluster.yaml", MANIFESTS, &mut m);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    ClusterState::from_manifests(&m)
}

fn flow(uid: &str, ns: &str, name: &str, local: (&str, u32), remote: (&str, u32), fqdn: &str) -> pb::Record {
    pb::Record {
        kind: Some(pb::record::Kind::Flow(pb::FlowRecord {
            local: Some(pb::Workload {
                cgroup_id: 1,
                cgroup_path: format!("/kubepods/pod{uid}"),
                kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                    uid: uid.into(),
                    namespace: ns.into(),
                    name: name.into(),
                    ..Default::default()
                })),
                unknown_layout: false,
            }),
            local_ip: local.0.into(),
            local_port: local.1,
            remote: Some(pb::Peer { ip: remote.0.into(), port: remote.1, fqdn: fqdn.into(), ..Default::default() }),
            protocol: 6,
            egress: Some(pb::FlowCounts { bytes: 100, packets: 1, ..Default::default() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn publish(hub: &Hub, seq: u64, records: Vec<pb::Record>) {
    let node = pb::NodeIdentity { name: "n1".into(), agent_epoch_unix_nano: 1, ..Default::default() };
    hub.publish(podlens_proto::compact::compact(node, seq, records));
}

fn kinds(r: &pb::FindingsResponse) -> Vec<(String, i32, String)> {
    let mut v: Vec<(String, i32, String)> = r
        .findings
        .iter()
        .filter_map(|nf| {
            let f = nf.finding.as_ref()?;
            let Some(pb::finding::Detail::PolicyGap(g)) = &f.detail else { return None };
            let w = g.workload.clone().unwrap_or_default();
            Some((
                format!("{}/{}/{}", w.namespace, w.kind, w.name),
                f.kind,
                format!("{} {} {}", g.direction, g.peer, g.port),
            ))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn flows_become_gap_and_unexpected_egress_findings_in_the_hub() {
    let hub = Hub::new(64);
    hub.set_policy_detector(PolicyDetector::new(state(), None).unwrap().with_learning(Duration::ZERO));
    let mut consumer = hub.subscribe(crate::filter::Filter::default(), 0).unwrap();
    publish(
        &hub,
        1,
        vec![
            // allowed by api-from-web on ingress; web's egress is not isolated
            flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40000), ("10.0.0.11", 8080), ""),
            // denied by api-from-web: an enforcement gap on api's ingress, from api's own record
            flow("u-debug", "ops", "debug", ("10.0.0.12", 40001), ("10.0.0.11", 8080), ""),
            flow("u-api", "shop", "api-0", ("10.0.0.11", 8080), ("10.0.0.12", 40001), ""),
            // external egress by name: uncovered, and unexpected (learning is off)
            flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40002), ("203.0.113.7", 443), "api.example.com"),
        ],
    );
    let r = hub.findings(&FindingsFilter::default(), 100);
    let k = kinds(&r);
    // consumers of Observe receive them too, from the "cluster" node
    let mut streamed = 0;
    while let Ok(Some((rec, origin))) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
        if let Some(pb::record::Kind::Finding(_)) = rec.kind {
            assert_eq!(origin.node, crate::hub::POLICY_NODE);
            streamed += 1;
        }
    }
    assert_eq!(streamed, r.findings.len(), "every finding also went to Observe consumers");
    let has = |w: &str, kind: pb::FindingKind, what: &str| {
        k.iter().any(|(a, b, c)| a == w && *b == kind as i32 && c.contains(what))
    };
    assert!(has("shop/Pod/api-0", pb::FindingKind::EnforcementGap, "ingress workload:ops/Pod/debug 8080"), "{k:#?}");
    assert!(has("ops/Pod/debug", pb::FindingKind::UncoveredEgress, "egress workload:shop/Pod/api-0 8080"), "{k:#?}");
    assert!(
        has("shop/Deployment/web", pb::FindingKind::UncoveredEgress, "443"),
        "owner through the ReplicaSet: {k:#?}"
    );
    assert!(has("shop/Deployment/web", pb::FindingKind::UnexpectedEgress, "api.example.com"), "{k:#?}");
    assert!(has("shop/Deployment/web", pb::FindingKind::UnprotectedPod, "egress"), "{k:#?}");
    let peers: Vec<String> = r
        .findings
        .iter()
        .filter_map(|nf| match nf.finding.as_ref()?.detail.as_ref()? {
            pb::finding::Detail::PolicyGap(g) if g.workload.as_ref()?.name == "web" && g.port == 0 => {
                Some(g.peers.clone())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert!(peers.iter().any(|p| p.contains("shop/Pod/api-0") && p.ends_with("8080/TCP")), "{peers:?}");
    assert!(peers.iter().any(|p| p.contains("api.example.com") && p.ends_with("443/TCP")), "{peers:?}");
    assert!(
        !k.iter().any(|(a, b, _)| a == "shop/Pod/api-0" && *b == pb::FindingKind::UnprotectedPod as i32),
        "api is isolated for ingress: {k:#?}"
    );
    let unexpected = k.iter().filter(|(_, b, _)| *b == pb::FindingKind::UnexpectedEgress as i32).count();
    // uncovered egress carries a policy allowing exactly what web did
    let suggestion = r
        .findings
        .iter()
        .filter_map(|nf| match nf.finding.as_ref()?.detail.as_ref()? {
            pb::finding::Detail::PolicyGap(g) if g.workload.as_ref()?.name == "web" && !g.suggestion.is_empty() => {
                Some(g.suggestion.clone())
            }
            _ => None,
        })
        .next()
        .expect("a suggestion for web");
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(&suggestion).unwrap();
    let mut m = crate::cluster::manifests::Manifests::default();
    crate::cluster::manifests::parse_file("cluster.yaml", MANIFESTS, &mut m);
    m.policies.push(policy);
    let (view, errors) = crate::policy::eval::ClusterView::new(&m.pods, &m.namespaces, &m.policies);
    assert!(errors.is_empty(), "{errors:?}");
    let web = view.pod("shop", "web-7d9f-abcde").unwrap();
    let to = |ip: &str, port: u16| crate::policy::eval::Connection {
        from: crate::policy::eval::Endpoint::Pod(web),
        to: view.endpoint(ip.parse().unwrap()),
        port,
        protocol: crate::policy::eval::Protocol::Tcp,
    };
    let egress = |c| crate::policy::eval::evaluate(&view, &c).egress.map(|d| d.permits());
    assert_eq!(egress(to("10.0.0.11", 8080)), Some(true), "{suggestion}");
    assert_eq!(egress(to("203.0.113.7", 443)), Some(true), "{suggestion}");
    assert_eq!(egress(to("203.0.113.8", 443)), Some(false), "nothing broader: {suggestion}");
    assert_eq!(egress(to("10.0.0.12", 8080)), Some(false), "nothing broader: {suggestion}");

    // the enforcement gap carries the minimal change to the policy that denies it
    let change = r
        .findings
        .iter()
        .find_map(|nf| {
            let f = nf.finding.as_ref()?;
            match f.detail.as_ref()? {
                pb::finding::Detail::PolicyGap(g) if f.kind == pb::FindingKind::EnforcementGap as i32 => {
                    Some(g.suggestion.clone())
                }
                _ => None,
            }
        })
        .expect("an enforcement gap");
    let changed: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(&change).unwrap();
    assert_eq!(changed.metadata.name.as_deref(), Some("api-from-web"), "{change}");
    let mut m = crate::cluster::manifests::Manifests::default();
    crate::cluster::manifests::parse_file("cluster.yaml", MANIFESTS, &mut m);
    m.policies = vec![changed];
    let (view, _) = crate::policy::eval::ClusterView::new(&m.pods, &m.namespaces, &m.policies);
    let into_api = |from: &str, port: u16| {
        let c = crate::policy::eval::Connection {
            from: view.endpoint(from.parse().unwrap()),
            to: crate::policy::eval::Endpoint::Pod(view.pod("shop", "api-0").unwrap()),
            port,
            protocol: crate::policy::eval::Protocol::Tcp,
        };
        crate::policy::eval::evaluate(&view, &c).ingress.map(|d| d.permits())
    };
    assert_eq!(into_api("10.0.0.12", 8080), Some(true), "debug now allowed: {change}");
    assert_eq!(into_api("10.0.0.10", 8080), Some(true), "web still allowed: {change}");
    assert_eq!(into_api("10.0.0.12", 9090), Some(false), "nothing broader: {change}");

    // the same destination again: not unexpected a second time, and only the
    // findings this traffic touched are emitted again
    let again = flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40002), ("203.0.113.7", 443), "api.example.com");
    hub.with_policy_detector(|d| {
        assert!(d.findings(now()).is_empty(), "nothing changed");
        d.observe(std::slice::from_ref(&again), &podlens_proto::compact::Tables::default(), now());
        let found = d.findings(now()).render();
        assert!(!found.iter().any(|f| f.kind == pb::FindingKind::UnexpectedEgress as i32), "reported once");
        let mut kinds: Vec<i32> = found.iter().map(|f| f.kind).collect();
        kinds.sort();
        let mut want = vec![pb::FindingKind::UncoveredEgress as i32, pb::FindingKind::UnprotectedPod as i32];
        want.sort();
        assert_eq!(kinds, want, "web's uncovered egress and unprotected pod only: {found:#?}");
        assert!(found.iter().all(|f| f.state == pb::FindingState::Ongoing as i32));
    });
    assert_eq!(unexpected, 1);
    let only_ns = FindingsFilter { namespaces: vec!["ops".into()], ..Default::default() };
    let r = hub.findings(&only_ns, 100);
    assert!(kinds(&r).iter().all(|(w, _, _)| w.starts_with("ops/")), "namespace filter on the workload: {r:#?}");
}

#[test]
fn service_flows_are_suggested_and_reported_at_the_backends() {
    let mut d = PolicyDetector::new(state(), None).unwrap();
    // web -> the api Service's ClusterIP at port 80 (the client's record)
    let mut rec = flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40000), ("10.96.0.11", 80), "");
    if let Some(pb::record::Kind::Flow(f)) = &mut rec.kind {
        f.initiator = pb::Initiator::Local as i32;
    }
    d.observe(&[rec], &podlens_proto::compact::Tables::default(), now());
    let found = d.findings(now()).render();
    let gaps: Vec<&pb::PolicyGap> = found
        .iter()
        .filter(|f| f.kind == pb::FindingKind::UncoveredEgress as i32)
        .filter_map(|f| match &f.detail {
            Some(pb::finding::Detail::PolicyGap(g)) => Some(g),
            _ => None,
        })
        .collect();
    let [gap] = gaps[..] else { panic!("{found:#?}") };
    assert_eq!((gap.peer.as_str(), gap.port), ("workload:shop/Pod/api-0", 8080), "the backend at its target port");
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(&gap.suggestion).unwrap();
    assert!(!gap.suggestion.contains("10.96.0.11"), "no ipBlock of the ClusterIP: {}", gap.suggestion);
    let mut m = crate::cluster::manifests::Manifests::default();
    crate::cluster::manifests::parse_file("cluster.yaml", MANIFESTS, &mut m);
    m.policies.push(policy);
    let (view, errors) = crate::policy::eval::ClusterView::new(&m.pods, &m.namespaces, &m.policies);
    assert!(errors.is_empty(), "{errors:?}");
    let egress = |ip: &str, port: u16| {
        let c = crate::policy::eval::Connection {
            from: crate::policy::eval::Endpoint::Pod(view.pod("shop", "web-7d9f-abcde").unwrap()),
            to: view.endpoint(ip.parse().unwrap()),
            port,
            protocol: crate::policy::eval::Protocol::Tcp,
        };
        crate::policy::eval::evaluate(&view, &c).egress.map(|d| d.permits())
    };
    assert_eq!(egress("10.0.0.11", 8080), Some(true), "what the CNI sees after DNAT: {}", gap.suggestion);
    assert_eq!(egress("10.0.0.11", 80), Some(false), "not the service port: {}", gap.suggestion);
    let stats = d.stats();
    assert_eq!((stats.gaps, stats.gaps_dropped, stats.observed_workloads), (2, 0, 1), "{stats:?}");
    // a day without traffic forgets them
    let later = now() + DEFAULT_RETENTION.as_nanos() as u64 + 1;
    assert!(d.findings(later).is_empty());
    assert_eq!((d.stats().gaps, d.stats().gaps_expired, d.stats().observed_workloads), (0, 2, 0));
}

#[test]
fn an_unknown_address_in_a_pod_network_is_not_external_egress() {
    let mut d = PolicyDetector::new(state(), None).unwrap().with_learning(Duration::ZERO);
    let records = [
        // a pod newer than the view
        flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40000), ("10.0.0.99", 443), ""),
        // the internet
        flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40001), ("203.0.113.9", 443), ""),
    ];
    d.observe(&records, &podlens_proto::compact::Tables::default(), now());
    let unexpected: Vec<String> = d
        .findings(now())
        .render()
        .into_iter()
        .filter(|f| f.kind == pb::FindingKind::UnexpectedEgress as i32)
        .map(|f| f.summary)
        .collect();
    assert_eq!(unexpected.len(), 1, "{unexpected:?}");
    assert!(unexpected[0].contains("203.0.113.9"), "{unexpected:?}");
    assert_eq!(d.stats().unknown_pod_addresses, 1);
    assert!(d.state().in_pod_network("fd00::5".parse().unwrap()));
}

/// A second node and a host-network pod on it: both have the node's address.
const HOST_NETWORK: &str = r#"
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  spec: {podCIDR: 10.0.1.0/24}
  status: {addresses: [{type: InternalIP, address: 192.168.1.20}, {type: Hostname, address: n2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: node-exporter-x1, namespace: ops, uid: u-exporter, labels: {app: node-exporter}}
  spec: {hostNetwork: true, nodeName: n2, containers: [{name: e, image: e, ports: [{containerPort: 9100}]}]}
  status: {podIP: 192.168.1.20, podIPs: [{ip: 192.168.1.20}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: api-1, namespace: shop, uid: u-api-1, labels: {app: api}}
  spec: {nodeName: n2, containers: [{name: api, image: api, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.0.1.5, hostIP: 192.168.1.20}
"#;

#[test]
fn node_addresses_are_not_external_egress_and_host_network_pods_are_left_out() {
    let mut m = crate::cluster::manifests::Manifests::default();
    crate::cluster::manifests::parse_file("cluster.yaml", &format!("{MANIFESTS}{HOST_NETWORK}"), &mut m);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let state = ClusterState::from_manifests(&m);
    let node_ip = "192.168.1.20".parse().unwrap();
    assert!(state.view.pod_by_ip(node_ip).is_none(), "the node's address names no host-network pod");
    assert!(state.view.pod("ops", "node-exporter-x1").is_some_and(|p| p.host_network()));
    let mut d = PolicyDetector::new(state, None).unwrap().with_learning(Duration::ZERO);
    let records = [
        // web scrapes the exporter on the node's address: a node, not the internet
        flow("u-web", "shop", "web-7d9f-abcde", ("10.0.0.10", 40000), ("192.168.1.20", 9100), ""),
        // the exporter's own record of it, and its egress to the internet: not policy's business
        flow("u-exporter", "ops", "node-exporter-x1", ("192.168.1.20", 9100), ("10.0.0.10", 40000), ""),
        flow("u-exporter", "ops", "node-exporter-x1", ("192.168.1.20", 40100), ("203.0.113.5", 443), ""),
        // the kubelet probing api-1, which api-from-web isolates: its own node, always allowed
        flow("u-api-1", "shop", "api-1", ("10.0.1.5", 8080), ("192.168.1.20", 51000), ""),
        // probes from the node's bridge address (some CNIs): in the pod network, no pod's, not judged
        flow("u-api-1", "shop", "api-1", ("10.0.1.5", 8080), ("10.0.1.1", 51002), ""),
    ];
    d.observe(&records, &podlens_proto::compact::Tables::default(), now());
    let findings = d.findings(now()).render();
    let of = |kind: pb::FindingKind| findings.iter().filter(move |f| f.kind == kind as i32);
    assert_eq!(of(pb::FindingKind::UnexpectedEgress).count(), 0, "{findings:#?}");
    assert!(
        of(pb::FindingKind::UncoveredEgress).any(|f| f.summary.contains("192.168.1.20")),
        "web's egress to the node is still uncovered egress: {findings:#?}"
    );
    assert!(!findings.iter().any(|f| f.summary.contains("node-exporter")), "{findings:#?}");
    assert_eq!(of(pb::FindingKind::EnforcementGap).count(), 0, "the kubelet's probe is no gap: {findings:#?}");
    let stats = d.stats();
    assert_eq!((stats.node_address_flows, stats.host_network_records, stats.unknown_pod_addresses), (1, 2, 1));
}

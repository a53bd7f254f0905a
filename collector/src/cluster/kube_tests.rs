//! The API watchers against a mocked API server (tower-test): each watcher sends its own list and watch
//! requests, so the mock routes by URL path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::watcher::Event;
use kube::Client;
use serde_json::{json, Value};

use super::kube::{KubeCluster, KubeMode, ModeError, Store};
use super::manifests::Manifests;
use crate::hub::Hub;
use crate::policy::watch_kube;

/// (path, Accept header) of every request the mock saw.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A mocked API server: a list request gets `lists[path]` (an empty list when absent; `null` leaves it
/// unanswered), the first watch request on a path gets `watches[path]` as watch events, and every
/// other watch is left open so the watcher waits instead of re-watching in a loop.
fn mock(lists: Vec<(&str, Value)>, watches: Vec<(&str, Vec<Value>)>) -> (Client, Seen) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut lists: HashMap<String, Value> = lists.into_iter().map(|(p, v)| (p.to_string(), v)).collect();
    let mut watches: HashMap<String, Vec<Value>> = watches.into_iter().map(|(p, v)| (p.to_string(), v)).collect();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let accept = req.headers().get("accept").and_then(|a| a.to_str().ok()).unwrap_or_default().to_string();
            log.lock().unwrap().push((path.clone(), accept));
            let body = if req.uri().query().unwrap_or_default().contains("watch=true") {
                watches.remove(&path).map(|events| {
                    events.iter().flat_map(|e| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()]).flatten().collect()
                })
            } else {
                match lists.remove(&path).unwrap_or_else(|| list("v1", "List", vec![])) {
                    Value::Null => None,
                    list => Some(serde_json::to_vec(&list).unwrap()),
                }
            };
            match body {
                Some(body) => send.send_response(Response::new(Body::from(body))),
                None => held.push(send),
            }
        }
    });
    (Client::new(service, "default"), seen)
}

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items})
}

fn meta(namespace: &str, name: &str) -> Value {
    json!({"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "resourceVersion": "9"})
}

fn pod(namespace: &str, name: &str) -> Value {
    json!({"metadata": meta(namespace, name), "spec": {"containers": [{"name": "c"}]}})
}

async fn until(cluster: &KubeCluster, done: impl Fn(&Manifests) -> bool) -> Manifests {
    for _ in 0..500 {
        if cluster.synced() && done(&cluster.snapshot()) {
            return cluster.snapshot();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out; unsynced {:?}, snapshot {:?}", cluster.unsynced(), cluster.snapshot());
}

fn names<T: kube::Resource>(objects: &[T]) -> Vec<String> {
    objects.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect()
}

#[tokio::test]
async fn cluster_snapshot_holds_listed_pods_namespaces_and_policies() {
    let mut web = pod("shop", "web");
    web["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
    let policy = json!({"metadata": meta("shop", "deny-all"), "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let (client, _) = mock(
        vec![
            ("/api/v1/pods", list("v1", "PodList", vec![web, pod("shop", "db")])),
            ("/api/v1/namespaces", list("v1", "NamespaceList", vec![json!({"metadata": {"name": "shop"}})])),
            (
                "/apis/networking.k8s.io/v1/networkpolicies",
                list("networking.k8s.io/v1", "NetworkPolicyList", vec![policy]),
            ),
        ],
        vec![],
    );
    let cluster = KubeCluster::start(client);
    let m = until(&cluster, |m| !m.pods.is_empty()).await;
    assert_eq!(names(&m.pods), ["db", "web"]);
    assert_eq!(names(&m.namespaces), ["shop"]);
    assert_eq!(names(&m.policies), ["deny-all"]);
    assert!(m.pods.iter().all(|p| p.metadata.managed_fields.is_none()), "managedFields are dropped");
    let state = crate::policy::detector::ClusterState::from_manifests(&m);
    assert!(state.errors.is_empty(), "{:?}", state.errors);
    assert_eq!(state.pods.len(), 2);
}

#[tokio::test]
async fn cluster_delete_event_removes_the_object() {
    let deleted = json!({"type": "DELETED", "object": {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "11"},
        "spec": {"containers": [{"name": "c"}]}
    }});
    let (client, _) = mock(
        vec![("/api/v1/pods", list("v1", "PodList", vec![pod("shop", "web"), pod("shop", "db")]))],
        vec![("/api/v1/pods", vec![deleted])],
    );
    let cluster = KubeCluster::start(client);
    // db was listed, so a single pod left means the DELETED event was applied
    let m = until(&cluster, |m| m.pods.len() == 1).await;
    assert_eq!(names(&m.pods), ["web"]);
}

#[tokio::test]
async fn cluster_owner_replicaset_comes_from_the_metadata_watch_with_its_owner_references() {
    let mut rs_meta = meta("shop", "web-5d8");
    rs_meta["labels"] = json!({"app": "web"});
    rs_meta["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-web", "controller": true}]);
    let item = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": rs_meta});
    let (client, seen) = mock(
        vec![("/apis/apps/v1/replicasets", list("meta.k8s.io/v1", "PartialObjectMetadataList", vec![item]))],
        vec![],
    );
    let cluster = KubeCluster::start(client);
    let m = until(&cluster, |m| !m.owners.is_empty()).await;
    let [rs] = m.owners.as_slice() else { panic!("{:?}", m.owners) };
    assert_eq!((rs.api_version.as_str(), rs.kind.as_str()), ("apps/v1", "ReplicaSet"));
    assert_eq!((rs.namespace.as_str(), rs.name.as_str(), rs.uid.as_deref()), ("shop", "web-5d8", Some("uid-web-5d8")));
    assert_eq!(rs.labels.get("app").map(String::as_str), Some("web"));
    let [owner] = rs.owner_references.as_slice() else { panic!("{:?}", rs.owner_references) };
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Deployment", "web", Some(true)));
    // every owner kind is asked for metadata only, so no spec ever reaches the collector
    let seen = seen.lock().unwrap();
    for path in ["/apis/apps/v1/replicasets", "/apis/apps/v1/deployments", "/apis/batch/v1/cronjobs"] {
        let (_, accept) = seen.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("no request to {path}"));
        assert!(accept.contains("as=PartialObjectMetadataList"), "{path}: {accept}");
    }
}

#[test]
fn cluster_relist_replaces_the_set_only_when_done() {
    let pod = |name: &str| Pod { metadata: serde_json::from_value(meta("shop", name)).unwrap(), ..Pod::default() };
    let mut store = Store::default();
    let keep = |p: Pod| p;
    store.apply(Event::Init, keep);
    store.apply(Event::InitApply(pod("a")), keep);
    assert!(store.apply(Event::InitDone, keep));
    assert!(store.apply(Event::Apply(pod("b")), keep));
    store.apply(Event::Init, keep);
    store.apply(Event::InitApply(pod("c")), keep);
    // mid-relist the previous set is still what a snapshot sees
    assert_eq!(store.all().len(), 2);
    store.apply(Event::InitDone, keep);
    assert_eq!(names(&store.all()), ["c"]);
    assert!(store.apply(Event::Delete(pod("c")), keep));
    assert!(!store.apply(Event::Delete(pod("c")), keep), "deleting what is gone changes nothing");
    assert!(store.all().is_empty());
}

#[test]
fn cluster_kube_mode_picks_the_source() {
    assert_eq!(KubeMode::Auto.use_api(false, true), Ok(true));
    assert_eq!(KubeMode::Auto.use_api(true, true), Ok(false), "an explicit --manifests wins over auto");
    assert_eq!(KubeMode::Auto.use_api(false, false), Ok(false), "not in a cluster");
    assert_eq!(KubeMode::On.use_api(false, false), Ok(true));
    assert_eq!(KubeMode::On.use_api(true, true), Err(ModeError::BothSources));
    assert_eq!(KubeMode::Off.use_api(false, true), Ok(false));
    let message = ModeError::BothSources.to_string();
    assert!(message.contains("--manifests") && message.contains("--kube on"), "{message}");
}

#[tokio::test]
async fn cluster_run_installs_the_detector_only_after_every_kind_is_listed() {
    let pods = ("/api/v1/pods", list("v1", "PodList", vec![pod("shop", "web")]));
    let hub = Arc::new(Hub::new(16));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);

    // CronJobs never answer: no detector, as a partial view would report unlisted pods as unprotected
    let (client, _) = mock(vec![pods.clone(), ("/apis/batch/v1/cronjobs", Value::Null)], vec![]);
    let detector = watch_kube::prepare(None, Duration::from_secs(3600), Duration::from_secs(3600)).unwrap();
    let task = tokio::spawn(watch_kube::run(hub.clone(), client, detector, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.with_policy_detector(|_| ()).is_none());
    task.abort();

    let (client, _) = mock(vec![pods], vec![]);
    let detector = watch_kube::prepare(None, Duration::from_secs(3600), Duration::from_secs(3600)).unwrap();
    let task = tokio::spawn(watch_kube::run(hub.clone(), client, detector, stop));
    for _ in 0..500 {
        if hub.with_policy_detector(|d| d.state().pods.len()) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hub.with_policy_detector(|d| d.state().pods.len()), Some(1));
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("run stops").unwrap();
}

#[test]
fn slim_pods_and_nodes_keep_what_the_policy_view_reads() {
    use k8s_openapi::api::core::v1::Node;

    use super::kube::{slim_node, slim_pod};
    use crate::policy::{
        eval::{evaluate, Connection, Decision, Endpoint, Exemption, Protocol},
        state::ClusterState,
    };

    let full: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api-0", "namespace": "shop", "uid": "u-api", "labels": {"app": "api"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "api", "uid": "s1",
                "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]},
        "spec": {"nodeName": "n1",
            "containers": [{"name": "api", "image": "api:1", "args": ["--serve"],
                "env": [{"name": "TOKEN", "value": "y".repeat(2000)}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}],
            "initContainers": [{"name": "metrics", "image": "m:1", "restartPolicy": "Always",
                "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.11", "podIPs": [{"ip": "10.0.0.11"}, {"ip": "fd00::11"}],
            "hostIP": "fd99::10", "hostIPs": [{"ip": "fd99::10"}], "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "api", "image": "api:1", "imageID": "sha256:abc", "ready": true,
                "restartCount": 0}]}
    }))
    .unwrap();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.33.1", "kernelVersion": "6.18.0", "osImage": "Debian",
                "containerRuntimeVersion": "containerd://2.1", "architecture": "amd64", "bootID": "b",
                "machineID": "m", "systemUUID": "s", "kubeProxyVersion": "", "operatingSystem": "linux"},
            "images": (0..20).map(|i| json!({"names": [format!("registry/image-{i}@sha256:{}", "0".repeat(64))],
                "sizeBytes": 1_000_000})).collect::<Vec<_>>()}
    }))
    .unwrap();
    let slim = slim_pod(full.clone());
    assert!(json_len(&slim) * 4 < json_len(&full), "slim pod {} bytes, full {}", json_len(&slim), json_len(&full));
    assert!(json_len(&slim_node(node.clone())) * 2 < json_len(&node));

    // What the detector reads is the same either way.
    let read = |pod: Pod, node: Node| {
        let mut m = Manifests::default();
        m.pods = vec![pod];
        m.nodes = vec![node];
        m.policies = vec![serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}))
        .unwrap()];
        let state = ClusterState::from_manifests(&m);
        // fd99::10 is only in the pod's status.hostIPs, 192.168.1.10 only in the node's addresses
        let own_node = |from: &str| {
            let to = state.view.pod("shop", "api-0").expect("api-0");
            let c = Connection {
                from: Endpoint::External(from.parse().unwrap()),
                to: Endpoint::Pod(to),
                port: 8080,
                protocol: Protocol::Tcp,
            };
            evaluate(&state.view, &c).ingress
        };
        let p = state.view.pod_by_ip("fd00::11".parse().unwrap()).expect("found by address");
        (
            (p.namespace().to_string(), p.name().to_string(), p.labels().clone(), p.ips().to_vec()),
            (p.container_ports().to_vec(), p.declares(9090, Protocol::Tcp), p.host_network()),
            state.workload(&("shop".into(), "api-0".into())).map(|w| (w.kind, w.name)),
            (
                state.in_pod_network("10.0.0.99".parse().unwrap()),
                state.is_node_address("192.168.1.10".parse().unwrap()),
            ),
            (own_node("fd99::10"), own_node("192.168.1.10")),
        )
    };
    let from_full = read(full, node.clone());
    assert_eq!(read(slim, slim_node(node)), from_full);
    assert_eq!(from_full.1 .0.len(), 2, "named ports of containers and init containers: {from_full:?}");
    assert_eq!(from_full.2, Some(("StatefulSet".to_string(), "api".to_string())));
    assert_eq!(from_full.3, (true, true));
    let exempt = Some(Decision::Exempt(Exemption::OwnNode));
    assert_eq!(from_full.4, (exempt.clone(), exempt));
}

/// Serialized size of an API object.
fn json_len(v: &impl serde::Serialize) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

//! Pod metadata from the Kubernetes API: a watch on the pods of this node only
//! (field selector spec.nodeName), so the agent's RBAC and memory stay per node.

use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio::sync::watch;

use crate::identity::{k8s::pod_meta, pods::PodMeta, SharedPods};

/// Watches this node's pods into `pods` until `shutdown` flips. `synced` turns
/// true after the first complete list. Errors are retried with kube's default
/// backoff and logged; they never stop the agent.
pub async fn run_watch(
    client: Client,
    node: String,
    pods: SharedPods,
    synced: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer: Vec<PodMeta> = Vec::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => return,
            e = stream.try_next() => e,
        };
        match event {
            Ok(Some(event)) => apply(&pods, &mut buffer, event, &synced),
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, node = %node, "pod watch error; retrying"),
        }
    }
}

fn convert(pod: &Pod) -> Option<PodMeta> {
    match pod_meta(pod) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring pod from the API");
            None
        }
    }
}

fn apply(pods: &SharedPods, buffer: &mut Vec<PodMeta>, event: watcher::Event<Pod>, synced: &watch::Sender<bool>) {
    let now = SystemTime::now();
    let mut store = pods.write().unwrap_or_else(|e| e.into_inner());
    match event {
        watcher::Event::Init => buffer.clear(),
        watcher::Event::InitApply(p) => buffer.extend(convert(&p)),
        watcher::Event::InitDone => {
            store.replace_all(std::mem::take(buffer), now);
            synced.send_replace(true);
            tracing::info!(pods = store.len(), "pod metadata synced from the API");
        }
        watcher::Event::Apply(p) => {
            if let Some(m) = convert(&p) {
                store.upsert(m);
            }
        }
        watcher::Event::Delete(p) => {
            if let Some(uid) = p.metadata.uid.as_deref() {
                store.delete(uid, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, RwLock},
        time::Duration,
    };

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::identity::pods::PodStore;

    /// The watch lists with the node's field selector, fills the store and
    /// reports synced; a later watch event adds a pod.
    #[tokio::test]
    async fn watch_lists_this_nodes_pods_into_the_store() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let pods: SharedPods = Arc::new(RwLock::new(PodStore::new(Duration::from_secs(60))));
        let (synced_tx, mut synced_rx) = watch::channel(false);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_watch(client, "node-1".into(), pods.clone(), synced_tx, stop_rx));

        let (req, send) = handle.next_request().await.expect("list request");
        let query = req.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{query}");
        assert_eq!(req.uri().path(), "/api/v1/pods");
        let list = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
            "items": [{
                "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "9"},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
                "status": {"podIP": "10.1.0.5"}
            }]
        });
        send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));

        synced_rx.wait_for(|s| *s).await.unwrap();
        assert_eq!(pods.read().unwrap().get("u1").map(|p| p.name.clone()), Some("web".into()));

        let (req, send) = handle.next_request().await.expect("watch request");
        assert!(req.uri().query().unwrap_or_default().contains("watch=true"));
        let event = serde_json::json!({"type": "ADDED", "object": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db", "namespace": "shop", "uid": "u2", "resourceVersion": "11"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]}
        }});
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        send.send_response(Response::new(Body::from(line)));
        for _ in 0..100 {
            if pods.read().unwrap().get("u2").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pods.read().unwrap().get("u2").map(|p| p.name.clone()), Some("db".into()));
        task.abort();
    }
}

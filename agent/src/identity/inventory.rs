//! Pods from a file in the form `kubectl get pods -A -o yaml` prints (a List),
//! also accepting single Pod documents, PodLists, JSON and multi-document YAML.
//! A bad item is reported with its document and item index and skipped; the
//! rest of the file still loads.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use crate::identity::{k8s::pod_meta, pods::PodMeta};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read pod inventory {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("pod inventory {path}, document {doc}: not YAML/JSON: {message}")]
    Syntax { path: PathBuf, doc: usize, message: String },
}

/// A problem with one item; the item is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub doc: usize,
    pub item: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.item {
            Some(i) => write!(f, "document {}, items[{i}]: {}", self.doc, self.message),
            None => write!(f, "document {}: {}", self.doc, self.message),
        }
    }
}

#[derive(Debug, Default)]
pub struct Inventory {
    pub pods: Vec<PodMeta>,
    pub errors: Vec<ItemError>,
}

pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| InventoryError::Read { path: path.to_path_buf(), source })?;
    parse(&text).map_err(|(doc, message)| InventoryError::Syntax { path: path.to_path_buf(), doc, message })
}

/// Parses inventory text. `Err((doc, message))` only when a document is not YAML at all.
pub fn parse(text: &str) -> Result<Inventory, (usize, String)> {
    let mut inv = Inventory::default();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| (doc, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "List" | "PodList" => {
                let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
                for (i, item) in items.into_iter().enumerate() {
                    add_pod(&mut inv, item, doc, Some(i));
                }
            }
            "Pod" => add_pod(&mut inv, value, doc, None),
            other => inv.errors.push(ItemError {
                doc,
                item: None,
                message: format!("kind {other:?} is not Pod, PodList or List"),
            }),
        }
    }
    Ok(inv)
}

fn add_pod(inv: &mut Inventory, value: serde_yaml::Value, doc: usize, item: Option<usize>) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("Pod").to_string();
    if kind != "Pod" {
        inv.errors.push(ItemError { doc, item, message: format!("kind {kind:?} is not Pod") });
        return;
    }
    let name =
        value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("<unnamed>").to_string();
    let result = serde_yaml::from_value::<Pod>(value)
        .map_err(|e| format!("pod {name}: {e}"))
        .and_then(|pod| pod_meta(&pod).map_err(|e| format!("pod {name}: {e}")));
    match result {
        Ok(meta) => inv.pods.push(meta),
        Err(message) => inv.errors.push(ItemError { doc, item, message }),
    }
}

/// Loads the inventory into `pods` now, then again whenever the file changes
/// (checked every `every`), until `shutdown` flips. A reload that fails keeps
/// the previous pods and logs the error.
pub async fn watch(
    path: PathBuf,
    pods: crate::identity::SharedPods,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = stamp(&path);
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        if let Err(e) = reload(&path, &pods) {
            tracing::warn!(error = %e, "pod inventory reload failed; keeping the previous pods");
        }
    }
}

/// Loads the file into the store, replacing what was there.
pub fn reload(path: &Path, pods: &crate::identity::SharedPods) -> Result<usize, InventoryError> {
    let inv = load(path)?;
    for e in &inv.errors {
        tracing::warn!(file = %path.display(), error = %e, "skipping pod inventory item");
    }
    let n = inv.pods.len();
    pods.write().unwrap_or_else(|e| e.into_inner()).replace_all(inv.pods, std::time::SystemTime::now());
    tracing::info!(file = %path.display(), pods = n, skipped = inv.errors.len(), "pod inventory loaded");
    Ok(n)
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ContainerRuntime, QosClass};

    const LIST: &str = r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-7d4b9c
    namespace: shop
    uid: 3f1b5d0e-8a2c-4f6e-9b7d-1c2e3f4a5b6c
    creationTimestamp: "2026-11-20T10:00:00Z"
    labels:
      app: web
  spec:
    nodeName: node-1
    containers:
    - name: web
      image: nginx
  status:
    qosClass: Burstable
    podIP: 10.244.1.7
    podIPs:
    - ip: 10.244.1.7
    - ip: fd00:10:244:1::7
    containerStatuses:
    - name: web
      containerID: containerd://0F5E6D7C8B9A
      image: nginx
      imageID: ""
      ready: true
      restartCount: 0
- apiVersion: v1
  kind: Pod
  metadata:
    name: db-0
    namespace: shop
    uid: 11111111-2222-3333-4444-555555555555
  spec:
    hostNetwork: true
    containers:
    - name: db
  status:
    podIP: 192.168.1.10
"#;

    #[test]
    fn parses_kubectl_list() {
        let inv = parse(LIST).unwrap();
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        assert_eq!(inv.pods.len(), 2);
        let web = &inv.pods[0];
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web-7d4b9c"));
        assert_eq!(web.uid, "3f1b5d0e-8a2c-4f6e-9b7d-1c2e3f4a5b6c");
        assert_eq!(
            web.ips,
            vec!["10.244.1.7".parse::<std::net::IpAddr>().unwrap(), "fd00:10:244:1::7".parse().unwrap()]
        );
        assert_eq!(web.qos, QosClass::Burstable);
        assert_eq!(web.containers.len(), 1);
        assert_eq!(web.containers[0].id, "0f5e6d7c8b9a");
        assert_eq!(web.containers[0].runtime, ContainerRuntime::Containerd);
        assert!(web.created.is_some());
        assert!(inv.pods[1].host_network);
    }

    #[test]
    fn bad_items_are_reported_and_skipped() {
        let text = r#"
kind: List
items:
- kind: Pod
  metadata: {name: no-uid, namespace: a}
- kind: Pod
  metadata: {name: bad-ip, namespace: a, uid: u1}
  status: {podIP: "10.0.0.300"}
- kind: Pod
  metadata: {name: ok, namespace: a, uid: u2}
- kind: Service
  metadata: {name: svc}
- kind: Pod
  metadata: {name: wrong-type, uid: u3, labels: [1, 2]}
"#;
        let inv = parse(text).unwrap();
        assert_eq!(inv.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["ok"]);
        let msgs: Vec<String> = inv.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(msgs[0].contains("items[0]") && msgs[0].contains("no-uid") && msgs[0].contains("uid"), "{msgs:?}");
        assert!(msgs[1].contains("items[1]") && msgs[1].contains("10.0.0.300"), "{msgs:?}");
        assert!(msgs[2].contains("items[3]") && msgs[2].contains("Service"), "{msgs:?}");
        assert!(msgs[3].contains("items[4]") && msgs[3].contains("wrong-type"), "{msgs:?}");
    }

    #[test]
    fn multi_document_and_json_are_accepted() {
        let text = "kind: Pod\nmetadata: {name: a, uid: u1}\n---\n{\"kind\": \"Pod\", \"metadata\": {\"name\": \"b\", \"uid\": \"u2\"}}\n";
        let inv = parse(text).unwrap();
        assert_eq!(inv.pods.len(), 2);
        assert_eq!(inv.pods[0].namespace, "default");
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let (doc, msg) = parse("kind: Pod\n---\nkind: [unclosed\n").unwrap_err();
        assert_eq!(doc, 1);
        assert!(!msg.is_empty());
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = load(Path::new("/no/such/pods.yaml")).unwrap_err().to_string();
        assert!(err.contains("/no/such/pods.yaml"), "{err}");
    }
}

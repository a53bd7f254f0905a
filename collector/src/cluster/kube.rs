//! Cluster state from the Kubernetes API: one cluster-wide watcher per kind that the policy detector
//! reads, kept in memory and turned into a [`Manifests`] snapshot on demand, so the same
//! `ClusterState::from_manifests` serves both the GitOps directory and a live cluster.
//!
//! Workload owners are watched metadata-only (`Api<PartialObjectMeta<K>>`): owner resolution needs
//! names, labels and ownerReferences, and holding every Deployment's and Job's spec would cost memory
//! for nothing.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::manifests::{Manifests, OwnerObject};

/// Whether the collector reads cluster state from the Kubernetes API (`--kube`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// Use the API when running in a cluster (KUBERNETES_SERVICE_HOST set) and no --manifests is given.
    Auto,
    On,
    Off,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("--manifests and --kube on cannot be used together: pick one source of cluster state")]
    BothSources,
}

impl KubeMode {
    /// Whether to watch the API, given whether --manifests was given and whether the process runs in a
    /// cluster. A directory given explicitly wins over `auto`, since the operator asked for it.
    pub fn use_api(self, manifests_given: bool, in_cluster: bool) -> Result<bool, ModeError> {
        match (self, manifests_given) {
            (KubeMode::On, true) => Err(ModeError::BothSources),
            (KubeMode::On, false) => Ok(true),
            (KubeMode::Off, _) => Ok(false),
            (KubeMode::Auto, given) => Ok(in_cluster && !given),
        }
    }
}

/// One kind's objects keyed `namespace/name` (`name` when cluster-scoped).
#[derive(Debug)]
pub(super) struct Store<T> {
    objects: BTreeMap<String, T>,
    /// The relist in progress: between Init and InitDone the previous set stays visible, so a
    /// snapshot never sees a half-listed kind (which would look like deleted pods or policies).
    pending: Option<BTreeMap<String, T>>,
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store { objects: BTreeMap::new(), pending: None, synced: false }
    }
}

impl<T: Clone> Store<T> {
    pub(super) fn all(&self) -> Vec<T> {
        self.objects.values().cloned().collect()
    }
}

impl<T> Store<T> {
    /// Applies one watcher event; true when the visible set may have changed.
    pub(super) fn apply<K: Resource>(&mut self, event: watcher::Event<K>, convert: fn(K) -> T) -> bool {
        match event {
            watcher::Event::Init => {
                self.pending = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                let key = key(object.meta());
                // An InitApply without Init is not produced by kube's watcher; buffering it anyway keeps
                // the invariant that only InitDone swaps sets.
                self.pending.get_or_insert_with(BTreeMap::new).insert(key, convert(object));
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.pending.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(object) => {
                self.objects.insert(key(object.meta()), convert(object));
                true
            }
            watcher::Event::Delete(object) => self.objects.remove(&key(object.meta())).is_some(),
        }
    }
}

fn key(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
        _ => name.to_string(),
    }
}

#[derive(Debug, Default)]
struct Stores {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    policies: Store<NetworkPolicy>,
    /// One store per owner kind, in [`OWNER_KINDS`] order: each kind relists on its own.
    owners: [Store<OwnerObject>; OWNER_KINDS.len()],
}

impl Stores {
    fn unsynced(&self) -> Vec<&'static str> {
        let kinds = [
            ("Pod", self.pods.synced),
            ("Namespace", self.namespaces.synced),
            ("Service", self.services.synced),
            ("EndpointSlice", self.endpoint_slices.synced),
            ("Node", self.nodes.synced),
            ("NetworkPolicy", self.policies.synced),
        ];
        let owners = OWNER_KINDS.iter().zip(&self.owners).map(|(kind, store)| (*kind, store.synced));
        kinds.into_iter().chain(owners).filter(|(_, synced)| !synced).map(|(kind, _)| kind).collect()
    }
}

const OWNER_KINDS: [&str; 6] = ["ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"];

struct Shared {
    stores: Mutex<Stores>,
    /// Bumped after every event that may have changed a snapshot (InitDone included, so a waiter also
    /// learns about sync progress).
    changed: watch::Sender<()>,
}

/// Live cluster state from the API. Dropping it stops the watchers.
pub struct KubeCluster {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeCluster {
    /// Starts the watchers (cluster-wide, retried with kube's default backoff; errors are logged, never
    /// fatal, because RBAC or the API server may be fixed while the collector runs).
    pub fn start(client: Client) -> Self {
        let shared = Arc::new(Shared { stores: Mutex::new(Stores::default()), changed: watch::channel(()).0 });
        let c = || client.clone();
        let tasks = vec![
            spawn::<Pod, _>(&shared, c(), |s| &mut s.pods, slim_pod),
            spawn::<Namespace, _>(&shared, c(), |s| &mut s.namespaces, slim),
            spawn::<Service, _>(&shared, c(), |s| &mut s.services, slim),
            spawn::<EndpointSlice, _>(&shared, c(), |s| &mut s.endpoint_slices, slim),
            spawn::<Node, _>(&shared, c(), |s| &mut s.nodes, slim_node),
            spawn::<NetworkPolicy, _>(&shared, c(), |s| &mut s.policies, slim),
            spawn::<PartialObjectMeta<ReplicaSet>, _>(&shared, c(), |s| &mut s.owners[0], owner),
            spawn::<PartialObjectMeta<Deployment>, _>(&shared, c(), |s| &mut s.owners[1], owner),
            spawn::<PartialObjectMeta<StatefulSet>, _>(&shared, c(), |s| &mut s.owners[2], owner),
            spawn::<PartialObjectMeta<DaemonSet>, _>(&shared, c(), |s| &mut s.owners[3], owner),
            spawn::<PartialObjectMeta<Job>, _>(&shared, c(), |s| &mut s.owners[4], owner),
            spawn::<PartialObjectMeta<CronJob>, _>(&shared, c(), |s| &mut s.owners[5], owner),
        ];
        KubeCluster { shared, tasks }
    }

    /// True once every watcher has completed its first list.
    pub fn synced(&self) -> bool {
        self.unsynced().is_empty()
    }

    /// Kinds whose first list has not completed, for logging what a stuck start waits on.
    pub fn unsynced(&self) -> Vec<&'static str> {
        self.lock().unsynced()
    }

    /// Notified after any change to what [`Self::snapshot`] would return.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.shared.changed.subscribe()
    }

    /// The current objects as if loaded from manifests (no errors or skipped kinds: the API server
    /// already validated them).
    pub fn snapshot(&self) -> Manifests {
        let stores = self.lock();
        let mut m = Manifests::default();
        m.pods = stores.pods.all();
        m.namespaces = stores.namespaces.all();
        m.services = stores.services.all();
        m.endpoint_slices = stores.endpoint_slices.all();
        m.nodes = stores.nodes.all();
        m.policies = stores.policies.all();
        m.owners = stores.owners.iter().flat_map(Store::all).collect();
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stores> {
        // a panic while holding the lock leaves whole maps behind (no half-applied event matters here)
        self.shared.stores.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// managedFields are often larger than the rest of the object and nothing here reads them.
fn slim<K: Resource>(mut object: K) -> K {
    object.meta_mut().managed_fields = None;
    object
}

/// What the policy view reads of an object's metadata; annotations (kubectl's last-applied copy
/// of the whole object among them) and managedFields are dropped.
fn slim_meta(m: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        labels: m.labels,
        owner_references: m.owner_references,
        creation_timestamp: m.creation_timestamp,
        ..ObjectMeta::default()
    }
}

/// A pod as the policy view reads it: identity, labels, owners, container ports, addresses, phase
/// and host networking. Pods are the most numerous objects and each full one is several KiB (env,
/// volumes, probes, conditions, container statuses), held once and copied at every rebuild.
pub(super) fn slim_pod(pod: Pod) -> Pod {
    let ports_only = |containers: Vec<Container>| -> Vec<Container> {
        containers.into_iter().map(|c| Container { name: c.name, ports: c.ports, ..Container::default() }).collect()
    };
    Pod {
        metadata: slim_meta(pod.metadata),
        spec: pod.spec.map(|s| PodSpec {
            containers: ports_only(s.containers),
            init_containers: s.init_containers.map(ports_only),
            host_network: s.host_network,
            node_name: s.node_name,
            ..PodSpec::default()
        }),
        status: pod.status.map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            host_ips: s.host_ips,
            ..PodStatus::default()
        }),
    }
}

/// A node as the policy view reads it: its pod networks and addresses (a node's status lists
/// every image it holds, often tens of KiB).
pub(super) fn slim_node(node: Node) -> Node {
    Node {
        metadata: slim_meta(node.metadata),
        spec: node.spec.map(|s| NodeSpec { pod_cidr: s.pod_cidr, pod_cidrs: s.pod_cidrs, ..NodeSpec::default() }),
        status: node.status.map(|s| NodeStatus { addresses: s.addresses, ..NodeStatus::default() }),
    }
}

fn owner<K>(object: PartialObjectMeta<K>) -> OwnerObject
where
    K: k8s_openapi::Resource,
{
    // The metadata API answers with apiVersion meta.k8s.io/v1 kind PartialObjectMetadata, so the
    // owner's own type comes from the watched kind.
    let meta = object.metadata;
    OwnerObject {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        uid: meta.uid,
        labels: meta.labels.unwrap_or_default(),
        owner_references: meta.owner_references.unwrap_or_default(),
    }
}

fn spawn<K, T>(
    shared: &Arc<Shared>,
    client: Client,
    pick: fn(&mut Stores) -> &mut Store<T>,
    convert: fn(K) -> T,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
    T: Send + 'static,
{
    let shared = shared.clone();
    tokio::spawn(async move {
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let api: Api<K> = Api::all(client);
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        loop {
            match stream.try_next().await {
                Ok(Some(event)) => {
                    let done = matches!(event, watcher::Event::InitDone);
                    let changed = {
                        let mut stores = shared.stores.lock().unwrap_or_else(|e| e.into_inner());
                        let store = pick(&mut stores);
                        let changed = store.apply(event, convert);
                        if done {
                            tracing::debug!(%kind, objects = store.objects.len(), "listed from the API");
                        }
                        changed
                    };
                    if changed {
                        shared.changed.send_replace(());
                    }
                }
                // the backoff-wrapped watcher restarts by itself, so an end only comes with shutdown
                Ok(None) => return,
                Err(e) => tracing::warn!(%kind, error = %e, "watch error; retrying"),
            }
        }
    })
}

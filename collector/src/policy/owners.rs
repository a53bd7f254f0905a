//! The workload a pod belongs to, found by following ownerReferences: Pod ->
//! ReplicaSet -> Deployment, Pod -> Job -> CronJob, Pod -> StatefulSet or
//! DaemonSet. Flows and policy findings are reported per workload because
//! pod names change on every rollout.
//!
//! Choices:
//! - The reference with `controller: true` is followed; without one, the
//!   first reference is (a pod may list non-controlling owners first).
//! - The walk stops at Deployments, StatefulSets, DaemonSets and CronJobs even
//!   if something owns them: operators often own several of these, and
//!   merging istiod with its gateways into one "workload" would hide the
//!   traffic between them. Other kinds (ReplicaSet, Job, custom controllers
//!   such as Argo Rollouts) are walked through.
//! - An owner missing from the objects given still names the workload by the
//!   reference's kind and name: a ReplicaSet whose object was not exported is
//!   better reported as itself than as a bare pod.
//! - The walk is bounded at [`MAX_HOPS`] references, and stops at the last
//!   new object when a reference leads back to one already visited, so bad
//!   data cannot loop.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::OwnerReference};

/// References followed at most from a pod.
pub const MAX_HOPS: usize = 8;

/// A controller object reduced to what owner resolution needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub owner_references: Vec<OwnerReference>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: String,
    /// `Pod` for a pod that nothing owns.
    pub kind: String,
    pub name: String,
}

/// (namespace, API group, kind, name): the group keeps a custom `Deployment`
/// kind of another group apart from `apps`' one.
type Key = (String, String, String, String);

/// Owner objects indexed by uid and by name.
#[derive(Debug, Default)]
pub struct OwnerIndex {
    objects: Vec<OwnerObject>,
    by_uid: HashMap<String, usize>,
    by_name: HashMap<Key, usize>,
}

impl OwnerIndex {
    /// Later duplicates (same uid, or same namespace, kind and name) are
    /// ignored.
    pub fn new(objects: impl IntoIterator<Item = OwnerObject>) -> Self {
        let mut index = OwnerIndex::default();
        for object in objects {
            let idx = index.objects.len();
            if let Some(uid) = object.uid.clone().filter(|u| !u.is_empty()) {
                index.by_uid.entry(uid).or_insert(idx);
            }
            let key = key(&object.namespace, &object.api_version, &object.kind, &object.name);
            index.by_name.entry(key).or_insert(idx);
            index.objects.push(object);
        }
        index
    }

    /// The workload of the pod `namespace/name` with these references.
    pub fn workload(&self, namespace: &str, pod_name: &str, owner_references: &[OwnerReference]) -> Workload {
        let mut current =
            Workload { namespace: namespace.to_owned(), kind: "Pod".to_owned(), name: pod_name.to_owned() };
        let mut references = owner_references;
        let mut visited = Vec::new();
        for _ in 0..MAX_HOPS {
            let Some(reference) = controlling(references) else { break };
            let found = self.lookup(namespace, reference);
            if found.is_some_and(|idx| visited.contains(&idx)) {
                break;
            }
            current = Workload {
                namespace: namespace.to_owned(),
                kind: reference.kind.clone(),
                name: reference.name.clone(),
            };
            if is_top_level(reference) {
                break;
            }
            // A missing owner ends the walk, named by the reference.
            let Some(idx) = found else { break };
            let Some(object) = self.objects.get(idx) else { break };
            visited.push(idx);
            references = &object.owner_references;
        }
        current
    }

    /// The workload of `pod`; a pod without a namespace is taken to be in
    /// `default`.
    pub fn workload_of(&self, pod: &Pod) -> Workload {
        let meta = &pod.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let references = meta.owner_references.as_deref().unwrap_or_default();
        self.workload(namespace, meta.name.as_deref().unwrap_or_default(), references)
    }

    /// By uid first, as names are reused after deletion; then by name, as
    /// objects from manifests usually have no uid.
    fn lookup(&self, namespace: &str, reference: &OwnerReference) -> Option<usize> {
        let by_uid = Some(reference.uid.as_str()).filter(|u| !u.is_empty()).and_then(|u| self.by_uid.get(u));
        let by_uid = by_uid.filter(|&&idx| self.objects.get(idx).is_some_and(|o| o.namespace == namespace));
        by_uid
            .or_else(|| self.by_name.get(&key(namespace, &reference.api_version, &reference.kind, &reference.name)))
            .copied()
    }
}

fn controlling(references: &[OwnerReference]) -> Option<&OwnerReference> {
    references.iter().find(|r| r.controller == Some(true)).or_else(|| references.first())
}

fn group(api_version: &str) -> &str {
    // The core group is written as a bare version ("v1").
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn key(namespace: &str, api_version: &str, kind: &str, name: &str) -> Key {
    (namespace.to_owned(), group(api_version).to_owned(), kind.to_owned(), name.to_owned())
}

fn is_top_level(reference: &OwnerReference) -> bool {
    matches!(
        (group(&reference.api_version), reference.kind.as_str()),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet") | ("batch", "CronJob")
    )
}

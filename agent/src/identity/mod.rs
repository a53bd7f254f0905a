//! Who owns a socket (cgroup id -> pod/container or host unit) and who is at the
//! other end (IP -> pod), resolved on the node at capture time.

pub mod cgroup;
pub mod cgroups;
pub mod inventory;
pub mod k8s;
pub mod kube;
pub mod pods;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Instant, SystemTime},
};

use podlens_proto::v1 as pb;

use self::{
    cgroup::{parse_cgroup_path, CgroupOwner},
    cgroups::CgroupTable,
    pods::{PodMeta, PodStore},
};

/// Kubernetes QoS class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QosClass {
    #[default]
    Unknown,
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// From `status.qosClass`.
    pub fn from_status(s: &str) -> Self {
        match s {
            "Guaranteed" => QosClass::Guaranteed,
            "Burstable" => QosClass::Burstable,
            "BestEffort" => QosClass::BestEffort,
            _ => QosClass::Unknown,
        }
    }

    fn to_pb(self) -> pb::QosClass {
        match self {
            QosClass::Unknown => pb::QosClass::Unspecified,
            QosClass::Guaranteed => pb::QosClass::Guaranteed,
            QosClass::Burstable => pb::QosClass::Burstable,
            QosClass::BestEffort => pb::QosClass::BestEffort,
        }
    }
}

/// Container runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContainerRuntime {
    #[default]
    Unknown,
    Containerd,
    CriO,
    Docker,
}

impl ContainerRuntime {
    /// From the scheme of a `containerID` ("containerd://...").
    pub fn from_scheme(s: &str) -> Self {
        match s {
            "containerd" => ContainerRuntime::Containerd,
            "cri-o" => ContainerRuntime::CriO,
            "docker" => ContainerRuntime::Docker,
            _ => ContainerRuntime::Unknown,
        }
    }

    fn to_pb(self) -> pb::ContainerRuntime {
        match self {
            ContainerRuntime::Unknown => pb::ContainerRuntime::Unspecified,
            ContainerRuntime::Containerd => pb::ContainerRuntime::Containerd,
            ContainerRuntime::CriO => pb::ContainerRuntime::Crio,
            ContainerRuntime::Docker => pb::ContainerRuntime::Docker,
        }
    }
}

/// Pod metadata shared between its source (watch or file) and the resolver.
pub type SharedPods = Arc<RwLock<PodStore>>;

/// Identity problems seen while resolving, cumulative. Exported as losses of
/// attribution quality (the records themselves are never dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityStats {
    /// Records whose cgroup id was not found even after a rescan.
    pub unresolved_cgroups: u64,
    /// Records under kubepods whose path layout was not recognised.
    pub unknown_layouts: u64,
    /// Records of a pod cgroup whose pod metadata was not known.
    pub pods_without_metadata: u64,
}

/// Resolves cgroup ids and remote IPs into record identities.
pub struct Resolver {
    pub cgroups: CgroupTable,
    pods: SharedPods,
    stats: IdentityStats,
    /// Ids a rescan did not find, and when: not rescanned for again soon.
    unresolvable: HashMap<u64, Instant>,
}

/// How long an id that no rescan found is left alone.
const UNRESOLVABLE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Bound of the unresolvable-id memory.
const MAX_UNRESOLVABLE: usize = 100_000;

impl Resolver {
    pub fn new(cgroups: CgroupTable, pods: SharedPods) -> Self {
        Self { cgroups, pods, stats: IdentityStats::default(), unresolvable: HashMap::new() }
    }

    pub fn stats(&self) -> IdentityStats {
        self.stats
    }

    /// Whose DNS answers name flows: the pod of a cgroup (its containers share
    /// one network namespace), or the cgroup itself. Flow records map their
    /// local workload the same way.
    pub fn fqdn_owner(&self, cgroup_id: u64) -> crate::dns::fqdn::Owner {
        match self.cgroups.path(cgroup_id).map(parse_cgroup_path) {
            Some(CgroupOwner::Pod(p)) => crate::dns::fqdn::Owner::Pod(p.uid),
            _ => crate::dns::fqdn::Owner::Cgroup(cgroup_id),
        }
    }

    /// Starts resolving one window. Ids unknown to the table trigger at most
    /// one rescan per second, and an id a rescan did not find is not looked
    /// for again for a minute (a cgroup that vanished unseen stays vanished).
    pub fn window<'a>(&'a mut self, ids: impl IntoIterator<Item = u64>) -> WindowResolver<'a> {
        let now = Instant::now();
        self.cgroups.expire(now);
        self.pods.write().unwrap_or_else(|e| e.into_inner()).expire(std::time::SystemTime::now());
        self.unresolvable.retain(|_, t| now.duration_since(*t) < UNRESOLVABLE_TTL);
        let missing: Vec<u64> = ids
            .into_iter()
            .filter(|id| self.cgroups.path(*id).is_none() && !self.unresolvable.contains_key(id))
            .collect();
        if !missing.is_empty() {
            // A tree walk: keep it off the async workers' toes.
            match tokio::task::block_in_place(|| self.cgroups.rescan_if_stale(now, std::time::Duration::from_secs(1))) {
                Some(Err(e)) => tracing::warn!(error = %e, "cgroup rescan failed"),
                Some(Ok(stats)) if stats.truncated => {
                    tracing::warn!(
                        cgroups = stats.cgroups,
                        "cgroup rescan stopped at its bound; some ids stay unresolved"
                    )
                }
                _ => {}
            }
            for id in missing {
                if self.cgroups.path(id).is_none() && self.unresolvable.len() < MAX_UNRESOLVABLE {
                    self.unresolvable.insert(id, now);
                }
            }
        }
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        WindowResolver { cgroups: &self.cgroups, pods, stats: &mut self.stats, memo: HashMap::new() }
    }
}

/// Resolution within one window, holding the pod store read lock.
pub struct WindowResolver<'a> {
    cgroups: &'a CgroupTable,
    pods: std::sync::RwLockReadGuard<'a, PodStore>,
    stats: &'a mut IdentityStats,
    memo: HashMap<u64, pb::Workload>,
}

impl WindowResolver<'_> {
    /// The owner of a socket's cgroup.
    pub fn workload(&mut self, cgroup_id: u64) -> pb::Workload {
        if let Some(w) = self.memo.get(&cgroup_id) {
            count(self.stats, w);
            return w.clone();
        }
        let w = match self.cgroups.path(cgroup_id) {
            None => pb::Workload { cgroup_id, ..Default::default() },
            Some(path) => workload_for(cgroup_id, path, &self.pods),
        };
        count(self.stats, &w);
        self.memo.insert(cgroup_id, w.clone());
        w
    }

    /// The remote end of a flow seen at `at`.
    pub fn peer(&self, ip: IpAddr, port: u16, at: SystemTime) -> pb::Peer {
        pb::Peer {
            ip: ip.to_string(),
            port: port.into(),
            pod: self.pods.pod_by_ip(ip, at).map(|p| pod_ref(p, None)),
            fqdn: String::new(),
            pod_index: 0,
        }
    }
}

fn count(stats: &mut IdentityStats, w: &pb::Workload) {
    if w.cgroup_path.is_empty() {
        stats.unresolved_cgroups += 1;
    } else if w.unknown_layout {
        stats.unknown_layouts += 1;
    } else if let Some(pb::workload::Kind::Pod(p)) = &w.kind {
        if p.name.is_empty() {
            stats.pods_without_metadata += 1;
        }
    }
}

/// Builds the workload of a cgroup path, enriched with pod metadata when known.
pub fn workload_for(cgroup_id: u64, path: &str, pods: &PodStore) -> pb::Workload {
    let cgroup_path = format!("/{}", path.trim_start_matches('/'));
    let (kind, unknown_layout) = match parse_cgroup_path(path) {
        CgroupOwner::Host { unit } => (pb::workload::Kind::Host(pb::HostUnit { unit }), false),
        CgroupOwner::UnknownLayout { path } => (pb::workload::Kind::Host(pb::HostUnit { unit: path }), true),
        CgroupOwner::Pod(pc) => {
            let mut r = match pods.get(&pc.uid) {
                Some(meta) => pod_ref(meta, pc.container.as_ref().map(|c| c.id.as_str())),
                None => pb::PodRef { uid: pc.uid.clone(), ..Default::default() },
            };
            if r.qos_class == pb::QosClass::Unspecified as i32 {
                r.qos_class = pc.qos.to_pb() as i32;
            }
            if let Some(c) = &pc.container {
                r.container_id = c.id.clone();
                if c.runtime != ContainerRuntime::Unknown {
                    r.runtime = c.runtime.to_pb() as i32;
                }
            }
            (pb::workload::Kind::Pod(r), false)
        }
    };
    pb::Workload { cgroup_id, cgroup_path, kind: Some(kind), unknown_layout }
}

fn pod_ref(meta: &PodMeta, container_id: Option<&str>) -> pb::PodRef {
    let container = container_id.and_then(|id| meta.container(id));
    pb::PodRef {
        uid: meta.uid.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        container_id: container_id.unwrap_or_default().to_string(),
        container_name: container.map(|c| c.name.clone()).unwrap_or_default(),
        qos_class: meta.qos.to_pb() as i32,
        runtime: container.map(|c| c.runtime.to_pb()).unwrap_or(pb::ContainerRuntime::Unspecified) as i32,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::pods::ContainerMeta;

    const UID: &str = "3f1b5d0e-8a2c-4f6e-9b7d-1c2e3f4a5b6c";
    const CID: &str = "0f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899a";

    fn store() -> PodStore {
        let mut s = PodStore::new(Duration::from_secs(60));
        s.upsert(PodMeta {
            uid: UID.into(),
            namespace: "shop".into(),
            name: "web".into(),
            qos: QosClass::Burstable,
            containers: vec![ContainerMeta {
                id: CID.into(),
                name: "nginx".into(),
                runtime: ContainerRuntime::Containerd,
            }],
            ..Default::default()
        });
        s
    }

    #[test]
    fn pod_container_is_enriched_from_metadata() {
        let path = format!("/kubepods/burstable/pod{UID}/{CID}");
        let w = workload_for(9, &path, &store());
        let Some(pb::workload::Kind::Pod(p)) = w.kind else { panic!("{w:?}") };
        assert_eq!((p.namespace.as_str(), p.name.as_str(), p.container_name.as_str()), ("shop", "web", "nginx"));
        assert_eq!(p.container_id, CID);
        assert_eq!(
            p.runtime,
            pb::ContainerRuntime::Containerd as i32,
            "runtime from the status when the path has none"
        );
        assert_eq!(w.cgroup_path, path);
    }

    #[test]
    fn pod_without_metadata_keeps_uid_qos_and_runtime_from_path() {
        let other = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{CID}.scope",
            other.replace('-', "_")
        );
        let w = workload_for(1, &path, &store());
        let Some(pb::workload::Kind::Pod(p)) = w.kind else { panic!("{w:?}") };
        assert_eq!(p.uid, other);
        assert!(p.name.is_empty());
        assert_eq!(p.qos_class, pb::QosClass::BestEffort as i32);
        assert_eq!(p.runtime, pb::ContainerRuntime::Crio as i32);
    }

    #[test]
    fn unknown_layout_is_attributed_to_the_raw_path() {
        let w = workload_for(1, "/kubepods/burstable/podGARBAGE", &store());
        assert!(w.unknown_layout);
        assert_eq!(
            w.kind,
            Some(pb::workload::Kind::Host(pb::HostUnit { unit: "kubepods/burstable/podGARBAGE".into() }))
        );
    }

    #[test]
    fn resolver_counts_unresolved_and_unknown() {
        let mut table = CgroupTable::new("/nonexistent-root", Duration::from_secs(60));
        table.insert(1, "/");
        table.insert(5, "/kubepods/burstable/podGARBAGE");
        table.insert(6, "/system.slice/sshd.service");
        let mut r = Resolver::new(table, Arc::new(RwLock::new(store())));
        {
            let mut w = r.window([1, 5, 6, 7]);
            let root = w.workload(1);
            assert_eq!(root.cgroup_path, "/");
            assert_eq!(root.kind, Some(pb::workload::Kind::Host(pb::HostUnit { unit: String::new() })));
            assert!(w.workload(5).unknown_layout);
            assert_eq!(
                w.workload(6).kind,
                Some(pb::workload::Kind::Host(pb::HostUnit { unit: "system.slice/sshd.service".into() }))
            );
            let unresolved = w.workload(7);
            assert_eq!((unresolved.cgroup_id, unresolved.cgroup_path.as_str()), (7, ""));
            w.workload(7);
        }
        let s = r.stats();
        assert_eq!((s.unknown_layouts, s.unresolved_cgroups), (1, 2));
    }
}

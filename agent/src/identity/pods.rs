//! Pod metadata (from the Kubernetes API or an inventory file), indexed by UID
//! and by IP with history, so that an IP reused by a new pod resolves to the old
//! pod for flows seen before the new one existed.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::identity::{ContainerRuntime, QosClass};

/// What the agent knows about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// Pods on the host network share the node's IP: not indexed by IP.
    pub host_network: bool,
    pub qos: QosClass,
    pub containers: Vec<ContainerMeta>,
    /// metadata.creationTimestamp.
    pub created: Option<SystemTime>,
    /// metadata.deletionTimestamp, or when the pod vanished from the source.
    pub deleted: Option<SystemTime>,
}

/// A container of a pod, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
    pub runtime: ContainerRuntime,
}

impl PodMeta {
    pub fn container(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.id == id)
    }

    /// Whether the pod held its IPs at time `at`.
    fn alive_at(&self, at: SystemTime) -> bool {
        self.created.is_none_or(|c| c <= at) && self.deleted.is_none_or(|d| at < d)
    }
}

/// How many pods one IP remembers (older ones are forgotten first).
const MAX_PODS_PER_IP: usize = 8;

/// The store. Deleted pods are kept for `retention` so late flows still resolve.
#[derive(Debug)]
pub struct PodStore {
    pods: HashMap<String, PodMeta>,
    by_ip: HashMap<IpAddr, Vec<String>>,
    retention: Duration,
}

impl PodStore {
    pub fn new(retention: Duration) -> Self {
        Self { pods: HashMap::new(), by_ip: HashMap::new(), retention }
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn get(&self, uid: &str) -> Option<&PodMeta> {
        self.pods.get(uid)
    }

    /// Adds or updates one pod.
    pub fn upsert(&mut self, pod: PodMeta) {
        if !pod.host_network {
            for ip in &pod.ips {
                let uids = self.by_ip.entry(*ip).or_default();
                if !uids.contains(&pod.uid) {
                    uids.push(pod.uid.clone());
                    if uids.len() > MAX_PODS_PER_IP {
                        uids.remove(0);
                    }
                }
            }
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// Marks a pod deleted at `now` unless it already carries a deletion time.
    pub fn delete(&mut self, uid: &str, now: SystemTime) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.deleted = Some(p.deleted.map_or(now, |d| d.min(now)));
        }
    }

    /// Replaces the whole set (an inventory reload or a watch re-list): pods not
    /// in `pods` are marked deleted at `now`.
    pub fn replace_all(&mut self, pods: Vec<PodMeta>, now: SystemTime) {
        let present: HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        let gone: Vec<String> = self.pods.keys().filter(|uid| !present.contains(*uid)).cloned().collect();
        for uid in gone {
            self.delete(&uid, now);
        }
        for pod in pods {
            self.upsert(pod);
        }
    }

    /// Forgets pods deleted longer than the retention period ago.
    pub fn expire(&mut self, now: SystemTime) {
        let retention = self.retention;
        self.pods.retain(|_, p| p.deleted.is_none_or(|d| now.duration_since(d).unwrap_or_default() < retention));
        let pods = &self.pods;
        self.by_ip.retain(|_, uids| {
            uids.retain(|u| pods.contains_key(u));
            !uids.is_empty()
        });
    }

    /// The pod that held `ip` at time `at`: of the pods alive then, the one
    /// created last.
    pub fn pod_by_ip(&self, ip: IpAddr, at: SystemTime) -> Option<&PodMeta> {
        self.by_ip
            .get(&ip)?
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .filter(|p| p.alive_at(at))
            .max_by_key(|p| p.created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn pod(uid: &str, ip: &str, created: u64) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            ips: vec![ip.parse().unwrap()],
            created: Some(t(created)),
            ..Default::default()
        }
    }

    #[test]
    fn reused_ip_resolves_by_time() {
        let mut s = PodStore::new(Duration::from_secs(600));
        s.upsert(pod("old", "10.0.0.5", 0));
        s.replace_all(vec![], t(100));
        s.upsert(pod("new", "10.0.0.5", 101));
        let ip = "10.0.0.5".parse().unwrap();
        assert_eq!(s.pod_by_ip(ip, t(50)).unwrap().uid, "old");
        assert_eq!(s.pod_by_ip(ip, t(100)), None, "between deletion and creation nobody owns it");
        assert_eq!(s.pod_by_ip(ip, t(150)).unwrap().uid, "new");
    }

    #[test]
    fn latest_created_wins_when_deletion_was_not_observed() {
        let mut s = PodStore::new(Duration::from_secs(600));
        s.upsert(pod("old", "fd00::5", 0));
        s.upsert(pod("new", "fd00::5", 200));
        let ip = "fd00::5".parse().unwrap();
        assert_eq!(s.pod_by_ip(ip, t(100)).unwrap().uid, "old");
        assert_eq!(s.pod_by_ip(ip, t(300)).unwrap().uid, "new");
    }

    #[test]
    fn host_network_pods_are_not_indexed_by_ip() {
        let mut s = PodStore::new(Duration::from_secs(600));
        let mut p = pod("hn", "192.168.1.10", 0);
        p.host_network = true;
        s.upsert(p);
        assert!(s.pod_by_ip("192.168.1.10".parse().unwrap(), t(10)).is_none());
        assert!(s.get("hn").is_some());
    }

    #[test]
    fn deleted_pods_expire_after_retention() {
        let mut s = PodStore::new(Duration::from_secs(60));
        s.upsert(pod("a", "10.0.0.1", 0));
        s.delete("a", t(10));
        s.expire(t(69));
        assert!(s.get("a").is_some());
        s.expire(t(70));
        assert!(s.get("a").is_none());
        assert!(s.pod_by_ip("10.0.0.1".parse().unwrap(), t(5)).is_none());
    }

    #[test]
    fn explicit_deletion_timestamp_is_not_moved_later() {
        let mut s = PodStore::new(Duration::from_secs(600));
        let mut p = pod("a", "10.0.0.1", 0);
        p.deleted = Some(t(20));
        s.upsert(p);
        s.delete("a", t(40));
        assert_eq!(s.get("a").unwrap().deleted, Some(t(20)));
    }

    #[test]
    fn ip_history_is_bounded() {
        let mut s = PodStore::new(Duration::from_secs(600));
        for i in 0..20 {
            s.upsert(pod(&format!("p{i}"), "10.0.0.9", i));
        }
        assert_eq!(s.by_ip[&"10.0.0.9".parse().unwrap()].len(), MAX_PODS_PER_IP);
        assert_eq!(s.pod_by_ip("10.0.0.9".parse().unwrap(), t(100)).unwrap().uid, "p19");
    }
}

//! Batches carry each identity once: records refer to `Batch.workloads` and
//! `Batch.pods` by 1-based index and leave `node` empty. [`compact`] builds
//! such a batch; [`Tables::resolve`] turns a record back into a standalone one.

use std::collections::HashMap;

use crate::v1::{self as pb, record::Kind};

/// Builds a batch from standalone records, moving repeated identities into
/// its tables.
pub fn compact(node: pb::NodeIdentity, sequence: u64, records: Vec<pb::Record>) -> pb::Batch {
    let mut workloads: Vec<pb::Workload> = Vec::new();
    let mut pods: Vec<pb::PodRef> = Vec::new();
    let mut workload_index: HashMap<(u64, String), u32> = HashMap::new();
    let mut pod_index: HashMap<(String, String, String, String), u32> = HashMap::new();
    let mut out = Vec::with_capacity(records.len());
    for mut r in records {
        if r.node == node.name {
            r.node.clear();
        }
        if let Some((local, index)) = r.kind.as_mut().and_then(local_slot) {
            if let Some(w) = local.take() {
                let key = (w.cgroup_id, w.cgroup_path.clone());
                *index = *workload_index.entry(key).or_insert_with(|| {
                    workloads.push(w);
                    workloads.len() as u32
                });
            }
        }
        if let Some(Kind::Flow(f)) = &mut r.kind {
            if let Some(peer) = &mut f.remote {
                if let Some(p) = peer.pod.take() {
                    let key = (p.uid.clone(), p.container_id.clone(), p.namespace.clone(), p.name.clone());
                    let i = *pod_index.entry(key).or_insert_with(|| {
                        pods.push(p);
                        pods.len() as u32
                    });
                    peer.pod_index = i;
                }
            }
        }
        out.push(r);
    }
    pb::Batch { node: Some(node), sequence, records: out, workloads, pods }
}

/// The local workload of the record kinds that have one, and its index.
fn local_slot(kind: &mut Kind) -> Option<(&mut Option<pb::Workload>, &mut u32)> {
    match kind {
        Kind::Flow(f) => Some((&mut f.local, &mut f.local_index)),
        Kind::Dns(d) => Some((&mut d.local, &mut d.local_index)),
        Kind::Pressure(p) => Some((&mut p.local, &mut p.local_index)),
        Kind::Loss(_) | Kind::Finding(_) => None,
    }
}

fn local_ref(kind: &Kind) -> Option<(Option<&pb::Workload>, u32)> {
    match kind {
        Kind::Flow(f) => Some((f.local.as_ref(), f.local_index)),
        Kind::Dns(d) => Some((d.local.as_ref(), d.local_index)),
        Kind::Pressure(p) => Some((p.local.as_ref(), p.local_index)),
        Kind::Loss(_) | Kind::Finding(_) => None,
    }
}

/// A batch's identity tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tables<'a> {
    pub node: &'a str,
    pub workloads: &'a [pb::Workload],
    pub pods: &'a [pb::PodRef],
}

/// A reference that points outside the batch's tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("records[{record}]: {field} {index} is outside the batch's {len} entries")]
pub struct BadReference {
    pub record: usize,
    pub field: &'static str,
    pub index: u32,
    pub len: usize,
}

fn at<T>(table: &[T], index: u32) -> Option<&T> {
    (index as usize).checked_sub(1).and_then(|i| table.get(i))
}

impl<'a> Tables<'a> {
    pub fn of(batch: &'a pb::Batch) -> Self {
        Self {
            node: batch.node.as_ref().map_or("", |n| n.name.as_str()),
            workloads: &batch.workloads,
            pods: &batch.pods,
        }
    }

    /// Checks that every reference of `records` points into the tables.
    pub fn check(&self, records: &[pb::Record]) -> Result<(), BadReference> {
        for (i, r) in records.iter().enumerate() {
            let Some(kind) = &r.kind else { continue };
            let local_index = local_ref(kind).map_or(0, |(_, index)| index);
            if local_index > 0 && at(self.workloads, local_index).is_none() {
                return Err(BadReference {
                    record: i,
                    field: "local_index",
                    index: local_index,
                    len: self.workloads.len(),
                });
            }
            let Kind::Flow(f) = kind else { continue };
            let pod_index = f.remote.as_ref().map_or(0, |p| p.pod_index);
            if pod_index > 0 && at(self.pods, pod_index).is_none() {
                return Err(BadReference {
                    record: i,
                    field: "remote.pod_index",
                    index: pod_index,
                    len: self.pods.len(),
                });
            }
        }
        Ok(())
    }

    /// The local workload of a flow, from the record or the table.
    pub fn local(&self, f: &'a pb::FlowRecord) -> Option<&'a pb::Workload> {
        match &f.local {
            Some(w) => Some(w),
            None => at(self.workloads, f.local_index),
        }
    }

    /// The local workload of any record that has one (flows, DNS).
    pub fn record_local(&self, r: &'a pb::Record) -> Option<&'a pb::Workload> {
        match local_ref(r.kind.as_ref()?)? {
            (Some(w), _) => Some(w),
            (None, index) => at(self.workloads, index),
        }
    }

    /// The remote pod of a flow, from the record or the table.
    pub fn remote_pod(&self, f: &'a pb::FlowRecord) -> Option<&'a pb::PodRef> {
        let peer = f.remote.as_ref()?;
        match &peer.pod {
            Some(p) => Some(p),
            None => at(self.pods, peer.pod_index),
        }
    }

    /// The node of a record.
    pub fn node(&self, r: &'a pb::Record) -> &'a str {
        if r.node.is_empty() {
            self.node
        } else {
            &r.node
        }
    }

    /// Makes `r` standalone: node filled in, references replaced by identities.
    pub fn resolve(&self, r: &mut pb::Record) {
        if r.node.is_empty() {
            r.node = self.node.to_string();
        }
        if let Some((local, index)) = r.kind.as_mut().and_then(local_slot) {
            if local.is_none() {
                *local = at(self.workloads, *index).cloned();
            }
            *index = 0;
        }
        let Some(Kind::Flow(f)) = &mut r.kind else { return };
        if let Some(peer) = &mut f.remote {
            if peer.pod.is_none() {
                peer.pod = at(self.pods, peer.pod_index).cloned();
            }
            peer.pod_index = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(cgroup: u64, pod: &str, remote_pod: Option<&str>) -> pb::Record {
        pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Flow(pb::FlowRecord {
                local: Some(pb::Workload {
                    cgroup_id: cgroup,
                    cgroup_path: format!("/p/{cgroup}"),
                    kind: Some(pb::workload::Kind::Pod(pb::PodRef { uid: pod.into(), ..Default::default() })),
                    ..Default::default()
                }),
                remote: Some(pb::Peer {
                    ip: "10.0.0.9".into(),
                    pod: remote_pod.map(|u| pb::PodRef {
                        uid: u.into(),
                        name: format!("name-{u}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn dns(cgroup: u64, pod: &str) -> pb::Record {
        let Some(Kind::Flow(f)) = flow(cgroup, pod, None).kind else { unreachable!() };
        pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Dns(pb::DnsRecord { local: f.local, role: 1, ..Default::default() })),
            ..Default::default()
        }
    }

    #[test]
    fn compacting_and_resolving_round_trips() {
        let records =
            vec![flow(1, "a", Some("r")), flow(1, "a", Some("r")), flow(2, "b", None), dns(1, "a"), dns(3, "c")];
        let node = pb::NodeIdentity { name: "n1".into(), ..Default::default() };
        let batch = compact(node, 3, records.clone());
        assert_eq!((batch.workloads.len(), batch.pods.len()), (3, 1), "each identity once");
        assert!(batch.records.iter().all(|r| r.node.is_empty()));
        let tables = Tables::of(&batch);
        assert_eq!(tables.check(&batch.records), Ok(()));
        let resolved: Vec<pb::Record> = batch
            .records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                tables.resolve(&mut r);
                r
            })
            .collect();
        assert_eq!(resolved, records);
    }

    #[test]
    fn references_outside_the_tables_are_reported() {
        let node = pb::NodeIdentity { name: "n1".into(), ..Default::default() };
        let mut batch = compact(node, 1, vec![flow(1, "a", Some("r"))]);
        if let Some(Kind::Flow(f)) = &mut batch.records[0].kind {
            f.local_index = 7;
        }
        let err = Tables::of(&batch).check(&batch.records).unwrap_err();
        assert_eq!(err.to_string(), "records[0]: local_index 7 is outside the batch's 1 entries");
    }
}

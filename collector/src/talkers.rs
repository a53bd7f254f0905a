//! Top talkers: flow bytes summed per (node, local workload, remote address,
//! protocol) in one-minute buckets kept for a bounded time, with a bounded
//! number of entries per bucket (what does not fit is counted).

use std::{collections::HashMap, sync::Arc};

use podlens_proto::{
    compact::Tables,
    v1::{self as pb, record::Kind},
};

use crate::minutes::Minutes;

/// Copy-only, so a lookup allocates nothing: the node is interned, the
/// address parsed (an unparsable one keys as unspecified, but keeps its text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    node: u32,
    cgroup_id: u64,
    remote_ip: std::net::IpAddr,
    protocol: u32,
}

#[derive(Clone, Debug)]
struct Agg {
    node: Arc<str>,
    local: pb::Workload,
    remote: pb::Peer,
    bytes: u64,
    packets: u64,
    last_seen: u64,
}

pub struct Talkers {
    nodes: HashMap<Arc<str>, u32>,
    minutes: Minutes<HashMap<Key, Agg>>,
    max_per_bucket: usize,
    /// Flow records that did not fit a full bucket.
    pub dropped: u64,
}

impl Talkers {
    /// Keeps `retention_minutes` one-minute buckets of at most `max_per_bucket` entries.
    pub fn new(retention_minutes: usize, max_per_bucket: usize) -> Self {
        Self {
            nodes: HashMap::new(),
            minutes: Minutes::new(retention_minutes),
            max_per_bucket: max_per_bucket.max(1),
            dropped: 0,
        }
    }

    /// Adds the flow records of a batch received at `now` (Unix ns).
    pub fn add(&mut self, records: &[pb::Record], tables: &Tables<'_>, now: u64) {
        let bucket = self.minutes.current(now);
        for r in records {
            let Some(Kind::Flow(f)) = &r.kind else { continue };
            let (Some(local), Some(remote)) = (tables.local(f), &f.remote) else { continue };
            let node_name = tables.node(r);
            let next = self.nodes.len() as u32;
            let node = match self.nodes.get(node_name) {
                Some(n) => *n,
                None => *self.nodes.entry(Arc::from(node_name)).or_insert(next),
            };
            let key = Key {
                node,
                cgroup_id: local.cgroup_id,
                remote_ip: remote.ip.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                protocol: f.protocol,
            };
            let bytes = f.egress.map_or(0, |c| c.bytes) + f.ingress.map_or(0, |c| c.bytes);
            let packets = f.egress.map_or(0, |c| c.packets) + f.ingress.map_or(0, |c| c.packets);
            if let Some(a) = bucket.get_mut(&key) {
                a.bytes += bytes;
                a.packets += packets;
                a.last_seen = a.last_seen.max(f.last_seen_unix_nano);
                if a.remote.port != remote.port {
                    a.remote.port = 0;
                }
                continue;
            }
            if bucket.len() >= self.max_per_bucket {
                self.dropped += 1;
                continue;
            }
            let mut remote = remote.clone();
            remote.pod = tables.remote_pod(f).cloned();
            remote.pod_index = 0;
            let node = self.nodes.get_key_value(node_name).map_or_else(|| Arc::from(node_name), |(k, _)| k.clone());
            let agg = Agg { node, local: local.clone(), remote, bytes, packets, last_seen: f.last_seen_unix_nano };
            bucket.insert(key, agg);
        }
    }

    /// The `limit` largest by bytes since `since` (Unix ns), optionally only
    /// for local pods in `namespaces`; and the oldest time still retained.
    pub fn top(&self, limit: usize, namespaces: &[String], since: u64) -> (Vec<pb::TopTalker>, u64) {
        // Sum by key over references; only the winners are cloned.
        struct Sum<'a> {
            bytes: u64,
            packets: u64,
            last_seen: u64,
            mixed_ports: bool,
            first: &'a Agg,
        }
        let mut sums: HashMap<Key, Sum<'_>> = HashMap::new();
        for b in self.minutes.since(since) {
            for (k, a) in b {
                let s =
                    sums.entry(*k).or_insert(Sum { bytes: 0, packets: 0, last_seen: 0, mixed_ports: false, first: a });
                s.bytes += a.bytes;
                s.packets += a.packets;
                s.last_seen = s.last_seen.max(a.last_seen);
                s.mixed_ports |= a.remote.port != s.first.remote.port;
            }
        }
        let mut ranked: Vec<(Key, Sum<'_>)> = sums
            .into_iter()
            .filter(|(_, s)| {
                namespaces.is_empty() || record_namespace(&s.first.local).is_some_and(|n| namespaces.contains(n))
            })
            .collect();
        ranked.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.1.first.node.cmp(&b.1.first.node)));
        ranked.truncate(limit);
        let out = ranked
            .into_iter()
            .map(|(k, s)| {
                let mut remote = s.first.remote.clone();
                if s.mixed_ports {
                    remote.port = 0;
                }
                pb::TopTalker {
                    node: s.first.node.to_string(),
                    local: Some(s.first.local.clone()),
                    remote: Some(remote),
                    protocol: k.protocol,
                    bytes: s.bytes,
                    packets: s.packets,
                    last_seen_unix_nano: s.last_seen,
                }
            })
            .collect();
        (out, self.minutes.oldest())
    }
}

fn record_namespace(w: &pb::Workload) -> Option<&String> {
    match &w.kind {
        Some(pb::workload::Kind::Pod(p)) => Some(&p.namespace),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minutes::BUCKET_NS;

    fn flow(ns: &str, cgroup: u64, remote: &str, port: u32, bytes: u64) -> pb::Record {
        pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Flow(pb::FlowRecord {
                local: Some(pb::Workload {
                    cgroup_id: cgroup,
                    kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                        namespace: ns.into(),
                        name: "p".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                remote: Some(pb::Peer { ip: remote.into(), port, ..Default::default() }),
                protocol: 6,
                egress: Some(pb::FlowCounts { bytes, packets: 1, ..Default::default() }),
                last_seen_unix_nano: 7,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn sums_ranks_and_filters() {
        let mut t = Talkers::new(15, 100);
        let now = 10 * BUCKET_NS;
        t.add(
            &[flow("a", 1, "10.0.0.1", 80, 100), flow("a", 1, "10.0.0.1", 80, 50), flow("b", 2, "10.0.0.2", 443, 500)],
            &Tables::default(),
            now,
        );
        t.add(&[flow("a", 1, "10.0.0.1", 8080, 25)], &Tables::default(), now + BUCKET_NS);
        let (top, since) = t.top(10, &[], 0);
        assert_eq!(since, now);
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].bytes, top[0].remote.as_ref().unwrap().port), (500, 443));
        assert_eq!((top[1].bytes, top[1].packets, top[1].remote.as_ref().unwrap().port), (175, 3, 0), "ports summed");
        let (only_a, _) = t.top(10, &["a".to_string()], 0);
        assert_eq!(only_a.len(), 1);
        let (recent, _) = t.top(10, &[], now + BUCKET_NS);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].bytes, 25);
        assert_eq!(t.top(1, &[], 0).0.len(), 1);
    }

    #[test]
    fn compacted_batches_resolve_their_references() {
        let mut r = flow("a", 1, "10.0.0.1", 80, 100);
        if let Some(Kind::Flow(f)) = &mut r.kind {
            f.remote.as_mut().unwrap().pod =
                Some(pb::PodRef { uid: "u".into(), name: "peer".into(), ..Default::default() });
        }
        let batch =
            podlens_proto::compact::compact(pb::NodeIdentity { name: "n1".into(), ..Default::default() }, 1, vec![r]);
        let mut t = Talkers::new(15, 100);
        t.add(&batch.records, &Tables::of(&batch), 0);
        let (top, _) = t.top(10, &["a".to_string()], 0);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].node, "n1");
        assert_eq!(top[0].remote.as_ref().and_then(|p| p.pod.as_ref()).map(|p| p.name.as_str()), Some("peer"));
        assert_eq!(top[0].local.as_ref().map(|w| w.cgroup_id), Some(1));
    }

    #[test]
    fn retention_and_bounds() {
        let mut t = Talkers::new(2, 1);
        t.add(&[flow("a", 1, "x", 1, 1), flow("a", 2, "y", 1, 1)], &Tables::default(), 0);
        assert_eq!(t.dropped, 1, "the second key did not fit");
        t.add(&[flow("a", 3, "z", 1, 1)], &Tables::default(), BUCKET_NS);
        t.add(&[flow("a", 4, "w", 1, 1)], &Tables::default(), 2 * BUCKET_NS);
        let (top, since) = t.top(10, &[], 0);
        assert_eq!(since, BUCKET_NS, "the first minute expired");
        assert_eq!(top.len(), 2);
    }
}

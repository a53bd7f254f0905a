//! Observe filters: which records a consumer asked for.

use podlens_proto::{
    compact::Tables,
    v1::{self as pb, record::Kind, workload},
};

/// A parsed [`pb::ObserveRequest`]. Empty lists match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    nodes: Vec<String>,
    namespaces: Vec<String>,
    pods: Vec<String>,
    kinds: Vec<pb::RecordKind>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("kinds[{index}]: unknown record kind {value}")]
    UnknownKind { index: usize, value: i32 },
    #[error("{field}[{index}]: empty string")]
    Empty { field: &'static str, index: usize },
}

impl Filter {
    pub fn from_request(req: &pb::ObserveRequest) -> Result<Self, FilterError> {
        let mut kinds = Vec::new();
        for (index, &value) in req.kinds.iter().enumerate() {
            match pb::RecordKind::try_from(value) {
                Ok(pb::RecordKind::Unspecified) | Err(_) => return Err(FilterError::UnknownKind { index, value }),
                Ok(k) => kinds.push(k),
            }
        }
        for (field, list) in [("nodes", &req.nodes), ("namespaces", &req.namespaces), ("pods", &req.pods)] {
            if let Some(index) = list.iter().position(|s| s.is_empty()) {
                return Err(FilterError::Empty { field, index });
            }
        }
        Ok(Self { nodes: req.nodes.clone(), namespaces: req.namespaces.clone(), pods: req.pods.clone(), kinds })
    }

    /// Whether a standalone record matches.
    pub fn matches(&self, r: &pb::Record) -> bool {
        self.matches_in(r, &Tables::default())
    }

    /// Whether a record of a batch (with its identity tables) matches.
    pub fn matches_in(&self, r: &pb::Record, t: &Tables<'_>) -> bool {
        if !self.nodes.is_empty() && !self.nodes.iter().any(|n| n == t.node(r)) {
            return false;
        }
        if !self.kinds.is_empty() && !kind_of(r).is_some_and(|k| self.kinds.contains(&k)) {
            return false;
        }
        if self.namespaces.is_empty() && self.pods.is_empty() {
            return true;
        }
        // A policy gap is about a workload: it matches its namespace (and, by name, its workload).
        if let Some(Kind::Finding(pb::Finding { detail: Some(pb::finding::Detail::PolicyGap(g)), .. })) = &r.kind {
            let w = g.workload.clone().unwrap_or_default();
            return self.selects(&w.namespace, &w.name);
        }
        let Some(pod) = local_pod(r, t) else {
            // Losses are about every pod of the node. The node's own pressure
            // record is not: it would match any namespace asked for.
            return matches!(r.kind, Some(Kind::Loss(_)));
        };
        self.selects(&pod.namespace, &pod.name)
    }

    /// Whether the namespace and pod (or workload) filters admit `namespace/name`.
    fn selects(&self, namespace: &str, name: &str) -> bool {
        let ns_ok = self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace);
        let pod_ok = self.pods.is_empty()
            || self.pods.iter().any(|p| match p.split_once('/') {
                Some((ns, n)) => ns == namespace && n == name,
                None => p == name,
            });
        ns_ok && pod_ok
    }
}

pub fn kind_of(r: &pb::Record) -> Option<pb::RecordKind> {
    match r.kind.as_ref()? {
        Kind::Flow(_) => Some(pb::RecordKind::Flow),
        Kind::Loss(_) => Some(pb::RecordKind::Loss),
        Kind::Dns(_) => Some(pb::RecordKind::Dns),
        Kind::Pressure(_) => Some(pb::RecordKind::Pressure),
        Kind::Finding(_) => Some(pb::RecordKind::Finding),
    }
}

/// The pod a record belongs to (its local side; a finding's victim), if any.
pub fn local_pod<'a>(r: &'a pb::Record, t: &Tables<'a>) -> Option<&'a pb::PodRef> {
    if let Some(Kind::Finding(f)) = &r.kind {
        return crate::findings::victim_pod(f);
    }
    match t.record_local(r)?.kind.as_ref()? {
        workload::Kind::Pod(p) => Some(p),
        workload::Kind::Host(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(node: &str, ns: &str, name: &str) -> pb::Record {
        pb::Record {
            node: node.into(),
            kind: Some(Kind::Flow(pb::FlowRecord {
                local: Some(pb::Workload {
                    kind: Some(workload::Kind::Pod(pb::PodRef {
                        namespace: ns.into(),
                        name: name.into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn host_flow() -> pb::Record {
        pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Flow(pb::FlowRecord {
                local: Some(pb::Workload {
                    kind: Some(workload::Kind::Host(pb::HostUnit { unit: "system.slice".into() })),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn loss() -> pb::Record {
        pb::Record { node: "n1".into(), kind: Some(Kind::Loss(pb::LossReport::default())), ..Default::default() }
    }

    fn filter(nodes: &[&str], ns: &[&str], pods: &[&str], kinds: &[pb::RecordKind]) -> Filter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Filter::from_request(&pb::ObserveRequest {
            nodes: s(nodes),
            namespaces: s(ns),
            pods: s(pods),
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            since_unix_nano: 0,
        })
        .unwrap()
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = filter(&[], &[], &[], &[]);
        assert!(f.matches(&flow("n1", "a", "p")) && f.matches(&host_flow()) && f.matches(&loss()));
    }

    #[test]
    fn namespace_and_pod_select_the_local_pod() {
        let f = filter(&[], &["shop"], &[], &[]);
        assert!(f.matches(&flow("n1", "shop", "web")));
        assert!(!f.matches(&flow("n1", "other", "web")));
        assert!(!f.matches(&host_flow()), "host units have no namespace");
        assert!(f.matches(&loss()), "loss reports concern every pod");
        let f = filter(&[], &[], &["shop/web"], &[]);
        assert!(f.matches(&flow("n1", "shop", "web")));
        assert!(!f.matches(&flow("n1", "other", "web")));
        let f = filter(&[], &[], &["web"], &[]);
        assert!(f.matches(&flow("n1", "other", "web")));
        let f = filter(&[], &["shop"], &["db"], &[]);
        assert!(!f.matches(&flow("n1", "shop", "web")), "both lists must match");
    }

    #[test]
    fn node_and_kind() {
        let f = filter(&["n2"], &[], &[], &[]);
        assert!(!f.matches(&flow("n1", "a", "p")));
        assert!(f.matches(&flow("n2", "a", "p")));
        let f = filter(&[], &[], &[], &[pb::RecordKind::Loss]);
        assert!(f.matches(&loss()) && !f.matches(&flow("n1", "a", "p")));
    }

    fn pod(ns: &str, name: &str) -> pb::Workload {
        pb::Workload {
            kind: Some(workload::Kind::Pod(pb::PodRef {
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn pressure_records_by_their_pod_also_through_the_batch_table() {
        let pressure = |local: Option<pb::Workload>, local_index: u32, node: bool| pb::Record {
            kind: Some(Kind::Pressure(pb::PressureRecord { local, local_index, node, ..Default::default() })),
            ..Default::default()
        };
        let table = [pod("shop", "web")];
        let t = Tables { node: "n1", workloads: &table, pods: &[] };
        let f = filter(&[], &["shop"], &["web"], &[pb::RecordKind::Pressure]);
        assert!(f.matches(&pressure(Some(pod("shop", "web")), 0, false)));
        assert!(f.matches_in(&pressure(None, 1, false), &t), "local_index resolves through the table");
        assert!(!f.matches(&pressure(Some(pod("db", "web")), 0, false)));
        assert!(!f.matches_in(&pressure(None, 0, true), &t), "the node record is no pod's");
        assert!(filter(&["n1"], &[], &[], &[]).matches_in(&pressure(None, 0, true), &t));
    }

    #[test]
    fn findings_by_their_victim_pod() {
        let finding = |victim: pb::Workload| pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Finding(pb::Finding {
                detail: Some(pb::finding::Detail::NoisyNeighbour(pb::NoisyNeighbour {
                    victim: Some(victim),
                    culprits: vec![pb::Culprit { workload: Some(pod("batch", "noisy")), ..Default::default() }],
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        };
        let web = finding(pod("shop", "web"));
        assert!(filter(&[], &["shop"], &[], &[]).matches(&web));
        assert!(filter(&[], &[], &["shop/web"], &[pb::RecordKind::Finding]).matches(&web));
        assert!(!filter(&[], &["batch"], &[], &[]).matches(&web), "the victim's, not a culprit's");
        assert!(!filter(&[], &[], &["noisy"], &[]).matches(&web));
        let on_host = finding(pb::Workload {
            kind: Some(workload::Kind::Host(pb::HostUnit { unit: "system.slice".into() })),
            ..Default::default()
        });
        assert!(!filter(&[], &["shop"], &[], &[]).matches(&on_host));
        assert!(filter(&[], &[], &[], &[pb::RecordKind::Finding]).matches(&on_host));
    }

    #[test]
    fn policy_gaps_by_their_workload() {
        let gap = pb::Record {
            node: "cluster".into(),
            kind: Some(Kind::Finding(pb::Finding {
                detail: Some(pb::finding::Detail::PolicyGap(pb::PolicyGap {
                    workload: Some(pb::WorkloadRef {
                        namespace: "shop".into(),
                        kind: "Deployment".into(),
                        name: "web".into(),
                    }),
                    peer: "workload:ops/Pod/debug".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(filter(&[], &["shop"], &[], &[]).matches(&gap));
        assert!(filter(&[], &[], &["shop/web"], &[]).matches(&gap));
        assert!(!filter(&[], &["ops"], &[], &[]).matches(&gap), "the workload's namespace, not the peer's");
        assert!(!filter(&["n1"], &[], &[], &[]).matches(&gap), "about the cluster, not a node");
    }

    #[test]
    fn bad_requests_are_rejected_with_the_field() {
        let err = Filter::from_request(&pb::ObserveRequest { kinds: vec![0], ..Default::default() }).unwrap_err();
        assert_eq!(err.to_string(), "kinds[0]: unknown record kind 0");
        let err = Filter::from_request(&pb::ObserveRequest { kinds: vec![1, 42], ..Default::default() }).unwrap_err();
        assert_eq!(err, FilterError::UnknownKind { index: 1, value: 42 });
        let err =
            Filter::from_request(&pb::ObserveRequest { pods: vec!["".into()], ..Default::default() }).unwrap_err();
        assert_eq!(err.to_string(), "pods[0]: empty string");
    }
}

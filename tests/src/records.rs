//! Sums of flow records across windows, keyed the way tests ask questions.

use std::collections::BTreeMap;

use podlens_proto::v1::{self as pb, record::Kind, workload};

/// A flow's 5-tuple from the local side.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub local_ip: String,
    pub local_port: u32,
    pub remote_ip: String,
    pub remote_port: u32,
    pub protocol: u32,
}

/// Counts summed over every window a flow appeared in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub egress_bytes: u64,
    pub egress_packets: u64,
    pub ingress_bytes: u64,
    pub ingress_packets: u64,
    pub syn: (u32, u32),
    pub fin: (u32, u32),
    pub records: usize,
    /// Remote pod names seen on these records ("ns/name"), in order.
    pub remote_pods: Vec<String>,
    pub workload: Option<pb::Workload>,
    /// Each record's initiator, in order.
    pub initiators: Vec<pb::Initiator>,
}

pub fn flows(records: &[pb::Record]) -> impl Iterator<Item = &pb::FlowRecord> {
    records.iter().filter_map(|r| match &r.kind {
        Some(Kind::Flow(f)) => Some(f),
        _ => None,
    })
}

pub fn tuple(f: &pb::FlowRecord) -> Tuple {
    let remote = f.remote.clone().unwrap_or_default();
    Tuple {
        local_ip: f.local_ip.clone(),
        local_port: f.local_port,
        remote_ip: remote.ip,
        remote_port: remote.port,
        protocol: f.protocol,
    }
}

/// The pod UID of a record's local side.
pub fn local_uid(f: &pb::FlowRecord) -> Option<&str> {
    match f.local.as_ref()?.kind.as_ref()? {
        workload::Kind::Pod(p) => Some(p.uid.as_str()),
        workload::Kind::Host(_) => None,
    }
}

/// Totals per tuple of the flows whose local side matches `select`.
pub fn totals(records: &[pb::Record], select: impl Fn(&pb::FlowRecord) -> bool) -> BTreeMap<Tuple, Totals> {
    let mut out: BTreeMap<Tuple, Totals> = BTreeMap::new();
    for f in flows(records).filter(|f| select(f)) {
        let t = out.entry(tuple(f)).or_default();
        let e = f.egress.unwrap_or_default();
        let i = f.ingress.unwrap_or_default();
        t.egress_bytes += e.bytes;
        t.egress_packets += e.packets;
        t.ingress_bytes += i.bytes;
        t.ingress_packets += i.packets;
        t.syn.0 += e.syn;
        t.syn.1 += i.syn;
        t.fin.0 += e.fin;
        t.fin.1 += i.fin;
        t.records += 1;
        if let Some(p) = f.remote.as_ref().and_then(|r| r.pod.as_ref()) {
            t.remote_pods.push(format!("{}/{}", p.namespace, p.name));
        }
        t.workload = f.local.clone();
        t.initiators.push(f.initiator());
    }
    out
}

/// Totals of the flows of one pod UID.
pub fn pod_totals(records: &[pb::Record], uid: &str) -> BTreeMap<Tuple, Totals> {
    totals(records, |f| local_uid(f) == Some(uid))
}

/// The latest cumulative total of a loss counter.
pub fn loss_total(records: &[pb::Record], source: &str, reason: &str) -> Option<u64> {
    records.iter().rev().find_map(|r| match &r.kind {
        Some(Kind::Loss(l)) => l.counters.iter().find(|c| c.source == source && c.reason == reason).map(|c| c.total),
        _ => None,
    })
}

//! Sums of DNS records across windows, per pod and role.

use std::collections::{btree_map::Entry, BTreeMap};

use podlens_proto::v1::{self as pb, record::Kind, workload};

/// A latency row's key: (resolver ip, port, protocol, qtype, rcode).
pub type LatencyKey = (String, u32, u32, u32, u32);

#[derive(Clone, Debug, Default)]
pub struct DnsTotals {
    pub counts: pb::DnsCounts,
    pub latency: BTreeMap<LatencyKey, pb::DnsLatency>,
    /// (resolver ip, port, protocol, qtype) -> timeouts.
    pub timeouts: BTreeMap<(String, u32, u32, u32), u64>,
    /// Per name, summed (top names only).
    pub names: BTreeMap<String, pb::DnsName>,
    pub records: usize,
}

fn add_counts(a: &mut pb::DnsCounts, b: &pb::DnsCounts) {
    a.queries += b.queries;
    a.retries += b.retries;
    a.responses += b.responses;
    a.noerror += b.noerror;
    a.nodata += b.nodata;
    a.nxdomain += b.nxdomain;
    a.servfail += b.servfail;
    a.refused += b.refused;
    a.other_rcode += b.other_rcode;
    a.timeouts += b.timeouts;
    a.truncated += b.truncated;
    a.unmatched_responses += b.unmatched_responses;
    a.malformed += b.malformed;
    a.search_expansions += b.search_expansions;
    a.expanded_lookups += b.expanded_lookups;
}

fn uid(d: &pb::DnsRecord) -> Option<&str> {
    match d.local.as_ref()?.kind.as_ref()? {
        workload::Kind::Pod(p) => Some(&p.uid),
        workload::Kind::Host(_) => None,
    }
}

/// The DNS records of pod `pod_uid` in `role`, summed.
pub fn dns_totals(records: &[pb::Record], pod_uid: &str, role: pb::DnsRole) -> DnsTotals {
    let mut t = DnsTotals::default();
    for r in records {
        let Some(Kind::Dns(d)) = &r.kind else { continue };
        if uid(d) != Some(pod_uid) || d.role != role as i32 {
            continue;
        }
        t.records += 1;
        add_counts(&mut t.counts, &d.counts.unwrap_or_default());
        for l in &d.latency {
            let key = (l.resolver_ip.clone(), l.resolver_port, l.protocol, l.qtype, l.rcode);
            match t.latency.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(l.clone());
                }
                Entry::Occupied(mut o) => {
                    let row = o.get_mut();
                    row.count += l.count;
                    row.sum_ns += l.sum_ns;
                    row.min_ns = row.min_ns.min(l.min_ns);
                    row.max_ns = row.max_ns.max(l.max_ns);
                    for (a, b) in row.buckets.iter_mut().zip(&l.buckets) {
                        *a += b;
                    }
                }
            }
        }
        for to in &d.timeouts {
            *t.timeouts.entry((to.resolver_ip.clone(), to.resolver_port, to.protocol, to.qtype)).or_default() +=
                to.count;
        }
        for n in &d.top_names {
            let e = t
                .names
                .entry(n.name.clone())
                .or_insert_with(|| pb::DnsName { name: n.name.clone(), ..Default::default() });
            e.queries += n.queries;
            e.nxdomain += n.nxdomain;
            e.errors += n.errors;
            e.timeouts += n.timeouts;
            e.search_expansions += n.search_expansions;
        }
    }
    t
}

//! Per-workload summaries for `podlens top`: traffic, client-side DNS and pod
//! pressure per (node, workload) in one-minute buckets kept for a bounded
//! time, with a bounded number of workloads per bucket (what does not fit is
//! counted).

use std::{collections::HashMap, sync::Arc};

use podlens_proto::{
    compact::Tables,
    v1::{self as pb, record::Kind},
};

use crate::{
    minutes::Minutes,
    pressure::{self, Pressure},
};

/// A latency histogram as the agents send it: counts per bucket of `bounds`
/// plus one overflow bucket. Agents with other bounds cannot be merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Hist {
    #[default]
    Empty,
    Buckets {
        bounds: Vec<u64>,
        counts: Vec<u64>,
    },
    /// Different bounds met: only mean and max are known.
    Mixed,
}

impl Hist {
    fn add(&mut self, bounds: &[u64], counts: &[u64]) {
        if counts.len() != bounds.len() + 1 {
            *self = Hist::Mixed;
            return;
        }
        match self {
            Hist::Empty => *self = Hist::Buckets { bounds: bounds.to_vec(), counts: counts.to_vec() },
            Hist::Buckets { bounds: b, counts: c } if b.as_slice() == bounds => {
                for (a, x) in c.iter_mut().zip(counts) {
                    *a += x;
                }
            }
            _ => *self = Hist::Mixed,
        }
    }

    fn merge(&mut self, other: &Hist) {
        match other {
            Hist::Empty => {}
            Hist::Buckets { bounds, counts } => self.add(bounds, counts),
            Hist::Mixed => *self = Hist::Mixed,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Summary {
    node: Arc<str>,
    workload: pb::Workload,
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
    flow_records: u64,
    dns: pb::DnsCounts,
    latency_count: u64,
    latency_sum_ns: u64,
    latency_max_ns: u64,
    hist: Hist,
    last_seen: u64,
    /// Flow or client DNS records seen (pod-level cgroups have pressure only).
    traffic: bool,
    /// Pod-level pressure records, when any.
    pressure: Option<Pressure>,
}

fn add_counts(s: &mut pb::DnsCounts, c: &pb::DnsCounts) {
    s.queries += c.queries;
    s.responses += c.responses;
    s.nxdomain += c.nxdomain;
    s.servfail += c.servfail;
    s.refused += c.refused;
    s.other_rcode += c.other_rcode;
    s.timeouts += c.timeouts;
    s.retries += c.retries;
    s.search_expansions += c.search_expansions;
    s.malformed += c.malformed;
}

impl Summary {
    fn add_dns(&mut self, d: &pb::DnsRecord) {
        add_counts(&mut self.dns, &d.counts.unwrap_or_default());
        for l in &d.latency {
            self.latency_count += l.count;
            self.latency_sum_ns = self.latency_sum_ns.saturating_add(l.sum_ns);
            self.latency_max_ns = self.latency_max_ns.max(l.max_ns);
            self.hist.add(&d.latency_bounds_ns, &l.buckets);
        }
    }

    fn merge(&mut self, o: &Summary) {
        self.tx_bytes += o.tx_bytes;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_packets += o.rx_packets;
        self.flow_records += o.flow_records;
        add_counts(&mut self.dns, &o.dns);
        self.latency_count += o.latency_count;
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(o.latency_sum_ns);
        self.latency_max_ns = self.latency_max_ns.max(o.latency_max_ns);
        self.hist.merge(&o.hist);
        self.last_seen = self.last_seen.max(o.last_seen);
        self.traffic |= o.traffic;
        if let Some(p) = &o.pressure {
            self.pressure.get_or_insert_with(Pressure::default).merge(p);
        }
    }

    /// The upper bound of the bucket holding quantile `q`.
    fn quantile(&self, q: f64) -> u64 {
        let Hist::Buckets { bounds, counts: b } = &self.hist else { return 0 };
        let total: u64 = b.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in b.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // the overflow bucket has no bound: report the max seen
                return bounds.get(i).copied().unwrap_or(self.latency_max_ns);
            }
        }
        self.latency_max_ns
    }

    fn to_pb(&self) -> pb::WorkloadSummary {
        let d = &self.dns;
        pb::WorkloadSummary {
            node: self.node.to_string(),
            workload: Some(self.workload.clone()),
            tx_bytes: self.tx_bytes,
            rx_bytes: self.rx_bytes,
            tx_packets: self.tx_packets,
            rx_packets: self.rx_packets,
            flow_records: self.flow_records,
            pressure: self.pressure.as_ref().map(Pressure::to_pb),
            dns: Some(pb::DnsSummary {
                queries: d.queries,
                responses: d.responses,
                nxdomain: d.nxdomain,
                errors: d.servfail + d.refused + d.other_rcode,
                timeouts: d.timeouts,
                retries: d.retries,
                search_expansions: d.search_expansions,
                malformed: d.malformed,
                latency_mean_ns: self.latency_sum_ns.checked_div(self.latency_count).unwrap_or(0),
                latency_max_ns: self.latency_max_ns,
                latency_p50_ns: self.quantile(0.5),
                latency_p99_ns: self.quantile(0.99),
            }),
            last_seen_unix_nano: self.last_seen,
        }
    }
}

pub struct Workloads {
    minutes: Minutes<HashMap<(Arc<str>, u64), Summary>>,
    max_per_bucket: usize,
    /// Records that did not fit a full bucket.
    pub dropped: u64,
}

impl Workloads {
    /// Keeps `retention_minutes` one-minute buckets of at most `max_per_bucket` workloads.
    pub fn new(retention_minutes: usize, max_per_bucket: usize) -> Self {
        Self { minutes: Minutes::new(retention_minutes), max_per_bucket: max_per_bucket.max(1), dropped: 0 }
    }

    /// Adds the flow, client DNS and pod-level pressure records of a batch
    /// received at `now` (Unix ns).
    pub fn add(&mut self, records: &[pb::Record], tables: &Tables<'_>, now: u64) {
        let bucket = self.minutes.current(now);
        for r in records {
            let local = tables.record_local(r);
            let wanted = match &r.kind {
                Some(Kind::Flow(_)) => true,
                Some(Kind::Dns(d)) => d.role == pb::DnsRole::Client as i32,
                Some(Kind::Pressure(p)) => pressure::is_pod_level(p, local),
                _ => false,
            };
            let (true, Some(local)) = (wanted, local) else { continue };
            let key = (Arc::from(tables.node(r)), local.cgroup_id);
            if !bucket.contains_key(&key) && bucket.len() >= self.max_per_bucket {
                self.dropped += 1;
                continue;
            }
            let s = bucket.entry(key.clone()).or_insert_with(|| Summary {
                node: key.0.clone(),
                workload: local.clone(),
                ..Default::default()
            });
            s.last_seen = s.last_seen.max(r.window_end_unix_nano);
            match &r.kind {
                Some(Kind::Flow(f)) => {
                    let (e, i) = (f.egress.unwrap_or_default(), f.ingress.unwrap_or_default());
                    s.tx_bytes += e.bytes;
                    s.rx_bytes += i.bytes;
                    s.tx_packets += e.packets;
                    s.rx_packets += i.packets;
                    s.flow_records += 1;
                    s.traffic = true;
                }
                Some(Kind::Dns(d)) => {
                    s.add_dns(d);
                    s.traffic = true;
                }
                Some(Kind::Pressure(p)) => {
                    s.pressure.get_or_insert_with(Pressure::default).add(p, r.window_end_unix_nano)
                }
                _ => {}
            }
        }
    }

    /// The `limit` first by `sort` since `since` (Unix ns), optionally only
    /// pods in `namespaces`; and the oldest time still retained. Ranked by
    /// pressure: pods with pressure records only; otherwise: workloads with
    /// traffic or DNS only (pod-level cgroups carry no sockets).
    pub fn top(
        &self,
        limit: usize,
        namespaces: &[String],
        since: u64,
        sort: pb::TopSort,
    ) -> (Vec<pb::WorkloadSummary>, u64) {
        let mut sums: HashMap<&(Arc<str>, u64), Summary> = HashMap::new();
        for b in self.minutes.since(since) {
            for (k, s) in b {
                match sums.get_mut(k) {
                    Some(sum) => sum.merge(s),
                    None => {
                        sums.insert(k, s.clone());
                    }
                }
            }
        }
        let by_pressure = sort == pb::TopSort::Pressure;
        let rank = |s: &Summary| -> u64 {
            let d = &s.dns;
            match sort {
                pb::TopSort::Unspecified => s.tx_bytes + s.rx_bytes,
                pb::TopSort::DnsQueries => d.queries,
                pb::TopSort::DnsFailures => d.nxdomain + d.servfail + d.refused + d.other_rcode + d.timeouts,
                pb::TopSort::DnsLatency => {
                    s.quantile(0.99).max(s.latency_sum_ns.checked_div(s.latency_count).unwrap_or(0))
                }
                pb::TopSort::Pressure => s.pressure.as_ref().map_or(0, Pressure::rank),
            }
        };
        let mut ranked: Vec<(u64, pb::WorkloadSummary)> = sums
            .into_values()
            .filter(|s| if by_pressure { s.pressure.is_some() } else { s.traffic })
            .filter(|s| match &s.workload.kind {
                Some(pb::workload::Kind::Pod(p)) => namespaces.is_empty() || namespaces.contains(&p.namespace),
                _ => namespaces.is_empty(),
            })
            .map(|s| (rank(&s), s.to_pb()))
            .collect();
        let id = |w: &pb::WorkloadSummary| w.workload.as_ref().map_or(0, |w| w.cgroup_id);
        ranked.sort_by(|(ra, a), (rb, b)| rb.cmp(ra).then_with(|| a.node.cmp(&b.node)).then_with(|| id(a).cmp(&id(b))));
        let out = ranked.into_iter().take(limit).map(|(_, w)| w).collect();
        (out, self.minutes.oldest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minutes::BUCKET_NS;

    fn workload(ns: &str, cgroup: u64) -> pb::Workload {
        pb::Workload {
            cgroup_id: cgroup,
            kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                namespace: ns.into(),
                name: format!("p{cgroup}"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn flow(ns: &str, cgroup: u64, tx: u64, rx: u64) -> pb::Record {
        pb::Record {
            node: "n1".into(),
            window_end_unix_nano: 5,
            kind: Some(Kind::Flow(pb::FlowRecord {
                local: Some(workload(ns, cgroup)),
                egress: Some(pb::FlowCounts { bytes: tx, packets: 1, ..Default::default() }),
                ingress: Some(pb::FlowCounts { bytes: rx, packets: 2, ..Default::default() }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn dns(ns: &str, cgroup: u64, role: pb::DnsRole, latencies_ms: &[u64], nx: u64) -> pb::Record {
        let bounds = vec![1_000_000, 10_000_000, 100_000_000];
        let mut buckets = vec![0; 4];
        for l in latencies_ms {
            buckets[bounds.iter().position(|b| l * 1_000_000 <= *b).unwrap_or(3)] += 1;
        }
        pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Dns(pb::DnsRecord {
                local: Some(workload(ns, cgroup)),
                role: role as i32,
                counts: Some(pb::DnsCounts {
                    queries: latencies_ms.len() as u64,
                    responses: latencies_ms.len() as u64,
                    nxdomain: nx,
                    ..Default::default()
                }),
                latency_bounds_ns: bounds,
                latency: vec![pb::DnsLatency {
                    count: latencies_ms.len() as u64,
                    sum_ns: latencies_ms.iter().sum::<u64>() * 1_000_000,
                    max_ns: latencies_ms.iter().max().copied().unwrap_or(0) * 1_000_000,
                    buckets,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn sums_traffic_and_client_dns_across_buckets_and_ranks() {
        let mut w = Workloads::new(15, 100);
        let t = Tables { node: "n1", ..Default::default() };
        w.add(&[flow("shop", 1, 100, 10), dns("shop", 1, pb::DnsRole::Client, &[2, 3], 1)], &t, BUCKET_NS);
        w.add(&[flow("shop", 1, 50, 5), dns("shop", 1, pb::DnsRole::Client, &[200], 0)], &t, 2 * BUCKET_NS);
        w.add(
            &[flow("kube-system", 2, 1000, 0), dns("kube-system", 2, pb::DnsRole::Server, &[1], 0)],
            &t,
            2 * BUCKET_NS,
        );
        let (top, since) = w.top(10, &[], 0, pb::TopSort::Unspecified);
        assert_eq!(since, BUCKET_NS);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].tx_bytes, 1000, "ranked by bytes");
        assert_eq!(top[0].dns.unwrap().queries, 0, "a server's DNS is not its own lookups");
        let shop = &top[1];
        assert_eq!((shop.tx_bytes, shop.rx_bytes, shop.flow_records), (150, 15, 2));
        let d = shop.dns.unwrap();
        assert_eq!((d.queries, d.nxdomain, d.latency_max_ns), (3, 1, 200_000_000));
        assert_eq!(d.latency_mean_ns, 205_000_000 / 3);
        assert_eq!(d.latency_p50_ns, 10_000_000, "2 of 3 at or below 10 ms");
        assert_eq!(d.latency_p99_ns, 200_000_000, "the overflow bucket reports the max");
        let (by_dns, _) = w.top(10, &["shop".into()], 0, pb::TopSort::DnsQueries);
        assert_eq!(by_dns.len(), 1);
        let (recent, _) = w.top(10, &[], 2 * BUCKET_NS, pb::TopSort::Unspecified);
        assert_eq!(recent.iter().find(|s| s.workload.as_ref().unwrap().cgroup_id == 1).unwrap().tx_bytes, 50);
    }

    #[test]
    fn histograms_with_other_bounds_keep_mean_and_max_only() {
        let mut w = Workloads::new(15, 100);
        let t = Tables { node: "n1", ..Default::default() };
        let mut other = dns("shop", 1, pb::DnsRole::Client, &[50], 0);
        if let Some(Kind::Dns(d)) = &mut other.kind {
            d.latency_bounds_ns = vec![5, 6, 7];
        }
        w.add(&[dns("shop", 1, pb::DnsRole::Client, &[2], 0)], &t, 0);
        w.add(&[other], &t, BUCKET_NS);
        let d = w.top(10, &[], 0, pb::TopSort::DnsLatency).0[0].dns.unwrap();
        assert_eq!((d.latency_p50_ns, d.latency_p99_ns), (0, 0), "unknown, not guessed");
        assert_eq!((d.latency_mean_ns, d.latency_max_ns), (26_000_000, 50_000_000));
    }

    fn pressure(ns: &str, cgroup: u64, container: &str, wait: u64, cpu_some: u64, end: u64) -> pb::Record {
        let mut local = workload(ns, cgroup);
        if let Some(pb::workload::Kind::Pod(p)) = &mut local.kind {
            p.container_id = container.into();
        }
        pb::Record {
            node: "n1".into(),
            window_end_unix_nano: end,
            kind: Some(Kind::Pressure(pb::PressureRecord {
                local: Some(local),
                cpu: Some(pb::Psi {
                    some_usec: Some(pb::Counter { total: cpu_some, delta: cpu_some }),
                    ..Default::default()
                }),
                run_queue: (wait > 0).then(|| pb::RunQueue {
                    wakeup_wait_ns: wait,
                    buckets: vec![1],
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn pressure_of_pod_level_records_only_ranked_by_wait() {
        let mut w = Workloads::new(15, 100);
        let t = Tables { node: "n1", ..Default::default() };
        w.add(
            &[
                pressure("shop", 10, "", 5_000, 3, 1),
                pressure("shop", 11, "c1", 9_000_000, 3, 1),
                pressure("db", 20, "", 9_000, 1, 1),
                flow("shop", 11, 100, 10),
            ],
            &t,
            BUCKET_NS,
        );
        w.add(&[pressure("shop", 10, "", 5_000, 4, 2)], &t, 2 * BUCKET_NS);
        let node = pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Pressure(pb::PressureRecord { node: true, ..Default::default() })),
            ..Default::default()
        };
        w.add(&[node], &t, 2 * BUCKET_NS);
        let (top, _) = w.top(10, &[], 0, pb::TopSort::Pressure);
        let ids: Vec<u64> = top.iter().map(|s| s.workload.as_ref().unwrap().cgroup_id).collect();
        assert_eq!(ids, [10, 20], "pods only: neither the container nor the node");
        let p = top[0].pressure.clone().unwrap();
        assert_eq!((p.windows, p.wait_ns, p.cpu_some_usec, p.run_queue_p99_ns), (2, 10_000, 7, 1024));
        let (bytes, _) = w.top(10, &[], 0, pb::TopSort::Unspecified);
        assert_eq!(bytes.len(), 1, "pressure-only pod cgroups have no traffic to rank");
        assert!(bytes[0].pressure.is_none());
        let (db, _) = w.top(10, &["db".into()], 0, pb::TopSort::Pressure);
        assert_eq!(db.len(), 1);
    }

    #[test]
    fn pressure_ranks_by_psi_where_no_run_queue_data() {
        let mut w = Workloads::new(15, 100);
        let t = Tables { node: "n1", ..Default::default() };
        w.add(
            &[pressure("a", 1, "", 0, 50, 1), pressure("a", 2, "", 20_000, 0, 1), pressure("a", 3, "", 0, 1, 1)],
            &t,
            0,
        );
        let (top, _) = w.top(10, &[], 0, pb::TopSort::Pressure);
        let ids: Vec<u64> = top.iter().map(|s| s.workload.as_ref().unwrap().cgroup_id).collect();
        assert_eq!(ids, [1, 2, 3], "50 us of stall outranks 20 us of wait");
    }

    #[test]
    fn bounded_per_bucket() {
        let mut w = Workloads::new(1, 2);
        let t = Tables { node: "n1", ..Default::default() };
        w.add(&[flow("a", 1, 1, 1), flow("a", 2, 1, 1), flow("a", 3, 1, 1), flow("a", 1, 1, 1)], &t, 0);
        assert_eq!(w.dropped, 1);
        assert_eq!(w.top(10, &[], 0, pb::TopSort::Unspecified).0.len(), 2);
    }
}

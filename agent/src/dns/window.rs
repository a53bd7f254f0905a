//! One window of DNS per (workload, role): counts, latency histograms by
//! (resolver, protocol, qtype, rcode), timeouts by (resolver, protocol,
//! qtype), and the names asked for, all bounded: past the limits, names,
//! latency and timeout rows fold into an "other" bucket and whole workloads
//! into a loss counter.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
};

use podlens_proto::v1 as pb;

use super::{wire, Conn, Role};

/// Upper bounds of the latency buckets (ns); one more bucket holds the rest.
pub const LATENCY_BOUNDS_NS: [u64; 14] = [
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
];

/// Latency rows per workload; further ones fold into a row with resolver "other".
const MAX_LATENCY_ROWS: usize = 64;
/// Timeout rows per workload, likewise: a recursive resolver's client side
/// can time out against any number of upstream servers.
const MAX_TIMEOUT_ROWS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Workloads per window (beyond: their messages are counted as lost).
    pub max_workloads: usize,
    /// Distinct names tracked per workload and window (beyond: "other").
    pub max_names: usize,
    /// Names reported per record (the rest sum into `other_names`).
    pub top_names: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LatencyKey {
    resolver: Option<SocketAddr>,
    protocol: u32,
    qtype: u16,
    rcode: u16,
}

/// (resolver, protocol, qtype) of a timeout row; no resolver for "other".
type TimeoutKey = (Option<SocketAddr>, u32, u16);

#[derive(Default)]
struct Owner {
    counts: pb::DnsCounts,
    latency: HashMap<LatencyKey, pb::DnsLatency>,
    timeouts: HashMap<TimeoutKey, u64>,
    names: HashMap<String, pb::DnsName>,
    /// Queries for names beyond `max_names`.
    untracked: pb::DnsName,
    /// One bit per hash of the untracked names: keeping the names to count
    /// them exactly would unbound the table again, while the bits set are a
    /// lower bound of their number, close to it while well under 256.
    untracked_seen: [u64; 4],
}

#[derive(Default)]
pub struct DnsWindow {
    owners: HashMap<(u64, Role), Owner>,
    /// Events not aggregated because the window had `max_workloads` already.
    pub workloads_dropped: u64,
    /// Responses and timeouts aggregated into an "other" row because their
    /// workload had the most rows already (kept, not lost).
    pub latency_folded: u64,
    pub timeouts_folded: u64,
}

/// The resolver of a latency or timeout row: the server the client asked, or
/// the server workload's own address.
fn resolver(conn: &Conn, role: Role) -> SocketAddr {
    match role {
        Role::Client => conn.remote,
        Role::Server => conn.local,
    }
}

impl DnsWindow {
    fn owner(&mut self, conn: &Conn, role: Role, limits: &Limits) -> Option<&mut Owner> {
        let key = (conn.cgroup_id, role);
        if !self.owners.contains_key(&key) && self.owners.len() >= limits.max_workloads {
            self.workloads_dropped += 1;
            return None;
        }
        Some(self.owners.entry(key).or_default())
    }

    fn name<'a>(o: &'a mut Owner, qname: &str, limits: &Limits) -> &'a mut pb::DnsName {
        if !o.names.contains_key(qname) && o.names.len() >= limits.max_names {
            let mut h = DefaultHasher::new();
            qname.hash(&mut h);
            let bit = (h.finish() % 256) as usize;
            o.untracked_seen[bit / 64] |= 1 << (bit % 64);
            return &mut o.untracked;
        }
        o.names
            .entry(qname.to_string())
            .or_insert_with(|| pb::DnsName { name: qname.to_string(), ..Default::default() })
    }

    pub fn query(&mut self, conn: &Conn, role: Role, qname: &str, retry: bool, limits: &Limits) {
        let Some(o) = self.owner(conn, role, limits) else { return };
        o.counts.queries += 1;
        o.counts.retries += u64::from(retry);
        Self::name(o, qname, limits).queries += 1;
    }

    #[allow(clippy::too_many_arguments)]
    pub fn response(
        &mut self,
        conn: &Conn,
        role: Role,
        qname: &str,
        qtype: u16,
        rcode: u16,
        answers: usize,
        latency_ns: u64,
        truncated: bool,
        limits: &Limits,
    ) {
        let Some(o) = self.owner(conn, role, limits) else { return };
        let c = &mut o.counts;
        c.responses += 1;
        c.truncated += u64::from(truncated);
        match rcode {
            wire::RCODE_NOERROR if answers > 0 => c.noerror += 1,
            wire::RCODE_NOERROR => c.nodata += 1,
            wire::RCODE_NXDOMAIN => c.nxdomain += 1,
            wire::RCODE_SERVFAIL => c.servfail += 1,
            5 => c.refused += 1,
            _ => c.other_rcode += 1,
        }
        let n = Self::name(o, qname, limits);
        match rcode {
            wire::RCODE_NOERROR => {}
            wire::RCODE_NXDOMAIN => n.nxdomain += 1,
            _ => n.errors += 1,
        }
        let mut key =
            LatencyKey { resolver: Some(resolver(conn, role)), protocol: conn.transport.protocol(), qtype, rcode };
        let folded = !o.latency.contains_key(&key) && o.latency.len() >= MAX_LATENCY_ROWS;
        if folded {
            key = LatencyKey { resolver: None, protocol: 0, qtype: 0, rcode: 0 };
        }
        let row = o.latency.entry(key.clone()).or_insert_with(|| pb::DnsLatency {
            resolver_ip: key.resolver.map_or_else(|| "other".to_string(), |r| r.ip().to_string()),
            resolver_port: key.resolver.map_or(0, |r| r.port().into()),
            protocol: key.protocol,
            qtype: key.qtype.into(),
            rcode: key.rcode.into(),
            min_ns: u64::MAX,
            buckets: vec![0; LATENCY_BOUNDS_NS.len() + 1],
            ..Default::default()
        });
        row.count += 1;
        row.sum_ns = row.sum_ns.saturating_add(latency_ns);
        row.min_ns = row.min_ns.min(latency_ns);
        row.max_ns = row.max_ns.max(latency_ns);
        let bucket = LATENCY_BOUNDS_NS.iter().position(|b| latency_ns <= *b).unwrap_or(LATENCY_BOUNDS_NS.len());
        row.buckets[bucket] += 1;
        self.latency_folded += u64::from(folded);
    }

    pub fn timeout(&mut self, conn: &Conn, role: Role, qname: &str, qtype: u16, limits: &Limits) {
        let Some(o) = self.owner(conn, role, limits) else { return };
        o.counts.timeouts += 1;
        Self::name(o, qname, limits).timeouts += 1;
        let mut key = (Some(resolver(conn, role)), conn.transport.protocol(), qtype);
        let folded = !o.timeouts.contains_key(&key) && o.timeouts.len() >= MAX_TIMEOUT_ROWS;
        if folded {
            key = (None, 0, 0);
        }
        *o.timeouts.entry(key).or_default() += 1;
        self.timeouts_folded += u64::from(folded);
    }

    pub fn unmatched(&mut self, conn: &Conn, role: Role, limits: &Limits) {
        if let Some(o) = self.owner(conn, role, limits) {
            o.counts.unmatched_responses += 1;
        }
    }

    pub fn malformed(&mut self, conn: &Conn, role: Role, limits: &Limits) {
        if let Some(o) = self.owner(conn, role, limits) {
            o.counts.malformed += 1;
        }
    }

    /// `wasted` NXDOMAIN expansions preceded the lookup of `qname` that resolved.
    pub fn expansions(&mut self, conn: &Conn, qname: &str, wasted: usize, limits: &Limits) {
        if wasted == 0 {
            return;
        }
        let Some(o) = self.owner(conn, Role::Client, limits) else { return };
        o.counts.search_expansions += wasted as u64;
        o.counts.expanded_lookups += 1;
        Self::name(o, qname, limits).search_expansions += wasted as u64;
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    pub fn cgroup_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.owners.keys().map(|(id, _)| *id)
    }

    /// The window's records, one per (workload, role), in a stable order.
    pub fn into_records(self, limits: &Limits, mut workload: impl FnMut(u64) -> pb::Workload) -> Vec<pb::DnsRecord> {
        let mut owners: Vec<_> = self.owners.into_iter().collect();
        owners.sort_unstable_by_key(|((id, role), _)| (*id, *role));
        owners
            .into_iter()
            .map(|((id, role), o)| {
                let mut names: Vec<pb::DnsName> = o.names.into_values().collect();
                names.sort_unstable_by(|a, b| b.queries.cmp(&a.queries).then_with(|| a.name.cmp(&b.name)));
                let rest = names.split_off(names.len().min(limits.top_names));
                let mut other = o.untracked;
                let untracked: u32 = o.untracked_seen.iter().map(|w| w.count_ones()).sum();
                other.distinct_names = rest.len() as u64 + u64::from(untracked);
                for n in rest {
                    other.queries += n.queries;
                    other.nxdomain += n.nxdomain;
                    other.errors += n.errors;
                    other.timeouts += n.timeouts;
                    other.search_expansions += n.search_expansions;
                }
                let mut latency: Vec<pb::DnsLatency> = o.latency.into_values().collect();
                latency.sort_unstable_by(|a, b| {
                    (&a.resolver_ip, a.resolver_port, a.protocol, a.qtype, a.rcode).cmp(&(
                        &b.resolver_ip,
                        b.resolver_port,
                        b.protocol,
                        b.qtype,
                        b.rcode,
                    ))
                });
                let mut timeouts: Vec<pb::DnsTimeouts> = o
                    .timeouts
                    .into_iter()
                    .map(|((r, protocol, qtype), count)| pb::DnsTimeouts {
                        resolver_ip: r.map_or_else(|| "other".to_string(), |r| r.ip().to_string()),
                        resolver_port: r.map_or(0, |r| r.port().into()),
                        protocol,
                        qtype: qtype.into(),
                        count,
                    })
                    .collect();
                timeouts.sort_unstable_by(|a, b| {
                    (&a.resolver_ip, a.resolver_port, a.protocol, a.qtype).cmp(&(
                        &b.resolver_ip,
                        b.resolver_port,
                        b.protocol,
                        b.qtype,
                    ))
                });
                pb::DnsRecord {
                    local: Some(workload(id)),
                    local_index: 0,
                    role: match role {
                        Role::Client => pb::DnsRole::Client,
                        Role::Server => pb::DnsRole::Server,
                    } as i32,
                    counts: Some(o.counts),
                    latency_bounds_ns: LATENCY_BOUNDS_NS.to_vec(),
                    latency,
                    timeouts,
                    top_names: names,
                    other_names: Some(other),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Transport;

    const LIMITS: Limits = Limits { max_workloads: 2, max_names: 3, top_names: 2 };

    fn conn(cgroup_id: u64) -> Conn {
        Conn {
            cgroup_id,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.96.0.10:53".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn workload(id: u64) -> pb::Workload {
        pb::Workload { cgroup_id: id, ..Default::default() }
    }

    #[test]
    fn counts_latency_and_outcomes_per_workload_and_role() {
        let mut w = DnsWindow::default();
        let c = conn(1);
        for (retry, rcode, answers, lat) in [(false, 0, 1, 800_000), (true, 0, 0, 3_000_000), (false, 3, 0, 1_000_000)]
        {
            w.query(&c, Role::Client, "a.example", retry, &LIMITS);
            w.response(&c, Role::Client, "a.example", 1, rcode, answers, lat, false, &LIMITS);
        }
        w.query(&c, Role::Client, "b.example", false, &LIMITS);
        w.timeout(&c, Role::Client, "b.example", 28, &LIMITS);
        w.query(&c, Role::Server, "x.example", false, &LIMITS);
        let recs = w.into_records(&LIMITS, workload);
        assert_eq!(recs.len(), 2, "client and server records");
        let r = &recs[0];
        assert_eq!(r.role, pb::DnsRole::Client as i32);
        let c = r.counts.unwrap();
        assert_eq!(
            (c.queries, c.retries, c.responses, c.noerror, c.nodata, c.nxdomain, c.timeouts),
            (4, 1, 3, 1, 1, 1, 1)
        );
        // one row per rcode
        assert_eq!(r.latency.len(), 2);
        let ok = r.latency.iter().find(|l| l.rcode == 0).unwrap();
        assert_eq!((ok.count, ok.min_ns, ok.max_ns, ok.sum_ns), (2, 800_000, 3_000_000, 3_800_000));
        assert_eq!(ok.buckets.iter().sum::<u64>(), 2);
        assert_eq!((ok.buckets[2], ok.buckets[4]), (1, 1), "<= 1 ms and <= 5 ms");
        assert_eq!((ok.resolver_ip.as_str(), ok.resolver_port, ok.protocol), ("10.96.0.10", 53, 17));
        assert_eq!(r.timeouts[0].count, 1);
        assert_eq!(r.timeouts[0].qtype, 28);
        assert_eq!(r.top_names[0].name, "a.example");
        assert_eq!((r.top_names[0].queries, r.top_names[0].nxdomain), (3, 1));
    }

    #[test]
    fn names_and_workloads_are_bounded_and_nothing_vanishes() {
        let mut w = DnsWindow::default();
        let c = conn(1);
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            for _ in 0..=i {
                w.query(&c, Role::Client, name, false, &LIMITS);
            }
        }
        w.query(&conn(2), Role::Client, "z", false, &LIMITS);
        w.query(&conn(3), Role::Client, "z", false, &LIMITS);
        assert_eq!(w.workloads_dropped, 1);
        let recs = w.into_records(&LIMITS, workload);
        let r = &recs[0];
        // tracked: a(1) b(2) c(3); d and e went untracked
        let top: Vec<(&str, u64)> = r.top_names.iter().map(|n| (n.name.as_str(), n.queries)).collect();
        assert_eq!(top, vec![("c", 3), ("b", 2)]);
        let other = r.other_names.clone().unwrap();
        // a beyond the top, d and e beyond the table: three names
        assert_eq!((other.queries, other.distinct_names), (1 + 4 + 5, 3));
        assert_eq!(r.counts.unwrap().queries, 15, "every query counted");
    }

    #[test]
    fn expansions_count_wasted_queries_on_the_resolved_name() {
        let mut w = DnsWindow::default();
        w.expansions(&conn(1), "api.example.com", 3, &LIMITS);
        w.expansions(&conn(1), "api.example.com", 0, &LIMITS);
        let r = &w.into_records(&LIMITS, workload)[0];
        let c = r.counts.unwrap();
        assert_eq!((c.search_expansions, c.expanded_lookups), (3, 1));
        assert_eq!(r.top_names[0].search_expansions, 3);
    }

    #[test]
    fn timeout_rows_are_bounded_and_fold_into_other() {
        let mut w = DnsWindow::default();
        let n = MAX_TIMEOUT_ROWS + 6;
        for i in 0..n {
            // a recursive resolver's client side: one upstream server after another
            let mut c = conn(1);
            c.remote = SocketAddr::from(([192, 0, 2, (i % 250) as u8], 53 + (i / 250) as u16));
            w.timeout(&c, Role::Client, "slow.example", 1, &LIMITS);
        }
        assert_eq!(w.timeouts_folded, 6);
        let r = &w.into_records(&LIMITS, workload)[0];
        assert_eq!(r.timeouts.len(), MAX_TIMEOUT_ROWS + 1);
        assert_eq!(r.timeouts.iter().map(|t| t.count).sum::<u64>(), n as u64, "nothing vanishes");
        let other = r.timeouts.iter().find(|t| t.resolver_ip == "other").unwrap();
        assert_eq!((other.count, other.resolver_port, other.protocol, other.qtype), (6, 0, 0, 0));
    }
}

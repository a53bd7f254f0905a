//! DNS from the kernel's copies of DNS-port packets: decoding ([`wire`]), TCP
//! stream reassembly ([`tcp`]), query/response matching ([`transactions`]),
//! search-path amplification ([`search`]), per-window aggregation
//! ([`window`]) and the IP -> name cache that names flows ([`fqdn`]).
//!
//! [`DnsSource`] owns all of it; the pipeline feeds it packets and ticks, and
//! takes one window of records per interval.

pub mod fqdn;
pub mod search;
pub mod tcp;
pub mod transactions;
pub mod window;
pub mod wire;

#[cfg(test)]
mod source_tests;
#[cfg(test)]
mod wire_tests;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use podlens_agent_ebpf::{DIR_EGRESS, DIR_INGRESS};

use self::{
    fqdn::{FqdnCache, Owner},
    search::SearchChains,
    transactions::{Outcome, Tracker},
    window::{DnsWindow, Limits},
    wire::{Completeness, Rdata},
};
use crate::{ebpf::events::DnsPacket, flows::key_addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The workload asked.
    Client,
    /// The workload answered.
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn protocol(self) -> u32 {
        match self {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        }
    }
}

/// A socket pair seen from the workload: `local` is its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conn {
    pub cgroup_id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub transport: Transport,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Ports that carry DNS (the kernel copies exactly these).
    pub ports: Vec<u16>,
    /// A query without a response this long after its last send is a timeout.
    pub timeout: Duration,
    pub limits: Limits,
    /// Queries waiting for a response, at most.
    pub max_pending: usize,
    /// TCP connections being reassembled, at most.
    pub max_streams: usize,
    /// IP -> name entries, at most, and how long past its TTL an entry holds.
    pub fqdn_entries: usize,
    pub fqdn_grace: Duration,
    /// IP -> name entries of one pod (or cgroup), at most.
    pub fqdn_per_owner: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ports: vec![53],
            timeout: Duration::from_secs(5),
            limits: Limits { max_workloads: 4096, max_names: 256, top_names: 10 },
            max_pending: 65_536,
            max_streams: 4096,
            fqdn_entries: 100_000,
            fqdn_grace: Duration::from_secs(120),
            fqdn_per_owner: 4096,
        }
    }
}

/// Userspace drop points and activity of the DNS path, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Messages decoded (UDP datagrams and reassembled TCP messages).
    pub messages: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Queries not matched because too many were waiting.
    pub pending_full: u64,
    /// Queries given up unanswered because their connection and id were
    /// reused for another question while they waited.
    pub superseded: u64,
    /// TCP segments dropped because too many connections were reassembled.
    pub streams_full: u64,
    /// TCP messages lost to gaps (segments the kernel did not deliver) or
    /// to a length prefix beyond the copy bound.
    pub tcp_gaps: u64,
    pub tcp_lost_sync: u64,
    /// TCP segments skipped where the framing was unknown and what followed
    /// did not look like the start of a DNS message.
    pub tcp_resync_rejected: u64,
    /// TCP messages never finished: in progress when their stream went idle
    /// or its connection was replaced.
    pub tcp_unfinished: u64,
    /// TCP segments and bytes skipped as already seen (retransmissions; not a
    /// loss).
    pub tcp_retransmits: u64,
    pub tcp_retransmitted_bytes: u64,
    /// TCP streams taken over by a new connection on the same addresses and
    /// ports (a sequence number jump; not a loss).
    pub tcp_restarts: u64,
    /// Events not aggregated because a window had too many workloads.
    pub workloads_dropped: u64,
    /// Responses and timeouts aggregated into a workload's "other" latency or
    /// timeout row because it had the most rows already (kept, not lost).
    pub latency_folded: u64,
    pub timeouts_folded: u64,
    /// Name entries evicted before expiry.
    pub fqdn_evicted: u64,
    /// Name entries evicted before expiry because their pod had
    /// `fqdn_per_owner`.
    pub fqdn_owner_evicted: u64,
}

/// A TCP connection direction being reassembled, and when it last moved.
struct TcpStream {
    stream: tcp::Stream,
    last_ns: u64,
}

/// How long an idle TCP stream is kept.
const STREAM_IDLE_NS: u64 = 60_000_000_000;

pub struct DnsSource {
    cfg: Config,
    tracker: Tracker,
    search: SearchChains,
    window: DnsWindow,
    fqdn: FqdnCache,
    streams: HashMap<(Conn, u8), TcpStream>,
    counters: DnsCounters,
    outcomes: Vec<Outcome>,
}

impl DnsSource {
    pub fn new(cfg: Config) -> Self {
        Self {
            tracker: Tracker::new(cfg.timeout, cfg.max_pending),
            search: SearchChains::new(cfg.timeout),
            window: DnsWindow::default(),
            fqdn: FqdnCache::new(cfg.fqdn_entries, cfg.fqdn_per_owner, cfg.fqdn_grace),
            streams: HashMap::new(),
            counters: DnsCounters::default(),
            outcomes: Vec::new(),
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// One packet from the kernel. `owner` names whose answers they are (for
    /// the IP -> name cache): the pod of a cgroup, or the cgroup itself.
    pub fn packet(&mut self, p: &DnsPacket, owner: impl Fn(u64) -> Owner) {
        let e = &p.event;
        let k = &e.key;
        let transport = match k.protocol {
            6 => Transport::Tcp,
            17 => Transport::Udp,
            _ => return, // the kernel only copies TCP and UDP
        };
        let conn = Conn {
            cgroup_id: k.cgroup_id,
            local: SocketAddr::new(key_addr(k.family, &k.local_addr), k.local_port),
            remote: SocketAddr::new(key_addr(k.family, &k.remote_addr), k.remote_port),
            transport,
        };
        match transport {
            Transport::Udp => {
                let cut = u32::from(e.captured) < e.payload_len;
                self.message(conn, e.direction, &p.payload, !cut, e.hdr.ts_ns, e.hdr.ts_ns, &owner);
            }
            Transport::Tcp => {
                let ts = e.hdr.ts_ns;
                let key = (conn, e.direction);
                if !self.streams.contains_key(&key) && self.streams.len() >= self.cfg.max_streams {
                    self.expire_streams(ts);
                    if self.streams.len() >= self.cfg.max_streams {
                        self.counters.streams_full += 1;
                        return;
                    }
                }
                let expect_response = self.expect_response(&conn, usize::from(e.direction));
                let s = self
                    .streams
                    .entry(key)
                    .or_insert_with(|| TcpStream { stream: tcp::Stream::new(expect_response), last_ns: ts });
                s.last_ns = ts;
                let done = s.stream.feed(e.tcp_seq, e.payload_len, &p.payload, ts);
                let c = std::mem::take(&mut s.stream.counts);
                self.counters.tcp_gaps += c.gaps;
                self.counters.tcp_lost_sync += c.lost_sync;
                self.counters.tcp_resync_rejected += c.resync_rejected;
                // bytes that cannot start a DNS message: garbage on a DNS port
                for _ in 0..c.resync_rejected {
                    self.malformed(&conn, &"not a plausible DNS message start on a TCP stream");
                }
                self.counters.tcp_unfinished += c.unfinished;
                self.counters.tcp_retransmits += c.retransmits;
                self.counters.tcp_retransmitted_bytes += c.retransmitted_bytes;
                self.counters.tcp_restarts += c.restarts;
                for m in done {
                    self.message(conn, e.direction, &m.bytes, m.whole, m.first_ns, m.last_ns, &owner);
                }
            }
        }
    }

    /// Whether a TCP direction carries responses (true) or queries, when the
    /// ports tell which end is the server: it lets a guessed message start
    /// after lost framing be checked against the QR bit.
    fn expect_response(&self, conn: &Conn, direction: usize) -> Option<bool> {
        let (remote, local) =
            (self.cfg.ports.contains(&conn.remote.port()), self.cfg.ports.contains(&conn.local.port()));
        match (remote, local) {
            (true, false) => Some(direction == DIR_INGRESS),
            (false, true) => Some(direction == DIR_EGRESS),
            _ => None,
        }
    }

    /// A message that does not decode, counted for its workload.
    fn malformed(&mut self, conn: &Conn, error: &dyn std::fmt::Display) {
        self.counters.malformed += 1;
        tracing::debug!(cgroup = conn.cgroup_id, remote = %conn.remote, %error, "malformed DNS message");
        let role = if self.cfg.ports.contains(&conn.remote.port()) { Role::Client } else { Role::Server };
        let limits = self.cfg.limits;
        self.window.malformed(conn, role, &limits);
    }

    /// One whole (or cut) message: `first_ns` when it started, `last_ns` when
    /// its last byte passed. A query counts from its first byte, a response
    /// from its last.
    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        conn: Conn,
        direction: u8,
        bytes: &[u8],
        whole: bool,
        first_ns: u64,
        last_ns: u64,
        owner: &impl Fn(u64) -> Owner,
    ) {
        let limits = self.cfg.limits;
        let msg = match wire::parse(bytes, if whole { Completeness::Whole } else { Completeness::Cut }) {
            Ok(m) => m,
            Err(e) => {
                self.malformed(&conn, &e);
                return;
            }
        };
        self.counters.messages += 1;
        let response = msg.header.is_response();
        let role = match (response, usize::from(direction)) {
            (false, DIR_EGRESS) | (true, DIR_INGRESS) => Role::Client,
            _ => Role::Server,
        };
        let ts = if response { last_ns } else { first_ns };
        self.tracker.message(conn, role, &msg, ts, &mut self.outcomes);
        let answers = msg.answers.len() + usize::from(msg.answers_dropped);
        let mut outcomes = std::mem::take(&mut self.outcomes);
        for o in outcomes.drain(..) {
            match o {
                Outcome::Query { conn, role, qname, retry, .. } => {
                    self.window.query(&conn, role, &qname, retry, &limits)
                }
                Outcome::Response { conn, role, qname, qtype, rcode, latency_ns, truncated } => {
                    self.window.response(&conn, role, &qname, qtype, rcode, answers, latency_ns, truncated, &limits);
                    if role == Role::Client {
                        self.resolved(&conn, &qname, qtype, rcode, &msg, ts, owner);
                    }
                }
                Outcome::Unmatched { conn, role } => self.window.unmatched(&conn, role, &limits),
                Outcome::Timeout { conn, role, qname, qtype } => {
                    self.window.timeout(&conn, role, &qname, qtype, &limits)
                }
            }
        }
        self.outcomes = outcomes;
    }

    /// A client's matched response: search-path chains and the name cache.
    #[allow(clippy::too_many_arguments)]
    fn resolved(
        &mut self,
        conn: &Conn,
        qname: &str,
        qtype: u16,
        rcode: u16,
        msg: &wire::Message,
        ts: u64,
        owner: &impl Fn(u64) -> Owner,
    ) {
        match rcode {
            wire::RCODE_NXDOMAIN => self.search.nxdomain(conn.cgroup_id, qtype, qname, ts),
            wire::RCODE_NOERROR => {
                let wasted = self.search.resolved(conn.cgroup_id, qtype, qname, ts);
                self.window.expansions(conn, qname, wasted.len(), &self.cfg.limits);
                let who = owner(conn.cgroup_id);
                for a in &msg.answers {
                    let ip = match a.data {
                        Rdata::A(ip) => ip.into(),
                        Rdata::Aaaa(ip) => ip.into(),
                        _ => continue,
                    };
                    self.fqdn.insert(who.clone(), ip, qname, ts, a.ttl);
                }
            }
            _ => {}
        }
    }

    /// The passing of time: timeouts, and forgetting what is too old.
    pub fn tick(&mut self, now_ns: u64) {
        let limits = self.cfg.limits;
        let mut outcomes = std::mem::take(&mut self.outcomes);
        self.tracker.expire(now_ns, &mut outcomes);
        for o in outcomes.drain(..) {
            if let Outcome::Timeout { conn, role, qname, qtype } = o {
                self.window.timeout(&conn, role, &qname, qtype, &limits);
            }
        }
        self.outcomes = outcomes;
        self.search.expire(now_ns);
        self.expire_streams(now_ns);
    }

    fn expire_streams(&mut self, now_ns: u64) {
        let mut unfinished = 0;
        self.streams.retain(|_, s| {
            let keep = now_ns.saturating_sub(s.last_ns) < STREAM_IDLE_NS;
            // no DNS message legitimately stalls this long half sent
            unfinished += u64::from(!keep && s.stream.in_progress());
            keep
        });
        self.counters.tcp_unfinished += unfinished;
    }

    /// Ends the window: its aggregates, and the name cache pruned.
    pub fn take_window(&mut self, now_ns: u64) -> DnsWindow {
        self.fqdn.prune(now_ns);
        let w = std::mem::take(&mut self.window);
        self.counters.workloads_dropped += w.workloads_dropped;
        self.counters.latency_folded += w.latency_folded;
        self.counters.timeouts_folded += w.timeouts_folded;
        w
    }

    /// The name `owner` resolved `ip` from, if any.
    pub fn fqdn(&self, owner: &Owner, ip: std::net::IpAddr, now_ns: u64) -> Option<&str> {
        self.fqdn.lookup(owner, ip, now_ns)
    }

    pub fn counters(&self) -> DnsCounters {
        DnsCounters {
            pending_full: self.tracker.pending_full,
            superseded: self.tracker.superseded,
            fqdn_evicted: self.fqdn.evicted,
            fqdn_owner_evicted: self.fqdn.owner_evicted,
            ..self.counters
        }
    }

    /// Loss report entries: (source, reason, total).
    pub fn losses(&self) -> Vec<(&'static str, &'static str, u64)> {
        let c = self.counters();
        vec![
            ("dns", "malformed", c.malformed),
            ("dns", "pending_full", c.pending_full),
            ("dns", "query_superseded", c.superseded),
            ("dns", "tcp_streams_full", c.streams_full),
            ("dns", "tcp_gap", c.tcp_gaps),
            ("dns", "tcp_lost_sync", c.tcp_lost_sync),
            // also counted as malformed: reported here as activity, not a second loss
            ("dns_activity", "tcp_resync_rejected", c.tcp_resync_rejected),
            ("dns", "tcp_unfinished", c.tcp_unfinished),
            ("dns", "workloads_over_limit", c.workloads_dropped),
            ("dns_activity", "messages", c.messages),
            ("dns_activity", "fqdn_evicted", c.fqdn_evicted),
            ("dns_activity", "fqdn_owner_evicted", c.fqdn_owner_evicted),
            ("dns_activity", "latency_rows_folded", c.latency_folded),
            ("dns_activity", "timeout_rows_folded", c.timeouts_folded),
            ("dns_activity", "tcp_retransmits", c.tcp_retransmits),
            ("dns_activity", "tcp_retransmitted_bytes", c.tcp_retransmitted_bytes),
            ("dns_activity", "tcp_restarts", c.tcp_restarts),
        ]
    }
}

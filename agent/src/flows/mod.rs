//! One window of flows: kernel map entries and overflow events merged per key,
//! then turned into records with identities. Pure logic, no kernel access.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use podlens_agent_ebpf::{FlowCounts, FlowKey, FlowOverflowEvent, FlowValue, DIR_INGRESS, FAMILY_IPV4};
use podlens_proto::v1 as pb;

use crate::{ebpf::clock::TickClock, identity::WindowResolver};

pub mod initiator;
pub use initiator::Initiators;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A flow's counts within one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowAgg {
    pub dir: [FlowCounts; 2],
    /// Monotonic ns (bpf_ktime_get_ns clock); 0 = none yet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Some counts came from overflow events.
    pub overflow: bool,
}

fn add(into: &mut FlowCounts, from: &FlowCounts) {
    into.bytes += from.bytes;
    into.packets += from.packets;
    into.syn += from.syn;
    into.fin += from.fin;
    into.rst += from.rst;
    into.tcp_flags |= from.tcp_flags;
    into.opened |= from.opened;
}

impl FlowAgg {
    fn seen(&mut self, first: u64, last: u64) {
        if first != 0 && (self.first_seen_ns == 0 || first < self.first_seen_ns) {
            self.first_seen_ns = first;
        }
        self.last_seen_ns = self.last_seen_ns.max(last);
    }

    pub fn add_value(&mut self, v: &FlowValue, ticks: &TickClock) {
        add(&mut self.dir[0], &v.dir[0]);
        add(&mut self.dir[1], &v.dir[1]);
        self.seen(ticks.mono_ns(v.first_seen_jiffies), ticks.mono_ns(v.last_seen_jiffies));
    }

    pub fn add_overflow(&mut self, e: &FlowOverflowEvent) {
        let c = FlowCounts {
            bytes: e.bytes,
            packets: e.packets,
            syn: u32::from(e.tcp_flags & TCP_SYN != 0),
            fin: u32::from(e.tcp_flags & TCP_FIN != 0),
            rst: u32::from(e.tcp_flags & TCP_RST != 0),
            tcp_flags: e.tcp_flags,
            opened: u8::from(e.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN),
            _pad: [0; 2],
        };
        add(&mut self.dir[usize::from(e.direction != 0)], &c);
        self.seen(e.hdr.ts_ns, e.hdr.ts_ns);
        self.overflow = true;
    }
}

/// Flows of the current window.
#[derive(Debug, Default)]
pub struct FlowWindow {
    flows: HashMap<FlowKey, FlowAgg>,
    /// Overflow events with a direction other than egress/ingress.
    pub bad_overflow_events: u64,
}

impl FlowWindow {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn add_kernel(&mut self, entries: impl IntoIterator<Item = (FlowKey, FlowValue)>, ticks: &TickClock) {
        for (key, value) in entries {
            self.flows.entry(key).or_default().add_value(&value, ticks);
        }
    }

    pub fn add_overflow(&mut self, e: &FlowOverflowEvent) {
        if e.direction as usize > DIR_INGRESS {
            self.bad_overflow_events += 1;
            return;
        }
        self.flows.entry(e.key).or_default().add_overflow(e);
    }

    pub fn cgroup_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.flows.keys().map(|k| k.cgroup_id)
    }

    /// Consumes the window into records, sorted for stable output; each TCP
    /// record says which end opened the connection, as far as `initiators`
    /// knows (it then ends its window).
    pub fn into_records(
        self,
        node: &str,
        window: (u64, u64),
        clock: &Clock,
        ids: &mut WindowResolver<'_>,
        initiators: &mut Initiators,
    ) -> Vec<pb::Record> {
        let mut flows: Vec<_> = self.flows.into_iter().collect();
        flows.sort_unstable_by_key(|f| f.0);
        let records = flows
            .into_iter()
            .map(|(key, agg)| {
                let mut flow = flow_record(&key, &agg, clock, ids);
                flow.set_initiator(initiators.resolve(&key, &agg));
                pb::Record {
                    node: node.to_string(),
                    window_start_unix_nano: window.0,
                    window_end_unix_nano: window.1,
                    kind: Some(pb::record::Kind::Flow(flow)),
                }
            })
            .collect();
        initiators.end_window();
        records
    }
}

/// The address in a flow key.
pub fn key_addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

fn counts(c: &FlowCounts) -> pb::FlowCounts {
    // The kernel ORs flags without an atomic, so two CPUs can lose a bit;
    // the SYN/FIN/RST counters are atomic and put theirs back.
    let mut flags = c.tcp_flags;
    for (n, bit) in [(c.syn, TCP_SYN), (c.fin, TCP_FIN), (c.rst, TCP_RST)] {
        if n > 0 {
            flags |= bit;
        }
    }
    pb::FlowCounts { bytes: c.bytes, packets: c.packets, syn: c.syn, fin: c.fin, rst: c.rst, tcp_flags: flags.into() }
}

fn flow_record(key: &FlowKey, agg: &FlowAgg, clock: &Clock, ids: &mut WindowResolver<'_>) -> pb::FlowRecord {
    let last = clock.unix_nanos(agg.last_seen_ns);
    let remote_ip = key_addr(key.family, &key.remote_addr);
    pb::FlowRecord {
        local: Some(ids.workload(key.cgroup_id)),
        local_ip: key_addr(key.family, &key.local_addr).to_string(),
        local_port: key.local_port.into(),
        remote: Some(ids.peer(remote_ip, key.remote_port, UNIX_EPOCH + Duration::from_nanos(last))),
        protocol: key.protocol.into(),
        egress: Some(counts(&agg.dir[0])),
        ingress: Some(counts(&agg.dir[1])),
        first_seen_unix_nano: clock.unix_nanos(agg.first_seen_ns),
        last_seen_unix_nano: last,
        overflow: agg.overflow,
        local_index: 0,
        initiator: pb::Initiator::Unknown as i32,
    }
}

/// Converts kernel monotonic timestamps (bpf_ktime_get_ns) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus monotonic ns, sampled together.
    offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let unix = unix_nanos(SystemTime::now());
        Self { offset: i128::from(unix) - i128::from(mono) }
    }

    /// For tests: a fixed offset.
    pub fn with_offset(offset: i128) -> Self {
        Self { offset }
    }

    pub fn unix_nanos(&self, mono_ns: u64) -> u64 {
        if mono_ns == 0 {
            return 0;
        }
        (i128::from(mono_ns) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }
}

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use podlens_agent_ebpf::{ClockSample, EventHeader, FAMILY_IPV6};

    use super::*;
    use crate::identity::{cgroups::CgroupTable, pods::PodStore, Resolver};

    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey {
            cgroup_id: 5,
            local_port: port,
            remote_port: 80,
            protocol: 6,
            family: FAMILY_IPV4,
            ..Default::default()
        };
        k.local_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        k.remote_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        k
    }

    fn value(out: (u64, u64), inn: (u64, u64), first: u64, last: u64, flags: u8) -> FlowValue {
        let c = |(bytes, packets): (u64, u64)| FlowCounts {
            bytes,
            packets,
            syn: 1,
            tcp_flags: flags,
            ..Default::default()
        };
        FlowValue { dir: [c(out), c(inn)], first_seen_jiffies: first, last_seen_jiffies: last }
    }

    /// 1 jiffy = 1 ns from jiffies 0, so jiffies read as nanoseconds in these tests.
    fn ticks() -> TickClock {
        TickClock::calibrate(
            ClockSample { jiffies: 1, mono_ns: 1 },
            ClockSample { jiffies: 1_000_001, mono_ns: 1_000_001 },
        )
    }

    #[test]
    fn kernel_values_of_one_key_are_summed() {
        let mut w = FlowWindow::default();
        w.add_kernel(
            [(key(1), value((100, 2), (50, 1), 10, 20, 0x02)), (key(1), value((1, 1), (2, 2), 5, 30, 0x10))],
            &ticks(),
        );
        let agg = w.flows[&key(1)];
        assert_eq!((agg.dir[0].bytes, agg.dir[0].packets, agg.dir[1].bytes, agg.dir[1].packets), (101, 3, 52, 3));
        assert_eq!(agg.dir[0].syn, 2);
        assert_eq!(agg.dir[0].tcp_flags, 0x12);
        assert_eq!((agg.first_seen_ns, agg.last_seen_ns), (5, 30));
        assert!(!agg.overflow);
    }

    #[test]
    fn overflow_events_merge_into_the_same_flow() {
        let mut w = FlowWindow::default();
        w.add_kernel([(key(1), value((100, 2), (0, 0), 10, 20, 0x10))], &ticks());
        let e = FlowOverflowEvent {
            hdr: EventHeader { kind: 1, _pad: 0, ts_ns: 40 },
            key: key(1),
            bytes: 60,
            packets: 1,
            direction: 1,
            tcp_flags: 0x05,
            _pad: [0; 6],
        };
        w.add_overflow(&e);
        w.add_overflow(&FlowOverflowEvent { direction: 7, ..e });
        let agg = w.flows[&key(1)];
        // syn 1 comes from the kernel value; the event adds FIN and RST
        assert_eq!(
            (agg.dir[1].bytes, agg.dir[1].packets, agg.dir[1].fin, agg.dir[1].rst, agg.dir[1].syn),
            (60, 1, 1, 1, 1)
        );
        assert_eq!(agg.dir[1].tcp_flags, 0x05 | 0x10);
        assert_eq!(agg.last_seen_ns, 40);
        assert!(agg.overflow);
        assert_eq!(w.bad_overflow_events, 1);
    }

    #[test]
    fn counted_flags_are_always_in_the_flag_summary() {
        let c = FlowCounts { fin: 1, rst: 2, tcp_flags: 0x10, ..Default::default() };
        assert_eq!(counts(&c).tcp_flags, 0x10 | 0x01 | 0x04);
    }

    #[test]
    fn first_seen_ignores_empty_values() {
        let mut a = FlowAgg::default();
        a.add_value(&value((0, 0), (0, 0), 0, 0, 0), &ticks());
        a.add_value(&value((1, 1), (0, 0), 7, 9, 0), &ticks());
        assert_eq!((a.first_seen_ns, a.last_seen_ns), (7, 9));
    }

    #[test]
    fn addresses_decode_by_family() {
        let k = key(1);
        assert_eq!(key_addr(k.family, &k.local_addr), "10.0.0.1".parse::<IpAddr>().unwrap());
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(key_addr(FAMILY_IPV6, &v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn records_carry_identity_orientation_and_times() {
        let mut table = CgroupTable::new("/nonexistent", Duration::from_secs(60));
        table.insert(5, "/system.slice/sshd.service");
        let mut resolver = Resolver::new(table, Arc::new(RwLock::new(PodStore::new(Duration::from_secs(60)))));
        let mut w = FlowWindow::default();
        w.add_kernel([(key(4242), value((100, 2), (50, 1), 1_000, 2_000, 0x12))], &ticks());
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let mut ids = resolver.window([5]);
        let mut initiators = Initiators::default();
        let recs = w.into_records("n1", (1, 2), &clock, &mut ids, &mut initiators);
        assert_eq!(recs.len(), 1);
        let Some(pb::record::Kind::Flow(f)) = &recs[0].kind else { panic!() };
        assert_eq!((f.local_ip.as_str(), f.local_port), ("10.0.0.1", 4242));
        let remote = f.remote.as_ref().unwrap();
        assert_eq!((remote.ip.as_str(), remote.port), ("10.0.0.2", 80));
        assert_eq!(f.egress.as_ref().unwrap().bytes, 100);
        assert_eq!(f.ingress.as_ref().unwrap().packets, 1);
        assert_eq!(f.first_seen_unix_nano, 1_700_000_000_000_001_000);
        assert_eq!(f.local.as_ref().unwrap().cgroup_path, "/system.slice/sshd.service");
        assert_eq!((recs[0].window_start_unix_nano, recs[0].window_end_unix_nano), (1, 2));
        assert_eq!(f.initiator(), pb::Initiator::Unknown, "no SYN without ACK in this window");
    }

    #[test]
    fn the_opening_marks_survive_merging_and_name_the_initiator() {
        let mut w = FlowWindow::default();
        let mut v = value((100, 2), (50, 1), 1, 2, 0x12);
        v.dir[1].opened = 1;
        w.add_kernel([(key(8443), v)], &ticks());
        // an overflowed SYN (no ACK) of another connection, egress
        let e = FlowOverflowEvent {
            hdr: EventHeader { kind: 1, _pad: 0, ts_ns: 40 },
            key: key(40000),
            bytes: 60,
            packets: 1,
            direction: 0,
            tcp_flags: TCP_SYN,
            _pad: [0; 6],
        };
        w.add_overflow(&e);
        w.add_overflow(&FlowOverflowEvent { key: key(40001), tcp_flags: TCP_SYN | TCP_ACK, ..e });
        let mut resolver = Resolver::new(
            CgroupTable::new("/nonexistent", Duration::from_secs(60)),
            Arc::new(RwLock::new(PodStore::new(Duration::from_secs(60)))),
        );
        let mut ids = resolver.window([5]);
        let mut initiators = Initiators::default();
        let recs = w.into_records("n1", (1, 2), &Clock::with_offset(0), &mut ids, &mut initiators);
        let got: Vec<(u32, pb::Initiator)> = recs
            .iter()
            .map(|r| match &r.kind {
                Some(pb::record::Kind::Flow(f)) => (f.local_port, f.initiator()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [(8443, pb::Initiator::Remote), (40000, pb::Initiator::Local), (40001, pb::Initiator::Unknown)]
        );
        assert_eq!(initiators.len(), 2);
    }
}

//! Tier 2: DNS capture in the flow programs (BPF_PROG_TEST_RUN). Each case
//! asserts the verdict (always 1), the exact DNS events and the counters.

use std::net::{Ipv4Addr, Ipv6Addr};

use podlens_agent::ebpf::LoadOptions;
use podlens_agent_ebpf::{Counter, DIR_EGRESS, DIR_INGRESS, DNS_MAX_PAYLOAD, FAMILY_IPV4, FAMILY_IPV6};
use podlens_e2e::{
    kernel::{own_cgroup_id, Dir, FlowProgs},
    packets::*,
};

const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 53);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const RESOLVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53);

fn progs(dns_ports: [u16; 4], dns_ring_bytes: u32) -> FlowProgs {
    FlowProgs::load_with(LoadOptions { flow_map_entries: 1024, dns_ports, dns_ring_bytes, ..Default::default() })
}

/// A payload of `n` bytes that differ, so a copy from the wrong offset shows.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn udp4(sport: u16, dport: u16, body: &[u8], egress: bool) -> Vec<u8> {
    let (src, dst) = if egress { (POD, RESOLVER) } else { (RESOLVER, POD) };
    eth(ETH_P_IP, &ipv4(src, dst, 17, &udp(sport, dport, body)))
}

#[test]
fn udp_query_and_answer_are_copied_with_key_direction_and_time() {
    let mut p = progs([53, 0, 0, 0], 64 * 1024);
    let query = payload(40);
    let answer = payload(120);
    assert_eq!(p.run(Dir::Egress, &udp4(40000, 53, &query, true)), 1);
    assert_eq!(p.run(Dir::Ingress, &udp4(53, 40000, &answer, false)), 1);
    let got = p.dns();
    assert_eq!(got.len(), 2, "{got:?}");
    let (q, a) = (&got[0], &got[1]);
    for (e, dir, body) in [(q, DIR_EGRESS, &query), (a, DIR_INGRESS, &answer)] {
        assert_eq!(e.payload, *body);
        assert_eq!(e.event.payload_len as usize, body.len());
        assert_eq!(usize::from(e.event.captured), body.len());
        assert_eq!(usize::from(e.event.direction), dir);
        assert_eq!(e.event.tcp_seq, 0);
        assert!(e.event.hdr.ts_ns > 0);
        let k = e.event.key;
        assert_eq!((k.cgroup_id, k.protocol, k.family), (own_cgroup_id(), 17, FAMILY_IPV4));
        assert_eq!((k.local_addr, k.local_port), (key_v4(POD), 40000), "local is the pod's end");
        assert_eq!((k.remote_addr, k.remote_port), (key_v4(RESOLVER), 53));
    }
    assert!(a.event.hdr.ts_ns >= q.event.hdr.ts_ns);
    assert_eq!(p.counter(Counter::DnsMessages), 2);
    // the flow is still recorded
    assert_eq!(p.drain().len(), 1);
}

#[test]
fn tcp_segments_carry_their_sequence_number_and_bare_acks_nothing() {
    let mut p = progs([53, 0, 0, 0], 64 * 1024);
    let mut msg = vec![0, 30];
    msg.extend(payload(30));
    let seg = |flags, seq, body: &[u8]| {
        eth(ETH_P_IPV6, &ipv6(POD6, RESOLVER6, 6, &tcp_seq(40001, 53, flags, seq, &[], body)))
    };
    assert_eq!(p.run(Dir::Egress, &seg(SYN, 1000, &[])), 1);
    assert_eq!(p.run(Dir::Egress, &seg(ACK, 1001, &[])), 1);
    assert_eq!(p.run(Dir::Egress, &seg(ACK | PSH, 0xfffffff0, &msg)), 1);
    let got = p.dns();
    assert_eq!(got.len(), 1, "only the segment with payload: {got:?}");
    let e = &got[0];
    assert_eq!((e.event.tcp_seq, e.payload.clone()), (0xfffffff0, msg.clone()));
    assert_eq!((e.event.key.protocol, e.event.key.family), (6, FAMILY_IPV6));
    assert_eq!((e.event.key.local_addr, e.event.key.remote_port), (POD6.octets(), 53));
}

#[test]
fn large_messages_take_the_large_slot_and_are_cut_at_the_bound() {
    let mut p = progs([53, 0, 0, 0], 64 * 1024);
    for n in [256, 257, 1400, DNS_MAX_PAYLOAD, DNS_MAX_PAYLOAD + 1, 3000] {
        let body = payload(n);
        assert_eq!(p.run(Dir::Ingress, &udp4(53, 40000, &body, false)), 1);
        let got = p.dns();
        assert_eq!(got.len(), 1, "{n} bytes");
        let kept = n.min(DNS_MAX_PAYLOAD);
        assert_eq!(got[0].event.payload_len as usize, n);
        assert_eq!(got[0].payload, body[..kept], "{n} bytes: the first {kept} copied");
    }
    assert_eq!(p.counter(Counter::DnsCut), 2);
    assert_eq!(p.counter(Counter::DnsMessages), 6);
}

#[test]
fn only_the_configured_ports_are_captured() {
    let mut p = progs([5353, 0, 0, 8053], 64 * 1024);
    for (sport, dport, want) in [(40000, 53, false), (40000, 5353, true), (8053, 40000, true), (40000, 0, false)] {
        assert_eq!(p.run(Dir::Egress, &udp4(sport, dport, &payload(20), true)), 1);
        assert_eq!(p.dns().len(), usize::from(want), "{sport} -> {dport}");
    }
    let mut off = progs([0; 4], 64 * 1024);
    assert_eq!(off.run(Dir::Egress, &udp4(40000, 53, &payload(20), true)), 1);
    assert!(off.dns().is_empty(), "no ports: no capture");
    assert_eq!(off.counter(Counter::DnsMessages), 0);
}

#[test]
fn a_full_dns_ring_loses_messages_counted_and_passes_packets() {
    // one page: a dozen small slots
    let mut p = progs([53, 0, 0, 0], 4096);
    let sent = 40u64;
    assert_eq!(p.run_with(Dir::Egress, &udp4(40000, 53, &payload(30), true), 0, sent as u32), 1);
    let delivered = p.dns().len() as u64;
    let lost = p.counter(Counter::DnsLost);
    assert!(delivered > 0 && lost > 0, "delivered {delivered}, lost {lost}");
    assert_eq!(delivered + lost, sent, "every message is delivered or counted as lost");
    assert_eq!(p.counter(Counter::DnsMessages), delivered);
    // the flow saw every packet regardless
    let flows = p.drain();
    assert_eq!(flows.values().map(|v| v.dir[DIR_EGRESS].packets).sum::<u64>(), sent);
}

#[test]
fn malformed_and_fragmented_packets_produce_no_dns_event() {
    let mut p = progs([53, 0, 0, 0], 64 * 1024);
    // truncated UDP header
    let mut cut = ipv4(POD, RESOLVER, 17, &udp(40000, 53, &[]));
    cut.truncate(24);
    // a non-first fragment of a DNS response has no ports
    let frag = ipv4_full(RESOLVER, POD, 17, 0x0010, &[], &payload(64));
    for frame in [eth(ETH_P_IP, &cut), eth(ETH_P_IP, &frag)] {
        assert_eq!(p.run(Dir::Ingress, &frame), 1);
    }
    assert!(p.dns().is_empty());
    assert_eq!(p.counter(Counter::DnsMessages), 0);
    assert_eq!(p.counter(Counter::Truncated), 1);
}

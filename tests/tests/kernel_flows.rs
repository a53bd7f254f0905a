//! Tier 2: the flow programs run by the kernel on crafted packets
//! (BPF_PROG_TEST_RUN). Every case asserts the verdict (always 1, "allow") and
//! the exact flow-map contents or counters.

use std::net::{Ipv4Addr, Ipv6Addr};

use podlens_agent::ebpf::events::Event;
use podlens_agent_ebpf::{Counter, FlowCounts, FlowKey, FlowValue, FAMILY_IPV4, FAMILY_IPV6};
use podlens_e2e::{
    kernel::{own_cgroup_id, Dir, FlowProgs},
    packets::*,
};

const A4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

fn progs() -> FlowProgs {
    FlowProgs::load(1024, 64 * 1024)
}

fn key4(local: Ipv4Addr, lport: u16, remote: Ipv4Addr, rport: u16, proto: u8) -> FlowKey {
    FlowKey {
        cgroup_id: own_cgroup_id(),
        local_addr: key_v4(local),
        remote_addr: key_v4(remote),
        local_port: lport,
        remote_port: rport,
        protocol: proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

fn key6(local: Ipv6Addr, lport: u16, remote: Ipv6Addr, rport: u16, proto: u8) -> FlowKey {
    FlowKey {
        cgroup_id: own_cgroup_id(),
        local_addr: local.octets(),
        remote_addr: remote.octets(),
        local_port: lport,
        remote_port: rport,
        protocol: proto,
        family: FAMILY_IPV6,
        _pad: [0; 2],
    }
}

fn counts(bytes: u64, packets: u64, flags: u8) -> FlowCounts {
    FlowCounts {
        bytes,
        packets,
        syn: u32::from(flags & SYN != 0) * packets as u32,
        fin: u32::from(flags & FIN != 0) * packets as u32,
        rst: u32::from(flags & RST != 0) * packets as u32,
        tcp_flags: flags,
        opened: 0,
        _pad: [0; 2],
    }
}

/// `c` with the mark of a connection opened in its direction.
fn opened(mut c: FlowCounts) -> FlowCounts {
    c.opened = 1;
    c
}

/// Asserts the drained map holds exactly `want` (timestamps checked for sanity only).
fn assert_flows(p: &mut FlowProgs, want: &[(FlowKey, [FlowCounts; 2])]) {
    let got = p.drain();
    let got_keys: Vec<_> = got.keys().collect();
    let want_keys: Vec<_> = want.iter().map(|(k, _)| k).collect();
    assert_eq!(got.len(), want.len(), "flow keys: got {got_keys:#?}\nwant {want_keys:#?}");
    for (key, dirs) in want {
        let v: &FlowValue = got.get(key).unwrap_or_else(|| panic!("missing {key:?}; have {got_keys:#?}"));
        assert_eq!(&v.dir, dirs, "counts of {key:?}");
        assert!(
            v.first_seen_jiffies > 0 && v.first_seen_jiffies <= v.last_seen_jiffies,
            "timestamps of {key:?}: {v:?}"
        );
    }
}

const NONE: FlowCounts =
    FlowCounts { bytes: 0, packets: 0, syn: 0, fin: 0, rst: 0, tcp_flags: 0, opened: 0, _pad: [0; 2] };

#[test]
fn tcp_v4_both_directions_share_one_record() {
    let mut p = progs();
    let syn = ipv4(A4, B4, 6, &tcp(40000, 80, SYN, &[2, 4, 5, 0xb4], &[]));
    let synack = ipv4(B4, A4, 6, &tcp(80, 40000, SYN | ACK, &[], &[]));
    let data = ipv4(A4, B4, 6, &tcp(40000, 80, ACK | PSH, &[], &[7u8; 100]));
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IP, &syn)), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &synack)), 1);
    assert_eq!(p.run_with(Dir::Egress, &eth(ETH_P_IP, &data), 0, 10), 1);
    let mut out = counts(syn.len() as u64, 1, SYN);
    out.bytes += 10 * data.len() as u64;
    out.packets += 10;
    out.tcp_flags |= ACK | PSH;
    // the SYN marks the client's direction, the SYN-ACK does not
    out.opened = 1;
    assert_flows(&mut p, &[(key4(A4, 40000, B4, 80, 6), [out, counts(synack.len() as u64, 1, SYN | ACK)])]);
}

#[test]
fn an_accepted_connection_is_opened_by_the_remote_end() {
    let mut p = progs();
    // an ACK first (a connection older than the map entry), then a SYN: the
    // mark is set on an existing entry too
    let ack = ipv4(B4, A4, 6, &tcp(50000, 8443, ACK, &[], &[]));
    let syn = ipv4(B4, A4, 6, &tcp(50000, 8443, SYN, &[], &[]));
    let synack = ipv4(A4, B4, 6, &tcp(8443, 50000, SYN | ACK, &[], &[]));
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &ack)), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &syn)), 1);
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IP, &synack)), 1);
    let mut inbound = counts((ack.len() + syn.len()) as u64, 2, ACK | SYN);
    inbound.syn = 1;
    assert_flows(
        &mut p,
        &[(key4(A4, 8443, B4, 50000, 6), [counts(synack.len() as u64, 1, SYN | ACK), opened(inbound)])],
    );
}

#[test]
fn ingress_orientation_makes_the_destination_local() {
    let mut p = progs();
    let pkt = ipv4(B4, A4, 17, &udp(5353, 9999, &[1; 30]));
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &pkt)), 1);
    assert_flows(&mut p, &[(key4(A4, 9999, B4, 5353, 17), [NONE, counts(pkt.len() as u64, 1, 0)])]);
}

#[test]
fn fin_and_rst_are_counted() {
    let mut p = progs();
    let fin = ipv4(A4, B4, 6, &tcp(1, 2, FIN | ACK, &[], &[]));
    let rst = ipv4(B4, A4, 6, &tcp(2, 1, RST, &[], &[]));
    assert_eq!(p.run_with(Dir::Egress, &eth(ETH_P_IP, &fin), 0, 2), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &rst)), 1);
    assert_flows(
        &mut p,
        &[(key4(A4, 1, B4, 2, 6), [counts(2 * fin.len() as u64, 2, FIN | ACK), counts(rst.len() as u64, 1, RST)])],
    );
}

#[test]
fn icmp_echo_request_and_reply_share_a_record() {
    let mut p = progs();
    let req = ipv4(A4, B4, 1, &icmp(8, 0, 0x1234, &[0; 56]));
    let rep = ipv4(B4, A4, 1, &icmp(0, 0, 0x1234, &[0; 56]));
    let unreach = ipv4(B4, A4, 1, &icmp(3, 3, 0, &[0; 28]));
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IP, &req)), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &rep)), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IP, &unreach)), 1);
    assert_flows(
        &mut p,
        &[
            (key4(A4, 0x1234, B4, 0x1234, 1), [counts(req.len() as u64, 1, 0), counts(rep.len() as u64, 1, 0)]),
            (key4(A4, 0x0303, B4, 0x0303, 1), [NONE, counts(unreach.len() as u64, 1, 0)]),
        ],
    );
}

#[test]
fn ipv6_tcp_udp_and_icmpv6() {
    let mut p = progs();
    let t = ipv6(A6, B6, 6, &tcp(5000, 443, SYN, &[], &[]));
    let u = ipv6(B6, A6, 17, &udp(53, 5001, &[9; 40]));
    let echo = ipv6(A6, B6, 58, &icmp(128, 0, 77, &[0; 8]));
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IPV6, &t)), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IPV6, &u)), 1);
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IPV6, &echo)), 1);
    assert_flows(
        &mut p,
        &[
            (key6(A6, 5000, B6, 443, 6), [opened(counts(t.len() as u64, 1, SYN)), NONE]),
            (key6(A6, 5001, B6, 53, 17), [NONE, counts(u.len() as u64, 1, 0)]),
            (key6(A6, 77, B6, 77, 58), [counts(echo.len() as u64, 1, 0), NONE]),
        ],
    );
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut p = progs();
    // hop-by-hop -> routing -> destination options -> UDP
    let mut rest = ext_hdr(43, 0);
    rest.extend(ext_hdr(60, 1));
    rest.extend(ext_hdr(17, 0));
    rest.extend(udp(1111, 2222, &[1; 10]));
    let pkt = ipv6(A6, B6, 0, &rest);
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IPV6, &pkt)), 1);
    // AH (len field in 4-byte units minus 2) -> TCP
    let mut ah = vec![6u8, 4];
    ah.resize(24, 0);
    ah.extend(tcp(3333, 4444, ACK, &[], &[]));
    let pkt2 = ipv6(A6, B6, 51, &ah);
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IPV6, &pkt2)), 1);
    assert_flows(
        &mut p,
        &[
            (key6(A6, 1111, B6, 2222, 17), [counts(pkt.len() as u64, 1, 0), NONE]),
            (key6(A6, 3333, B6, 4444, 6), [counts(pkt2.len() as u64, 1, ACK), NONE]),
        ],
    );
    assert_eq!(p.counter(Counter::Ipv6ExtLimit), 0);
}

#[test]
fn exactly_eight_extension_headers_are_skipped() {
    let mut p = progs();
    let mut rest = Vec::new();
    for _ in 0..7 {
        rest.extend(ext_hdr(60, 0)); // destination options
    }
    rest.extend(ext_hdr(17, 0));
    rest.extend(udp(1, 2, &[0; 4]));
    let pkt = ipv6(A6, B6, 0, &rest);
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IPV6, &pkt)), 1);
    assert_flows(&mut p, &[(key6(A6, 1, B6, 2, 17), [counts(pkt.len() as u64, 1, 0), NONE])]);
    assert_eq!(p.counter(Counter::Ipv6ExtLimit), 0);
}

#[test]
fn fragments_first_has_ports_later_ones_do_not() {
    let mut p = progs();
    // IPv6: first fragment (offset 0, more) carries UDP; a later one carries payload.
    let mut first = frag_hdr(17, 0, true);
    first.extend(udp(7000, 8000, &[0; 16]));
    let f1 = ipv6(A6, B6, 44, &first);
    let mut later = frag_hdr(17, 3, false);
    later.extend([0xaa; 24]);
    let f2 = ipv6(A6, B6, 44, &later);
    // IPv4: non-first fragment (offset 185 * 8).
    let f3 = ipv4_full(A4, B4, 17, 185, &[], &[0xbb; 40]);
    for (frame, proto) in [(f1.clone(), ETH_P_IPV6), (f2.clone(), ETH_P_IPV6), (f3.clone(), ETH_P_IP)] {
        assert_eq!(p.run(Dir::Egress, &eth(proto, &frame)), 1);
    }
    assert_flows(
        &mut p,
        &[
            (key6(A6, 7000, B6, 8000, 17), [counts(f1.len() as u64, 1, 0), NONE]),
            (key6(A6, 0, B6, 0, 17), [counts(f2.len() as u64, 1, 0), NONE]),
            (key4(A4, 0, B4, 0, 17), [counts(f3.len() as u64, 1, 0), NONE]),
        ],
    );
    assert_eq!(p.counter(Counter::Fragments), 2);
}

#[test]
fn other_protocols_are_counted_by_number() {
    let mut p = progs();
    let gre = ipv4(A4, B4, 47, &[0u8; 24]);
    let sctp_v6 = ipv6(A6, B6, 132, &[0u8; 12]);
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IP, &gre)), 1);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IPV6, &sctp_v6)), 1);
    assert_flows(
        &mut p,
        &[
            (key4(A4, 0, B4, 0, 47), [counts(gre.len() as u64, 1, 0), NONE]),
            (key6(B6, 0, A6, 0, 132), [NONE, counts(sctp_v6.len() as u64, 1, 0)]),
        ],
    );
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let mut p = progs();
    let pkt = ipv4_full(A4, B4, 6, 0, &[1, 1, 1, 0, 0x44, 4, 5, 0], &tcp(12, 34, SYN, &[], &[]));
    assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IP, &pkt)), 1);
    assert_flows(&mut p, &[(key4(A4, 12, B4, 34, 6), [opened(counts(pkt.len() as u64, 1, SYN)), NONE])]);
}

#[test]
fn gso_aggregates_count_every_segment_and_its_headers() {
    let mut p = progs();
    // one 4-segment TSO skb: 20 IP + 32 TCP (12 bytes of options) + 4 * 500 payload
    // (test-run data must fit in a page)
    let pkt = ipv4(A4, B4, 6, &tcp(1000, 2000, ACK | PSH, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], &[0; 2000]));
    assert_eq!(p.run_with(Dir::Egress, &eth(ETH_P_IP, &pkt), 4, 1), 1);
    let hdr = 20 + 32;
    let want = counts(pkt.len() as u64 + 3 * hdr, 4, ACK | PSH);
    assert_flows(&mut p, &[(key4(A4, 1000, B4, 2000, 6), [want, NONE])]);
}

#[test]
fn malformed_and_truncated_packets_pass_and_are_never_attributed() {
    let mut p = progs();
    let good_tcp = tcp(1, 2, ACK, &[], &[]);
    // The kernel refuses to test-run IP frames shorter than the fixed IP header
    // (and the stack never hands such packets to cgroup_skb), so truncation is
    // exercised from the first byte after it.
    let cases: Vec<(&str, u16, Vec<u8>, Counter)> = vec![
        ("tcp header missing", ETH_P_IP, ipv4(A4, B4, 6, &[]), Counter::Truncated),
        ("tcp header cut short", ETH_P_IP, ipv4(A4, B4, 6, &good_tcp[..10]), Counter::Truncated),
        ("tcp options beyond the packet", ETH_P_IP, ipv4(A4, B4, 6, &tcp_raw_doff(1, 2, 15, 24)), Counter::Truncated),
        ("udp header cut short", ETH_P_IP, ipv4(A4, B4, 17, &[0, 53, 0]), Counter::Truncated),
        ("icmp header cut short", ETH_P_IP, ipv4(A4, B4, 1, &[8, 0, 0]), Counter::Truncated),
        ("udp header missing after ipv6", ETH_P_IPV6, ipv6(A6, B6, 17, &[]), Counter::Truncated),
        ("ipv6 ext header cut short", ETH_P_IPV6, ipv6(A6, B6, 0, &[17]), Counter::Truncated),
        (
            "ihl beyond the packet",
            ETH_P_IP,
            {
                let mut h = ipv4(A4, B4, 6, &[]);
                h[0] = 0x4f;
                h
            },
            Counter::Truncated,
        ),
        (
            "ip version 5 as IPv4",
            ETH_P_IP,
            {
                let mut h = ipv4(A4, B4, 6, &good_tcp);
                h[0] = 0x55;
                h
            },
            Counter::Malformed,
        ),
        (
            "ihl below 5",
            ETH_P_IP,
            {
                let mut h = ipv4(A4, B4, 6, &good_tcp);
                h[0] = 0x44;
                h
            },
            Counter::Malformed,
        ),
        (
            "ip version 4 as IPv6",
            ETH_P_IPV6,
            {
                let mut h = ipv6(A6, B6, 6, &good_tcp);
                h[0] = 0x40;
                h
            },
            Counter::Malformed,
        ),
        ("tcp data offset below 5", ETH_P_IP, ipv4(A4, B4, 6, &tcp_raw_doff(1, 2, 3, 20)), Counter::Malformed),
        ("arp", ETH_P_ARP, vec![0; 28], Counter::NonIp),
    ];
    for (what, ethertype, l3, counter) in &cases {
        let before = p.counter(*counter);
        let verdict = p.try_run(Dir::Egress, &eth(*ethertype, l3), 0, 1).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(verdict, 1, "{what}: verdict");
        assert_eq!(p.counter(*counter), before + 1, "{what}: {counter:?}; all: {:?}", p.counters());
    }
    // nine extension headers: more than the program skips
    let mut rest = Vec::new();
    for _ in 0..9 {
        rest.extend(ext_hdr(0, 0));
    }
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IPV6, &ipv6(A6, B6, 0, &rest))), 1);
    assert_eq!(p.counter(Counter::Ipv6ExtLimit), 1);
    // a header chain that claims more bytes than the packet has
    let pkt = ipv6(A6, B6, 60, &[6, 200, 0, 0, 0, 0, 0, 0]);
    let before = p.counter(Counter::Truncated);
    assert_eq!(p.run(Dir::Ingress, &eth(ETH_P_IPV6, &pkt)), 1);
    assert_eq!(p.counter(Counter::Truncated), before + 1, "ext header longer than the packet");
    assert_flows(&mut p, &[]);
    assert!(p.counter(Counter::MalformedBytes) > 0);
}

#[test]
fn drain_is_a_clean_cut() {
    let mut p = progs();
    let pkt = ipv4(A4, B4, 17, &udp(1, 2, &[0; 10]));
    let frame = eth(ETH_P_IP, &pkt);
    let key = key4(A4, 1, B4, 2, 17);
    p.run_with(Dir::Egress, &frame, 0, 3);
    assert_flows(&mut p, &[(key, [counts(3 * pkt.len() as u64, 3, 0), NONE])]);
    assert_flows(&mut p, &[]);
    p.run_with(Dir::Egress, &frame, 0, 5);
    assert_flows(&mut p, &[(key, [counts(5 * pkt.len() as u64, 5, 0), NONE])]);
    // and again, so both maps have been active, drained and reused
    p.run(Dir::Egress, &frame);
    assert_flows(&mut p, &[(key, [counts(pkt.len() as u64, 1, 0), NONE])]);
}

/// A full map sends new flows to the overflow ring; a full ring counts what it
/// loses. produced = in map + in overflow events + counted as lost, exactly.
#[test]
fn map_full_overflow_and_ring_full_losses_add_up() {
    let mut p = FlowProgs::load(8, 4096);
    let n_flows: u16 = 200;
    let mut sizes = 0u64;
    for i in 0..n_flows {
        let pkt = ipv4(A4, B4, 17, &udp(10_000 + i, 53, &[0; 20]));
        sizes += pkt.len() as u64;
        assert_eq!(p.run(Dir::Egress, &eth(ETH_P_IP, &pkt)), 1);
    }
    let in_map = p.drain();
    assert_eq!(in_map.len(), 8, "the map holds its capacity");
    let overflow: Vec<_> = p
        .events()
        .into_iter()
        .map(|e| match e {
            Event::FlowOverflow(o) => o,
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert!(!overflow.is_empty(), "some overflow events fit in one page");
    for o in &overflow {
        assert_eq!((o.key.remote_port, o.key.protocol, o.direction, o.packets), (53, 17, 0, 1));
        assert!(!in_map.contains_key(&o.key), "an overflowed flow is not also in the map");
    }
    let lost_packets = p.counter(Counter::OverflowLostPackets);
    let full = p.counter(Counter::FlowMapFull);
    assert_eq!(full, u64::from(n_flows) - 8, "every packet past capacity is counted as map-full");
    assert!(lost_packets > 0, "a 4 KiB ring cannot hold {full} events");
    assert_eq!(8 + overflow.len() as u64 + lost_packets, u64::from(n_flows), "produced = map + events + lost");
    let bytes: u64 = in_map.values().map(|v| v.dir[0].bytes).sum::<u64>()
        + overflow.iter().map(|o| o.bytes).sum::<u64>()
        + p.counter(Counter::OverflowLostBytes);
    assert_eq!(bytes, sizes, "bytes add up too");
}

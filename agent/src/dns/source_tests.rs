//! DnsSource from kernel packets to window records: UDP and TCP, timeouts,
//! retries, malformed input, search chains and the name cache.

use std::net::{IpAddr, Ipv4Addr};

use podlens_agent_ebpf::{DnsEvent, EventHeader, EventKind, FlowKey, DIR_EGRESS, DIR_INGRESS, FAMILY_IPV4};
use podlens_proto::v1 as pb;

use super::{fqdn::Owner, Config, DnsSource};
use crate::ebpf::events::DnsPacket;

const MS: u64 = 1_000_000;
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in n.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

/// A query, or a response with `ips` as A records (TTL 30) and `rcode`.
fn dns(id: u16, qname: &str, response: bool, rcode: u16, ips: &[Ipv4Addr]) -> Vec<u8> {
    let flags: u16 = if response { 0x8180 | rcode } else { 0x0100 };
    let mut m = Vec::new();
    for v in [id, flags, 1, ips.len() as u16, 0, 0] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend(name(qname));
    m.extend_from_slice(&[0, 1, 0, 1]);
    for ip in ips {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        m.extend_from_slice(&ip.octets());
    }
    m
}

fn packet(cgroup: u64, dir: usize, protocol: u8, local_port: u16, seq: u32, payload: &[u8], ts: u64) -> DnsPacket {
    let mut key = FlowKey {
        cgroup_id: cgroup,
        local_addr: POD.to_ipv6_mapped().octets(),
        remote_addr: DNS.to_ipv6_mapped().octets(),
        local_port,
        remote_port: 53,
        protocol,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    };
    key.local_addr[..10].fill(0);
    key.remote_addr[..10].fill(0);
    DnsPacket {
        event: DnsEvent {
            hdr: EventHeader { kind: EventKind::Dns as u32, _pad: 0, ts_ns: ts },
            key,
            tcp_seq: seq,
            payload_len: payload.len() as u32,
            captured: payload.len() as u16,
            direction: dir as u8,
            _pad: [0; 5],
        },
        payload: payload.to_vec(),
    }
}

fn udp(cgroup: u64, dir: usize, payload: &[u8], ts: u64) -> DnsPacket {
    packet(cgroup, dir, 17, 40000, 0, payload, ts)
}

fn owner(id: u64) -> Owner {
    Owner::Cgroup(id)
}

fn records(s: &mut DnsSource, now: u64) -> Vec<pb::DnsRecord> {
    let limits = s.config().limits;
    s.take_window(now).into_records(&limits, |id| pb::Workload { cgroup_id: id, ..Default::default() })
}

#[test]
fn a_udp_lookup_gives_counts_latency_and_a_name_for_the_address() {
    let mut s = DnsSource::new(Config::default());
    let ip = Ipv4Addr::new(192, 0, 2, 7);
    s.packet(&udp(5, DIR_EGRESS, &dns(1, "api.example.com", false, 0, &[]), 100 * MS), owner);
    s.packet(&udp(5, DIR_INGRESS, &dns(1, "api.example.com", true, 0, &[ip]), 103 * MS), owner);
    assert_eq!(s.fqdn(&owner(5), IpAddr::V4(ip), 104 * MS), Some("api.example.com"));
    assert_eq!(s.fqdn(&owner(6), IpAddr::V4(ip), 104 * MS), None);
    let r = records(&mut s, 200 * MS);
    assert_eq!(r.len(), 1);
    let c = r[0].counts.unwrap();
    assert_eq!((c.queries, c.responses, c.noerror, c.timeouts, c.malformed), (1, 1, 1, 0, 0));
    let l = &r[0].latency[0];
    assert_eq!((l.count, l.min_ns, l.max_ns, l.qtype, l.rcode), (1, 3 * MS, 3 * MS, 1, 0));
    assert_eq!((l.resolver_ip.as_str(), l.resolver_port, l.protocol), ("10.96.0.10", 53, 17));
    assert_eq!(r[0].role, pb::DnsRole::Client as i32);
}

#[test]
fn tcp_messages_split_across_segments_are_reassembled_and_timed() {
    let mut s = DnsSource::new(Config::default());
    let framed = |m: Vec<u8>| [(m.len() as u16).to_be_bytes().to_vec(), m].concat();
    let q = framed(dns(7, "big.example", false, 0, &[]));
    let a = framed(dns(7, "big.example", true, 0, &[Ipv4Addr::new(192, 0, 2, 1)]));
    s.packet(&packet(5, DIR_EGRESS, 6, 40001, 1000, &q, 10 * MS), owner);
    let (a1, a2) = a.split_at(9);
    s.packet(&packet(5, DIR_INGRESS, 6, 40001, 5000, a1, 12 * MS), owner);
    s.packet(&packet(5, DIR_INGRESS, 6, 40001, 5000 + 9, a2, 15 * MS), owner);
    let r = records(&mut s, 20 * MS);
    let l = &r[0].latency[0];
    assert_eq!((l.protocol, l.count, l.max_ns), (6, 1, 5 * MS), "from the query to the response's last byte");
}

#[test]
fn timeouts_retries_and_unmatched_responses() {
    let mut s = DnsSource::new(Config::default());
    let q = dns(3, "slow.example", false, 0, &[]);
    s.packet(&udp(5, DIR_EGRESS, &q, 0), owner);
    s.packet(&udp(5, DIR_EGRESS, &q, 1000 * MS), owner);
    s.tick(5999 * MS);
    assert_eq!(records(&mut s, 5999 * MS)[0].counts.unwrap().timeouts, 0);
    s.tick(6000 * MS);
    s.packet(&udp(5, DIR_INGRESS, &dns(3, "slow.example", true, 0, &[]), 6001 * MS), owner);
    let r = records(&mut s, 7000 * MS);
    let c = r[0].counts.unwrap();
    assert_eq!((c.timeouts, c.unmatched_responses, c.responses), (1, 1, 0));
    assert_eq!(r[0].timeouts[0].count, 1);
}

#[test]
fn malformed_messages_are_counted_and_good_ones_still_measured() {
    let mut s = DnsSource::new(Config::default());
    let mut lying = dns(1, "a.example", false, 0, &[]);
    lying[5] = 9; // qdcount 9
    for bad in [&b"\x00\x01garbage"[..], &lying, &[0xff; 40]] {
        s.packet(&udp(5, DIR_EGRESS, bad, MS), owner);
    }
    s.packet(&udp(5, DIR_EGRESS, &dns(2, "ok.example", false, 0, &[]), 2 * MS), owner);
    s.packet(&udp(5, DIR_INGRESS, &dns(2, "ok.example", true, 0, &[]), 3 * MS), owner);
    let r = records(&mut s, 10 * MS);
    let c = r[0].counts.unwrap();
    assert_eq!((c.malformed, c.queries, c.responses, c.nodata), (3, 1, 1, 1));
    assert_eq!(s.counters().malformed, 3);
    assert!(s.losses().contains(&("dns", "malformed", 3)));
}

#[test]
fn search_expansions_are_grouped_with_the_lookup_that_answered() {
    let mut s = DnsSource::new(Config::default());
    let names = ["api.example.com.shop.svc.cluster.local", "api.example.com.svc.cluster.local", "api.example.com"];
    for (i, n) in names.iter().enumerate() {
        let id = i as u16 + 10;
        let last = i == names.len() - 1;
        let ts = i as u64 * 10 * MS;
        s.packet(&udp(5, DIR_EGRESS, &dns(id, n, false, 0, &[]), ts), owner);
        let answer = dns(id, n, true, if last { 0 } else { 3 }, if last { &[Ipv4Addr::LOCALHOST][..] } else { &[] });
        s.packet(&udp(5, DIR_INGRESS, &answer, ts + MS), owner);
    }
    let r = records(&mut s, 100 * MS);
    let c = r[0].counts.unwrap();
    assert_eq!((c.queries, c.nxdomain, c.noerror, c.search_expansions, c.expanded_lookups), (3, 2, 1, 2, 1));
    let top = r[0].top_names.iter().find(|n| n.name == "api.example.com").unwrap();
    assert_eq!(top.search_expansions, 2);
}

#[test]
fn a_dns_server_workload_is_recorded_in_the_server_role() {
    let mut s = DnsSource::new(Config::default());
    // the server's socket: the query arrives (ingress) from its client
    let mut q = packet(9, DIR_INGRESS, 17, 53, 0, &dns(4, "svc.example", false, 0, &[]), MS);
    q.event.key.remote_port = 40000;
    let mut a = packet(9, DIR_EGRESS, 17, 53, 0, &dns(4, "svc.example", true, 0, &[]), 2 * MS);
    a.event.key.remote_port = 40000;
    s.packet(&q, owner);
    s.packet(&a, owner);
    let r = records(&mut s, 10 * MS);
    assert_eq!(r[0].role, pb::DnsRole::Server as i32);
    assert_eq!(r[0].latency[0].resolver_port, 53, "the server's own address");
    assert_eq!(s.fqdn(&owner(9), IpAddr::V4(Ipv4Addr::LOCALHOST), 3 * MS), None, "servers' answers name nothing");
}

#[test]
fn tcp_framing_guesses_retransmissions_and_unfinished_messages_are_counted() {
    let mut s = DnsSource::new(Config::default());
    let framed = |m: Vec<u8>| [(m.len() as u16).to_be_bytes().to_vec(), m].concat();
    // first seen mid-connection: what arrives from the resolver reads as a
    // query, which a client never receives, so it frames nothing
    let stray = framed(dns(1, "stray.example", false, 0, &[]));
    s.packet(&packet(5, DIR_INGRESS, 6, 40002, 700, &stray, MS), owner);
    let q = framed(dns(2, "tcp.example", false, 0, &[]));
    let a = framed(dns(2, "tcp.example", true, 0, &[Ipv4Addr::new(192, 0, 2, 9)]));
    s.packet(&packet(5, DIR_EGRESS, 6, 40002, 100, &q, 2 * MS), owner);
    s.packet(&packet(5, DIR_EGRESS, 6, 40002, 100, &q, 3 * MS), owner); // retransmitted
    s.packet(&packet(5, DIR_INGRESS, 6, 40002, 700 + stray.len() as u32, &a, 4 * MS), owner);
    // half a query, then nothing for longer than a stream is kept
    s.packet(&packet(5, DIR_EGRESS, 6, 40002, 100 + q.len() as u32, &q[..5], 5 * MS), owner);
    s.tick(70_000 * MS);
    let r = records(&mut s, 70_000 * MS);
    assert_eq!(r.len(), 1, "no server record from the stray bytes");
    let c = r[0].counts.unwrap();
    assert_eq!((c.queries, c.responses, c.noerror), (1, 1, 1));
    assert_eq!(c.malformed, 1, "the stray bytes are garbage on a DNS port");
    let losses = s.losses();
    for expected in [
        ("dns_activity", "tcp_resync_rejected", 1),
        ("dns", "malformed", 1),
        ("dns", "tcp_unfinished", 1),
        ("dns_activity", "tcp_retransmits", 1),
        ("dns_activity", "tcp_retransmitted_bytes", q.len() as u64),
    ] {
        assert!(losses.contains(&expected), "{expected:?} in {losses:?}");
    }
}

#[test]
fn a_query_replaced_by_another_question_on_its_id_is_a_counted_loss() {
    let mut s = DnsSource::new(Config::default());
    s.packet(&udp(5, DIR_EGRESS, &dns(8, "first.example", false, 0, &[]), MS), owner);
    s.packet(&udp(5, DIR_EGRESS, &dns(8, "second.example", false, 0, &[]), 2 * MS), owner);
    s.packet(&udp(5, DIR_INGRESS, &dns(8, "second.example", true, 0, &[]), 3 * MS), owner);
    s.tick(10_000 * MS);
    let c = records(&mut s, 10_000 * MS)[0].counts.unwrap();
    assert_eq!((c.queries, c.retries, c.responses, c.timeouts), (2, 0, 1, 0));
    assert!(s.losses().contains(&("dns", "query_superseded", 1)));
}

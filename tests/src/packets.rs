//! Builders for crafted packets (Ethernet + IP + transport) fed to the flow
//! programs with BPF_PROG_TEST_RUN. Checksums are left zero: the programs never
//! look at them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// An Ethernet header with the given ethertype followed by `l3`.
pub fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(l3);
    p
}

/// A TCP header (20 bytes + `options`, padded to 4) followed by `payload`.
pub fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    tcp_seq(sport, dport, flags, 1, options, payload)
}

/// [`tcp`] with a chosen sequence number.
pub fn tcp_seq(sport: u16, dport: u16, flags: u8, seq: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(1); // NOP
    }
    let doff = ((20 + opts.len()) / 4) as u8;
    let mut h = Vec::with_capacity(20 + opts.len() + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // ack
    h.push(doff << 4);
    h.push(flags);
    h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
    h.extend_from_slice(&opts);
    h.extend_from_slice(payload);
    h
}

/// A TCP header with an explicit (possibly invalid) data offset in words.
pub fn tcp_raw_doff(sport: u16, dport: u16, doff_words: u8, len: usize) -> Vec<u8> {
    let mut h = tcp(sport, dport, ACK, &[], &[]);
    h[12] = doff_words << 4;
    h.resize(len, 0);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// ICMP / ICMPv6 header: type, code, checksum, id, sequence.
pub fn icmp(kind: u8, code: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![kind, code, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&7u16.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// IPv4 header (20 bytes + options) followed by `l4`. `frag` is the raw
/// flags/fragment-offset field.
pub fn ipv4_full(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let ihl = ((20 + options.len()) / 4) as u8;
    let total = (20 + options.len() + l4.len()) as u16;
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    h.extend_from_slice(l4);
    h
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_full(src, dst, proto, 0, &[], l4)
}

/// An IPv6 extension header (hop-by-hop, routing, destination options): `len8`
/// is the Hdr Ext Len field, the header is (len8 + 1) * 8 bytes.
pub fn ext_hdr(next: u8, len8: u8) -> Vec<u8> {
    let mut h = vec![next, len8];
    h.resize((usize::from(len8) + 1) * 8, 0);
    h
}

/// IPv6 fragment header.
pub fn frag_hdr(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h
}

/// IPv6 header with `first_next` as Next Header, followed by `rest`
/// (extension headers and transport).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, first_next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    h.push(first_next);
    h.push(64);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(rest);
    h
}

/// IPv4 address as the kernel flow key stores it (::ffff:a.b.c.d).
pub fn key_v4(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

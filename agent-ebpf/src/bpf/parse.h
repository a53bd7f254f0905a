/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Packet parsing for cgroup_skb programs, where skb data starts at the network
 * header. Headers are read in place from the linear part of the skb when it
 * holds them (the common case, and far cheaper than a helper call), else copied
 * with bpf_skb_load_bytes, so a non-linear skb parses the same. A header that
 * is not fully present makes the packet "truncated", never a record with
 * guessed fields.
 *
 * The parser writes the flow key directly, oriented by direction: the local
 * end is the source of egress packets and the destination of ingress ones.
 */
#ifndef PODLENS_PARSE_H
#define PODLENS_PARSE_H

#include "common.h"
#include <bpf/bpf_endian.h>

#define PL_ETH_P_IP 0x0800
#define PL_ETH_P_IPV6 0x86DD

#define PL_IPPROTO_HOPOPTS 0
#define PL_IPPROTO_ICMP 1
#define PL_IPPROTO_TCP 6
#define PL_IPPROTO_UDP 17
#define PL_IPPROTO_ROUTING 43
#define PL_IPPROTO_FRAGMENT 44
#define PL_IPPROTO_AH 51
#define PL_IPPROTO_ICMPV6 58
#define PL_IPPROTO_DSTOPTS 60

#define PL_TCP_FIN 0x01
#define PL_TCP_SYN 0x02
#define PL_TCP_RST 0x04
#define PL_TCP_ACK 0x10

/* Headers deeper than this are always copied (keeps the verifier's ranges small). */
#define PL_DIRECT_MAX_OFF 512

enum parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP,
	PARSE_TRUNCATED,
	PARSE_MALFORMED,
	PARSE_EXT_LIMIT,
};

/* What a packet adds besides its key. */
struct pkt_info {
	__u32 hdr_len; /* network + transport header bytes, repeated per GSO segment */
	__u32 tcp_seq; /* network byte order */
	__u8 tcp_flags;
	__u8 fragment; /* non-first fragment: no transport header */
};

/* Scratch space for headers that must be copied out of a non-linear skb. */
union hdr_buf {
	struct iphdr ip;
	struct ipv6hdr ip6;
	struct tcphdr tcp;
	struct udphdr udp;
	__u8 bytes[40];
};

/*
 * A pointer to `len` header bytes at `off`: into the packet when the linear
 * part holds them, else into `buf` after copying; NULL if the packet is shorter.
 */
static __always_inline const void *pl_header(struct __sk_buff *skb, __u32 off, union hdr_buf *buf,
					     const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off <= PL_DIRECT_MAX_OFF && data + off + len <= end)
		return data + off;
	if (bpf_skb_load_bytes(skb, off, buf, len))
		return NULL;
	return buf;
}

static __always_inline void set_ports(struct flow_key *k, int dir, __u16 sport, __u16 dport)
{
	k->local_port = dir == PL_DIR_EGRESS ? sport : dport;
	k->remote_port = dir == PL_DIR_EGRESS ? dport : sport;
}

static __always_inline int parse_l4(struct __sk_buff *skb, struct flow_key *k, struct pkt_info *pi,
				    __u32 off, int dir)
{
	union hdr_buf buf;

	if (pi->fragment)
		return PARSE_OK;

	switch (k->protocol) {
	case PL_IPPROTO_TCP: {
		const struct tcphdr *th = pl_header(skb, off, &buf, sizeof(struct tcphdr));
		const __u8 *raw;
		__u32 doff;

		if (!th)
			return PARSE_TRUNCATED;
		doff = th->doff * 4;
		if (doff < sizeof(struct tcphdr))
			return PARSE_MALFORMED;
		if (off + doff > skb->len)
			return PARSE_TRUNCATED;
		raw = (const __u8 *)th;
		pi->tcp_flags = raw[13];
		pi->tcp_seq = th->seq;
		pi->hdr_len += doff;
		set_ports(k, dir, bpf_ntohs(th->source), bpf_ntohs(th->dest));
		return PARSE_OK;
	}
	case PL_IPPROTO_UDP: {
		const struct udphdr *uh = pl_header(skb, off, &buf, sizeof(struct udphdr));

		if (!uh)
			return PARSE_TRUNCATED;
		pi->hdr_len += sizeof(struct udphdr);
		set_ports(k, dir, bpf_ntohs(uh->source), bpf_ntohs(uh->dest));
		return PARSE_OK;
	}
	case PL_IPPROTO_ICMP:
	case PL_IPPROTO_ICMPV6: {
		/* type, code, checksum, then the echo identifier */
		const __u8 *ih = pl_header(skb, off, &buf, 8);
		__u16 port;
		int echo;

		if (!ih)
			return PARSE_TRUNCATED;
		if (k->protocol == PL_IPPROTO_ICMP)
			echo = ih[0] == 8 || ih[0] == 0;
		else
			echo = ih[0] == 128 || ih[0] == 129;
		/*
		 * Both "ports" equal, so either orientation gives one record. Both
		 * candidates are computed first: a conditional index into the header
		 * lets clang build the address with OR, which the verifier rejects.
		 */
		{
			__u16 id = (__u16)ih[4] << 8 | ih[5];
			__u16 type_code = (__u16)ih[0] << 8 | ih[1];

			port = echo ? id : type_code;
		}
		k->local_port = port;
		k->remote_port = port;
		pi->hdr_len += 8;
		return PARSE_OK;
	}
	default:
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow_key *k, struct pkt_info *pi, int dir)
{
	union hdr_buf buf;
	const struct iphdr *ip = pl_header(skb, 0, &buf, sizeof(struct iphdr));
	__u32 ihl;

	if (!ip)
		return PARSE_TRUNCATED;
	if (ip->version != 4)
		return PARSE_MALFORMED;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(struct iphdr))
		return PARSE_MALFORMED;
	if (ihl > skb->len)
		return PARSE_TRUNCATED;
	k->family = PL_FAMILY_IPV4;
	k->protocol = ip->protocol;
	pi->fragment = (bpf_ntohs(ip->frag_off) & 0x1fff) != 0;
	/* ::ffff:a.b.c.d */
	k->local_addr[10] = 0xff;
	k->local_addr[11] = 0xff;
	k->remote_addr[10] = 0xff;
	k->remote_addr[11] = 0xff;
	if (dir == PL_DIR_EGRESS) {
		__builtin_memcpy(&k->local_addr[12], &ip->saddr, 4);
		__builtin_memcpy(&k->remote_addr[12], &ip->daddr, 4);
	} else {
		__builtin_memcpy(&k->local_addr[12], &ip->daddr, 4);
		__builtin_memcpy(&k->remote_addr[12], &ip->saddr, 4);
	}
	pi->hdr_len = ihl;
	return parse_l4(skb, k, pi, ihl, dir);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct flow_key *k, struct pkt_info *pi, int dir)
{
	union hdr_buf buf;
	const struct ipv6hdr *ip6 = pl_header(skb, 0, &buf, sizeof(struct ipv6hdr));
	__u32 off = sizeof(struct ipv6hdr);
	__u8 nh;
	int i;

	if (!ip6)
		return PARSE_TRUNCATED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	k->family = PL_FAMILY_IPV6;
	if (dir == PL_DIR_EGRESS) {
		__builtin_memcpy(k->local_addr, &ip6->saddr, 16);
		__builtin_memcpy(k->remote_addr, &ip6->daddr, 16);
	} else {
		__builtin_memcpy(k->local_addr, &ip6->daddr, 16);
		__builtin_memcpy(k->remote_addr, &ip6->saddr, 16);
	}
	nh = ip6->nexthdr;

	/* one pass per extension header, plus the one that reaches L4 */
	for (i = 0; i < PL_IPV6_MAX_EXT_HDRS + 1; i++) {
		/* next header, length, and (fragment header) the offset field */
		const __u8 *e;

		switch (nh) {
		case PL_IPPROTO_HOPOPTS:
		case PL_IPPROTO_ROUTING:
		case PL_IPPROTO_DSTOPTS:
			e = pl_header(skb, off, &buf, 2);
			if (!e)
				return PARSE_TRUNCATED;
			nh = e[0];
			off += ((__u32)e[1] + 1) * 8;
			continue;
		case PL_IPPROTO_AH:
			e = pl_header(skb, off, &buf, 2);
			if (!e)
				return PARSE_TRUNCATED;
			nh = e[0];
			off += ((__u32)e[1] + 2) * 4;
			continue;
		case PL_IPPROTO_FRAGMENT:
			e = pl_header(skb, off, &buf, 4);
			if (!e)
				return PARSE_TRUNCATED;
			nh = e[0];
			off += 8;
			if ((((__u16)e[2] << 8 | e[3]) & 0xfff8) != 0) {
				/* the rest is payload, not headers */
				pi->fragment = 1;
				k->protocol = nh;
				pi->hdr_len = off;
				return PARSE_OK;
			}
			continue;
		default:
			if (off > skb->len)
				return PARSE_TRUNCATED;
			k->protocol = nh;
			pi->hdr_len = off;
			return parse_l4(skb, k, pi, off, dir);
		}
	}
	return PARSE_EXT_LIMIT;
}

static __always_inline int parse_packet(struct __sk_buff *skb, struct flow_key *k, struct pkt_info *pi, int dir)
{
	if (skb->protocol == bpf_htons(PL_ETH_P_IP))
		return parse_ipv4(skb, k, pi, dir);
	if (skb->protocol == bpf_htons(PL_ETH_P_IPV6))
		return parse_ipv6(skb, k, pi, dir);
	return PARSE_NON_IP;
}

#endif /* PODLENS_PARSE_H */

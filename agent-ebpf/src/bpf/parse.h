/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Packet parsing for cgroup_skb programs, where skb data starts at the network
 * header. Everything is read with bpf_skb_load_bytes, so a short or non-linear
 * skb is handled the same way as a linear one: a header that is not fully
 * present makes the packet "truncated", never a record with guessed fields.
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

enum parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP,
	PARSE_TRUNCATED,
	PARSE_MALFORMED,
	PARSE_EXT_LIMIT,
};

/* What one packet contributes, in wire orientation (src -> dst). */
struct pkt {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 family;
	__u8 tcp_flags;
	__u8 fragment; /* non-first fragment: no transport header */
	__u32 l4_off;   /* offset of the transport header */
	__u32 hdr_len;  /* network + transport header bytes, repeated per GSO segment */
};

static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = p->l4_off;
	__u8 h[14];

	if (p->fragment)
		return PARSE_OK;

	switch (p->protocol) {
	case PL_IPPROTO_TCP: {
		__u32 doff;

		if (bpf_skb_load_bytes(skb, off, h, 14))
			return PARSE_TRUNCATED;
		doff = (h[12] >> 4) * 4;
		if (doff < 20)
			return PARSE_MALFORMED;
		if (off + doff > skb->len)
			return PARSE_TRUNCATED;
		p->sport = (__u16)h[0] << 8 | h[1];
		p->dport = (__u16)h[2] << 8 | h[3];
		p->tcp_flags = h[13];
		p->hdr_len += doff;
		return PARSE_OK;
	}
	case PL_IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, off, h, 8))
			return PARSE_TRUNCATED;
		p->sport = (__u16)h[0] << 8 | h[1];
		p->dport = (__u16)h[2] << 8 | h[3];
		p->hdr_len += 8;
		return PARSE_OK;
	case PL_IPPROTO_ICMP:
	case PL_IPPROTO_ICMPV6: {
		__u8 type;
		int echo;

		if (bpf_skb_load_bytes(skb, off, h, 8))
			return PARSE_TRUNCATED;
		type = h[0];
		if (p->protocol == PL_IPPROTO_ICMP)
			echo = type == 8 || type == 0;
		else
			echo = type == 128 || type == 129;
		/* both "ports" equal, so either orientation gives one record */
		if (echo)
			p->sport = (__u16)h[4] << 8 | h[5];
		else
			p->sport = (__u16)type << 8 | h[1];
		p->dport = p->sport;
		p->hdr_len += 8;
		return PARSE_OK;
	}
	default:
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[20];
	__u32 ihl;

	if (bpf_skb_load_bytes(skb, 0, h, 20))
		return PARSE_TRUNCATED;
	if (h[0] >> 4 != 4)
		return PARSE_MALFORMED;
	ihl = (h[0] & 0x0f) * 4;
	if (ihl < 20)
		return PARSE_MALFORMED;
	if (ihl > skb->len)
		return PARSE_TRUNCATED;
	p->family = PL_FAMILY_IPV4;
	p->protocol = h[9];
	p->fragment = (((__u16)h[6] << 8 | h[7]) & 0x1fff) != 0;
	/* ::ffff:a.b.c.d */
	p->src[10] = 0xff;
	p->src[11] = 0xff;
	p->dst[10] = 0xff;
	p->dst[11] = 0xff;
	__builtin_memcpy(&p->src[12], &h[12], 4);
	__builtin_memcpy(&p->dst[12], &h[16], 4);
	p->l4_off = ihl;
	p->hdr_len = ihl;
	return parse_l4(skb, p);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[40];
	__u8 nh;
	__u32 off = 40;
	int i;

	if (bpf_skb_load_bytes(skb, 0, h, 40))
		return PARSE_TRUNCATED;
	if (h[0] >> 4 != 6)
		return PARSE_MALFORMED;
	p->family = PL_FAMILY_IPV6;
	__builtin_memcpy(p->src, &h[8], 16);
	__builtin_memcpy(p->dst, &h[24], 16);
	nh = h[6];

	for (i = 0; i < PL_IPV6_MAX_EXT_HDRS; i++) {
		__u8 e[4];

		switch (nh) {
		case PL_IPPROTO_HOPOPTS:
		case PL_IPPROTO_ROUTING:
		case PL_IPPROTO_DSTOPTS:
			if (bpf_skb_load_bytes(skb, off, e, 2))
				return PARSE_TRUNCATED;
			nh = e[0];
			off += ((__u32)e[1] + 1) * 8;
			continue;
		case PL_IPPROTO_AH:
			if (bpf_skb_load_bytes(skb, off, e, 2))
				return PARSE_TRUNCATED;
			nh = e[0];
			off += ((__u32)e[1] + 2) * 4;
			continue;
		case PL_IPPROTO_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, e, 4))
				return PARSE_TRUNCATED;
			nh = e[0];
			off += 8;
			if ((((__u16)e[2] << 8 | e[3]) & 0xfff8) != 0) {
				/* the rest is payload, not headers */
				p->fragment = 1;
				p->protocol = nh;
				p->l4_off = off;
				p->hdr_len = off;
				return PARSE_OK;
			}
			continue;
		default:
			p->protocol = nh;
			p->l4_off = off;
			p->hdr_len = off;
			return parse_l4(skb, p);
		}
	}
	return PARSE_EXT_LIMIT;
}

static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol == bpf_htons(PL_ETH_P_IP))
		return parse_ipv4(skb, p);
	if (skb->protocol == bpf_htons(PL_ETH_P_IPV6))
		return parse_ipv6(skb, p);
	return PARSE_NON_IP;
}

#endif /* PODLENS_PARSE_H */

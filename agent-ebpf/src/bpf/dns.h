/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * DNS capture inside the flow programs (no second pass over the packet): the
 * transport payload of a TCP or UDP packet to or from a DNS port is copied,
 * bounded, into the dns_events ring with the flow key, direction and a kernel
 * timestamp. Userspace decodes and matches it. The ring is separate from
 * "events" so a burst of DNS cannot crowd out flow-overflow or cgroup events.
 */
#ifndef PODLENS_DNS_H
#define PODLENS_DNS_H

#include "common.h"
#include "parse.h"

/* Set by the agent at load time (--dns-ports); 0 marks an unused slot. */
volatile const __u16 pl_dns_ports[PL_DNS_PORTS] = { 53 };

/* Sized by the agent at load time (--dns-ring-bytes). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} dns_events SEC(".maps");

static __always_inline int is_dns_port(__u16 port)
{
	int i;

	for (i = 0; i < PL_DNS_PORTS; i++)
		if (pl_dns_ports[i] != 0 && pl_dns_ports[i] == port)
			return 1;
	return 0;
}

/*
 * One reservation of a constant size (the verifier demands it): `slot` is
 * PL_DNS_SMALL_PAYLOAD or PL_DNS_MAX_PAYLOAD once inlined.
 */
static __always_inline void dns_emit(struct __sk_buff *skb, const struct flow_key *key,
				     const struct pkt_info *pi, int dir, __u32 len, const __u32 slot)
{
	struct dns_event *e;
	__u32 n = len;

	if (n > slot)
		n = slot;
	e = bpf_ringbuf_reserve(&dns_events, sizeof(*e) + slot, 0);
	if (!e) {
		ctr_add(PL_CTR_DNS_LOST, 1);
		return;
	}
	e->hdr.kind = PL_EVENT_DNS;
	e->hdr._pad = 0;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(&e->key, key, sizeof(*key));
	e->tcp_seq = key->protocol == PL_IPPROTO_TCP ? bpf_ntohl(pi->tcp_seq) : 0;
	e->payload_len = len;
	e->captured = n;
	e->direction = dir;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	/*
	 * n is in [1, slot], but clang knows it and drops the checks the
	 * verifier needs: hide n from the optimiser so both bounds stay.
	 */
	asm volatile("" : "+r"(n));
	if (n < 1 || n > slot || bpf_skb_load_bytes(skb, pi->hdr_len, e->payload, n)) {
		bpf_ringbuf_discard(e, 0);
		ctr_add(PL_CTR_DNS_COPY_ERR, 1);
		return;
	}
	ctr_add(PL_CTR_DNS_MESSAGES, 1);
	if (len > slot)
		ctr_add(PL_CTR_DNS_CUT, 1);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&dns_events));
}

/* Called for every parsed packet; cheap unless a port matches. */
static __always_inline void dns_capture(struct __sk_buff *skb, const struct flow_key *key,
					const struct pkt_info *pi, int dir)
{
	__u32 len;

	if (pi->fragment || (key->protocol != PL_IPPROTO_UDP && key->protocol != PL_IPPROTO_TCP))
		return;
	if (!is_dns_port(key->remote_port) && !is_dns_port(key->local_port))
		return;
	if (skb->len <= pi->hdr_len)
		return; /* no payload: a bare TCP ACK, SYN or FIN */
	len = skb->len - pi->hdr_len;
	if (len <= PL_DNS_SMALL_PAYLOAD)
		dns_emit(skb, key, pi, dir, len, PL_DNS_SMALL_PAYLOAD);
	else
		dns_emit(skb, key, pi, dir, len, PL_DNS_MAX_PAYLOAD);
}

#endif /* PODLENS_DNS_H */

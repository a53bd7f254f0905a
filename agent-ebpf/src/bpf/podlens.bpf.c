// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Per-cgroup flow accounting (cgroup_skb ingress/egress on the cgroup2 root),
 * DNS capture in the same pass (dns.h), and cgroup lifecycle events (tp_btf
 * cgroup_mkdir/rmdir) for identity.
 *
 * Lossless drain. Flows are aggregated in one of two hash maps, flows_0 and
 * flows_1; flow_active says which. To drain, the agent points flow_active at
 * the other (empty) map, then updates drain_barrier, an array-of-maps no
 * program uses: the kernel returns from an array-of-maps update only after
 * synchronize_rcu(), and every program invocation runs inside an RCU read-side
 * section, so once that update returns no invocation that read the old index
 * is still running. The agent then reads and empties the old map at leisure:
 * no increment can land between its read and its delete. Both maps are named
 * in the programs, so the verifier inlines their lookups (a map reached
 * through a map-in-map would cost a helper and an indirect call per packet).
 *
 * Observe only: every path of the skb programs returns 1 (allow).
 */
#include "common.h"
#include "parse.h"
#include "dns.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct flow_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PL_FLOW_MAP_ENTRIES);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
};

struct flow_map flows_0 SEC(".maps");
struct flow_map flows_1 SEC(".maps");

/* Slot 0: which of flows_0 / flows_1 the programs write (0 or 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_active SEC(".maps");

struct barrier_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

/* Written only by podlens_clock_sample, which the agent test-runs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_sample);
} clock_samples SEC(".maps");

/* Never read by programs: updating it is the agent's RCU barrier. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct barrier_inner);
} drain_barrier SEC(".maps");

/* A SYN without ACK: the first packet of a TCP connection, sent by its client. */
static __always_inline int is_open(__u8 flags)
{
	return (flags & (PL_TCP_SYN | PL_TCP_ACK)) == PL_TCP_SYN;
}

static __always_inline void add_counts(struct flow_counts *c, __u64 bytes, __u64 packets,
				       __u8 flags)
{
	__sync_fetch_and_add(&c->bytes, bytes);
	__sync_fetch_and_add(&c->packets, packets);
	if (flags & PL_TCP_SYN)
		__sync_fetch_and_add(&c->syn, 1);
	if (flags & PL_TCP_FIN)
		__sync_fetch_and_add(&c->fin, 1);
	if (flags & PL_TCP_RST)
		__sync_fetch_and_add(&c->rst, 1);
	/*
	 * A plain byte store: atomic OR needs kernel 5.12 and a flag is only ever
	 * added, so the check keeps the store off the common path.
	 */
	if ((c->tcp_flags | flags) != c->tcp_flags)
		c->tcp_flags |= flags;
	if (is_open(flags) && !c->opened)
		c->opened = 1;
}

static __always_inline void send_overflow(const struct flow_key *key, int dir, __u64 bytes,
					  __u64 packets, __u8 flags)
{
	struct flow_overflow_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		ctr_add(PL_CTR_OVERFLOW_LOST_PACKETS, packets);
		ctr_add(PL_CTR_OVERFLOW_LOST_BYTES, bytes);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.kind = PL_EVENT_FLOW_OVERFLOW;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(&e->key, key, sizeof(*key));
	e->bytes = bytes;
	e->packets = packets;
	e->direction = dir;
	e->tcp_flags = flags;
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
}

static __always_inline void account(void *flows, const struct flow_key *key, int dir,
				    __u64 bytes, __u64 packets, __u8 flags)
{
	struct flow_value *v;
	__u64 now = bpf_jiffies64();
	long err;

	v = bpf_map_lookup_elem(flows, key);
	if (!v) {
		struct flow_value nv = {};

		nv.first_seen_jiffies = now;
		nv.last_seen_jiffies = now;
		nv.dir[dir].bytes = bytes;
		nv.dir[dir].packets = packets;
		nv.dir[dir].syn = !!(flags & PL_TCP_SYN);
		nv.dir[dir].fin = !!(flags & PL_TCP_FIN);
		nv.dir[dir].rst = !!(flags & PL_TCP_RST);
		nv.dir[dir].tcp_flags = flags;
		nv.dir[dir].opened = is_open(flags);
		err = bpf_map_update_elem(flows, key, &nv, BPF_NOEXIST);
		if (!err)
			return;
		if (err == -EEXIST)
			/* another CPU inserted it first */
			v = bpf_map_lookup_elem(flows, key);
		if (!v) {
			ctr_add(err == -E2BIG ? PL_CTR_FLOW_MAP_FULL : PL_CTR_FLOW_UPDATE_ERR, 1);
			send_overflow(key, dir, bytes, packets, flags);
			return;
		}
	}
	add_counts(&v->dir[dir], bytes, packets, flags);
	/* jiffies change every 1-10 ms: skip the store (and the dirtied line) otherwise */
	if (v->last_seen_jiffies != now)
		v->last_seen_jiffies = now;
}

static __always_inline int handle_skb(struct __sk_buff *skb, int dir)
{
	struct flow_key key = {};
	struct pkt_info pi = {};
	__u32 zero = 0;
	__u64 segs, bytes;
	__u32 *active;
	int res;

	res = parse_packet(skb, &key, &pi, dir);
	switch (res) {
	case PARSE_OK:
		break;
	case PARSE_NON_IP:
		ctr_add(PL_CTR_NON_IP, 1);
		ctr_add(PL_CTR_NON_IP_BYTES, skb->len);
		return 1;
	default:
		ctr_add(res == PARSE_TRUNCATED	 ? PL_CTR_TRUNCATED
			: res == PARSE_MALFORMED ? PL_CTR_MALFORMED
						 : PL_CTR_IPV6_EXT_LIMIT,
			1);
		ctr_add(PL_CTR_MALFORMED_BYTES, skb->len);
		return 1;
	}
	if (pi.fragment)
		ctr_add(PL_CTR_FRAGMENTS, 1);

	active = bpf_map_lookup_elem(&flow_active, &zero);
	if (!active) {
		ctr_add(PL_CTR_NO_FLOW_MAP, 1);
		return 1;
	}
	key.cgroup_id = bpf_skb_cgroup_id(skb);

	segs = skb->gso_segs;
	if (segs == 0)
		segs = 1;
	bytes = skb->len + (segs - 1) * pi.hdr_len;
	if (*active)
		account(&flows_1, &key, dir, bytes, segs, pi.tcp_flags);
	else
		account(&flows_0, &key, dir, bytes, segs, pi.tcp_flags);
	dns_capture(skb, &key, &pi, dir);
	return 1;
}

SEC("cgroup_skb/egress")
int podlens_flow_egress(struct __sk_buff *skb)
{
	return handle_skb(skb, PL_DIR_EGRESS);
}

SEC("cgroup_skb/ingress")
int podlens_flow_ingress(struct __sk_buff *skb)
{
	return handle_skb(skb, PL_DIR_INGRESS);
}

/*
 * Never attached: the agent runs it with BPF_PROG_TEST_RUN to read jiffies and
 * the monotonic clock together, which converts flow timestamps.
 */
SEC("cgroup_skb/egress")
int podlens_clock_sample(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct clock_sample *s = bpf_map_lookup_elem(&clock_samples, &zero);

	if (s) {
		s->mono_ns = bpf_ktime_get_ns();
		s->jiffies = bpf_jiffies64();
	}
	return 1;
}

/* Cgroup lifecycle, so that a cgroup that lives shorter than a drain interval
 * is still resolved to its path (and so to its pod). */
static __always_inline int cgroup_event(struct cgroup *cgrp, const char *path, __u32 kind)
{
	struct cgroup_event *e;
	long n;

	/* hierarchy 0 is the cgroup2 (default) hierarchy */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		ctr_add(PL_CTR_CGROUP_EVENTS_LOST, 1);
		return 0;
	}
	e->hdr.kind = kind;
	e->hdr._pad = 0;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
	e->_pad = 0;
	n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	e->path_len = n > 0 ? n : 0;
	ctr_add(PL_CTR_CGROUP_EVENTS, 1);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(podlens_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	return cgroup_event(cgrp, path, PL_EVENT_CGROUP_MKDIR);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(podlens_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	return cgroup_event(cgrp, path, PL_EVENT_CGROUP_RMDIR);
}

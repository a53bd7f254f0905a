// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Per-cgroup flow accounting (cgroup_skb ingress/egress on the cgroup2 root)
 * and cgroup lifecycle events (tp_btf cgroup_mkdir/rmdir) for identity.
 *
 * Lossless drain. Flows are aggregated in one of two hash maps. The programs
 * find the active one through the single slot of the flow_maps array-of-maps.
 * To drain, the agent installs the other (empty) map in the slot. An update of
 * an array-of-maps returns to userspace only after synchronize_rcu(), and every
 * program invocation runs inside an RCU read-side section, so once the update
 * returns no invocation can still hold a pointer into the old map or its
 * values. The agent then reads and empties the old map at leisure: no
 * increment can land between its read and its delete. No per-packet atomics on
 * a shared index, no lookup-then-delete race.
 *
 * Observe only: every path of the skb programs returns 1 (allow).
 */
#include "common.h"
#include "parse.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/*
 * Sizes rather than __type(): clang emits only a forward declaration for types
 * reached through an inner map definition, which would leave the loader
 * without a key size. The agent creates the two inner maps itself.
 */
struct flow_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PL_FLOW_MAP_ENTRIES);
	__uint(key_size, sizeof(struct flow_key));
	__uint(value_size, sizeof(struct flow_value));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct flow_map);
} flow_maps SEC(".maps");

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
}

static __always_inline void send_overflow(const struct flow_key *key, int dir, __u64 bytes,
					  __u64 packets, __u8 flags, __u64 now)
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
	e->hdr.ts_ns = now;
	__builtin_memcpy(&e->key, key, sizeof(*key));
	e->bytes = bytes;
	e->packets = packets;
	e->direction = dir;
	e->tcp_flags = flags;
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
}

/*
 * First/last seen need jiffy resolution, not nanoseconds: the coarse clock
 * (5.11+) costs a fraction of bpf_ktime_get_ns() per packet. Both read
 * CLOCK_MONOTONIC; the check is resolved at load time against the kernel's BTF.
 */
static __always_inline __u64 flow_clock(void)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ktime_get_coarse_ns))
		return bpf_ktime_get_coarse_ns();
	return bpf_ktime_get_ns();
}

static __always_inline void account(void *flows, const struct flow_key *key, int dir,
				    __u64 bytes, __u64 packets, __u8 flags)
{
	struct flow_value *v;
	__u64 now = flow_clock();
	long err;

	v = bpf_map_lookup_elem(flows, key);
	if (!v) {
		struct flow_value nv = {};

		nv.first_seen_ns = now;
		nv.last_seen_ns = now;
		nv.dir[dir].bytes = bytes;
		nv.dir[dir].packets = packets;
		nv.dir[dir].syn = !!(flags & PL_TCP_SYN);
		nv.dir[dir].fin = !!(flags & PL_TCP_FIN);
		nv.dir[dir].rst = !!(flags & PL_TCP_RST);
		nv.dir[dir].tcp_flags = flags;
		err = bpf_map_update_elem(flows, key, &nv, BPF_NOEXIST);
		if (!err)
			return;
		if (err == -EEXIST)
			/* another CPU inserted it first */
			v = bpf_map_lookup_elem(flows, key);
		if (!v) {
			ctr_add(err == -E2BIG ? PL_CTR_FLOW_MAP_FULL : PL_CTR_FLOW_UPDATE_ERR, 1);
			send_overflow(key, dir, bytes, packets, flags, now);
			return;
		}
	}
	add_counts(&v->dir[dir], bytes, packets, flags);
	v->last_seen_ns = now;
}

static __always_inline int handle_skb(struct __sk_buff *skb, int dir)
{
	struct flow_key key = {};
	struct pkt_info pi = {};
	__u32 zero = 0;
	__u64 segs, bytes;
	void *flows;
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

	flows = bpf_map_lookup_elem(&flow_maps, &zero);
	if (!flows) {
		ctr_add(PL_CTR_NO_FLOW_MAP, 1);
		return 1;
	}
	key.cgroup_id = bpf_skb_cgroup_id(skb);

	segs = skb->gso_segs;
	if (segs == 0)
		segs = 1;
	bytes = skb->len + (segs - 1) * pi.hdr_len;
	account(flows, &key, dir, bytes, segs, pi.tcp_flags);
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

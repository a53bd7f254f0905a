/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/* Maps and helpers shared by every program in one object. */
#ifndef PODLENS_COMMON_H
#define PODLENS_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "podlens.h"

#define E2BIG 7
#define EEXIST 17

/* Per-CPU loss and error counters, indexed by enum pl_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PL_CTR_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/*
 * Rare events only (flow-map overflow, cgroup lifecycle). Userspace sizes it at
 * load time; 256 KiB holds ~2900 overflow events.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void ctr_add(__u32 slot, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &slot);
	/*
	 * Atomic even though per-CPU: an egress program in process context can be
	 * interrupted by a softirq running ingress on the same CPU.
	 */
	if (c)
		__sync_fetch_and_add(c, n);
}

/*
 * Wake the reader only when the ring is a quarter full; otherwise it drains on
 * its own timer. This keeps wakeups per event at zero in steady state.
 */
static __always_inline __u64 ringbuf_wakeup_flags(void *ring)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);

	return avail > size / 4 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif /* PODLENS_COMMON_H */

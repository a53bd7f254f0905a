// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Scheduler probes: per-cgroup run-queue latency and on-CPU time, and the
 * victim -> culprit wait matrix (tp_btf sched_wakeup, sched_wakeup_new,
 * sched_switch). A separate object from the flow programs so the agent can run
 * without it (--sched=off) and its maps cost nothing then.
 *
 * How a wait is charged. A task becomes runnable (woken, or preempted while
 * still runnable) at since_ns; `tasks` remembers that by pid. When it is
 * switched in, on CPU c at now, it waited [since_ns, now). CPU c's history
 * says which cgroups ran there in that interval; each overlap is charged to
 * (victim = the task's cgroup, culprit = the cgroup that ran), the idle task as
 * culprit 0. The history is local to the CPU doing the switch, so it is a
 * per-CPU array and needs no locking. A wait that began on another CPU (the
 * task migrated) is charged for the part this CPU's history covers; whatever
 * the history does not reach back to is "unattributed" (kept per cgroup).
 *
 * Cost: a switch between two tasks of one cgroup touches only per-CPU state
 * and the tasks map; the stats and pair maps are updated only when a wait
 * ends or the running cgroup changes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "podlens.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* On-CPU time kept per CPU before it is added to the cgroup's stats. */
#define PENDING_FLUSH_NS 1000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PL_SCHED_CTR_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} sched_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PL_SCHED_TASKS);
	__type(key, __u32);
	__type(value, struct sched_wait);
} sched_tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PL_SCHED_CGROUPS);
	__type(key, __u64);
	__type(value, struct sched_cgroup_stats);
} sched_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PL_SCHED_PAIRS);
	__type(key, struct sched_pair_key);
	__type(value, __u64);
} sched_pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_history);
} sched_cpu SEC(".maps");

static __always_inline void sched_ctr(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&sched_counters, &slot);

	/* a wakeup from an interrupt can land between a read and a write */
	if (c)
		__sync_fetch_and_add(c, 1);
}

/* The task's cgroup in the cgroup2 hierarchy: the id sockets report too. */
static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

/* Kernels before 5.14 call task_struct.__state "state". */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline int task_runnable(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state) == 0;
	struct task_struct___pre514 *old = (void *)t;
	return BPF_CORE_READ(old, state) == 0;
}

static __always_inline struct sched_cgroup_stats *cgroup_stats(__u64 cgroup)
{
	struct sched_cgroup_stats *s = bpf_map_lookup_elem(&sched_cgroups, &cgroup);
	if (s)
		return s;
	struct sched_cgroup_stats zero = {};
	/* EEXIST (another CPU inserted it meanwhile) is fine: look it up again */
	bpf_map_update_elem(&sched_cgroups, &cgroup, &zero, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&sched_cgroups, &cgroup);
	if (!s)
		sched_ctr(PL_SCHED_CTR_CGROUPS_FULL);
	return s;
}

static __always_inline __u32 runq_bucket(__u64 ns)
{
	__u32 log = 0;

	if (ns >= (1ULL << 32)) { ns >>= 32; log += 32; }
	if (ns >= (1ULL << 16)) { ns >>= 16; log += 16; }
	if (ns >= (1ULL << 8)) { ns >>= 8; log += 8; }
	if (ns >= (1ULL << 4)) { ns >>= 4; log += 4; }
	if (ns >= (1ULL << 2)) { ns >>= 2; log += 2; }
	if (ns >= (1ULL << 1)) { log += 1; }
	/* log = floor(log2(ns)); bucket 0 below 2^10 ns */
	if (log < 10)
		return 0;
	log -= 9;
	return log < PL_RUNQ_BUCKETS ? log : PL_RUNQ_BUCKETS - 1;
}

static __always_inline int charge(__u64 victim, __u64 culprit, __u64 ns)
{
	struct sched_pair_key key = { .victim_cgroup = victim, .culprit_cgroup = culprit };
	__u64 *v = bpf_map_lookup_elem(&sched_pairs, &key);

	if (v) {
		*v += ns;
		return 0;
	}
	if (bpf_map_update_elem(&sched_pairs, &key, &ns, BPF_NOEXIST) == 0)
		return 0;
	/* a racing insert on another CPU made it exist: per-CPU slot, retry once */
	v = bpf_map_lookup_elem(&sched_pairs, &key);
	if (v) {
		*v += ns;
		return 0;
	}
	sched_ctr(PL_SCHED_CTR_PAIRS_FULL);
	return -1;
}

/* Charges [since, now) on this CPU to whoever ran; returns the uncharged ns. */
static __always_inline __u64 attribute(struct cpu_history *h, __u64 victim, __u64 since, __u64 now)
{
	__u64 left = now - since;

	for (int i = 0; i < PL_CPU_HISTORY; i++) {
		__u32 idx = (h->head - 1 - i) & (PL_CPU_HISTORY - 1);
		struct cpu_segment *s = &h->seg[idx];

		if (s->end_ns <= since || s->start_ns == 0)
			break;
		__u64 from = s->start_ns > since ? s->start_ns : since;
		__u64 ns = s->end_ns - from;
		if (ns > left)
			ns = left;
		if (ns && charge(victim, s->cgroup_id, ns) == 0)
			left -= ns;
		if (s->start_ns <= since)
			break;
	}
	return left;
}

static __always_inline void flush_pending(struct cpu_history *h)
{
	if (!h->pending_cgroup || !h->pending_oncpu_ns)
		return;
	struct sched_cgroup_stats *s = cgroup_stats(h->pending_cgroup);
	if (s)
		s->oncpu_ns += h->pending_oncpu_ns;
	h->pending_oncpu_ns = 0;
}

static __always_inline int on_wakeup(struct task_struct *p)
{
	struct sched_wait w = { .since_ns = bpf_ktime_get_ns(), .preempted = 0 };
	__u32 pid = BPF_CORE_READ(p, pid);

	if (!pid)
		return 0;
	/* NOEXIST: a task already queued (preempted, or woken twice) keeps its earlier start */
	long err = bpf_map_update_elem(&sched_tasks, &pid, &w, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST */)
		sched_ctr(PL_SCHED_CTR_TASKS_FULL);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(podlens_sched_wakeup, struct task_struct *p)
{
	return on_wakeup(p);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(podlens_sched_wakeup_new, struct task_struct *p)
{
	return on_wakeup(p);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(podlens_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct cpu_history *h = bpf_map_lookup_elem(&sched_cpu, &zero);
	__u64 now = bpf_ktime_get_ns();
	__u32 prev_pid = BPF_CORE_READ(prev, pid);
	__u32 next_pid = BPF_CORE_READ(next, pid);
	__u64 prev_cg = prev_pid ? task_cgroup(prev) : 0;

	if (!h)
		return 0;

	/* close prev's segment; its on-CPU time goes to the pending accumulator */
	if (h->current_start_ns) {
		struct cpu_segment *s = &h->seg[h->head & (PL_CPU_HISTORY - 1)];
		s->cgroup_id = prev_cg;
		s->start_ns = h->current_start_ns;
		s->end_ns = now;
		h->head++;
		if (prev_cg) {
			if (prev_cg != h->pending_cgroup) {
				flush_pending(h);
				h->pending_cgroup = prev_cg;
			}
			h->pending_oncpu_ns += now - h->current_start_ns;
			if (h->pending_oncpu_ns >= PENDING_FLUSH_NS)
				flush_pending(h);
		}
	}
	h->current_start_ns = now;

	if (prev_pid) {
		if (task_runnable(prev)) {
			struct sched_wait w = { .since_ns = now, .preempted = 1 };
			if (bpf_map_update_elem(&sched_tasks, &prev_pid, &w, BPF_ANY))
				sched_ctr(PL_SCHED_CTR_TASKS_FULL);
		} else {
			/* going to sleep: a wakeup that raced with it must not count */
			bpf_map_delete_elem(&sched_tasks, &prev_pid);
		}
	}

	if (!next_pid)
		return 0;
	struct sched_wait *w = bpf_map_lookup_elem(&sched_tasks, &next_pid);
	if (!w)
		return 0;
	__u64 since = w->since_ns;
	__u32 preempted = w->preempted;
	bpf_map_delete_elem(&sched_tasks, &next_pid);
	if (since > now) {
		sched_ctr(PL_SCHED_CTR_CLOCK_SKEW);
		return 0;
	}
	__u64 wait = now - since;
	__u64 next_cg = task_cgroup(next);
	struct sched_cgroup_stats *st = cgroup_stats(next_cg);
	if (!st)
		return 0;
	if (preempted) {
		st->preempt_waits++;
		st->preempt_wait_ns += wait;
	} else {
		st->wakeup_waits++;
		st->wakeup_wait_ns += wait;
	}
	__u32 b = runq_bucket(wait);
	if (b < PL_RUNQ_BUCKETS)
		st->hist[b]++;
	st->unattributed_ns += attribute(h, next_cg, since, now);
	return 0;
}

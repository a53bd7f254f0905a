// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Scheduler probes: per-cgroup run-queue latency and on-CPU time, and the
 * victim -> culprit wait matrix. A separate object from the flow programs so
 * the agent can run without it (--sched off) and its maps cost nothing then.
 *
 * When a wait began. Schedinfo mode (1, see podlens.h): the scheduler stamps
 * task_struct.sched_info.last_queued with its run-queue clock whenever it
 * queues a task (woken, or preempted while runnable) and clears it only after
 * the sched_switch tracepoint, so at switch-in it is the start of the wait,
 * and the run queue's clock is "now". Wakeup-probe mode (0): sched_wakeup and
 * sched_wakeup_new stamp the task in sched_tasks, sched_switch stamps a
 * preempted prev; an entry is valid while the task's context-switch count is
 * what it was then, so nothing is ever deleted on the hot path.
 *
 * How a wait is charged. Switched in on CPU c at now after waiting since t,
 * the task's cgroup (victim) is charged, for each stretch of [t, now) in c's
 * history, to the cgroup that ran there (culprit; 0 = idle). The history is
 * local to the CPU doing the switch: a per-CPU array, no locking. Time the
 * history does not reach back to (the wait began elsewhere and the task
 * migrated, or more than PL_CPU_HISTORY switches ago) is "unattributed".
 *
 * Cost. Stats and the last charge are cached per CPU (cpu_history) and added
 * to the hash maps when another cgroup needs the slot, after a millisecond,
 * or when the CPU goes idle: switches among the same cgroups touch no hash map.
 *
 * Limits. With schedinfo timing the scheduler restamps a queued task that is
 * migrated, so the part of a wait spent queued on the first CPU is not seen
 * (the kernel adds it to the task's run_delay, which has no per-cgroup view).
 * On-CPU time is added when a task leaves the CPU.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "podlens.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Oldest a per-CPU cache may get before it is added to the maps. */
#define CACHE_FLUSH_NS 1000000ULL

/* 1: schedinfo, 0: wakeup probes (set by the agent at load). */
volatile const __u32 pl_sched_mode = 1;

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

/*
 * The task's cgroup in the cgroup2 hierarchy: the id sockets report too.
 * tp_btf arguments are BTF pointers: plain (CO-RE relocated) loads, no
 * bpf_probe_read per hop.
 */
static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	return t->cgroups->dfl_cgrp->kn->id;
}

/* Kernels before 5.14 call task_struct.__state "state". */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline int task_runnable(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state == 0;
	struct task_struct___pre514 *old = (void *)t;
	return BPF_CORE_READ(old, state) == 0;
}

static __always_inline __u64 task_csw(struct task_struct *t)
{
	return t->nvcsw + t->nivcsw;
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

static __always_inline void flush_slot(struct sched_stats_slot *sl)
{
	struct sched_cgroup_stats *d;

	if (!sl->cgroup_id)
		return;
	d = cgroup_stats(sl->cgroup_id);
	if (d) {
		d->wakeup_waits += sl->s.wakeup_waits;
		d->wakeup_wait_ns += sl->s.wakeup_wait_ns;
		d->preempt_waits += sl->s.preempt_waits;
		d->preempt_wait_ns += sl->s.preempt_wait_ns;
		d->oncpu_ns += sl->s.oncpu_ns;
		d->unattributed_ns += sl->s.unattributed_ns;
		for (int i = 0; i < PL_RUNQ_BUCKETS; i++)
			d->hist[i] += sl->s.hist[i];
	}
	__builtin_memset(&sl->s, 0, sizeof(sl->s));
}

/* This CPU's cached stats of `cgroup`, taking a slot over if needed. */
static __always_inline struct sched_cgroup_stats *cached_stats(struct cpu_history *h, __u64 cgroup, __u64 now)
{
	struct sched_stats_slot *sl;

	if (h->slot[0].cgroup_id == cgroup)
		sl = &h->slot[0];
	else if (h->slot[1].cgroup_id == cgroup)
		sl = &h->slot[1];
	else {
		sl = &h->slot[h->next_slot & 1];
		h->next_slot++;
		flush_slot(sl);
		sl->cgroup_id = cgroup;
		sl->since_ns = now;
		return &sl->s;
	}
	return &sl->s;
}

static __always_inline void flush_pair(struct cpu_history *h)
{
	if (!h->pair_ns)
		return;
	struct sched_pair_key key = { .victim_cgroup = h->pair_victim, .culprit_cgroup = h->pair_culprit };
	__u64 *v = bpf_map_lookup_elem(&sched_pairs, &key);
	if (!v) {
		__u64 zero = 0;
		bpf_map_update_elem(&sched_pairs, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&sched_pairs, &key);
	}
	if (v) {
		*v += h->pair_ns;
	} else {
		sched_ctr(PL_SCHED_CTR_PAIRS_FULL);
		struct sched_cgroup_stats *s = cgroup_stats(h->pair_victim);
		if (s)
			s->unattributed_ns += h->pair_ns;
	}
	h->pair_ns = 0;
}

/*
 * Flushes whatever cache is older than CACHE_FLUSH_NS (all of them when
 * `all`, e.g. the CPU goes idle), so a window never misses more than the last
 * millisecond of a CPU that keeps switching, and nothing of one that idles.
 */
static __always_inline void flush_stale(struct cpu_history *h, __u64 now, int all)
{
	for (int i = 0; i < 2; i++) {
		struct sched_stats_slot *sl = &h->slot[i];
		if (sl->cgroup_id && (all || now - sl->since_ns >= CACHE_FLUSH_NS)) {
			flush_slot(sl);
			sl->since_ns = now;
		}
	}
	if (h->pair_ns && (all || now - h->pair_since_ns >= CACHE_FLUSH_NS)) {
		flush_pair(h);
		h->pair_since_ns = now;
	}
}

static __always_inline void charge(struct cpu_history *h, __u64 victim, __u64 culprit, __u64 ns, __u64 now)
{
	if (h->pair_victim != victim || h->pair_culprit != culprit || now - h->pair_since_ns >= CACHE_FLUSH_NS) {
		flush_pair(h);
		h->pair_victim = victim;
		h->pair_culprit = culprit;
		h->pair_since_ns = now;
	}
	h->pair_ns += ns;
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

/* Charges [since, now) on this CPU to whoever ran; returns the uncharged ns. */
static __always_inline __u64 attribute(struct cpu_history *h, __u64 victim, __u64 since, __u64 now)
{
	__u64 left = now - since;

	for (int i = 0; i < PL_CPU_HISTORY && left; i++) {
		__u32 idx = (h->head - 1 - i) & (PL_CPU_HISTORY - 1);
		struct cpu_segment *s = &h->seg[idx];

		if (s->end_ns <= since || s->start_ns == 0)
			break;
		__u64 from = s->start_ns > since ? s->start_ns : since;
		__u64 ns = s->end_ns - from;
		if (ns > left)
			ns = left;
		charge(h, victim, s->cgroup_id, ns, now);
		left -= ns;
		if (s->start_ns <= since)
			break;
	}
	return left;
}

/* The run queue's clock, which stamps sched_info.last_queued (schedinfo mode). */
static __always_inline __u64 rq_clock(struct task_struct *t)
{
	return t->se.cfs_rq->rq->clock;
}

static __always_inline int on_wakeup(struct task_struct *p)
{
	__u32 pid = p->pid;
	__u64 csw = task_csw(p);
	struct sched_wait *w;

	if (!pid)
		return 0;
	w = bpf_map_lookup_elem(&sched_tasks, &pid);
	if (w) {
		/* still queued since an earlier stamp (preempted, or woken twice): keep it */
		if (w->csw != csw || !w->since_ns) {
			w->since_ns = bpf_ktime_get_ns();
			w->csw = csw;
			w->preempted = 0;
		}
		return 0;
	}
	struct sched_wait nw = { .since_ns = bpf_ktime_get_ns(), .csw = csw, .preempted = 0 };
	if (bpf_map_update_elem(&sched_tasks, &pid, &nw, BPF_NOEXIST) && !bpf_map_lookup_elem(&sched_tasks, &pid))
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

/* Wakeup-probe mode: a thread's entry dies with it, so the map holds live tasks only. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(podlens_sched_exit, struct task_struct *p)
{
	__u32 pid = p->pid;

	bpf_map_delete_elem(&sched_tasks, &pid);
	return 0;
}

/* Wakeup-probe mode: remember a preempted prev. */
static __always_inline void stamp_preempted(struct task_struct *prev, __u32 pid, __u64 now)
{
	__u64 csw = task_csw(prev);
	struct sched_wait *w = bpf_map_lookup_elem(&sched_tasks, &pid);

	if (w) {
		w->since_ns = now;
		w->csw = csw;
		w->preempted = 1;
		return;
	}
	struct sched_wait nw = { .since_ns = now, .csw = csw, .preempted = 1 };
	if (bpf_map_update_elem(&sched_tasks, &pid, &nw, BPF_ANY))
		sched_ctr(PL_SCHED_CTR_TASKS_FULL);
}

/* When next's wait began (0: it did not wait, or we cannot tell). */
static __always_inline __u64 wait_start(struct task_struct *next, __u32 pid, __u32 *preempted)
{
	*preempted = 0;
	if (pl_sched_mode) {
		if (!bpf_core_field_exists(next->sched_info.last_queued)) {
			sched_ctr(PL_SCHED_CTR_NO_SCHEDINFO);
			return 0;
		}
		return next->sched_info.last_queued;
	}
	struct sched_wait *w = bpf_map_lookup_elem(&sched_tasks, &pid);
	if (!w || !w->since_ns || w->csw != task_csw(next))
		return 0;
	*preempted = w->preempted;
	__u64 since = w->since_ns;
	w->since_ns = 0;
	return since;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(podlens_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct cpu_history *h = bpf_map_lookup_elem(&sched_cpu, &zero);
	__u32 prev_pid = prev->pid;
	__u32 next_pid = next->pid;
	__u64 prev_cg = prev_pid ? task_cgroup(prev) : 0;
	__u64 now;

	if (!h)
		return 0;
	if (pl_sched_mode)
		now = rq_clock(prev_pid ? prev : next);
	else
		now = bpf_ktime_get_ns();

	/* close prev's segment and add its on-CPU time */
	if (h->current_start_ns && now > h->current_start_ns) {
		struct cpu_segment *s = &h->seg[h->head & (PL_CPU_HISTORY - 1)];
		s->cgroup_id = prev_cg;
		s->start_ns = h->current_start_ns;
		s->end_ns = now;
		h->head++;
		if (prev_cg) {
			struct sched_cgroup_stats *st = cached_stats(h, prev_cg, now);
			st->oncpu_ns += now - h->current_start_ns;
		}
	}
	h->current_start_ns = now;
	flush_stale(h, now, next_pid == 0);

	/* preempted before it could sleep (state set, schedule() not yet called): still queued */
	if (!pl_sched_mode && prev_pid && (preempt || task_runnable(prev)))
		stamp_preempted(prev, prev_pid, now);

	if (!next_pid)
		return 0;
	__u32 preempted;
	__u64 since = wait_start(next, next_pid, &preempted);
	if (!since)
		return 0;
	if (since > now) {
		sched_ctr(PL_SCHED_CTR_CLOCK_SKEW);
		return 0;
	}
	__u64 wait = now - since;
	__u64 next_cg = task_cgroup(next);
	struct sched_cgroup_stats *st = cached_stats(h, next_cg, now);
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
	/* the stats pointer stays valid: attribute() only touches the pair cache */
	st->unattributed_ns += attribute(h, next_cg, since, now);
	return 0;
}

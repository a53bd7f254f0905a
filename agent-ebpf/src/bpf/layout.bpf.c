// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Never loaded. One global per shared struct so that the object's BTF carries
 * their complete layout (clang only emits types that globals or functions
 * reference), for the Rust mirror's layout tests.
 */
#include "vmlinux.h"
#include "podlens.h"

struct flow_key pl_layout_flow_key;
struct flow_counts pl_layout_flow_counts;
struct flow_value pl_layout_flow_value;
struct pl_event_header pl_layout_event_header;
struct flow_overflow_event pl_layout_flow_overflow_event;
struct cgroup_event pl_layout_cgroup_event;
struct clock_sample pl_layout_clock_sample;
enum pl_counter pl_layout_counter;
enum pl_event_kind pl_layout_event_kind;
struct dns_event pl_layout_dns_event;
enum pl_limits pl_layout_limits;
enum pl_sched_counter pl_layout_sched_counter;
struct sched_cgroup_stats pl_layout_sched_cgroup_stats;
struct sched_pair_key pl_layout_sched_pair_key;
struct sched_wait pl_layout_sched_wait;
struct cpu_segment pl_layout_cpu_segment;
struct cpu_history pl_layout_cpu_history;
struct sched_stats_slot pl_layout_sched_stats_slot;

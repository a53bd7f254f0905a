// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Benchmark baseline: cgroup_skb programs that do nothing but allow. The flow
 * programs' cost is reported above these, measured in the same run.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("cgroup_skb/egress")
int baseline_egress(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/ingress")
int baseline_ingress(struct __sk_buff *skb)
{
	return 1;
}

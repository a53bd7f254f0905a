/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Structures shared between the kernel programs and the agent.
 *
 * This header is the single source of truth. agent-ebpf/src/lib.rs mirrors
 * every struct in Rust, and its tests compare sizes and field offsets with the
 * BTF that clang emits for the compiled object, so a change here that is not
 * mirrored there fails the build's tests rather than corrupting records.
 */
#ifndef PODLENS_H
#define PODLENS_H

/* Default capacity of each of the two flow maps (userspace may override). */
#define PL_FLOW_MAP_ENTRIES 65536
/* IPv6 extension headers skipped before giving up on finding L4. */
#define PL_IPV6_MAX_EXT_HDRS 8
/* Bytes of a cgroup path carried in a cgroup event (longer paths are truncated). */
#define PL_CGROUP_PATH_LEN 256
/* Ports treated as DNS (set at load time; 0 marks an unused slot). */
#define PL_DNS_PORTS 4
/*
 * DNS payload copied per packet. Messages up to PL_DNS_SMALL_PAYLOAD bytes
 * (nearly all queries and most answers) take a small ring-buffer slot, larger
 * ones a PL_DNS_MAX_PAYLOAD slot; beyond that the copy is cut (counted).
 */
#define PL_DNS_SMALL_PAYLOAD 256
#define PL_DNS_MAX_PAYLOAD 1536

/*
 * Scheduler probes (sched.bpf.c). Run-queue waits go into a log2 histogram of
 * PL_RUNQ_BUCKETS buckets: bucket 0 counts waits below 1024 ns, bucket i
 * (1 <= i < last) waits in [2^(i+9), 2^(i+10)) ns, the last one everything from
 * 2^(PL_RUNQ_BUCKETS+8) ns (about 4.3 s) up. Each CPU remembers its last
 * PL_CPU_HISTORY switches, which is how far back a wait can be charged to the
 * cgroups that ran meanwhile. Map sizes are defaults the agent may override.
 */
#define PL_RUNQ_BUCKETS 24
#define PL_CPU_HISTORY 32
#define PL_SCHED_CGROUPS 2048
#define PL_SCHED_PAIRS 8192
#define PL_SCHED_TASKS 32768

#define PL_FAMILY_IPV4 4
#define PL_FAMILY_IPV6 6

#define PL_DIR_EGRESS 0
#define PL_DIR_INGRESS 1

/* The limits above as an enum, so the object's BTF carries them for the Rust mirror's tests. */
enum pl_limits {
	PL_LIMIT_FLOW_MAP_ENTRIES = PL_FLOW_MAP_ENTRIES,
	PL_LIMIT_CGROUP_PATH_LEN = PL_CGROUP_PATH_LEN,
	PL_LIMIT_DNS_PORTS = PL_DNS_PORTS,
	PL_LIMIT_DNS_SMALL_PAYLOAD = PL_DNS_SMALL_PAYLOAD,
	PL_LIMIT_DNS_MAX_PAYLOAD = PL_DNS_MAX_PAYLOAD,
	PL_LIMIT_RUNQ_BUCKETS = PL_RUNQ_BUCKETS,
	PL_LIMIT_CPU_HISTORY = PL_CPU_HISTORY,
	PL_LIMIT_SCHED_CGROUPS = PL_SCHED_CGROUPS,
	PL_LIMIT_SCHED_PAIRS = PL_SCHED_PAIRS,
	PL_LIMIT_SCHED_TASKS = PL_SCHED_TASKS,
};

/*
 * Per-CPU counter slots. Every place a program can lose or reject data has a
 * slot; the agent carries them all in-band in the stream (losses under source
 * "kernel", activity such as a full flow map under "kernel_activity").
 * There is deliberately no per-packet counter: it would cost an atomic add on
 * every packet, and the flow records already count what was recorded.
 * Append only: the numbers are part of the agent<->kernel contract.
 */
enum pl_counter {
	PL_CTR_NON_IP = 0,           /* skb->protocol neither IPv4 nor IPv6 */
	PL_CTR_TRUNCATED = 1,        /* a header could not be read: not attributed */
	PL_CTR_MALFORMED = 2,        /* bad version / header length: not attributed */
	PL_CTR_IPV6_EXT_LIMIT = 3,   /* more extension headers than we skip */
	PL_CTR_FRAGMENTS = 4,        /* non-first fragments (recorded with ports 0) */
	PL_CTR_NO_FLOW_MAP = 5,      /* flow_active unreadable: not recorded */
	PL_CTR_FLOW_MAP_FULL = 6,    /* new flow did not fit: sent as overflow event */
	PL_CTR_FLOW_UPDATE_ERR = 7,  /* other insert error: sent as overflow event */
	PL_CTR_OVERFLOW_LOST_PACKETS = 8,  /* overflow event lost (ring full): packets */
	PL_CTR_OVERFLOW_LOST_BYTES = 9, /* ... and their bytes */
	PL_CTR_CGROUP_EVENTS = 10,   /* cgroup mkdir/rmdir events sent */
	PL_CTR_CGROUP_EVENTS_LOST = 11, /* cgroup events lost (ring full) */
	PL_CTR_MALFORMED_BYTES = 12, /* bytes of truncated/malformed/ext-limit packets */
	PL_CTR_NON_IP_BYTES = 13,
	PL_CTR_DNS_MESSAGES = 14,    /* DNS-port packets with payload copied to the DNS ring */
	PL_CTR_DNS_LOST = 15,        /* ... lost because the DNS ring was full */
	PL_CTR_DNS_CUT = 16,         /* ... copied only up to PL_DNS_MAX_PAYLOAD bytes */
	PL_CTR_DNS_COPY_ERR = 17,    /* ... lost because the payload could not be read */
	PL_CTR_SLOTS = 32,
};

/* Event kinds on the shared "events" ring buffer. */
enum pl_event_kind {
	PL_EVENT_FLOW_OVERFLOW = 1,
	PL_EVENT_CGROUP_MKDIR = 2,
	PL_EVENT_CGROUP_RMDIR = 3,
	PL_EVENT_DNS = 4, /* on the "dns_events" ring */
};

/*
 * One bidirectional flow, seen from the socket's side: for egress packets the
 * local end is the source, for ingress packets the destination. Addresses are
 * 16 bytes; IPv4 is stored as ::ffff:a.b.c.d with family = 4. Ports are in host
 * byte order. For ICMP/ICMPv6 both ports hold the echo identifier (echo request
 * and reply share one record) or, for other messages, (type << 8 | code).
 * Non-first fragments and protocols without ports have ports 0.
 */
struct flow_key {
	__u64 cgroup_id;
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u8 protocol;
	__u8 family;
	__u8 _pad[2];
};

/*
 * Counts for one direction. Bytes are L3 bytes (IP header, extension headers,
 * transport header and payload, no link layer) per wire segment: a GSO/GRO
 * aggregate of n segments counts n packets and its header bytes n times.
 */
struct flow_counts {
	__u64 bytes;
	__u64 packets;
	__u32 syn;
	__u32 fin;
	__u32 rst;
	__u8 tcp_flags; /* OR of the TCP flags seen (FIN=0x01 ... CWR=0x80) */
	/*
	 * 1 once a SYN without ACK went this way: the sending end opened the
	 * connection. The SYN count cannot tell, as it counts the SYN-ACK too.
	 */
	__u8 opened;
	__u8 _pad[2];
};

/*
 * First/last seen are in jiffies (bpf_jiffies64): reading the tick counter
 * costs a fraction of a clock read, and tick resolution (1-10 ms) is plenty
 * for flow records. The agent converts with a clock_sample.
 */
struct flow_value {
	struct flow_counts dir[2]; /* indexed by PL_DIR_* */
	__u64 first_seen_jiffies;
	__u64 last_seen_jiffies;
};

/* jiffies and CLOCK_MONOTONIC ns read together, for converting jiffies. */
struct clock_sample {
	__u64 jiffies;
	__u64 mono_ns;
};

struct pl_event_header {
	__u32 kind; /* enum pl_event_kind */
	__u32 _pad;
	__u64 ts_ns;
};

/* A packet whose flow could not be inserted into the flow map. */
struct flow_overflow_event {
	struct pl_event_header hdr;
	struct flow_key key;
	__u64 bytes;
	__u64 packets;
	__u8 direction; /* PL_DIR_* */
	__u8 tcp_flags;
	__u8 _pad[6];
};

/* A cgroup (v2 hierarchy) was created or removed. */
struct cgroup_event {
	struct pl_event_header hdr;
	__u64 cgroup_id;
	__u32 path_len; /* bytes copied, including the NUL; PL_CGROUP_PATH_LEN = maybe truncated */
	__u32 _pad;
	char path[PL_CGROUP_PATH_LEN]; /* relative to the cgroup2 root, starts with '/' */
};

/*
 * The transport payload of one packet to or from a DNS port: a whole DNS
 * message over UDP, a segment of the length-prefixed stream over TCP. ts_ns is
 * when the program saw the packet (egress: leaving the socket's cgroup;
 * ingress: about to be delivered to the socket), so a query/response pair
 * measures what the pod waited for.
 */
struct dns_event {
	struct pl_event_header hdr;
	struct flow_key key;  /* oriented like flows: local = the socket's end */
	__u32 tcp_seq;        /* TCP: sequence number of payload[0]; UDP: 0 */
	__u32 payload_len;    /* transport payload bytes in the packet (GSO: all segments) */
	__u16 captured;       /* bytes of it in payload[] */
	__u8 direction;       /* PL_DIR_* */
	__u8 _pad[5];
	__u8 payload[];       /* PL_DNS_SMALL_PAYLOAD or PL_DNS_MAX_PAYLOAD bytes reserved */
};

/*
 * Scheduler counter slots (their own per-CPU array, "sched_counters"): every
 * wait or on-CPU interval the probes could not record. Append only.
 *
 * Modes (the sched object's pl_sched_mode, set at load): 1 = schedinfo, the
 * scheduler's own queue timestamp (task_struct.sched_info.last_queued, on
 * every kernel with CONFIG_SCHED_INFO) measured against the run queue's
 * clock, sched_switch only; 0 = wakeup probes: sched_wakeup/_new stamp the
 * task in sched_tasks. Schedinfo costs a fraction and needs no per-task map;
 * it cannot tell preemption waits from wakeup waits (all count as wakeups).
 */
enum pl_sched_counter {
	PL_SCHED_CTR_TASKS_FULL = 0,     /* a runnable task could not be remembered: its wait is lost */
	PL_SCHED_CTR_CGROUPS_FULL = 1,   /* a cgroup's stats did not fit: its wait/on-CPU time is lost */
	PL_SCHED_CTR_PAIRS_FULL = 2,     /* a (victim, culprit) pair did not fit: charged as unattributed */
	PL_SCHED_CTR_CLOCK_SKEW = 3,     /* a wait ending before it began (cross-CPU clock): dropped */
	PL_SCHED_CTR_NO_SCHEDINFO = 4,   /* schedinfo mode without the kernel fields: wait not measured */
	PL_SCHED_CTR_SLOTS = 8,
};

/*
 * Per cgroup, cumulative since the cgroup was first seen; per CPU (the agent
 * sums the CPUs and takes differences between windows). Waits are the time a
 * runnable task of the cgroup spent on a run queue: from its wakeup, or from
 * being preempted, to being switched in. Counts in the histogram are u32: the
 * agent's window differences wrap correctly unless one window sees 2^32 waits.
 */
struct sched_cgroup_stats {
	__u64 wakeup_waits;
	__u64 wakeup_wait_ns;
	__u64 preempt_waits;
	__u64 preempt_wait_ns;
	__u64 oncpu_ns;
	/* waits (ns) reaching further back than the CPU's history, or whose pair did not fit */
	__u64 unattributed_ns;
	__u32 hist[PL_RUNQ_BUCKETS];
};

/*
 * Wait time of a victim cgroup's tasks charged to the cgroup that held the CPU
 * meanwhile (culprit_cgroup 0: the CPU was idle, so the wait began elsewhere).
 * The value is a per-CPU cumulative __u64 of nanoseconds.
 */
struct sched_pair_key {
	__u64 victim_cgroup;
	__u64 culprit_cgroup;
};

/*
 * A runnable task not on a CPU, in the wakeup-probe mode (kernels without
 * schedinfo): since when, why (1: preempted, 0: woken), and the task's
 * context-switch count then. The entry is valid only while the count is
 * unchanged, so switching out never has to delete it.
 */
struct sched_wait {
	__u64 since_ns;
	__u64 csw;
	__u32 preempted;
	__u32 _pad;
};

/* One stretch of a CPU's time: who ran (cgroup id; 0 = idle) from start to end. */
struct cpu_segment {
	__u64 cgroup_id;
	__u64 start_ns;
	__u64 end_ns;
};

/* Stats of one cgroup not yet added to sched_cgroups (per CPU). */
struct sched_stats_slot {
	__u64 cgroup_id;
	__u64 since_ns;
	struct sched_cgroup_stats s;
};

/*
 * Per CPU: the last PL_CPU_HISTORY segments (a ring, newest at (head - 1) %
 * PL_CPU_HISTORY) and when the current one began; and small caches of stats
 * and of one (victim, culprit) charge not yet added to the maps, so switches
 * among the same cgroups touch no hash map. A cache is flushed when another
 * cgroup needs its slot or when it is older than a millisecond.
 */
struct cpu_history {
	__u64 head;
	__u64 current_start_ns;
	__u64 next_slot;
	__u64 pair_victim;
	__u64 pair_culprit;
	__u64 pair_ns;
	__u64 pair_since_ns;
	struct sched_stats_slot slot[2];
	struct cpu_segment seg[PL_CPU_HISTORY];
};

#endif /* PODLENS_H */

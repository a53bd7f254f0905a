//! Mirror of the scheduler probes' shared structs (`sched.bpf.c`, the sched
//! part of `include/podlens.h`), checked against the object's BTF like the rest.

/// The compiled `sched.bpf.c` object: run-queue latency, on-CPU time and the
/// victim -> culprit wait matrix (tp_btf sched_wakeup/sched_wakeup_new/sched_switch).
pub fn sched_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched.bpf.o"))
}

/// Program names in the sched object.
pub mod programs {
    /// tp_btf/sched_wakeup.
    pub const WAKEUP: &str = "podlens_sched_wakeup";
    /// tp_btf/sched_wakeup_new.
    pub const WAKEUP_NEW: &str = "podlens_sched_wakeup_new";
    /// tp_btf/sched_switch.
    pub const SWITCH: &str = "podlens_sched_switch";
    /// tp_btf/sched_process_exit (wakeup-probe timing: frees the task's entry).
    pub const EXIT: &str = "podlens_sched_exit";
    /// Every program with the tracepoint it attaches to.
    pub const ALL: [(&str, &str); 4] = [
        (WAKEUP, "sched_wakeup"),
        (WAKEUP_NEW, "sched_wakeup_new"),
        (SWITCH, "sched_switch"),
        (EXIT, "sched_process_exit"),
    ];
}

/// Globals set at load time.
pub mod globals {
    /// `pl_sched_mode`: 1 = schedinfo (sched_switch only), 0 = wakeup probes.
    pub const MODE: &str = "pl_sched_mode";
}

/// Map names in the sched object.
pub mod maps {
    /// Per-CPU [`super::SchedCounter`] slots.
    pub const COUNTERS: &str = "sched_counters";
    /// pid -> [`super::SchedWait`]: runnable tasks not on a CPU.
    pub const TASKS: &str = "sched_tasks";
    /// cgroup id -> per-CPU [`super::SchedCgroupStats`].
    pub const CGROUPS: &str = "sched_cgroups";
    /// [`super::SchedPairKey`] -> per-CPU wait ns.
    pub const PAIRS: &str = "sched_pairs";
    /// Per-CPU [`super::CpuHistory`].
    pub const CPU: &str = "sched_cpu";
}

/// Histogram buckets (`PL_RUNQ_BUCKETS`).
pub const RUNQ_BUCKETS: usize = 24;
/// Switches each CPU remembers (`PL_CPU_HISTORY`).
pub const CPU_HISTORY: usize = 32;
/// Default cgroups with stats (`PL_SCHED_CGROUPS`).
pub const SCHED_CGROUPS: u32 = 2048;
/// Default (victim, culprit) pairs (`PL_SCHED_PAIRS`).
pub const SCHED_PAIRS: u32 = 8192;
/// Default runnable tasks remembered (`PL_SCHED_TASKS`).
pub const SCHED_TASKS: u32 = 32768;
/// Slots of the sched counters map.
pub const SCHED_COUNTER_SLOTS: u32 = 8;

/// Upper bound (exclusive) of a histogram bucket in ns; `None` for the last,
/// open-ended one. Bucket 0 holds waits below 1024 ns, bucket i waits in
/// [2^(i+9), 2^(i+10)) ns.
pub fn bucket_upper_ns(bucket: usize) -> Option<u64> {
    (bucket + 1 < RUNQ_BUCKETS).then(|| 1u64 << (bucket + 10))
}

/// Scheduler counter slots (`enum pl_sched_counter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SchedCounter {
    /// A runnable task could not be remembered: its wait is lost.
    TasksFull = 0,
    /// A cgroup's stats did not fit: its wait and on-CPU time are lost.
    CgroupsFull = 1,
    /// A (victim, culprit) pair did not fit: charged as unattributed.
    PairsFull = 2,
    /// A wait ending before it began (clocks across CPUs): dropped.
    ClockSkew = 3,
    /// Schedinfo mode on a kernel without the fields: the wait was not measured.
    NoSchedinfo = 4,
}

impl SchedCounter {
    /// Every counter, in slot order.
    pub const ALL: [SchedCounter; 5] = [
        SchedCounter::TasksFull,
        SchedCounter::CgroupsFull,
        SchedCounter::PairsFull,
        SchedCounter::ClockSkew,
        SchedCounter::NoSchedinfo,
    ];

    /// Stable snake_case name, used in metrics and in the stream.
    pub fn name(self) -> &'static str {
        match self {
            SchedCounter::TasksFull => "tasks_full",
            SchedCounter::CgroupsFull => "cgroups_full",
            SchedCounter::PairsFull => "pairs_full",
            SchedCounter::ClockSkew => "clock_skew",
            SchedCounter::NoSchedinfo => "no_schedinfo",
        }
    }

    /// Whether the counted thing is lost (rather than recorded less precisely:
    /// a full pair map still keeps the wait, as unattributed).
    pub fn is_loss(self) -> bool {
        !matches!(self, SchedCounter::PairsFull)
    }
}

/// `struct sched_cgroup_stats` (one CPU's share; cumulative).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCgroupStats {
    /// Waits that began with a wakeup.
    pub wakeup_waits: u64,
    /// Their total, ns.
    pub wakeup_wait_ns: u64,
    /// Waits that began with a preemption.
    pub preempt_waits: u64,
    /// Their total, ns.
    pub preempt_wait_ns: u64,
    /// Time on a CPU, ns (added when the task leaves the CPU).
    pub oncpu_ns: u64,
    /// Wait ns not charged to any culprit.
    pub unattributed_ns: u64,
    /// Log2 histogram of waits, see [`bucket_upper_ns`].
    pub hist: [u32; RUNQ_BUCKETS],
}

/// `struct sched_pair_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchedPairKey {
    /// The waiting task's cgroup.
    pub victim_cgroup: u64,
    /// The cgroup that held the CPU meanwhile; 0 = idle.
    pub culprit_cgroup: u64,
}

/// `struct sched_wait` (wakeup-probe mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedWait {
    /// When the task became runnable, `bpf_ktime_get_ns()`; 0 = consumed.
    pub since_ns: u64,
    /// The task's context switches then; the entry is stale once they differ.
    pub csw: u64,
    /// 1: preempted, 0: woken.
    pub preempted: u32,
    /// Always zero.
    pub _pad: u32,
}

/// `struct cpu_segment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSegment {
    /// Who ran; 0 = idle.
    pub cgroup_id: u64,
    /// From (the mode's clock).
    pub start_ns: u64,
    /// Until.
    pub end_ns: u64,
}

/// `struct sched_stats_slot`: stats cached per CPU before they reach the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStatsSlot {
    /// Whose stats; 0 = unused.
    pub cgroup_id: u64,
    /// When the slot was last flushed.
    pub since_ns: u64,
    /// Not yet in `sched_cgroups`.
    pub s: SchedCgroupStats,
}

/// `struct cpu_history`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuHistory {
    /// Segments written so far; the newest is at `(head - 1) % CPU_HISTORY`.
    pub head: u64,
    /// When the running task was switched in.
    pub current_start_ns: u64,
    /// The stats slot to take over next.
    pub next_slot: u64,
    /// The cached (victim, culprit) charge.
    pub pair_victim: u64,
    /// See `pair_victim`.
    pub pair_culprit: u64,
    /// Its ns not yet in `sched_pairs`.
    pub pair_ns: u64,
    /// When it was last flushed.
    pub pair_since_ns: u64,
    /// Cached stats.
    pub slot: [SchedStatsSlot; 2],
    /// The ring.
    pub seg: [CpuSegment; CPU_HISTORY],
}

// SAFETY: plain #[repr(C)] data, explicit padding, any bit pattern valid.
unsafe impl aya::Pod for SchedCgroupStats {}
unsafe impl aya::Pod for SchedPairKey {}
unsafe impl aya::Pod for SchedWait {}
unsafe impl aya::Pod for CpuHistory {}
unsafe impl aya::Pod for SchedStatsSlot {}

#[cfg(test)]
mod layout_tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::btf::BtfLayout;

    fn btf() -> BtfLayout {
        BtfLayout::from_elf(crate::layout_object()).expect("the compiled object carries BTF")
    }

    fn check(name: &str, size: usize, fields: &[(&str, usize)]) {
        let l = btf().struct_layout(name).unwrap_or_else(|e| panic!("struct {name} in BTF: {e}"));
        assert_eq!(l.size, size, "sizeof(struct {name})");
        for (f, off) in fields {
            assert_eq!(l.offset_of(f), Some(*off), "offsetof(struct {name}, {f})");
        }
        assert_eq!(l.members.len(), fields.len(), "fields of struct {name}");
    }

    #[test]
    fn structs_match_c() {
        check(
            "sched_cgroup_stats",
            size_of::<SchedCgroupStats>(),
            &[
                ("wakeup_waits", offset_of!(SchedCgroupStats, wakeup_waits)),
                ("wakeup_wait_ns", offset_of!(SchedCgroupStats, wakeup_wait_ns)),
                ("preempt_waits", offset_of!(SchedCgroupStats, preempt_waits)),
                ("preempt_wait_ns", offset_of!(SchedCgroupStats, preempt_wait_ns)),
                ("oncpu_ns", offset_of!(SchedCgroupStats, oncpu_ns)),
                ("unattributed_ns", offset_of!(SchedCgroupStats, unattributed_ns)),
                ("hist", offset_of!(SchedCgroupStats, hist)),
            ],
        );
        check(
            "sched_pair_key",
            size_of::<SchedPairKey>(),
            &[
                ("victim_cgroup", offset_of!(SchedPairKey, victim_cgroup)),
                ("culprit_cgroup", offset_of!(SchedPairKey, culprit_cgroup)),
            ],
        );
        check(
            "sched_wait",
            size_of::<SchedWait>(),
            &[
                ("since_ns", offset_of!(SchedWait, since_ns)),
                ("csw", offset_of!(SchedWait, csw)),
                ("preempted", offset_of!(SchedWait, preempted)),
                ("_pad", offset_of!(SchedWait, _pad)),
            ],
        );
        check(
            "cpu_segment",
            size_of::<CpuSegment>(),
            &[
                ("cgroup_id", offset_of!(CpuSegment, cgroup_id)),
                ("start_ns", offset_of!(CpuSegment, start_ns)),
                ("end_ns", offset_of!(CpuSegment, end_ns)),
            ],
        );
        check(
            "cpu_history",
            size_of::<CpuHistory>(),
            &[
                ("head", offset_of!(CpuHistory, head)),
                ("current_start_ns", offset_of!(CpuHistory, current_start_ns)),
                ("next_slot", offset_of!(CpuHistory, next_slot)),
                ("pair_victim", offset_of!(CpuHistory, pair_victim)),
                ("pair_culprit", offset_of!(CpuHistory, pair_culprit)),
                ("pair_ns", offset_of!(CpuHistory, pair_ns)),
                ("pair_since_ns", offset_of!(CpuHistory, pair_since_ns)),
                ("slot", offset_of!(CpuHistory, slot)),
                ("seg", offset_of!(CpuHistory, seg)),
            ],
        );
        check(
            "sched_stats_slot",
            size_of::<SchedStatsSlot>(),
            &[
                ("cgroup_id", offset_of!(SchedStatsSlot, cgroup_id)),
                ("since_ns", offset_of!(SchedStatsSlot, since_ns)),
                ("s", offset_of!(SchedStatsSlot, s)),
            ],
        );
    }

    #[test]
    fn counters_and_limits_match_c() {
        let btf = btf();
        let c: Vec<(String, i64)> = btf
            .enum_values("pl_sched_counter")
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n != "PL_SCHED_CTR_SLOTS")
            .map(|(n, v)| (n.trim_start_matches("PL_SCHED_CTR_").to_ascii_lowercase(), v))
            .collect();
        let rust: Vec<(String, i64)> = SchedCounter::ALL.iter().map(|c| (c.name().to_string(), *c as i64)).collect();
        assert_eq!(rust, c, "SchedCounter mirrors enum pl_sched_counter");
        let limits = btf.enum_values("pl_limits").unwrap();
        let get = |n: &str| limits.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("PL_LIMIT_RUNQ_BUCKETS"), Some(RUNQ_BUCKETS as i64));
        assert_eq!(get("PL_LIMIT_CPU_HISTORY"), Some(CPU_HISTORY as i64));
        assert_eq!(get("PL_LIMIT_SCHED_CGROUPS"), Some(i64::from(SCHED_CGROUPS)));
        assert_eq!(get("PL_LIMIT_SCHED_PAIRS"), Some(i64::from(SCHED_PAIRS)));
        assert_eq!(get("PL_LIMIT_SCHED_TASKS"), Some(i64::from(SCHED_TASKS)));
        let slots = btf.enum_values("pl_sched_counter").unwrap().into_iter().find(|(n, _)| n == "PL_SCHED_CTR_SLOTS");
        assert_eq!(slots.map(|(_, v)| v), Some(i64::from(SCHED_COUNTER_SLOTS)));
        assert!(CPU_HISTORY.is_power_of_two(), "the ring index is masked");
    }

    #[test]
    fn bucket_bounds() {
        assert_eq!(bucket_upper_ns(0), Some(1024));
        assert_eq!(bucket_upper_ns(1), Some(2048));
        assert_eq!(bucket_upper_ns(22), Some(1 << 32));
        assert_eq!(bucket_upper_ns(23), None);
    }
}

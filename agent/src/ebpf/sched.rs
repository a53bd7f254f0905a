//! The scheduler probes' object: loading, attaching, and reading its maps.
//!
//! Separate from [`super::Kernel`] so the agent runs without it (`--sched
//! off`, or a kernel without tp_btf) and its per-CPU maps then cost nothing.

use std::collections::HashMap;

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use podlens_agent_ebpf::sched::{
    self, maps, programs, CpuHistory, SchedCgroupStats, SchedCounter, SchedPairKey, RUNQ_BUCKETS,
};

use super::{hint_for, program, program_error, take_map, LoadError};

/// Map sizes, fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedOptions {
    /// Cgroups with run-queue stats (per CPU: about 150 bytes each).
    pub cgroups: u32,
    /// (victim, culprit) pairs (per CPU: 8 bytes each, plus the key).
    pub pairs: u32,
    /// Tasks remembered at once (wakeup-probe mode).
    pub tasks: u32,
    /// How waits are timed.
    pub mode: SchedMode,
}

/// How the probes learn when a wait began (see `pl_sched_mode` in podlens.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedMode {
    /// The scheduler's own queue timestamps: sched_switch only, no per-task map.
    Schedinfo,
    /// sched_wakeup/sched_wakeup_new stamps in a per-task map; also tells
    /// preemption waits from wakeup waits.
    WakeupProbes,
}

impl SchedMode {
    /// Schedinfo when this kernel keeps it: /proc/<pid>/schedstat exists
    /// (CONFIG_SCHED_INFO) and shows run-queue delay for init or for us
    /// (older kernels keep it only with delay accounting on).
    pub fn detect() -> Self {
        let delay = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        };
        match (delay("/proc/1/schedstat"), delay("/proc/self/schedstat")) {
            (Some(a), Some(b)) if a > 0 || b > 0 => SchedMode::Schedinfo,
            _ => SchedMode::WakeupProbes,
        }
    }
}

impl Default for SchedOptions {
    fn default() -> Self {
        Self {
            cgroups: sched::SCHED_CGROUPS,
            pairs: sched::SCHED_PAIRS,
            tasks: sched::SCHED_TASKS,
            mode: SchedMode::detect(),
        }
    }
}

/// One cgroup's cumulative stats, summed over CPUs. The histogram counts are
/// summed modulo 2^32 like the kernel's, so window differences stay exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupTotals {
    pub wakeup_waits: u64,
    pub wakeup_wait_ns: u64,
    pub preempt_waits: u64,
    pub preempt_wait_ns: u64,
    pub oncpu_ns: u64,
    pub unattributed_ns: u64,
    pub hist: [u32; RUNQ_BUCKETS],
}

impl CgroupTotals {
    /// Sums one CPU's share into the total.
    pub fn add_cpu(&mut self, s: &SchedCgroupStats) {
        self.wakeup_waits = self.wakeup_waits.wrapping_add(s.wakeup_waits);
        self.wakeup_wait_ns = self.wakeup_wait_ns.wrapping_add(s.wakeup_wait_ns);
        self.preempt_waits = self.preempt_waits.wrapping_add(s.preempt_waits);
        self.preempt_wait_ns = self.preempt_wait_ns.wrapping_add(s.preempt_wait_ns);
        self.oncpu_ns = self.oncpu_ns.wrapping_add(s.oncpu_ns);
        self.unattributed_ns = self.unattributed_ns.wrapping_add(s.unattributed_ns);
        for (t, v) in self.hist.iter_mut().zip(s.hist) {
            *t = t.wrapping_add(v);
        }
    }
}

/// Everything the maps hold at one moment, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedSnapshot {
    pub cgroups: HashMap<u64, CgroupTotals>,
    /// (victim, culprit) -> wait ns; culprit 0 is the idle CPU.
    pub pairs: HashMap<(u64, u64), u64>,
}

/// The loaded and (after [`SchedProbes::attach`]) attached probes.
pub struct SchedProbes {
    ebpf: Ebpf,
    cgroups: PerCpuHashMap<MapData, u64, SchedCgroupStats>,
    pairs: PerCpuHashMap<MapData, SchedPairKey, u64>,
    counters: PerCpuArray<MapData, u64>,
    mode: SchedMode,
}

impl SchedProbes {
    /// Loads and verifies the programs and creates the maps.
    pub fn load(opts: &SchedOptions) -> Result<Self, LoadError> {
        let mode: u32 = match opts.mode {
            SchedMode::Schedinfo => 1,
            SchedMode::WakeupProbes => 0,
        };
        // The per-task map is only used with the wakeup probes.
        let tasks = if opts.mode == SchedMode::Schedinfo { 1 } else { opts.tasks };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::CGROUPS, opts.cgroups)
            .map_max_entries(maps::PAIRS, opts.pairs)
            .map_max_entries(maps::TASKS, tasks)
            .override_global(sched::globals::MODE, &mode, true)
            .load(sched::sched_object())
            .map_err(|source| {
                let hint = hint_for(&source);
                LoadError::Object { source: Box::new(source), hint }
            })?;
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        for (name, tp) in programs::ALL {
            let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
            prog.load(tp, &btf).map_err(|source| program_error(name, source))?;
        }
        let cgroups = take_map(&mut ebpf, maps::CGROUPS)?;
        let pairs = take_map(&mut ebpf, maps::PAIRS)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        Ok(Self { ebpf, cgroups, pairs, counters, mode: opts.mode })
    }

    pub fn mode(&self) -> SchedMode {
        self.mode
    }

    /// Attaches sched_switch, and the wakeup probes when the mode needs them.
    pub fn attach(&mut self) -> Result<(), LoadError> {
        let names: &[&'static str] = match self.mode {
            SchedMode::Schedinfo => &[programs::SWITCH],
            SchedMode::WakeupProbes => &[programs::SWITCH, programs::WAKEUP, programs::WAKEUP_NEW, programs::EXIT],
        };
        for &name in names {
            let prog: &mut BtfTracePoint = program(&mut self.ebpf, name)?;
            prog.attach().map_err(|source| {
                let hint = hint_for(&source);
                LoadError::Attach { name, path: "tracepoint".into(), source: Box::new(source), hint }
            })?;
        }
        Ok(())
    }

    /// Reads both stats maps.
    pub fn snapshot(&self) -> Result<SchedSnapshot, aya::maps::MapError> {
        let mut snap = SchedSnapshot::default();
        for item in self.cgroups.iter() {
            let (id, per_cpu) = item?;
            let t = snap.cgroups.entry(id).or_default();
            for s in per_cpu.iter() {
                t.add_cpu(s);
            }
        }
        for item in self.pairs.iter() {
            let (k, per_cpu) = item?;
            let sum = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
            snap.pairs.insert((k.victim_cgroup, k.culprit_cgroup), sum);
        }
        Ok(snap)
    }

    /// Drops the entries of cgroups that are gone (after their last window
    /// was read), so the maps only ever fill with live cgroups.
    pub fn forget(&mut self, gone: &[u64]) -> usize {
        if gone.is_empty() {
            return 0;
        }
        let mut removed = 0;
        for id in gone {
            removed += usize::from(self.cgroups.remove(id).is_ok());
        }
        let keys: Vec<SchedPairKey> = self
            .pairs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.victim_cgroup) || gone.contains(&k.culprit_cgroup))
            .collect();
        for k in keys {
            removed += usize::from(self.pairs.remove(&k).is_ok());
        }
        removed
    }

    /// Every counter summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(SchedCounter, u64)>, aya::maps::MapError> {
        SchedCounter::ALL.iter().map(|&c| Ok((c, self.counters.get(&(c as u32), 0)?.iter().sum()))).collect()
    }

    /// Each program's kernel info (run time and count when bpf_stats is on), for benchmarks.
    pub fn program_info(&self) -> Vec<(&'static str, aya::programs::ProgramInfo)> {
        programs::ALL.iter().filter_map(|(name, _)| Some((*name, self.ebpf.program(name)?.info().ok()?))).collect()
    }

    /// The per-CPU switch history, for tests.
    pub fn cpu_history(&self) -> Result<Vec<CpuHistory>, LoadError> {
        let map = self.ebpf.map(maps::CPU).ok_or(LoadError::MissingMap { name: maps::CPU })?;
        let arr: PerCpuArray<&MapData, CpuHistory> =
            PerCpuArray::try_from(map).map_err(|source| LoadError::Map { name: maps::CPU, source })?;
        let v = arr.get(&0, 0).map_err(|source| LoadError::Map { name: maps::CPU, source })?;
        Ok(v.iter().copied().collect())
    }
}

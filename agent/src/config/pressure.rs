//! Pressure, scheduler-probe and noisy-neighbour flags.

use std::time::Duration;

use clap::ValueEnum;
use podlens_collector::runtime::parse_duration;

use crate::noisy::{episodes::Hysteresis, verdict::Thresholds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedMode {
    /// Attach the scheduler probes; without them (no tp_btf, no permission) log, count and go on.
    Auto,
    /// Attach them or fail.
    On,
    /// Do not load them (no run-queue latency, no culprits).
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedTiming {
    Auto,
    Schedinfo,
    WakeupProbes,
}

/// Cgroup pressure, scheduler probes and the noisy-neighbour detector.
#[derive(Debug, clap::Args)]
pub struct PressureArgs {
    /// Report cgroup pressure (PSI, cpu.stat, memory events) per pod and the node.
    #[arg(long = "pressure", env = "PODLENS_PRESSURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,

    /// Also report each container cgroup, not only pod-level totals.
    #[arg(long = "pressure-containers", env = "PODLENS_PRESSURE_CONTAINERS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub containers: bool,

    /// Scheduler probes (tp_btf sched_wakeup/sched_switch): run-queue latency and culprits.
    #[arg(long = "sched", env = "PODLENS_SCHED", value_enum, default_value = "auto")]
    pub sched: SchedMode,

    /// How waits are timed: "schedinfo" (the scheduler's own queue timestamps, sched_switch
    /// only: cheapest), "wakeup-probes" (sched_wakeup stamps; also splits preemption waits
    /// from wakeup waits), or "auto" (schedinfo when the kernel keeps it).
    #[arg(long = "sched-timing", env = "PODLENS_SCHED_TIMING", value_enum, default_value = "auto")]
    pub timing: SchedTiming,

    /// Cgroups with run-queue stats in the kernel (per CPU ~150 bytes each); beyond it, counted as lost.
    #[arg(long = "sched-cgroups", env = "PODLENS_SCHED_CGROUPS", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(64..=1_000_000))]
    pub sched_cgroups: u32,

    /// (victim, culprit) cgroup pairs in the kernel; beyond it, waits are charged as unattributed.
    #[arg(long = "sched-pairs", env = "PODLENS_SCHED_PAIRS", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(256..=4_000_000))]
    pub sched_pairs: u32,

    /// Runnable tasks the kernel tracks at once; beyond it, their waits are lost (counted).
    #[arg(long = "sched-tasks", env = "PODLENS_SCHED_TASKS", default_value_t = 32768,
          value_parser = clap::value_parser!(u32).range(1024..=4_000_000))]
    pub sched_tasks: u32,

    /// A pod is CPU-delayed when PSI cpu "some" (or, without PSI, its run-queue wait) reaches this share of the window.
    #[arg(long = "noisy-cpu-delay-share", env = "PODLENS_NOISY_CPU_DELAY_SHARE", default_value_t = 0.10,
          value_parser = parse_share)]
    pub cpu_delay_share: f64,

    /// ... and its run-queue p99 reaches this.
    #[arg(long = "noisy-min-p99", env = "PODLENS_NOISY_MIN_P99", default_value = "1ms", value_parser = parse_duration)]
    pub min_p99: Duration,

    /// Share of a delayed pod's wait that other pods (or the host) must cause to be named as culprits.
    #[arg(long = "noisy-min-attributed-share", env = "PODLENS_NOISY_MIN_ATTRIBUTED_SHARE", default_value_t = 0.3,
          value_parser = parse_share)]
    pub min_attributed_share: f64,

    /// Throttled time as a share of the window that makes a pod "throttled by its own limit".
    #[arg(long = "noisy-throttled-share", env = "PODLENS_NOISY_THROTTLED_SHARE", default_value_t = 0.05,
          value_parser = parse_share)]
    pub throttled_share: f64,

    /// PSI memory / io "some" share that makes a pod memory- or io-pressured.
    #[arg(long = "noisy-memory-share", env = "PODLENS_NOISY_MEMORY_SHARE", default_value_t = 0.10,
          value_parser = parse_share)]
    pub memory_share: f64,
    #[arg(long = "noisy-io-share", env = "PODLENS_NOISY_IO_SHARE", default_value_t = 0.10, value_parser = parse_share)]
    pub io_share: f64,

    /// Consecutive windows a new verdict must hold before it replaces the current one.
    #[arg(long = "noisy-enter-windows", env = "PODLENS_NOISY_ENTER_WINDOWS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub enter_windows: u32,

    /// Consecutive windows without it before a verdict (and its finding) ends.
    #[arg(long = "noisy-exit-windows", env = "PODLENS_NOISY_EXIT_WINDOWS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub exit_windows: u32,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is out of range: a share is between 0 and 1"));
    }
    Ok(v)
}

impl PressureArgs {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            cpu_delay_share: self.cpu_delay_share,
            min_p99_ns: u64::try_from(self.min_p99.as_nanos()).unwrap_or(u64::MAX),
            min_attributed_share: self.min_attributed_share,
            throttled_share: self.throttled_share,
            memory_share: self.memory_share,
            io_share: self.io_share,
            ..Thresholds::default()
        }
    }

    pub fn hysteresis(&self) -> Hysteresis {
        Hysteresis { enter_windows: self.enter_windows, exit_windows: self.exit_windows }
    }

    pub fn sched_options(&self) -> crate::ebpf::sched::SchedOptions {
        use crate::ebpf::sched::SchedMode;
        crate::ebpf::sched::SchedOptions {
            cgroups: self.sched_cgroups,
            pairs: self.sched_pairs,
            tasks: self.sched_tasks,
            mode: match self.timing {
                SchedTiming::Auto => SchedMode::detect(),
                SchedTiming::Schedinfo => SchedMode::Schedinfo,
                SchedTiming::WakeupProbes => SchedMode::WakeupProbes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::AgentArgs;

    use super::*;

    #[test]
    fn defaults_match_the_detector_defaults() {
        let a = AgentArgs::try_parse_from(["podlens-agent"]).unwrap();
        let p = &a.pressure;
        assert!(p.enabled && p.containers);
        assert_eq!(p.sched, SchedMode::Auto);
        let (t, d) = (p.thresholds(), Thresholds::default());
        assert_eq!(
            (t.cpu_delay_share, t.min_p99_ns, t.min_attributed_share),
            (d.cpu_delay_share, d.min_p99_ns, d.min_attributed_share)
        );
        assert_eq!((t.throttled_share, t.memory_share, t.io_share), (d.throttled_share, d.memory_share, d.io_share));
        assert_eq!(p.hysteresis(), Hysteresis::default());
        assert_eq!(p.sched_options(), crate::ebpf::sched::SchedOptions::default());
    }

    #[test]
    fn bad_values_name_the_flag_and_the_range() {
        for (flag, value, want) in [
            ("--noisy-cpu-delay-share", "1.5", "between 0 and 1"),
            ("--noisy-cpu-delay-share", "lots", "not a number"),
            ("--sched", "maybe", "auto"),
            ("--sched-cgroups", "1", "64"),
            ("--noisy-enter-windows", "0", "1"),
            ("--pressure", "yes", "true"),
        ] {
            let err = AgentArgs::try_parse_from(["podlens-agent", flag, value]).unwrap_err().to_string();
            assert!(err.contains(flag) && err.contains(want), "{flag} {value}: {err}");
        }
        let a = AgentArgs::try_parse_from(["podlens-agent", "--sched", "off", "--pressure", "false"]).unwrap();
        assert_eq!((a.pressure.sched, a.pressure.enabled), (SchedMode::Off, false));
    }
}

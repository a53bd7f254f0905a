//! Protobuf forms of one window's pressure numbers and findings.

use podlens_proto::v1 as pb;

use super::{
    delta::{counter, share, Counter},
    psi::PsiTotals,
    read::{CgroupSample, Source},
};
use crate::noisy::{
    episodes::{Episode, Transition},
    verdict::{CulpritKey, CulpritShare, VerdictKind},
};

fn counter_pb(c: Option<Counter>) -> Option<pb::Counter> {
    c.map(|c| pb::Counter { total: c.total, delta: c.delta })
}

/// A resource's PSI in the window; None when the file is absent now.
pub fn psi(prev: Option<&PsiTotals>, cur: Option<&PsiTotals>, window_ns: u64) -> Option<pb::Psi> {
    let cur = cur?;
    let some = counter(prev.map(|p| p.some_usec), Some(cur.some_usec));
    let full = counter(prev.and_then(|p| p.full_usec), cur.full_usec);
    Some(pb::Psi {
        some_share: some.map_or(0.0, |c| share(c.delta, window_ns)),
        full_share: full.map_or(0.0, |c| share(c.delta, window_ns)),
        some_usec: counter_pb(some),
        full_usec: counter_pb(full),
    })
}

/// cpu.stat in the window; None when no counter is present at all.
pub fn cpu_stat(prev: Option<&CgroupSample>, cur: &CgroupSample, limit_cores: Option<f64>) -> Option<pb::CpuStat> {
    let c = &cur.cpu_stat;
    if c.usage_usec.is_none() && !c.has_throttling() {
        return None;
    }
    // Values from another hierarchy than last time are not comparable.
    let p = prev.filter(|p| p.cpu_stat_source == cur.cpu_stat_source).map(|p| p.cpu_stat);
    Some(pb::CpuStat {
        usage_usec: counter_pb(counter(p.and_then(|p| p.usage_usec), c.usage_usec)),
        nr_periods: counter_pb(counter(p.and_then(|p| p.nr_periods), c.nr_periods)),
        nr_throttled: counter_pb(counter(p.and_then(|p| p.nr_throttled), c.nr_throttled)),
        throttled_usec: counter_pb(counter(p.and_then(|p| p.throttled_usec), c.throttled_usec)),
        limit_cores: limit_cores.unwrap_or(0.0),
        throttling_source: match (c.has_throttling(), cur.cpu_stat_source) {
            (true, Some(Source::CgroupV2)) => "cgroup2".into(),
            (true, Some(Source::CgroupV1)) => "cgroup1".into(),
            _ => String::new(),
        },
    })
}

/// memory.events in the window; None when no counter is present.
pub fn memory_events(prev: Option<&CgroupSample>, cur: &CgroupSample) -> Option<pb::MemoryEvents> {
    let m = &cur.memory_events;
    if m.oom.is_none() && m.oom_kill.is_none() && m.high.is_none() && m.max.is_none() {
        return None;
    }
    let p = prev.map(|p| p.memory_events);
    Some(pb::MemoryEvents {
        oom: counter_pb(counter(p.and_then(|p| p.oom), m.oom)),
        oom_kill: counter_pb(counter(p.and_then(|p| p.oom_kill), m.oom_kill)),
        high: counter_pb(counter(p.and_then(|p| p.high), m.high)),
        max: counter_pb(counter(p.and_then(|p| p.max), m.max)),
    })
}

pub fn verdict_kind(k: VerdictKind) -> pb::VerdictKind {
    match k {
        VerdictKind::Healthy => pb::VerdictKind::Healthy,
        VerdictKind::SelfThrottled => pb::VerdictKind::SelfThrottled,
        VerdictKind::SelfContention => pb::VerdictKind::SelfContention,
        VerdictKind::Neighbour => pb::VerdictKind::Neighbour,
        VerdictKind::Host => pb::VerdictKind::Host,
        VerdictKind::MemoryPressure => pb::VerdictKind::MemoryPressure,
        VerdictKind::IoPressure => pb::VerdictKind::IoPressure,
    }
}

/// A culprit with its identity resolved by `workload`.
pub fn culprit(
    key: &CulpritKey,
    wait_ns: u64,
    share: f64,
    workload: &mut dyn FnMut(&CulpritKey) -> Option<pb::Workload>,
) -> pb::Culprit {
    let kind = match key {
        CulpritKey::Pod(_) => pb::CulpritKind::Pod,
        CulpritKey::Host(_) => pb::CulpritKind::Host,
        CulpritKey::SelfPod => pb::CulpritKind::Self_,
        CulpritKey::Idle => pb::CulpritKind::Idle,
        CulpritKey::Unattributed => pb::CulpritKind::Unattributed,
    };
    pb::Culprit { kind: kind as i32, workload: workload(key), wait_ns, share }
}

pub fn culprits(
    list: &[CulpritShare],
    workload: &mut dyn FnMut(&CulpritKey) -> Option<pb::Workload>,
) -> Vec<pb::Culprit> {
    list.iter().map(|c| culprit(&c.key, c.wait_ns, c.share, workload)).collect()
}

/// The last window's numbers carried on a finding.
#[derive(Clone, Copy, Debug, Default)]
pub struct Evidence {
    pub wait_ns: u64,
    pub run_queue_p99_ns: u64,
    pub cpu_some_share: f64,
}

/// A NoisyNeighbour finding for one episode transition.
pub fn finding(
    id_prefix: &str,
    t: &Transition,
    victim: pb::Workload,
    evidence: Evidence,
    workload: &mut dyn FnMut(&CulpritKey) -> Option<pb::Workload>,
) -> pb::Finding {
    let (state, e): (pb::FindingState, &Episode) = match t {
        Transition::Opened(e) => (pb::FindingState::Open, e),
        Transition::Ongoing(e) => (pb::FindingState::Ongoing, e),
        Transition::Resolved(e) => (pb::FindingState::Resolved, e),
    };
    pb::Finding {
        id: format!("{id_prefix}{}", e.id),
        kind: pb::FindingKind::NoisyNeighbour as i32,
        state: state as i32,
        start_unix_nano: e.start_unix_nano,
        end_unix_nano: e.last_unix_nano,
        summary: e.last.summary.clone(),
        detail: Some(pb::finding::Detail::NoisyNeighbour(pb::NoisyNeighbour {
            victim: Some(victim),
            verdict: verdict_kind(e.kind) as i32,
            culprits: culprits(&e.culprits, workload),
            windows: e.windows,
            wait_ns: evidence.wait_ns,
            run_queue_p99_ns: evidence.run_queue_p99_ns,
            cpu_some_share: evidence.cpu_some_share,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::stat::CpuTotals;

    #[test]
    fn absent_stays_absent_and_first_window_has_no_delta() {
        assert_eq!(psi(None, None, 1), None);
        let cur = PsiTotals { some_usec: 500_000, full_usec: None };
        let p = psi(None, Some(&cur), 5_000_000_000).unwrap();
        assert_eq!(p.some_usec, Some(pb::Counter { total: 500_000, delta: 0 }));
        assert_eq!(p.full_usec, None, "no full line: unset, not zero");
        let next = PsiTotals { some_usec: 1_500_000, full_usec: None };
        let p = psi(Some(&cur), Some(&next), 5_000_000_000).unwrap();
        assert_eq!(p.some_usec, Some(pb::Counter { total: 1_500_000, delta: 1_000_000 }));
        assert!((p.some_share - 0.2).abs() < 1e-9);
        assert_eq!(cpu_stat(None, &CgroupSample::default(), None), None);
        assert_eq!(memory_events(None, &CgroupSample::default()), None);
    }

    #[test]
    fn throttling_from_another_hierarchy_restarts_the_deltas() {
        let v1 = CgroupSample {
            cpu_stat: CpuTotals { nr_periods: Some(100), ..Default::default() },
            cpu_stat_source: Some(Source::CgroupV1),
            ..Default::default()
        };
        let v2 = CgroupSample {
            cpu_stat: CpuTotals { nr_periods: Some(150), ..Default::default() },
            cpu_stat_source: Some(Source::CgroupV2),
            ..Default::default()
        };
        let c = cpu_stat(Some(&v1), &v2, Some(0.5)).unwrap();
        assert_eq!(c.nr_periods, Some(pb::Counter { total: 150, delta: 0 }));
        assert_eq!(c.throttling_source, "cgroup2");
        assert_eq!(c.limit_cores, 0.5);
    }
}

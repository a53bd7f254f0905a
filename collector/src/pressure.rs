//! Pressure of one pod summed over windows, for `podlens top --sort pressure`.
//! Only pod-level records count: container records would count the same
//! waits twice (the pod-level run queue is the sum over its containers).

use std::collections::HashMap;

use podlens_proto::v1::{self as pb, workload};

/// Run-queue histogram buckets the agents send (`PL_RUNQ_BUCKETS`): bucket 0
/// below 1024 ns, bucket i below 2^(i+10) ns, the last one open-ended.
pub const RUNQ_BUCKETS: usize = 24;

/// Culprits a summary keeps.
const MAX_CULPRITS: usize = 5;

/// Upper bound of run-queue bucket `i` in ns; `None` for the open-ended last one.
pub fn bucket_upper_ns(i: usize) -> Option<u64> {
    (i + 1 < RUNQ_BUCKETS).then(|| 1u64 << (i + 10))
}

/// The largest finite bucket bound: what a quantile in the open-ended bucket
/// is reported as (the histogram knows no more than "at least this").
const LARGEST_BOUND_NS: u64 = 1u64 << (RUNQ_BUCKETS - 2 + 10);

/// Whether a record is about a whole pod: the agent sets a verdict only on
/// pod-level records; without one (detector off), the pod cgroup itself has
/// no container id.
pub fn is_pod_level(p: &pb::PressureRecord, local: Option<&pb::Workload>) -> bool {
    if p.node {
        return false;
    }
    p.verdict.is_some()
        || matches!(local.and_then(|w| w.kind.as_ref()), Some(workload::Kind::Pod(pod)) if pod.container_id.is_empty())
}

/// The wait a run queue reports, wakeups and preemptions together.
pub fn wait_ns(q: &pb::RunQueue) -> u64 {
    q.wakeup_wait_ns.saturating_add(q.preempt_wait_ns)
}

fn delta(c: Option<&pb::Counter>) -> u64 {
    c.map_or(0, |c| c.delta)
}

fn some_usec(psi: Option<&pb::Psi>) -> u64 {
    delta(psi.and_then(|p| p.some_usec.as_ref()))
}

/// Pod-level pressure records of one workload, summed.
#[derive(Clone, Debug, Default)]
pub struct Pressure {
    windows: u64,
    wait_ns: u64,
    /// Whether any window had run-queue data (scheduler probes on).
    has_run_queue: bool,
    run_queue: Vec<u64>,
    cpu_some_usec: u64,
    memory_some_usec: u64,
    io_some_usec: u64,
    cpu_some_share_max: f64,
    throttled_usec: u64,
    /// The verdict of the latest window and that window's end.
    verdict: Option<(u64, pb::Verdict)>,
    /// By (culprit kind, culprit cgroup id).
    culprits: HashMap<(i32, u64), pb::Culprit>,
}

impl Pressure {
    /// Adds one pod-level record of the window ending at `window_end` (Unix ns).
    pub fn add(&mut self, p: &pb::PressureRecord, window_end: u64) {
        self.windows += 1;
        if let Some(q) = &p.run_queue {
            self.has_run_queue = true;
            self.wait_ns = self.wait_ns.saturating_add(wait_ns(q));
            self.add_buckets(&q.buckets);
        }
        self.cpu_some_usec = self.cpu_some_usec.saturating_add(some_usec(p.cpu.as_ref()));
        self.memory_some_usec = self.memory_some_usec.saturating_add(some_usec(p.memory.as_ref()));
        self.io_some_usec = self.io_some_usec.saturating_add(some_usec(p.io.as_ref()));
        if let Some(cpu) = p.cpu.as_ref().filter(|c| c.some_usec.is_some()) {
            self.cpu_some_share_max = self.cpu_some_share_max.max(cpu.some_share);
        }
        let throttled = delta(p.cpu_stat.as_ref().and_then(|s| s.throttled_usec.as_ref()));
        self.throttled_usec = self.throttled_usec.saturating_add(throttled);
        if let Some(v) = &p.verdict {
            self.set_verdict(window_end, v);
        }
        for c in &p.culprits {
            self.add_culprit(c);
        }
    }

    pub fn merge(&mut self, o: &Pressure) {
        self.windows += o.windows;
        self.wait_ns = self.wait_ns.saturating_add(o.wait_ns);
        self.has_run_queue |= o.has_run_queue;
        self.add_buckets(&o.run_queue);
        self.cpu_some_usec = self.cpu_some_usec.saturating_add(o.cpu_some_usec);
        self.memory_some_usec = self.memory_some_usec.saturating_add(o.memory_some_usec);
        self.io_some_usec = self.io_some_usec.saturating_add(o.io_some_usec);
        self.cpu_some_share_max = self.cpu_some_share_max.max(o.cpu_some_share_max);
        self.throttled_usec = self.throttled_usec.saturating_add(o.throttled_usec);
        if let Some((end, v)) = &o.verdict {
            self.set_verdict(*end, v);
        }
        for c in o.culprits.values() {
            self.add_culprit(c);
        }
    }

    fn set_verdict(&mut self, window_end: u64, v: &pb::Verdict) {
        if self.verdict.as_ref().is_none_or(|(end, _)| window_end >= *end) {
            self.verdict = Some((window_end, v.clone()));
        }
    }

    fn add_buckets(&mut self, buckets: &[u64]) {
        if self.run_queue.len() < buckets.len() {
            self.run_queue.resize(buckets.len().min(RUNQ_BUCKETS), 0);
        }
        for (i, c) in buckets.iter().enumerate() {
            // A longer histogram than the protocol's: its tail is still "longer than the largest bound".
            let slot = &mut self.run_queue[i.min(RUNQ_BUCKETS - 1)];
            *slot = slot.saturating_add(*c);
        }
    }

    fn add_culprit(&mut self, c: &pb::Culprit) {
        let id = c.workload.as_ref().map_or(0, |w| w.cgroup_id);
        let sum =
            self.culprits.entry((c.kind, id)).or_insert_with(|| pb::Culprit { kind: c.kind, ..Default::default() });
        sum.wait_ns = sum.wait_ns.saturating_add(c.wait_ns);
        if sum.workload.is_none() {
            sum.workload.clone_from(&c.workload);
        }
    }

    /// The upper bound of the bucket holding the 99th percentile (0 without waits).
    fn p99_ns(&self) -> u64 {
        let total = self.run_queue.iter().fold(0u64, |a, c| a.saturating_add(*c));
        if total == 0 {
            return 0;
        }
        // ceil(total * 0.99) in integers: no float rounding at exact boundaries
        let rank = ((u128::from(total) * 99).div_ceil(100)) as u64;
        let mut seen = 0u64;
        for (i, c) in self.run_queue.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return bucket_upper_ns(i).unwrap_or(LARGEST_BOUND_NS);
            }
        }
        LARGEST_BOUND_NS
    }

    /// How `top --sort pressure` ranks: run-queue wait, or the PSI cpu stall
    /// time (in ns, so both compare) where the scheduler probes are off.
    pub fn rank(&self) -> u64 {
        if self.has_run_queue {
            self.wait_ns
        } else {
            self.cpu_some_usec.saturating_mul(1000)
        }
    }

    pub fn to_pb(&self) -> pb::PressureSummary {
        let mut culprits: Vec<pb::Culprit> = self.culprits.values().cloned().collect();
        culprits.sort_by(|a, b| {
            let id = |c: &pb::Culprit| c.workload.as_ref().map_or(0, |w| w.cgroup_id);
            b.wait_ns.cmp(&a.wait_ns).then(a.kind.cmp(&b.kind)).then_with(|| id(a).cmp(&id(b)))
        });
        culprits.truncate(MAX_CULPRITS);
        for c in &mut culprits {
            c.share = if self.wait_ns == 0 { 0.0 } else { c.wait_ns as f64 / self.wait_ns as f64 };
        }
        pb::PressureSummary {
            windows: self.windows,
            wait_ns: self.wait_ns,
            run_queue_p99_ns: self.p99_ns(),
            cpu_some_usec: self.cpu_some_usec,
            memory_some_usec: self.memory_some_usec,
            io_some_usec: self.io_some_usec,
            cpu_some_share_max: self.cpu_some_share_max,
            throttled_usec: self.throttled_usec,
            verdict: self.verdict.as_ref().map(|(_, v)| v.clone()),
            culprits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(delta: u64) -> Option<pb::Counter> {
        Some(pb::Counter { total: delta * 10, delta })
    }

    fn psi(some: u64, share: f64) -> Option<pb::Psi> {
        Some(pb::Psi { some_usec: counter(some), some_share: share, ..Default::default() })
    }

    fn culprit(kind: pb::CulpritKind, cgroup: u64, wait: u64) -> pb::Culprit {
        pb::Culprit {
            kind: kind as i32,
            workload: (cgroup > 0).then(|| pb::Workload { cgroup_id: cgroup, ..Default::default() }),
            wait_ns: wait,
            share: 0.5,
        }
    }

    fn verdict(kind: pb::VerdictKind) -> Option<pb::Verdict> {
        Some(pb::Verdict { kind: kind as i32, ..Default::default() })
    }

    fn record(buckets: Vec<u64>, wakeup: u64, preempt: u64, culprits: Vec<pb::Culprit>) -> pb::PressureRecord {
        pb::PressureRecord {
            cpu: psi(100, 0.2),
            memory: psi(7, 0.0),
            io: None,
            cpu_stat: Some(pb::CpuStat { throttled_usec: counter(30), ..Default::default() }),
            run_queue: Some(pb::RunQueue {
                buckets,
                wakeup_wait_ns: wakeup,
                preempt_wait_ns: preempt,
                ..Default::default()
            }),
            culprits,
            verdict: verdict(pb::VerdictKind::Neighbour),
            ..Default::default()
        }
    }

    #[test]
    fn sums_windows_counters_and_the_latest_verdict() {
        let mut p = Pressure::default();
        p.add(&record(vec![1], 600, 400, vec![]), 20);
        let mut older = record(vec![1], 1000, 0, vec![]);
        older.verdict = verdict(pb::VerdictKind::Healthy);
        older.cpu = psi(50, 0.6);
        p.add(&older, 10);
        let s = p.to_pb();
        assert_eq!((s.windows, s.wait_ns, s.cpu_some_usec, s.memory_some_usec, s.io_some_usec), (2, 2000, 150, 14, 0));
        assert_eq!(s.throttled_usec, 60);
        assert_eq!(s.cpu_some_share_max, 0.6);
        assert_eq!(s.verdict.unwrap().kind, pb::VerdictKind::Neighbour as i32, "the window that ended last");
    }

    #[test]
    fn p99_is_the_upper_bound_of_its_bucket_and_the_open_bucket_reports_the_largest_bound() {
        let mut p = Pressure::default();
        // 99 waits below 1024 ns and one in [2048, 4096): p99 is in bucket 0
        p.add(&record(vec![99, 0, 1], 1, 0, vec![]), 1);
        assert_eq!(p.to_pb().run_queue_p99_ns, 1024);
        // histograms of different lengths (trailing empty buckets omitted) merge
        p.add(&record(vec![0, 0, 100], 1, 0, vec![]), 2);
        assert_eq!(p.to_pb().run_queue_p99_ns, 4096);
        let mut open = vec![0; RUNQ_BUCKETS];
        open[RUNQ_BUCKETS - 1] = 1000;
        p.add(&record(open, 1, 0, vec![]), 3);
        assert_eq!(p.to_pb().run_queue_p99_ns, 1 << 32, "bucket 22's bound");
        assert_eq!(Pressure::default().to_pb().run_queue_p99_ns, 0);
    }

    #[test]
    fn culprits_are_summed_by_kind_and_cgroup_and_the_biggest_kept() {
        use pb::CulpritKind::{Host, Idle, Pod};
        let mut a = Pressure::default();
        a.add(&record(vec![], 500, 500, vec![culprit(Pod, 7, 400), culprit(Host, 7, 100), culprit(Idle, 0, 50)]), 1);
        let mut b = Pressure::default();
        b.add(&record(vec![], 1000, 0, vec![culprit(Pod, 7, 600), culprit(Pod, 8, 10)]), 2);
        for id in 9..14 {
            b.add(&record(vec![], 0, 0, vec![culprit(Pod, id, 1)]), 3);
        }
        a.merge(&b);
        let s = a.to_pb();
        assert_eq!(s.wait_ns, 2000);
        assert_eq!(s.culprits.len(), MAX_CULPRITS);
        let top = &s.culprits[0];
        assert_eq!((top.kind, top.workload.as_ref().unwrap().cgroup_id, top.wait_ns), (Pod as i32, 7, 1000));
        assert_eq!(top.share, 0.5, "share over the summed wait, not the agent's");
        assert_eq!((s.culprits[1].kind, s.culprits[1].wait_ns), (Host as i32, 100), "same cgroup, other kind");
        assert_eq!((s.culprits[2].kind, s.culprits[3].wait_ns), (Idle as i32, 10));
    }

    #[test]
    fn rank_falls_back_to_psi_without_run_queue_data() {
        let mut p = Pressure::default();
        let mut r = record(vec![], 0, 0, vec![]);
        r.run_queue = None;
        p.add(&r, 1);
        assert_eq!(p.rank(), 100_000, "100 us of cpu stall");
        p.add(&record(vec![], 70, 0, vec![]), 2);
        assert_eq!(p.rank(), 70, "run-queue wait once there is any");
    }

    #[test]
    fn pod_level_records() {
        let pod = |container: &str| pb::Workload {
            kind: Some(workload::Kind::Pod(pb::PodRef { container_id: container.into(), ..Default::default() })),
            ..Default::default()
        };
        let bare = pb::PressureRecord::default();
        assert!(is_pod_level(&bare, Some(&pod(""))));
        assert!(!is_pod_level(&bare, Some(&pod("c1"))));
        assert!(!is_pod_level(&bare, None));
        let with_verdict = pb::PressureRecord { verdict: verdict(pb::VerdictKind::Healthy), ..Default::default() };
        assert!(is_pod_level(&with_verdict, Some(&pod("c1"))), "the verdict marks it");
        let node = pb::PressureRecord { node: true, ..Default::default() };
        assert!(!is_pod_level(&node, None));
    }
}

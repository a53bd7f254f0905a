//! Window differences of the scheduler probes' cumulative per-cgroup stats
//! and victim -> culprit pairs, and the run-queue numbers built from them.

use std::collections::HashMap;

use podlens_agent_ebpf::sched::{bucket_upper_ns, RUNQ_BUCKETS};
use podlens_proto::v1 as pb;

use crate::ebpf::sched::{CgroupTotals, SchedSnapshot};

/// One cgroup's (or a sum of cgroups') run-queue activity in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunQueueWindow {
    pub wakeup_waits: u64,
    pub wakeup_wait_ns: u64,
    pub preempt_waits: u64,
    pub preempt_wait_ns: u64,
    pub oncpu_ns: u64,
    pub unattributed_ns: u64,
    pub hist: [u64; RUNQ_BUCKETS],
}

impl RunQueueWindow {
    fn between(prev: Option<&CgroupTotals>, cur: &CgroupTotals) -> Self {
        let p = prev.copied().unwrap_or_default();
        let mut hist = [0u64; RUNQ_BUCKETS];
        for (i, h) in hist.iter_mut().enumerate() {
            // u32 counters: modular difference is exact below 2^32 waits per window
            *h = u64::from(cur.hist[i].wrapping_sub(p.hist[i]));
        }
        Self {
            wakeup_waits: cur.wakeup_waits.wrapping_sub(p.wakeup_waits),
            wakeup_wait_ns: cur.wakeup_wait_ns.wrapping_sub(p.wakeup_wait_ns),
            preempt_waits: cur.preempt_waits.wrapping_sub(p.preempt_waits),
            preempt_wait_ns: cur.preempt_wait_ns.wrapping_sub(p.preempt_wait_ns),
            oncpu_ns: cur.oncpu_ns.wrapping_sub(p.oncpu_ns),
            unattributed_ns: cur.unattributed_ns.wrapping_sub(p.unattributed_ns),
            hist,
        }
    }

    pub fn add(&mut self, o: &RunQueueWindow) {
        self.wakeup_waits += o.wakeup_waits;
        self.wakeup_wait_ns += o.wakeup_wait_ns;
        self.preempt_waits += o.preempt_waits;
        self.preempt_wait_ns += o.preempt_wait_ns;
        self.oncpu_ns += o.oncpu_ns;
        self.unattributed_ns += o.unattributed_ns;
        for (a, b) in self.hist.iter_mut().zip(o.hist) {
            *a += b;
        }
    }

    pub fn waits(&self) -> u64 {
        self.wakeup_waits + self.preempt_waits
    }

    pub fn wait_ns(&self) -> u64 {
        self.wakeup_wait_ns + self.preempt_wait_ns
    }

    /// The upper bound of the bucket holding quantile `q` (0 without waits).
    /// The open last bucket reports its lower bound: the best we know.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper_ns(i).unwrap_or(1u64 << (RUNQ_BUCKETS + 8));
            }
        }
        1u64 << (RUNQ_BUCKETS + 8)
    }

    pub fn to_pb(&self) -> pb::RunQueue {
        let used = self.hist.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
        pb::RunQueue {
            buckets: self.hist[..used].to_vec(),
            wakeup_waits: self.wakeup_waits,
            wakeup_wait_ns: self.wakeup_wait_ns,
            preempt_waits: self.preempt_waits,
            preempt_wait_ns: self.preempt_wait_ns,
            on_cpu_ns: self.oncpu_ns,
            p50_ns: self.quantile_ns(0.5),
            p99_ns: self.quantile_ns(0.99),
            unattributed_ns: self.unattributed_ns,
            wait_kinds_split: false,
        }
    }
}

/// What the probes saw in one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedWindow {
    pub cgroups: HashMap<u64, RunQueueWindow>,
    /// (victim, culprit) -> wait ns; culprit 0 = an idle CPU.
    pub pairs: HashMap<(u64, u64), u64>,
}

/// Turns successive snapshots into window differences.
#[derive(Debug, Default)]
pub struct Deltas {
    prev: SchedSnapshot,
}

impl Deltas {
    /// The window since the previous call. An entry new since then counts
    /// from zero: the kernel created it at that cgroup's first event.
    pub fn window(&mut self, cur: SchedSnapshot) -> SchedWindow {
        let mut w = SchedWindow::default();
        for (id, t) in &cur.cgroups {
            let d = RunQueueWindow::between(self.prev.cgroups.get(id), t);
            if d != RunQueueWindow::default() {
                w.cgroups.insert(*id, d);
            }
        }
        for (k, v) in &cur.pairs {
            let d = v.wrapping_sub(self.prev.pairs.get(k).copied().unwrap_or(0));
            if d > 0 {
                w.pairs.insert(*k, d);
            }
        }
        self.prev = cur;
        w
    }

    /// Cgroups in the last snapshot, for deciding what to forget.
    pub fn known(&self) -> impl Iterator<Item = u64> + '_ {
        self.prev.cgroups.keys().copied()
    }

    /// Forgets cgroups whose kernel entries were removed.
    pub fn forget(&mut self, gone: &[u64]) {
        self.prev.cgroups.retain(|id, _| !gone.contains(id));
        self.prev.pairs.retain(|(v, c), _| !gone.contains(v) && !gone.contains(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(waits: u64, ns: u64, bucket: usize, n: u32) -> CgroupTotals {
        let mut t = CgroupTotals { wakeup_waits: waits, wakeup_wait_ns: ns, ..Default::default() };
        t.hist[bucket] = n;
        t
    }

    #[test]
    fn windows_are_differences_and_new_entries_count_from_zero() {
        let mut d = Deltas::default();
        let mut s = SchedSnapshot::default();
        s.cgroups.insert(7, totals(10, 5_000, 3, 10));
        s.pairs.insert((7, 9), 4_000);
        let w = d.window(s.clone());
        assert_eq!(w.cgroups[&7].wakeup_waits, 10);
        assert_eq!(w.pairs[&(7, 9)], 4_000);

        s.cgroups.insert(7, totals(15, 8_000, 3, 15));
        s.pairs.insert((7, 9), 4_500);
        s.pairs.insert((7, 0), 100);
        let w = d.window(s.clone());
        assert_eq!((w.cgroups[&7].wakeup_waits, w.cgroups[&7].wakeup_wait_ns, w.cgroups[&7].hist[3]), (5, 3_000, 5));
        assert_eq!((w.pairs[&(7, 9)], w.pairs[&(7, 0)]), (500, 100));

        let w = d.window(s);
        assert!(w.cgroups.is_empty() && w.pairs.is_empty(), "no activity, no entries: {w:?}");
    }

    #[test]
    fn histogram_counts_wrap_like_the_kernel() {
        let mut d = Deltas::default();
        let mut s = SchedSnapshot::default();
        s.cgroups.insert(1, totals(0, 0, 0, u32::MAX - 1));
        d.window(s.clone());
        s.cgroups.insert(1, totals(0, 0, 0, 3));
        assert_eq!(d.window(s).cgroups[&1].hist[0], 5);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut w = RunQueueWindow::default();
        assert_eq!(w.quantile_ns(0.99), 0);
        w.hist[0] = 98; // < 1024 ns
        w.hist[10] = 2; // [2^19, 2^20) ns
        assert_eq!(w.quantile_ns(0.5), 1024);
        assert_eq!(w.quantile_ns(0.98), 1024);
        assert_eq!(w.quantile_ns(0.99), 1 << 20);
        w.hist[RUNQ_BUCKETS - 1] = 1000;
        assert_eq!(w.quantile_ns(0.99), 1 << 32, "the open bucket reports its lower bound");
        let p = w.to_pb();
        assert_eq!(p.buckets.len(), RUNQ_BUCKETS);
        let mut short = RunQueueWindow::default();
        short.hist[2] = 1;
        assert_eq!(short.to_pb().buckets, vec![0, 0, 1], "trailing empty buckets are omitted");
    }

    #[test]
    fn forgetting_drops_both_sides_of_pairs() {
        let mut d = Deltas::default();
        let mut s = SchedSnapshot::default();
        s.cgroups.insert(1, totals(1, 1, 0, 1));
        s.pairs.insert((1, 2), 5);
        s.pairs.insert((3, 1), 5);
        s.pairs.insert((3, 2), 5);
        d.window(s);
        d.forget(&[1]);
        assert_eq!(d.known().count(), 0);
        assert_eq!(d.prev.pairs.len(), 1);
    }
}

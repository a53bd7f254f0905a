//! Per-window deltas of the kernel's cumulative counters.

/// A cumulative counter and how much it grew during the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub total: u64,
    pub delta: u64,
}

/// The window's growth of a counter from its previous and current readings.
///
/// - `cur` None: the counter is absent now, so there is nothing to report (an
///   absent counter is not a zero one).
/// - `prev` None: the first window for this cgroup (new cgroup, agent
///   restart, or the file just appeared). The total may have accumulated over
///   days before the agent looked, so charging it all to this window would
///   show a spike that never happened; the delta is 0 and the next window is
///   exact.
/// - `cur < prev`: the counter went backwards, which the kernel only does when
///   the cgroup was removed and recreated under the same path (or the source
///   of the value changed). The new cgroup did not exist at the previous
///   reading, so everything it counted happened within this window: delta =
///   `cur`.
pub fn counter(prev: Option<u64>, cur: Option<u64>) -> Option<Counter> {
    let total = cur?;
    let delta = match prev {
        None => 0,
        Some(p) if total < p => total,
        Some(p) => total - p,
    };
    Some(Counter { total, delta })
}

/// The fraction of a window (in nanoseconds) covered by `delta_usec`
/// microseconds, e.g. stall time or throttled time, in [0, 1]. Clamped
/// because the kernel's counters and the agent's window clock are not sampled
/// at the same instant, so a fully stalled window can read slightly above 1.
pub fn share(delta_usec: u64, window_ns: u64) -> f64 {
    if window_ns == 0 {
        return 0.0;
    }
    // f64 rather than u64 arithmetic: delta_usec * 1000 can overflow u64.
    (delta_usec as f64 * 1_000.0 / window_ns as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_now_is_absent() {
        assert_eq!(counter(Some(5), None), None);
        assert_eq!(counter(None, None), None);
    }

    #[test]
    fn first_window_has_no_delta() {
        assert_eq!(counter(None, Some(1_000_000)), Some(Counter { total: 1_000_000, delta: 0 }));
    }

    #[test]
    fn growth() {
        assert_eq!(counter(Some(100), Some(150)), Some(Counter { total: 150, delta: 50 }));
        assert_eq!(counter(Some(150), Some(150)), Some(Counter { total: 150, delta: 0 }));
        assert_eq!(counter(Some(0), Some(u64::MAX)), Some(Counter { total: u64::MAX, delta: u64::MAX }));
    }

    #[test]
    fn reset_counts_from_zero() {
        assert_eq!(counter(Some(1_000), Some(30)), Some(Counter { total: 30, delta: 30 }));
        assert_eq!(counter(Some(u64::MAX), Some(0)), Some(Counter { total: 0, delta: 0 }));
    }

    #[test]
    fn shares() {
        assert_eq!(share(0, 0), 0.0);
        assert_eq!(share(500, 0), 0.0);
        assert_eq!(share(0, 10_000_000_000), 0.0);
        assert!((share(2_500_000, 10_000_000_000) - 0.25).abs() < 1e-12);
        assert_eq!(share(10_000_000, 10_000_000_000), 1.0);
        assert_eq!(share(10_000_100, 10_000_000_000), 1.0);
        assert_eq!(share(u64::MAX, 1), 1.0);
        assert!(share(1, u64::MAX) >= 0.0);
    }
}

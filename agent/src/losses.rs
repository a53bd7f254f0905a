//! Cumulative loss and error counters turned into per-window reports, so every
//! drop point reaches the stream with its total and its increase.

use std::collections::BTreeMap;

use podlens_proto::v1 as pb;

/// Remembers the previous totals to compute deltas.
#[derive(Debug, Default)]
pub struct LossTracker {
    previous: BTreeMap<(String, String), u64>,
}

impl LossTracker {
    /// Builds the report for `totals` (source, reason, cumulative total).
    /// A counter that went backwards (a reset) reports its whole total as delta.
    pub fn report(&mut self, totals: impl IntoIterator<Item = (&'static str, &'static str, u64)>) -> pb::LossReport {
        let mut counters = Vec::new();
        for (source, reason, total) in totals {
            let key = (source.to_string(), reason.to_string());
            let prev = self.previous.insert(key, total).unwrap_or(0);
            let delta = if total >= prev { total - prev } else { total };
            counters.push(pb::LossCounter { source: source.into(), reason: reason.into(), total, delta });
        }
        pb::LossReport { counters }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_between_reports() {
        let mut t = LossTracker::default();
        let r = t.report([("kernel", "truncated", 5), ("ringbuf", "decode_error", 0)]);
        assert_eq!(r.counters[0].delta, 5);
        assert_eq!(r.counters[1].delta, 0);
        let r = t.report([("kernel", "truncated", 8), ("ringbuf", "decode_error", 0)]);
        assert_eq!((r.counters[0].total, r.counters[0].delta), (8, 3));
        let r = t.report([("kernel", "truncated", 2)]);
        assert_eq!(r.counters[0].delta, 2, "a reset counts from zero");
    }
}

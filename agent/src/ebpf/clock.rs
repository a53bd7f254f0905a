//! Converting kernel jiffies (the flow maps' first/last seen) to the monotonic
//! clock. The kernel samples both together in `podlens_clock_sample`; the tick
//! length comes from two samples apart in time, snapped to the usual CONFIG_HZ
//! values. Conversions are exact to one tick (1-10 ms).

use podlens_agent_ebpf::ClockSample;

/// Tick lengths of CONFIG_HZ = 1000, 300, 250 and 100.
const KNOWN_TICKS_NS: [u64; 4] = [1_000_000, 3_333_333, 4_000_000, 10_000_000];
/// Used until two samples are far enough apart: the most common server HZ (250).
const DEFAULT_TICK_NS: u64 = 4_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickClock {
    reference: ClockSample,
    tick_ns: u64,
}

impl TickClock {
    /// A clock anchored at `latest`, with the tick length measured between
    /// `earliest` and `latest` (or the default when they are too close).
    pub fn calibrate(earliest: ClockSample, latest: ClockSample) -> Self {
        Self { reference: latest, tick_ns: tick_between(earliest, latest).unwrap_or(DEFAULT_TICK_NS) }
    }

    #[cfg(test)]
    fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// Monotonic ns of a jiffies value; 0 stays 0 ("never").
    pub fn mono_ns(&self, jiffies: u64) -> u64 {
        if jiffies == 0 {
            return 0;
        }
        let r = self.reference;
        if jiffies >= r.jiffies {
            r.mono_ns.saturating_add((jiffies - r.jiffies).saturating_mul(self.tick_ns))
        } else {
            r.mono_ns.saturating_sub((r.jiffies - jiffies).saturating_mul(self.tick_ns))
        }
    }
}

/// The tick length between two samples: a known HZ when within 10% of one.
fn tick_between(a: ClockSample, b: ClockSample) -> Option<u64> {
    let ticks = b.jiffies.checked_sub(a.jiffies)?;
    let ns = b.mono_ns.checked_sub(a.mono_ns)?;
    // Below 20 ticks, the +-1 tick of each sample is more than 10%.
    if ticks < 20 {
        return None;
    }
    let raw = ns / ticks;
    Some(KNOWN_TICKS_NS.into_iter().find(|k| raw.abs_diff(*k) * 10 <= *k).unwrap_or(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(jiffies: u64, mono_ns: u64) -> ClockSample {
        ClockSample { jiffies, mono_ns }
    }

    #[test]
    fn hz_is_measured_and_snapped() {
        // 250 Hz, 5 s apart, samples taken mid-tick
        let c = TickClock::calibrate(s(1000, 4_001_000_000 + 1_500_000), s(2250, 9_001_000_000 + 300_000));
        assert_eq!(c.tick_ns(), 4_000_000);
        let c = TickClock::calibrate(s(10, 10_000_000), s(1010, 1_010_400_000));
        assert_eq!(c.tick_ns(), 1_000_000);
        let c = TickClock::calibrate(s(5, 50_000_000), s(105, 1_050_000_000));
        assert_eq!(c.tick_ns(), 10_000_000);
        // an odd HZ is kept as measured
        let c = TickClock::calibrate(s(1, 0), s(601, 1_000_000_000));
        assert_eq!(c.tick_ns(), 1_666_666);
    }

    #[test]
    fn too_close_or_backwards_uses_the_default() {
        assert_eq!(TickClock::calibrate(s(100, 1), s(105, 20_000_001)).tick_ns(), DEFAULT_TICK_NS);
        assert_eq!(TickClock::calibrate(s(200, 1), s(100, 2)).tick_ns(), DEFAULT_TICK_NS);
    }

    #[test]
    fn conversion_around_the_reference() {
        let c = TickClock::calibrate(s(1, 0), s(1001, 4_000_000_000));
        assert_eq!(c.mono_ns(1001), 4_000_000_000);
        assert_eq!(c.mono_ns(1000), 3_996_000_000);
        assert_eq!(c.mono_ns(1002), 4_004_000_000);
        assert_eq!(c.mono_ns(0), 0, "zero means never seen");
        assert_eq!(c.mono_ns(1), 0, "clamped, never negative");
    }
}

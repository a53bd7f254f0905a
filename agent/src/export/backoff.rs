//! Reconnect delays: exponential (x1.6 from 1 s, at most 30 s) with +-20 %
//! jitter, so a collector restart is not met by every agent at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Self { next: initial, initial, max, rng: seed | 1 }
    }

    /// Back to the initial delay (after a successful exchange).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.mul_f64(1.6).min(self.max);
        // splitmix64: enough randomness for jitter, no dependency
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        base.mul_f64(0.8 + 0.4 * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_1_6_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut base = 1.0f64;
        for _ in 0..20 {
            let d = b.delay().as_secs_f64();
            assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "{d} vs {base}");
            base = (base * 1.6).min(30.0);
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn jitter_spreads() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let ds: Vec<_> = (0..20).map(|_| b.delay()).collect();
        assert!(ds.iter().any(|d| *d != ds[0]), "delays vary");
    }
}

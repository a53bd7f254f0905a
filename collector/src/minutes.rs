//! One-minute buckets kept for a bounded number of minutes: the time axis of
//! the top-talker and per-workload views.

use std::collections::VecDeque;

/// The length of a bucket.
pub const BUCKET_NS: u64 = 60_000_000_000;

pub struct Minutes<T> {
    /// (start of the minute in Unix ns, its contents), oldest first.
    buckets: VecDeque<(u64, T)>,
    retention: usize,
}

impl<T: Default> Minutes<T> {
    /// Keeps the last `retention_minutes` minutes that saw data (at least one).
    pub fn new(retention_minutes: usize) -> Self {
        Self { buckets: VecDeque::new(), retention: retention_minutes.max(1) }
    }

    /// The bucket of the minute holding `now` (Unix ns). A new minute opens a
    /// bucket and forgets the oldest beyond retention; a `now` older than the
    /// newest bucket lands in the newest (receive times only move forward,
    /// except when the clock is stepped back).
    pub fn current(&mut self, now: u64) -> &mut T {
        let start = now - now % BUCKET_NS;
        if self.buckets.back().is_none_or(|(s, _)| *s < start) {
            self.buckets.push_back((start, T::default()));
            while self.buckets.len() > self.retention {
                self.buckets.pop_front();
            }
        }
        match self.buckets.back_mut() {
            Some((_, b)) => b,
            None => unreachable!("a bucket was pushed above"),
        }
    }
}

impl<T> Minutes<T> {
    /// The buckets whose minute ends after `since` (Unix ns), oldest first.
    pub fn since(&self, since: u64) -> impl Iterator<Item = &T> {
        self.buckets.iter().filter(move |(s, _)| s + BUCKET_NS > since).map(|(_, b)| b)
    }

    /// The start of the oldest minute still kept (0 when none).
    pub fn oldest(&self) -> u64 {
        self.buckets.front().map_or(0, |(s, _)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = BUCKET_NS;

    #[test]
    fn a_minute_opens_one_bucket_and_retention_forgets_the_oldest() {
        let mut m: Minutes<Vec<u64>> = Minutes::new(2);
        m.current(10 * MIN + 5).push(1);
        m.current(10 * MIN + 59).push(2);
        m.current(11 * MIN).push(3);
        assert_eq!(m.since(0).cloned().collect::<Vec<_>>(), vec![vec![1, 2], vec![3]]);
        m.current(13 * MIN + 1).push(4);
        assert_eq!(m.since(0).cloned().collect::<Vec<_>>(), vec![vec![3], vec![4]]);
        assert_eq!(m.oldest(), 11 * MIN);
    }

    #[test]
    fn since_keeps_the_minutes_that_end_after_it() {
        let mut m: Minutes<u64> = Minutes::new(5);
        *m.current(MIN) += 1;
        *m.current(2 * MIN) += 2;
        assert_eq!(m.since(2 * MIN).copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(m.since(2 * MIN - 1).copied().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_clock_stepped_back_adds_to_the_newest_minute() {
        let mut m: Minutes<u64> = Minutes::new(5);
        *m.current(5 * MIN) += 1;
        *m.current(3 * MIN) += 1;
        assert_eq!(m.since(0).copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(Minutes::<u64>::new(1).oldest(), 0);
    }
}

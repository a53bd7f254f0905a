//! Readiness latches: each condition is released once and stays released,
//! so a pod turns ready when all of them have been met and a later collector
//! outage does not take every agent of the cluster out of its Service at
//! once (the stream state itself is a metric).

use std::sync::atomic::{AtomicBool, Ordering};

/// What must have happened before the agent is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latch {
    /// Every program the configuration asks for is loaded and attached.
    ProgramsAttached,
    /// Pod metadata is loaded (inventory file read, or the API listed).
    IdentitySynced,
    /// The collector stream opened once (only when --collector is set).
    StreamConnected,
}

impl Latch {
    pub const ALL: [Latch; 3] = [Latch::ProgramsAttached, Latch::IdentitySynced, Latch::StreamConnected];

    pub fn name(self) -> &'static str {
        match self {
            Latch::ProgramsAttached => "programs_attached",
            Latch::IdentitySynced => "identity_synced",
            Latch::StreamConnected => "stream_connected",
        }
    }
}

#[derive(Debug, Default)]
pub struct Readiness {
    released: [AtomicBool; 3],
}

impl Readiness {
    pub fn release(&self, latch: Latch) {
        if !self.released[latch as usize].swap(true, Ordering::AcqRel) {
            tracing::info!(latch = latch.name(), "readiness latch released");
        }
    }

    pub fn is_released(&self, latch: Latch) -> bool {
        self.released[latch as usize].load(Ordering::Acquire)
    }

    /// The latches still holding readiness back.
    pub fn pending(&self) -> Vec<Latch> {
        Latch::ALL.into_iter().filter(|l| !self.is_released(*l)).collect()
    }

    pub fn is_ready(&self) -> bool {
        self.pending().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_latch_is_released_and_stays_ready() {
        let r = Readiness::default();
        assert_eq!(r.pending(), Latch::ALL);
        r.release(Latch::IdentitySynced);
        r.release(Latch::ProgramsAttached);
        assert!(!r.is_ready());
        assert_eq!(r.pending(), [Latch::StreamConnected]);
        r.release(Latch::StreamConnected);
        r.release(Latch::StreamConnected);
        assert!(r.is_ready());
    }
}

//! Which end opened each TCP connection, remembered across windows.
//!
//! The kernel marks a direction once a SYN without ACK went that way, but
//! only in the window that saw it: the flow map is drained every window, so
//! a connection's later windows carry no SYN. The collector needs the
//! direction in every window (client egress versus server ingress, and a
//! server on a high port must not be taken for a client), so the agent keeps
//! it per flow key until the connection closes or goes quiet.
//!
//! Choices:
//! - Opened in both directions in one window (a simultaneous open, or a key
//!   reused by two connections within one window) is unknown, and forgets
//!   what was known: either end could be the client.
//! - A FIN in both directions or any RST ends the connection: its entry is
//!   dropped after this window's record, so a reused port tuple is not given
//!   the old direction.
//! - A connection silent for [`IDLE_WINDOWS`] windows is forgotten (keepalive
//!   probes every 2 hours are rarer than that; such a connection becomes
//!   unknown, not wrong).
//! - At most `capacity` connections; a new one when full is not remembered
//!   and counted in [`Initiators::untracked`] (its first window still carries
//!   the direction).

use std::collections::HashMap;

use podlens_agent_ebpf::{FlowKey, DIR_EGRESS, DIR_INGRESS};
use podlens_proto::v1::Initiator;

use super::FlowAgg;

/// Windows without a packet after which a connection's direction is forgotten.
pub const IDLE_WINDOWS: u64 = 360;
/// Default bound: ~100 bytes each, so 12 MiB when full.
pub const DEFAULT_CAPACITY: usize = 131_072;

const IPPROTO_TCP: u8 = 6;

#[derive(Debug)]
struct Entry {
    initiator: Initiator,
    last_window: u64,
}

#[derive(Debug)]
pub struct Initiators {
    known: HashMap<FlowKey, Entry>,
    capacity: usize,
    window: u64,
    /// Connections whose opening was seen but not remembered (the table was full).
    pub untracked: u64,
}

impl Default for Initiators {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Initiators {
    pub fn new(capacity: usize) -> Self {
        Initiators { known: HashMap::new(), capacity, window: 0, untracked: 0 }
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The initiator of `key` given this window's counts; updates the memory.
    pub fn resolve(&mut self, key: &FlowKey, agg: &FlowAgg) -> Initiator {
        if key.protocol != IPPROTO_TCP {
            return Initiator::Unknown;
        }
        let out = &agg.dir[DIR_EGRESS];
        let inn = &agg.dir[DIR_INGRESS];
        let seen = match (out.opened != 0, inn.opened != 0) {
            (true, false) => Some(Initiator::Local),
            (false, true) => Some(Initiator::Remote),
            (true, true) => {
                self.known.remove(key);
                return Initiator::Unknown;
            }
            (false, false) => None,
        };
        let closed = out.rst > 0 || inn.rst > 0 || (out.fin > 0 && inn.fin > 0);
        let initiator = match seen {
            Some(i) => i,
            None => self.known.get(key).map_or(Initiator::Unknown, |e| e.initiator),
        };
        if closed {
            self.known.remove(key);
        } else if initiator != Initiator::Unknown {
            let full = self.known.len() >= self.capacity;
            match self.known.get_mut(key) {
                Some(e) => *e = Entry { initiator, last_window: self.window },
                None if full => self.untracked += 1,
                None => {
                    self.known.insert(*key, Entry { initiator, last_window: self.window });
                }
            }
        }
        initiator
    }

    /// Ends a window: forgets connections idle for [`IDLE_WINDOWS`].
    pub fn end_window(&mut self) {
        let window = self.window;
        self.known.retain(|_, e| window.saturating_sub(e.last_window) < IDLE_WINDOWS);
        self.window += 1;
    }
}

#[cfg(test)]
mod tests {
    use podlens_agent_ebpf::FlowCounts;

    use super::*;

    fn key(port: u16, protocol: u8) -> FlowKey {
        FlowKey { cgroup_id: 1, local_port: port, remote_port: 443, protocol, ..Default::default() }
    }

    /// Counts of one window: `opened`, `fin`, `rst` per direction (egress, ingress).
    fn agg(opened: (u8, u8), fin: (u32, u32), rst: (u32, u32)) -> FlowAgg {
        let c = |opened, fin, rst| FlowCounts { packets: 1, opened, fin, rst, ..Default::default() };
        FlowAgg { dir: [c(opened.0, fin.0, rst.0), c(opened.1, fin.1, rst.1)], ..Default::default() }
    }

    /// A window without packets of that connection.
    fn quiet() -> FlowAgg {
        FlowAgg::default()
    }

    #[test]
    fn the_opening_window_decides_and_later_windows_remember() {
        let mut t = Initiators::default();
        assert_eq!(t.resolve(&key(1, 6), &agg((1, 0), (0, 0), (0, 0))), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &agg((0, 1), (0, 0), (0, 0))), Initiator::Remote);
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &quiet()), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &quiet()), Initiator::Remote);
        assert_eq!(t.resolve(&key(3, 6), &quiet()), Initiator::Unknown, "opened before the agent");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn udp_and_simultaneous_opens_are_unknown() {
        let mut t = Initiators::default();
        assert_eq!(t.resolve(&key(1, 17), &agg((1, 0), (0, 0), (0, 0))), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &agg((1, 0), (0, 0), (0, 0))), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &agg((1, 1), (0, 0), (0, 0))), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &quiet()), Initiator::Unknown, "forgotten");
        assert!(t.is_empty());
    }

    #[test]
    fn a_closed_connection_is_forgotten_after_its_last_record() {
        let mut t = Initiators::default();
        t.resolve(&key(1, 6), &agg((1, 0), (0, 0), (0, 0)));
        t.resolve(&key(2, 6), &agg((0, 1), (0, 0), (0, 0)));
        t.resolve(&key(3, 6), &agg((1, 0), (0, 0), (0, 0)));
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &agg((0, 0), (1, 1), (0, 0))), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &agg((0, 0), (0, 0), (0, 1))), Initiator::Remote);
        // a FIN one way only is a half-close: still open
        assert_eq!(t.resolve(&key(3, 6), &agg((0, 0), (1, 0), (0, 0))), Initiator::Local);
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &quiet()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &quiet()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(3, 6), &quiet()), Initiator::Local);
        // a reused tuple opened the other way gets the new direction
        assert_eq!(t.resolve(&key(1, 6), &agg((0, 1), (0, 0), (0, 0))), Initiator::Remote);
    }

    #[test]
    fn idle_connections_expire_and_activity_keeps_them() {
        let mut t = Initiators::default();
        t.resolve(&key(1, 6), &agg((1, 0), (0, 0), (0, 0)));
        t.resolve(&key(2, 6), &agg((1, 0), (0, 0), (0, 0)));
        // the end of the opening window, then IDLE_WINDOWS - 1 quiet ones
        for _ in 0..IDLE_WINDOWS {
            t.end_window();
            t.resolve(&key(2, 6), &quiet());
        }
        assert_eq!(t.len(), 2, "idle for IDLE_WINDOWS - 1 windows is kept");
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &quiet()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &quiet()), Initiator::Local);
    }

    #[test]
    fn a_full_table_counts_what_it_cannot_remember() {
        let mut t = Initiators::new(2);
        for port in 1..=3 {
            assert_eq!(t.resolve(&key(port, 6), &agg((1, 0), (0, 0), (0, 0))), Initiator::Local, "its own window");
        }
        assert_eq!((t.len(), t.untracked), (2, 1));
        assert_eq!(t.resolve(&key(3, 6), &quiet()), Initiator::Unknown);
        // known ones still update when full
        assert_eq!(t.resolve(&key(1, 6), &quiet()), Initiator::Local);
        assert_eq!(t.untracked, 1);
    }
}

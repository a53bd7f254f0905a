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
//! - A FIN each way (possibly in different windows) or any RST closes the
//!   connection; its entry lives one more window, for the last ACK or RST
//!   that lands in the next window, and is dropped then, so a reused port
//!   tuple is not given the old direction.
//! - An opening never answered (the opener's direction never carried an ACK:
//!   a SYN flood, a refused connection) is forgotten after one more window,
//!   so unanswered SYNs cannot fill the table.
//! - A connection silent for [`DEFAULT_IDLE`] (by the window length given to
//!   [`Initiators::set_idle`]) is forgotten; it becomes unknown, not wrong.
//! - At most `capacity` connections; a new one when full is not remembered
//!   and counted in [`Initiators::untracked`] (its first window still carries
//!   the direction).

use std::{collections::HashMap, time::Duration};

use podlens_agent_ebpf::{FlowKey, DIR_EGRESS, DIR_INGRESS};
use podlens_proto::v1::Initiator;

use super::FlowAgg;

/// How long a connection without packets keeps its direction.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
/// Default bound: about 130 bytes per entry in the hash table, so ~17 MiB when full.
pub const DEFAULT_CAPACITY: usize = 131_072;

const IPPROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;

#[derive(Debug)]
struct Entry {
    initiator: Initiator,
    last_window: u64,
    /// The opener's direction carried an ACK: the handshake went on.
    answered: bool,
    fin: [bool; 2],
    /// The window in which the connection closed.
    closed: Option<u64>,
}

#[derive(Debug)]
pub struct Initiators {
    known: HashMap<FlowKey, Entry>,
    capacity: usize,
    window: u64,
    idle_windows: u64,
    /// Connections whose opening was seen but not remembered (the table was full).
    pub untracked: u64,
}

impl Default for Initiators {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Initiators {
    /// Idle connections are forgotten after 360 windows until
    /// [`Initiators::set_idle`] says how long a window is.
    pub fn new(capacity: usize) -> Self {
        Initiators { known: HashMap::new(), capacity, window: 0, idle_windows: 360, untracked: 0 }
    }

    /// Forget idle connections after `idle`, with windows of `interval`.
    pub fn set_idle(&mut self, idle: Duration, interval: Duration) {
        let windows = idle.as_secs_f64() / interval.as_secs_f64().max(1e-3);
        self.idle_windows = (windows.ceil() as u64).max(2);
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
        let window = self.window;
        let fin = [out.fin > 0, inn.fin > 0];
        let rst = out.rst > 0 || inn.rst > 0;
        if let Some(e) = self.known.get_mut(key) {
            if let Some(i) = seen {
                // a new opening of the same tuple
                *e = Entry { initiator: i, last_window: window, answered: false, fin: [false; 2], closed: None };
            }
            e.last_window = window;
            e.answered |= opener_acked(e.initiator, agg);
            e.fin = [e.fin[0] || fin[0], e.fin[1] || fin[1]];
            if e.closed.is_none() && (rst || e.fin == [true, true]) {
                e.closed = Some(window);
            }
            return e.initiator;
        }
        let Some(initiator) = seen else { return Initiator::Unknown };
        if rst || fin == [true, true] {
            // opened and closed within this window: nothing later to name
            return initiator;
        }
        if self.known.len() >= self.capacity {
            self.untracked += 1;
            return initiator;
        }
        let answered = opener_acked(initiator, agg);
        self.known.insert(*key, Entry { initiator, last_window: window, answered, fin, closed: None });
        initiator
    }

    /// Ends a window: forgets connections closed before it, openings never
    /// answered, and connections idle for too long.
    pub fn end_window(&mut self) {
        let (window, idle) = (self.window, self.idle_windows);
        self.known.retain(|_, e| {
            let closed_before = e.closed.is_some_and(|c| c < window);
            let unanswered = !e.answered && window > e.last_window;
            !closed_before && !unanswered && window.saturating_sub(e.last_window) < idle
        });
        self.window += 1;
    }
}

fn opener_acked(initiator: Initiator, agg: &FlowAgg) -> bool {
    let dir = match initiator {
        Initiator::Local => DIR_EGRESS,
        Initiator::Remote => DIR_INGRESS,
        Initiator::Unknown => return false,
    };
    agg.dir[dir].tcp_flags & TCP_ACK != 0
}

#[cfg(test)]
mod tests {
    use podlens_agent_ebpf::FlowCounts;

    use super::*;

    const ACK: u8 = 0x10;

    fn key(port: u16, protocol: u8) -> FlowKey {
        FlowKey { cgroup_id: 1, local_port: port, remote_port: 443, protocol, ..Default::default() }
    }

    /// Counts of one window per direction (egress, ingress): `opened`, flags, `fin`, `rst`.
    fn agg(opened: (u8, u8), flags: (u8, u8), fin: (u32, u32), rst: (u32, u32)) -> FlowAgg {
        let c =
            |opened, tcp_flags, fin, rst| FlowCounts { packets: 1, opened, tcp_flags, fin, rst, ..Default::default() };
        FlowAgg { dir: [c(opened.0, flags.0, fin.0, rst.0), c(opened.1, flags.1, fin.1, rst.1)], ..Default::default() }
    }

    /// A window with a whole handshake opened locally (or remotely).
    fn opened_local() -> FlowAgg {
        agg((1, 0), (ACK, ACK), (0, 0), (0, 0))
    }
    fn opened_remote() -> FlowAgg {
        agg((0, 1), (ACK, ACK), (0, 0), (0, 0))
    }
    fn data() -> FlowAgg {
        agg((0, 0), (ACK, ACK), (0, 0), (0, 0))
    }
    fn quiet() -> FlowAgg {
        FlowAgg::default()
    }

    #[test]
    fn the_opening_window_decides_and_later_windows_remember() {
        let mut t = Initiators::default();
        assert_eq!(t.resolve(&key(1, 6), &opened_local()), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &opened_remote()), Initiator::Remote);
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &quiet()), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &data()), Initiator::Remote);
        assert_eq!(t.resolve(&key(3, 6), &data()), Initiator::Unknown, "opened before the agent");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn udp_and_simultaneous_opens_are_unknown() {
        let mut t = Initiators::default();
        assert_eq!(t.resolve(&key(1, 17), &opened_local()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &opened_local()), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &agg((1, 1), (ACK, ACK), (0, 0), (0, 0))), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &data()), Initiator::Unknown, "forgotten");
        assert!(t.is_empty());
    }

    #[test]
    fn a_closed_connection_keeps_its_direction_one_more_window_then_is_forgotten() {
        let mut t = Initiators::default();
        for port in 1..=4 {
            t.resolve(&key(port, 6), &opened_local());
        }
        t.end_window();
        // 1: FIN both ways; 2: a RST; 3: one FIN now, the other next window; 4: a half-close only
        t.resolve(&key(1, 6), &agg((0, 0), (ACK, ACK), (1, 1), (0, 0)));
        t.resolve(&key(2, 6), &agg((0, 0), (0, 0), (0, 1), (0, 1)));
        t.resolve(&key(3, 6), &agg((0, 0), (ACK, ACK), (1, 0), (0, 0)));
        t.resolve(&key(4, 6), &agg((0, 0), (ACK, ACK), (0, 1), (0, 0)));
        t.end_window();
        // the last ACK of 1 and a trailing RST of 2 land in the next window: still named
        assert_eq!(t.resolve(&key(1, 6), &data()), Initiator::Local);
        assert_eq!(t.resolve(&key(2, 6), &agg((0, 0), (0, 0), (0, 0), (0, 1))), Initiator::Local);
        assert_eq!(t.resolve(&key(3, 6), &agg((0, 0), (ACK, ACK), (0, 1), (0, 0))), Initiator::Local);
        assert_eq!(t.resolve(&key(4, 6), &data()), Initiator::Local);
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &data()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &data()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(3, 6), &data()), Initiator::Local, "closed one window ago: kept once more");
        assert_eq!(t.resolve(&key(4, 6), &data()), Initiator::Local, "a half-close is still open");
        t.end_window();
        assert_eq!(t.resolve(&key(3, 6), &data()), Initiator::Unknown, "FIN each way, in two windows");
        // a reused tuple opened the other way gets the new direction
        assert_eq!(t.resolve(&key(1, 6), &opened_remote()), Initiator::Remote);
    }

    #[test]
    fn unanswered_openings_do_not_fill_the_table() {
        let mut t = Initiators::default();
        // SYNs in, SYN-ACKs out, never an ACK from the opener
        for port in 1..=100 {
            assert_eq!(t.resolve(&key(port, 6), &agg((0, 1), (ACK, 0), (0, 0), (0, 0))), Initiator::Remote);
        }
        t.end_window();
        assert_eq!(t.len(), 100, "answered in the next window is still possible");
        t.end_window();
        assert!(t.is_empty(), "forgotten after a window without an answer");
    }

    #[test]
    fn idle_connections_expire_by_time_and_activity_keeps_them() {
        let mut t = Initiators::default();
        t.set_idle(Duration::from_secs(60), Duration::from_secs(5));
        t.resolve(&key(1, 6), &opened_local());
        t.resolve(&key(2, 6), &opened_local());
        // the end of the opening window, then 11 quiet ones: 60 s at 5 s windows
        for _ in 0..12 {
            t.end_window();
            t.resolve(&key(2, 6), &data());
        }
        assert_eq!(t.len(), 2, "idle for less than 60 s is kept");
        t.end_window();
        assert_eq!(t.resolve(&key(1, 6), &quiet()), Initiator::Unknown);
        assert_eq!(t.resolve(&key(2, 6), &quiet()), Initiator::Local);
    }

    #[test]
    fn a_full_table_counts_what_it_cannot_remember() {
        let mut t = Initiators::new(2);
        for port in 1..=3 {
            assert_eq!(t.resolve(&key(port, 6), &opened_local()), Initiator::Local, "its own window");
        }
        assert_eq!((t.len(), t.untracked), (2, 1));
        assert_eq!(t.resolve(&key(3, 6), &data()), Initiator::Unknown);
        // known ones still update when full
        assert_eq!(t.resolve(&key(1, 6), &data()), Initiator::Local);
        assert_eq!(t.untracked, 1);
    }
}

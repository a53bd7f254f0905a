//! podlens kernel programs and the Rust mirror of the structs they share with
//! the agent.
//!
//! The C header `include/podlens.h` is the source of truth. Every struct here is
//! `#[repr(C)]` and checked field by field against the BTF that clang emitted
//! for the compiled object (see `layout_tests`), so a drift between the two is a
//! test failure, not a silently corrupted record.

#![deny(missing_docs)]

#[cfg(test)]
mod btf;
pub mod sched;

/// The compiled `podlens.bpf.c` object: flow accounting (cgroup_skb) and cgroup
/// lifecycle tracking (tp_btf).
pub fn podlens_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podlens.bpf.o"))
}

/// cgroup_skb programs that only return "allow" (`baseline_egress`,
/// `baseline_ingress`): the baseline the benchmarks subtract.
pub fn baseline_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline.bpf.o"))
}

/// Program names in the object, as aya finds them.
pub mod programs {
    /// cgroup_skb/egress flow accounting.
    pub const FLOW_EGRESS: &str = "podlens_flow_egress";
    /// cgroup_skb/ingress flow accounting.
    pub const FLOW_INGRESS: &str = "podlens_flow_ingress";
    /// tp_btf/cgroup_mkdir.
    pub const CGROUP_MKDIR: &str = "podlens_cgroup_mkdir";
    /// tp_btf/cgroup_rmdir.
    pub const CGROUP_RMDIR: &str = "podlens_cgroup_rmdir";
    /// Never attached: test-run to sample jiffies and the monotonic clock.
    pub const CLOCK_SAMPLE: &str = "podlens_clock_sample";
}

/// Map names in the object.
pub mod maps {
    /// The two flow maps (HASH of [`crate::FlowKey`] -> [`crate::FlowValue`]).
    pub const FLOWS: [&str; 2] = ["flows_0", "flows_1"];
    /// ARRAY with one u32: which flow map the programs write.
    pub const FLOW_ACTIVE: &str = "flow_active";
    /// ARRAY_OF_MAPS no program reads; updating it waits for an RCU grace period.
    pub const DRAIN_BARRIER: &str = "drain_barrier";
    /// ARRAY of one [`crate::ClockSample`].
    pub const CLOCK_SAMPLES: &str = "clock_samples";
    /// PERCPU_ARRAY of u64 loss/error counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "counters";
    /// Ring buffer of rare events ([`crate::EventKind`]).
    pub const EVENTS: &str = "events";
    /// Ring buffer of [`crate::DnsEvent`]s.
    pub const DNS_EVENTS: &str = "dns_events";
}

/// Global variables the agent sets at load time.
pub mod globals {
    /// `__u16[PL_DNS_PORTS]`: ports treated as DNS, 0 for an unused slot.
    pub const DNS_PORTS: &str = "pl_dns_ports";
}

/// Default capacity of each flow map (`PL_FLOW_MAP_ENTRIES`).
pub const FLOW_MAP_ENTRIES: u32 = 65536;
/// Number of slots in the counters map (`PL_CTR_SLOTS`).
pub const COUNTER_SLOTS: u32 = 32;
/// Bytes of a cgroup path carried in a cgroup event (`PL_CGROUP_PATH_LEN`).
pub const CGROUP_PATH_LEN: usize = 256;
/// `flow_key.family` for IPv4 (stored as `::ffff:a.b.c.d`).
pub const FAMILY_IPV4: u8 = 4;
/// `flow_key.family` for IPv6.
pub const FAMILY_IPV6: u8 = 6;
/// Slots of `pl_dns_ports` (`PL_DNS_PORTS`).
pub const DNS_PORTS: usize = 4;
/// Payload reserved for a small DNS message (`PL_DNS_SMALL_PAYLOAD`).
pub const DNS_SMALL_PAYLOAD: usize = 256;
/// Most payload copied per DNS packet (`PL_DNS_MAX_PAYLOAD`).
pub const DNS_MAX_PAYLOAD: usize = 1536;
/// Index of the egress direction in `flow_value.dir`.
pub const DIR_EGRESS: usize = 0;
/// Index of the ingress direction in `flow_value.dir`.
pub const DIR_INGRESS: usize = 1;

/// Per-CPU counter slots (`enum pl_counter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// skb->protocol neither IPv4 nor IPv6.
    NonIp = 0,
    /// A header could not be read completely; the packet is not attributed.
    Truncated = 1,
    /// Bad IP version or header length; the packet is not attributed.
    Malformed = 2,
    /// More IPv6 extension headers than the program skips; not attributed.
    Ipv6ExtLimit = 3,
    /// Non-first fragments (recorded with ports 0).
    Fragments = 4,
    /// The active-map index was unreadable; the packet was not recorded.
    NoFlowMap = 5,
    /// A new flow did not fit in the flow map and went out as an overflow event.
    FlowMapFull = 6,
    /// Another insert error; the packet went out as an overflow event.
    FlowUpdateErr = 7,
    /// Overflow events lost because the ring buffer was full: packets.
    OverflowLostPackets = 8,
    /// Overflow events lost because the ring buffer was full: bytes.
    OverflowLostBytes = 9,
    /// Cgroup lifecycle events sent.
    CgroupEvents = 10,
    /// Cgroup lifecycle events lost because the ring buffer was full.
    CgroupEventsLost = 11,
    /// Bytes of truncated, malformed or extension-limited packets.
    MalformedBytes = 12,
    /// Bytes of non-IP packets.
    NonIpBytes = 13,
    /// DNS-port packets whose payload went to the DNS ring.
    DnsMessages = 14,
    /// DNS-port packets lost because the DNS ring was full.
    DnsLost = 15,
    /// DNS-port packets copied only up to [`DNS_MAX_PAYLOAD`] bytes.
    DnsCut = 16,
    /// DNS-port packets lost because their payload could not be read.
    DnsCopyErr = 17,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 18] = [
        Counter::NonIp,
        Counter::Truncated,
        Counter::Malformed,
        Counter::Ipv6ExtLimit,
        Counter::Fragments,
        Counter::NoFlowMap,
        Counter::FlowMapFull,
        Counter::FlowUpdateErr,
        Counter::OverflowLostPackets,
        Counter::OverflowLostBytes,
        Counter::CgroupEvents,
        Counter::CgroupEventsLost,
        Counter::MalformedBytes,
        Counter::NonIpBytes,
        Counter::DnsMessages,
        Counter::DnsLost,
        Counter::DnsCut,
        Counter::DnsCopyErr,
    ];

    /// Whether the counter records data that did not reach a flow record (or
    /// identity events that were lost), as opposed to activity: a full flow
    /// map or an insert error still delivers the packet through the overflow
    /// ring, and fragments and cgroup events are recorded. A DNS message cut
    /// at [`DNS_MAX_PAYLOAD`] still arrives (its header and question first).
    pub fn is_loss(self) -> bool {
        !matches!(
            self,
            Counter::Fragments
                | Counter::CgroupEvents
                | Counter::FlowMapFull
                | Counter::FlowUpdateErr
                | Counter::DnsMessages
                | Counter::DnsCut
        )
    }

    /// The loss report's source for this counter: "kernel" for losses,
    /// "kernel_activity" for the rest.
    pub fn source(self) -> &'static str {
        if self.is_loss() {
            "kernel"
        } else {
            "kernel_activity"
        }
    }

    /// Stable snake_case name, used in metrics and in the stream.
    pub fn name(self) -> &'static str {
        match self {
            Counter::NonIp => "non_ip",
            Counter::Truncated => "truncated",
            Counter::Malformed => "malformed",
            Counter::Ipv6ExtLimit => "ipv6_ext_limit",
            Counter::Fragments => "fragments",
            Counter::NoFlowMap => "no_flow_map",
            Counter::FlowMapFull => "flow_map_full",
            Counter::FlowUpdateErr => "flow_update_err",
            Counter::OverflowLostPackets => "overflow_lost_packets",
            Counter::OverflowLostBytes => "overflow_lost_bytes",
            Counter::CgroupEvents => "cgroup_events",
            Counter::CgroupEventsLost => "cgroup_events_lost",
            Counter::MalformedBytes => "malformed_bytes",
            Counter::NonIpBytes => "non_ip_bytes",
            Counter::DnsMessages => "dns_messages",
            Counter::DnsLost => "dns_lost",
            Counter::DnsCut => "dns_cut",
            Counter::DnsCopyErr => "dns_copy_err",
        }
    }
}

/// Event kinds on the events ring buffer (`enum pl_event_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EventKind {
    /// [`FlowOverflowEvent`].
    FlowOverflow = 1,
    /// [`CgroupEvent`], cgroup created.
    CgroupMkdir = 2,
    /// [`CgroupEvent`], cgroup removed.
    CgroupRmdir = 3,
    /// [`DnsEvent`] (on the DNS ring).
    Dns = 4,
}

impl EventKind {
    /// Maps the raw kind; `None` for a kind this agent does not know.
    pub fn from_raw(kind: u32) -> Option<Self> {
        match kind {
            1 => Some(EventKind::FlowOverflow),
            2 => Some(EventKind::CgroupMkdir),
            3 => Some(EventKind::CgroupRmdir),
            4 => Some(EventKind::Dns),
            _ => None,
        }
    }
}

/// `struct flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// cgroup v2 id of the socket (inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Local address; IPv4 as `::ffff:a.b.c.d`.
    pub local_addr: [u8; 16],
    /// Remote address; IPv4 as `::ffff:a.b.c.d`.
    pub remote_addr: [u8; 16],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// `struct flow_counts`: one direction of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// L3 bytes per wire segment.
    pub bytes: u64,
    /// Wire segments.
    pub packets: u64,
    /// Packets with SYN.
    pub syn: u32,
    /// Packets with FIN.
    pub fin: u32,
    /// Packets with RST.
    pub rst: u32,
    /// OR of the TCP flags seen.
    pub tcp_flags: u8,
    /// 1 once a SYN without ACK went this way: the sender opened the connection.
    pub opened: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// `struct flow_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Indexed by [`DIR_EGRESS`] / [`DIR_INGRESS`].
    pub dir: [FlowCounts; 2],
    /// `bpf_jiffies64()` at the first packet.
    pub first_seen_jiffies: u64,
    /// `bpf_jiffies64()` at the last packet.
    pub last_seen_jiffies: u64,
}

/// `struct clock_sample`: jiffies and CLOCK_MONOTONIC ns read together.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    /// `bpf_jiffies64()`.
    pub jiffies: u64,
    /// `bpf_ktime_get_ns()`.
    pub mono_ns: u64,
}

/// `struct pl_event_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// Raw [`EventKind`].
    pub kind: u32,
    /// Always zero.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the event was produced.
    pub ts_ns: u64,
}

/// `struct flow_overflow_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOverflowEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// The flow that did not fit.
    pub key: FlowKey,
    /// L3 bytes of the packet (GSO-expanded).
    pub bytes: u64,
    /// Wire segments of the packet.
    pub packets: u64,
    /// [`DIR_EGRESS`] or [`DIR_INGRESS`].
    pub direction: u8,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
    /// Always zero.
    pub _pad: [u8; 6],
}

/// `struct cgroup_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Bytes copied into `path` including the NUL.
    pub path_len: u32,
    /// Always zero.
    pub _pad: u32,
    /// Path relative to the cgroup2 root, NUL terminated unless truncated.
    pub path: [u8; CGROUP_PATH_LEN],
}

/// `struct dns_event` without its payload, which follows it in the ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsEvent {
    /// Common header; `ts_ns` is when the program saw the packet.
    pub hdr: EventHeader,
    /// The flow, oriented like flow records (local = the socket's end).
    pub key: FlowKey,
    /// TCP: sequence number of the first payload byte; UDP: 0.
    pub tcp_seq: u32,
    /// Transport payload bytes in the packet.
    pub payload_len: u32,
    /// Bytes of the payload that follow this header.
    pub captured: u16,
    /// [`DIR_EGRESS`] or [`DIR_INGRESS`].
    pub direction: u8,
    /// Always zero.
    pub _pad: [u8; 5],
}

/// `layout.bpf.c`: one global of each shared struct, so its BTF has them all,
/// laid out by the same clang invocation as the real programs.
#[cfg(test)]
fn layout_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/layout.bpf.o"))
}

// SAFETY: all of these are plain `#[repr(C)]` data with no padding the kernel
// leaves uninitialised (explicit `_pad` fields) and any bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowCounts {}
unsafe impl aya::Pod for FlowValue {}
unsafe impl aya::Pod for ClockSample {}

#[cfg(test)]
mod layout_tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::btf::{BtfLayout, StructLayout};

    /// `layout.bpf.c` defines one global of each shared struct, so its BTF has
    /// them all, laid out by the same clang invocation as the real programs.
    fn layout_obj() -> &'static [u8] {
        crate::layout_object()
    }

    fn layout(name: &str) -> StructLayout {
        BtfLayout::from_elf(layout_obj())
            .expect("the compiled object carries BTF")
            .struct_layout(name)
            .unwrap_or_else(|e| panic!("struct {name} in BTF: {e}"))
    }

    macro_rules! assert_layout {
        ($c_name:literal, $ty:ty, [$($field:ident),+ $(,)?]) => {{
            let l = layout($c_name);
            assert_eq!(l.size, size_of::<$ty>(), "sizeof(struct {})", $c_name);
            let mut checked = Vec::new();
            $(
                assert_eq!(
                    l.offset_of(stringify!($field)),
                    Some(offset_of!($ty, $field)),
                    "offsetof(struct {}, {})", $c_name, stringify!($field)
                );
                checked.push(stringify!($field));
            )+
            let mut c_fields: Vec<&str> = l.members.iter().map(|m| m.name.as_str()).collect();
            c_fields.sort_unstable();
            checked.sort_unstable();
            assert_eq!(c_fields, checked, "fields of struct {}", $c_name);
        }};
    }

    #[test]
    fn flow_key_matches_c() {
        assert_layout!(
            "flow_key",
            FlowKey,
            [cgroup_id, local_addr, remote_addr, local_port, remote_port, protocol, family, _pad]
        );
    }

    #[test]
    fn flow_counts_matches_c() {
        assert_layout!("flow_counts", FlowCounts, [bytes, packets, syn, fin, rst, tcp_flags, opened, _pad]);
    }

    #[test]
    fn flow_value_matches_c() {
        assert_layout!("flow_value", FlowValue, [dir, first_seen_jiffies, last_seen_jiffies]);
    }

    #[test]
    fn clock_sample_matches_c() {
        assert_layout!("clock_sample", ClockSample, [jiffies, mono_ns]);
    }

    #[test]
    fn event_header_matches_c() {
        assert_layout!("pl_event_header", EventHeader, [kind, _pad, ts_ns]);
    }

    #[test]
    fn flow_overflow_event_matches_c() {
        assert_layout!(
            "flow_overflow_event",
            FlowOverflowEvent,
            [hdr, key, bytes, packets, direction, tcp_flags, _pad]
        );
    }

    #[test]
    fn cgroup_event_matches_c() {
        assert_layout!("cgroup_event", CgroupEvent, [hdr, cgroup_id, path_len, _pad, path]);
    }

    #[test]
    fn dns_event_matches_c() {
        let l = layout("dns_event");
        assert_eq!(l.size, size_of::<DnsEvent>(), "sizeof(struct dns_event)");
        assert_eq!(l.offset_of("payload"), Some(size_of::<DnsEvent>()), "payload follows the header");
        for (field, offset) in [
            ("hdr", offset_of!(DnsEvent, hdr)),
            ("key", offset_of!(DnsEvent, key)),
            ("tcp_seq", offset_of!(DnsEvent, tcp_seq)),
            ("payload_len", offset_of!(DnsEvent, payload_len)),
            ("captured", offset_of!(DnsEvent, captured)),
            ("direction", offset_of!(DnsEvent, direction)),
            ("_pad", offset_of!(DnsEvent, _pad)),
        ] {
            assert_eq!(l.offset_of(field), Some(offset), "offsetof(struct dns_event, {field})");
        }
        assert_eq!(l.members.len(), 8, "fields of struct dns_event");
    }

    #[test]
    fn counter_numbers_match_c() {
        let btf = BtfLayout::from_elf(layout_obj()).unwrap();
        let c: Vec<(String, i64)> = btf
            .enum_values("pl_counter")
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n != "PL_CTR_SLOTS")
            .map(|(n, v)| (n.trim_start_matches("PL_CTR_").to_ascii_lowercase(), v))
            .collect();
        let rust: Vec<(String, i64)> = Counter::ALL.iter().map(|c| (c.name().to_string(), *c as i64)).collect();
        assert_eq!(rust, c, "Counter mirrors enum pl_counter (names and numbers)");
        let slots = btf.enum_values("pl_counter").unwrap().into_iter().find(|(n, _)| n == "PL_CTR_SLOTS");
        assert_eq!(slots.map(|(_, v)| v), Some(i64::from(COUNTER_SLOTS)));
    }

    #[test]
    fn event_kinds_match_c() {
        let btf = BtfLayout::from_elf(layout_obj()).unwrap();
        for (name, value) in btf.enum_values("pl_event_kind").unwrap() {
            let kind = EventKind::from_raw(value as u32).unwrap_or_else(|| panic!("{name} = {value} unknown to Rust"));
            let want = match kind {
                EventKind::FlowOverflow => "PL_EVENT_FLOW_OVERFLOW",
                EventKind::CgroupMkdir => "PL_EVENT_CGROUP_MKDIR",
                EventKind::CgroupRmdir => "PL_EVENT_CGROUP_RMDIR",
                EventKind::Dns => "PL_EVENT_DNS",
            };
            assert_eq!(name, want);
        }
    }

    #[test]
    fn limits_match_c() {
        let btf = BtfLayout::from_elf(layout_obj()).unwrap();
        let mut c = btf.enum_values("pl_limits").unwrap();
        c.sort();
        let mut rust = vec![
            ("PL_LIMIT_CGROUP_PATH_LEN".to_string(), CGROUP_PATH_LEN as i64),
            ("PL_LIMIT_DNS_MAX_PAYLOAD".to_string(), DNS_MAX_PAYLOAD as i64),
            ("PL_LIMIT_DNS_PORTS".to_string(), DNS_PORTS as i64),
            ("PL_LIMIT_DNS_SMALL_PAYLOAD".to_string(), DNS_SMALL_PAYLOAD as i64),
            ("PL_LIMIT_FLOW_MAP_ENTRIES".to_string(), i64::from(FLOW_MAP_ENTRIES)),
            ("PL_LIMIT_RUNQ_BUCKETS".to_string(), sched::RUNQ_BUCKETS as i64),
            ("PL_LIMIT_CPU_HISTORY".to_string(), sched::CPU_HISTORY as i64),
            ("PL_LIMIT_SCHED_CGROUPS".to_string(), i64::from(sched::SCHED_CGROUPS)),
            ("PL_LIMIT_SCHED_PAIRS".to_string(), i64::from(sched::SCHED_PAIRS)),
            ("PL_LIMIT_SCHED_TASKS".to_string(), i64::from(sched::SCHED_TASKS)),
        ];
        rust.sort();
        assert_eq!(rust, c);
    }

    #[test]
    fn counter_slots_fit_the_map() {
        for c in Counter::ALL {
            assert!((c as u32) < COUNTER_SLOTS, "{c:?}");
        }
        let names: std::collections::HashSet<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Counter::ALL.len(), "counter names are unique");
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "Counter::ALL is in slot order");
        }
    }
}

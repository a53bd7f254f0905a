//! Decoding of records from the events ring buffer. The kernel writes them, but
//! the decoder still checks every length: a short or unknown record is an error
//! that is counted, never a panic or an out-of-bounds read.

use podlens_agent_ebpf::{
    CgroupEvent, DnsEvent, EventHeader, EventKind, FlowOverflowEvent, CGROUP_PATH_LEN, DNS_MAX_PAYLOAD,
};

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    FlowOverflow(FlowOverflowEvent),
    CgroupMkdir { id: u64, path: String },
    CgroupRmdir { id: u64, path: String },
    Dns(DnsPacket),
}

/// A DNS-port packet's payload (or its first [`DNS_MAX_PAYLOAD`] bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPacket {
    pub event: DnsEvent,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is shorter than its {need}-byte {what}")]
    Short { len: usize, need: usize, what: &'static str },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("cgroup event path length {0} exceeds {CGROUP_PATH_LEN}")]
    BadPathLen(u32),
    #[error("DNS event claims {captured} payload bytes (payload {payload_len}, record holds {available})")]
    BadCapture { captured: u16, payload_len: u32, available: usize },
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { len: bytes.len(), need, what });
    }
    // SAFETY: length checked above; T is a plain #[repr(C)] mirror for which
    // every bit pattern is valid, and read_unaligned has no alignment demand.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(bytes, "header")?;
    match EventKind::from_raw(hdr.kind) {
        Some(EventKind::FlowOverflow) => Ok(Event::FlowOverflow(read(bytes, "flow overflow event")?)),
        Some(kind @ (EventKind::CgroupMkdir | EventKind::CgroupRmdir)) => {
            let e: CgroupEvent = read(bytes, "cgroup event")?;
            let len = e.path_len as usize;
            if len > CGROUP_PATH_LEN {
                return Err(DecodeError::BadPathLen(e.path_len));
            }
            let raw = &e.path[..len];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let path = String::from_utf8_lossy(&raw[..end]).into_owned();
            Ok(if kind == EventKind::CgroupMkdir {
                Event::CgroupMkdir { id: e.cgroup_id, path }
            } else {
                Event::CgroupRmdir { id: e.cgroup_id, path }
            })
        }
        Some(EventKind::Dns) => {
            let event: DnsEvent = read(bytes, "DNS event")?;
            let captured = usize::from(event.captured);
            let rest = &bytes[std::mem::size_of::<DnsEvent>()..];
            if captured > rest.len() || captured > DNS_MAX_PAYLOAD || captured as u64 > u64::from(event.payload_len) {
                return Err(DecodeError::BadCapture {
                    captured: event.captured,
                    payload_len: event.payload_len,
                    available: rest.len(),
                });
            }
            Ok(Event::Dns(DnsPacket { event, payload: rest[..captured].to_vec() }))
        }
        None => Err(DecodeError::UnknownKind(hdr.kind)),
    }
}

/// Whether a cgroup event's path may have been cut at [`CGROUP_PATH_LEN`].
pub fn path_truncated(path: &str) -> bool {
    path.len() >= CGROUP_PATH_LEN - 1
}

#[cfg(test)]
mod tests {
    use podlens_agent_ebpf::FlowKey;

    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain #[repr(C)] value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec() }
    }

    fn cgroup_event(kind: EventKind, path: &[u8], path_len: u32) -> Vec<u8> {
        let mut e = CgroupEvent {
            hdr: EventHeader { kind: kind as u32, _pad: 0, ts_ns: 5 },
            cgroup_id: 77,
            path_len,
            _pad: 0,
            path: [0; CGROUP_PATH_LEN],
        };
        e.path[..path.len()].copy_from_slice(path);
        bytes_of(&e)
    }

    #[test]
    fn decodes_overflow() {
        let e = FlowOverflowEvent {
            hdr: EventHeader { kind: EventKind::FlowOverflow as u32, _pad: 0, ts_ns: 9 },
            key: FlowKey { cgroup_id: 3, local_port: 80, protocol: 6, family: 4, ..Default::default() },
            bytes: 1500,
            packets: 1,
            direction: 1,
            tcp_flags: 0x10,
            _pad: [0; 6],
        };
        assert_eq!(decode(&bytes_of(&e)), Ok(Event::FlowOverflow(e)));
    }

    #[test]
    fn decodes_cgroup_events() {
        let b = cgroup_event(EventKind::CgroupMkdir, b"/kubepods/podx\0", 15);
        assert_eq!(decode(&b), Ok(Event::CgroupMkdir { id: 77, path: "/kubepods/podx".into() }));
        let b = cgroup_event(EventKind::CgroupRmdir, b"/a\0", 3);
        assert_eq!(decode(&b), Ok(Event::CgroupRmdir { id: 77, path: "/a".into() }));
    }

    #[test]
    fn rejects_short_unknown_and_lying_records() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { what: "header", .. })));
        let mut b = cgroup_event(EventKind::CgroupMkdir, b"/x\0", 3);
        b.truncate(100);
        assert!(matches!(decode(&b), Err(DecodeError::Short { what: "cgroup event", .. })));
        let mut b = cgroup_event(EventKind::CgroupMkdir, b"/x\0", 3);
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(99)));
        let b = cgroup_event(EventKind::CgroupMkdir, b"/x\0", 9999);
        assert_eq!(decode(&b), Err(DecodeError::BadPathLen(9999)));
    }

    fn dns_event(captured: u16, payload_len: u32, payload: &[u8]) -> Vec<u8> {
        let e = DnsEvent {
            hdr: EventHeader { kind: EventKind::Dns as u32, _pad: 0, ts_ns: 11 },
            key: FlowKey { cgroup_id: 3, remote_port: 53, protocol: 17, family: 4, ..Default::default() },
            tcp_seq: 0,
            payload_len,
            captured,
            direction: 0,
            _pad: [0; 5],
        };
        let mut b = bytes_of(&e);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn decodes_dns_packets_and_checks_their_lengths() {
        // the ring record is the reserved slot: longer than what was captured
        let mut slot = vec![0xab; 5];
        slot.resize(256, 0);
        let Ok(Event::Dns(p)) = decode(&dns_event(5, 5, &slot)) else { panic!("decodes") };
        assert_eq!((p.payload, p.event.hdr.ts_ns, p.event.key.remote_port), (vec![0xab; 5], 11, 53));
        let cut = decode(&dns_event(4, 3000, &[1, 2, 3, 4])).unwrap();
        assert!(matches!(cut, Event::Dns(p) if p.payload == [1, 2, 3, 4] && p.event.payload_len == 3000));
        for (captured, len, payload) in [(9u16, 9u32, &[0u8; 4][..]), (6, 5, &[0; 8]), (2000, 2000, &[0; 2000])] {
            assert!(
                matches!(decode(&dns_event(captured, len, payload)), Err(DecodeError::BadCapture { .. })),
                "captured {captured} of {len} with {} bytes",
                payload.len()
            );
        }
        let mut short = dns_event(0, 0, &[]);
        short.truncate(40);
        assert!(matches!(decode(&short), Err(DecodeError::Short { what: "DNS event", .. })));
    }

    #[test]
    fn path_without_nul_uses_path_len() {
        let long = vec![b'a'; CGROUP_PATH_LEN];
        let b = cgroup_event(EventKind::CgroupMkdir, &long, CGROUP_PATH_LEN as u32);
        let Ok(Event::CgroupMkdir { path, .. }) = decode(&b) else { panic!() };
        assert_eq!(path.len(), CGROUP_PATH_LEN);
        assert!(path_truncated(&path));
    }
}

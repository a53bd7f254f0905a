//! Any sequence of TCP segments (in order, retransmitted, with gaps, copied in
//! part) through the DNS stream reassembler: no panic, bounded output, and a
//! message marked whole carries exactly its announced length.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/dns/tcp.rs"]
#[allow(dead_code)]
mod tcp;

fuzz_target!(|data: &[u8]| {
    let mut stream = tcp::Stream::default();
    let mut seq: u32 = u32::from_le_bytes([data.first().copied().unwrap_or(0), 0, 0, 0xff]);
    let mut rest = data.get(1..).unwrap_or_default();
    // each segment: [op, len, copied fraction] then `len` bytes of payload
    while rest.len() >= 3 {
        let (op, len, frac) = (rest[0], usize::from(rest[1]), rest[2]);
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (payload, tail) = rest.split_at(len);
        rest = tail;
        let start = match op % 4 {
            0 | 1 => seq,                                  // in order
            2 => seq.wrapping_sub(u32::from(op) % 64),     // retransmission / overlap
            _ => seq.wrapping_add(1 + u32::from(op) % 64), // gap
        };
        let copied = len * usize::from(frac) / 255;
        for m in stream.feed(start, len as u32, &payload[..copied], u64::from(op)) {
            assert!(m.bytes.len() <= tcp::MAX_KEPT);
            assert!(m.first_ns <= u64::from(u8::MAX) && m.last_ns <= u64::from(u8::MAX));
        }
        seq = start.wrapping_add(len as u32);
    }
});

//! DNS over TCP (RFC 7766): a stream of messages, each after a 2-byte length.
//! One [`Stream`] per connection direction turns the kernel's per-segment
//! copies back into messages: retransmitted bytes are skipped by sequence
//! number, a gap (a segment the kernel did not deliver) drops the message in
//! progress, and bytes the kernel did not copy (it copies at most a bound per
//! packet) leave the message "cut", kept only up to the first missing byte.
//! Where the framing is unknown (a stream first seen, perhaps mid-connection,
//! and after a gap or a length prefix not copied) the next segment is guessed
//! to start a message, and the guess is kept only if a DNS header follows.
//! Depends on std only (built by the fuzz target too).

/// Bytes kept of one message: enough for header, question and answers.
pub const MAX_KEPT: usize = 4096;

/// One message taken out of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    /// The message's first bytes up to the first byte not copied (or up to
    /// [`MAX_KEPT`]).
    pub bytes: Vec<u8>,
    /// Every byte of the message is in `bytes`.
    pub whole: bool,
    /// Kernel time of the segment that started the message and of the one that ended it.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// A sequence number this far from the expected one, either way, is taken for
/// a new connection reusing the addresses and ports (its initial sequence
/// number is random), not for a retransmission or a gap: a DNS stream never
/// has this much in flight, and without this a new connection that happened to
/// start "behind" the old one would be skipped as retransmissions for good.
pub const RESTART_DISTANCE: u32 = 1 << 20;

const HEADER_LEN: usize = 12;

/// What happened to bytes that did not become a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Segments entirely made of bytes already seen.
    pub retransmits: u64,
    /// Bytes skipped as already seen (whole retransmissions and overlaps).
    pub retransmitted_bytes: u64,
    /// Messages in progress dropped because bytes before them went missing.
    pub gaps: u64,
    /// Segments dropped because a length prefix was not copied.
    pub lost_sync: u64,
    /// Guessed message starts refused because they did not look like a DNS
    /// message; the rest of their segment was skipped.
    pub resync_rejected: u64,
    /// Sequence jumps taken for a new connection (see [`RESTART_DISTANCE`]).
    pub restarts: u64,
    /// Messages in progress when the stream restarted: the rest never came.
    pub unfinished: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stream {
    next_seq: Option<u32>,
    /// Whether the framing is known: false on a stream first seen (perhaps
    /// mid-connection) and after a gap or lost sync, where the next bytes are
    /// only guessed to start a message and must pass [`plausible`] first.
    synced: bool,
    /// The QR bit this direction carries, when the ports tell (a client sends
    /// queries and receives responses).
    expect_response: Option<bool>,
    /// Length prefix bytes read so far (0, 1 or 2) and their value.
    prefix: Vec<u8>,
    /// Length of the message in progress, once its prefix is read.
    want: Option<usize>,
    have: usize,
    buf: Vec<u8>,
    holes: bool,
    first_ns: u64,
    pub counts: StreamCounts,
}

/// Whether a guessed message start looks like DNS: a header whose counts fit
/// the announced length (a question takes at least 5 bytes, a record 11), at
/// most one question, an opcode in use over TCP (QUERY, NOTIFY, UPDATE) and,
/// when known, the direction's QR bit. Real messages always pass; the middle
/// of one rarely does.
fn plausible(header: &[u8; HEADER_LEN], len: usize, expect_response: Option<bool>) -> bool {
    let word = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let flags = word(2);
    let (qd, records) = (word(4), word(6) + word(8) + word(10));
    matches!((flags >> 11) & 0xf, 0 | 4 | 5)
        && qd <= 1
        && expect_response.is_none_or(|r| r == (flags & 0x8000 != 0))
        && HEADER_LEN + qd * 5 + records * 11 <= len
}

impl Stream {
    /// A stream whose messages are all responses (`Some(true)`), all queries
    /// (`Some(false)`), or either.
    pub fn new(expect_response: Option<bool>) -> Self {
        Self { expect_response, ..Self::default() }
    }

    /// Feeds one segment: `payload_len` bytes from `seq`, of which the first
    /// `captured.len()` were copied. Returns the messages it completed.
    pub fn feed(&mut self, seq: u32, payload_len: u32, captured: &[u8], ts_ns: u64) -> Vec<Assembled> {
        let mut out = Vec::new();
        let len = payload_len as usize;
        let captured = &captured[..captured.len().min(len)];
        let mut off = 0usize;
        if let Some(next) = self.next_seq {
            let diff = seq.wrapping_sub(next) as i32;
            if diff.unsigned_abs() > RESTART_DISTANCE {
                self.counts.restarts += 1;
                if self.in_progress() {
                    self.counts.unfinished += 1;
                }
                self.lose_sync();
            } else if diff < 0 {
                let seen = diff.unsigned_abs() as usize;
                if seen >= len {
                    self.counts.retransmits += 1;
                    self.counts.retransmitted_bytes += u64::from(payload_len);
                    return out;
                }
                self.counts.retransmitted_bytes += seen as u64;
                off = seen;
            } else if diff > 0 {
                if self.in_progress() {
                    self.counts.gaps += 1;
                }
                self.lose_sync();
            }
        }
        self.next_seq = Some(seq.wrapping_add(payload_len));
        while off < len {
            let Some(want) = self.want else {
                let Some(&b) = captured.get(off) else {
                    // the length prefix was not copied: the boundaries are lost
                    self.counts.lost_sync += 1;
                    self.lose_sync();
                    return out;
                };
                self.prefix.push(b);
                off += 1;
                if self.prefix.len() == 2 {
                    let want = usize::from(u16::from_be_bytes([self.prefix[0], self.prefix[1]]));
                    if !self.synced && want < HEADER_LEN {
                        self.reject();
                        return out;
                    }
                    self.want = Some(want);
                    self.first_ns = ts_ns;
                }
                continue;
            };
            let n = (want - self.have).min(len - off);
            // After a hole, later bytes would sit at the offsets of the missing
            // ones and the decoder would read them as other fields: only the
            // unbroken prefix is kept, while `have` still counts every byte so
            // the next message's boundary is found.
            if !self.holes {
                let copied = captured.get(off..(off + n).min(captured.len())).unwrap_or_default();
                let room = MAX_KEPT.saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&copied[..copied.len().min(room)]);
                if copied.len() < n || copied.len() > room {
                    self.holes = true;
                }
            }
            self.have += n;
            off += n;
            if !self.synced {
                // a guessed start is trusted once its header checks out; one
                // whose header was not copied cannot be checked
                match self.buf.first_chunk::<HEADER_LEN>() {
                    Some(h) if plausible(h, want, self.expect_response) => self.synced = true,
                    None if !self.holes => {}
                    _ => {
                        self.reject();
                        return out;
                    }
                }
            }
            if self.have == want {
                out.push(Assembled {
                    bytes: std::mem::take(&mut self.buf),
                    whole: !self.holes,
                    first_ns: self.first_ns,
                    last_ns: ts_ns,
                });
                self.reset();
            }
        }
        out
    }

    /// Whether a message is part way through.
    pub fn in_progress(&self) -> bool {
        self.want.is_some() || !self.prefix.is_empty()
    }

    /// Drops the message in progress; framing stays known.
    fn reset(&mut self) {
        self.prefix.clear();
        self.want = None;
        self.have = 0;
        self.buf.clear();
        self.holes = false;
    }

    /// Drops the message in progress; the next start is a guess.
    fn lose_sync(&mut self) {
        self.reset();
        self.synced = false;
    }

    fn reject(&mut self) {
        self.counts.resync_rejected += 1;
        self.lose_sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A message body that passes as a DNS query: an empty header, then `tail`.
    fn msg(tail: &[u8]) -> Vec<u8> {
        [&[0u8; HEADER_LEN][..], tail].concat()
    }

    fn bodies(out: &[Assembled]) -> Vec<(Vec<u8>, bool)> {
        out.iter().map(|a| (a.bytes.clone(), a.whole)).collect()
    }

    #[test]
    fn one_segment_one_message_and_two_in_one() {
        let mut s = Stream::default();
        let m = framed(&msg(b"hello"));
        assert_eq!(bodies(&s.feed(100, m.len() as u32, &m, 5)), vec![(msg(b"hello"), true)]);
        let two = [framed(&msg(b"ab")), framed(&msg(b"cde"))].concat();
        let out = s.feed(100 + m.len() as u32, two.len() as u32, &two, 6);
        assert_eq!(bodies(&out), vec![(msg(b"ab"), true), (msg(b"cde"), true)]);
        assert!(!s.in_progress());
    }

    #[test]
    fn a_message_split_across_segments_including_its_prefix() {
        let mut s = Stream::default();
        let m = framed(&msg(b"0123456789"));
        let (a, rest) = m.split_at(1); // half of the prefix
        let (b, c) = rest.split_at(5); // and only part of the header
        assert!(s.feed(1, 1, a, 10).is_empty());
        assert!(s.feed(2, b.len() as u32, b, 11).is_empty());
        assert!(s.in_progress());
        let out = s.feed(2 + b.len() as u32, c.len() as u32, c, 12);
        assert_eq!(bodies(&out), vec![(msg(b"0123456789"), true)]);
        assert_eq!((out[0].first_ns, out[0].last_ns), (11, 12), "from the prefix's completion to the last byte");
        assert_eq!(s.counts, StreamCounts::default());
    }

    #[test]
    fn retransmissions_are_skipped_and_overlaps_trimmed() {
        let mut s = Stream::default();
        let m = framed(&msg(b"abcdef"));
        assert!(s.feed(10, 4, &m[..4], 1).is_empty());
        assert!(s.feed(10, 4, &m[..4], 2).is_empty(), "a full retransmission");
        assert_eq!(s.counts.retransmits, 1);
        // overlapping: bytes 2.. again plus the rest
        let out = s.feed(12, (m.len() - 2) as u32, &m[2..], 3);
        assert_eq!(bodies(&out), vec![(msg(b"abcdef"), true)]);
        assert_eq!((s.counts.retransmits, s.counts.retransmitted_bytes), (1, 4 + 2));
    }

    #[test]
    fn a_gap_drops_the_message_in_progress_and_resynchronises() {
        let mut s = Stream::default();
        let m = framed(&msg(b"abcdef"));
        assert!(s.feed(10, 4, &m[..4], 1).is_empty());
        // the segment with the rest never arrives; the next message does
        let next = framed(&msg(b"xyz"));
        let out = s.feed(10 + m.len() as u32, next.len() as u32, &next, 2);
        assert_eq!(bodies(&out), vec![(msg(b"xyz"), true)]);
        assert_eq!(s.counts.gaps, 1);
    }

    #[test]
    fn bytes_not_copied_leave_the_message_cut_but_framed() {
        let mut s = Stream::default();
        let a = framed(&msg(&[7u8; 88]));
        let b = framed(&msg(b"next"));
        let seg = [a.clone(), b.clone()].concat();
        // only the first 50 bytes were copied: the first message is cut, and
        // the second one's prefix was not copied either
        let out = s.feed(1, seg.len() as u32, &seg[..50], 1);
        assert_eq!(bodies(&out), vec![(a[2..50].to_vec(), false)]);
        assert_eq!(s.counts.lost_sync, 1);
        // after losing sync the next segment starts afresh
        let out = s.feed(9999, b.len() as u32, &b, 2);
        assert_eq!(bodies(&out), vec![(msg(b"next"), true)]);
    }

    #[test]
    fn after_a_cut_segment_only_the_unbroken_prefix_is_kept() {
        let mut s = Stream::default();
        let body = msg(&(100..128u8).collect::<Vec<u8>>());
        let m = framed(&body);
        // the first segment carries the prefix and 30 body bytes, of which
        // the kernel copied 18; the second segment carries the rest, copied
        let (a, b) = m.split_at(32);
        assert!(s.feed(1, a.len() as u32, &a[..20], 1).is_empty());
        let next = framed(&msg(b"after"));
        let seg = [b, &next[..]].concat();
        let out = s.feed(1 + a.len() as u32, seg.len() as u32, &seg, 2);
        // bytes 30.. must not land right after byte 17: the decoder would
        // read them at the offsets of the missing ones
        assert_eq!(bodies(&out), vec![(body[..18].to_vec(), false), (msg(b"after"), true)]);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Stream::default();
        let m = framed(&msg(b"wrap-around"));
        let (a, b) = m.split_at(6);
        assert!(s.feed(u32::MAX - 2, a.len() as u32, a, 1).is_empty());
        let out = s.feed((u32::MAX - 2).wrapping_add(6), b.len() as u32, b, 2);
        assert_eq!(bodies(&out), vec![(msg(b"wrap-around"), true)]);
    }

    #[test]
    fn long_messages_keep_a_bounded_prefix() {
        let mut s = Stream::default();
        let m = framed(&msg(&vec![1u8; 10_000]));
        let mut out = Vec::new();
        for (i, chunk) in m.chunks(1400).enumerate() {
            out.extend(s.feed(1 + (i * 1400) as u32, chunk.len() as u32, chunk, i as u64));
        }
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].bytes.len(), out[0].whole), (MAX_KEPT, false));
    }

    #[test]
    fn after_a_gap_the_middle_of_a_message_is_not_taken_for_a_start() {
        let mut s = Stream::default();
        let m = framed(&msg(&[0xff; 288]));
        let (a, rest) = m.split_at(100);
        let (_lost, mut c) = rest.split_at(100);
        // the tail of the message happens to begin with what reads as a
        // 32-byte length prefix
        let mut tail = c.to_vec();
        tail[..2].copy_from_slice(&[0, 32]);
        c = &tail;
        assert!(s.feed(1, a.len() as u32, a, 1).is_empty());
        let out = s.feed(201, c.len() as u32, c, 2);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!((s.counts.gaps, s.counts.resync_rejected), (1, 1));
        // the next segment does start a message
        let next = framed(&msg(b"next"));
        let out = s.feed(201 + c.len() as u32, next.len() as u32, &next, 3);
        assert_eq!(bodies(&out), vec![(msg(b"next"), true)]);
    }

    #[test]
    fn implausible_guessed_starts_are_refused_and_counted() {
        let header = |flags: u16, counts: [u16; 4]| {
            let mut h = vec![0, 1];
            for w in [flags, counts[0], counts[1], counts[2], counts[3]] {
                h.extend_from_slice(&w.to_be_bytes());
            }
            h
        };
        let query = [header(0x0100, [1, 0, 0, 0]), b"\x01a\x00\x00\x01\x00\x01".to_vec()].concat();
        let cases: [(&str, Option<bool>, Vec<u8>); 6] = [
            ("shorter than a header", None, b"hello".to_vec()),
            ("opcode 2 (STATUS)", None, [header(0x1000, [1, 0, 0, 0]), query[12..].to_vec()].concat()),
            ("two questions", None, [header(0x0100, [2, 0, 0, 0]), query[12..].to_vec()].concat()),
            ("records that cannot fit", None, [header(0x8180, [1, 3, 0, 0]), query[12..].to_vec()].concat()),
            ("a query where responses flow", Some(true), query.clone()),
            (
                "a response where queries flow",
                Some(false),
                [header(0x8180, [1, 0, 0, 0]), query[12..].to_vec()].concat(),
            ),
        ];
        for (what, expect, body) in cases {
            let mut s = Stream::new(expect);
            let m = framed(&body);
            assert!(s.feed(7, m.len() as u32, &m, 1).is_empty(), "{what}");
            assert_eq!(s.counts.resync_rejected, 1, "{what}");
            assert!(!s.in_progress(), "{what}");
        }
        // a header the kernel did not copy cannot be checked
        let mut s = Stream::default();
        let m = framed(&query);
        assert!(s.feed(7, m.len() as u32, &m[..8], 1).is_empty());
        assert_eq!(s.counts.resync_rejected, 1);
        // the real query passes in its own direction
        let mut s = Stream::new(Some(false));
        assert_eq!(bodies(&s.feed(7, m.len() as u32, &m, 1)), vec![(query.clone(), true)]);
        // and once in sync, messages are not second-guessed
        let odd = framed(b"hello");
        assert_eq!(bodies(&s.feed(7 + m.len() as u32, odd.len() as u32, &odd, 2)), vec![(b"hello".to_vec(), true)]);
    }

    #[test]
    fn a_far_sequence_number_is_a_new_connection_not_a_retransmission() {
        let mut s = Stream::default();
        let m = framed(&msg(b"old"));
        assert_eq!(s.feed(1_000_000_000, m.len() as u32, &m, 1).len(), 1);
        // a message in progress when the old connection ends
        assert!(s.feed(1_000_000_000 + m.len() as u32, 4, &m[..4], 2).is_empty());
        // the new connection's initial sequence number is "behind" the old one
        let n = framed(&msg(b"new"));
        let out = s.feed(5000, n.len() as u32, &n, 3);
        assert_eq!(bodies(&out), vec![(msg(b"new"), true)]);
        assert_eq!((s.counts.restarts, s.counts.unfinished, s.counts.retransmits), (1, 1, 0));
        // and "ahead" of it
        let out = s.feed(5000 + (3 << 20), n.len() as u32, &n, 4);
        assert_eq!(out.len(), 1);
        assert_eq!((s.counts.restarts, s.counts.gaps), (2, 0));
    }
}

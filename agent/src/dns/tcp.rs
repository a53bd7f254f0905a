//! DNS over TCP (RFC 7766): a stream of messages, each after a 2-byte length.
//! One [`Stream`] per connection direction turns the kernel's per-segment
//! copies back into messages: retransmitted bytes are skipped by sequence
//! number, a gap (a segment the kernel did not deliver) drops the message in
//! progress and resynchronises on the next segment, and bytes the kernel did
//! not copy (it copies at most a bound per packet) leave the message "cut",
//! kept only up to the first missing byte.
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

/// What happened to bytes that did not become a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Segments entirely made of bytes already seen.
    pub retransmits: u64,
    /// Messages in progress dropped because bytes before them went missing.
    pub gaps: u64,
    /// Segments dropped because a length prefix was not copied.
    pub lost_sync: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stream {
    next_seq: Option<u32>,
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

impl Stream {
    /// Feeds one segment: `payload_len` bytes from `seq`, of which the first
    /// `captured.len()` were copied. Returns the messages it completed.
    pub fn feed(&mut self, seq: u32, payload_len: u32, captured: &[u8], ts_ns: u64) -> Vec<Assembled> {
        let mut out = Vec::new();
        let len = payload_len as usize;
        let captured = &captured[..captured.len().min(len)];
        let mut off = 0usize;
        if let Some(next) = self.next_seq {
            let diff = seq.wrapping_sub(next) as i32;
            if diff < 0 {
                let seen = diff.unsigned_abs() as usize;
                if seen >= len {
                    self.counts.retransmits += 1;
                    return out;
                }
                off = seen;
            } else if diff > 0 {
                if self.want.is_some() || !self.prefix.is_empty() {
                    self.counts.gaps += 1;
                }
                self.reset();
            }
        }
        self.next_seq = Some(seq.wrapping_add(payload_len));
        while off < len {
            let Some(want) = self.want else {
                let Some(&b) = captured.get(off) else {
                    // the length prefix was not copied: the boundaries are lost
                    self.counts.lost_sync += 1;
                    self.reset();
                    self.next_seq = None;
                    return out;
                };
                self.prefix.push(b);
                off += 1;
                if self.prefix.len() == 2 {
                    self.want = Some(usize::from(u16::from_be_bytes([self.prefix[0], self.prefix[1]])));
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

    fn reset(&mut self) {
        self.prefix.clear();
        self.want = None;
        self.have = 0;
        self.buf.clear();
        self.holes = false;
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

    fn bodies(out: &[Assembled]) -> Vec<(Vec<u8>, bool)> {
        out.iter().map(|a| (a.bytes.clone(), a.whole)).collect()
    }

    #[test]
    fn one_segment_one_message_and_two_in_one() {
        let mut s = Stream::default();
        let m = framed(b"hello");
        assert_eq!(bodies(&s.feed(100, m.len() as u32, &m, 5)), vec![(b"hello".to_vec(), true)]);
        let two = [framed(b"ab"), framed(b"cde")].concat();
        let out = s.feed(100 + m.len() as u32, two.len() as u32, &two, 6);
        assert_eq!(bodies(&out), vec![(b"ab".to_vec(), true), (b"cde".to_vec(), true)]);
        assert!(!s.in_progress());
    }

    #[test]
    fn a_message_split_across_segments_including_its_prefix() {
        let mut s = Stream::default();
        let m = framed(b"0123456789");
        let (a, rest) = m.split_at(1); // half of the prefix
        let (b, c) = rest.split_at(5);
        assert!(s.feed(1, 1, a, 10).is_empty());
        assert!(s.feed(2, b.len() as u32, b, 11).is_empty());
        assert!(s.in_progress());
        let out = s.feed(2 + b.len() as u32, c.len() as u32, c, 12);
        assert_eq!(bodies(&out), vec![(b"0123456789".to_vec(), true)]);
        assert_eq!((out[0].first_ns, out[0].last_ns), (11, 12), "from the prefix's completion to the last byte");
    }

    #[test]
    fn retransmissions_are_skipped_and_overlaps_trimmed() {
        let mut s = Stream::default();
        let m = framed(b"abcdef");
        assert!(s.feed(10, 4, &m[..4], 1).is_empty());
        assert!(s.feed(10, 4, &m[..4], 2).is_empty(), "a full retransmission");
        assert_eq!(s.counts.retransmits, 1);
        // overlapping: bytes 2.. again plus the rest
        let out = s.feed(12, (m.len() - 2) as u32, &m[2..], 3);
        assert_eq!(bodies(&out), vec![(b"abcdef".to_vec(), true)]);
    }

    #[test]
    fn a_gap_drops_the_message_in_progress_and_resynchronises() {
        let mut s = Stream::default();
        let m = framed(b"abcdef");
        assert!(s.feed(10, 4, &m[..4], 1).is_empty());
        // the segment with the rest never arrives; the next message does
        let next = framed(b"xyz");
        let out = s.feed(10 + m.len() as u32, next.len() as u32, &next, 2);
        assert_eq!(bodies(&out), vec![(b"xyz".to_vec(), true)]);
        assert_eq!(s.counts.gaps, 1);
    }

    #[test]
    fn bytes_not_copied_leave_the_message_cut_but_framed() {
        let mut s = Stream::default();
        let a = framed(&[7u8; 100]);
        let b = framed(b"next");
        let seg = [a.clone(), b.clone()].concat();
        // only the first 50 bytes were copied: the first message is cut, and
        // the second one's prefix was not copied either
        let out = s.feed(1, seg.len() as u32, &seg[..50], 1);
        assert_eq!(bodies(&out), vec![(vec![7u8; 48], false)]);
        assert_eq!(s.counts.lost_sync, 1);
        // after losing sync the next segment starts afresh
        let out = s.feed(9999, b.len() as u32, &b, 2);
        assert_eq!(bodies(&out), vec![(b"next".to_vec(), true)]);
    }

    #[test]
    fn after_a_cut_segment_only_the_unbroken_prefix_is_kept() {
        let mut s = Stream::default();
        let body: Vec<u8> = (0..40u8).collect();
        let m = framed(&body);
        // the first segment carries the prefix and 20 body bytes, of which
        // the kernel copied 8; the second segment carries the rest, copied
        let (a, b) = m.split_at(22);
        assert!(s.feed(1, a.len() as u32, &a[..10], 1).is_empty());
        let next = framed(b"after");
        let seg = [b, &next[..]].concat();
        let out = s.feed(1 + a.len() as u32, seg.len() as u32, &seg, 2);
        // bytes 20.. must not land right after byte 7: the parser would read
        // them at the offsets of the missing ones
        assert_eq!(bodies(&out), vec![(body[..8].to_vec(), false), (b"after".to_vec(), true)]);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Stream::default();
        let m = framed(b"wrap-around");
        let (a, b) = m.split_at(6);
        assert!(s.feed(u32::MAX - 2, a.len() as u32, a, 1).is_empty());
        let out = s.feed((u32::MAX - 2).wrapping_add(6), b.len() as u32, b, 2);
        assert_eq!(bodies(&out), vec![(b"wrap-around".to_vec(), true)]);
    }

    #[test]
    fn long_messages_keep_a_bounded_prefix() {
        let mut s = Stream::default();
        let m = framed(&vec![1u8; 10_000]);
        let mut out = Vec::new();
        for (i, chunk) in m.chunks(1400).enumerate() {
            out.extend(s.feed(1 + (i * 1400) as u32, chunk.len() as u32, chunk, i as u64));
        }
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].bytes.len(), out[0].whole), (MAX_KEPT, false));
    }
}

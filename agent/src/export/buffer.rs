//! Batches waiting for the collector's acknowledgement, bounded in bytes.
//! When a new batch does not fit, the oldest ones are dropped, and exactly
//! what they held is counted (and reported in-band by later batches): as
//! "dropped" when it never left, as "unconfirmed" when it was sent on the
//! current connection but not yet acknowledged (it may have arrived).

use std::{collections::VecDeque, sync::Arc};

use podlens_proto::v1::{self as pb, record::Kind};

/// What a batch held: the units drops are reported in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub records: u64,
    pub flow_records: u64,
    pub flow_packets: u64,
    pub flow_bytes: u64,
}

impl Contents {
    pub fn of(batch: &pb::Batch) -> Self {
        let mut c = Contents { records: batch.records.len() as u64, ..Default::default() };
        for r in &batch.records {
            if let Some(Kind::Flow(f)) = &r.kind {
                c.flow_records += 1;
                for d in [f.egress, f.ingress].into_iter().flatten() {
                    c.flow_packets += d.packets;
                    c.flow_bytes += d.bytes;
                }
            }
        }
        c
    }
}

/// Batches and what they held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub batches: u64,
    pub bytes: u64,
    pub contents: Contents,
}

struct Entry {
    batch: Arc<pb::Batch>,
    size: usize,
    contents: Contents,
    /// Sent on the current connection.
    sent: bool,
}

pub struct ExportBuffer {
    entries: VecDeque<Entry>,
    bytes: usize,
    limit: usize,
    /// Everything ever pushed, so consumers can check produced = received + dropped.
    pub produced: Tally,
    /// Evicted before being sent.
    pub dropped: Tally,
    /// Evicted after being sent, before its acknowledgement: maybe delivered.
    pub unconfirmed: Tally,
    /// Refused by the collector as invalid, for good.
    pub rejected: Tally,
}

fn add(into: &mut Tally, size: usize, c: Contents) {
    into.batches += 1;
    into.bytes += size as u64;
    into.contents.records += c.records;
    into.contents.flow_records += c.flow_records;
    into.contents.flow_packets += c.flow_packets;
    into.contents.flow_bytes += c.flow_bytes;
}

impl ExportBuffer {
    /// The bound, in encoded bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A buffer of at most `limit` encoded bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
            produced: Tally::default(),
            dropped: Tally::default(),
            unconfirmed: Tally::default(),
            rejected: Tally::default(),
        }
    }

    /// Queues a batch, dropping the oldest ones while it does not fit. A batch
    /// larger than the whole bound is dropped itself.
    pub fn push(&mut self, batch: pb::Batch) {
        let size = prost::Message::encoded_len(&batch);
        let contents = Contents::of(&batch);
        add(&mut self.produced, size, contents);
        if size > self.limit {
            add(&mut self.dropped, size, contents);
            return;
        }
        while self.bytes + size > self.limit {
            let Some(old) = self.entries.pop_front() else { break };
            self.bytes -= old.size;
            let tally = if old.sent { &mut self.unconfirmed } else { &mut self.dropped };
            add(tally, old.size, old.contents);
        }
        self.bytes += size;
        self.entries.push_back(Entry { batch: Arc::new(batch), size, contents, sent: false });
    }

    /// The batch with this sequence went out on the current connection.
    pub fn mark_sent(&mut self, sequence: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.batch.sequence == sequence) {
            e.sent = true;
        }
    }

    /// A new connection: nothing is in flight on it.
    pub fn unmark_sent(&mut self) {
        for e in &mut self.entries {
            e.sent = false;
        }
    }

    /// The collector refused this batch for good: drop it, count it.
    pub fn reject(&mut self, sequence: u64) {
        if let Some(i) = self.entries.iter().position(|e| e.batch.sequence == sequence) {
            if let Some(e) = self.entries.remove(i) {
                self.bytes -= e.size;
                add(&mut self.rejected, e.size, e.contents);
            }
        }
    }

    /// Forgets every batch up to and including `sequence`; returns how many.
    pub fn ack(&mut self, sequence: u64) -> usize {
        let mut n = 0;
        while self.entries.front().is_some_and(|e| e.batch.sequence <= sequence) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.size;
                n += 1;
            }
        }
        n
    }

    /// The queued batches with a sequence above `sequence`, oldest first.
    pub fn after(&self, sequence: u64) -> Vec<Arc<pb::Batch>> {
        self.entries.iter().filter(|e| e.batch.sequence > sequence).map(|e| e.batch.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, flows: u64) -> pb::Batch {
        let flow = |i: u64| pb::Record {
            node: "n".into(),
            kind: Some(Kind::Flow(pb::FlowRecord {
                egress: Some(pb::FlowCounts { bytes: 100 + i, packets: 2, ..Default::default() }),
                ingress: Some(pb::FlowCounts { bytes: 10, packets: 1, ..Default::default() }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut records: Vec<pb::Record> = (0..flows).map(flow).collect();
        records.push(pb::Record { kind: Some(Kind::Loss(pb::LossReport::default())), ..Default::default() });
        pb::Batch {
            node: Some(pb::NodeIdentity { name: "n".into(), ..Default::default() }),
            sequence: seq,
            records,
            ..Default::default()
        }
    }

    #[test]
    fn contents_count_flows_packets_and_bytes() {
        let c = Contents::of(&batch(1, 3));
        assert_eq!(c, Contents { records: 4, flow_records: 3, flow_packets: 9, flow_bytes: 100 + 101 + 102 + 30 });
    }

    #[test]
    fn acks_free_the_oldest_and_replay_starts_after_the_ack() {
        let mut b = ExportBuffer::new(1 << 20);
        for seq in 1..=5 {
            b.push(batch(seq, 2));
        }
        assert_eq!(b.after(0).iter().map(|x| x.sequence).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(b.ack(3), 3);
        assert_eq!(b.after(3).iter().map(|x| x.sequence).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(b.after(4).len(), 1);
        assert_eq!(b.ack(3), 0, "acks are cumulative and idempotent");
        assert_eq!(b.ack(9), 2);
        assert!(b.is_empty() && b.bytes() == 0);
        assert_eq!(b.dropped, Tally::default());
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_exactly() {
        let one = prost::Message::encoded_len(&batch(1, 5));
        let mut b = ExportBuffer::new(one * 3 + one / 2);
        let mut produced = Contents::default();
        for seq in 1..=10 {
            let x = batch(seq, 5);
            let c = Contents::of(&x);
            produced.flow_packets += c.flow_packets;
            produced.flow_records += c.flow_records;
            b.push(x);
        }
        assert_eq!(b.len(), 3, "only three fit");
        assert!(b.bytes() <= one * 3 + one / 2);
        assert_eq!(b.after(0).iter().map(|x| x.sequence).collect::<Vec<_>>(), [8, 9, 10]);
        assert_eq!(b.dropped.batches, 7);
        let kept: u64 = b.after(0).iter().map(|x| Contents::of(x).flow_packets).sum();
        assert_eq!(kept + b.dropped.contents.flow_packets, produced.flow_packets, "kept + dropped = produced");
        assert_eq!(b.dropped.contents.flow_records, 35);
        assert_eq!(b.produced.contents.flow_packets, produced.flow_packets);
        assert_eq!(b.produced.batches, 10);
    }

    #[test]
    fn evicting_a_sent_batch_counts_it_as_unconfirmed() {
        let one = prost::Message::encoded_len(&batch(1, 5));
        let mut b = ExportBuffer::new(one * 2 + one / 2);
        b.push(batch(1, 5));
        b.push(batch(2, 5));
        b.mark_sent(1);
        b.push(batch(3, 5));
        b.push(batch(4, 5));
        assert_eq!((b.unconfirmed.batches, b.dropped.batches), (1, 1), "1 was in flight, 2 never left");
        b.unmark_sent();
        b.reject(3);
        assert_eq!((b.rejected.batches, b.len()), (1, 1));
        assert_eq!(b.after(0)[0].sequence, 4);
    }

    #[test]
    fn a_batch_larger_than_the_bound_is_dropped_itself() {
        let mut b = ExportBuffer::new(10);
        b.push(batch(1, 3));
        assert!(b.is_empty());
        assert_eq!((b.dropped.batches, b.dropped.contents.flow_records), (1, 3));
    }
}

//! The collector's core: accepts node batches (deduplicated by node run and
//! sequence), keeps per-node state, and fans records out to Observe consumers.
//! Each consumer has a buffer bounded in records (a batch is queued whole, so
//! one large window does not count as slowness); a consumer whose buffer would
//! overflow is disconnected. Ingest never waits for a consumer.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use podlens_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::{filter::Filter, talkers::Talkers};

/// Records buffered per consumer before it counts as too slow: two full
/// windows of the default flow map.
pub const DEFAULT_CONSUMER_BUFFER: usize = 131_072;

/// What happened to one batch. `acked` is the node's cumulative
/// acknowledgement afterwards: every sequence up to it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    Accepted {
        records: usize,
        acked: u64,
    },
    /// Already seen (a replay after reconnect): not applied again.
    Duplicate {
        acked: u64,
    },
}

impl IngestOutcome {
    pub fn acked(&self) -> u64 {
        match self {
            IngestOutcome::Accepted { acked, .. } | IngestOutcome::Duplicate { acked } => *acked,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    #[error("batch has no node identity")]
    NoNode,
    #[error("batch node.name is empty")]
    EmptyNodeName,
    #[error("batch sequence 0 is invalid (sequences start at 1)")]
    ZeroSequence,
}

/// Per-node bookkeeping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeState {
    pub identity: pb::NodeIdentity,
    /// Highest sequence applied for the current agent run.
    pub last_sequence: u64,
    pub batches: u64,
    pub records: u64,
    pub duplicates: u64,
    /// Sequences skipped (the agent reports what it dropped in-band).
    pub gaps: u64,
    /// When the last batch arrived, Unix ns.
    pub last_batch_unix_nano: u64,
    /// The node's latest loss report.
    pub losses: Option<pb::LossReport>,
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::UnboundedSender<Shared>,
    /// Records queued and not yet taken by the consumer (the bound).
    buffered: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

/// One batch's records, shared by every consumer, and the positions of those
/// a consumer's filter selected: nothing is copied under the hub's lock.
struct Shared {
    records: Arc<Vec<pb::Record>>,
    selected: Vec<u32>,
}

/// Counters of the hub itself.
#[derive(Debug, Default)]
pub struct HubStats {
    pub consumers_dropped: AtomicU64,
    pub records_fanned_out: AtomicU64,
    pub batches_rejected: AtomicU64,
}

pub struct Hub {
    nodes: Mutex<HashMap<String, NodeState>>,
    subscribers: Mutex<Vec<Subscriber>>,
    talkers: Mutex<Talkers>,
    consumer_buffer: usize,
    pub stats: HubStats,
}

fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The receiving side of one consumer.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Shared>,
    buffered: Arc<AtomicUsize>,
    current: Option<(Arc<Vec<pb::Record>>, std::vec::IntoIter<u32>)>,
    /// Set when the hub dropped this consumer for falling behind.
    pub lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next record; `None` once the hub dropped this consumer (see
    /// `lagged`) and everything queued before was taken.
    pub async fn recv(&mut self) -> Option<pb::Record> {
        loop {
            if let Some(r) = self.next_buffered() {
                return Some(r);
            }
            let s = self.rx.recv().await?;
            self.current = Some((s.records, s.selected.into_iter()));
        }
    }

    /// The next record if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<pb::Record> {
        loop {
            if let Some(r) = self.next_buffered() {
                return Some(r);
            }
            let s = self.rx.try_recv().ok()?;
            self.current = Some((s.records, s.selected.into_iter()));
        }
    }

    fn next_buffered(&mut self) -> Option<pb::Record> {
        let (records, selected) = self.current.as_mut()?;
        let i = selected.next()?;
        self.buffered.fetch_sub(1, Ordering::AcqRel);
        records.get(i as usize).cloned()
    }
}

impl Hub {
    pub fn new(consumer_buffer: usize) -> Self {
        Self {
            nodes: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            // 15 minutes, 50 000 talkers a minute
            talkers: Mutex::new(Talkers::new(15, 50_000)),
            consumer_buffer: consumer_buffer.max(1),
            stats: HubStats::default(),
        }
    }

    pub fn ingest(&self, batch: pb::Batch) -> Result<IngestOutcome, IngestError> {
        let result = self.apply(batch);
        if result.is_err() {
            self.stats.batches_rejected.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn apply(&self, batch: pb::Batch) -> Result<IngestOutcome, IngestError> {
        let node = batch.node.ok_or(IngestError::NoNode)?;
        if node.name.is_empty() {
            return Err(IngestError::EmptyNodeName);
        }
        if batch.sequence == 0 {
            return Err(IngestError::ZeroSequence);
        }
        let now = now_unix_nanos();
        let acked = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let state = nodes.entry(node.name.clone()).or_default();
            let same_run = state.identity.agent_epoch_unix_nano == node.agent_epoch_unix_nano
                && state.identity.boot_id == node.boot_id;
            if same_run && batch.sequence <= state.last_sequence {
                state.duplicates += 1;
                return Ok(IngestOutcome::Duplicate { acked: state.last_sequence });
            }
            let expected = if same_run { state.last_sequence + 1 } else { 1 };
            state.gaps += batch.sequence.saturating_sub(expected);
            state.identity = node;
            state.last_sequence = batch.sequence;
            state.batches += 1;
            state.records += batch.records.len() as u64;
            state.last_batch_unix_nano = now;
            let latest_loss = batch.records.iter().rev().find_map(|r| match &r.kind {
                Some(pb::record::Kind::Loss(l)) => Some(l.clone()),
                _ => None,
            });
            if latest_loss.is_some() {
                state.losses = latest_loss;
            }
            state.last_sequence
        };
        let records = batch.records.len();
        self.talkers.lock().unwrap_or_else(|e| e.into_inner()).add(&batch.records, now);
        self.fan_out(batch.records);
        Ok(IngestOutcome::Accepted { records, acked })
    }

    /// The `limit` top talkers (see [`Talkers::top`]).
    pub fn top_talkers(&self, limit: usize, namespaces: &[String], since: u64) -> (Vec<pb::TopTalker>, u64) {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner()).top(limit, namespaces, since)
    }

    /// Flow records the top-talker view could not keep.
    pub fn talkers_dropped(&self) -> u64 {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }

    fn fan_out(&self, records: Vec<pb::Record>) {
        let records = Arc::new(records);
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| {
            let selected: Vec<u32> =
                records.iter().enumerate().filter(|(_, r)| s.filter.matches(r)).map(|(i, _)| i as u32).collect();
            if selected.is_empty() {
                return !s.tx.is_closed();
            }
            let n = selected.len();
            let buffered = s.buffered.load(Ordering::Acquire);
            // A consumer with nothing queued always takes the next batch, however
            // large: only falling behind counts as slowness.
            if buffered > 0 && buffered + n > self.consumer_buffer {
                s.lagged.store(true, Ordering::Release);
                self.stats.consumers_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(buffer = self.consumer_buffer, "observe consumer too slow; disconnecting it");
                return false;
            }
            s.buffered.fetch_add(n, Ordering::AcqRel);
            if s.tx.send(Shared { records: records.clone(), selected }).is_err() {
                return false;
            }
            self.stats.records_fanned_out.fetch_add(n as u64, Ordering::Relaxed);
            true
        });
    }

    pub fn subscribe(&self, filter: Filter) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let lagged = Arc::new(AtomicBool::new(false));
        let buffered = Arc::new(AtomicUsize::new(0));
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(Subscriber {
            filter,
            tx,
            buffered: buffered.clone(),
            lagged: lagged.clone(),
        });
        Subscription { rx, buffered, current: None, lagged }
    }

    /// Ends every consumer's stream once it has taken what is queued (shutdown).
    pub fn close_consumers(&self) {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn consumers(&self) -> usize {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn nodes(&self) -> Vec<NodeState> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(node: &str, epoch: u64, seq: u64, n: usize) -> pb::Batch {
        pb::Batch {
            node: Some(pb::NodeIdentity { name: node.into(), agent_epoch_unix_nano: epoch, ..Default::default() }),
            sequence: seq,
            records: (0..n)
                .map(|_| pb::Record {
                    node: node.into(),
                    kind: Some(pb::record::Kind::Loss(Default::default())),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn duplicates_are_discarded_per_node_run() {
        let hub = Hub::new(16);
        assert_eq!(hub.ingest(batch("a", 1, 1, 2)), Ok(IngestOutcome::Accepted { records: 2, acked: 1 }));
        assert_eq!(hub.ingest(batch("a", 1, 2, 1)), Ok(IngestOutcome::Accepted { records: 1, acked: 2 }));
        assert_eq!(hub.ingest(batch("a", 1, 2, 1)), Ok(IngestOutcome::Duplicate { acked: 2 }));
        assert_eq!(hub.ingest(batch("a", 1, 1, 2)), Ok(IngestOutcome::Duplicate { acked: 2 }));
        // another node with the same sequence is not a duplicate
        assert_eq!(hub.ingest(batch("b", 1, 1, 1)), Ok(IngestOutcome::Accepted { records: 1, acked: 1 }));
        // a restarted agent starts again at 1
        assert_eq!(hub.ingest(batch("a", 2, 1, 1)), Ok(IngestOutcome::Accepted { records: 1, acked: 1 }));
        let a = hub.nodes().into_iter().find(|n| n.identity.name == "a").unwrap();
        assert_eq!((a.batches, a.records, a.duplicates, a.gaps), (3, 4, 2, 0));
    }

    #[test]
    fn one_batch_larger_than_the_buffer_is_not_slowness() {
        let hub = Hub::new(100);
        let mut sub = hub.subscribe(Filter::default());
        hub.ingest(batch("a", 1, 1, 250)).unwrap();
        assert!(!sub.lagged.load(Ordering::Acquire), "nothing was queued: the whole batch is taken");
        let mut got = 0;
        while sub.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, 250);
        hub.ingest(batch("a", 1, 2, 100)).unwrap();
        assert!(!sub.lagged.load(Ordering::Acquire));
        let mut got = 0;
        while sub.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, 100);
        // taking records frees the buffer again
        hub.ingest(batch("a", 1, 3, 100)).unwrap();
        assert!(!sub.lagged.load(Ordering::Acquire));
        assert_eq!(hub.consumers(), 1);
    }

    #[test]
    fn gaps_are_counted() {
        let hub = Hub::new(16);
        hub.ingest(batch("a", 1, 1, 0)).unwrap();
        assert_eq!(hub.ingest(batch("a", 1, 5, 0)).unwrap().acked(), 5);
        assert_eq!(hub.nodes()[0].gaps, 3);
    }

    #[test]
    fn invalid_batches_are_rejected() {
        let hub = Hub::new(16);
        assert_eq!(hub.ingest(pb::Batch::default()), Err(IngestError::NoNode));
        assert_eq!(hub.ingest(batch("", 1, 1, 0)), Err(IngestError::EmptyNodeName));
        assert_eq!(hub.ingest(batch("a", 1, 0, 0)), Err(IngestError::ZeroSequence));
        assert_eq!(hub.stats.batches_rejected.load(Ordering::Relaxed), 3);
        assert!(hub.nodes().is_empty());
    }

    #[test]
    fn slow_consumer_is_dropped_without_blocking_ingest() {
        let hub = Hub::new(4);
        let mut slow = hub.subscribe(Filter::default());
        let mut fast = hub.subscribe(Filter::default());
        for seq in 1..=3 {
            hub.ingest(batch("a", 1, seq, 2)).unwrap();
            while fast.try_recv().is_some() {}
        }
        assert!(slow.lagged.load(Ordering::Acquire));
        assert!(!fast.lagged.load(Ordering::Acquire));
        assert_eq!(hub.consumers(), 1);
        let mut got = 0;
        while slow.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, 4, "the slow consumer keeps what was buffered");
        assert_eq!(hub.stats.consumers_dropped.load(Ordering::Relaxed), 1);
    }
}

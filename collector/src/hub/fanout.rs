//! Delivery to Observe consumers. A published batch is shared (`Arc`) by
//! every consumer; the hub only queues a reference, and each consumer's own
//! task filters and copies the records it wants, so ingest does constant work
//! per consumer. Each queue is bounded in records queued; a bounded history
//! lets a new consumer start with what arrived recently.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use podlens_proto::{compact::Tables, v1 as pb};
use tokio::sync::mpsc;

use crate::filter::Filter;

/// One published batch, shared: its records (which may refer to the
/// batch's identity tables) and those tables.
#[derive(Clone)]
pub(crate) struct Published {
    pub records: Arc<Vec<pb::Record>>,
    pub workloads: Arc<Vec<pb::Workload>>,
    pub pods: Arc<Vec<pb::PodRef>>,
    pub origin: Arc<pb::Origin>,
    /// When the hub published it, Unix ns.
    pub at: u64,
}

impl Published {
    pub(crate) fn tables(&self) -> Tables<'_> {
        Tables { node: &self.origin.node, workloads: &self.workloads, pods: &self.pods }
    }
}

pub(crate) struct Subscriber {
    tx: mpsc::UnboundedSender<Published>,
    /// Records queued (before filtering) and not yet gone through: the bound.
    buffered: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

/// What happened when a batch was offered to a subscriber.
pub(crate) enum Offer {
    Queued,
    /// The consumer is gone.
    Closed,
    /// The consumer fell behind its bound and is dropped.
    Lagged,
}

impl Subscriber {
    pub(crate) fn new(filter: Filter) -> (Arc<Self>, Subscription) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lagged = Arc::new(AtomicBool::new(false));
        let buffered = Arc::new(AtomicUsize::new(0));
        let sub = Arc::new(Subscriber { tx, buffered: buffered.clone(), lagged: lagged.clone() });
        (sub, Subscription { rx, buffered, filter, current: None, lagged })
    }

    /// Queues a batch. A consumer with nothing queued always takes the next
    /// batch, however large: only falling behind counts as slowness.
    pub(crate) fn offer(&self, batch: &Published, bound: usize) -> Offer {
        let n = batch.records.len();
        let buffered = self.buffered.load(Ordering::Acquire);
        if buffered > 0 && buffered + n > bound {
            self.lagged.store(true, Ordering::Release);
            return Offer::Lagged;
        }
        self.buffered.fetch_add(n, Ordering::AcqRel);
        match self.tx.send(batch.clone()) {
            Ok(()) => Offer::Queued,
            Err(_) => Offer::Closed,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving side of one consumer.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Published>,
    buffered: Arc<AtomicUsize>,
    filter: Filter,
    current: Option<(Published, usize)>,
    /// Set when the hub dropped this consumer for falling behind.
    pub lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next record that passes the filter, standalone (references
    /// resolved), with its origin; `None` once the hub dropped this consumer
    /// (see `lagged`) and everything queued before was gone through.
    pub async fn recv(&mut self) -> Option<(pb::Record, Arc<pb::Origin>)> {
        loop {
            if let Some(r) = self.next_queued() {
                return Some(r);
            }
            let batch = self.rx.recv().await?;
            self.current = Some((batch, 0));
        }
    }

    /// The next record if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<(pb::Record, Arc<pb::Origin>)> {
        loop {
            if let Some(r) = self.next_queued() {
                return Some(r);
            }
            let batch = self.rx.try_recv().ok()?;
            self.current = Some((batch, 0));
        }
    }

    fn next_queued(&mut self) -> Option<(pb::Record, Arc<pb::Origin>)> {
        let (batch, next) = self.current.as_mut()?;
        let tables = batch.tables();
        while let Some(record) = batch.records.get(*next) {
            *next += 1;
            self.buffered.fetch_sub(1, Ordering::AcqRel);
            if self.filter.matches_in(record, &tables) {
                let mut record = record.clone();
                tables.resolve(&mut record);
                return Some((record, batch.origin.clone()));
            }
        }
        self.current = None;
        None
    }
}

/// The most recent batches, bounded in records.
pub(crate) struct History {
    batches: VecDeque<Published>,
    records: usize,
    bound: usize,
}

impl History {
    pub(crate) fn new(bound: usize) -> Self {
        Self { batches: VecDeque::new(), records: 0, bound }
    }

    pub(crate) fn push(&mut self, batch: &Published) {
        if self.bound == 0 {
            return;
        }
        self.records += batch.records.len();
        self.batches.push_back(batch.clone());
        while self.records > self.bound {
            match self.batches.pop_front() {
                Some(old) => self.records -= old.records.len(),
                None => break,
            }
        }
    }

    pub(crate) fn since(&self, at: u64) -> impl Iterator<Item = &Published> {
        self.batches.iter().filter(move |b| b.at >= at)
    }
}

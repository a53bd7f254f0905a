//! Delivery to Observe consumers: one batch's records are shared by every
//! consumer (each gets the positions its filter selected), each consumer's
//! queue is bounded in records, and a bounded history lets a new consumer
//! start with what arrived recently.

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

struct Queued {
    batch: Published,
    selected: Vec<u32>,
}

pub(crate) struct Subscriber {
    filter: Filter,
    tx: mpsc::UnboundedSender<Queued>,
    /// Records queued and not yet taken by the consumer (the bound).
    buffered: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

/// What happened when a batch was offered to a subscriber.
pub(crate) enum Offer {
    /// Queued this many records (possibly 0: nothing matched).
    Queued(usize),
    /// The consumer is gone.
    Closed,
    /// The consumer fell behind its bound and is dropped.
    Lagged,
}

impl Subscriber {
    pub(crate) fn new(filter: Filter) -> (Self, Subscription) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lagged = Arc::new(AtomicBool::new(false));
        let buffered = Arc::new(AtomicUsize::new(0));
        let sub = Subscriber { filter, tx, buffered: buffered.clone(), lagged: lagged.clone() };
        (sub, Subscription { rx, buffered, current: None, lagged })
    }

    /// Queues the records of `batch` this consumer selects. A consumer with
    /// nothing queued always takes the next batch, however large: only falling
    /// behind counts as slowness.
    pub(crate) fn offer(&self, batch: &Published, bound: usize) -> Offer {
        let tables = batch.tables();
        let selected: Vec<u32> = batch
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| self.filter.matches_in(r, &tables))
            .map(|(i, _)| i as u32)
            .collect();
        if selected.is_empty() {
            return if self.tx.is_closed() { Offer::Closed } else { Offer::Queued(0) };
        }
        let n = selected.len();
        let buffered = self.buffered.load(Ordering::Acquire);
        if buffered > 0 && buffered + n > bound {
            self.lagged.store(true, Ordering::Release);
            return Offer::Lagged;
        }
        self.buffered.fetch_add(n, Ordering::AcqRel);
        match self.tx.send(Queued { batch: batch.clone(), selected }) {
            Ok(()) => Offer::Queued(n),
            Err(_) => Offer::Closed,
        }
    }
}

/// The receiving side of one consumer.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Queued>,
    buffered: Arc<AtomicUsize>,
    current: Option<(Published, std::vec::IntoIter<u32>)>,
    /// Set when the hub dropped this consumer for falling behind.
    pub lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next record and its origin; `None` once the hub dropped this
    /// consumer (see `lagged`) and everything queued before was taken.
    pub async fn recv(&mut self) -> Option<(pb::Record, Arc<pb::Origin>)> {
        loop {
            if let Some(r) = self.next_buffered() {
                return Some(r);
            }
            let q = self.rx.recv().await?;
            self.current = Some((q.batch, q.selected.into_iter()));
        }
    }

    /// The next record if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<(pb::Record, Arc<pb::Origin>)> {
        loop {
            if let Some(r) = self.next_buffered() {
                return Some(r);
            }
            let q = self.rx.try_recv().ok()?;
            self.current = Some((q.batch, q.selected.into_iter()));
        }
    }

    /// A standalone copy of the next selected record: consumers never see
    /// the batch's references.
    fn next_buffered(&mut self) -> Option<(pb::Record, Arc<pb::Origin>)> {
        let (batch, selected) = self.current.as_mut()?;
        let i = selected.next()?;
        self.buffered.fetch_sub(1, Ordering::AcqRel);
        let mut record = batch.records.get(i as usize)?.clone();
        batch.tables().resolve(&mut record);
        Some((record, batch.origin.clone()))
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

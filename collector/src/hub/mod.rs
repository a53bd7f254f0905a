//! The collector's core: admits node batches (deduplicated by agent run and
//! sequence), keeps per-node state, and publishes records to Observe
//! consumers (see [`fanout`]), to the top-talker and per-workload views and
//! to the findings store. Ingest never waits for a consumer.
//!
//! Admission and publication are separate steps so that a durable collector
//! can persist what it admitted before anyone sees it (see `dedup`).

mod fanout;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

pub use fanout::Subscription;
use fanout::{History, Offer, Published, Subscriber};
use podlens_proto::{compact::Tables, v1 as pb};

use crate::{
    filter::Filter,
    findings::{Findings, FindingsFilter, DEFAULT_MAX_FINDINGS, DEFAULT_RETENTION},
    policy::{detector::PolicyDetector, emit::PendingFindings},
    talkers::Talkers,
    workloads::Workloads,
};

/// Records queued per consumer before it counts as too slow.
pub const DEFAULT_CONSUMER_BUFFER: usize = 131_072;
/// Records kept for consumers that ask for recent history.
pub const DEFAULT_HISTORY_RECORDS: usize = 100_000;
/// Consumers connected at once.
pub const DEFAULT_MAX_CONSUMERS: usize = 256;
/// Agent runs remembered per node (rollouts briefly overlap two).
const RUNS_PER_NODE: usize = 4;

/// What admission decided about one batch. `acked` is the cumulative
/// acknowledgement of the batch's agent run: every sequence up to it is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    Accepted {
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
            IngestOutcome::Accepted { acked } | IngestOutcome::Duplicate { acked } => *acked,
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
    #[error("batch {sequence}: {source}")]
    BadReference { sequence: u64, source: podlens_proto::compact::BadReference },
    #[error("batch {sequence}: records[{record}] claims node {claimed:?} in a batch of node {node:?}")]
    ForeignNode { sequence: u64, record: usize, claimed: String, node: String },
}

impl IngestError {
    /// The sequence of the refused batch, when it has one.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            IngestError::BadReference { sequence, .. } | IngestError::ForeignNode { sequence, .. } => Some(*sequence),
            IngestError::ZeroSequence => Some(0),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} Observe consumers are connected already (--max-consumers)")]
pub struct TooManyConsumers(pub usize);

/// One agent run of a node: (boot_id, epoch) and how far it got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub boot_id: String,
    pub agent_epoch_unix_nano: u64,
    pub last_sequence: u64,
}

/// Per-node bookkeeping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeState {
    /// The identity of the node's newest agent run.
    pub identity: pb::NodeIdentity,
    /// Highest sequence admitted for the newest run.
    pub last_sequence: u64,
    /// Recent runs, newest last.
    pub runs: Vec<Run>,
    pub batches: u64,
    pub records: u64,
    pub duplicates: u64,
    /// Sequences skipped within a run (the agent reports what it dropped in-band).
    pub gaps: u64,
    /// When the last batch arrived, Unix ns.
    pub last_batch_unix_nano: u64,
    /// The last batch, or when the node was restored from disk: what the
    /// node retention counts from.
    pub last_seen_unix_nano: u64,
    /// The node's latest loss report.
    pub losses: Option<pb::LossReport>,
}

impl NodeState {
    fn run_mut(&mut self, id: &pb::NodeIdentity) -> Option<&mut Run> {
        self.runs.iter_mut().find(|r| r.boot_id == id.boot_id && r.agent_epoch_unix_nano == id.agent_epoch_unix_nano)
    }

    fn add_run(&mut self, id: &pb::NodeIdentity, last_sequence: u64) {
        self.runs.push(Run {
            boot_id: id.boot_id.clone(),
            agent_epoch_unix_nano: id.agent_epoch_unix_nano,
            last_sequence,
        });
        self.runs.sort_by_key(|r| r.agent_epoch_unix_nano);
        if self.runs.len() > RUNS_PER_NODE {
            self.runs.remove(0);
        }
    }

    fn refresh_identity(&mut self, id: &pb::NodeIdentity) {
        if id.agent_epoch_unix_nano >= self.identity.agent_epoch_unix_nano {
            self.identity = id.clone();
        }
        let newest = self.runs.last().map_or(0, |r| r.last_sequence);
        self.last_sequence = newest;
    }
}

/// Counters of the hub itself.
#[derive(Debug, Default)]
pub struct HubStats {
    pub consumers_dropped: AtomicU64,
    pub records_fanned_out: AtomicU64,
    /// Batches refused as invalid.
    pub batches_rejected: AtomicU64,
    /// Ingest streams that ended with an error (disconnects, undecodable messages).
    pub streams_failed: AtomicU64,
    /// Nodes forgotten after the node retention without a batch.
    pub nodes_forgotten: AtomicU64,
}

pub struct Hub {
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Consumers and the history, under one lock: a new consumer gets the
    /// history and then every later batch, with no gap and no repeat.
    delivery: Mutex<(Vec<Arc<Subscriber>>, History)>,
    talkers: Mutex<Talkers>,
    workloads: Mutex<Workloads>,
    findings: Mutex<Findings>,
    /// Classifies flows against the cluster's NetworkPolicies, when a cluster view is configured.
    policy: Mutex<Option<PolicyRun>>,
    /// Held from numbering a batch of policy findings until it is delivered,
    /// so batches rendered outside the detector lock still reach the store
    /// and consumers in sequence order.
    policy_emit: Mutex<()>,
    consumer_buffer: usize,
    max_consumers: usize,
    pub stats: HubStats,
}

/// How often policy findings are refreshed in the findings store (ns of traffic time).
pub const POLICY_FINDINGS_EVERY: u64 = 5_000_000_000;
/// The node name policy findings carry: they are about the cluster, not one node.
pub const POLICY_NODE: &str = "cluster";

struct PolicyRun {
    detector: PolicyDetector,
    epoch: u64,
    last_emit: u64,
    /// Of the batches of policy findings handed to consumers.
    sequence: u64,
}

/// Changed policy findings, numbered, not yet rendered.
struct PolicyBatch<'a> {
    pending: PendingFindings,
    epoch: u64,
    sequence: u64,
    _order: MutexGuard<'a, ()>,
}

fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Hub {
    pub fn new(consumer_buffer: usize) -> Self {
        Self::with_limits(consumer_buffer, DEFAULT_HISTORY_RECORDS.min(consumer_buffer), DEFAULT_MAX_CONSUMERS)
    }

    /// A hub whose history is at most `consumer_buffer` records, so a new
    /// consumer always has room for it.
    pub fn with_limits(consumer_buffer: usize, history_records: usize, max_consumers: usize) -> Self {
        Self {
            nodes: Mutex::new(HashMap::new()),
            delivery: Mutex::new((Vec::new(), History::new(history_records.min(consumer_buffer)))),
            // 15 minutes, 50 000 talkers a minute
            talkers: Mutex::new(Talkers::new(15, 50_000)),
            // 15 minutes, 20 000 workloads a minute
            workloads: Mutex::new(Workloads::new(15, 20_000)),
            findings: Mutex::new(Findings::new(DEFAULT_MAX_FINDINGS, DEFAULT_RETENTION)),
            policy: Mutex::new(None),
            policy_emit: Mutex::new(()),
            consumer_buffer: consumer_buffer.max(1),
            max_consumers,
            stats: HubStats::default(),
        }
    }

    /// Keeps at most `max` findings, none that ended more than `retention` ago.
    pub fn with_findings_limits(self, max: usize, retention: std::time::Duration) -> Self {
        Self { findings: Mutex::new(Findings::new(max, retention)), ..self }
    }

    /// Turns the policy detector on; its findings join the others every
    /// `POLICY_FINDINGS_EVERY` of published traffic.
    pub fn set_policy_detector(&self, d: PolicyDetector) {
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(PolicyRun { detector: d, epoch: now_unix_nanos(), last_emit: 0, sequence: 0 });
    }

    /// Runs `f` on the policy detector, if there is one (reloads, persistence).
    pub fn with_policy_detector<T>(&self, f: impl FnOnce(&mut PolicyDetector) -> T) -> Option<T> {
        self.policy.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map(|p| f(&mut p.detector))
    }

    /// Feeds the policy detector; every [`POLICY_FINDINGS_EVERY`] takes its
    /// changed findings, numbered, with the emit lock that orders them.
    fn run_policy(&self, records: &[pb::Record], tables: &Tables<'_>, now: u64) -> Option<PolicyBatch<'_>> {
        let mut guard = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        let run = guard.as_mut()?;
        run.detector.observe(records, tables, now);
        if now.saturating_sub(run.last_emit) < POLICY_FINDINGS_EVERY {
            return None;
        }
        run.last_emit = now;
        let pending = run.detector.findings(now);
        if pending.is_empty() {
            // nothing changed: no empty batch, and no hole in the origin sequence
            return None;
        }
        run.sequence += 1;
        // taken before the detector lock is released: the next batch cannot
        // overtake this one while it renders
        let order = self.policy_emit.lock().unwrap_or_else(|e| e.into_inner());
        Some(PolicyBatch { pending, epoch: run.epoch, sequence: run.sequence, _order: order })
    }

    /// Renders a batch of policy findings (suggestions are YAML built from the
    /// observed flows: not under the detector lock), stores and delivers it.
    fn emit_policy(&self, batch: PolicyBatch<'_>, now: u64) {
        let found: Vec<pb::Record> = batch
            .pending
            .render()
            .into_iter()
            .map(|f| pb::Record {
                node: POLICY_NODE.into(),
                kind: Some(pb::record::Kind::Finding(f)),
                ..Default::default()
            })
            .collect();
        self.findings.lock().unwrap_or_else(|e| e.into_inner()).add(&found, &Tables::default(), batch.epoch, now);
        self.deliver(&Published {
            origin: Arc::new(pb::Origin {
                node: POLICY_NODE.into(),
                boot_id: String::new(),
                agent_epoch_unix_nano: batch.epoch,
                sequence: batch.sequence,
            }),
            records: Arc::new(found),
            workloads: Arc::new(Vec::new()),
            pods: Arc::new(Vec::new()),
            at: now,
        });
    }

    /// Restores what a previous collector run admitted, so replays are recognised.
    pub fn restore(&self, node: pb::NodeIdentity, last_sequence: u64) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let state = nodes.entry(node.name.clone()).or_default();
        state.add_run(&node, last_sequence);
        state.refresh_identity(&node);
        // a full retention from now: its agent may be about to reconnect and replay
        state.last_seen_unix_nano = state.last_seen_unix_nano.max(now_unix_nanos());
    }

    /// Forgets the nodes not seen since `cutoff` (Unix ns): their counters,
    /// loss report and run bookkeeping (a replay of theirs would be admitted
    /// again). Node names come and go with node pools; without this every
    /// name ever seen would stay in memory and on /metrics. Returns the names.
    pub fn forget_nodes_idle_since(&self, cutoff: u64) -> Vec<String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> =
            nodes.iter().filter(|(_, n)| n.last_seen_unix_nano < cutoff).map(|(name, _)| name.clone()).collect();
        for name in &gone {
            nodes.remove(name);
        }
        self.stats.nodes_forgotten.fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone
    }

    /// Admits and publishes a batch (for callers that persist nothing).
    pub fn ingest(&self, batch: pb::Batch) -> Result<IngestOutcome, IngestError> {
        let outcome = self.admit(&batch)?;
        if let IngestOutcome::Accepted { .. } = outcome {
            self.publish(batch);
        }
        Ok(outcome)
    }

    /// Checks a batch and records it in the node's state; does not publish.
    pub fn admit(&self, batch: &pb::Batch) -> Result<IngestOutcome, IngestError> {
        let result = self.check_and_record(batch);
        if result.is_err() {
            self.stats.batches_rejected.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn check_and_record(&self, batch: &pb::Batch) -> Result<IngestOutcome, IngestError> {
        let node = batch.node.as_ref().ok_or(IngestError::NoNode)?;
        if node.name.is_empty() {
            return Err(IngestError::EmptyNodeName);
        }
        if batch.sequence == 0 {
            return Err(IngestError::ZeroSequence);
        }
        Tables::of(batch)
            .check(&batch.records)
            .map_err(|source| IngestError::BadReference { sequence: batch.sequence, source })?;
        if let Some((i, r)) = batch.records.iter().enumerate().find(|(_, r)| !r.node.is_empty() && r.node != node.name)
        {
            return Err(IngestError::ForeignNode {
                sequence: batch.sequence,
                record: i,
                claimed: r.node.clone(),
                node: node.name.clone(),
            });
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let state = nodes.entry(node.name.clone()).or_default();
        let acked = match state.run_mut(node) {
            Some(run) if batch.sequence <= run.last_sequence => {
                let acked = run.last_sequence;
                state.duplicates += 1;
                return Ok(IngestOutcome::Duplicate { acked });
            }
            Some(run) => {
                let gaps = batch.sequence - run.last_sequence - 1;
                run.last_sequence = batch.sequence;
                state.gaps += gaps;
                batch.sequence
            }
            // A run never seen: a new agent (starting at 1), or one whose
            // start this collector did not see; either way no gap is known.
            None => {
                state.add_run(node, batch.sequence);
                batch.sequence
            }
        };
        state.refresh_identity(node);
        state.batches += 1;
        state.records += batch.records.len() as u64;
        state.last_batch_unix_nano = now_unix_nanos();
        state.last_seen_unix_nano = state.last_batch_unix_nano;
        let latest_loss = batch.records.iter().rev().find_map(|r| match &r.kind {
            Some(pb::record::Kind::Loss(l)) => Some(l.clone()),
            _ => None,
        });
        if latest_loss.is_some() {
            state.losses = latest_loss;
        }
        Ok(IngestOutcome::Accepted { acked })
    }

    /// Hands an admitted batch's records to the top-talker and per-workload
    /// views, the findings store, the history and every consumer.
    pub fn publish(&self, batch: pb::Batch) {
        let now = now_unix_nanos();
        let tables = Tables::of(&batch);
        self.talkers.lock().unwrap_or_else(|e| e.into_inner()).add(&batch.records, &tables, now);
        self.workloads.lock().unwrap_or_else(|e| e.into_inner()).add(&batch.records, &tables, now);
        let agent_epoch = batch.node.as_ref().map_or(0, |n| n.agent_epoch_unix_nano);
        self.findings.lock().unwrap_or_else(|e| e.into_inner()).add(&batch.records, &tables, agent_epoch, now);
        let policy = self.run_policy(&batch.records, &tables, now);
        let node = batch.node.unwrap_or_default();
        let published = Published {
            origin: Arc::new(pb::Origin {
                node: node.name,
                boot_id: node.boot_id,
                agent_epoch_unix_nano: node.agent_epoch_unix_nano,
                sequence: batch.sequence,
            }),
            records: Arc::new(batch.records),
            workloads: Arc::new(batch.workloads),
            pods: Arc::new(batch.pods),
            at: now,
        };
        self.deliver(&published);
        if let Some(p) = policy {
            self.emit_policy(p, now);
        }
    }

    /// Adds to the history and offers to every consumer.
    fn deliver(&self, published: &Published) {
        // Only the history push and the snapshot of consumers happen under
        // the lock; offering (constant work per consumer) happens outside.
        let subs: Vec<Arc<Subscriber>> = {
            let mut delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
            delivery.1.push(published);
            delivery.0.clone()
        };
        let mut gone: Vec<*const Subscriber> = Vec::new();
        for s in &subs {
            match s.offer(published, self.consumer_buffer) {
                Offer::Queued => {
                    self.stats.records_fanned_out.fetch_add(published.records.len() as u64, Ordering::Relaxed);
                }
                Offer::Closed => gone.push(Arc::as_ptr(s)),
                Offer::Lagged => {
                    self.stats.consumers_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(buffer = self.consumer_buffer, "observe consumer too slow; disconnecting it");
                    gone.push(Arc::as_ptr(s));
                }
            }
        }
        if !gone.is_empty() {
            let mut delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
            delivery.0.retain(|s| !gone.contains(&Arc::as_ptr(s)));
        }
    }

    /// The `limit` top talkers (see [`Talkers::top`]).
    pub fn top_talkers(&self, limit: usize, namespaces: &[String], since: u64) -> (Vec<pb::TopTalker>, u64) {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner()).top(limit, namespaces, since)
    }

    /// Flow records the top-talker view could not keep.
    pub fn talkers_dropped(&self) -> u64 {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }

    /// Per-workload summaries (see [`Workloads::top`]).
    pub fn top_workloads(
        &self,
        limit: usize,
        namespaces: &[String],
        since: u64,
        sort: pb::TopSort,
    ) -> (Vec<pb::WorkloadSummary>, u64) {
        self.workloads.lock().unwrap_or_else(|e| e.into_inner()).top(limit, namespaces, since, sort)
    }

    /// Records the per-workload view could not keep.
    pub fn workloads_dropped(&self) -> u64 {
        self.workloads.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }

    /// Findings from every node (see [`Findings::query`]).
    pub fn findings(&self, filter: &FindingsFilter, limit: usize) -> pb::FindingsResponse {
        self.findings.lock().unwrap_or_else(|e| e.into_inner()).query(filter, limit, now_unix_nanos())
    }

    /// Findings held now, and those evicted since start because the store was full.
    pub fn findings_stats(&self) -> (usize, u64) {
        let f = self.findings.lock().unwrap_or_else(|e| e.into_inner());
        (f.len(), f.evicted)
    }

    /// A new consumer; with `since` > 0 it first gets the retained batches
    /// published since then (Unix ns).
    pub fn subscribe(&self, filter: Filter, since: u64) -> Result<Subscription, TooManyConsumers> {
        let (sub, subscription) = Subscriber::new(filter);
        let mut delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let (subs, history) = &mut *delivery;
        subs.retain(|s| !s.is_closed());
        if subs.len() >= self.max_consumers {
            return Err(TooManyConsumers(subs.len()));
        }
        if since > 0 {
            // references only: the history is at most the consumer bound
            for b in history.since(since) {
                let _ = sub.offer(b, usize::MAX);
            }
        }
        subs.push(sub);
        Ok(subscription)
    }

    /// Ends every consumer's stream once it has gone through what is queued.
    pub fn close_consumers(&self) {
        self.delivery.lock().unwrap_or_else(|e| e.into_inner()).0.clear();
    }

    pub fn consumers(&self) -> usize {
        let mut delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        delivery.0.retain(|s| !s.is_closed());
        delivery.0.len()
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
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_are_discarded_per_node_run() {
        let hub = Hub::new(16);
        assert_eq!(hub.ingest(batch("a", 1, 1, 2)), Ok(IngestOutcome::Accepted { acked: 1 }));
        assert_eq!(hub.ingest(batch("a", 1, 2, 1)), Ok(IngestOutcome::Accepted { acked: 2 }));
        assert_eq!(hub.ingest(batch("a", 1, 2, 1)), Ok(IngestOutcome::Duplicate { acked: 2 }));
        assert_eq!(hub.ingest(batch("a", 1, 1, 2)), Ok(IngestOutcome::Duplicate { acked: 2 }));
        // another node with the same sequence is not a duplicate
        assert_eq!(hub.ingest(batch("b", 1, 1, 1)), Ok(IngestOutcome::Accepted { acked: 1 }));
        // a restarted agent starts again at 1
        assert_eq!(hub.ingest(batch("a", 2, 1, 1)), Ok(IngestOutcome::Accepted { acked: 1 }));
        let a = hub.nodes().into_iter().find(|n| n.identity.name == "a").unwrap();
        assert_eq!((a.batches, a.records, a.duplicates, a.gaps), (3, 4, 2, 0));
    }

    #[test]
    fn nodes_idle_beyond_the_retention_are_forgotten() {
        let hub = Hub::new(16);
        hub.ingest(batch("old", 1, 1, 1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let cutoff = now_unix_nanos();
        std::thread::sleep(std::time::Duration::from_millis(2));
        hub.ingest(batch("new", 1, 1, 1)).unwrap();
        // restored from disk before the cutoff's time: kept, its agent may be about to replay
        hub.restore(pb::NodeIdentity { name: "restored".into(), agent_epoch_unix_nano: 1, ..Default::default() }, 5);
        assert_eq!(hub.forget_nodes_idle_since(cutoff), vec!["old".to_string()]);
        let mut names: Vec<String> = hub.nodes().into_iter().map(|n| n.identity.name).collect();
        names.sort();
        assert_eq!(names, ["new", "restored"]);
        assert_eq!(hub.stats.nodes_forgotten.load(Ordering::Relaxed), 1);
        assert_eq!(hub.ingest(batch("restored", 1, 5, 1)), Ok(IngestOutcome::Duplicate { acked: 5 }));
        // what the node's runs were is gone with it
        assert_eq!(hub.ingest(batch("old", 1, 1, 1)), Ok(IngestOutcome::Accepted { acked: 1 }));
    }

    #[test]
    fn one_batch_larger_than_the_buffer_is_not_slowness() {
        let hub = Hub::new(100);
        let mut sub = hub.subscribe(Filter::default(), 0).unwrap();
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

    fn run(node: &str, epoch: u64, seq: u64) -> pb::Batch {
        batch(node, epoch, seq, 1)
    }

    #[test]
    fn two_runs_of_one_node_interleave_without_losing_deduplication() {
        let hub = Hub::new(16);
        assert_eq!(hub.ingest(run("a", 1, 1)), Ok(IngestOutcome::Accepted { acked: 1 }));
        assert_eq!(hub.ingest(run("a", 2, 1)), Ok(IngestOutcome::Accepted { acked: 1 }), "a new run during a rollout");
        assert_eq!(hub.ingest(run("a", 1, 2)), Ok(IngestOutcome::Accepted { acked: 2 }), "the old run is still going");
        assert_eq!(hub.ingest(run("a", 1, 2)), Ok(IngestOutcome::Duplicate { acked: 2 }));
        assert_eq!(hub.ingest(run("a", 2, 1)), Ok(IngestOutcome::Duplicate { acked: 1 }));
        let n = &hub.nodes()[0];
        assert_eq!((n.identity.agent_epoch_unix_nano, n.gaps, n.duplicates, n.runs.len()), (2, 0, 2, 2));
    }

    #[test]
    fn a_run_first_seen_mid_way_counts_no_gap() {
        let hub = Hub::new(16);
        assert_eq!(hub.ingest(run("a", 1, 40)), Ok(IngestOutcome::Accepted { acked: 40 }));
        assert_eq!(hub.nodes()[0].gaps, 0, "a collector without state cannot know what came before");
    }

    #[test]
    fn records_claiming_another_node_are_refused() {
        let hub = Hub::new(16);
        let mut b = run("a", 1, 1);
        b.records[0].node = "b".into();
        let err = hub.ingest(b).unwrap_err();
        assert_eq!(err.sequence(), Some(1));
        assert!(err.to_string().contains("\"b\""), "{err}");
    }

    #[test]
    fn the_number_of_consumers_is_bounded() {
        let hub = Hub::with_limits(16, 16, 2);
        let _a = hub.subscribe(Filter::default(), 0).unwrap();
        let b = hub.subscribe(Filter::default(), 0).unwrap();
        assert_eq!(hub.subscribe(Filter::default(), 0).err(), Some(TooManyConsumers(2)));
        drop(b);
        assert!(hub.subscribe(Filter::default(), 0).is_ok(), "a closed consumer frees its place");
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
        let mut slow = hub.subscribe(Filter::default(), 0).unwrap();
        let mut fast = hub.subscribe(Filter::default(), 0).unwrap();
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

#[cfg(test)]
mod history_tests {
    use super::*;

    fn batch(seq: u64, n: usize) -> pb::Batch {
        pb::Batch {
            node: Some(pb::NodeIdentity { name: "a".into(), agent_epoch_unix_nano: 7, ..Default::default() }),
            sequence: seq,
            records: (0..n)
                .map(|_| pb::Record {
                    node: "a".into(),
                    kind: Some(pb::record::Kind::Loss(Default::default())),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_late_consumer_gets_the_history_then_live_records_with_origins() {
        let hub = Hub::with_limits(1000, 5, 10);
        hub.ingest(batch(1, 3)).unwrap();
        hub.ingest(batch(2, 3)).unwrap();
        let mut late = hub.subscribe(Filter::default(), 1).unwrap();
        let mut live_only = hub.subscribe(Filter::default(), 0).unwrap();
        hub.ingest(batch(3, 1)).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| late.try_recv()).map(|(_, o)| o.sequence).collect();
        // history bounded to 5 records: batch 1 was evicted when batch 2 arrived
        assert_eq!(seqs, [2, 2, 2, 3]);
        let live: Vec<u64> = std::iter::from_fn(|| live_only.try_recv()).map(|(_, o)| o.sequence).collect();
        assert_eq!(live, [3]);
        let (_, origin) = hub.subscribe(Filter::default(), 1).unwrap().try_recv().unwrap();
        assert_eq!((origin.node.as_str(), origin.agent_epoch_unix_nano), ("a", 7));
    }

    #[test]
    fn admission_without_publication_still_deduplicates() {
        let hub = Hub::new(16);
        let mut sub = hub.subscribe(Filter::default(), 0).unwrap();
        assert_eq!(hub.admit(&batch(1, 1)), Ok(IngestOutcome::Accepted { acked: 1 }));
        assert_eq!(hub.admit(&batch(1, 1)), Ok(IngestOutcome::Duplicate { acked: 1 }));
        assert!(sub.try_recv().is_none(), "admitted, not yet published");
        hub.publish(batch(1, 1));
        assert!(sub.try_recv().is_some());
    }

    #[test]
    fn restored_state_recognises_replays() {
        let hub = Hub::new(16);
        hub.restore(pb::NodeIdentity { name: "a".into(), agent_epoch_unix_nano: 7, ..Default::default() }, 5);
        assert_eq!(hub.ingest(batch(5, 1)), Ok(IngestOutcome::Duplicate { acked: 5 }));
        assert_eq!(hub.ingest(batch(6, 1)), Ok(IngestOutcome::Accepted { acked: 6 }));
    }
}

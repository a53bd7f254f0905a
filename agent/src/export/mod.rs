//! The exporter: batches go into a bounded buffer and are streamed to the
//! collector, which acknowledges them; unacknowledged batches are replayed
//! after a reconnect, and what the bound forces out is counted exactly.

pub mod backoff;
pub mod buffer;
pub mod stream;

use std::sync::{
    atomic::{AtomicBool, AtomicU64},
    Arc, Mutex,
};

use podlens_proto::v1 as pb;
use tokio::sync::Notify;

use self::buffer::ExportBuffer;
use crate::pipeline::Sink;

/// State shared between the pipeline (producer) and the stream task.
pub struct Exporter {
    pub buffer: Mutex<ExportBuffer>,
    /// Something to send (a new batch, or room after an acknowledgement).
    pub notify: Notify,
    pub stream: StreamState,
}

/// The collector stream as the stream task last saw it.
#[derive(Debug, Default)]
pub struct StreamState {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
}

impl Exporter {
    pub fn new(buffer_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            buffer: Mutex::new(ExportBuffer::new(buffer_bytes)),
            notify: Notify::new(),
            stream: StreamState::default(),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ExportBuffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for Exporter {
    fn publish(&self, batch: pb::Batch) {
        self.lock().push(batch);
        self.notify.notify_one();
    }

    fn losses(&self) -> Vec<(&'static str, &'static str, u64)> {
        let (d, u, r, p) = {
            let b = self.lock();
            (b.dropped, b.unconfirmed, b.rejected, b.produced)
        };
        vec![
            ("export", "dropped_batches", d.batches),
            ("export", "dropped_records", d.contents.records),
            ("export", "dropped_flow_records", d.contents.flow_records),
            ("export", "dropped_flow_packets", d.contents.flow_packets),
            ("export", "dropped_flow_bytes", d.contents.flow_bytes),
            // sent but evicted before the acknowledgement: maybe delivered
            ("export", "unconfirmed_batches", u.batches),
            ("export", "unconfirmed_flow_packets", u.contents.flow_packets),
            ("export", "rejected_batches", r.batches),
            ("export", "rejected_flow_packets", r.contents.flow_packets),
            // What was produced before this report, so a consumer can check
            // received + dropped = produced.
            ("export_activity", "produced_batches", p.batches),
            ("export_activity", "produced_records", p.contents.records),
            ("export_activity", "produced_flow_packets", p.contents.flow_packets),
        ]
    }
}

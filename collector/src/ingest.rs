//! The Ingest gRPC service: agents stream batches, the collector answers with
//! cumulative acknowledgements. A malformed or invalid batch ends that stream
//! with an error status (naming the refused sequence, so the agent drops it
//! instead of resending it); other streams are unaffected. At shutdown every
//! stream ends with UNAVAILABLE and nothing more is acknowledged, so agents
//! replay to the next collector.

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures::Stream;
use podlens_proto::v1::{self as pb, ingest_server::Ingest};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    dedup::DedupStore,
    hub::{Hub, IngestOutcome},
};

/// Largest batch accepted (encoded). Agents split windows well below this.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Metadata key naming a batch refused for good (see ingest.proto).
pub const REJECTED_SEQUENCE: &str = "podlens-rejected-sequence";
/// Metadata key of a stream ended because of its age: reconnect at once.
pub const RECONNECT: &str = "podlens-reconnect";
/// How long an ingest stream lives by default (`--max-connection-age`), and
/// the age at which consumer connections are sent a GOAWAY.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);

pub struct IngestService {
    hub: Arc<Hub>,
    store: Option<Arc<DedupStore>>,
    shutdown: watch::Receiver<bool>,
    max_age: Duration,
}

impl IngestService {
    /// With a store, what is admitted is written to disk before it is
    /// acknowledged.
    pub fn new(hub: Arc<Hub>, store: Option<Arc<DedupStore>>, shutdown: watch::Receiver<bool>) -> Self {
        Self { hub, store, shutdown, max_age: DEFAULT_MAX_CONNECTION_AGE }
    }

    /// Streams end after `max_age` so that the agent connects again: the TLS
    /// handshake, and with it a rotated CA or a revoked certificate, applies
    /// to long-lived streams too.
    pub fn with_max_age(self, max_age: Duration) -> Self {
        Self { max_age, ..self }
    }
}

/// The end of a stream that reached its maximum age.
fn reconnect() -> Status {
    let mut status = Status::unavailable("stream reached the collector's --max-connection-age: reconnect");
    status.metadata_mut().insert(RECONNECT, tonic::metadata::MetadataValue::from_static("age"));
    status
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::Ack, Status>> + Send>>;

fn rejected(message: String, sequence: Option<u64>) -> Status {
    let mut status = Status::invalid_argument(message);
    if let Some(seq) = sequence.and_then(|s| s.to_string().parse().ok()) {
        status.metadata_mut().insert(REJECTED_SEQUENCE, seq);
    }
    status
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<pb::Batch>>) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let hub = self.hub.clone();
        let store = self.store.clone();
        let mut shutdown = self.shutdown.clone();
        let expiry = tokio::time::sleep(self.max_age);
        let (tx, rx) = mpsc::channel::<Result<pb::Ack, Status>>(64);
        tokio::spawn(async move {
            tokio::pin!(expiry);
            let mut node = String::new();
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("collector shutting down; replay to the next one"))).await;
                        break;
                    }
                    // what was sent after the last acknowledgement is replayed on the next stream
                    () = &mut expiry => {
                        tracing::debug!(?peer, node = %node, "ingest stream reached its maximum age");
                        let _ = tx.send(Err(reconnect())).await;
                        break;
                    }
                };
                let batch = match message {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        // A decode error or a broken connection: this stream only.
                        hub.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(?peer, node = %node, error = %status, "ingest stream ended with an error");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let name = batch.node.as_ref().map(|n| n.name.clone()).unwrap_or_default();
                if !node.is_empty() && name != node {
                    let message = format!("batch for node {name:?} on a stream of node {node:?}: one stream per node");
                    let _ = tx.send(Err(rejected(message, Some(batch.sequence)))).await;
                    break;
                }
                let ack = match hub.admit(&batch) {
                    Ok(IngestOutcome::Accepted { acked }) => {
                        node = name;
                        // Published before it is on disk: a crash in between
                        // makes the agent replay it, which consumers see twice
                        // under the same origin (and can drop), never zero times.
                        let (origin, sequence) = (batch.node.clone(), batch.sequence);
                        hub.publish(batch);
                        if let (Some(store), Some(n)) = (&store, &origin) {
                            store.admitted(n, sequence).await;
                        }
                        acked
                    }
                    Ok(IngestOutcome::Duplicate { acked }) => {
                        node = name;
                        // Not beyond what is on disk: the original may still be
                        // on its way there on another stream.
                        match (&store, &batch.node) {
                            (Some(store), Some(n)) => acked.min(store.durable(n)),
                            _ => acked,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(?peer, node = %name, error = %e, "batch refused");
                        let _ = tx.send(Err(rejected(e.to_string(), e.sequence()))).await;
                        break;
                    }
                };
                // Stop acknowledging once shutdown began: what the agent does
                // not see acknowledged it replays to the next collector.
                let stopping = *shutdown.borrow();
                if stopping || tx.send(Ok(pb::Ack { sequence: ack })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

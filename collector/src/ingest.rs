//! The Ingest gRPC service: agents stream batches, the collector answers with
//! cumulative acknowledgements. A malformed or invalid batch ends that stream
//! with an error status; other streams are unaffected.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use podlens_proto::v1::{self as pb, ingest_server::Ingest};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    dedup::DedupStore,
    hub::{Hub, IngestOutcome},
};

/// Largest batch accepted (encoded). Agents split windows well below this.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

pub struct IngestService {
    hub: Arc<Hub>,
    store: Option<Arc<DedupStore>>,
}

impl IngestService {
    /// With a store, what is admitted is written to disk before it is
    /// published or acknowledged.
    pub fn new(hub: Arc<Hub>, store: Option<Arc<DedupStore>>) -> Self {
        Self { hub, store }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<pb::Batch>>) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let hub = self.hub.clone();
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::Ack, Status>>(64);
        tokio::spawn(async move {
            let mut node = String::new();
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        // A decode error or a broken connection: this stream only.
                        hub.stats.batches_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(?peer, node = %node, error = %status, "ingest stream ended with an error");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let name = batch.node.as_ref().map(|n| n.name.clone()).unwrap_or_default();
                if !node.is_empty() && name != node {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "batch for node {name:?} on a stream of node {node:?}: one stream per node"
                        ))))
                        .await;
                    break;
                }
                match hub.admit(&batch) {
                    Ok(outcome) => {
                        node = name;
                        if let IngestOutcome::Accepted { .. } = outcome {
                            if let (Some(store), Some(n)) = (&store, &batch.node) {
                                store.admitted(n, batch.sequence).await;
                            }
                            hub.publish(batch);
                        }
                        if tx.send(Ok(pb::Ack { sequence: outcome.acked() })).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(?peer, node = %name, error = %e, "batch rejected");
                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

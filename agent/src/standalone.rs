//! Standalone mode: batches go straight into an in-process collector hub,
//! which serves the Observe API.

use std::sync::Arc;

use podlens_collector::hub::Hub;
use podlens_proto::v1 as pb;

use crate::pipeline::Sink;

pub struct HubSink(pub Arc<Hub>);

impl Sink for HubSink {
    fn publish(&self, batch: pb::Batch) {
        if let Err(e) = self.0.ingest(batch) {
            tracing::error!(error = %e, "embedded collector rejected a batch");
        }
    }
}

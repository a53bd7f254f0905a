//! The Query gRPC service over a [`Hub`]: status, top talkers, findings.

use std::sync::{atomic::Ordering, Arc};

use podlens_proto::v1::{self as pb, query_server::Query};
use tonic::{Request, Response, Status};

use crate::hub::Hub;

pub struct QueryService {
    hub: Arc<Hub>,
    version: String,
}

impl QueryService {
    pub fn new(hub: Arc<Hub>, version: impl Into<String>) -> Self {
        Self { hub, version: version.into() }
    }
}

fn limit(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(20),
        n if n > 1000 => Err(Status::invalid_argument(format!("limit {n} is above the maximum of 1000"))),
        n => Ok(n as usize),
    }
}

#[tonic::async_trait]
impl Query for QueryService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let mut nodes: Vec<pb::NodeStatus> = self
            .hub
            .nodes()
            .into_iter()
            .map(|n| pb::NodeStatus {
                node: Some(n.identity),
                last_sequence: n.last_sequence,
                batches: n.batches,
                records: n.records,
                duplicates: n.duplicates,
                gaps: n.gaps,
                last_batch_unix_nano: n.last_batch_unix_nano,
                losses: n.losses,
            })
            .collect();
        nodes.sort_by(|a, b| a.node.as_ref().map(|n| &n.name).cmp(&b.node.as_ref().map(|n| &n.name)));
        Ok(Response::new(pb::StatusResponse {
            version: self.version.clone(),
            nodes,
            consumers: self.hub.consumers() as u32,
            consumers_dropped: self.hub.stats.consumers_dropped.load(Ordering::Relaxed),
            batches_rejected: self.hub.stats.batches_rejected.load(Ordering::Relaxed),
        }))
    }

    async fn top_talkers(
        &self,
        request: Request<pb::TopTalkersRequest>,
    ) -> Result<Response<pb::TopTalkersResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit)?;
        let (talkers, retained_since) = self.hub.top_talkers(limit, &r.namespaces, r.since_unix_nano);
        Ok(Response::new(pb::TopTalkersResponse { talkers, retained_since_unix_nano: retained_since }))
    }

    async fn top(&self, request: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit)?;
        let sort = pb::TopSort::try_from(r.sort)
            .map_err(|_| Status::invalid_argument(format!("sort {} is not a TopSort value", r.sort)))?;
        let (workloads, retained_since) = self.hub.top_workloads(limit, &r.namespaces, r.since_unix_nano, sort);
        Ok(Response::new(pb::TopResponse { workloads, retained_since_unix_nano: retained_since }))
    }

    async fn findings(&self, _: Request<pb::FindingsRequest>) -> Result<Response<pb::FindingsResponse>, Status> {
        // No detector is enabled in this version: the list is empty, not stubbed.
        Ok(Response::new(pb::FindingsResponse::default()))
    }
}

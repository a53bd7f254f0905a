//! The Query gRPC service over a [`Hub`]: status, top talkers, findings.

use std::sync::{atomic::Ordering, Arc};

use podlens_proto::v1::{self as pb, query_server::Query};
use tonic::{Request, Response, Status};

use crate::{findings::FindingsFilter, hub::Hub};

/// Default sizes of answers, when a request leaves `limit` at 0.
const DEFAULT_TOP_LIMIT: usize = 20;
const DEFAULT_FINDINGS_LIMIT: usize = 100;

pub struct QueryService {
    hub: Arc<Hub>,
    version: String,
}

impl QueryService {
    pub fn new(hub: Arc<Hub>, version: impl Into<String>) -> Self {
        Self { hub, version: version.into() }
    }
}

fn limit(requested: u32, default: usize) -> Result<usize, Status> {
    match requested {
        0 => Ok(default),
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
        let limit = limit(r.limit, DEFAULT_TOP_LIMIT)?;
        let (talkers, retained_since) = self.hub.top_talkers(limit, &r.namespaces, r.since_unix_nano);
        Ok(Response::new(pb::TopTalkersResponse { talkers, retained_since_unix_nano: retained_since }))
    }

    async fn top(&self, request: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit, DEFAULT_TOP_LIMIT)?;
        let sort = pb::TopSort::try_from(r.sort)
            .map_err(|_| Status::invalid_argument(format!("sort {} is not a TopSort value", r.sort)))?;
        let (workloads, retained_since) = self.hub.top_workloads(limit, &r.namespaces, r.since_unix_nano, sort);
        Ok(Response::new(pb::TopResponse { workloads, retained_since_unix_nano: retained_since }))
    }

    async fn findings(&self, request: Request<pb::FindingsRequest>) -> Result<Response<pb::FindingsResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit, DEFAULT_FINDINGS_LIMIT)?;
        let filter = findings_filter(r)?;
        Ok(Response::new(self.hub.findings(&filter, limit)))
    }

    async fn policy_report(
        &self,
        request: Request<pb::PolicyReportRequest>,
    ) -> Result<Response<pb::PolicyReportResponse>, Status> {
        let r = request.into_inner();
        let report = self.hub.with_policy_detector(|d| d.report(&r.namespaces)).unwrap_or_default();
        Ok(Response::new(report))
    }
}

fn findings_filter(r: pb::FindingsRequest) -> Result<FindingsFilter, Status> {
    let mut kinds = Vec::new();
    for (index, &value) in r.kinds.iter().enumerate() {
        match pb::FindingKind::try_from(value) {
            Ok(pb::FindingKind::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!("kinds[{index}]: unknown finding kind {value}")))
            }
            Ok(k) => kinds.push(k),
        }
    }
    if let Some(index) = r.namespaces.iter().position(String::is_empty) {
        return Err(Status::invalid_argument(format!("namespaces[{index}]: empty string")));
    }
    Ok(FindingsFilter { since: r.since_unix_nano, namespaces: r.namespaces, kinds, node: r.node })
}

#[cfg(test)]
mod tests {
    use podlens_proto::v1::finding::Detail;

    use super::*;

    fn service() -> (Arc<Hub>, QueryService) {
        let hub = Arc::new(Hub::new(16));
        (hub.clone(), QueryService::new(hub, "test"))
    }

    fn finding(id: &str, ns: &str, end: u64) -> pb::Record {
        pb::Record {
            kind: Some(pb::record::Kind::Finding(pb::Finding {
                id: id.into(),
                kind: pb::FindingKind::NoisyNeighbour as i32,
                state: pb::FindingState::Open as i32,
                end_unix_nano: end,
                detail: Some(Detail::NoisyNeighbour(pb::NoisyNeighbour {
                    victim: Some(pb::Workload {
                        kind: Some(pb::workload::Kind::Pod(pb::PodRef { namespace: ns.into(), ..Default::default() })),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn findings_of_published_batches_are_served_with_limits_and_filters() {
        let (hub, q) = service();
        // ends in the recent past, so retention keeps them
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let records =
            (0..150).map(|i| finding(&format!("f{i}"), if i % 2 == 0 { "shop" } else { "db" }, now - i)).collect();
        let batch = pb::Batch {
            node: Some(pb::NodeIdentity { name: "n1".into(), ..Default::default() }),
            sequence: 1,
            records,
            ..Default::default()
        };
        hub.ingest(batch).unwrap();
        let r = q.findings(Request::new(pb::FindingsRequest::default())).await.unwrap().into_inner();
        assert_eq!(r.findings.len(), 100, "the default limit");
        assert_eq!((r.findings[0].node.as_str(), r.findings[0].finding.as_ref().unwrap().id.as_str()), ("n1", "f0"));
        let shop = pb::FindingsRequest { namespaces: vec!["shop".into()], limit: 1000, ..Default::default() };
        assert_eq!(q.findings(Request::new(shop)).await.unwrap().into_inner().findings.len(), 75);
        let too_many = pb::FindingsRequest { limit: 1001, ..Default::default() };
        assert_eq!(q.findings(Request::new(too_many)).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let bad_kind = pb::FindingsRequest { kinds: vec![1, 0], ..Default::default() };
        let err = q.findings(Request::new(bad_kind)).await.unwrap_err();
        assert_eq!(err.message(), "kinds[1]: unknown finding kind 0");
    }
}

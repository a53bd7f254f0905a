//! /metrics (Prometheus text format), /healthz and /readyz for the collector,
//! built from the hub's state at scrape time.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{hub::Hub, server::ListenerStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LossLabel {
    node: String,
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone)]
pub struct MetricsState {
    pub hub: Arc<Hub>,
    pub listeners: Vec<(&'static str, Arc<ListenerStats>)>,
    /// Policy findings come from the Kubernetes API: the detector starts once
    /// every kind was listed (exported as `cluster_view_ready`; readiness does
    /// not wait for it, as ingest and consumers do not need it).
    pub needs_cluster_view: bool,
}

/// Registers a counter holding `value` (a snapshot taken at scrape time).
pub fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// Registers a gauge holding `value`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The whole exposition, from a snapshot of the hub.
pub fn render(state: &MetricsState) -> String {
    let mut r = Registry::with_prefix("podlens_collector");
    let hub = &state.hub;
    let nodes = hub.nodes();
    gauge(&mut r, "nodes", "Nodes that sent a batch within the node retention", nodes.len() as i64);
    counter(
        &mut r,
        "nodes_forgotten",
        "Nodes forgotten (with their per-node series) after the node retention without a batch",
        hub.stats.nodes_forgotten.load(Ordering::Relaxed),
    );
    gauge(&mut r, "consumers", "Observe consumers connected", hub.consumers() as i64);
    counter(
        &mut r,
        "consumers_dropped",
        "Observe consumers disconnected for falling behind",
        hub.stats.consumers_dropped.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "records_fanned_out",
        "Records handed to Observe consumers",
        hub.stats.records_fanned_out.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "batches_rejected",
        "Batches rejected as invalid or undecodable",
        hub.stats.batches_rejected.load(Ordering::Relaxed),
    );
    counter(&mut r, "talkers_dropped", "Flow records the top-talker view had no room for", hub.talkers_dropped());
    counter(&mut r, "workloads_dropped", "Records the per-workload view had no room for", hub.workloads_dropped());
    let (findings, findings_evicted) = hub.findings_stats();
    gauge(&mut r, "findings", "Findings held (latest report of each episode)", findings as i64);
    counter(&mut r, "findings_evicted", "Findings evicted because the findings store was full", findings_evicted);

    if state.needs_cluster_view {
        let ready = hub.with_policy_detector(|_| ()).is_some();
        gauge(
            &mut r,
            "cluster_view_ready",
            "The Kubernetes API was listed and the policy detector runs (1)",
            i64::from(ready),
        );
    }
    if let Some(p) = hub.with_policy_detector(|d| d.stats()) {
        gauge(&mut r, "policy_gaps", "Policy-gap findings held by the detector", p.gaps as i64);
        counter(&mut r, "policy_gaps_dropped", "Flows that would have started a gap finding when full", p.gaps_dropped);
        counter(&mut r, "policy_gaps_expired", "Gap findings forgotten after the retention", p.gaps_expired);
        gauge(&mut r, "policy_workloads", "Workloads whose flows feed suggested policies", p.observed_workloads as i64);
        counter(
            &mut r,
            "policy_observed_dropped",
            "Flows, pods or workloads the suggestion memory had no room for",
            p.observed_dropped,
        );
        counter(&mut r, "policy_coverage_dropped", "Flow ends the coverage report had no room for", p.coverage_dropped);
        counter(
            &mut r,
            "policy_unknown_pod_addresses",
            "Flow records whose other end is a pod-network address no pod of the cluster view had (not judged)",
            p.unknown_pod_addresses,
        );
        counter(
            &mut r,
            "policy_node_address_flows",
            "Flows to a node's own address (not treated as external egress)",
            p.node_address_flows,
        );
        counter(
            &mut r,
            "policy_host_network_records",
            "Flow records of host-network pods, which NetworkPolicies do not select (left out)",
            p.host_network_records,
        );
        counter(
            &mut r,
            "policy_unreadable_records",
            "Flow records the policy detector left out because an address did not parse",
            p.unreadable_records,
        );
        gauge(&mut r, "egress_baseline_workloads", "Workloads in the egress baseline", p.baseline_workloads as i64);
        counter(
            &mut r,
            "egress_baseline_dropped",
            "Workloads and destinations the egress baseline had no room for",
            p.baseline_dropped,
        );
    }

    let batches = Family::<NodeLabel, Counter>::default();
    let records = Family::<NodeLabel, Counter>::default();
    let duplicates = Family::<NodeLabel, Counter>::default();
    let gaps = Family::<NodeLabel, Counter>::default();
    let last = Family::<NodeLabel, Gauge>::default();
    let losses = Family::<LossLabel, Counter>::default();
    for n in &nodes {
        let l = NodeLabel { node: n.identity.name.clone() };
        batches.get_or_create(&l).inc_by(n.batches);
        records.get_or_create(&l).inc_by(n.records);
        duplicates.get_or_create(&l).inc_by(n.duplicates);
        gaps.get_or_create(&l).inc_by(n.gaps);
        last.get_or_create(&l).set((n.last_batch_unix_nano / 1_000_000_000) as i64);
        for c in n.losses.iter().flat_map(|l| &l.counters) {
            let label = LossLabel { node: n.identity.name.clone(), source: c.source.clone(), reason: c.reason.clone() };
            losses.get_or_create(&label).inc_by(c.total);
        }
    }
    r.register("batches", "Batches applied, per node", batches);
    r.register("records", "Records applied, per node", records);
    r.register("duplicate_batches", "Replayed batches discarded, per node", duplicates);
    r.register("sequence_gaps", "Batches a node's agent dropped (never received), per node", gaps);
    r.register("last_batch_timestamp_seconds", "When the node's last batch arrived", last);
    r.register("node_losses", "The node's own loss counters (cumulative per agent run)", losses);

    let tls = Family::<ListenerLabel, Counter>::default();
    for (name, stats) in &state.listeners {
        tls.get_or_create(&ListenerLabel { listener: name.to_string() })
            .inc_by(stats.tls_rejected.load(Ordering::Relaxed));
    }
    r.register("tls_handshakes_rejected", "TLS handshakes that failed, per listener", tls);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

async fn metrics(State(state): State<MetricsState>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(&state))
}

async fn ok() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// The listeners are bound before this server starts.
async fn ready() -> impl IntoResponse {
    (StatusCode::OK, "ready\n")
}

/// Serves /metrics, /healthz and /readyz until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: MetricsState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(ok))
        .route("/readyz", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use podlens_proto::v1 as pb;

    use super::*;

    #[test]
    fn exposition_has_node_and_loss_series() {
        let hub = Arc::new(Hub::new(16));
        hub.ingest(pb::Batch {
            node: Some(pb::NodeIdentity { name: "n1".into(), ..Default::default() }),
            sequence: 1,
            records: vec![pb::Record {
                node: "n1".into(),
                kind: Some(pb::record::Kind::Loss(pb::LossReport {
                    counters: vec![pb::LossCounter {
                        source: "kernel".into(),
                        reason: "truncated".into(),
                        total: 3,
                        delta: 3,
                    }],
                })),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        let text = render(&MetricsState {
            hub,
            listeners: vec![("ingest", Arc::new(ListenerStats::default()))],
            needs_cluster_view: false,
        });
        assert!(text.contains("podlens_collector_batches_total{node=\"n1\"} 1"), "{text}");
        assert!(
            text.contains("podlens_collector_node_losses_total{node=\"n1\",source=\"kernel\",reason=\"truncated\"} 3"),
            "{text}"
        );
        assert!(text.contains("podlens_collector_nodes 1"), "{text}");
        assert!(text.contains("podlens_collector_findings_evicted_total 0"), "{text}");
        assert!(text.contains("podlens_collector_workloads_dropped_total 0"), "{text}");
        assert!(text.contains("podlens_collector_tls_handshakes_rejected_total{listener=\"ingest\"} 0"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
        assert!(!text.contains("policy_gaps"), "no detector, no policy series: {text}");
    }

    #[test]
    fn the_cluster_view_state_is_exported_when_it_comes_from_the_api() {
        let hub = Arc::new(Hub::new(16));
        let state = MetricsState { hub: hub.clone(), listeners: Vec::new(), needs_cluster_view: true };
        assert!(render(&state).contains("podlens_collector_cluster_view_ready 0"));
        let view = crate::policy::detector::ClusterState::from_manifests(&Default::default());
        hub.set_policy_detector(crate::policy::detector::PolicyDetector::new(view, None).unwrap());
        assert!(render(&state).contains("podlens_collector_cluster_view_ready 1"));
        let without = MetricsState { hub: Arc::new(Hub::new(16)), listeners: Vec::new(), needs_cluster_view: false };
        assert!(!render(&without).contains("cluster_view_ready"));
    }
}

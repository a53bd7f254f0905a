//! `podlens top` lines and JSON.

use podlens_proto::v1 as pb;
use serde_json::{json, Value};

use super::{clip, dns::duration, local_json, who};

pub const TABLE_HEADER: &str = "NODE         WORKLOAD                           TX BYTES     RX BYTES     DNS Q  NXDOMAIN  ERRORS  TIMEOUTS  RETRIES  WASTED  P50      P99      MAX";

fn latency(ns: u64) -> String {
    if ns == 0 {
        "-".into()
    } else {
        duration(ns)
    }
}

pub fn summary_line(w: &pb::WorkloadSummary) -> String {
    let d = w.dns.unwrap_or_default();
    format!(
        "{} {} {:>12} {:>12} {:>7} {:>9} {:>7} {:>9} {:>8} {:>7}  {:<8} {:<8} {}",
        clip(&w.node, 12),
        clip(&who(&w.workload.clone().unwrap_or_default()), 34),
        w.tx_bytes,
        w.rx_bytes,
        d.queries,
        d.nxdomain,
        d.errors,
        d.timeouts,
        d.retries,
        d.search_expansions,
        latency(d.latency_p50_ns),
        latency(d.latency_p99_ns),
        latency(d.latency_max_ns),
    )
}

pub fn summary_json(w: &pb::WorkloadSummary) -> Value {
    let d = w.dns.unwrap_or_default();
    json!({
        "node": w.node,
        "workload": local_json(w.workload.as_ref()),
        "tx_bytes": w.tx_bytes, "rx_bytes": w.rx_bytes, "tx_packets": w.tx_packets, "rx_packets": w.rx_packets,
        "flow_records": w.flow_records,
        "dns": {
            "queries": d.queries, "responses": d.responses, "nxdomain": d.nxdomain, "errors": d.errors,
            "timeouts": d.timeouts, "retries": d.retries, "search_expansions": d.search_expansions,
            "malformed": d.malformed, "latency_mean_ns": d.latency_mean_ns, "latency_max_ns": d.latency_max_ns,
            "latency_p50_ns": d.latency_p50_ns, "latency_p99_ns": d.latency_p99_ns,
        },
        "last_seen_unix_nano": w.last_seen_unix_nano,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_json() {
        let w = pb::WorkloadSummary {
            node: "n1".into(),
            workload: Some(pb::Workload {
                kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                    namespace: "shop".into(),
                    name: "web".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            tx_bytes: 1234,
            dns: Some(pb::DnsSummary { queries: 9, nxdomain: 3, latency_p99_ns: 12_000_000, ..Default::default() }),
            ..Default::default()
        };
        let line = summary_line(&w);
        for part in ["shop/web", "1234", " 9 ", "12.0ms", " - "] {
            assert!(line.contains(part), "{part} in {line}");
        }
        let v = summary_json(&w);
        assert_eq!(v["workload"]["pod"]["name"], "web");
        assert_eq!(v["dns"]["nxdomain"], 3);
        assert_eq!(v["dns"]["latency_p99_ns"], 12_000_000);
    }
}

//! `podlens top` lines and JSON.

use podlens_proto::v1 as pb;
use serde_json::{json, Value};

use super::{
    clip,
    dns::duration,
    local_json,
    pressure::{self, culprit_text, verdict_name},
    who,
};

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
        "pressure": w.pressure.as_ref().map_or(Value::Null, pressure::summary_json),
    })
}

/// `podlens top --sort pressure`: the pod's latest verdict, run-queue wait
/// and p99, the highest PSI cpu "some" share of a window, throttling, and the
/// culprit charged most.
pub const PRESSURE_HEADER: &str = "NODE         WORKLOAD                           VERDICT          WAIT        RQ P99    CPU SOME  THROTTLED   TOP CULPRIT";

pub fn pressure_line(w: &pb::WorkloadSummary) -> String {
    let p = w.pressure.clone().unwrap_or_default();
    format!(
        "{} {} {:<16} {:<11} {:<9} {:>8}  {:<11} {}",
        clip(&w.node, 12),
        clip(&who(&w.workload.clone().unwrap_or_default()), 34),
        p.verdict.as_ref().map_or_else(|| "-".into(), |v| verdict_name(v.kind)),
        latency(p.wait_ns),
        latency(p.run_queue_p99_ns),
        pressure::percent(Some(p.cpu_some_share_max)),
        latency(p.throttled_usec.saturating_mul(1000)),
        p.culprits.first().map_or_else(|| "-".into(), culprit_text),
    )
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
        assert_eq!(v["pressure"], Value::Null);
        assert_eq!(v["workload"]["pod"]["name"], "web");
        assert_eq!(v["dns"]["nxdomain"], 3);
        assert_eq!(v["dns"]["latency_p99_ns"], 12_000_000);
    }

    #[test]
    fn pressure_line_and_json() {
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
            pressure: Some(pb::PressureSummary {
                windows: 12,
                wait_ns: 45_000_000,
                run_queue_p99_ns: 8_388_608,
                cpu_some_share_max: 0.315,
                throttled_usec: 0,
                verdict: Some(pb::Verdict { kind: pb::VerdictKind::Neighbour as i32, ..Default::default() }),
                culprits: vec![
                    pb::Culprit {
                        kind: pb::CulpritKind::Pod as i32,
                        workload: Some(pb::Workload {
                            kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                                namespace: "batch".into(),
                                name: "noisy".into(),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }),
                        wait_ns: 35_000_000,
                        share: 0.78,
                    },
                    pb::Culprit { kind: pb::CulpritKind::Idle as i32, share: 0.1, ..Default::default() },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = pressure_line(&w);
        for part in ["shop/web", "neighbour", "45.0ms", "8.4ms", "31.5%", "batch/noisy 78%"] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(!line.contains("idle"), "the top culprit only: {line}");
        let v = summary_json(&w);
        let p = &v["pressure"];
        assert_eq!((p["windows"].as_u64(), p["wait_ns"].as_u64()), (Some(12), Some(45_000_000)));
        assert_eq!(p["verdict"]["kind"], "neighbour");
        assert_eq!(p["culprits"][0]["workload"]["pod"]["name"], "noisy");
        assert_eq!(p["cpu_some_share_max"], 0.315);
    }
}

//! Findings for people (table rows, time ranges relative to now) and for
//! programs (JSON with the same fields in `podlens observe` and
//! `podlens findings`).

use podlens_proto::v1::{self as pb, finding::Detail};
use serde_json::{json, Value};

use super::{
    clip,
    dns::duration,
    local_json,
    pressure::{culprit_json, culprit_kind_name, culprits_text, verdict_name},
    who,
};

pub fn finding_kind_name(v: i32) -> String {
    match pb::FindingKind::try_from(v) {
        Ok(k) => k.as_str_name().trim_start_matches("FINDING_KIND_").to_ascii_lowercase(),
        Err(_) => format!("unknown_{v}"),
    }
}

pub fn state_name(v: i32) -> String {
    match pb::FindingState::try_from(v) {
        Ok(k) => k.as_str_name().trim_start_matches("FINDING_STATE_").to_ascii_lowercase(),
        Err(_) => format!("unknown_{v}"),
    }
}

fn noisy_neighbour(f: &pb::Finding) -> Option<&pb::NoisyNeighbour> {
    match &f.detail {
        Some(Detail::NoisyNeighbour(n)) => Some(n),
        _ => None,
    }
}

fn policy_gap(f: &pb::Finding) -> Option<&pb::PolicyGap> {
    match &f.detail {
        Some(Detail::PolicyGap(g)) => Some(g),
        _ => None,
    }
}

fn workload_ref(w: Option<&pb::WorkloadRef>) -> String {
    w.map_or_else(|| "-".into(), |w| format!("{}/{}/{}", w.namespace, w.kind.to_ascii_lowercase(), w.name))
}

fn gap_json(g: &pb::PolicyGap) -> Value {
    json!({
        "workload": g.workload.as_ref().map_or(Value::Null, |w| json!({"namespace": w.namespace, "kind": w.kind, "name": w.name})),
        "direction": g.direction,
        "peer": g.peer,
        "port": g.port,
        "protocol": g.protocol,
        "flows": g.flows,
        "bytes": g.bytes,
        "policies": g.policies,
        "suggestion": g.suggestion,
        "peers": g.peers,
    })
}

/// The peer and port of a policy gap, for people.
fn gap_text(g: &pb::PolicyGap) -> String {
    if g.port == 0 && !g.peers.is_empty() {
        format!("{} {}", g.direction, g.peers.join(", "))
    } else if g.port == 0 {
        format!("{} {}", g.direction, g.peer)
    } else {
        format!("{} {} {}/{}", g.direction, g.peer, g.port, g.protocol)
    }
}

/// One finding as JSON; `noisy_neighbour` and `policy_gap` are null for other kinds.
pub fn finding_json(f: &pb::Finding) -> Value {
    let detail = noisy_neighbour(f).map_or(Value::Null, |n| {
        json!({
            "victim": n.victim.as_ref().map_or(Value::Null, |w| local_json(Some(w))),
            "verdict": verdict_name(n.verdict),
            "culprits": n.culprits.iter().map(culprit_json).collect::<Vec<_>>(),
            "windows": n.windows,
            "wait_ns": n.wait_ns,
            "run_queue_p99_ns": n.run_queue_p99_ns,
            "cpu_some_share": n.cpu_some_share,
        })
    });
    json!({
        "kind": "finding",
        "id": f.id,
        "finding_kind": finding_kind_name(f.kind),
        "state": state_name(f.state),
        "start_unix_nano": f.start_unix_nano,
        "end_unix_nano": f.end_unix_nano,
        "summary": f.summary,
        "noisy_neighbour": detail,
        "policy_gap": policy_gap(f).map_or(Value::Null, gap_json),
    })
}

/// `podlens findings -o json`: the whole answer as one document.
pub fn response_json(r: &pb::FindingsResponse) -> Value {
    let findings: Vec<Value> = r
        .findings
        .iter()
        .map(|nf| {
            let mut v = nf.finding.as_ref().map_or_else(|| json!({}), finding_json);
            v["node"] = json!(nf.node);
            v
        })
        .collect();
    let worst: Vec<Value> = r
        .worst_neighbours
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "kind": culprit_kind_name(n.kind),
                "culprit": n.culprit.as_ref().map_or(Value::Null, |w| local_json(Some(w))),
                "wait_ns": n.wait_ns,
                "victims": n.victims,
                "findings": n.findings,
            })
        })
        .collect();
    json!({
        "findings": findings,
        "worst_neighbours": worst,
        "retained_since_unix_nano": r.retained_since_unix_nano,
    })
}

/// A span for people: "45s", "12m5s", "3h20m", "2d4h".
fn span(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn ago(t: u64, now: u64) -> String {
    if t == 0 {
        "?".into()
    } else if t >= now {
        "now".into()
    } else {
        format!("{} ago", span(now - t))
    }
}

/// A finding's time range relative to `now` (Unix ns): "12m5s ago..now (12m5s)".
pub fn range(start: u64, end: u64, now: u64) -> String {
    let length = if start > 0 && end >= start { format!(" ({})", span(end - start)) } else { String::new() };
    format!("{}..{}{length}", ago(start, now), ago(end, now))
}

/// Who a finding is about (the victim), for people; "-" when unknown.
pub fn subject(f: &pb::Finding) -> String {
    if let Some(g) = policy_gap(f) {
        return workload_ref(g.workload.as_ref());
    }
    noisy_neighbour(f).and_then(|n| n.victim.as_ref()).map_or_else(|| "-".into(), who)
}

fn verdict(f: &pb::Finding) -> String {
    noisy_neighbour(f).map_or_else(|| finding_kind_name(f.kind), |n| verdict_name(n.verdict))
}

fn culprits(f: &pb::Finding, max: usize) -> String {
    if let Some(g) = policy_gap(f) {
        return gap_text(g);
    }
    noisy_neighbour(f).map(|n| culprits_text(&n.culprits, max)).filter(|s| !s.is_empty()).unwrap_or("-".into())
}

pub const TABLE_HEADER: &str = "STATE     NODE         VICTIM                             VERDICT          CULPRITS                                 RANGE                               SUMMARY";

/// One row of `podlens findings`.
pub fn row(nf: &pb::NodeFinding, now: u64) -> String {
    let f = nf.finding.clone().unwrap_or_default();
    format!(
        "{:<9} {} {} {:<16} {} {:<35} {}",
        state_name(f.state),
        clip(&nf.node, 12),
        clip(&subject(&f), 34),
        verdict(&f),
        clip(&culprits(&f, 3), 40),
        range(f.start_unix_nano, f.end_unix_nano, now),
        f.summary
    )
}

pub const NEIGHBOURS_HEADER: &str =
    "NODE         KIND  NEIGHBOUR                                WAIT        VICTIMS  FINDINGS";

/// One row of the worst-neighbours table.
pub fn neighbour_row(n: &pb::NeighbourRank) -> String {
    let culprit = n.culprit.as_ref().map_or_else(|| "-".into(), who);
    format!(
        "{} {:<5} {} {:<11} {:>7} {:>9}",
        clip(&n.node, 12),
        culprit_kind_name(n.kind),
        clip(&culprit, 40),
        duration(n.wait_ns),
        n.victims,
        n.findings
    )
}

/// The `podlens observe` table text of a finding record.
pub fn summary(f: &pb::Finding, now: u64) -> String {
    format!(
        "FINDING {:<8} {} culprits: {} {}",
        state_name(f.state),
        verdict(f),
        culprits(f, 5),
        range(f.start_unix_nano, f.end_unix_nano, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn pod(ns: &str, name: &str) -> pb::Workload {
        pb::Workload {
            kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn sample() -> pb::Finding {
        pb::Finding {
            id: "nn-3".into(),
            kind: pb::FindingKind::NoisyNeighbour as i32,
            state: pb::FindingState::Ongoing as i32,
            start_unix_nano: 1000 * S,
            end_unix_nano: 1725 * S,
            summary: "shop/web waited 40% of its run time behind batch/noisy".into(),
            detail: Some(Detail::NoisyNeighbour(pb::NoisyNeighbour {
                victim: Some(pod("shop", "web")),
                verdict: pb::VerdictKind::Neighbour as i32,
                culprits: vec![pb::Culprit {
                    kind: pb::CulpritKind::Pod as i32,
                    workload: Some(pod("batch", "noisy")),
                    wait_ns: 7_800_000,
                    share: 0.78,
                }],
                windows: 145,
                wait_ns: 0,
                run_queue_p99_ns: 8192,
                cpu_some_share: 0.4,
            })),
        }
    }

    #[test]
    fn json_fields() {
        let v = finding_json(&sample());
        assert_eq!(v["kind"], "finding");
        assert_eq!(v["finding_kind"], "noisy_neighbour");
        assert_eq!(v["state"], "ongoing");
        assert_eq!(v["id"], "nn-3");
        assert_eq!(v["end_unix_nano"], 1725 * S);
        let n = &v["noisy_neighbour"];
        assert_eq!(n["victim"]["pod"]["namespace"], "shop");
        assert_eq!(n["verdict"], "neighbour");
        assert_eq!(n["culprits"][0]["workload"]["pod"]["name"], "noisy");
        assert_eq!(n["culprits"][0]["share"], 0.78);
        assert_eq!((n["windows"].as_u64(), n["wait_ns"].as_u64()), (Some(145), Some(0)));
        let other = finding_json(&pb::Finding { detail: None, ..sample() });
        assert_eq!(other["noisy_neighbour"], Value::Null);

        let r = pb::FindingsResponse {
            findings: vec![pb::NodeFinding { node: "n1".into(), finding: Some(sample()) }],
            worst_neighbours: vec![pb::NeighbourRank {
                node: "n1".into(),
                kind: pb::CulpritKind::Pod as i32,
                culprit: Some(pod("batch", "noisy")),
                wait_ns: 9,
                victims: 2,
                findings: 3,
            }],
            retained_since_unix_nano: 5,
        };
        let v = response_json(&r);
        assert_eq!(v["findings"][0]["node"], "n1");
        assert_eq!(v["findings"][0]["state"], "ongoing");
        let w = &v["worst_neighbours"][0];
        assert_eq!((w["kind"].as_str(), w["culprit"]["pod"]["name"].as_str()), (Some("pod"), Some("noisy")));
        assert_eq!((w["wait_ns"].as_u64(), w["victims"].as_u64(), w["findings"].as_u64()), (Some(9), Some(2), Some(3)));
        assert_eq!(v["retained_since_unix_nano"], 5);
        assert!(!v.to_string().contains('\n'), "one line");
    }

    #[test]
    fn rows_and_ranges() {
        let row = row(&pb::NodeFinding { node: "n1".into(), finding: Some(sample()) }, 1730 * S);
        for part in
            ["ongoing", "n1", "shop/web", "neighbour", "batch/noisy 78%", "12m10s ago..5s ago (12m5s)", "waited 40%"]
        {
            assert!(row.contains(part), "{part} in {row}");
        }
        assert_eq!(range(0, 0, 5), "?..?");
        assert_eq!(range(S, 2 * S, 2 * S), "1s ago..now (1s)");
        assert_eq!(span(3 * 3600 * S + 20 * 60 * S), "3h20m");
        assert_eq!(span(2 * 86400 * S + 4 * 3600 * S), "2d4h");
        let s = summary(&sample(), 1725 * S);
        assert!(s.starts_with("FINDING ongoing  neighbour culprits: batch/noisy 78% "), "{s}");
        assert_eq!(subject(&sample()), "shop/web");
        let bare = pb::Finding::default();
        assert_eq!(subject(&bare), "-");
        assert!(summary(&bare, 1).starts_with("FINDING unspecified unspecified culprits: - "), "{}", summary(&bare, 1));
        let n =
            neighbour_row(&pb::NeighbourRank { node: "n1".into(), kind: 2, wait_ns: 1_500_000, ..Default::default() });
        assert!(n.contains("host") && n.contains("1.5ms"), "{n}");
    }
}

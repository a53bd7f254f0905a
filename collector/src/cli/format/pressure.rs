//! Pressure records and summaries for people (one table line) and for
//! programs (JSON). In JSON a counter or section the kernel did not provide is
//! null, never 0, so "no data" and "nothing happened" stay apart.

use podlens_proto::v1 as pb;
use serde_json::{json, Value};

use super::{dns::duration, local_json, who};
use crate::pressure::{bucket_upper_ns, wait_ns};

/// An enum value as its proto name without the type prefix, lower case
/// ("VERDICT_KIND_SELF_THROTTLED" -> "self_throttled"); "unknown_<n>" for
/// values this build does not know.
fn enum_name(name: Option<&str>, prefix: &str, value: i32) -> String {
    match name {
        Some(n) => n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase(),
        None => format!("unknown_{value}"),
    }
}

pub fn verdict_name(v: i32) -> String {
    enum_name(pb::VerdictKind::try_from(v).ok().map(|k| k.as_str_name()), "VERDICT_KIND_", v)
}

pub fn culprit_kind_name(v: i32) -> String {
    enum_name(pb::CulpritKind::try_from(v).ok().map(|k| k.as_str_name()), "CULPRIT_KIND_", v)
}

fn counter_json(c: Option<&pb::Counter>) -> Value {
    c.map_or(Value::Null, |c| json!({"total": c.total, "delta": c.delta}))
}

fn psi_json(p: Option<&pb::Psi>) -> Value {
    let Some(p) = p else { return Value::Null };
    json!({
        "some_usec": counter_json(p.some_usec.as_ref()),
        "full_usec": counter_json(p.full_usec.as_ref()),
        "some_share": p.some_usec.as_ref().map(|_| p.some_share),
        "full_share": p.full_usec.as_ref().map(|_| p.full_share),
    })
}

fn cpu_stat_json(s: Option<&pb::CpuStat>) -> Value {
    let Some(s) = s else { return Value::Null };
    json!({
        "usage_usec": counter_json(s.usage_usec.as_ref()),
        "nr_periods": counter_json(s.nr_periods.as_ref()),
        "nr_throttled": counter_json(s.nr_throttled.as_ref()),
        "throttled_usec": counter_json(s.throttled_usec.as_ref()),
        // the proto's 0 means "unlimited or unknown", not a limit of nothing
        "limit_cores": (s.limit_cores > 0.0).then_some(s.limit_cores),
        "throttling_source": s.throttling_source,
    })
}

fn memory_events_json(m: Option<&pb::MemoryEvents>) -> Value {
    let Some(m) = m else { return Value::Null };
    json!({
        "oom": counter_json(m.oom.as_ref()),
        "oom_kill": counter_json(m.oom_kill.as_ref()),
        "high": counter_json(m.high.as_ref()),
        "max": counter_json(m.max.as_ref()),
    })
}

fn run_queue_json(q: Option<&pb::RunQueue>) -> Value {
    let Some(q) = q else { return Value::Null };
    let buckets: Vec<Value> =
        q.buckets.iter().enumerate().map(|(i, c)| json!({"le_ns": bucket_upper_ns(i), "count": c})).collect();
    json!({
        "buckets": buckets,
        "wakeup_waits": q.wakeup_waits, "wakeup_wait_ns": q.wakeup_wait_ns,
        "preempt_waits": q.preempt_waits, "preempt_wait_ns": q.preempt_wait_ns,
        "wait_ns": wait_ns(q),
        "on_cpu_ns": q.on_cpu_ns, "p50_ns": q.p50_ns, "p99_ns": q.p99_ns,
        "unattributed_ns": q.unattributed_ns,
    })
}

pub fn culprit_json(c: &pb::Culprit) -> Value {
    json!({
        "kind": culprit_kind_name(c.kind),
        "workload": c.workload.as_ref().map_or(Value::Null, |w| local_json(Some(w))),
        "wait_ns": c.wait_ns,
        "share": c.share,
    })
}

pub fn verdict_json(v: Option<&pb::Verdict>) -> Value {
    v.map_or(Value::Null, |v| {
        json!({
            "kind": verdict_name(v.kind), "since_unix_nano": v.since_unix_nano,
            "window_kind": verdict_name(v.window_kind), "summary": v.summary,
        })
    })
}

/// One pressure record as JSON (`podlens observe -o json`).
pub fn record_json(p: &pb::PressureRecord) -> Value {
    json!({
        "kind": "pressure",
        "local": p.local.as_ref().map_or(Value::Null, |w| local_json(Some(w))),
        "node_wide": p.node,
        "cpu": psi_json(p.cpu.as_ref()),
        "memory": psi_json(p.memory.as_ref()),
        "io": psi_json(p.io.as_ref()),
        "cpu_stat": cpu_stat_json(p.cpu_stat.as_ref()),
        "memory_events": memory_events_json(p.memory_events.as_ref()),
        "run_queue": run_queue_json(p.run_queue.as_ref()),
        "culprits": p.culprits.iter().map(culprit_json).collect::<Vec<_>>(),
        "verdict": verdict_json(p.verdict.as_ref()),
    })
}

/// A pressure summary of `podlens top` as JSON.
pub fn summary_json(s: &pb::PressureSummary) -> Value {
    json!({
        "windows": s.windows, "wait_ns": s.wait_ns, "run_queue_p99_ns": s.run_queue_p99_ns,
        "cpu_some_usec": s.cpu_some_usec, "memory_some_usec": s.memory_some_usec, "io_some_usec": s.io_some_usec,
        "cpu_some_share_max": s.cpu_some_share_max, "throttled_usec": s.throttled_usec,
        "verdict": verdict_json(s.verdict.as_ref()),
        "culprits": s.culprits.iter().map(culprit_json).collect::<Vec<_>>(),
    })
}

/// Who a culprit is, for people.
fn culprit_who(c: &pb::Culprit) -> String {
    match (pb::CulpritKind::try_from(c.kind), &c.workload) {
        (Ok(pb::CulpritKind::Pod | pb::CulpritKind::Host), Some(w)) => who(w),
        _ => culprit_kind_name(c.kind),
    }
}

/// "shop/web 78%": who and their share of the wait.
pub fn culprit_text(c: &pb::Culprit) -> String {
    format!("{} {:.0}%", culprit_who(c), c.share * 100.0)
}

/// "shop/web 78%, host:system.slice 12%": at most `max`, then how many more.
pub fn culprits_text(culprits: &[pb::Culprit], max: usize) -> String {
    let mut parts: Vec<String> = culprits.iter().take(max).map(culprit_text).collect();
    if culprits.len() > max {
        parts.push(format!("+{} more", culprits.len() - max));
    }
    parts.join(", ")
}

/// A share 0..1 as a percentage; "-" when not measured.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0))
}

/// A duration in ns; "-" when not measured.
pub fn maybe_duration(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), duration)
}

/// The table's text for a pressure record: verdict, cpu stall share,
/// run-queue p99 and wait, throttling, culprits; "-" where not measured.
pub fn summary(p: &pb::PressureRecord) -> String {
    let cpu_some = p.cpu.as_ref().filter(|c| c.some_usec.is_some()).map(|c| c.some_share);
    let throttled = p.cpu_stat.as_ref().and_then(|s| s.throttled_usec.as_ref()).map(|c| c.delta.saturating_mul(1000));
    let mut s = format!(
        "PRESSURE {:<15} cpu_some={} rq_p99={} wait={} throttled={}",
        p.verdict.as_ref().map_or_else(|| "-".into(), |v| verdict_name(v.kind)),
        percent(cpu_some),
        maybe_duration(p.run_queue.as_ref().map(|q| q.p99_ns)),
        maybe_duration(p.run_queue.as_ref().map(wait_ns)),
        maybe_duration(throttled),
    );
    if !p.culprits.is_empty() {
        s.push_str(&format!(" culprits: {}", culprits_text(&p.culprits, 5)));
    }
    s
}

/// Who a pressure record is about: its cgroup, or the node.
pub fn subject(p: &pb::PressureRecord) -> String {
    match (&p.local, p.node) {
        (_, true) | (None, _) => "node".into(),
        (Some(w), false) => who(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str) -> pb::Workload {
        pb::Workload {
            cgroup_id: 3,
            kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn counter(total: u64, delta: u64) -> Option<pb::Counter> {
        Some(pb::Counter { total, delta })
    }

    fn full() -> pb::PressureRecord {
        pb::PressureRecord {
            local: Some(pod("shop", "web")),
            cpu: Some(pb::Psi { some_usec: counter(900, 250_000), some_share: 0.05, ..Default::default() }),
            memory: Some(pb::Psi {
                some_usec: counter(0, 0),
                full_usec: counter(0, 0),
                some_share: 0.0,
                full_share: 0.0,
            }),
            io: None,
            cpu_stat: Some(pb::CpuStat {
                usage_usec: counter(10, 5),
                throttled_usec: counter(7, 0),
                limit_cores: 0.0,
                throttling_source: "cgroup2".into(),
                ..Default::default()
            }),
            run_queue: Some(pb::RunQueue {
                buckets: vec![5, 0, 2],
                wakeup_waits: 6,
                wakeup_wait_ns: 3_000_000,
                preempt_waits: 1,
                preempt_wait_ns: 1_000_000,
                p99_ns: 4096,
                ..Default::default()
            }),
            culprits: vec![
                pb::Culprit {
                    kind: pb::CulpritKind::Pod as i32,
                    workload: Some(pod("batch", "noisy")),
                    wait_ns: 3_120_000,
                    share: 0.78,
                },
                pb::Culprit { kind: pb::CulpritKind::Idle as i32, workload: None, wait_ns: 400_000, share: 0.1 },
            ],
            verdict: Some(pb::Verdict {
                kind: pb::VerdictKind::Neighbour as i32,
                since_unix_nano: 11,
                window_kind: pb::VerdictKind::Healthy as i32,
                summary: "waited 4ms behind batch/noisy".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn json_absent_is_null_and_zero_is_zero() {
        let v = record_json(&full());
        assert_eq!(v["kind"], "pressure");
        assert_eq!(v["local"]["pod"]["name"], "web");
        assert_eq!(v["node_wide"], false);
        assert_eq!(v["cpu"]["some_usec"], json!({"total": 900, "delta": 250_000}));
        assert_eq!(v["cpu"]["some_share"], 0.05);
        assert_eq!((&v["cpu"]["full_usec"], &v["cpu"]["full_share"]), (&Value::Null, &Value::Null), "no full line");
        assert_eq!(v["memory"]["full_usec"], json!({"total": 0, "delta": 0}), "present and zero");
        assert_eq!(v["memory"]["full_share"], 0.0);
        assert_eq!(v["io"], Value::Null);
        assert_eq!(v["cpu_stat"]["throttled_usec"]["delta"], 0);
        assert_eq!(v["cpu_stat"]["nr_periods"], Value::Null);
        assert_eq!(v["cpu_stat"]["limit_cores"], Value::Null, "0 means no known limit");
        assert_eq!(v["cpu_stat"]["throttling_source"], "cgroup2");
        assert_eq!(v["memory_events"], Value::Null);
        let q = &v["run_queue"];
        assert_eq!((q["wait_ns"].as_u64(), q["p99_ns"].as_u64()), (Some(4_000_000), Some(4096)));
        assert_eq!(q["buckets"][2], json!({"le_ns": 4096, "count": 2}));
        assert_eq!(v["culprits"][0]["kind"], "pod");
        assert_eq!(v["culprits"][0]["workload"]["pod"]["name"], "noisy");
        assert_eq!(v["culprits"][1], json!({"kind": "idle", "workload": null, "wait_ns": 400_000, "share": 0.1}));
        assert_eq!(v["verdict"]["kind"], "neighbour");
        assert_eq!(v["verdict"]["window_kind"], "healthy");
        assert_eq!(v["verdict"]["since_unix_nano"], 11);

        let node = record_json(&pb::PressureRecord { node: true, ..Default::default() });
        assert_eq!((node["local"].clone(), node["node_wide"].clone()), (Value::Null, json!(true)));
        for k in ["cpu", "memory", "io", "cpu_stat", "memory_events", "run_queue", "verdict"] {
            assert_eq!(node[k], Value::Null, "{k}");
        }
        assert_eq!(node["culprits"], json!([]));
    }

    #[test]
    fn line_dashes_what_was_not_measured() {
        let s = summary(&full());
        for part in
            ["neighbour", "cpu_some=5.0%", "rq_p99=4us", "wait=4.0ms", "throttled=0us", "batch/noisy 78%, idle 10%"]
        {
            assert!(s.contains(part), "{part} in {s}");
        }
        let bare = summary(&pb::PressureRecord::default());
        assert_eq!(bare, "PRESSURE -               cpu_some=- rq_p99=- wait=- throttled=-");
        assert_eq!(subject(&pb::PressureRecord { node: true, ..Default::default() }), "node");
        assert_eq!(subject(&full()), "shop/web");
    }

    #[test]
    fn names_and_culprit_lists() {
        assert_eq!(verdict_name(pb::VerdictKind::SelfThrottled as i32), "self_throttled");
        assert_eq!(verdict_name(0), "unspecified");
        assert_eq!(verdict_name(99), "unknown_99");
        assert_eq!(culprit_kind_name(pb::CulpritKind::Self_ as i32), "self");
        let c = full().culprits;
        assert_eq!(culprits_text(&c, 1), "batch/noisy 78%, +1 more");
    }
}

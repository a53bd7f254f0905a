//! DNS records for people (one table line) and for programs (JSON).

use podlens_proto::v1 as pb;
use serde_json::{json, Value};

use super::{local_json, protocol_name};

/// Query type number to its mnemonic ("A", "AAAA", ... or "TYPE<n>").
pub fn qtype_name(t: u32) -> String {
    let name = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{t}"),
    };
    name.to_string()
}

/// Response code to its mnemonic ("NOERROR", "NXDOMAIN", ... or "RCODE<n>").
pub fn rcode_name(r: u32) -> String {
    let name = match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        9 => "NOTAUTH",
        16 => "BADVERS",
        _ => return format!("RCODE{r}"),
    };
    name.to_string()
}

fn role(r: i32) -> &'static str {
    match pb::DnsRole::try_from(r) {
        Ok(pb::DnsRole::Client) => "client",
        Ok(pb::DnsRole::Server) => "server",
        _ => "",
    }
}

fn name_json(n: &pb::DnsName) -> Value {
    json!({
        "name": n.name, "queries": n.queries, "nxdomain": n.nxdomain, "errors": n.errors,
        "timeouts": n.timeouts, "search_expansions": n.search_expansions,
    })
}

fn latency_json(l: &pb::DnsLatency, bounds: &[u64]) -> Value {
    let buckets: Vec<Value> =
        l.buckets.iter().enumerate().map(|(i, c)| json!({"le_ns": bounds.get(i).copied(), "count": c})).collect();
    json!({
        "resolver_ip": l.resolver_ip, "resolver_port": l.resolver_port,
        "protocol": protocol_name(l.protocol),
        "qtype": qtype_name(l.qtype), "qtype_number": l.qtype,
        "rcode": rcode_name(l.rcode), "rcode_number": l.rcode,
        "count": l.count, "sum_ns": l.sum_ns, "min_ns": l.min_ns, "max_ns": l.max_ns,
        "mean_ns": l.sum_ns.checked_div(l.count).unwrap_or(0),
        "buckets": buckets,
    })
}

/// One DNS record as JSON (see README, "JSON output").
pub fn record_json(d: &pb::DnsRecord) -> Value {
    let c = d.counts.unwrap_or_default();
    let other = d.other_names.clone().unwrap_or_default();
    let mut other_json = name_json(&other);
    other_json["distinct_names"] = json!(other.distinct_names);
    json!({
        "kind": "dns",
        "local": local_json(d.local.as_ref()),
        "role": role(d.role),
        "counts": {
            "queries": c.queries, "retries": c.retries, "responses": c.responses,
            "noerror": c.noerror, "nodata": c.nodata, "nxdomain": c.nxdomain, "servfail": c.servfail,
            "refused": c.refused, "other_rcode": c.other_rcode, "timeouts": c.timeouts,
            "truncated": c.truncated, "unmatched_responses": c.unmatched_responses, "malformed": c.malformed,
            "search_expansions": c.search_expansions, "expanded_lookups": c.expanded_lookups,
        },
        "latency": d.latency.iter().map(|l| latency_json(l, &d.latency_bounds_ns)).collect::<Vec<_>>(),
        "timeouts": d.timeouts.iter().map(|t| json!({
            "resolver_ip": t.resolver_ip, "resolver_port": t.resolver_port, "protocol": protocol_name(t.protocol),
            "qtype": qtype_name(t.qtype), "qtype_number": t.qtype, "count": t.count,
        })).collect::<Vec<_>>(),
        "top_names": d.top_names.iter().map(name_json).collect::<Vec<_>>(),
        "other_names": other_json,
    })
}

/// A duration in ns, short: "850us", "12.3ms", "1.20s".
pub fn duration(ns: u64) -> String {
    match ns {
        0..=999_999 => format!("{}us", ns / 1000),
        1_000_000..=999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// The table's text for a DNS record: role, counts, latency, top names.
pub fn summary(d: &pb::DnsRecord) -> String {
    let c = d.counts.unwrap_or_default();
    let (n, sum, max) = d.latency.iter().fold((0, 0, 0), |(n, s, m), l| (n + l.count, s + l.sum_ns, m.max(l.max_ns)));
    let mut s = format!(
        "DNS {:6} q={} ok={} nodata={} nx={} fail={} timeout={} retry={}",
        role(d.role),
        c.queries,
        c.noerror,
        c.nodata,
        c.nxdomain,
        c.servfail + c.refused + c.other_rcode,
        c.timeouts,
        c.retries
    );
    if let Some(mean) = sum.checked_div(n) {
        s.push_str(&format!(" mean={} max={}", duration(mean), duration(max)));
    }
    if c.search_expansions > 0 {
        s.push_str(&format!(" wasted={}", c.search_expansions));
    }
    if c.malformed > 0 {
        s.push_str(&format!(" malformed={}", c.malformed));
    }
    let names: Vec<String> = d.top_names.iter().take(3).map(|n| format!("{}({})", n.name, n.queries)).collect();
    if !names.is_empty() {
        s.push_str(&format!(" top: {}", names.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::DnsRecord {
        pb::DnsRecord {
            local: Some(pb::Workload {
                cgroup_id: 7,
                kind: Some(pb::workload::Kind::Pod(pb::PodRef {
                    uid: "u".into(),
                    namespace: "shop".into(),
                    name: "web".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            role: pb::DnsRole::Client as i32,
            counts: Some(pb::DnsCounts {
                queries: 5,
                retries: 1,
                responses: 3,
                noerror: 2,
                nxdomain: 1,
                timeouts: 1,
                search_expansions: 1,
                ..Default::default()
            }),
            latency_bounds_ns: vec![1_000_000, 10_000_000],
            latency: vec![pb::DnsLatency {
                resolver_ip: "10.96.0.10".into(),
                resolver_port: 53,
                protocol: 17,
                qtype: 28,
                rcode: 3,
                count: 2,
                sum_ns: 4_000_000,
                min_ns: 1_500_000,
                max_ns: 2_500_000,
                buckets: vec![0, 2, 0],
            }],
            timeouts: vec![pb::DnsTimeouts {
                resolver_ip: "10.96.0.10".into(),
                resolver_port: 53,
                protocol: 17,
                qtype: 1,
                count: 1,
            }],
            top_names: vec![pb::DnsName { name: "api.example.com".into(), queries: 4, ..Default::default() }],
            other_names: Some(pb::DnsName { queries: 1, distinct_names: 1, ..Default::default() }),
            local_index: 0,
        }
    }

    #[test]
    fn json_names_types_codes_and_buckets() {
        let v = record_json(&sample());
        assert_eq!(v["kind"], "dns");
        assert_eq!(v["role"], "client");
        assert_eq!(v["local"]["pod"]["name"], "web");
        assert_eq!(v["counts"]["queries"], 5);
        assert_eq!(v["counts"]["search_expansions"], 1);
        let l = &v["latency"][0];
        assert_eq!(
            (l["qtype"].as_str(), l["rcode"].as_str(), l["protocol"].as_str()),
            (Some("AAAA"), Some("NXDOMAIN"), Some("UDP"))
        );
        assert_eq!(l["mean_ns"], 2_000_000);
        assert_eq!(l["buckets"][1], json!({"le_ns": 10_000_000, "count": 2}));
        assert_eq!(l["buckets"][2], json!({"le_ns": null, "count": 0}));
        assert_eq!(v["timeouts"][0]["qtype"], "A");
        assert_eq!(v["top_names"][0]["name"], "api.example.com");
        assert_eq!(v["other_names"]["distinct_names"], 1);
    }

    #[test]
    fn summary_line_has_counts_latency_and_names() {
        let s = summary(&sample());
        for part in [
            "client",
            "q=5",
            "nx=1",
            "timeout=1",
            "retry=1",
            "mean=2.0ms",
            "max=2.5ms",
            "wasted=1",
            "api.example.com(4)",
        ] {
            assert!(s.contains(part), "{part} in {s}");
        }
    }

    #[test]
    fn mnemonics() {
        assert_eq!((qtype_name(28), qtype_name(999)), ("AAAA".to_string(), "TYPE999".to_string()));
        assert_eq!((rcode_name(3), rcode_name(11)), ("NXDOMAIN".to_string(), "RCODE11".to_string()));
        assert_eq!(
            (duration(850_000), duration(12_340_000), duration(1_200_000_000)),
            ("850us".into(), "12.3ms".into(), "1.20s".into())
        );
    }
}

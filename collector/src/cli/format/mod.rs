//! How the CLI prints records: JSON lines (stable, documented in the README)
//! or a table for people.

mod dns;
pub mod finding;
pub mod pressure;
pub mod top;

use std::net::IpAddr;

use podlens_proto::v1::{self as pb, record::Kind, workload};
use serde_json::{json, Value};

/// IANA protocol number to a name.
pub fn protocol_name(p: u32) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => format!("proto-{n}"),
    }
}

/// TCP flag bits to "SYN|ACK|FIN".
pub fn tcp_flags(bits: u32) -> String {
    const NAMES: [(u32, &str); 8] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join("|")
}

fn qos(q: i32) -> &'static str {
    match pb::QosClass::try_from(q) {
        Ok(pb::QosClass::Guaranteed) => "Guaranteed",
        Ok(pb::QosClass::Burstable) => "Burstable",
        Ok(pb::QosClass::BestEffort) => "BestEffort",
        _ => "",
    }
}

fn runtime(r: i32) -> &'static str {
    match pb::ContainerRuntime::try_from(r) {
        Ok(pb::ContainerRuntime::Containerd) => "containerd",
        Ok(pb::ContainerRuntime::Crio) => "cri-o",
        Ok(pb::ContainerRuntime::Docker) => "docker",
        _ => "",
    }
}

fn pod_json(p: &pb::PodRef) -> Value {
    json!({
        "uid": p.uid, "namespace": p.namespace, "name": p.name,
        "container_id": p.container_id, "container_name": p.container_name,
        "qos_class": qos(p.qos_class), "runtime": runtime(p.runtime),
    })
}

fn counts_json(c: Option<&pb::FlowCounts>) -> Value {
    let c = c.cloned().unwrap_or_default();
    json!({"bytes": c.bytes, "packets": c.packets, "syn": c.syn, "fin": c.fin, "rst": c.rst, "tcp_flags": tcp_flags(c.tcp_flags)})
}

/// One record as a JSON object (one line of `podlens observe -o json`), with
/// the batch it came from when known.
pub fn record_json(r: &pb::Record, origin: Option<&pb::Origin>) -> Value {
    let mut v = match &r.kind {
        Some(Kind::Flow(f)) => flow_json(f),
        Some(Kind::Dns(d)) => dns::record_json(d),
        Some(Kind::Loss(l)) => json!({
            "kind": "loss",
            "counters": l.counters.iter().map(|c| json!({"source": c.source, "reason": c.reason, "total": c.total, "delta": c.delta})).collect::<Vec<_>>(),
        }),
        Some(Kind::Pressure(p)) => pressure::record_json(p),
        Some(Kind::Finding(f)) => finding::finding_json(f),
        None => json!({"kind": "unknown"}),
    };
    v["node"] = json!(r.node);
    v["window_start_unix_nano"] = json!(r.window_start_unix_nano);
    v["window_end_unix_nano"] = json!(r.window_end_unix_nano);
    v["origin"] = origin.map_or(Value::Null, |o| {
        json!({"node": o.node, "boot_id": o.boot_id, "agent_epoch_unix_nano": o.agent_epoch_unix_nano, "sequence": o.sequence})
    });
    v
}

/// The local workload: cgroup, and pod or host unit.
fn local_json(local: Option<&pb::Workload>) -> Value {
    let local = local.cloned().unwrap_or_default();
    let (pod, host_unit) = match &local.kind {
        Some(workload::Kind::Pod(p)) => (pod_json(p), Value::Null),
        Some(workload::Kind::Host(h)) => (Value::Null, json!(h.unit)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "cgroup_id": local.cgroup_id, "cgroup_path": local.cgroup_path,
        "pod": pod, "host_unit": host_unit, "unknown_layout": local.unknown_layout,
    })
}

fn flow_json(f: &pb::FlowRecord) -> Value {
    let mut local = local_json(f.local.as_ref());
    local["ip"] = json!(f.local_ip);
    local["port"] = json!(f.local_port);
    let remote = f.remote.clone().unwrap_or_default();
    json!({
        "kind": "flow",
        "local": local,
        "remote": {
            "ip": remote.ip, "port": remote.port,
            "pod": remote.pod.as_ref().map(pod_json).unwrap_or(Value::Null),
            "fqdn": remote.fqdn,
        },
        "protocol": protocol_name(f.protocol),
        "protocol_number": f.protocol,
        "egress": counts_json(f.egress.as_ref()),
        "ingress": counts_json(f.ingress.as_ref()),
        "first_seen_unix_nano": f.first_seen_unix_nano,
        "last_seen_unix_nano": f.last_seen_unix_nano,
        "overflow": f.overflow,
        "initiator": initiator_name(f.initiator()),
    })
}

/// Which end opened the connection, as `observe -o json` spells it.
pub fn initiator_name(i: pb::Initiator) -> &'static str {
    match i {
        pb::Initiator::Local => "local",
        pb::Initiator::Remote => "remote",
        pb::Initiator::Unknown => "unknown",
    }
}

/// `->` the local end connected, `<-` the remote end did, `--` not known.
fn initiator_arrow(i: pb::Initiator) -> &'static str {
    match i {
        pb::Initiator::Local => "->",
        pb::Initiator::Remote => "<-",
        pb::Initiator::Unknown => "--",
    }
}

/// `podlens status -o json`.
pub fn status_json(s: &pb::StatusResponse) -> Value {
    json!({
        "version": s.version,
        "consumers": s.consumers,
        "consumers_dropped": s.consumers_dropped,
        "batches_rejected": s.batches_rejected,
        "nodes": s.nodes.iter().map(|n| {
            let id = n.node.clone().unwrap_or_default();
            json!({
                "node": id.name, "boot_id": id.boot_id, "agent_epoch_unix_nano": id.agent_epoch_unix_nano,
                "agent_version": id.agent_version, "last_sequence": n.last_sequence, "batches": n.batches,
                "records": n.records, "duplicates": n.duplicates, "gaps": n.gaps,
                "last_batch_unix_nano": n.last_batch_unix_nano,
                "losses": n.losses.iter().flat_map(|l| &l.counters)
                    .map(|c| json!({"source": c.source, "reason": c.reason, "total": c.total}))
                    .collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}

/// `podlens talkers -o json`, one line per talker.
pub fn talker_json(t: &pb::TopTalker) -> Value {
    let local = t.local.clone().unwrap_or_default();
    let remote = t.remote.clone().unwrap_or_default();
    json!({
        "node": t.node,
        "local": {
            "cgroup_path": local.cgroup_path,
            "pod": match &local.kind { Some(workload::Kind::Pod(p)) => pod_json(p), _ => Value::Null },
        },
        "remote": {"ip": remote.ip, "port": remote.port, "pod": remote.pod.as_ref().map(pod_json).unwrap_or(Value::Null)},
        "protocol": protocol_name(t.protocol),
        "bytes": t.bytes,
        "packets": t.packets,
        "last_seen_unix_nano": t.last_seen_unix_nano,
    })
}

/// The two ends of a talker, for the table.
pub fn talker_ends(t: &pb::TopTalker) -> (String, String) {
    let remote = t.remote.clone().unwrap_or_default();
    let mut peer = if remote.port == 0 { remote.ip.clone() } else { endpoint(&remote.ip, remote.port, t.protocol) };
    if let Some(p) = &remote.pod {
        peer.push_str(&format!(" ({}/{})", p.namespace, p.name));
    }
    (who(&t.local.clone().unwrap_or_default()), peer)
}

/// The wall clock in Unix ns, for times shown relative to now.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Header of the table output.
pub const TABLE_HEADER: &str = "NODE         LOCAL                              PROTO   LOCAL ADDR                 REMOTE                                          TX BYTES/PKTS      RX BYTES/PKTS      FLAGS";

fn endpoint(ip: &str, port: u32, protocol: u32) -> String {
    let bracketed = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{ip}]"),
        _ => ip.to_string(),
    };
    if matches!(protocol, 6 | 17 | 132) {
        format!("{bracketed}:{port}")
    } else {
        bracketed
    }
}

fn who(local: &pb::Workload) -> String {
    match &local.kind {
        Some(workload::Kind::Pod(p)) if !p.name.is_empty() => format!("{}/{}", p.namespace, p.name),
        Some(workload::Kind::Pod(p)) => format!("pod:{}", p.uid),
        Some(workload::Kind::Host(h)) if local.unknown_layout => format!("?{}", h.unit),
        Some(workload::Kind::Host(h)) if h.unit.is_empty() => "host:/".into(),
        Some(workload::Kind::Host(h)) => format!("host:{}", h.unit),
        None => format!("cgroup:{}", local.cgroup_id),
    }
}

fn counts(c: Option<&pb::FlowCounts>) -> String {
    let c = c.cloned().unwrap_or_default();
    format!("{}/{}", c.bytes, c.packets)
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        format!("{s:width$}")
    } else {
        let tail: String = s.chars().rev().take(width - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}

/// One record as a table line; `None` for records the table does not show
/// (loss reports without losses in the window).
pub fn record_line(r: &pb::Record) -> Option<String> {
    match &r.kind {
        Some(Kind::Flow(f)) => {
            let remote = f.remote.clone().unwrap_or_default();
            let mut peer = endpoint(&remote.ip, remote.port, f.protocol);
            if let Some(p) = &remote.pod {
                peer.push_str(&format!(" ({}/{})", p.namespace, p.name));
            } else if !remote.fqdn.is_empty() {
                peer.push_str(&format!(" ({})", remote.fqdn));
            }
            let flags =
                tcp_flags(f.egress.as_ref().map_or(0, |c| c.tcp_flags) | f.ingress.as_ref().map_or(0, |c| c.tcp_flags));
            Some(format!(
                "{} {} {:7} {} {} {} {:18} {:18} {}",
                clip(&r.node, 12),
                clip(&who(&f.local.clone().unwrap_or_default()), 34),
                protocol_name(f.protocol),
                clip(&endpoint(&f.local_ip, f.local_port, f.protocol), 23),
                initiator_arrow(f.initiator()),
                clip(&peer, 47),
                counts(f.egress.as_ref()),
                counts(f.ingress.as_ref()),
                flags
            ))
        }
        Some(Kind::Dns(d)) => Some(format!(
            "{} {} {}",
            clip(&r.node, 12),
            clip(&who(&d.local.clone().unwrap_or_default()), 34),
            dns::summary(d)
        )),
        Some(Kind::Loss(l)) => {
            let lost: Vec<String> = l
                .counters
                .iter()
                .filter(|c| c.delta > 0 && !c.source.ends_with("_activity"))
                .map(|c| format!("{}/{}=+{}", c.source, c.reason, c.delta))
                .collect();
            (!lost.is_empty()).then(|| format!("{} LOSS {}", clip(&r.node, 12), lost.join(" ")))
        }
        Some(Kind::Pressure(p)) => {
            Some(format!("{} {} {}", clip(&r.node, 12), clip(&pressure::subject(p), 34), pressure::summary(p)))
        }
        Some(Kind::Finding(f)) => Some(format!(
            "{} {} {}",
            clip(&r.node, 12),
            clip(&finding::subject(f), 34),
            finding::summary(f, now_unix_nanos())
        )),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::Record {
        pb::Record {
            node: "node-1".into(),
            window_start_unix_nano: 1,
            window_end_unix_nano: 2,
            kind: Some(Kind::Flow(pb::FlowRecord {
                local: Some(pb::Workload {
                    cgroup_id: 42,
                    cgroup_path: "/kubepods/burstable/podu1/abc".into(),
                    kind: Some(workload::Kind::Pod(pb::PodRef {
                        uid: "u1".into(),
                        namespace: "shop".into(),
                        name: "web".into(),
                        qos_class: pb::QosClass::Burstable as i32,
                        runtime: pb::ContainerRuntime::Containerd as i32,
                        ..Default::default()
                    })),
                    unknown_layout: false,
                }),
                local_ip: "10.0.0.1".into(),
                local_port: 43210,
                remote: Some(pb::Peer { ip: "fd00::2".into(), port: 80, ..Default::default() }),
                protocol: 6,
                egress: Some(pb::FlowCounts { bytes: 100, packets: 2, syn: 1, tcp_flags: 0x12, ..Default::default() }),
                ingress: None,
                first_seen_unix_nano: 5,
                last_seen_unix_nano: 6,
                overflow: false,
                local_index: 0,
                initiator: pb::Initiator::Local as i32,
            })),
        }
    }

    #[test]
    fn json_fields_are_the_documented_ones() {
        let origin = pb::Origin { node: "node-1".into(), boot_id: "b".into(), agent_epoch_unix_nano: 9, sequence: 4 };
        let v = record_json(&sample(), Some(&origin));
        assert_eq!(v["origin"]["sequence"], 4);
        assert_eq!(v["origin"]["agent_epoch_unix_nano"], 9);
        assert_eq!(v["kind"], "flow");
        assert_eq!(v["node"], "node-1");
        assert_eq!(v["local"]["pod"]["namespace"], "shop");
        assert_eq!(v["local"]["pod"]["qos_class"], "Burstable");
        assert_eq!(v["local"]["pod"]["runtime"], "containerd");
        assert_eq!(v["local"]["host_unit"], Value::Null);
        assert_eq!(v["local"]["port"], 43210);
        assert_eq!(v["remote"]["ip"], "fd00::2");
        assert_eq!(v["remote"]["pod"], Value::Null);
        assert_eq!(v["protocol"], "TCP");
        assert_eq!(v["egress"]["bytes"], 100);
        assert_eq!(v["egress"]["tcp_flags"], "SYN|ACK");
        assert_eq!(v["ingress"]["packets"], 0);
        assert_eq!(v["window_end_unix_nano"], 2);
        assert_eq!(v["initiator"], "local");
    }

    #[test]
    fn table_line_shows_pod_addresses_and_counts() {
        let line = record_line(&sample()).unwrap();
        for part in ["shop/web", "TCP", "10.0.0.1:43210", "-> [fd00::2]:80", "100/2", "0/0", "SYN|ACK"] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }

    #[test]
    fn loss_lines_only_when_something_was_lost() {
        let mut r =
            pb::Record { node: "n".into(), kind: Some(Kind::Loss(pb::LossReport::default())), ..Default::default() };
        assert_eq!(record_line(&r), None);
        r.kind = Some(Kind::Loss(pb::LossReport {
            counters: vec![pb::LossCounter {
                source: "kernel".into(),
                reason: "flow_map_full".into(),
                total: 9,
                delta: 3,
            }],
        }));
        assert!(record_line(&r).unwrap().contains("kernel/flow_map_full=+3"));
        // activity is not loss
        r.kind = Some(Kind::Loss(pb::LossReport {
            counters: vec![pb::LossCounter {
                source: "kernel_activity".into(),
                reason: "dns_messages".into(),
                total: 9,
                delta: 3,
            }],
        }));
        assert_eq!(record_line(&r), None);
    }

    #[test]
    fn pressure_and_finding_records_have_json_and_lines() {
        let pressure = pb::Record {
            node: "n1".into(),
            window_end_unix_nano: 9,
            kind: Some(Kind::Pressure(pb::PressureRecord { node: true, ..Default::default() })),
            ..Default::default()
        };
        let v = record_json(&pressure, None);
        assert_eq!(
            (v["kind"].as_str(), v["node"].as_str(), v["node_wide"].as_bool()),
            (Some("pressure"), Some("n1"), Some(true))
        );
        assert_eq!(v["window_end_unix_nano"], 9);
        assert!(record_line(&pressure).unwrap().contains("node"));
        let finding = pb::Record {
            node: "n1".into(),
            kind: Some(Kind::Finding(pb::Finding { id: "f".into(), state: 3, ..Default::default() })),
            ..Default::default()
        };
        let v = record_json(&finding, None);
        assert_eq!(
            (v["kind"].as_str(), v["id"].as_str(), v["state"].as_str()),
            (Some("finding"), Some("f"), Some("resolved"))
        );
        assert!(record_line(&finding).unwrap().contains("FINDING resolved"));
    }

    #[test]
    fn protocol_and_flag_names() {
        assert_eq!(protocol_name(58), "ICMPv6");
        assert_eq!(protocol_name(47), "proto-47");
        assert_eq!(tcp_flags(0x11), "ACK|FIN");
        assert_eq!(tcp_flags(0), "");
    }
}

//! The `podlens` binary against an in-process server holding pressure records
//! and findings: `findings`, `top --sort pressure` and `observe --kind`, as
//! machine-readable JSON and as tables.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use podlens_collector::{
    auth::ConsumerAuth,
    hub::Hub,
    server::{Listener, ListenerStats},
};
use podlens_proto::{
    compact::compact,
    v1::{self as pb, finding::Detail, record::Kind},
};
use serde_json::Value;

const SEC: u64 = 1_000_000_000;

fn pod(ns: &str, name: &str, cgroup: u64, container: &str) -> pb::Workload {
    pb::Workload {
        cgroup_id: cgroup,
        cgroup_path: format!("/kubepods/pod-{name}/{container}"),
        kind: Some(pb::workload::Kind::Pod(pb::PodRef {
            uid: format!("uid-{name}"),
            namespace: ns.into(),
            name: name.into(),
            container_id: container.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn record(end: u64, kind: Kind) -> pb::Record {
    pb::Record {
        node: "node-1".into(),
        window_start_unix_nano: end - 5 * SEC,
        window_end_unix_nano: end,
        kind: Some(kind),
    }
}

fn noisy_culprit() -> pb::Culprit {
    pb::Culprit {
        kind: pb::CulpritKind::Pod as i32,
        workload: Some(pod("batch", "noisy", 20, "")),
        wait_ns: 30_000_000,
        share: 0.75,
    }
}

fn web_pressure(end: u64) -> pb::Record {
    record(
        end,
        Kind::Pressure(pb::PressureRecord {
            local: Some(pod("shop", "web", 10, "")),
            cpu: Some(pb::Psi {
                some_usec: Some(pb::Counter { total: 900_000, delta: 40_000 }),
                some_share: 0.4,
                ..Default::default()
            }),
            run_queue: Some(pb::RunQueue {
                buckets: vec![0, 0, 0, 0, 10],
                wakeup_wait_ns: 30_000_000,
                preempt_wait_ns: 10_000_000,
                p99_ns: 16_384,
                ..Default::default()
            }),
            culprits: vec![noisy_culprit()],
            verdict: Some(pb::Verdict {
                kind: pb::VerdictKind::Neighbour as i32,
                window_kind: pb::VerdictKind::Neighbour as i32,
                summary: "waited behind batch/noisy".into(),
                since_unix_nano: end - 10 * SEC,
            }),
            ..Default::default()
        }),
    )
}

fn finding(state: pb::FindingState, start: u64, end: u64) -> pb::Record {
    record(
        end,
        Kind::Finding(pb::Finding {
            id: "nn-1".into(),
            kind: pb::FindingKind::NoisyNeighbour as i32,
            state: state as i32,
            start_unix_nano: start,
            end_unix_nano: end,
            summary: "shop/web waited for CPU behind batch/noisy".into(),
            detail: Some(Detail::NoisyNeighbour(pb::NoisyNeighbour {
                victim: Some(pod("shop", "web", 10, "")),
                verdict: pb::VerdictKind::Neighbour as i32,
                culprits: vec![noisy_culprit()],
                windows: 2,
                wait_ns: 40_000_000,
                run_queue_p99_ns: 16_384,
                cpu_some_share: 0.4,
            })),
        }),
    )
}

fn batch(sequence: u64, records: Vec<pb::Record>) -> pb::Batch {
    let node = pb::NodeIdentity { name: "node-1".into(), agent_epoch_unix_nano: 7, ..Default::default() };
    compact(node, sequence, records)
}

async fn podlens(server: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_podlens"))
        .args(args)
        .args(["--server", server])
        .output()
        .await
        .expect("run podlens");
    assert!(out.status.success(), "podlens {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_top_and_observe_from_the_cli() {
    let hub = Arc::new(Hub::new(1024));
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(listener.serve_consumers(
        hub.clone(),
        ConsumerAuth::open(),
        None,
        Arc::new(ListenerStats::default()),
        async {
            let _ = stopped.await;
        },
    ));

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let (t1, t2) = (now - 10 * SEC, now - 5 * SEC);
    let container = record(
        t1,
        Kind::Pressure(pb::PressureRecord { local: Some(pod("shop", "web", 11, "c1")), ..Default::default() }),
    );
    let node = record(t1, Kind::Pressure(pb::PressureRecord { node: true, ..Default::default() }));
    hub.ingest(batch(1, vec![web_pressure(t1), container, node, finding(pb::FindingState::Open, t1 - 5 * SEC, t1)]))
        .unwrap();
    hub.ingest(batch(2, vec![web_pressure(t2), finding(pb::FindingState::Ongoing, t1 - 5 * SEC, t2)])).unwrap();

    // findings: one JSON document, the ongoing report replacing the open one
    let out =
        podlens(&server, &["findings", "--since", "1h", "-n", "shop", "--kind", "noisy-neighbour", "-o", "json"]).await;
    let docs = json_lines(&out);
    assert_eq!(docs.len(), 1, "{out}");
    let doc = &docs[0];
    let findings = doc["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{doc}");
    let f = &findings[0];
    assert_eq!(
        (f["node"].as_str(), f["id"].as_str(), f["state"].as_str()),
        (Some("node-1"), Some("nn-1"), Some("ongoing"))
    );
    assert_eq!(f["end_unix_nano"].as_u64(), Some(t2));
    assert_eq!(f["noisy_neighbour"]["victim"]["pod"]["name"], "web");
    assert_eq!(f["noisy_neighbour"]["culprits"][0]["workload"]["pod"]["name"], "noisy");
    let worst = &doc["worst_neighbours"][0];
    assert_eq!((worst["kind"].as_str(), worst["culprit"]["pod"]["name"].as_str()), (Some("pod"), Some("noisy")));
    assert_eq!((worst["wait_ns"].as_u64(), worst["victims"].as_u64()), (Some(30_000_000), Some(1)));
    let none = podlens(&server, &["findings", "-n", "db", "-o", "json"]).await;
    assert_eq!(json_lines(&none)[0]["findings"], serde_json::json!([]));
    let table = podlens(&server, &["findings"]).await;
    for part in ["ongoing", "shop/web", "neighbour", "batch/noisy 75%", "WORST NEIGHBOURS", "30.0ms"] {
        assert!(table.contains(part), "{part} in\n{table}");
    }

    // top --sort pressure: the pod-level cgroup only, both windows summed
    let rows = json_lines(&podlens(&server, &["top", "--sort", "pressure", "-o", "json"]).await);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let p = &rows[0]["pressure"];
    assert_eq!((p["windows"].as_u64(), p["wait_ns"].as_u64()), (Some(2), Some(80_000_000)));
    assert_eq!(p["run_queue_p99_ns"].as_u64(), Some(16_384));
    assert_eq!(p["verdict"]["kind"], "neighbour");
    assert_eq!(p["culprits"][0]["share"], 0.75, "60 of 80 ms");
    let table = podlens(&server, &["top", "--sort", "pressure"]).await;
    assert!(table.contains("RQ P99") && table.contains("shop/web") && table.contains("batch/noisy 75%"), "{table}");

    // observe from the history: pressure records resolved through the batch tables
    let out = podlens(&server, &["observe", "--since", "5m", "--kind", "pressure", "--limit", "4", "-o", "json"]).await;
    let records = json_lines(&out);
    assert_eq!(records.len(), 4, "{out}");
    assert!(records.iter().all(|r| r["kind"] == "pressure"));
    assert_eq!(records[0]["local"]["pod"]["name"], "web");
    assert_eq!(records[0]["run_queue"]["wait_ns"].as_u64(), Some(40_000_000));
    assert_eq!(records[1]["local"]["pod"]["container_id"], "c1");
    assert_eq!((records[1]["cpu"].clone(), records[1]["verdict"].clone()), (Value::Null, Value::Null));
    assert_eq!((records[2]["local"].clone(), records[2]["node_wide"].as_bool()), (Value::Null, Some(true)));
    let out = podlens(&server, &["observe", "--since", "5m", "--kind", "finding", "-n", "shop", "--limit", "2"]).await;
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("FINDING open") && lines[1].contains("FINDING ongoing"), "{out}");

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

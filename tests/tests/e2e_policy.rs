//! Tier 3, network-policy gaps: emulated pods, a directory of manifests with a
//! NetworkPolicy, the real agent streaming to the real collector with
//! `--manifests`. Nothing enforces policies here, so denied traffic flows and
//! must become an enforcement-gap finding; egress to pods missing from the
//! manifests plays "the internet": learned during the learning period, a new
//! destination after it is reported once, and not again, also after the
//! collector crashed and restarted with its baseline on disk.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use podlens_e2e::{
    agent::Agent,
    cluster::{write_inventory, Driver, Node, Pod, Qos},
    collector::{cli_path, Collector},
    privileged::unique,
};
use serde_json::{json, Value};

const LEARNING_S: u64 = 8;

fn write_manifests(dir: &Path, node: &str, pods: &[&Pod]) {
    std::fs::create_dir_all(dir).expect("manifests dir");
    let mut items: Vec<Value> = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops"}}),
    ];
    items.extend(pods.iter().map(|p| p.manifest(node)));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(dir.join("pods.json"), serde_json::to_string_pretty(&list).expect("json")).expect("pods.json");
    std::fs::write(
        dir.join("policies.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api-from-web, namespace: shop}\n\
         spec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    \
         ports: [{port: 8080}]\n",
    )
    .expect("policies.yaml");
}

/// A TCP exchange from `client` to `server`:`port`.
fn connect(client: &Pod, server: &Pod, port: u16) {
    let listen = SocketAddr::new(server.ip(false), port);
    let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    client.run(&["tcp-client", "--connect", &listen.to_string(), "--send", "100"]);
    srv.wait_json(Duration::from_secs(30));
}

/// `podlens findings -o json` against the collector's consumer API.
fn findings(c: &Collector) -> Vec<Value> {
    let out = std::process::Command::new(cli_path())
        .args(["findings", "--server", &format!("http://{}", c.consumers), "-o", "json"])
        .output()
        .expect("podlens findings");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    doc["findings"].as_array().cloned().unwrap_or_default()
}

fn wait_findings(c: &Collector, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = findings(c);
        if done(&f) {
            return f;
        }
        assert!(Instant::now() < deadline, "{what}: {f:#?}\ncollector log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn gap<'a>(f: &'a [Value], kind: &str, workload: &str, peer_part: &str) -> Vec<&'a Value> {
    f.iter()
        .filter(|x| {
            let g = &x["policy_gap"];
            x["finding_kind"] == kind
                && format!(
                    "{}/{}",
                    g["workload"]["namespace"].as_str().unwrap_or(""),
                    g["workload"]["name"].as_str().unwrap_or("")
                ) == workload
                && g["peer"].as_str().unwrap_or("").contains(peer_part)
        })
        .collect()
}

#[test]
fn enforcement_gaps_uncovered_and_unexpected_egress_once_across_a_collector_restart() {
    let dir: PathBuf = std::env::temp_dir().join(unique("policy"));
    std::fs::create_dir_all(&dir).expect("dir");
    eprintln!("logs: {}", dir.display());
    let mut node = Node::new(Driver::Systemd);
    let web = node.pod("shop", "web", Qos::Burstable);
    let api = node.pod("shop", "api", Qos::Burstable);
    let debug = node.pod("ops", "debug", Qos::BestEffort);
    // not in the manifests: outside the cluster as the collector sees it
    let site_a = node.pod("internet", "site-a", Qos::BestEffort);
    let site_b = node.pod("internet", "site-b", Qos::BestEffort);
    let site_c = node.pod("internet", "site-c", Qos::BestEffort);
    let manifests = dir.join("manifests");
    write_manifests(&manifests, "node-policy", &[&web, &api, &debug]);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "node-policy", &[&web, &api, &debug, &site_a, &site_b, &site_c]);

    let learning = format!("{LEARNING_S}s");
    let s = |p: &Path| p.display().to_string();
    let mut collector = Collector::start(
        vec![
            "--insecure-plaintext".into(),
            "--state-dir".into(),
            s(&dir.join("state")),
            "--manifests".into(),
            s(&manifests),
            "--egress-learning".into(),
            learning,
        ],
        &dir,
    );
    let ingest = format!("http://{}", collector.ingest);
    let inv = s(&inventory);
    let mut agent = Agent::start(
        "node-policy",
        "1s",
        &["--collector", &ingest, "--insecure-plaintext", "--pods-file", &inv, "--pressure", "false"],
        &dir,
    );

    // within web's learning period: allowed, denied, and a first external destination
    let learning_started = Instant::now();
    connect(&web, &api, 8080);
    connect(&debug, &api, 8080);
    // a server on a port in the ephemeral range: the agent's initiator, not
    // the port numbers, says who is the client
    connect(&debug, &api, 50051);
    connect(&web, &site_a, 443);
    let at = |f: &[Value], port: u64| {
        gap(f, "enforcement_gap", "shop/api", "ops/Pod/debug").iter().any(|g| g["policy_gap"]["port"] == port)
    };
    let f = wait_findings(&collector, "enforcement gaps and uncovered egress", |f| {
        at(f, 8080) && at(f, 50051) && !gap(f, "uncovered_egress", "shop/web", "shop/Pod/api").is_empty()
    });
    let ingress_of_debug: Vec<&Value> = f
        .iter()
        .filter(|x| x["policy_gap"]["workload"]["name"] == "debug" && x["policy_gap"]["direction"] == "ingress")
        .collect();
    assert!(ingress_of_debug.is_empty(), "debug was never a server: {ingress_of_debug:#?}");
    // one connection seen by both ends: each direction counted from its own
    // end's records only (both are drained at the same instants), not twice
    let flows_at = |kind: &str, workload: &str, peer: &str| -> Vec<Value> {
        gap(&f, kind, workload, peer)
            .iter()
            .filter(|g| g["policy_gap"]["port"] == 8080)
            .map(|g| g["policy_gap"]["flows"].clone())
            .collect()
    };
    let ingress = flows_at("enforcement_gap", "shop/api", "ops/Pod/debug");
    assert_eq!(ingress.len(), 1, "{f:#?}");
    assert_eq!(ingress, flows_at("uncovered_egress", "ops/debug", "shop/Pod/api"), "{f:#?}");
    assert!(gap(&f, "enforcement_gap", "shop/web", "").is_empty(), "web -> api is allowed: {f:#?}");
    assert!(!gap(&f, "unprotected_pod", "shop/web", "").is_empty(), "no policy selects web: {f:#?}");
    assert!(gap(&f, "unexpected_egress", "shop/web", "").is_empty(), "still learning: {f:#?}");

    // after learning: a new destination is reported once, the learned one never
    let left = Duration::from_secs(LEARNING_S + 2).saturating_sub(learning_started.elapsed());
    std::thread::sleep(left);
    connect(&web, &site_b, 443);
    connect(&web, &site_b, 443);
    connect(&web, &site_a, 443);
    let b = site_b.v4.to_string();
    let f = wait_findings(&collector, "unexpected egress to site-b", |f| {
        !gap(f, "unexpected_egress", "shop/web", &b).is_empty()
    });
    assert_eq!(gap(&f, "unexpected_egress", "shop/web", &b).len(), 1, "{f:#?}");
    assert!(gap(&f, "unexpected_egress", "shop/web", &site_a.v4.to_string()).is_empty(), "learned: {f:#?}");

    // coverage of what was observed, per namespace
    let out = std::process::Command::new(cli_path())
        .args(["policy", "report", "--server", &format!("http://{}", collector.consumers), "-o", "json"])
        .output()
        .expect("podlens policy report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ns = |name: &str| {
        report["namespaces"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["namespace"] == name).cloned())
            .unwrap_or_default()
    };
    let (shop, ops) = (ns("shop"), ns("ops"));
    assert_eq!(
        (shop["workloads"].as_u64(), shop["workloads_ingress_isolated"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!(shop["workloads_egress_isolated"].as_u64(), Some(0), "{report}");
    assert!(shop["flows_denied"].as_u64() >= Some(1) && shop["flows_covered"].as_u64() >= Some(1), "{report}");
    assert!(ops["flows_uncovered"].as_u64() >= Some(1), "{report}");

    // a crash (the baseline is written within two seconds of a change) and a restart
    std::thread::sleep(Duration::from_secs(3));
    collector.restart();
    connect(&web, &site_b, 443);
    connect(&web, &site_c, 443);
    let c = site_c.v4.to_string();
    let f = wait_findings(&collector, "unexpected egress to site-c after the restart", |f| {
        !gap(f, "unexpected_egress", "shop/web", &c).is_empty()
    });
    assert!(gap(&f, "unexpected_egress", "shop/web", &b).is_empty(), "site-b is in the baseline now: {f:#?}");
    agent.stop();
}

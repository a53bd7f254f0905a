//! The agent -> collector stream with real processes and real sockets: outages,
//! bounded buffers, restarts, several nodes, slow consumers, and what the
//! collector refuses (bad certificates, malformed and oversized messages).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use podlens_collector::cli::connect::{ClientTlsArgs, ConnectArgs};
use podlens_e2e::{
    agent::{Agent, Observer},
    cluster::{write_inventory, Driver, Node, Pod, Qos},
    collector::Collector,
    pki::Pki,
    privileged::unique,
    records::{flows, loss_total, pod_totals, Tuple},
};
use podlens_proto::v1 as pb;

struct Env {
    dir: PathBuf,
    pki: Pki,
}

impl Env {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).expect("dir");
        let pki = Pki::create(&dir.join("pki"));
        eprintln!("logs and certificates: {}", dir.display());
        Self { dir, pki }
    }

    fn consumer(&self, c: &Collector) -> ConnectArgs {
        ConnectArgs {
            server: format!("https://localhost:{}", c.consumers.port()),
            tls: ClientTlsArgs { tls_ca: Some(self.pki.ca.clone()), ..Default::default() },
            token_file: Some(self.pki.token_file.clone()),
        }
    }

    /// Agent flags for streaming to `c` with the agent's certificate.
    fn agent_flags(&self, c: &Collector, inventory: &std::path::Path, extra: &[&str]) -> Vec<String> {
        let s = |p: &std::path::Path| p.display().to_string();
        let mut v = vec![
            "--collector".to_string(),
            format!("https://localhost:{}", c.ingest.port()),
            "--tls-ca".into(),
            s(&self.pki.ca),
            "--tls-cert".into(),
            s(&self.pki.agent.cert),
            "--tls-key".into(),
            s(&self.pki.agent.key),
            "--pods-file".into(),
            s(inventory),
        ];
        v.extend(extra.iter().map(|e| e.to_string()));
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn start_agent(env: &Env, node: &str, flags: &[String]) -> Agent {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Agent::start(node, "1s", &flags, &env.dir)
}

/// A TCP transfer; returns the client's local address and the expected
/// packets on the client side (out, in), from TCP_INFO.
fn transfer(client: &Pod, server: &Pod, port: u16, bytes: u64) -> (SocketAddr, u64, u64) {
    let listen = SocketAddr::new(server.ip(false), port);
    let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    let out = client.run(&["tcp-client", "--connect", &listen.to_string(), "--send", &bytes.to_string()]);
    srv.wait_json(Duration::from_secs(30));
    let info = |f: &str| out[0]["tcp_info"][f].as_u64().expect("tcp_info");
    (out[0]["local"].as_str().unwrap().parse().unwrap(), info("segs_out"), info("segs_in"))
}

fn client_tuple(local: SocketAddr, server: &Pod, port: u16) -> Tuple {
    Tuple {
        local_ip: local.ip().to_string(),
        local_port: local.port().into(),
        remote_ip: server.ip(false).to_string(),
        remote_port: port.into(),
        protocol: 6,
    }
}

fn packets(records: &[pb::Record], pod: &Pod, t: &Tuple) -> (u64, u64) {
    pod_totals(records, &pod.uid).get(t).map_or((0, 0), |x| (x.egress_packets, x.ingress_packets))
}

/// Waits until the observer sees one more window end (a loss record) than now.
fn next_window(o: &Observer) {
    let count = |r: &[pb::Record]| r.iter().filter(|r| matches!(r.kind, Some(pb::record::Kind::Loss(_)))).count();
    let now = count(&o.records());
    o.wait_until(Duration::from_secs(10), |r| count(r) > now);
}

fn two_pods(env: &Env) -> (Node, Pod, Pod, PathBuf) {
    let mut node = Node::new(Driver::Systemd);
    let a = node.pod("stream", "client", Qos::Burstable);
    let b = node.pod("stream", "server", Qos::Burstable);
    let inventory = env.dir.join("pods.yaml");
    write_inventory(&inventory, "node-1", &[&a, &b]);
    (node, a, b, inventory)
}

#[test]
fn collector_down_for_30s_loses_nothing_and_counts_nothing_twice() {
    let env = Env::new("outage");
    let (_node, a, b, inventory) = two_pods(&env);
    let mut collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let _agent = start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &[]));
    let before = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());

    let mut expected: Vec<(Tuple, u64, u64)> = Vec::new();
    let (local, out, inn) = transfer(&a, &b, 9100, 50_000);
    expected.push((client_tuple(local, &b, 9100), out, inn));
    before.wait_until(Duration::from_secs(15), |r| packets(r, &a, &expected[0].0) == (out, inn));
    // kill right after a window was delivered, so no batch is in flight
    next_window(&before);
    collector.kill();

    let down = Instant::now();
    let mut port = 9101;
    while down.elapsed() < Duration::from_secs(30) {
        let (local, out, inn) = transfer(&a, &b, port, 20_000 + u64::from(port));
        expected.push((client_tuple(local, &b, port), out, inn));
        port += 1;
        std::thread::sleep(Duration::from_secs(4));
    }
    collector.restart();
    // everything this collector run received, from its history onwards
    let after = Observer::connect_with(
        env.consumer(&collector),
        pb::ObserveRequest { since_unix_nano: 1, ..Default::default() },
    );
    let all = |o: &[pb::Record]| -> Vec<pb::Record> { before.records().into_iter().chain(o.iter().cloned()).collect() };
    let records = after.wait_until(Duration::from_secs(60), |r| {
        let all = all(r);
        expected.iter().all(|(t, out, inn)| packets(&all, &a, t) == (*out, *inn))
    });
    let all = all(&records);
    for (t, out, inn) in &expected {
        assert_eq!(packets(&all, &a, t), (*out, *inn), "{t:?}: packets out/in after the outage");
    }
    // every window's batch arrived, and none was delivered by both collector runs
    let batches: BTreeSet<u64> = before
        .with_origins()
        .into_iter()
        .chain(after.with_origins())
        .map(|(_, o)| o.expect("origin").sequence)
        .collect();
    let (first, last) = (batches.first().copied().unwrap_or(0), batches.last().copied().unwrap_or(0));
    let missing: Vec<u64> = (first..=last).filter(|s| !batches.contains(s)).collect();
    assert!(missing.is_empty(), "sequences missing between {first} and {last}: {missing:?}");
    assert!(batches.len() > 30, "{} batches seen", batches.len());
    let first_run_batches: BTreeSet<u64> =
        before.with_origins().into_iter().filter_map(|(_, o)| o.map(|o| o.sequence)).collect();
    let second_run_batches: BTreeSet<u64> =
        after.with_origins().into_iter().filter_map(|(_, o)| o.map(|o| o.sequence)).collect();
    assert!(first_run_batches.is_disjoint(&second_run_batches), "a batch was published by both collector runs");
    assert_eq!(loss_total(&all, "export", "dropped_batches"), Some(0));
}

#[test]
fn agent_streams_renew_their_tls_connection_at_the_collectors_max_age() {
    let env = Env::new("maxage");
    let (_node, a, b, inventory) = two_pods(&env);
    let collector = Collector::start_tls(&env.pki, &env.dir, &["--max-connection-age", "2s"]);
    let agent = start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &[]));
    let observer = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());
    let mut expected: Vec<(Tuple, u64, u64)> = Vec::new();
    for port in 9400..9404 {
        let (local, out, inn) = transfer(&a, &b, port, 30_000);
        expected.push((client_tuple(local, &b, port), out, inn));
        std::thread::sleep(Duration::from_millis(2500));
    }
    let records = observer.wait_until(Duration::from_secs(20), |r| {
        expected.iter().all(|(t, out, inn)| packets(r, &a, t) == (*out, *inn))
    });
    for (t, out, inn) in &expected {
        assert_eq!(packets(&records, &a, t), (*out, *inn), "{t:?}: packets out/in across renewed streams");
    }
    // every batch, once, although streams ended with batches in flight
    let seen: Vec<u64> = observer.with_origins().into_iter().map(|(_, o)| o.expect("origin").sequence).collect();
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    let (first, last) = (unique.first().copied().unwrap_or(0), unique.last().copied().unwrap_or(0));
    let missing: Vec<u64> = (first..=last).filter(|s| !unique.contains(s)).collect();
    assert!(missing.is_empty(), "sequences missing between {first} and {last}: {missing:?}");
    // one origin per record: a batch published again would show its sequence after later ones
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "a batch was published twice: {seen:?}");
    // a new connection (so a new TLS handshake) every 2 s, none of them counted as a failure
    let m = agent.metrics();
    let connects = podlens_e2e::http::value(&m, "podlens_agent_stream_connects_total", &[]).unwrap_or(0.0);
    assert!(connects >= 4.0, "{connects} stream connects in ~10 s with a 2 s maximum age");
    assert_eq!(podlens_e2e::http::value(&m, "podlens_agent_stream_failures_total", &[]), Some(0.0));
    assert_eq!(loss_total(&records, "export", "dropped_batches"), Some(0));
}

#[test]
fn a_frozen_collector_is_found_by_keepalive_and_nothing_is_lost() {
    let env = Env::new("frozen");
    let (_node, a, b, inventory) = two_pods(&env);
    let collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let agent = start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &[]));
    let before = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());
    let mut expected: Vec<(Tuple, u64, u64)> = Vec::new();
    let (local, out, inn) = transfer(&a, &b, 9500, 20_000);
    expected.push((client_tuple(local, &b, 9500), out, inn));
    before.wait_until(Duration::from_secs(15), |r| packets(r, &a, &expected[0].0) == (out, inn));
    next_window(&before);
    let failures =
        || podlens_e2e::http::value(&agent.metrics(), "podlens_agent_stream_failures_total", &[]).unwrap_or(0.0);
    let failed_before = failures();
    // SIGSTOP: the connection stays open and nothing answers, no RST, no FIN (a hung process,
    // a dead node behind a load balancer); only HTTP/2 keepalive can tell
    let pid = collector.pid().to_string();
    podlens_e2e::cluster::sh("kill", &["-STOP", &pid]);
    let frozen = Instant::now();
    let mut found_after = None;
    let mut port = 9501;
    while frozen.elapsed() < Duration::from_secs(35) {
        let (local, out, inn) = transfer(&a, &b, port, 10_000 + u64::from(port));
        expected.push((client_tuple(local, &b, port), out, inn));
        port += 1;
        if found_after.is_none() && failures() > failed_before {
            found_after = Some(frozen.elapsed());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    podlens_e2e::cluster::sh("kill", &["-CONT", &pid]);
    let found_after = found_after.expect("the agent never noticed the frozen collector");
    assert!(found_after < Duration::from_secs(30), "noticed after {found_after:?} (keepalive: 10 s + 10 s)");
    let after = Observer::connect_with(
        env.consumer(&collector),
        pb::ObserveRequest { since_unix_nano: 1, ..Default::default() },
    );
    let records = after.wait_until(Duration::from_secs(60), |r| {
        expected.iter().all(|(t, out, inn)| packets(r, &a, t) == (*out, *inn))
    });
    for (t, out, inn) in &expected {
        assert_eq!(packets(&records, &a, t), (*out, *inn), "{t:?}: packets out/in after the freeze");
    }
    let batches: BTreeSet<u64> = after.with_origins().into_iter().map(|(_, o)| o.expect("origin").sequence).collect();
    let (first, last) = (batches.first().copied().unwrap_or(0), batches.last().copied().unwrap_or(0));
    let missing: Vec<u64> = (first..=last).filter(|s| !batches.contains(s)).collect();
    assert!(missing.is_empty(), "sequences missing between {first} and {last}: {missing:?}");
    assert_eq!(loss_total(&records, "export", "dropped_batches"), Some(0));
}

#[test]
fn an_outage_beyond_the_buffer_is_reported_exactly() {
    let env = Env::new("bound");
    let (_node, a, b, inventory) = two_pods(&env);
    let mut collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let _agent =
        start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &["--export-buffer-bytes", "8192"]));
    let before = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());
    next_window(&before);
    collector.kill();
    // ~15 windows of about 1-2 KiB each: far more than 8 KiB
    for port in 9200..9205 {
        transfer(&a, &b, port, 10_000);
        std::thread::sleep(Duration::from_secs(3));
    }
    collector.restart();
    let after = Observer::connect_with(
        env.consumer(&collector),
        pb::ObserveRequest { since_unix_nano: 1, ..Default::default() },
    );
    // wait until a few windows passed since the restart: the buffer has drained
    for _ in 0..3 {
        next_window(&after);
    }
    let all: Vec<pb::Record> = before.records().into_iter().chain(after.records()).collect();
    let last_loss = all
        .iter()
        .filter(|r| matches!(r.kind, Some(pb::record::Kind::Loss(_))))
        .max_by_key(|r| r.window_end_unix_nano)
        .expect("a loss report")
        .clone();
    let report = |reason: &str| match &last_loss.kind {
        Some(pb::record::Kind::Loss(l)) => l.counters.iter().find(|c| c.reason == reason).map_or(0, |c| c.total),
        _ => 0,
    };
    let produced = report("produced_flow_packets");
    let dropped = report("dropped_flow_packets");
    assert!(report("dropped_batches") > 0, "the outage overflowed the 8 KiB buffer");
    // the report covers every window before its own
    let received: u64 = all
        .iter()
        .filter(|r| r.window_end_unix_nano < last_loss.window_start_unix_nano + 1)
        .filter_map(|r| match &r.kind {
            Some(pb::record::Kind::Flow(f)) => {
                Some(f.egress.map_or(0, |c| c.packets) + f.ingress.map_or(0, |c| c.packets))
            }
            _ => None,
        })
        .sum();
    assert_eq!(received + dropped, produced, "received {received} + reported dropped {dropped} = produced {produced}");
}

#[test]
fn agent_killed_and_restarted_leaves_traffic_alone_and_counts_nothing_twice() {
    let env = Env::new("akill");
    let (_node, a, b, inventory) = two_pods(&env);
    let collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let flags = env.agent_flags(&collector, &inventory, &[]);
    let mut agent = start_agent(&env, "node-1", &flags);
    let o = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());
    let (l1, out1, in1) = transfer(&a, &b, 9300, 30_000);
    let t1 = client_tuple(l1, &b, 9300);
    o.wait_until(Duration::from_secs(15), |r| packets(r, &a, &t1) == (out1, in1));

    // a transfer running (about 3 s) while the agent is SIGKILLed and restarted
    let listen = SocketAddr::new(b.ip(false), 9301);
    let mut srv = b.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    let client = a.spawn(&["tcp-client", "--connect", &listen.to_string(), "--send", "2097152", "--pace-ms", "100"]);
    std::thread::sleep(Duration::from_millis(800));
    drop(agent);
    agent = start_agent(&env, "node-1", &flags);
    client.wait_json(Duration::from_secs(60));
    let received = srv.wait_json(Duration::from_secs(30));
    assert_eq!(received[0]["received"].as_u64(), Some(2_097_152), "the pod's transfer was not disturbed");

    let (l2, out2, in2) = transfer(&a, &b, 9302, 40_000);
    let t2 = client_tuple(l2, &b, 9302);
    let records = o.wait_until(Duration::from_secs(20), |r| packets(r, &a, &t2) == (out2, in2));
    assert_eq!(packets(&records, &a, &t1), (out1, in1), "before the kill: exact, once");
    assert_eq!(packets(&records, &a, &t2), (out2, in2), "after the restart: exact, once");
    let epochs: BTreeSet<u64> =
        o.with_origins().into_iter().filter_map(|(_, o)| o.map(|o| o.agent_epoch_unix_nano)).collect();
    assert_eq!(epochs.len(), 2, "two agent runs, told apart by their epoch");
    drop(agent);
}

#[test]
fn two_nodes_stream_into_one_collector() {
    let env = Env::new("twonodes");
    let (_node, a, b, inventory) = two_pods(&env);
    let collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let _n1 = start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &[]));
    let _n2 = start_agent(&env, "node-2", &env.agent_flags(&collector, &inventory, &[]));
    let n2_only = Observer::connect_with(
        env.consumer(&collector),
        pb::ObserveRequest { nodes: vec!["node-2".into()], ..Default::default() },
    );
    let (local, out, inn) = transfer(&a, &b, 9400, 10_000);
    let t = client_tuple(local, &b, 9400);
    let records = n2_only.wait_until(Duration::from_secs(15), |r| packets(r, &a, &t) == (out, inn));
    assert!(records.iter().all(|r| r.node == "node-2"), "the node filter holds");
    assert_eq!(packets(&records, &a, &t), (out, inn), "node-2 saw the same traffic exactly once");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(async {
        let mut q = pb::query_client::QueryClient::new(env.consumer(&collector).connect().await.unwrap());
        q.status(pb::StatusRequest {}).await.unwrap().into_inner()
    });
    let names: Vec<String> = status.nodes.iter().filter_map(|n| n.node.as_ref().map(|i| i.name.clone())).collect();
    assert_eq!(names, ["node-1", "node-2"]);
    assert!(status.nodes.iter().all(|n| n.batches > 0 && n.duplicates == 0 && n.gaps == 0));
}

#[test]
fn a_consumer_that_stops_reading_is_disconnected_and_never_slows_ingest() {
    let env = Env::new("slow");
    let (_node, a, b, inventory) = two_pods(&env);
    // room for one busy window (a few thousand records), not for several
    let collector =
        Collector::start_tls(&env.pki, &env.dir, &["--consumer-buffer", "10000", "--history-records", "10000"]);
    let _agent = start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &[]));
    let fast = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());

    // a raw client that opens the stream and never reads it
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let connect = env.consumer(&collector);
    let mut stalled = rt.block_on(async {
        let mut c = pb::observe_client::ObserveClient::new(connect.connect().await.unwrap());
        c.observe(pb::ObserveRequest::default()).await.unwrap().into_inner()
    });
    // several busy windows: ~24 000 records in all, more than the stalled consumer may queue
    let listen = SocketAddr::new(b.ip(false), 9500);
    let mut srv = b.spawn(&["tcp-server", "--listen", &listen.to_string(), "--conns", "12000"]);
    srv.first_line();
    // paced, so each window (~2 records per connection) stays well inside the
    // fast consumer's buffer whatever else the machine is doing
    a.run(&["tcp-churn", "--connect", &listen.to_string(), "--count", "12000", "--rate", "2000"]);
    srv.wait_json(Duration::from_secs(60));
    next_window(&fast);
    let (local, out, inn) = transfer(&a, &b, 9501, 10_000);
    let t = client_tuple(local, &b, 9501);
    let records = fast.wait_until(Duration::from_secs(15), |r| packets(r, &a, &t) == (out, inn));
    assert_eq!(packets(&records, &a, &t), (out, inn), "ingest and the fast consumer kept going");
    assert_eq!(loss_total(&records, "export", "dropped_batches"), Some(0), "the agent never had to drop");
    // the stalled consumer now reads: what was queued, then the status
    let status = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stalled.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => return Some(status),
                Err(_) => return None,
            }
        }
    });
    let status = status.expect("the stalled consumer ends with an error status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(collector.metrics_text().contains("podlens_collector_consumers_dropped_total 1"));
}

/// A raw Ingest client with the given TLS identity (None: no certificate).
fn ingest_client(
    env: &Env,
    c: &Collector,
    identity: Option<&podlens_e2e::pki::Identity>,
) -> podlens_collector::tls::ClientTlsFiles {
    let _ = c;
    podlens_collector::tls::ClientTlsFiles {
        ca: Some(env.pki.ca.clone()),
        cert: identity.map(|i| i.cert.clone()),
        key: identity.map(|i| i.key.clone()),
        server_name: Some("localhost".into()),
    }
}

async fn send_batches(
    c: &Collector,
    tls: podlens_collector::tls::ClientTlsFiles,
    batches: Vec<pb::Batch>,
) -> Result<Vec<u64>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", c.ingest.port()))
        .map_err(|e| e.to_string())?
        .tls_config(tls.tonic_config().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = pb::ingest_client::IngestClient::new(channel).max_encoding_message_size(64 << 20);
    let mut acks = client
        .stream(tokio_stream::iter(batches))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut out = Vec::new();
    loop {
        match acks.message().await {
            Ok(Some(a)) => out.push(a.sequence),
            Ok(None) => return Ok(out),
            Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

fn fake_batch(node: &str, seq: u64, records: usize, pad: usize) -> pb::Batch {
    pb::Batch {
        node: Some(pb::NodeIdentity { name: node.into(), agent_epoch_unix_nano: 1, ..Default::default() }),
        sequence: seq,
        records: (0..records)
            .map(|_| pb::Record {
                node: node.into(),
                kind: Some(pb::record::Kind::Flow(pb::FlowRecord { local_ip: "x".repeat(pad), ..Default::default() })),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn bad_certificates_and_bad_messages_are_refused_and_others_keep_being_served() {
    let env = Env::new("refuse");
    let collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let good = ingest_client(&env, &collector, Some(&env.pki.agent));

    // a well-behaved test client speaking the protocol
    assert_eq!(rt.block_on(send_batches(&collector, good.clone(), vec![fake_batch("fake-1", 1, 3, 1)])), Ok(vec![1]));
    // no, expired and wrongly signed client certificates
    for (what, id) in [
        ("no certificate", None),
        ("expired certificate", Some(&env.pki.expired_agent)),
        ("certificate from another CA", Some(&env.pki.rogue_agent)),
    ] {
        let r = rt.block_on(send_batches(
            &collector,
            ingest_client(&env, &collector, id),
            vec![fake_batch("fake-x", 1, 1, 1)],
        ));
        assert!(r.is_err(), "{what}: accepted: {r:?}");
    }
    // the agent's side: a collector certificate without the expected name is refused
    let mut wrong_name = ingest_client(&env, &collector, Some(&env.pki.agent));
    wrong_name.server_name = Some("not-the-collector.example".into());
    let r = rt.block_on(send_batches(&collector, wrong_name, vec![fake_batch("fake-x", 1, 1, 1)]));
    assert!(r.as_ref().is_err_and(|e| e.contains("connect")), "a certificate for another name accepted: {r:?}");
    // a plaintext client on the TLS listener gets nothing through
    let r = rt.block_on(plaintext_batch(&collector, fake_batch("fake-x", 1, 1, 1)));
    assert!(r.is_err(), "plaintext accepted: {r:?}");
    // an invalid batch (sequence 0) and one over the 8 MiB limit end that stream only
    let r = rt.block_on(send_batches(&collector, good.clone(), vec![fake_batch("fake-1", 0, 1, 1)]));
    assert!(r.as_ref().is_err_and(|e| e.contains("InvalidArgument") && e.contains("sequence")), "{r:?}");
    let r = rt.block_on(send_batches(&collector, good.clone(), vec![fake_batch("fake-1", 2, 10, 1 << 20)]));
    assert!(r.as_ref().is_err_and(|e| e.contains("OutOfRange") || e.contains("ResourceExhausted")), "{r:?}");
    // garbage bytes instead of a protobuf message
    let r = rt.block_on(raw_garbage(&collector, good.clone()));
    assert!(r.is_err(), "garbage accepted: {r:?}");
    // and the collector still serves the good client
    assert_eq!(rt.block_on(send_batches(&collector, good, vec![fake_batch("fake-1", 2, 1, 1)])), Ok(vec![2]));
    let metrics = collector.metrics_text();
    let rejected = metrics
        .lines()
        .find_map(|l| l.strip_prefix("podlens_collector_tls_handshakes_rejected_total{listener=\"ingest\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(rejected >= 2, "handshake rejections counted ({rejected}):\n{metrics}");

    // consumers: token, certificate, neither
    let status = |connect: ConnectArgs| {
        rt.block_on(async {
            let mut q = pb::query_client::QueryClient::new(connect.connect().await.map_err(|e| e.to_string())?);
            q.status(pb::StatusRequest {}).await.map(|_| ()).map_err(|s| format!("{:?}", s.code()))
        })
    };
    assert_eq!(status(env.consumer(&collector)), Ok(()), "token");
    let mut with_cert = ConnectArgs { token_file: None, ..env.consumer(&collector) };
    with_cert.tls.tls_cert = Some(env.pki.consumer.cert.clone());
    with_cert.tls.tls_key = Some(env.pki.consumer.key.clone());
    assert_eq!(status(with_cert), Ok(()), "client certificate");
    let anonymous = ConnectArgs { token_file: None, ..env.consumer(&collector) };
    assert_eq!(status(anonymous), Err("Unauthenticated".into()));
    let wrong = env.dir.join("wrong-token");
    std::fs::write(&wrong, "nope\n").unwrap();
    assert_eq!(
        status(ConnectArgs { token_file: Some(wrong), ..env.consumer(&collector) }),
        Err("Unauthenticated".into())
    );
}

/// One batch over plaintext HTTP/2 (no TLS at all).
async fn plaintext_batch(c: &Collector, batch: pb::Batch) -> Result<Vec<u64>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", c.ingest.port()))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = pb::ingest_client::IngestClient::new(channel);
    let mut acks = client
        .stream(tokio_stream::iter(vec![batch]))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match acks.message().await {
        Ok(Some(a)) => Ok(vec![a.sequence]),
        Ok(None) => Err("closed".into()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A gRPC message whose bytes are not a Batch.
async fn raw_garbage(c: &Collector, tls: podlens_collector::tls::ClientTlsFiles) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", c.ingest.port()))
        .map_err(|e| e.to_string())?
        .tls_config(tls.tonic_config().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34];
    let mut stream =
        podlens_e2e::raw::ingest_stream(channel, vec![garbage]).await.map_err(|s| format!("{:?}", s.code()))?;
    match stream.message().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("closed".into()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

#[test]
fn the_collector_reloads_a_rotated_client_ca() {
    let env = Env::new("rotate");
    // the collector starts trusting only the rogue CA for agents...
    let agent_ca = env.dir.join("agent-ca.crt");
    std::fs::copy(&env.pki.rogue_ca, &agent_ca).unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    let args = vec![
        "--tls-cert".into(),
        s(&env.pki.server.cert),
        "--tls-key".into(),
        s(&env.pki.server.key),
        "--agent-ca".into(),
        s(&agent_ca),
        "--consumer-token-file".into(),
        s(&env.pki.token_file),
    ];
    let collector = Collector::start(args, &env.dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let good = ingest_client(&env, &collector, Some(&env.pki.agent));
    assert!(rt.block_on(send_batches(&collector, good.clone(), vec![fake_batch("r", 1, 1, 1)])).is_err());
    // ...then the Secret is updated to the real CA: new handshakes use it
    let tmp = env.dir.join("agent-ca.tmp");
    std::fs::copy(&env.pki.ca, &tmp).unwrap();
    std::fs::rename(&tmp, &agent_ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rt.block_on(send_batches(&collector, good.clone(), vec![fake_batch("r", 1, 1, 1)])) {
            Ok(acks) => {
                assert_eq!(acks, [1]);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the rotated CA was not picked up: {e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The collector's view of a node equals the agent's own (standalone) view.
#[test]
fn collector_and_standalone_views_agree() {
    let env = Env::new("views");
    let (_node, a, b, inventory) = two_pods(&env);
    let collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    let agent = start_agent(&env, "node-1", &env.agent_flags(&collector, &inventory, &[]));
    let remote = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());
    let local = Observer::connect(agent.addr, pb::ObserveRequest::default());
    let (l, out, inn) = transfer(&a, &b, 9600, 12_345);
    let t = client_tuple(l, &b, 9600);
    let r = remote.wait_until(Duration::from_secs(15), |r| packets(r, &a, &t) == (out, inn));
    let lr = local.wait_until(Duration::from_secs(15), |r| packets(r, &a, &t) == (out, inn));
    assert_eq!(packets(&r, &a, &t), packets(&lr, &a, &t));
    assert!(flows(&r).count() > 0);
}

/// The agent reads its certificate files at every connection attempt: an
/// agent whose certificate is refused recovers once the files are replaced.
#[test]
fn the_agent_picks_up_a_rotated_certificate() {
    let env = Env::new("agentrot");
    let (_node, a, b, inventory) = two_pods(&env);
    let collector = Collector::start_tls(&env.pki, &env.dir, &[]);
    // the agent starts with a certificate the collector does not trust
    let cert = env.dir.join("node.crt");
    let key = env.dir.join("node.key");
    std::fs::copy(&env.pki.rogue_agent.cert, &cert).unwrap();
    std::fs::copy(&env.pki.rogue_agent.key, &key).unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    let flags = vec![
        "--collector".to_string(),
        format!("https://localhost:{}", collector.ingest.port()),
        "--tls-ca".into(),
        s(&env.pki.ca),
        "--tls-cert".into(),
        s(&cert),
        "--tls-key".into(),
        s(&key),
        "--pods-file".into(),
        s(&inventory),
    ];
    let _agent = start_agent(&env, "node-1", &flags);
    let o = Observer::connect_with(env.consumer(&collector), pb::ObserveRequest::default());
    std::thread::sleep(Duration::from_secs(3));
    assert!(o.records().is_empty(), "a refused certificate delivers nothing");
    // the Secret is updated
    std::fs::copy(&env.pki.agent.cert, &cert).unwrap();
    std::fs::copy(&env.pki.agent.key, &key).unwrap();
    let (local, out, inn) = transfer(&a, &b, 9800, 5_000);
    let t = client_tuple(local, &b, 9800);
    let records = o.wait_until(Duration::from_secs(45), |r| packets(r, &a, &t) == (out, inn));
    assert_eq!(packets(&records, &a, &t), (out, inn), "after the rotation the stream carries everything, replayed");
}

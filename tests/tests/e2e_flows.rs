//! Tier 3: the real agent binary against emulated pods (kubelet cgroup layouts,
//! one network namespace each, joined by veth to a node bridge) with real
//! TCP/UDP traffic over IPv4 and IPv6.
//!
//! What is counted, precisely: bytes are L3 bytes per segment (IP header +
//! transport header + payload, no Ethernet), packets are segments. The pods'
//! namespaces turn off TCP timestamps, SACK and window scaling, so every TCP
//! header is 20 bytes except SYN and SYN-ACK (24: MSS option). The expected
//! values come from the kernel's own per-socket counters (TCP_INFO segs_out,
//! segs_in, bytes_sent) and, for UDP, from the datagrams the test sent. One
//! segment is not in the accepted socket's counters: the SYN-ACK, which the
//! listener sends on the connection's behalf (same cgroup, same 4-tuple), so a
//! server side sends segs_out + 1 segments.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use podlens_e2e::{
    agent::{Agent, Observer},
    cluster::{write_inventory, Driver, Node, Pod, Qos},
    records::{pod_totals, totals, Totals, Tuple},
};
use podlens_proto::v1::{self as pb, workload};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    _dir: tempfile_dir::Dir,
    inventory: std::path::PathBuf,
    node_name: String,
}

mod tempfile_dir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(podlens_e2e::privileged::unique(tag));
            std::fs::create_dir_all(&p).expect("tempdir");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn setup(tag: &str) -> Setup {
    let dir = tempfile_dir::Dir::new(tag);
    let inventory = dir.0.join("pods.yaml");
    Setup { inventory, node_name: format!("node-{tag}"), _dir: dir }
}

fn start_agent(s: &Setup) -> (Agent, Observer) {
    let inv = s.inventory.to_string_lossy().into_owned();
    let agent = Agent::start(&s.node_name, "1s", &["--pods-file", &inv], &s._dir.0);
    eprintln!("agent log: {}", s._dir.0.display());
    let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
    (agent, observer)
}

fn sock(v: &Value, field: &str) -> SocketAddr {
    v[field].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{field} in {v}"))
}

fn info(v: &Value, field: &str) -> u64 {
    v["tcp_info"][field].as_u64().unwrap_or_else(|| panic!("tcp_info.{field} in {v}"))
}

fn tuple(local: SocketAddr, remote: SocketAddr, protocol: u32) -> Tuple {
    Tuple {
        local_ip: local.ip().to_string(),
        local_port: local.port().into(),
        remote_ip: remote.ip().to_string(),
        remote_port: remote.port().into(),
        protocol,
    }
}

/// Expected L3 bytes of one side of a TCP connection (see the module comment).
fn tcp_bytes(payload: u64, segments: u64, v6: bool) -> u64 {
    let ip = if v6 { 40 } else { 20 };
    payload + segments * (ip + 20) + 4
}

/// One TCP transfer between two pods; returns (client, server) TCP_INFO lines.
fn tcp_transfer(client: &Pod, server: &Pod, v6: bool, port: u16, send: u64, reply: u64) -> (Value, Value) {
    let listen = SocketAddr::new(server.ip(v6), port);
    let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string(), "--reply", &reply.to_string()]);
    srv.first_line();
    let c = client.run(&["tcp-client", "--connect", &listen.to_string(), "--send", &send.to_string()]);
    let s = srv.wait_json(Duration::from_secs(30));
    let (c, s) = (c[0].clone(), s[0].clone());
    assert_eq!(s["received"].as_u64(), Some(send), "server received everything");
    assert_eq!(c["received"].as_u64(), Some(reply), "client received the reply");
    for side in [&c, &s] {
        assert_eq!(info(side, "total_retrans"), 0, "no retransmissions on a veth: {side}");
    }
    (c, s)
}

/// Asserts both sides' records of a TCP connection match the kernel's counters exactly.
fn assert_tcp_exact(records: &[pb::Record], client: &Pod, server: &Pod, c: &Value, s: &Value, v6: bool) {
    let (cl, sv) = (sock(c, "local"), sock(c, "peer"));
    let want_client = Totals {
        egress_packets: info(c, "segs_out"),
        ingress_packets: info(c, "segs_in"),
        egress_bytes: tcp_bytes(info(c, "bytes_sent"), info(c, "segs_out"), v6),
        ingress_bytes: tcp_bytes(info(s, "bytes_sent"), info(c, "segs_in"), v6),
        ..Default::default()
    };
    let got = pod_totals(records, &client.uid).remove(&tuple(cl, sv, 6)).unwrap_or_default();
    assert_eq!(
        (got.egress_packets, got.ingress_packets, got.egress_bytes, got.ingress_bytes),
        (want_client.egress_packets, want_client.ingress_packets, want_client.egress_bytes, want_client.ingress_bytes),
        "client {} side of {cl} -> {sv} (packets out/in, bytes out/in)",
        client.name
    );
    assert_eq!((got.syn, got.fin), ((1, 1), (1, 1)), "client SYN/FIN out/in");
    assert!(got.initiators.iter().all(|i| *i == pb::Initiator::Local), "client initiator {:?}", got.initiators);
    let got = pod_totals(records, &server.uid).remove(&tuple(sv, cl, 6)).unwrap_or_default();
    assert_eq!(
        (got.egress_packets, got.ingress_packets, got.egress_bytes, got.ingress_bytes),
        (
            info(s, "segs_out") + 1,
            info(s, "segs_in"),
            tcp_bytes(info(s, "bytes_sent"), info(s, "segs_out") + 1, v6),
            tcp_bytes(info(c, "bytes_sent"), info(s, "segs_in"), v6),
        ),
        "server {} side of {sv} <- {cl}",
        server.name
    );
    assert!(got.initiators.iter().all(|i| *i == pb::Initiator::Remote), "server initiator {:?}", got.initiators);
}

fn tcp_complete(
    records: &[pb::Record],
    pod: &Pod,
    local: SocketAddr,
    remote: SocketAddr,
    packets_out: u64,
    packets_in: u64,
) -> bool {
    pod_totals(records, &pod.uid)
        .get(&tuple(local, remote, 6))
        .is_some_and(|t| t.egress_packets >= packets_out && t.ingress_packets >= packets_in)
}

fn assert_pod_identity(w: &pb::Workload, pod: &Pod, qos: pb::QosClass) {
    let Some(workload::Kind::Pod(p)) = &w.kind else { panic!("{} should be a pod: {w:?}", pod.name) };
    assert_eq!(p.uid, pod.uid);
    assert_eq!((p.namespace.as_str(), p.name.as_str()), (pod.namespace.as_str(), pod.name.as_str()));
    assert_eq!(p.container_id, pod.container_id);
    assert_eq!(p.container_name, "main");
    assert_eq!(p.qos_class, qos as i32, "qos of {}", pod.name);
    assert_eq!(p.runtime, pb::ContainerRuntime::Containerd as i32);
    assert!(!w.unknown_layout);
    assert_eq!(
        std::fs::metadata(&pod.container_cgroup).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok(),
        Some(w.cgroup_id)
    );
}

/// UDP send from one pod to another; returns the sender's local address.
fn udp_transfer(from: &Pod, to: &Pod, v6: bool, port: u16, count: u64, size: usize) -> SocketAddr {
    let dst = SocketAddr::new(to.ip(v6), port);
    let mut rx = to.spawn(&["udp-recv", "--listen", &dst.to_string(), "--count", &count.to_string()]);
    rx.first_line();
    let out =
        from.run(&["udp-send", "--to", &dst.to_string(), "--count", &count.to_string(), "--size", &size.to_string()]);
    let got = rx.wait_json(Duration::from_secs(30));
    assert_eq!(got[0]["received"].as_u64(), Some(count), "receiver got every datagram");
    sock(&out[0], "local")
}

#[test]
fn three_pods_tcp_and_udp_over_v4_and_v6_are_counted_exactly() {
    let s = setup("flows");
    let mut node = Node::new(Driver::Systemd);
    let web = node.pod("shop", "web", Qos::Burstable);
    let db = node.pod("shop", "db", Qos::Guaranteed);
    let client = node.pod("tools", "client", Qos::BestEffort);
    write_inventory(&s.inventory, &s.node_name, &[&web, &db, &client]);
    let (mut agent, observer) = start_agent(&s);

    let traffic_start = SystemTime::now();
    let (c1, s1) = tcp_transfer(&client, &web, false, 8080, 100_000, 50_000);
    let (c2, s2) = tcp_transfer(&web, &db, true, 5432, 30_000, 70_000);
    let u1 = udp_transfer(&client, &db, false, 5353, 20, 200);
    let u2 = udp_transfer(&db, &client, true, 6000, 15, 1000);
    let traffic_end = SystemTime::now();
    let udp1_dst = SocketAddr::new(db.ip(false), 5353);
    let udp2_dst = SocketAddr::new(client.ip(true), 6000);

    let records = observer.wait_until(WAIT, |r| {
        tcp_complete(r, &client, sock(&c1, "local"), sock(&c1, "peer"), info(&c1, "segs_out"), info(&c1, "segs_in"))
            && tcp_complete(
                r,
                &web,
                sock(&s1, "local"),
                sock(&s1, "peer"),
                info(&s1, "segs_out") + 1,
                info(&s1, "segs_in"),
            )
            && tcp_complete(r, &web, sock(&c2, "local"), sock(&c2, "peer"), info(&c2, "segs_out"), info(&c2, "segs_in"))
            && tcp_complete(
                r,
                &db,
                sock(&s2, "local"),
                sock(&s2, "peer"),
                info(&s2, "segs_out") + 1,
                info(&s2, "segs_in"),
            )
            && pod_totals(r, &db.uid).get(&tuple(udp1_dst, u1, 17)).is_some_and(|t| t.ingress_packets >= 20)
            && pod_totals(r, &client.uid).get(&tuple(udp2_dst, u2, 17)).is_some_and(|t| t.ingress_packets >= 15)
    });

    assert_tcp_exact(&records, &client, &web, &c1, &s1, false);
    assert_tcp_exact(&records, &web, &db, &c2, &s2, true);

    // UDP: 28 (v4) or 48 (v6) header bytes per datagram.
    let udp = |pod: &Pod, t: Tuple| pod_totals(&records, &pod.uid).remove(&t).unwrap_or_default();
    let t = udp(&client, tuple(u1, udp1_dst, 17));
    assert_eq!((t.egress_packets, t.egress_bytes, t.ingress_packets), (20, 20 * (200 + 28), 0), "client udp v4 out");
    let t = udp(&db, tuple(udp1_dst, u1, 17));
    assert_eq!((t.ingress_packets, t.ingress_bytes, t.egress_packets), (20, 20 * (200 + 28), 0), "db udp v4 in");
    let t = udp(&db, tuple(u2, udp2_dst, 17));
    assert_eq!((t.egress_packets, t.egress_bytes), (15, 15 * (1000 + 48)), "db udp v6 out");
    let t = udp(&client, tuple(udp2_dst, u2, 17));
    assert_eq!((t.ingress_packets, t.ingress_bytes), (15, 15 * (1000 + 48)), "client udp v6 in");

    // Identity of the local side (from the cgroup) and of the remote side (by IP).
    let ct = pod_totals(&records, &client.uid).remove(&tuple(sock(&c1, "local"), sock(&c1, "peer"), 6)).unwrap();
    assert_pod_identity(ct.workload.as_ref().unwrap(), &client, pb::QosClass::BestEffort);
    assert!(ct.remote_pods.iter().all(|p| p == "shop/web") && !ct.remote_pods.is_empty(), "{:?}", ct.remote_pods);
    let wt = pod_totals(&records, &web.uid).remove(&tuple(sock(&c2, "local"), sock(&c2, "peer"), 6)).unwrap();
    assert_pod_identity(wt.workload.as_ref().unwrap(), &web, pb::QosClass::Burstable);
    assert!(wt.remote_pods.iter().all(|p| p == "shop/db") && !wt.remote_pods.is_empty());
    let dt = pod_totals(&records, &db.uid).remove(&tuple(udp1_dst, u1, 17)).unwrap();
    assert_pod_identity(dt.workload.as_ref().unwrap(), &db, pb::QosClass::Guaranteed);

    // First/last seen (kernel jiffies converted by the agent) fall within the
    // traffic, give or take a tick and the clock sampling (20 ms).
    let ns = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let (lo, hi) = (ns(traffic_start) - 20_000_000, ns(traffic_end) + 20_000_000);
    let ours = [&client.uid, &web.uid, &db.uid];
    let mut checked = 0;
    for f in podlens_e2e::records::flows(&records) {
        if podlens_e2e::records::local_uid(f).is_some_and(|u| ours.iter().any(|o| *o == u)) {
            assert!(
                lo <= f.first_seen_unix_nano
                    && f.first_seen_unix_nano <= f.last_seen_unix_nano
                    && f.last_seen_unix_nano <= hi,
                "first/last seen {}..{} outside the traffic {lo}..{hi}",
                f.first_seen_unix_nano,
                f.last_seen_unix_nano
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked} records checked");

    // Nothing of these pods' traffic is attributed elsewhere.
    let ours = [sock(&c1, "local"), sock(&c2, "local"), u1, u2];
    let stray = totals(&records, |f| {
        let uid = podlens_e2e::records::local_uid(f);
        uid != Some(client.uid.as_str()) && uid != Some(web.uid.as_str()) && uid != Some(db.uid.as_str())
    });
    for (t, _) in stray {
        let local: SocketAddr = format!(
            "{}:{}",
            if t.local_ip.contains(':') { format!("[{}]", t.local_ip) } else { t.local_ip.clone() },
            t.local_port
        )
        .parse()
        .unwrap();
        assert!(!ours.contains(&local), "{t:?} attributed outside the pods");
    }
    assert_eq!(agent.stop().code(), Some(0), "clean exit on SIGTERM:\n{}", agent.log_text());
}

/// A connection to a server on a port in the ephemeral range, lasting several
/// windows: every window's record names the opener (the SYN is only in the
/// first), so a port heuristic would have called the client the server.
#[test]
fn a_long_connection_keeps_its_initiator_in_every_window() {
    let s = setup("initiator");
    let mut node = Node::new(Driver::Systemd);
    let grpc = node.pod("shop", "grpc", Qos::Burstable);
    let caller = node.pod("shop", "caller", Qos::Burstable);
    write_inventory(&s.inventory, &s.node_name, &[&grpc, &caller]);
    let (mut agent, observer) = start_agent(&s);
    let listen = SocketAddr::new(grpc.ip(false), 50051);
    let mut srv = grpc.spawn(&["tcp-server", "--listen", &listen.to_string(), "--reply", "1000"]);
    srv.first_line();
    // 12 x 64 KiB, 300 ms apart: ~3.5 s over 1 s windows
    let c = caller.run(&["tcp-client", "--connect", &listen.to_string(), "--send", "786432", "--pace-ms", "300"]);
    srv.wait_json(Duration::from_secs(30));
    let (cl, sv) = (sock(&c[0], "local"), sock(&c[0], "peer"));
    let records = observer.wait_until(WAIT, |r| {
        tcp_complete(r, &caller, cl, sv, info(&c[0], "segs_out"), info(&c[0], "segs_in"))
            && tcp_complete(r, &grpc, sv, cl, 1, info(&c[0], "segs_out"))
    });
    let client = pod_totals(&records, &caller.uid).remove(&tuple(cl, sv, 6)).unwrap();
    let server = pod_totals(&records, &grpc.uid).remove(&tuple(sv, cl, 6)).unwrap();
    assert!(client.records >= 3 && server.records >= 3, "{} and {} windows", client.records, server.records);
    assert!(client.initiators.iter().all(|i| *i == pb::Initiator::Local), "client: {:?}", client.initiators);
    assert!(server.initiators.iter().all(|i| *i == pb::Initiator::Remote), "server: {:?}", server.initiators);
    assert_eq!(agent.stop().code(), Some(0), "clean exit on SIGTERM:\n{}", agent.log_text());
}

#[test]
fn cgroupfs_layout_and_host_traffic_are_attributed_to_their_owner() {
    let s = setup("host");
    let mut node = Node::new(Driver::Cgroupfs);
    let api = node.pod("prod", "api", Qos::Burstable);
    write_inventory(&s.inventory, &s.node_name, &[&api]);
    let (_agent, observer) = start_agent(&s);

    let unit = node.host_unit("system.slice/pl-backup.service");
    let listen = SocketAddr::new(api.ip(false), 9000);
    let mut srv = api.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    let out = node
        .spawn_in(&unit, &node.netns.clone(), &["tcp-client", "--connect", &listen.to_string(), "--send", "4096"])
        .wait_json(Duration::from_secs(30));
    let srv_out = srv.wait_json(Duration::from_secs(30));
    let host_local = sock(&out[0], "local");
    let segs_out = info(&out[0], "segs_out");

    let unit_path = format!("/{}", unit.strip_prefix(podlens_e2e::cluster::cgroup2_root()).unwrap().display());
    let records = observer.wait_until(WAIT, |r| {
        totals(r, |f| f.local.as_ref().is_some_and(|w| w.cgroup_path == unit_path))
            .get(&tuple(host_local, listen, 6))
            .is_some_and(|t| t.egress_packets >= segs_out)
            && tcp_complete(
                r,
                &api,
                listen,
                host_local,
                info(&srv_out[0], "segs_out") + 1,
                info(&srv_out[0], "segs_in"),
            )
    });

    let host = totals(&records, |f| f.local.as_ref().is_some_and(|w| w.cgroup_path == unit_path));
    let t = host.get(&tuple(host_local, listen, 6)).unwrap_or_else(|| panic!("host flow missing: {host:?}"));
    assert_eq!(t.egress_packets, segs_out);
    assert_eq!(t.egress_bytes, tcp_bytes(4096, segs_out, false));
    let w = t.workload.as_ref().unwrap();
    assert_eq!(
        w.kind,
        Some(workload::Kind::Host(pb::HostUnit { unit: unit_path.trim_start_matches('/').to_string() }))
    );
    assert!(
        t.remote_pods.iter().all(|p| p == "prod/api") && !t.remote_pods.is_empty(),
        "remote resolved by IP: {:?}",
        t.remote_pods
    );

    // The pod side: cgroupfs layout parsed; the host is its remote, not a pod.
    let api_flows = pod_totals(&records, &api.uid);
    let at = api_flows.get(&tuple(listen, host_local, 6)).expect("api side");
    assert_pod_identity(at.workload.as_ref().unwrap(), &api, pb::QosClass::Burstable);
    assert!(at.remote_pods.is_empty(), "the node address is not a pod: {:?}", at.remote_pods);
    // A kubepods path in a layout podlens does not know is kept, attributed to
    // the raw path, and counted.
    let odd = node.host_unit("kubepods/burstable/podnot-a-uid/ctr");
    let listen = SocketAddr::new(api.ip(false), 9001);
    let mut srv = api.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    let out = node
        .spawn_in(&odd, &node.netns.clone(), &["tcp-client", "--connect", &listen.to_string(), "--send", "100"])
        .wait_json(Duration::from_secs(30));
    srv.wait_json(Duration::from_secs(30));
    let odd_local = sock(&out[0], "local");
    let odd_path = format!("/{}", odd.strip_prefix(podlens_e2e::cluster::cgroup2_root()).unwrap().display());
    let records = observer.wait_until(WAIT, |r| {
        totals(r, |f| f.local.as_ref().is_some_and(|w| w.cgroup_path == odd_path))
            .contains_key(&tuple(odd_local, listen, 6))
    });
    let odd_flows = totals(&records, |f| f.local.as_ref().is_some_and(|w| w.cgroup_path == odd_path));
    let w = odd_flows[&tuple(odd_local, listen, 6)].workload.clone().unwrap();
    assert!(w.unknown_layout, "{w:?}");
    assert_eq!(w.kind, Some(workload::Kind::Host(pb::HostUnit { unit: odd_path.trim_start_matches('/').to_string() })));
    assert!(podlens_e2e::records::loss_total(&records, "identity", "unknown_layout").unwrap_or(0) >= 1);

    // And no pod record carries the host's side of the connection.
    let misattributed = totals(&records, |f| podlens_e2e::records::local_uid(f).is_some())
        .into_keys()
        .filter(|k| *k == tuple(host_local, listen, 6))
        .count();
    assert_eq!(misattributed, 0);
}

#[test]
fn pod_recreated_with_the_same_ip_is_not_confused_with_the_old_one() {
    let s = setup("reuse");
    let mut node = Node::new(Driver::Systemd);
    let server = node.pod("shop", "cache", Qos::Burstable);
    let reused_host = node.allocate_host();
    let old = node.pod_at("shop", "worker-old", Qos::BestEffort, reused_host);
    write_inventory(&s.inventory, &s.node_name, &[&server, &old]);
    let (_agent, observer) = start_agent(&s);

    let (c_old, _) = tcp_transfer(&old, &server, false, 7000, 11_111, 0);
    let old_uid = old.uid.clone();
    let old_end = SystemTime::now();
    old.delete();
    write_inventory(&s.inventory, &s.node_name, &[&server]);
    // The new pod is created in a later second than the old pod's last packet
    // (creationTimestamp has one-second resolution, as in Kubernetes).
    let next_second = old_end.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 1;
    while SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() < next_second + 1 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = node.pod_at("shop", "worker-new", Qos::BestEffort, reused_host);
    assert_eq!(new.v4.to_string(), sock(&c_old, "local").ip().to_string(), "same IP");
    write_inventory(&s.inventory, &s.node_name, &[&server, &new]);
    std::thread::sleep(Duration::from_millis(1500)); // the agent polls the file every second
    let (c_new, _) = tcp_transfer(&new, &server, false, 7001, 22_222, 0);

    let (old_local, new_local) = (sock(&c_old, "local"), sock(&c_new, "local"));
    let records = observer.wait_until(WAIT, |r| {
        let srv = pod_totals(r, &server.uid);
        srv.contains_key(&tuple(sock(&c_old, "peer"), old_local, 6))
            && srv
                .get(&tuple(sock(&c_new, "peer"), new_local, 6))
                .is_some_and(|t| t.ingress_packets >= info(&c_new, "segs_out"))
    });

    let old_flows = pod_totals(&records, &old_uid);
    let new_flows = pod_totals(&records, &new.uid);
    assert_eq!(
        old_flows.keys().cloned().collect::<Vec<_>>(),
        vec![tuple(old_local, sock(&c_old, "peer"), 6)],
        "old pod: only its own connection"
    );
    assert_eq!(
        new_flows.keys().cloned().collect::<Vec<_>>(),
        vec![tuple(new_local, sock(&c_new, "peer"), 6)],
        "new pod: only its own connection"
    );
    assert_eq!(old_flows.values().next().unwrap().egress_bytes, tcp_bytes(11_111, info(&c_old, "segs_out"), false));
    assert_eq!(new_flows.values().next().unwrap().egress_bytes, tcp_bytes(22_222, info(&c_new, "segs_out"), false));

    // The server saw the same remote IP twice; each connection resolves to the pod that had it then.
    let srv = pod_totals(&records, &server.uid);
    let seen_old = &srv[&tuple(sock(&c_old, "peer"), old_local, 6)].remote_pods;
    let seen_new = &srv[&tuple(sock(&c_new, "peer"), new_local, 6)].remote_pods;
    assert!(!seen_old.is_empty() && seen_old.iter().all(|p| p == "shop/worker-old"), "{seen_old:?}");
    assert!(!seen_new.is_empty() && seen_new.iter().all(|p| p == "shop/worker-new"), "{seen_new:?}");
}

#[test]
fn ten_thousand_short_connections_are_all_counted_across_drains() {
    let s = setup("churn");
    let mut node = Node::new(Driver::Systemd);
    let server = node.pod("load", "sink", Qos::Burstable);
    let client = node.pod("load", "gen", Qos::BestEffort);
    write_inventory(&s.inventory, &s.node_name, &[&server, &client]);
    let (_agent, observer) = start_agent(&s);

    const N: u64 = 10_000;
    let listen = SocketAddr::new(server.ip(false), 7100);
    let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string(), "--conns", &N.to_string()]);
    srv.first_line();
    // Paced to span at least two 1 s windows however fast the machine is.
    let c = client.run(&[
        "tcp-churn",
        "--connect",
        &listen.to_string(),
        "--count",
        &N.to_string(),
        "--send",
        "10",
        "--rate",
        "4000",
    ]);
    let sv = srv.wait_json(Duration::from_secs(300));
    let (c, sv) = (&c[0], sv.last().expect("summary"));
    assert_eq!(c["total_retrans"].as_u64(), Some(0));
    assert_eq!(sv["received"].as_u64(), Some(10 * N));
    let (c_out, c_in) = (c["segs_out"].as_u64().unwrap(), c["segs_in"].as_u64().unwrap());
    // + one SYN-ACK per connection, sent by the listener (see the module comment)
    let (s_out, s_in) = (sv["segs_out"].as_u64().unwrap() + N, sv["segs_in"].as_u64().unwrap());

    let to_server = |f: &pb::FlowRecord| f.remote.as_ref().is_some_and(|r| r.port == 7100);
    let from_client = |f: &pb::FlowRecord| f.local_port == 7100;
    let sum = |r: &[pb::Record], uid: &str, sel: &dyn Fn(&pb::FlowRecord) -> bool| {
        let t = totals(r, |f| podlens_e2e::records::local_uid(f) == Some(uid) && sel(f));
        let (out, inn) = t.values().fold((0, 0), |a, t| (a.0 + t.egress_packets, a.1 + t.ingress_packets));
        (t.len() as u64, out, inn)
    };
    let records = observer.wait_until(Duration::from_secs(30), |r| {
        sum(r, &client.uid, &to_server) == (N, c_out, c_in) && sum(r, &server.uid, &from_client) == (N, s_out, s_in)
    });
    let windows: std::collections::BTreeSet<u64> = records
        .iter()
        .filter(|r| matches!(&r.kind, Some(pb::record::Kind::Flow(f)) if podlens_e2e::records::local_uid(f) == Some(client.uid.as_str())))
        .map(|r| r.window_end_unix_nano)
        .collect();
    assert!(windows.len() >= 2, "the connections span several drains ({} windows)", windows.len());
    assert_eq!(
        sum(&records, &client.uid, &to_server),
        (N, c_out, c_in),
        "client: connections, packets out, packets in"
    );
    assert_eq!(
        sum(&records, &server.uid, &from_client),
        (N, s_out, s_in),
        "server: connections, packets out, packets in"
    );
    assert_eq!(podlens_e2e::records::loss_total(&records, "kernel", "overflow_lost_packets"), Some(0));
}

/// Runs `n` short connections from `client` to `server` (with the agent
/// frozen meanwhile when `frozen` is given) and returns the expected packets
/// (client out, client in, server out, server in).
fn churn(client: &Pod, server: &Pod, port: u16, n: u64, frozen: Option<&Agent>) -> (u64, u64, u64, u64) {
    let listen = SocketAddr::new(server.ip(false), port);
    let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string(), "--conns", &n.to_string()]);
    srv.first_line();
    if let Some(a) = frozen {
        a.pause(true);
    }
    let c = client.run(&["tcp-churn", "--connect", &listen.to_string(), "--count", &n.to_string(), "--send", "10"]);
    if let Some(a) = frozen {
        a.pause(false);
    }
    let sv = srv.wait_json(Duration::from_secs(300));
    let sv = sv.last().expect("summary");
    let field = |v: &Value, f: &str| v[f].as_u64().unwrap_or_else(|| panic!("{f} in {v}"));
    assert_eq!(field(&c[0], "total_retrans"), 0);
    // + one SYN-ACK per connection on the server side (see the module comment)
    (field(&c[0], "segs_out"), field(&c[0], "segs_in"), field(sv, "segs_out") + n, field(sv, "segs_in"))
}

/// Recorded packets of the churn: (client out, client in, server out, server in, records with overflow).
fn churn_recorded(records: &[pb::Record], client: &Pod, server: &Pod, port: u32) -> (u64, u64, u64, u64, usize) {
    let c = totals(records, |f| {
        podlens_e2e::records::local_uid(f) == Some(client.uid.as_str())
            && f.remote.as_ref().is_some_and(|r| r.port == port)
    });
    let s =
        totals(records, |f| podlens_e2e::records::local_uid(f) == Some(server.uid.as_str()) && f.local_port == port);
    let overflowed = podlens_e2e::records::flows(records).filter(|f| f.overflow).count();
    let sum = |t: &std::collections::BTreeMap<Tuple, Totals>| {
        t.values().fold((0, 0), |a, t| (a.0 + t.egress_packets, a.1 + t.ingress_packets))
    };
    let ((co, ci), (so, si)) = (sum(&c), sum(&s));
    (co, ci, so, si, overflowed)
}

/// Two pods and an agent with a 1024-entry flow map and `ring_bytes` of overflow ring.
fn small_map_setup(tag: &str, ring_bytes: &str) -> (Setup, Node, Pod, Pod, Agent, Observer) {
    let s = setup(tag);
    let mut node = Node::new(Driver::Systemd);
    let server = node.pod("load", "sink", Qos::Burstable);
    let client = node.pod("load", "gen", Qos::BestEffort);
    write_inventory(&s.inventory, &s.node_name, &[&server, &client]);
    let inv = s.inventory.to_string_lossy().into_owned();
    let flags = ["--pods-file", &inv, "--flow-map-entries", "1024", "--events-ring-bytes", ring_bytes];
    let agent = Agent::start(&s.node_name, "5s", &flags, &s._dir.0);
    let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
    (s, node, server, client, agent, observer)
}

/// More distinct flows in one window than the flow map holds: the rest go
/// through the overflow ring buffer and still add up exactly.
#[test]
fn flows_beyond_the_map_capacity_arrive_through_the_overflow_path() {
    let (_s, _node, server, client, _agent, observer) = small_map_setup("ovf", "4194304");
    let want = churn(&client, &server, 7200, 1500, None);
    let records = observer.wait_until(Duration::from_secs(30), |r| {
        let (a, b, c, d, _) = churn_recorded(r, &client, &server, 7200);
        (a, b, c, d) == want
    });
    let (a, b, c, d, overflowed) = churn_recorded(&records, &client, &server, 7200);
    assert_eq!((a, b, c, d), want, "client out/in, server out/in");
    assert!(overflowed > 0, "3000 flows in one window cannot all fit 1024 entries");
    assert_eq!(podlens_e2e::records::loss_total(&records, "kernel", "overflow_lost_packets"), Some(0));
}

/// The overflow ring is too small as well: what does not arrive is counted, so
/// recorded + counted lost covers everything sent.
#[test]
fn overflow_beyond_the_ring_is_counted_as_lost() {
    let (_s, _node, server, client, agent, observer) = small_map_setup("lost", "4096");
    // The agent is frozen during the burst, as a stalled reader would be: the
    // 1024-entry map fills and the ring (about 40 events) overflows.
    let want = churn(&client, &server, 7300, 1500, Some(&agent));
    let expected = want.0 + want.1 + want.2 + want.3;
    let lost = |r: &[pb::Record]| podlens_e2e::records::loss_total(r, "kernel", "overflow_lost_packets").unwrap_or(0);
    let records = observer.wait_until(Duration::from_secs(30), |r| {
        let (a, b, c, d, _) = churn_recorded(r, &client, &server, 7300);
        a + b + c + d + lost(r) >= expected
    });
    let (a, b, c, d, _) = churn_recorded(&records, &client, &server, 7300);
    let recorded = a + b + c + d;
    let lost = lost(&records);
    assert!(lost > 0, "a 4 KiB ring cannot carry thousands of overflow events");
    assert!(recorded < expected, "some packets were lost: recorded {recorded} of {expected}");
    // Lost packets of other traffic on the node may be in the same counter, so
    // it can only be larger than what this test lost.
    assert!(recorded + lost >= expected, "recorded {recorded} + counted lost {lost} < sent {expected}");
}

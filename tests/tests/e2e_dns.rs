//! Tier 3, DNS: the real agent, emulated pods resolving with real clients (dig,
//! and getent through glibc's resolver with the pod's own resolv.conf) against
//! a real dnsmasq and a test server that answers after a chosen delay.
//!
//! Exact expectations: every query a client sends, every answer, NXDOMAIN and
//! timeout is counted once for the pod that sent it; latency is measured from
//! the query leaving the pod to the answer reaching it, so it is never below
//! the time the server held the query, and at most 1 ms above it (veth, bridge
//! and the server's own socket path).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use podlens_e2e::{
    agent::{Agent, Observer},
    cluster::{write_inventory, Driver, Node, Pod, Proc, Qos},
    dns_records::{dns_totals, DnsTotals},
    privileged::unique,
};
use podlens_proto::v1::{self as pb, record::Kind};
use serde_json::Value;

const MS: u64 = 1_000_000;
const WAIT: Duration = Duration::from_secs(30);

/// Fields drop in order: the pods before their node.
struct Env {
    client: Pod,
    peer: Pod,
    dns: Pod,
    _node: Node,
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).expect("test dir");
        eprintln!("logs: {}", dir.display());
        let mut node = Node::new(Driver::Systemd);
        let client = node.pod("shop", "web", Qos::Burstable);
        let peer = node.pod("shop", "api", Qos::Burstable);
        let dns = node.pod("kube-system", "dns", Qos::Burstable);
        Self { client, peer, dns, _node: node, dir }
    }

    fn agent(&self, extra: &[&str]) -> (Agent, Observer) {
        let inventory = self.dir.join("pods.yaml");
        write_inventory(&inventory, "node-dns", &[&self.client, &self.peer, &self.dns]);
        let inv = inventory.display().to_string();
        let mut flags = vec!["--pods-file", inv.as_str()];
        flags.extend_from_slice(extra);
        let agent = Agent::start("node-dns", "1s", &flags, &self.dir);
        let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
        (agent, observer)
    }

    fn dns_ip(&self) -> IpAddr {
        self.dns.ip(false)
    }

    /// The test server in the DNS pod: answers after `delay_ms`, ignoring the first `drop` queries.
    fn slow_server(&self, delay_ms: u64, drop: u64, records: &[&str]) -> Proc {
        let listen = SocketAddr::new(self.dns_ip(), 53).to_string();
        let (delay, drop) = (delay_ms.to_string(), drop.to_string());
        let mut args = vec!["dns-server", "--listen", &listen, "--delay-ms", &delay, "--drop", &drop];
        for r in records {
            args.extend(["--record", r]);
        }
        let mut p = self.dns.spawn(&args);
        p.first_line();
        p
    }

    /// dnsmasq in the DNS pod: authoritative-style NXDOMAIN under `local`,
    /// fixed addresses for `address` entries ("/name/ip").
    fn dnsmasq(&self, local: &[&str], address: &[&str]) -> Proc {
        self.dns.dnsmasq(local, address)
    }

    /// dig in the client pod; returns its output (it must succeed).
    fn dig(&self, args: &[&str]) -> String {
        self.dig_spawn(args).wait_stdout(Duration::from_secs(30))
    }

    fn dig_spawn(&self, args: &[&str]) -> Proc {
        let server = format!("@{}", self.dns_ip());
        let mut argv = vec!["exec", "--", "dig", server.as_str()];
        argv.extend_from_slice(args);
        self.client.spawn(&argv)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_totals(records: &[pb::Record], pod: &Pod) -> DnsTotals {
    dns_totals(records, &pod.uid, pb::DnsRole::Client)
}

/// Waits until the pod's client-side totals satisfy `done`.
fn wait_dns(o: &Observer, pod: &Pod, done: impl Fn(&DnsTotals) -> bool) -> DnsTotals {
    let records = o.wait_until(WAIT, |r| done(&client_totals(r, pod)));
    client_totals(&records, pod)
}

fn held(lines: &[Value], proto: &str) -> Vec<u64> {
    lines.iter().filter(|l| l["proto"] == proto).filter_map(|l| l["held_ns"].as_u64()).collect()
}

#[test]
fn latency_is_what_the_server_held_the_query_over_udp_and_tcp() {
    let env = Env::new("dnslat");
    let (_agent, obs) = env.agent(&[]);
    let server = env.slow_server(30, 0, &["web.example.test=10.77.0.99"]);
    for _ in 0..4 {
        assert!(env.dig(&["+tries=1", "+time=3", "+short", "web.example.test"]).contains("10.77.0.99"));
    }
    for _ in 0..2 {
        assert!(env.dig(&["+tcp", "+tries=1", "+time=3", "+short", "web.example.test"]).contains("10.77.0.99"));
    }
    let t = wait_dns(&obs, &env.client, |t| t.counts.responses >= 6);
    let lines = server.kill_and_collect();
    let c = t.counts;
    assert_eq!(
        (c.queries, c.responses, c.noerror, c.timeouts, c.retries, c.malformed, c.unmatched_responses),
        (6, 6, 6, 0, 0, 0, 0),
        "{c:?}"
    );
    let resolver = env.dns_ip().to_string();
    for (proto, number, n) in [("udp", 17, 4), ("tcp", 6, 2)] {
        let held = held(&lines, proto);
        assert_eq!(held.len(), n, "the server answered {n} {proto} queries: {lines:?}");
        let row = &t.latency[&(resolver.clone(), 53, number, 1, 0)];
        let (min_held, max_held, sum_held) =
            (*held.iter().min().unwrap(), *held.iter().max().unwrap(), held.iter().sum::<u64>());
        assert_eq!(row.count, n as u64);
        assert!(row.min_ns >= min_held, "{proto}: measured {} below the server's hold {min_held}", row.min_ns);
        assert!(row.sum_ns >= sum_held, "{proto}: every latency at least its hold");
        assert!(row.max_ns <= max_held + MS, "{proto}: max {} vs held {max_held}", row.max_ns);
        assert!(row.sum_ns <= sum_held + n as u64 * MS, "{proto}: within 1 ms each: {} vs {sum_held}", row.sum_ns);
        assert!(row.min_ns >= 30 * MS);
    }
    assert_eq!(t.names["web.example.test"].queries, 6);
}

#[test]
fn dnsmasq_answers_and_nxdomain_are_counted_and_the_next_flow_is_named() {
    let env = Env::new("dnsmasq");
    let (agent, obs) = env.agent(&[]);
    let api = env.peer.ip(false);
    let _dnsmasq = env.dnsmasq(&["example.test"], &[&format!("/web.example.test/{api}")]);
    for _ in 0..3 {
        assert_eq!(env.dig(&["+short", "web.example.test"]).trim(), api.to_string());
    }
    for _ in 0..2 {
        assert!(env.dig(&["nope.example.test"]).contains("NXDOMAIN"));
    }
    // then a TCP connection to the address it resolved
    let listen = SocketAddr::new(api, 8080).to_string();
    let mut srv = env.peer.spawn(&["tcp-server", "--listen", &listen, "--reply", "10"]);
    srv.first_line();
    env.client.run(&["tcp-client", "--connect", &listen, "--send", "100"]);
    srv.wait_json(WAIT);

    let records = obs.wait_until(WAIT, |r| {
        client_totals(r, &env.client).counts.responses >= 5 && named_flow(r, &env.client, &listen).is_some()
    });
    let t = client_totals(&records, &env.client);
    let c = t.counts;
    assert_eq!((c.queries, c.responses, c.noerror, c.nxdomain, c.timeouts, c.malformed), (5, 5, 3, 2, 0, 0), "{c:?}");
    assert_eq!((t.names["web.example.test"].queries, t.names["nope.example.test"].nxdomain), (3, 2));
    assert_eq!(named_flow(&records, &env.client, &listen).as_deref(), Some("web.example.test"));
    // the server side of the flow resolved nothing, and dnsmasq saw the same queries
    assert_eq!(named_flow(&records, &env.peer, &listen), None);
    let server = dns_totals(&records, &env.dns.uid, pb::DnsRole::Server);
    assert_eq!((server.counts.queries, server.counts.responses), (5, 5));

    // the same numbers in `podlens top`
    let out = std::process::Command::new(podlens_e2e::collector::cli_path())
        .args(["top", "--server", &format!("http://{}", agent.addr), "--sort", "dns", "-n", "shop", "-o", "json"])
        .output()
        .expect("podlens top");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let web = rows.iter().find(|r| r["workload"]["pod"]["name"] == "web").expect("web in podlens top");
    assert_eq!((web["dns"]["queries"].as_u64(), web["dns"]["nxdomain"].as_u64()), (Some(5), Some(2)), "{web}");
    assert!(web["tx_bytes"].as_u64() > Some(0));
    assert!(web["dns"]["latency_max_ns"].as_u64() > Some(0));
}

/// The FQDN on the client's flow to `listen` (None if no such flow or no name).
fn named_flow(records: &[pb::Record], pod: &Pod, listen: &str) -> Option<String> {
    let listen: SocketAddr = listen.parse().ok()?;
    records.iter().find_map(|r| {
        let Some(Kind::Flow(f)) = &r.kind else { return None };
        let local_uid = match f.local.as_ref()?.kind.as_ref()? {
            pb::workload::Kind::Pod(p) => p.uid.as_str(),
            _ => return None,
        };
        let remote = f.remote.as_ref()?;
        let to_listen = remote.ip == listen.ip().to_string() && remote.port == u32::from(listen.port());
        let from_listen = f.local_ip == listen.ip().to_string() && f.local_port == u32::from(listen.port());
        (local_uid == pod.uid && (to_listen || from_listen) && !remote.fqdn.is_empty()).then(|| remote.fqdn.clone())
    })
}

#[test]
fn retries_and_timeouts_are_counted() {
    let env = Env::new("dnsretry");
    let (_agent, obs) = env.agent(&["--dns-timeout", "2s"]);
    // The server ignores the first query; dig retries after 1 s from a new
    // socket (a retry of the same question) and gets the answer; the first
    // query never gets one and times out 2 s after it was sent.
    let server = env.slow_server(0, 1, &["retry.example.test=10.77.0.98"]);
    assert!(env.dig(&["+tries=2", "+time=1", "+short", "retry.example.test"]).contains("10.77.0.98"));
    drop(server);
    // nothing answers at all: one query, one timeout
    let _silent = env.slow_server(0, 1_000, &[]);
    let (status, out, _) = env.dig_spawn(&["+tries=1", "+time=1", "silent.example.test"]).wait_output(WAIT);
    assert_eq!(status.code(), Some(9), "dig: no reply: {out}");
    let t = wait_dns(&obs, &env.client, |t| t.counts.timeouts >= 2);
    std::thread::sleep(Duration::from_secs(3)); // nothing more may arrive
    let t2 = client_totals(&obs.records(), &env.client);
    assert_eq!(t.counts, t2.counts, "counts settled");
    let c = t2.counts;
    assert_eq!((c.queries, c.retries, c.responses, c.noerror, c.timeouts), (3, 1, 1, 1, 2), "{c:?}");
    assert_eq!(t2.timeouts.values().sum::<u64>(), 2);
    assert_eq!(t2.names["silent.example.test"].timeouts, 1);
}

fn write_resolv_conf(dir: &Path, nameserver: IpAddr) -> PathBuf {
    let path = dir.join("resolv.conf");
    let text = format!(
        "nameserver {nameserver}\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 attempts:1 timeout:2\n"
    );
    std::fs::write(&path, text).expect("resolv.conf");
    path
}

#[test]
fn search_path_expansions_of_the_system_resolver_are_grouped() {
    let env = Env::new("dnssearch");
    let (_agent, obs) = env.agent(&[]);
    let _dnsmasq = env.dnsmasq(&["cluster.local", "example.test"], &["/api.example.test/10.77.0.97"]);
    let resolv = write_resolv_conf(&env.dir, env.dns_ip());
    // glibc's getaddrinfo, as an application in the pod would call it
    let out = env.client.spawn_with_resolv_conf(&resolv, &["getent", "ahostsv4", "api.example.test"]);
    assert!(out.wait_stdout(WAIT).contains("10.77.0.97"));
    let t = wait_dns(&obs, &env.client, |t| t.counts.expanded_lookups >= 1);
    let c = t.counts;
    // ndots:5: the three search domains first (NXDOMAIN), then the name itself
    assert_eq!((c.queries, c.nxdomain, c.noerror, c.search_expansions, c.expanded_lookups), (4, 3, 1, 3, 1), "{c:?}");
    assert_eq!(t.names["api.example.test"].search_expansions, 3);
    assert_eq!(t.names["api.example.test.shop.svc.cluster.local"].nxdomain, 1);
}

#[test]
fn malformed_dns_is_counted_and_good_queries_still_measured() {
    let env = Env::new("dnsbad");
    let (agent, obs) = env.agent(&[]);
    let server = env.slow_server(0, 0, &["ok.example.test=10.77.0.96"]);
    // to a port 53 where nothing listens (no answer can muddle the counts)
    let nobody = SocketAddr::new(env.peer.ip(false), 53).to_string();
    let header = |qd: u16, an: u16| format!("0001 0100 {qd:04x} {an:04x} 0000 0000");
    let bad = [
        "1234010000".to_string(),                                             // shorter than a header
        format!("{} c00c 0001 0001", header(1, 0)),                           // a name pointing at itself
        format!("{} 40{} 00 0001 0001", header(1, 0), "61".repeat(64)),       // a 64-byte label
        format!("{} 0161 07{} 00 0001 0001", header(1, 5), "6578616d706c65"), // 5 answers announced, none there
        "ff".repeat(40),                                                      // garbage
    ];
    for hex in &bad {
        env.client.run(&["dns-raw", "--to", &nobody, "--hex", hex]);
    }
    // garbage over TCP to the real server (framed: a 6-byte "message")
    let server_addr = SocketAddr::new(env.dns_ip(), 53).to_string();
    env.client.run(&["dns-raw", "--tcp", "--to", &server_addr, "--hex", "0006 ffffffffffff"]);
    assert!(env.dig(&["+short", "ok.example.test"]).contains("10.77.0.96"));
    let t = wait_dns(&obs, &env.client, |t| t.counts.malformed >= 6 && t.counts.responses >= 1);
    let c = t.counts;
    assert_eq!((c.malformed, c.queries, c.responses, c.noerror), (6, 1, 1, 1), "{c:?}");
    assert_eq!(t.latency.values().map(|l| l.count).sum::<u64>(), 1, "the good query is measured");
    drop(server);
    // the agent is still running and publishing
    let before = obs.records().len();
    obs.wait_until(WAIT, |r| r.len() > before + 1);
    assert!(agent.log_text().contains("malformed DNS message"), "decode errors are logged (debug)");
}

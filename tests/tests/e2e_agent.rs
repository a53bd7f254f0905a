//! The agent as an operator runs it: least privilege, and clear errors for bad
//! input (never a panic, never a hang).

use std::{net::SocketAddr, time::Duration};

use podlens_e2e::{
    agent::{run_agent_expecting_exit, Agent, Observer},
    cluster::{cgroup2_root, write_inventory, Driver, Node, Qos},
    collector::{free_addr, Collector},
    http,
    privileged::unique,
    records::pod_totals,
};
use podlens_proto::v1 as pb;

const CAPS: &str = "-all,+bpf,+perfmon,+net_admin";

/// setpriv: uid/gid nobody, no groups, and exactly CAP_BPF, CAP_PERFMON and
/// CAP_NET_ADMIN in every set (bounding, inheritable, ambient -> effective).
fn least_privilege(caps: &str) -> Vec<String> {
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).expect("tmpdir");
    d
}

#[test]
fn agent_works_as_nobody_with_only_bpf_perfmon_and_net_admin() {
    let dir = tmpdir("caps");
    let mut node = Node::new(Driver::Systemd);
    let a = node.pod("caps", "a", Qos::Burstable);
    let b = node.pod("caps", "b", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "n1", &[&a, &b]);
    let wrapper = least_privilege(CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(&wrapper, "n1", "1s", &["--pods-file", inventory.to_str().unwrap()], &dir);

    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("agent status");
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("").to_string();
    // bits 12 (NET_ADMIN), 38 (PERFMON), 39 (BPF)
    assert_eq!(field("CapEff:"), "000000c000001000", "effective capabilities are exactly the three");
    assert_eq!(field("Uid:").split_whitespace().next(), Some("65534"));

    let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
    let listen = SocketAddr::new(b.ip(false), 8443);
    let mut srv = b.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    let out = a.run(&["tcp-client", "--connect", &listen.to_string(), "--send", "5000"]);
    srv.wait_json(Duration::from_secs(30));
    let segs = out[0]["tcp_info"]["segs_out"].as_u64().unwrap();
    let records = observer.wait_until(Duration::from_secs(15), |r| {
        pod_totals(r, &a.uid).values().any(|t| t.egress_packets == segs && t.remote_pods == vec!["caps/b".to_string()])
    });
    assert!(
        pod_totals(&records, &a.uid).values().any(|t| t.egress_packets == segs),
        "flows recorded with least privilege:\n{}",
        agent.log_text()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_capabilities_are_named_and_exit_non_zero() {
    for (caps, missing) in [("-all,+perfmon,+net_admin", "CAP_BPF"), ("-all,+bpf,+perfmon", "CAP_NET_ADMIN")] {
        let wrapper = least_privilege(caps);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let (code, err) = run_agent_expecting_exit(&wrapper, &["--standalone", "--listen", "127.0.0.1:0"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("missing capabilities") && err.contains(missing), "{caps}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bad_inputs_get_clear_errors_naming_the_input() {
    let dir = tmpdir("badin");
    let garbage = dir.join("garbage.yaml");
    std::fs::write(&garbage, "kind: [unclosed\n").unwrap();
    let not_cgroup = dir.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--standalone".into(), "--pods-file".into(), "/nonexistent/pods.yaml".into()], "/nonexistent/pods.yaml"),
        (vec!["--standalone".into(), "--pods-file".into(), garbage.to_str().unwrap().into()], "garbage.yaml"),
        (vec!["--standalone".into(), "--cgroup-root".into(), not_cgroup.clone()], "is not a cgroup2 mount"),
        (vec!["--standalone".into(), "--interval".into(), "fast".into()], "--interval"),
        (vec!["--standalone".into(), "--flow-map-entries".into(), "12".into()], "--flow-map-entries"),
        (vec!["--standalone".into(), "--listen".into(), "localhost".into()], "--listen"),
        (vec!["--standalone".into(), "--log".into(), "podlens=[".into()], "--log"),
        (vec!["--standalone".into(), "--listen".into(), "0.0.0.0:0".into()], "--consumer-token-file"),
        (vec!["--collector".into(), "http://127.0.0.1:1".into()], "--insecure-plaintext"),
        (vec!["--collector".into(), "https://127.0.0.1:1".into()], "--tls-ca"),
        (vec!["--collector".into(), "ftp://x".into()], "https://"),
        (vec![], "--standalone"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run_agent_expecting_exit(&[], &args);
        assert!(code.is_some_and(|c| c != 0), "{args:?} should fail: {err}");
        assert!(err.contains(needle), "{args:?}: error should name {needle:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the agent in a private mount namespace after `setup` (a shell snippet).
fn in_private_mounts(setup: &str) -> (Option<i32>, String) {
    let script = format!("{setup} && exec \"$0\" \"$@\"");
    run_agent_expecting_exit(
        &["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", &script],
        &["--standalone", "--listen", "127.0.0.1:0"],
    )
}

#[test]
fn kernel_without_btf_is_a_clear_error() {
    let (code, err) = in_private_mounts("mount --bind /dev/null /sys/kernel/btf/vmlinux");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/sys/kernel/btf/vmlinux") && err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    let (code, err) = in_private_mounts("mount -t tmpfs none /sys/kernel/btf");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("kernel BTF not found"), "{err}");
}

#[test]
fn missing_cgroup2_is_a_clear_error() {
    let root = podlens_e2e::cluster::cgroup2_root();
    let (code, err) = in_private_mounts(&format!("umount -l {}", root.display()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no cgroup2 filesystem") && err.contains("--cgroup-root"), "{err}");
}

/// Another set of cgroup_skb programs on the same cgroup (a CNI's, a policy
/// engine's) keeps running while the agent is attached, sees the same packets,
/// and stays attached when the agent stops; the agent detaches only its own.
#[test]
fn agent_coexists_with_other_programs_and_detaches_only_its_own() {
    use podlens_agent_ebpf::DIR_EGRESS;
    use podlens_e2e::kernel::{attached_programs, FlowProgs};

    let root = podlens_e2e::cluster::cgroup2_root();
    let before = attached_programs(&root, true);
    let mut other = FlowProgs::load(4096, 4096);
    other.kernel.attach(&root).expect("attach the other programs");
    let with_other = attached_programs(&root, true);
    assert_eq!(with_other.len(), before.len() + 1);

    let dir = tmpdir("coexist");
    let mut node = Node::new(Driver::Systemd);
    let a = node.pod("co", "a", Qos::Burstable);
    let b = node.pod("co", "b", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "n1", &[&a, &b]);
    let mut agent = Agent::start("n1", "1s", &["--pods-file", inventory.to_str().unwrap()], &dir);
    assert_eq!(attached_programs(&root, true).len(), before.len() + 2, "both attached");
    let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());

    let transfer = |port: u16| {
        let listen = SocketAddr::new(b.ip(false), port);
        let mut srv = b.spawn(&["tcp-server", "--listen", &listen.to_string()]);
        srv.first_line();
        let out = a.run(&["tcp-client", "--connect", &listen.to_string(), "--send", "20000"]);
        srv.wait_json(Duration::from_secs(30));
        let local: SocketAddr = out[0]["local"].as_str().unwrap().parse().unwrap();
        (local.port(), out[0]["tcp_info"]["segs_out"].as_u64().unwrap())
    };
    let other_packets = |other: &mut FlowProgs, port: u16| -> u64 {
        other.drain().iter().filter(|(k, _)| k.local_port == port).map(|(_, v)| v.dir[DIR_EGRESS].packets).sum()
    };

    let (port, segs) = transfer(8001);
    let records = observer.wait_until(Duration::from_secs(15), |r| {
        pod_totals(r, &a.uid).iter().any(|(t, v)| t.local_port == u32::from(port) && v.egress_packets == segs)
    });
    assert!(pod_totals(&records, &a.uid)
        .iter()
        .any(|(t, v)| t.local_port == u32::from(port) && v.egress_packets == segs));
    assert_eq!(other_packets(&mut other, port), segs, "the other programs saw every packet too");

    assert_eq!(agent.stop().code(), Some(0));
    assert_eq!(attached_programs(&root, true), with_other, "only the agent's programs were detached");
    let (port, segs) = transfer(8002);
    assert_eq!(other_packets(&mut other, port), segs, "the other programs keep counting after the agent left");
    drop(other);
    assert_eq!(attached_programs(&root, true), before);
    let _ = std::fs::remove_dir_all(dir);
}

/// Polls `addr` `path` until `done` holds for (status, body); returns that answer.
fn poll(addr: SocketAddr, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((code, body)) = http::get(addr, path) {
            if done(code, &body) {
                return (code, body);
            }
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {path} on {addr}: {:?}", http::get(addr, path));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn readiness_waits_for_programs_identity_and_the_collector_stream() {
    let dir = tmpdir("ready");
    let mut node = Node::new(Driver::Systemd);
    let a = node.pod("ready", "a", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "n1", &[&a]);
    // with an (empty) manifests directory the policy detector runs, and its metrics exist
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let args = vec!["--insecure-plaintext".into(), "--manifests".into(), manifests.display().to_string()];
    let collector = Collector::start(args, &dir);
    let ingest = format!("http://{}", collector.ingest);
    let inv = inventory.to_str().unwrap();
    let flags = ["--collector", &ingest, "--insecure-plaintext", "--pods-file", inv];
    let mut agent = Agent::launch(&[], "n1", "1s", &flags, &dir);
    // the endpoints open before the programs load (BTF parsing alone takes a while)
    let (code, body) = poll(agent.metrics, "/readyz", "first answer", |_, _| true);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("programs_attached"), "not ready before the programs are attached: {body}");
    agent.wait_ready(Duration::from_secs(30));
    poll(agent.metrics, "/readyz", "ready once the stream opened", |code, _| code == 200);
    assert_eq!(http::get(agent.metrics, "/healthz").map(|r| r.0), Some(200));
    let m = agent.metrics();
    for latch in ["programs_attached", "identity_synced", "stream_connected"] {
        assert_eq!(http::value(&m, "podlens_agent_ready", &[("latch", latch)]), Some(1.0), "{latch}");
    }
    assert_eq!(http::value(&m, "podlens_agent_stream_connected", &[]), Some(1.0));
    assert_eq!(http::value(&m, "podlens_agent_info", &[("node", "n1")]), Some(1.0));
    assert!(http::value(&m, "podlens_agent_process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    assert_eq!(http::value(&m, "podlens_agent_flow_map_capacity", &[]), Some(65536.0));
    let sched = ["schedinfo", "wakeup_probes"]
        .iter()
        .any(|s| http::value(&m, "podlens_agent_feature", &[("feature", "sched"), ("state", s)]) == Some(1.0));
    assert!(sched, "the scheduler timing in use is exported");
    assert_eq!(http::value(&m, "podlens_agent_feature", &[("feature", "cgroup_events"), ("state", "on")]), Some(1.0));
    // windows keep coming: the counters of the stream's loss reports are here too
    let windows = |m: &[http::Sample]| http::value(m, "podlens_agent_windows_total", &[]).unwrap_or(0.0);
    let before = windows(&m);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = agent.metrics();
        if windows(&m) > before {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no window in 10 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(http::value(&m, "podlens_agent_records_total", &[("kind", "loss")]).is_some_and(|v| v >= 1.0));
    assert!(http::value(&m, "podlens_agent_losses_total", &[("source", "kernel"), ("reason", "truncated")]).is_some());
    // every metric the Grafana dashboard queries is one these daemons export
    let mut exported = exported_names(&http::get(agent.metrics, "/metrics").expect("agent /metrics").1);
    exported.extend(exported_names(&collector.metrics_text()));
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/podlens.json"))
        .expect("deploy/grafana/podlens.json");
    let queried = metric_names(&dashboard);
    // only with --kube, which needs an API server
    let kube_only = ["podlens_collector_cluster_view_ready"];
    let missing: Vec<&String> =
        queried.iter().filter(|n| !exported.contains(*n) && !kube_only.contains(&n.as_str())).collect();
    assert!(queried.len() > 30, "{queried:?}");
    assert!(missing.is_empty(), "the dashboard queries metrics nobody exports: {missing:?}");
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.log_text());
    let _ = std::fs::remove_dir_all(dir);
}

/// Every `podlens_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices("podlens_")
        .filter(|(i, _)| !text[..*i].ends_with(is_name))
        .map(|(i, _)| text[i..].chars().take_while(|c| is_name(*c)).collect())
        .collect()
}

/// The sample names a Prometheus text exposition can have: those it has, and
/// those of families with no sample yet (from their TYPE line).
fn exported_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let samples = http::parse_exposition(exposition).unwrap_or_else(|e| panic!("not Prometheus text: {e}"));
    let mut names: std::collections::BTreeSet<String> = samples.into_iter().map(|s| s.name).collect();
    for (name, kind) in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')) {
        match kind.trim() {
            "counter" => names.insert(format!("{name}_total")),
            "histogram" => {
                names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
                false
            }
            _ => names.insert(name.to_string()),
        };
    }
    names
}

#[test]
fn forced_export_losses_move_the_loss_counters_and_hold_readiness() {
    let dir = tmpdir("lossmetrics");
    // nobody listens there: every batch stays unacknowledged, and a buffer of
    // a few KiB must drop the oldest ones
    let dead = format!("http://{}", free_addr());
    let flags = ["--collector", &dead, "--insecure-plaintext", "--export-buffer-bytes", "4096"];
    let mut agent = Agent::start("n1", "1s", &flags, &dir);
    let dropped = |m: &[http::Sample]| {
        http::value(m, "podlens_agent_losses_total", &[("source", "export"), ("reason", "dropped_batches")])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = agent.metrics();
        if dropped(&m).is_some_and(|v| v >= 2.0) {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no export drop counted: {:?}", dropped(&m));
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(http::value(&m, "podlens_agent_stream_connected", &[]), Some(0.0));
    assert!(http::value(&m, "podlens_agent_stream_failures_total", &[]).is_some_and(|v| v >= 1.0));
    assert!(http::value(&m, "podlens_agent_export_buffer_bytes", &[]).is_some_and(|v| v <= 4096.0));
    assert_eq!(http::value(&m, "podlens_agent_export_buffer_limit_bytes", &[]), Some(4096.0));
    let (code, body) = http::get(agent.metrics, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body.trim(), "waiting for: stream_connected", "only the stream holds readiness");
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.log_text());
    let _ = std::fs::remove_dir_all(dir);
}

/// As deploy/manifests/podlens.yaml runs it: uid 0 with a bounding set of
/// exactly CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, no_new_privs
/// (allowPrivilegeEscalation: false), a read-only root filesystem and a
/// read-only cgroup2 mount. It becomes ready, records flows, and on SIGTERM
/// flushes its last window to the collector and exits 0.
#[test]
fn agent_runs_as_the_daemonset_runs_it() {
    let dir = tmpdir("daemonset");
    let mut node = Node::new(Driver::Systemd);
    let a = node.pod("ds", "a", Qos::Burstable);
    let b = node.pod("ds", "b", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "n1", &[&a, &b]);
    let collector = Collector::start(vec!["--insecure-plaintext".into()], &dir);
    // the host's cgroup2 tree bind-mounted read-only at another path, as the hostPath volume is,
    // seen from a cgroup namespace of its own, as a container's
    let host_cgroup = dir.join("host-cgroup");
    std::fs::create_dir_all(&host_cgroup).expect("mount point");
    let (cgroup, mounted) = (cgroup2_root().display().to_string(), host_cgroup.display().to_string());
    let script = format!(
        "mount --bind {cgroup} {mounted} && mount -o remount,bind,ro {mounted} && mount -o remount,bind,ro / && \
         exec setpriv --no-new-privs --bounding-set={CAPS} --inh-caps={CAPS} -- \"$0\" \"$@\""
    );
    let wrapper = ["unshare", "--mount", "--propagation", "private", "--cgroup", "--", "sh", "-c", &script];
    let ingest = format!("http://{}", collector.ingest);
    let inv = inventory.to_str().unwrap();
    let flags = ["--collector", &ingest, "--insecure-plaintext", "--pods-file", inv, "--cgroup-root", &mounted];
    let mut agent = Agent::launch(&wrapper, "n1", "1s", &flags, &dir);
    agent.wait_ready(Duration::from_secs(30));
    poll(agent.metrics, "/readyz", "ready", |code, _| code == 200);

    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("agent status");
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("").to_string();
    assert_eq!(field("CapEff:"), "000000c000001000", "effective: exactly the three");
    assert_eq!(field("CapBnd:"), "000000c000001000", "bounding: exactly the three");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Uid:").split_whitespace().next(), Some("0"));
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid())).expect("agent mountinfo");
    let read_only = |point: &str| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&point) && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
        })
    };
    assert!(read_only("/") && read_only(&mounted), "root and cgroup2 read-only for the agent:\n{mounts}");
    let own_ns = std::fs::read_link("/proc/self/ns/cgroup").expect("cgroup ns");
    let agent_ns = std::fs::read_link(format!("/proc/{}/ns/cgroup", agent.pid())).expect("agent cgroup ns");
    assert_ne!(own_ns, agent_ns, "the agent runs in a cgroup namespace of its own");

    let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
    let listen = SocketAddr::new(b.ip(false), 9443);
    let mut srv = b.spawn(&["tcp-server", "--listen", &listen.to_string()]);
    srv.first_line();
    let out = a.run(&["tcp-client", "--connect", &listen.to_string(), "--send", "3000"]);
    srv.wait_json(Duration::from_secs(30));
    let segs = out[0]["tcp_info"]["segs_out"].as_u64().unwrap();
    observer.wait_until(Duration::from_secs(15), |r| pod_totals(r, &a.uid).values().any(|t| t.egress_packets == segs));
    // the collector got every batch up to the last one, which SIGTERM flushes
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.log_text());
    let m = http::parse_exposition(&collector.metrics_text()).expect("collector metrics");
    let batches = http::value(&m, "podlens_collector_batches_total", &[("node", "n1")]).unwrap_or(0.0);
    let gaps = http::value(&m, "podlens_collector_sequence_gaps_total", &[("node", "n1")]).unwrap_or(0.0);
    assert!(batches >= 2.0 && gaps == 0.0, "batches {batches}, gaps {gaps}");
    let log = agent.log_text();
    assert!(log.contains("stopped") && !log.contains("not delivered"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

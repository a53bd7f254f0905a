//! The agent as an operator runs it: least privilege, and clear errors for bad
//! input (never a panic, never a hang).

use std::{net::SocketAddr, time::Duration};

use podlens_e2e::{
    agent::{run_agent_expecting_exit, Agent, Observer},
    cluster::{write_inventory, Driver, Node, Qos},
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

//! `podlens-demo` (run by `cargo xtask demo`): an emulated node with pods
//! talking to each other and a host service, a batch pod that turns into a
//! noisy neighbour of the frontend, the real agent in standalone mode, and
//! `podlens observe` printing what it sees, then `podlens top --sort pressure`
//! and `podlens findings`. Everything is removed at the end or on Ctrl-C.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use podlens_e2e::{
    agent::Agent,
    cluster::{write_inventory, Driver, Node, Pod, Proc, Qos},
    privileged::unique,
};

#[derive(Parser)]
struct Args {
    /// How long to run (Ctrl-C stops earlier).
    #[arg(long, default_value = "60")]
    seconds: u64,
    /// The podlens CLI binary.
    #[arg(long)]
    cli: PathBuf,
    /// Drain interval of the agent.
    #[arg(long, default_value = "2s")]
    interval: String,
    /// Output of `podlens observe`: table or json.
    #[arg(long, default_value = "table")]
    output: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn client(from: &Pod, to: SocketAddr, bytes: u32) -> Proc {
    from.spawn(&["tcp-client", "--connect", &to.to_string(), "--send", &bytes.to_string()])
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let dir = std::env::temp_dir().join(unique("podlens-demo"));
    std::fs::create_dir_all(&dir).context("demo directory")?;
    let result = run(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(args: &Args, dir: &std::path::Path) -> Result<()> {
    let mut node = Node::new(Driver::Systemd);
    let frontend = node.pod("demo", "frontend-6c9f7", Qos::Burstable);
    let backend = node.pod("demo", "backend-84d5b", Qos::Burstable);
    let db = node.pod("demo", "postgres-0", Qos::Guaranteed);
    let coredns = node.pod("kube-system", "coredns-5d78c", Qos::Burstable);
    let batch = node.pod("batch", "report-generator-x7k2p", Qos::BestEffort);
    let cron = node.host_unit("system.slice/demo-backup.service");
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "demo-node", &[&frontend, &backend, &db, &coredns, &batch]);

    eprintln!(
        "podlens demo: node netns {}, pods demo/frontend-6c9f7 {} / {}, demo/backend-84d5b {}, demo/postgres-0 {}",
        node.netns, frontend.v4, frontend.v6, backend.v4, db.v4
    );
    let agent =
        Agent::start("demo-node", &args.interval, &["--pods-file", inventory.to_str().unwrap_or_default()], dir);
    eprintln!("agent serving Observe on {} (log: {}/agent-{}.log)\n", agent.addr, dir.display(), agent.addr.port());

    let api = SocketAddr::new(backend.ip(false), 8080);
    let pg = SocketAddr::new(db.ip(true), 5432);
    let dns = SocketAddr::new(db.ip(false), 5353);
    let resolver = SocketAddr::new(coredns.ip(false), 53);
    let backend_name = "backend.demo.svc.cluster.local";
    let record = format!("{backend_name}={}", backend.v4);
    let mut cluster_dns =
        coredns.spawn(&["dns-server", "--listen", &resolver.to_string(), "--delay-ms", "2", "--record", &record]);
    cluster_dns.first_line();
    let _servers = [
        cluster_dns,
        backend.spawn(&["tcp-server", "--listen", &api.to_string(), "--conns", "1000000", "--reply", "2048"]),
        db.spawn(&["tcp-server", "--listen", &pg.to_string(), "--conns", "1000000", "--reply", "8192"]),
        db.spawn(&[
            "udp-recv",
            "--listen",
            &dns.to_string(),
            "--count",
            "1000000000",
            "--timeout-ms",
            &(args.seconds * 1000 + 5000).to_string(),
        ]),
    ];
    std::thread::sleep(Duration::from_millis(300));

    let server = format!("http://{}", agent.addr);
    let mut observe = std::process::Command::new(&args.cli)
        .args(["observe", "--server", &server, "-o", &args.output])
        .args(["--namespace", "demo", "--namespace", "kube-system"])
        .args(["--kind", "flow", "--kind", "dns", "--kind", "finding"])
        .spawn()
        .context("starting podlens observe")?;

    // A noisy neighbour: the frontend wakes every millisecond on the last CPU;
    // from a third of the run on, a batch pod burns that CPU for a third of it.
    let cpu = (std::thread::available_parallelism().map_or(1, |n| n.get()) - 1).to_string();
    let _latency_sensitive =
        frontend.spawn(&["victim", "--cpu", &cpu, "--work-us", "200", "--seconds", &args.seconds.to_string()]);
    let noisy_at = Instant::now() + Duration::from_secs(args.seconds / 3);
    let mut noisy = None;

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut round = 0u32;
    while Instant::now() < deadline && !STOP.load(Ordering::SeqCst) {
        if noisy.is_none() && Instant::now() >= noisy_at {
            let secs = (args.seconds / 3).max(1).to_string();
            noisy = Some(batch.spawn(&["burn", "--cpu", &cpu, "--threads", "3", "--seconds", &secs]));
        }
        // the frontend resolves the backend's service name, then calls it
        let at = format!("@{}", resolver.ip());
        let lookup = if round.is_multiple_of(4) { "backend.demo.svc" } else { backend_name };
        frontend.spawn(&["exec", "--", "dig", "+short", "+tries=1", &at, lookup]).wait_stdout(Duration::from_secs(10));
        let mut batch = vec![
            client(&frontend, api, 512 + round % 7 * 100),
            client(&backend, pg, 256),
            frontend.spawn(&["udp-send", "--to", &dns.to_string(), "--count", "3", "--size", "64"]),
        ];
        if round.is_multiple_of(6) {
            batch.push(node.spawn_in(
                &cron,
                &node.netns,
                &["tcp-client", "--connect", &api.to_string(), "--send", "65536"],
            ));
        }
        for p in batch {
            p.wait_json(Duration::from_secs(10));
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = observe.kill();
    let _ = observe.wait();
    for (title, cmd) in [
        ("pods ranked by CPU pressure", vec!["top", "--sort", "pressure", "--since", "10m"]),
        ("noisy-neighbour findings", vec!["findings"]),
    ] {
        println!("\n== podlens {} ({title})", cmd.join(" "));
        let _ = std::process::Command::new(&args.cli).args(&cmd).args(["--server", &server]).status();
    }
    drop(agent);
    eprintln!("\npodlens demo: {round} rounds of traffic; cleaning up");
    Ok(())
}

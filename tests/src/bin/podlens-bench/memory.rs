//! Agent memory with many flows per window, as the DaemonSet runs it (no
//! embedded collector, streaming to a collector): peak resident memory of
//! the process, and the kernel memory of its BPF maps (memlock of every map
//! it holds, from fdinfo). Both count against the container's memory limit
//! (map memory is charged to the agent's memory cgroup since Linux 5.11).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use podlens_e2e::{
    agent::Agent,
    cluster::{write_inventory, Driver, Node, Qos},
    collector::Collector,
    http,
    privileged::unique,
};

use crate::stream::cpu_seconds;

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("agent status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Bytes of kernel memory of the BPF maps the process holds (`memlock:` of
/// each map fd; programs and BTF are small and left out).
fn map_bytes(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        if info.contains("map_type:") {
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

pub fn run(rate: u64, seconds: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(unique("bench-mem"));
    std::fs::create_dir_all(&dir)?;
    let mut node = Node::new(Driver::Systemd);
    let client = node.pod("bench", "client", Qos::Burstable);
    let server = node.pod("bench", "server", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "bench", &[&client, &server]);
    let collector = Collector::start(vec!["--insecure-plaintext".into()], &dir);
    let ingest = format!("http://{}", collector.ingest);
    let inv = inventory.display().to_string();
    let flags = ["--collector", &ingest, "--insecure-plaintext", "--pods-file", &inv];
    let agent = Agent::start_daemon("bench", "5s", &flags, &dir);
    let pid = agent.pid();
    // the peak so far is the start-up one (BTF parsing, program loads)
    let startup_hwm = status_kib(pid, "VmHWM:")?;
    std::thread::sleep(Duration::from_secs(6));
    let (idle_rss, idle_maps) = (status_kib(pid, "VmRSS:")?, map_bytes(pid)?);

    let listen = SocketAddr::new(server.ip(false), 9900);
    let n = rate * seconds;
    let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string(), "--conns", &n.to_string()]);
    srv.first_line();
    let churn = client.spawn(&[
        "tcp-churn",
        "--connect",
        &listen.to_string(),
        "--count",
        &n.to_string(),
        "--rate",
        &rate.to_string(),
    ]);
    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    let mut peak_entries = 0.0f64;
    let mut load_rss = 0u64;
    let deadline = t0 + Duration::from_secs(seconds + 30);
    while Instant::now() < deadline && t0.elapsed() < Duration::from_secs(seconds + 6) {
        load_rss = load_rss.max(status_kib(pid, "VmRSS:")?);
        if let Some((200, text)) = http::get(agent.metrics, "/metrics") {
            let m = http::parse_exposition(&text).map_err(anyhow::Error::msg)?;
            peak_entries = peak_entries.max(http::value(&m, "podlens_agent_flow_map_entries", &[]).unwrap_or(0.0));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    churn.wait_stdout(Duration::from_secs(60));
    srv.wait_stdout(Duration::from_secs(60));
    let maps = map_bytes(pid)?;
    drop(agent);

    let (kib, mib) = (|k: u64| k as f64 / 1024.0, |b: u64| b as f64 / (1024.0 * 1024.0));
    println!("### Agent memory under load (DaemonSet mode)\n");
    println!("{rate} TCP connections per second between two emulated pods for {seconds} s, agent with");
    println!("`--interval 5s` streaming to a collector (no embedded collector), default map sizes.");
    println!("Peak distinct flows drained in one window: **{peak_entries:.0}** (both ends of every");
    println!("connection are on this node). Agent CPU during the load: {cpu:.3} cores. Resident memory");
    println!("sampled every 0.5 s; the start-up peak is VmHWM before any traffic.\n");
    println!("| | start-up peak | idle | under load (max) |");
    println!("|---|---|---|---|");
    println!(
        "| resident memory | {:.1} MiB | {:.1} MiB | **{:.1} MiB** |",
        kib(startup_hwm),
        kib(idle_rss),
        kib(load_rss)
    );
    println!(
        "| BPF map memory (memlock of the agent's maps) | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(idle_maps),
        mib(idle_maps),
        mib(maps)
    );
    println!(
        "| total a container limit must hold | {:.1} MiB | {:.1} MiB | **{:.1} MiB** |\n",
        kib(startup_hwm) + mib(idle_maps),
        kib(idle_rss) + mib(idle_maps),
        kib(load_rss) + mib(maps)
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

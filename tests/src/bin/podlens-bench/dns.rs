//! `cargo xtask bench dns`: a real resolver (dnsmasq) in one emulated pod
//! answering a paced load of queries from another, with and without the agent
//! (interleaved, ABBA), so the agent's effect is a ratio within one run. With
//! the agent: how many DNS messages it saw and lost, and its CPU per 1 000
//! messages per second.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use podlens_e2e::{
    agent::{Agent, Observer},
    cluster::{write_inventory, Driver, Node, Pod, Qos},
    privileged::unique,
    records::loss_total,
};
use podlens_proto::v1 as pb;

use super::{abba, median, stream::cpu_seconds};

/// Answered queries per second for one load run.
fn load(client: &Pod, server: SocketAddr, rate: u64, seconds: u64) -> Result<(f64, u64, u64)> {
    let out = client.run(&[
        "dns-load",
        "--server",
        &server.to_string(),
        "--name",
        "bench.example.test",
        "--name",
        "api.example.test",
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    let v = out.first().context("dns-load printed nothing")?;
    let (sent, answered) = (v["sent"].as_u64().unwrap_or(0), v["answered"].as_u64().unwrap_or(0));
    Ok((answered as f64 / seconds as f64, sent, answered))
}

pub fn run(reps: usize, rate: u64, seconds: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(unique("benchdns"));
    std::fs::create_dir_all(&dir)?;
    let mut node = Node::new(Driver::Systemd);
    let client = node.pod("bench", "client", Qos::Burstable);
    let dns = node.pod("kube-system", "dns", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "bench", &[&client, &dns]);
    let ip = dns.ip(false);
    let _dnsmasq = dns.dnsmasq(&["example.test"], &["/bench.example.test/10.77.0.99", "/api.example.test/10.77.0.98"]);
    let server = SocketAddr::new(ip, 53);
    load(&client, server, rate, 1)?; // warm-up, not counted
    let inv = inventory.display().to_string();
    let (mut seen, mut lost, mut cpu_per_k, mut unanswered) = (Vec::new(), 0u64, Vec::new(), 0u64);
    let with_agent = |on: bool| -> Result<f64> {
        if !on {
            let (qps, sent, answered) = load(&client, server, rate, seconds)?;
            unanswered += sent - answered.min(sent);
            return Ok(qps);
        }
        let agent = Agent::start("bench", "1s", &["--pods-file", &inv], &dir);
        let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
        std::thread::sleep(Duration::from_secs(2));
        let messages = |r: &[pb::Record]| loss_total(r, "kernel_activity", "dns_messages").unwrap_or(0);
        let before = messages(&observer.records());
        let cpu0 = cpu_seconds(agent.pid())?;
        let (qps, sent, answered) = load(&client, server, rate, seconds)?;
        let cpu = cpu_seconds(agent.pid())? - cpu0;
        unanswered += sent - answered.min(sent);
        // two more windows, so every message of the run is counted
        let n = observer.records().len();
        observer.wait_until(Duration::from_secs(10), |r| r.len() > n + 2);
        std::thread::sleep(Duration::from_secs(2));
        let records = observer.records();
        let msgs = messages(&records) - before;
        for (source, reason) in [("kernel", "dns_lost"), ("kernel", "dns_copy_err"), ("dns", "pending_full")] {
            lost += loss_total(&records, source, reason).unwrap_or(0);
        }
        let per_s = msgs as f64 / seconds as f64;
        seen.push(per_s);
        cpu_per_k.push(cpu / seconds as f64 / (per_s / 1000.0).max(1e-9));
        drop(agent);
        Ok(qps)
    };
    let (without, with, ratios) = abba(reps, with_agent)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("### DNS: a resolver under load with and without the agent\n");
    println!("dnsmasq in one emulated pod answering A queries (two local names) from another pod at");
    println!("{rate} queries/s for {seconds} s, {reps} pairs of runs in ABBA order without and with the agent");
    println!("(`--standalone --interval 1s`, DNS on port 53). Medians.\n");
    println!("| | answered queries/s |");
    println!("|---|---|");
    println!("| without agent | {:.0} |", median(without));
    println!("| with agent | {:.0} |", median(with));
    let r: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!("\nratio with/without: **{:.3}** (pairs: {}; target >= 0.97)\n", median(ratios), r.join(", "));
    println!("Queries the resolver left unanswered, all runs: {unanswered}.\n");
    println!("With the agent: DNS messages seen per second (each query and answer counts at the client and");
    println!(
        "at the resolver: four per query): **{:.0}**; messages lost (ring full, copy errors, pending",
        median(seen)
    );
    println!(
        "table full), all runs: **{lost}**; agent CPU per 1 000 messages/s: **{:.4}** cores.\n",
        median(cpu_per_k)
    );
    Ok(())
}

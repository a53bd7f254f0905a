//! `podlens-bench` (run by `cargo xtask bench`): measured costs, always as a
//! ratio or difference against a baseline measured in the same run. Prints a
//! Markdown report for BENCHMARKS.md.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{CgroupSkb, TestRun, TestRunOptions},
    Ebpf,
};
use clap::{Parser, Subcommand};
use podlens_e2e::{
    agent::Agent,
    cluster::{Driver, Node, Pod, Qos},
    kernel::{Dir, FlowProgs},
    packets::*,
    privileged::{require_root, unique},
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Flow program cost per packet, and TCP throughput with and without the agent.
    Flows {
        /// Interleaved repetitions of every measurement (the median is reported).
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// Program runs per BPF_PROG_TEST_RUN measurement.
        #[arg(long, default_value_t = 2_000_000)]
        runs: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        iperf_seconds: u64,
        /// Only the program costs (skip the iperf3 runs).
        #[arg(long, conflicts_with = "throughput_only")]
        programs_only: bool,
        /// Only the iperf3 runs (skip the program costs).
        #[arg(long)]
        throughput_only: bool,
        /// An extra agent argument for the runs with the agent (repeatable), e.g.
        /// `--agent-arg=--sched=off` to see what one feature costs.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// A resolver under a paced load with and without the agent; DNS messages lost; agent CPU.
    Dns {
        /// Interleaved repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Offered queries per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Scheduler probes: context-switch cost with and without them, ns per run, map memory.
    Sched {
        /// Interleaved repetitions (the median is reported).
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// Ping-pong round trips per run.
        #[arg(long, default_value_t = 200_000)]
        rounds: u64,
    },
    /// Agent memory (peak RSS and BPF map memory) with many flows per window, as the DaemonSet runs it.
    Memory {
        /// Accepted for uniformity with the other benchmarks; one run is made.
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// TCP connections per second (rate x seconds stays below the 28 232 ephemeral ports a
        /// client has, as each closed connection holds one in TIME_WAIT).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Collector ingest rate, agent export CPU, bytes on the wire per record.
    Stream {
        /// Interleaved repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per ingest measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// `reps` pairs of measurements without and with the agent in ABBA order, so
/// a drift over the run does not favour one side: (without, with, ratios).
pub fn abba(reps: usize, mut measure: impl FnMut(bool) -> Result<f64>) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..reps {
        let (off, on) = if i % 2 == 0 {
            let off = measure(false)?;
            (off, measure(true)?)
        } else {
            let on = measure(true)?;
            (measure(false)?, on)
        };
        without.push(off);
        with.push(on);
        ratios.push(on / off);
    }
    Ok((without, with, ratios))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ns_per_run(prog: &CgroupSkb, frame: &[u8], runs: u32) -> Result<f64> {
    let r = prog.test_run(TestRunOptions { data_in: Some(frame), repeat: runs, ..Default::default() })?;
    if r.return_value != 1 {
        bail!("program returned {} instead of 1", r.return_value);
    }
    // The kernel reports the mean duration per run.
    Ok(r.duration.as_nanos() as f64)
}

/// A packet of flow number `n` (distinct source address and port per n).
fn frame(n: u32) -> Vec<u8> {
    let src = std::net::Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
    let dst = std::net::Ipv4Addr::new(192, 0, 2, 1);
    eth(ETH_P_IP, &ipv4(src, dst, 6, &tcp(1024 + (n % 60000) as u16, 443, ACK | PSH, &[], &[0x42; 100])))
}

fn program_costs(reps: usize, runs: u32) -> Result<()> {
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    if stats.trim() != "0" {
        bail!("kernel.bpf_stats_enabled is {:?}: turn it off, it adds to every program run", stats.trim());
    }
    let mut baseline = Ebpf::load(podlens_agent_ebpf::baseline_object()).context("baseline object")?;
    let base: &mut CgroupSkb = baseline.program_mut("baseline_egress").context("baseline program")?.try_into()?;
    base.load()?;
    let capacity: u32 = podlens_agent_ebpf::FLOW_MAP_ENTRIES;
    let mut flows = FlowProgs::load(capacity, 1 << 20);
    let known = frame(0);
    let new_flow = frame(capacity + 1);

    println!("### Flow program cost per packet (BPF_PROG_TEST_RUN)\n");
    let reps = reps * 3;
    println!("Packet: IPv4 TCP, 140 bytes of L3 (100 payload). {runs} runs per measurement, {reps} repetitions");
    println!("alternating baseline and flow program; medians, and the median of the paired differences.");
    println!("Flow map capacity {capacity}. `kernel.bpf_stats_enabled` = 0.\n");
    println!("| scenario | baseline ns/pkt | flow program ns/pkt | above baseline |");
    println!("|---|---|---|---|");
    for (label, fill) in [
        ("known flow, map empty", 1u32),
        ("known flow, map half full", capacity / 2),
        ("known flow, map full", capacity),
    ] {
        flows.drain();
        for n in 0..fill {
            flows.run(Dir::Egress, &frame(n));
        }
        let (b, f, d) = measure(reps, runs, base, &mut flows, &known)?;
        println!("| {label} | {b:.1} | {f:.1} | **{d:.1}** |");
    }
    // The map is full now: a new flow takes the overflow path (ring buffer event).
    let (b, f, d) = measure(reps, runs.min(50_000), base, &mut flows, &new_flow)?;
    println!("| new flow, map full (overflow path) | {b:.1} | {f:.1} | {d:.1} |");
    let entries = flows.drain().len();
    println!("\n(entries in the map at the end: {entries}; target: <= 60 ns above baseline for a known flow)\n");
    Ok(())
}

/// Medians of the baseline, of the flow program, and of their per-repetition
/// differences (pairs cancel slow drifts of the machine).
fn measure(reps: usize, runs: u32, base: &CgroupSkb, flows: &mut FlowProgs, frame: &[u8]) -> Result<(f64, f64, f64)> {
    let prog: &mut CgroupSkb =
        flows.kernel.program_mut(podlens_agent_ebpf::programs::FLOW_EGRESS).context("flow program")?.try_into()?;
    let (mut b, mut f, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let base_ns = ns_per_run(base, frame, runs)?;
        let flow_ns = ns_per_run(prog, frame, runs)?;
        b.push(base_ns);
        f.push(flow_ns);
        d.push(flow_ns - base_ns);
    }
    Ok((median(b), median(f), median(d)))
}

fn iperf(client: &Pod, server: &Pod, seconds: u64) -> Result<f64> {
    let addr = SocketAddr::new(server.ip(false), 5201);
    // Client and server pinned to different CPUs (-A) for repeatable runs.
    let mut srv = server.spawn(&["exec", "--", "iperf3", "-s", "-1", "-A", "1", "-B", &addr.ip().to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let out = client
        .spawn(&["exec", "--", "iperf3", "-c", &addr.ip().to_string(), "-A", "0", "-t", &seconds.to_string(), "-J"])
        .wait_stdout(Duration::from_secs(seconds + 30));
    let out: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    srv.kill();
    out["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 JSON: end.sum_received.bits_per_second")
}

fn throughput(reps: usize, seconds: u64, agent_args: &[String]) -> Result<()> {
    let dir = std::env::temp_dir().join(unique("bench"));
    std::fs::create_dir_all(&dir)?;
    let mut node = Node::new(Driver::Systemd);
    let a = node.pod("bench", "client", Qos::Burstable);
    let b = node.pod("bench", "server", Qos::Burstable);
    let with_agent = |on: bool| -> Result<f64> {
        if !on {
            return iperf(&a, &b, seconds);
        }
        let extra: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        let mut agent = Agent::start("bench", "5s", &extra, &dir);
        let r = iperf(&a, &b, seconds);
        agent.stop();
        r
    };
    iperf(&a, &b, 2)?; // warm-up, not counted
    let (without, with, ratios) = abba(reps, with_agent)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("### TCP throughput between two emulated pods (iperf3 over veth and a bridge)\n");
    println!("{reps} pairs of {seconds} s runs in ABBA order, without and with the agent (started fresh,");
    let extra = if agent_args.is_empty() { String::new() } else { format!(" {}", agent_args.join(" ")) };
    println!("`--standalone --interval 5s{extra}`); iperf3 client and server pinned to CPUs 0 and 1. Median of the");
    println!("per-pair ratios.\n");
    println!("| | Gbit/s (median) |");
    println!("|---|---|");
    println!("| without agent | {:.2} |", median(without) / 1e9);
    println!("| with agent | {:.2} |", median(with) / 1e9);
    let r: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!("\nratio with/without: **{:.3}** (pairs: {}; target >= 0.97)\n", median(ratios), r.join(", "));
    Ok(())
}

mod dns;
mod memory;
mod sched;
mod stream;

fn main() -> Result<()> {
    require_root();
    match Cli::parse().bench {
        Bench::Stream { reps, seconds } => stream::run(reps, seconds),
        Bench::Memory { reps: _, rate, seconds } => memory::run(rate, seconds),
        Bench::Dns { reps, rate, seconds } => dns::run(reps, rate, seconds),
        Bench::Sched { reps, rounds } => sched::run(reps, rounds),
        Bench::Flows { reps, runs, iperf_seconds, programs_only, throughput_only, agent_args } => {
            if !throughput_only {
                program_costs(reps, runs)?;
            }
            if programs_only {
                return Ok(());
            }
            throughput(reps, iperf_seconds, &agent_args)
        }
    }
}

//! `cargo xtask bench stream`: the collector's ingest rate per core, the
//! agent's CPU spent exporting (against the same agent not exporting, in the
//! same run), and bytes on the wire per record.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use podlens_e2e::{
    agent::{Agent, Observer},
    cluster::{write_inventory, Driver, Node, Qos},
    collector::Collector,
    pki::Pki,
    privileged::unique,
    raw::ingest_stream_from,
    records::{flows, loss_total},
};
use podlens_proto::v1 as pb;
use prost::Message;

use super::median;

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // after the ")" closing the command name, utime and stime are fields 12 and 13
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field(11) + field(12)) / hz)
}

/// A batch of `n` flow records shaped like real ones: 100 pods talking to
/// 100 others, pod identities on both sides, compacted as the agent sends
/// them; encoded without its sequence, which the sender prepends (protobuf
/// merges concatenated fields).
fn template(node: &str, n: usize) -> Vec<u8> {
    let pod = |i: usize| pb::PodRef {
        uid: format!("3f1b5d0e-8a2c-4f6e-9b7d-{i:012x}"),
        namespace: "shop".into(),
        name: format!("checkout-7d4b9c-{i:05}"),
        container_id: format!("{i:064x}"),
        container_name: "app".into(),
        qos_class: 2,
        runtime: 1,
    };
    let records = (0..n)
        .map(|i| pb::Record {
            node: node.into(),
            window_start_unix_nano: 1_700_000_000_000_000_000,
            window_end_unix_nano: 1_700_000_005_000_000_000,
            kind: Some(pb::record::Kind::Flow(pb::FlowRecord {
                local: Some(pb::Workload {
                    cgroup_id: 10_000 + (i % 100) as u64,
                    cgroup_path: format!(
                        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:032x}.slice/cri-containerd-{:064x}.scope",
                        i % 100,
                        i % 100
                    ),
                    kind: Some(pb::workload::Kind::Pod(pod(i % 100))),
                    unknown_layout: false,
                }),
                local_ip: format!("10.244.{}.{}", i / 250 % 250, i % 250),
                local_port: 40_000 + (i % 20_000) as u32,
                remote: Some(pb::Peer {
                    ip: format!("10.245.{}.{}", i / 250 % 250, i % 250),
                    port: 443,
                    pod: Some(pod(100 + i * 7 % 100)),
                    fqdn: String::new(),
                    pod_index: 0,
                }),
                protocol: 6,
                egress: Some(pb::FlowCounts { bytes: 12_345, packets: 17, syn: 1, fin: 1, rst: 0, tcp_flags: 0x1b }),
                ingress: Some(pb::FlowCounts { bytes: 54_321, packets: 21, syn: 1, fin: 1, rst: 0, tcp_flags: 0x1b }),
                first_seen_unix_nano: 1_700_000_001_000_000_000,
                last_seen_unix_nano: 1_700_000_004_000_000_000,
                overflow: false,
                local_index: 0,
                initiator: pb::Initiator::Local as i32,
            })),
        })
        .collect();
    let node = pb::NodeIdentity {
        name: node.into(),
        boot_id: "bench".into(),
        agent_epoch_unix_nano: 1,
        agent_version: "bench".into(),
    };
    podlens_proto::compact::compact(node, 0, records).encode_to_vec()
}

struct Ingested {
    records: u64,
    collector_cpu: f64,
    wall: f64,
}

/// Streams batches of `per_batch` records on `streams` streams (one node
/// each) for `seconds`; counts what the collector acknowledged.
fn ingest(c: &Collector, streams: usize, seconds: u64, per_batch: usize) -> Result<Ingested> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let pid = c.pid();
    let url = format!("http://127.0.0.1:{}", c.ingest.port());
    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    let acked: u64 = rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..streams {
            let tpl = template(&format!("bench-{s}-{}", unique("")), per_batch);
            let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
            tasks.push(tokio::spawn(async move {
                let messages = futures::stream::iter(1u64..)
                    .take_while(move |_| futures::future::ready(tokio::time::Instant::now() < deadline))
                    .map(move |seq| {
                        let mut m = pb::Batch { sequence: seq, ..Default::default() }.encode_to_vec();
                        m.extend_from_slice(&tpl);
                        m
                    });
                let mut acks = ingest_stream_from(channel, messages).await?;
                let mut last = 0;
                while let Some(a) = acks.message().await? {
                    last = pb::Ack::decode(a.as_slice()).map_or(last, |a| a.sequence);
                }
                Ok::<u64, tonic::Status>(last)
            }));
        }
        let mut batches = 0;
        for t in tasks {
            batches += t.await?.map_err(|s| anyhow::anyhow!("ingest stream: {s}"))?;
        }
        Ok::<u64, anyhow::Error>(batches * per_batch as u64)
    })?;
    Ok(Ingested { records: acked, collector_cpu: cpu_seconds(pid)? - cpu0, wall: t0.elapsed().as_secs_f64() })
}

pub fn run(reps: usize, seconds: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(unique("bench-stream"));
    std::fs::create_dir_all(&dir)?;
    let result = ingest_section(&dir, reps, seconds).and_then(|_| export_section(&dir, reps));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn ingest_section(dir: &Path, reps: usize, seconds: u64) -> Result<()> {
    const PER_BATCH: usize = 2000;
    let per_record = template("bench", PER_BATCH).len() as f64 / PER_BATCH as f64;
    println!("### Collector ingest (release build, plaintext, no consumers)\n");
    println!(
        "Two streams (two nodes) of batches of {PER_BATCH} flow records ({per_record:.0} bytes each encoded, with pod"
    );
    println!("identities on both sides), {seconds} s per run, {reps} runs; records acknowledged per second of");
    println!("collector CPU (user + system, from /proc). The generator runs on the same 2-vCPU machine.\n");
    let (mut per_core, mut per_wall) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let c = Collector::start(vec!["--insecure-plaintext".into()], dir);
        let r = ingest(&c, 2, seconds, PER_BATCH)?;
        per_core.push(r.records as f64 / r.collector_cpu.max(1e-9));
        per_wall.push(r.records as f64 / r.wall);
    }
    println!("| | records/s |");
    println!("|---|---|");
    println!("| per collector CPU-second (median) | **{:.0}** |", median(per_core.clone()));
    println!("| wall clock (median) | {:.0} |", median(per_wall));
    let r: Vec<String> = per_core.iter().map(|v| format!("{v:.0}")).collect();
    println!("\n(per-core runs: {}; target >= 1 000 000)\n", r.join(", "));
    Ok(())
}

/// Agent CPU with and without exporting under the same flow load; bytes the
/// export put on the wire per record (from podlens's own record of the
/// agent's connection to the collector).
fn export_section(dir: &Path, reps: usize) -> Result<()> {
    const SECONDS: u64 = 20;
    const RATE: u64 = 1000; // connections per second: two flow records each
    let pki = Pki::create(&dir.join("pki"));
    let collector = Collector::start_tls(&pki, dir, &[]);
    let mut node = Node::new(Driver::Systemd);
    let server = node.pod("bench", "server", Qos::Burstable);
    let client = node.pod("bench", "client", Qos::Burstable);
    let inventory = dir.join("pods.yaml");
    write_inventory(&inventory, "bench", &[&server, &client]);
    let s = |p: &Path| p.display().to_string();
    let export_flags = [
        "--collector".to_string(),
        format!("https://localhost:{}", collector.ingest.port()),
        "--tls-ca".into(),
        s(&pki.ca),
        "--tls-cert".into(),
        s(&pki.agent.cert),
        "--tls-key".into(),
        s(&pki.agent.key),
    ];
    let (mut cpu_local, mut cpu_export, mut rates, mut wire) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, port) in (0..reps * 2).zip(9700u16..) {
        // ABBA: standalone only, export, export, standalone only, ...
        let export = (i % 4 == 1) || (i % 4 == 2);
        let mut flags = vec!["--pods-file".to_string(), s(&inventory)];
        if export {
            flags.extend(export_flags.iter().cloned());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let agent = Agent::start("bench", "1s", &flags, dir);
        let observer = Observer::connect(agent.addr, pb::ObserveRequest::default());
        let listen = SocketAddr::new(server.ip(false), port);
        let n = RATE * SECONDS;
        let mut srv = server.spawn(&["tcp-server", "--listen", &listen.to_string(), "--conns", &n.to_string()]);
        srv.first_line();
        let (cpu0, t0) = (cpu_seconds(agent.pid())?, Instant::now());
        client.run(&[
            "tcp-churn",
            "--connect",
            &listen.to_string(),
            "--count",
            &n.to_string(),
            "--rate",
            &RATE.to_string(),
        ]);
        let (cpu, wall) = (cpu_seconds(agent.pid())? - cpu0, t0.elapsed().as_secs_f64());
        srv.wait_stdout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(2));
        let records = observer.records();
        let flow_records = flows(&records).count() as f64;
        if export {
            cpu_export.push(cpu / wall);
            // the agent's own connection to the collector, recorded by the agent
            let to_collector: u64 = flows(&records)
                .filter(|f| f.remote.as_ref().is_some_and(|r| r.port == u32::from(collector.ingest.port())))
                .map(|f| f.egress.map_or(0, |c| c.bytes))
                .sum();
            let produced = loss_total(&records, "export_activity", "produced_records").unwrap_or(0) as f64;
            if produced > 0.0 {
                wire.push(to_collector as f64 / produced);
            }
        } else {
            cpu_local.push(cpu / wall);
        }
        rates.push(flow_records / wall);
        drop(agent);
    }
    let rate = median(rates);
    let (local, export) = (median(cpu_local), median(cpu_export));
    println!("### Agent export CPU and bytes on the wire\n");
    println!("{RATE} TCP connections per second between two emulated pods for {SECONDS} s ({rate:.0} flow records/s),");
    println!("agent with `--interval 1s`, {reps} runs each way in ABBA order: standalone only vs standalone plus");
    println!("export over mTLS to a collector. Agent CPU (user + system) from /proc, median.\n");
    println!("| | agent CPU (cores) |");
    println!("|---|---|");
    println!("| standalone only | {local:.4} |");
    println!("| standalone + export | {export:.4} |");
    println!("| export, per 1000 records/s | **{:.4}** |", (export - local) / rate.max(1.0) * 1000.0);
    // CPU comes in clock ticks: one tick over the run is the resolution
    // SAFETY: sysconf has no preconditions.
    let tick = 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!("\n(resolution: {:.4} cores per run)", tick / SECONDS as f64);
    println!("\nBytes on the wire per exported record (L3 bytes of the agent's connection to the collector,");
    println!("as podlens records it, over records produced): **{:.0}** (median)\n", median(wire));
    Ok(())
}

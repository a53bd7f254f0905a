//! `podlens observe`: live records from an agent (standalone) or a collector.

use std::io::Write;

use anyhow::{Context, Result};
use podlens_proto::v1::{self as pb, observe_client::ObserveClient};

use super::format;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Traffic per socket pair, per window.
    Flow,
    /// DNS per workload and role, per window.
    Dns,
    /// Each node's loss and activity counters, every window.
    Loss,
    /// Pressure of pods, containers and the node, per window.
    Pressure,
    /// Detector findings (noisy neighbours), each report of an episode.
    Finding,
}

impl Kind {
    fn to_pb(self) -> pb::RecordKind {
        match self {
            Kind::Flow => pb::RecordKind::Flow,
            Kind::Dns => pb::RecordKind::Dns,
            Kind::Loss => pb::RecordKind::Loss,
            Kind::Pressure => pb::RecordKind::Pressure,
            Kind::Finding => pb::RecordKind::Finding,
        }
    }
}

/// JSON of the pressure and finding records, documented in `podlens observe --help`.
pub const JSON_HELP: &str = "\
JSON output (-o json): one record per line. Every record has kind, node, window_start_unix_nano,
window_end_unix_nano and origin {node, boot_id, agent_epoch_unix_nano, sequence}.
kind \"pressure\": local: WORKLOAD or null (the node), node_wide (true for the node's record),
  cpu, memory, io: {some_usec: COUNTER, full_usec: COUNTER, some_share, full_share} or null,
  cpu_stat: {usage_usec, nr_periods, nr_throttled, throttled_usec: COUNTER, limit_cores (null: no known
    limit), throttling_source} or null,
  memory_events: {oom, oom_kill, high, max: COUNTER} or null,
  run_queue: {buckets: [{le_ns (null: open-ended), count}], wakeup_waits, wakeup_wait_ns, preempt_waits,
    preempt_wait_ns, wait_ns, on_cpu_ns, p50_ns, p99_ns, unattributed_ns} or null (scheduler probes off),
  culprits: [{kind, workload: WORKLOAD or null, wait_ns, share}], verdict: {kind, since_unix_nano,
    window_kind, summary} or null (containers, the node).
  COUNTER: {total, delta} or null when the kernel does not provide it (never 0 for absent); a share is null
  when its counter is.
kind \"finding\": id, finding_kind, state (open | ongoing | resolved), start_unix_nano, end_unix_nano,
  summary, noisy_neighbour: {victim: WORKLOAD, verdict, culprits, windows, wait_ns, run_queue_p99_ns,
  cpu_some_share} or null (see `podlens findings --help`).
Enum values are the proto names without their prefix, in lower case (verdict \"self_throttled\").";

#[derive(Debug, clap::Args)]
#[command(after_long_help = JSON_HELP)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub connect: super::connect::ConnectArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Only records of pods in this namespace (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Only records of this pod: NAME or NAMESPACE/NAME (repeatable).
    #[arg(long = "pod")]
    pub pods: Vec<String>,
    /// Only records of this kind (repeatable).
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<Kind>,
    /// Only records from this node (repeatable).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Start with the records the server received this long ago and kept (e.g. 5m).
    #[arg(long, value_parser = crate::runtime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Stop after printing this many records (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
}

pub async fn run(args: ObserveArgs) -> Result<()> {
    let mut client = ObserveClient::new(args.connect.connect().await?);
    let request = pb::ObserveRequest {
        nodes: args.nodes.clone(),
        namespaces: args.namespaces.clone(),
        pods: args.pods.clone(),
        kinds: args.kinds.iter().map(|k| k.to_pb() as i32).collect(),
        since_unix_nano: args.since.map_or(0, |d| {
            let since = std::time::SystemTime::now().checked_sub(d).unwrap_or(std::time::UNIX_EPOCH);
            since.duration_since(std::time::UNIX_EPOCH).map_or(1, |t| (t.as_nanos() as u64).max(1))
        }),
    };
    let mut stream = client.observe(request).await.context("starting Observe")?.into_inner();
    let stdout = std::io::stdout();
    if args.output == Output::Table {
        writeln!(stdout.lock(), "{}", format::TABLE_HEADER)?;
    }
    let mut printed = 0u64;
    while let Some(msg) = stream.message().await.context("reading the Observe stream")? {
        let Some(record) = msg.record else { continue };
        let line = match args.output {
            Output::Json => Some(format::record_json(&record, msg.origin.as_ref()).to_string()),
            Output::Table => format::record_line(&record),
        };
        let Some(line) = line else { continue };
        let mut out = stdout.lock();
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        printed += 1;
        if args.limit > 0 && printed >= args.limit {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ObserveArgs,
    }

    #[test]
    fn pressure_and_finding_kinds() {
        let a = Cli::try_parse_from(["observe", "--kind", "pressure", "--kind", "finding"]).unwrap().args;
        let kinds: Vec<pb::RecordKind> = a.kinds.iter().map(|k| k.to_pb()).collect();
        assert_eq!(kinds, [pb::RecordKind::Pressure, pb::RecordKind::Finding]);
    }
}

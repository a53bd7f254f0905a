//! `podlens top`: per workload, traffic and DNS over the recent past.

use anyhow::{Context, Result};
use podlens_proto::v1::{self as pb, query_client::QueryClient};

use super::{connect::ConnectArgs, format, observe::Output};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Bytes sent and received.
    Bytes,
    /// DNS queries sent.
    Dns,
    /// NXDOMAIN, other DNS errors and timeouts.
    DnsFailures,
    /// DNS latency (p99).
    DnsLatency,
    /// CPU pressure of pods: run-queue wait (PSI cpu stall time where the scheduler probes are off).
    Pressure,
}

impl Sort {
    fn to_pb(self) -> pb::TopSort {
        match self {
            Sort::Bytes => pb::TopSort::Unspecified,
            Sort::Dns => pb::TopSort::DnsQueries,
            Sort::DnsFailures => pb::TopSort::DnsFailures,
            Sort::DnsLatency => pb::TopSort::DnsLatency,
            Sort::Pressure => pb::TopSort::Pressure,
        }
    }
}

/// The JSON output, documented in `podlens top --help`.
pub const JSON_HELP: &str = "\
JSON output (-o json): one workload per line: node, workload, tx_bytes, rx_bytes, tx_packets, rx_packets,
flow_records, dns {...}, last_seen_unix_nano, and pressure: null, or for pods (--sort pressure lists
only those) {windows, wait_ns, run_queue_p99_ns, cpu_some_usec, memory_some_usec, io_some_usec,
cpu_some_share_max, throttled_usec, verdict: {kind, since_unix_nano, window_kind, summary} or null,
culprits: [{kind, workload, wait_ns, share}] (biggest first, at most 5)}.
With --sort pressure the table shows the latest verdict, the run-queue wait and its p99, the highest
PSI cpu \"some\" share of one window, throttled time and the culprit charged most.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = JSON_HELP)]
pub struct TopArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How many (1..=1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Only pods in this namespace (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Over this much of the recent past (the server keeps 15 minutes).
    #[arg(long, default_value = "5m", value_parser = crate::runtime::parse_duration)]
    pub since: std::time::Duration,
    /// Ranking.
    #[arg(long, value_enum, default_value = "bytes")]
    pub sort: Sort,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

pub async fn run(args: TopArgs) -> Result<()> {
    let mut client = QueryClient::new(args.connect.connect().await?);
    let since = std::time::SystemTime::now().checked_sub(args.since).unwrap_or(std::time::UNIX_EPOCH);
    let request = pb::TopRequest {
        limit: args.limit,
        namespaces: args.namespaces.clone(),
        since_unix_nano: since.duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_nanos() as u64),
        sort: args.sort.to_pb() as i32,
    };
    let r = client.top(request).await.context("Top")?.into_inner();
    if args.output == Output::Json {
        for w in &r.workloads {
            println!("{}", format::top::summary_json(w));
        }
        return Ok(());
    }
    if args.sort == Sort::Pressure {
        println!("{}", format::top::PRESSURE_HEADER);
        for w in &r.workloads {
            println!("{}", format::top::pressure_line(w));
        }
        return Ok(());
    }
    println!("{}", format::top::TABLE_HEADER);
    for w in &r.workloads {
        println!("{}", format::top::summary_line(w));
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
        args: TopArgs,
    }

    #[test]
    fn sort_by_pressure() {
        let a = Cli::try_parse_from(["top", "--sort", "pressure"]).unwrap().args;
        assert_eq!(a.sort.to_pb(), pb::TopSort::Pressure);
    }
}

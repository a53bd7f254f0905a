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
}

impl Sort {
    fn to_pb(self) -> pb::TopSort {
        match self {
            Sort::Bytes => pb::TopSort::Unspecified,
            Sort::Dns => pb::TopSort::DnsQueries,
            Sort::DnsFailures => pb::TopSort::DnsFailures,
            Sort::DnsLatency => pb::TopSort::DnsLatency,
        }
    }
}

#[derive(Debug, clap::Args)]
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
    println!("{}", format::top::TABLE_HEADER);
    for w in &r.workloads {
        println!("{}", format::top::summary_line(w));
    }
    Ok(())
}

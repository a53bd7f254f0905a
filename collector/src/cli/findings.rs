//! `podlens findings`: what the detectors concluded (noisy neighbours),
//! newest first, and the neighbours that delayed other pods most.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use podlens_proto::v1::{self as pb, query_client::QueryClient};

use super::{connect::ConnectArgs, format, observe::Output};

/// The JSON output, documented in `podlens findings --help`.
pub const JSON_HELP: &str = "\
JSON output (-o json): one document on one line:
  {\"findings\": [FINDING...], \"worst_neighbours\": [NEIGHBOUR...], \"retained_since_unix_nano\": N}
FINDING (the same fields as `podlens observe --kind finding -o json`, plus node):
  node, kind (\"finding\"), id, finding_kind (\"noisy_neighbour\"),
  state (\"open\" | \"ongoing\" | \"resolved\"), start_unix_nano, end_unix_nano, summary,
  noisy_neighbour: null for other kinds, else {victim: WORKLOAD, verdict (\"neighbour\" | \"host\" | ...),
    culprits: [CULPRIT...], windows, wait_ns, run_queue_p99_ns, cpu_some_share}
CULPRIT: {kind (\"pod\" | \"host\" | \"self\" | \"idle\" | \"unattributed\"), workload: WORKLOAD or null,
  wait_ns, share (0..1 of the victim's wait)}
NEIGHBOUR (biggest wait first): {node, kind (\"pod\" | \"host\"), culprit: WORKLOAD,
  wait_ns, victims, findings}: summed over every finding that matches the filters (also those
  beyond --limit); victims and findings count distinct victim pods and findings.
WORKLOAD: {cgroup_id, cgroup_path, pod: {uid, namespace, name, container_id, container_name, qos_class,
  runtime} or null, host_unit: string or null, unknown_layout}
retained_since_unix_nano: findings that ended before it may have been dropped (retention, or eviction
  when the server held too many).
Enum values are the proto names without their prefix, in lower case; unknown values print as \"unknown_<n>\".";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A pod waited for CPU behind other pods or host processes.
    NoisyNeighbour,
    /// A pod no NetworkPolicy selects, and the peers it talks to.
    UnprotectedPod,
    /// Egress no policy covers, or only a broad rule allows.
    UncoveredEgress,
    /// Traffic observed although the policies deny it.
    EnforcementGap,
    /// A destination outside the cluster first seen after the learning period.
    UnexpectedEgress,
}

impl Kind {
    fn to_pb(self) -> pb::FindingKind {
        match self {
            Kind::NoisyNeighbour => pb::FindingKind::NoisyNeighbour,
            Kind::UnprotectedPod => pb::FindingKind::UnprotectedPod,
            Kind::UncoveredEgress => pb::FindingKind::UncoveredEgress,
            Kind::EnforcementGap => pb::FindingKind::EnforcementGap,
            Kind::UnexpectedEgress => pb::FindingKind::UnexpectedEgress,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = JSON_HELP)]
pub struct FindingsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only findings still going on within this much of the recent past (e.g. 1h, 30m); default: all the
    /// server keeps (24 h unless configured otherwise).
    #[arg(long, value_parser = crate::runtime::parse_duration)]
    pub since: Option<Duration>,
    /// Only findings about pods in this namespace (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Only findings from this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only findings of this kind (repeatable).
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<Kind>,
    /// At most this many findings, and neighbours ranked (1..=1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Output format (JSON: see below).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

impl FindingsArgs {
    /// The request for these flags at `now`.
    pub fn request(&self, now: SystemTime) -> pb::FindingsRequest {
        let since_unix_nano = self.since.map_or(0, |d| {
            let t = now.checked_sub(d).unwrap_or(UNIX_EPOCH);
            // 0 would mean "everything": a range reaching back to 1970 is still a range
            t.duration_since(UNIX_EPOCH).map_or(1, |t| (t.as_nanos() as u64).max(1))
        });
        pb::FindingsRequest {
            limit: self.limit,
            namespaces: self.namespaces.clone(),
            since_unix_nano,
            kinds: self.kinds.iter().map(|k| k.to_pb() as i32).collect(),
            node: self.node.clone().unwrap_or_default(),
        }
    }
}

pub async fn run(args: FindingsArgs) -> Result<()> {
    let mut client = QueryClient::new(args.connect.connect().await?);
    let r = client.findings(args.request(SystemTime::now())).await.context("Findings")?.into_inner();
    if args.output == Output::Json {
        println!("{}", format::finding::response_json(&r));
        return Ok(());
    }
    let now = format::now_unix_nanos();
    println!("{}", format::finding::TABLE_HEADER);
    for f in &r.findings {
        println!("{}", format::finding::row(f, now));
    }
    println!();
    println!("WORST NEIGHBOURS");
    println!("{}", format::finding::NEIGHBOURS_HEADER);
    for n in &r.worst_neighbours {
        println!("{}", format::finding::neighbour_row(n));
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
        args: FindingsArgs,
    }

    fn parse(args: &[&str]) -> Result<FindingsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("findings").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_ask_for_everything_retained() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.limit, a.output, a.since), (100, Output::Table, None));
        let r = a.request(SystemTime::now());
        assert_eq!(r, pb::FindingsRequest { limit: 100, ..Default::default() });
    }

    #[test]
    fn every_flag() {
        let a = parse(&[
            "--since",
            "1h",
            "-n",
            "shop",
            "--namespace",
            "db",
            "--node",
            "node-1",
            "--kind",
            "noisy-neighbour",
            "--limit",
            "5",
            "-o",
            "json",
        ])
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(7200);
        let r = a.request(now);
        assert_eq!(r.since_unix_nano, 3600 * 1_000_000_000);
        assert_eq!(r.namespaces, ["shop", "db"]);
        assert_eq!(r.node, "node-1");
        assert_eq!(r.kinds, [pb::FindingKind::NoisyNeighbour as i32]);
        assert_eq!(r.limit, 5);
        assert_eq!(a.output, Output::Json);
        let long_ago = parse(&["--since", "1000h"]).unwrap().request(now);
        assert_eq!(long_ago.since_unix_nano, 1, "before the epoch is still a bound");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["--kind", "cpu"]).is_err());
        assert!(parse(&["--since", "soon"]).is_err());
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--limit", "1001"]).is_err());
        assert!(parse(&["-o", "yaml"]).is_err());
    }
}

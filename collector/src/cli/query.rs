//! `podlens status` and `podlens talkers`: point-in-time questions.

use anyhow::{Context, Result};
use podlens_proto::v1::{self as pb, query_client::QueryClient};

use super::{connect::ConnectArgs, format};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of a table.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: super::observe::Output,
}

#[derive(Debug, clap::Args)]
pub struct TalkersArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How many (1..=1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Only pods in this namespace (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: super::observe::Output,
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let mut client = QueryClient::new(args.connect.connect().await?);
    let s = client.status(pb::StatusRequest {}).await.context("Status")?.into_inner();
    if args.output == super::observe::Output::Json {
        println!("{}", format::status_json(&s));
        return Ok(());
    }
    println!(
        "server version {}; {} consumer(s), {} dropped as too slow; {} batch(es) rejected",
        s.version, s.consumers, s.consumers_dropped, s.batches_rejected
    );
    println!(
        "{:<20} {:>10} {:>10} {:>12} {:>10} {:>6}  LOSSES (total)",
        "NODE", "SEQUENCE", "BATCHES", "RECORDS", "DUPLICATES", "GAPS"
    );
    for n in &s.nodes {
        let name = n.node.as_ref().map(|i| i.name.as_str()).unwrap_or("");
        let losses: Vec<String> = n
            .losses
            .iter()
            .flat_map(|l| &l.counters)
            .filter(|c| c.total > 0 && c.source != "kernel_activity")
            .map(|c| format!("{}/{}={}", c.source, c.reason, c.total))
            .collect();
        println!(
            "{:<20} {:>10} {:>10} {:>12} {:>10} {:>6}  {}",
            name,
            n.last_sequence,
            n.batches,
            n.records,
            n.duplicates,
            n.gaps,
            if losses.is_empty() { "none".to_string() } else { losses.join(" ") }
        );
    }
    Ok(())
}

pub async fn talkers(args: TalkersArgs) -> Result<()> {
    let mut client = QueryClient::new(args.connect.connect().await?);
    let request = pb::TopTalkersRequest { limit: args.limit, namespaces: args.namespaces.clone(), since_unix_nano: 0 };
    let r = client.top_talkers(request).await.context("TopTalkers")?.into_inner();
    if args.output == super::observe::Output::Json {
        for t in &r.talkers {
            println!("{}", format::talker_json(t));
        }
        return Ok(());
    }
    println!("{:<12} {:<34} {:<7} {:<40} {:>14} {:>10}", "NODE", "LOCAL", "PROTO", "REMOTE", "BYTES", "PACKETS");
    for t in &r.talkers {
        let (local, remote) = format::talker_ends(t);
        println!(
            "{:<12} {:<34} {:<7} {:<40} {:>14} {:>10}",
            t.node,
            local,
            format::protocol_name(t.protocol),
            remote,
            t.bytes,
            t.packets
        );
    }
    Ok(())
}

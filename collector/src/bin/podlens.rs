//! `podlens`: the command-line client for agents and collectors.

use anyhow::Result;
use clap::{Parser, Subcommand};
use podlens_collector::cli;

#[derive(Parser)]
#[command(
    name = "podlens",
    version,
    about = "Per-pod network, DNS and pressure telemetry from podlens agents and collectors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print live records as a table or JSON lines.
    Observe(cli::observe::ObserveArgs),
    /// Nodes, their stream state and losses.
    Status(cli::query::StatusArgs),
    /// The largest flows over the recent past.
    Talkers(cli::query::TalkersArgs),
    /// Per workload: traffic, DNS (queries, failures, latency) or pod CPU pressure over the recent past.
    Top(cli::top::TopArgs),
    /// Findings (noisy neighbours) from every node, newest first, and the worst neighbours.
    Findings(cli::findings::FindingsArgs),
    /// NetworkPolicy questions answered from manifests (offline).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Would the policies allow a connection? Each direction: not isolated, allowed (by which
    /// policy and rule), or denied.
    Check(cli::policy::PolicyCheckArgs),
    /// Coverage per namespace of the traffic a collector observed: workloads a policy selects,
    /// flows covered by specific rules, by broad rules, not at all, or denied yet observed.
    Report(cli::policy_report::PolicyReportArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Observe(args) => cli::observe::run(args).await.map(|()| ok),
        Command::Status(args) => cli::query::status(args).await.map(|()| ok),
        Command::Talkers(args) => cli::query::talkers(args).await.map(|()| ok),
        Command::Top(args) => cli::top::run(args).await.map(|()| ok),
        Command::Findings(args) => cli::findings::run(args).await.map(|()| ok),
        Command::Policy(PolicyCommand::Check(args)) => cli::policy::run(args),
        Command::Policy(PolicyCommand::Report(args)) => cli::policy_report::run(args).await.map(|()| ok),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn findings_is_a_subcommand() {
        let cli = Cli::try_parse_from(["podlens", "findings", "--kind", "noisy-neighbour", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Findings(_)));
    }
}

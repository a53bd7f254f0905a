//! `podlens policy report`: NetworkPolicy coverage per namespace of the
//! traffic a collector observed.

use anyhow::{bail, Context, Result};
use podlens_proto::v1::{self as pb, query_client::QueryClient};
use serde_json::json;

use super::{connect::ConnectArgs, observe::Output};

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
JSON output (-o json), one object: {namespaces: [{namespace, workloads, workloads_ingress_isolated,
workloads_egress_isolated, flows, flows_covered, flows_broad, flows_uncovered, flows_denied}],
manifest_errors: [...]}. A flow record counts once for each end in the namespace: covered (a rule
naming its peers allows it), broad (only a 0.0.0.0/0, empty-peer or all-namespaces rule), uncovered
(no policy selects the pod), denied (observed although a policy denies it).")]
pub struct PolicyReportArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only this namespace (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

pub const HEADER: &str =
    "NAMESPACE            WORKLOADS  INGRESS-ISOLATED  EGRESS-ISOLATED  FLOWS     COVERED  BROAD  UNCOVERED  DENIED";

pub fn row(n: &pb::NamespaceCoverage) -> String {
    let w = u64::from(n.workloads);
    format!(
        "{:<20} {:>9}  {:>16}  {:>15}  {:>8}  {:>7}  {:>5}  {:>9}  {:>6}",
        n.namespace,
        n.workloads,
        pct(n.workloads_ingress_isolated.into(), w),
        pct(n.workloads_egress_isolated.into(), w),
        n.flows,
        pct(n.flows_covered, n.flows),
        pct(n.flows_broad, n.flows),
        pct(n.flows_uncovered, n.flows),
        pct(n.flows_denied, n.flows)
    )
}

pub fn report_json(r: &pb::PolicyReportResponse) -> serde_json::Value {
    json!({
        "namespaces": r.namespaces.iter().map(|n| json!({
            "namespace": n.namespace, "workloads": n.workloads,
            "workloads_ingress_isolated": n.workloads_ingress_isolated,
            "workloads_egress_isolated": n.workloads_egress_isolated,
            "flows": n.flows, "flows_covered": n.flows_covered, "flows_broad": n.flows_broad,
            "flows_uncovered": n.flows_uncovered, "flows_denied": n.flows_denied,
        })).collect::<Vec<_>>(),
        "manifest_errors": r.manifest_errors,
    })
}

pub async fn run(args: PolicyReportArgs) -> Result<()> {
    let mut client = QueryClient::new(args.connect.connect().await?);
    let request = pb::PolicyReportRequest { namespaces: args.namespaces.clone() };
    let r = client.policy_report(request).await.context("PolicyReport")?.into_inner();
    if !r.enabled {
        bail!("the server has no cluster view: start podlens-collector with --manifests DIR");
    }
    if args.output == Output::Json {
        println!("{}", report_json(&r));
        return Ok(());
    }
    println!("{HEADER}");
    for n in &r.namespaces {
        println!("{}", row(n));
    }
    for e in &r.manifest_errors {
        eprintln!("warning: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_of_the_namespace_totals() {
        let n = pb::NamespaceCoverage {
            namespace: "shop".into(),
            workloads: 4,
            workloads_ingress_isolated: 3,
            workloads_egress_isolated: 1,
            flows: 200,
            flows_covered: 150,
            flows_broad: 10,
            flows_uncovered: 30,
            flows_denied: 10,
        };
        let line = row(&n);
        for want in ["shop", "75%", "25%", "200", "15%", "5%"] {
            assert!(line.contains(want), "{want} in {line}");
        }
        assert_eq!(pct(0, 0), "-");
        let v = report_json(&pb::PolicyReportResponse { enabled: true, namespaces: vec![n], manifest_errors: vec![] });
        assert_eq!(v["namespaces"][0]["flows_uncovered"], 30);
    }
}

//! `podlens policy check`: would the cluster's NetworkPolicies allow a
//! connection? Offline, from a directory of manifests; for people and scripts.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    cluster::manifests,
    policy::eval::{evaluate, ClusterView, Connection, Decision, Endpoint, Protocol, RuleRef, Verdict},
};

/// Exit status when the connection is denied in a direction (0: allowed, 1: error).
pub const EXIT_DENIED: u8 = 3;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 when both directions allow the connection (or are not isolated), 3 when a policy \
denies it, 1 on errors. Manifests that do not parse are reported on stderr; the rest still load.

JSON output (-o json), one object: {from, to, port, protocol, permitted, egress, ingress,
manifest_errors}; egress and ingress are null when that end is outside the cluster or in a
host-network pod, else {decision: not_isolated | allowed | denied | exempt, exemption: own_node |
same_pod (when exempt), rules: [{namespace, policy, direction, rule_index,
broad}] (every rule that allows it), selecting: [{namespace, policy}] (the policies that isolate
the pod, when denied)}.")]
pub struct PolicyCheckArgs {
    /// Directory of manifests (YAML/JSON, multi-document, List objects): pods, namespaces, policies.
    #[arg(long)]
    pub manifests: PathBuf,
    /// The client: NAMESPACE/POD, or an IP address outside the cluster.
    #[arg(long)]
    pub from: String,
    /// The server: NAMESPACE/POD:PORT[/PROTO] or IP:PORT[/PROTO] ([IPv6]:PORT[/PROTO]); PROTO is TCP (default), UDP or SCTP.
    #[arg(long)]
    pub to: String,
    /// table or json.
    #[arg(short = 'o', long = "output", default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

/// A parsed --from or --to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Pod { namespace: String, name: String },
    Ip(IpAddr),
}

fn parse_end(s: &str, flag: &str) -> Result<End> {
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Ok(End::Ip(ip));
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(End::Pod { namespace: ns.to_string(), name: name.to_string() })
        }
        _ => bail!("{flag} {s:?}: expected NAMESPACE/POD or an IP address"),
    }
}

/// Splits NAMESPACE/POD:PORT[/PROTO] or IP:PORT[/PROTO].
pub fn parse_to(s: &str) -> Result<(End, u16, Protocol)> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((rest, p)) if Protocol::from_k8s(&p.to_ascii_uppercase()).is_some() && rest.contains(':') => {
            (rest, Protocol::from_k8s(&p.to_ascii_uppercase()).unwrap_or(Protocol::Tcp))
        }
        _ => (s, Protocol::Tcp),
    };
    let Some((end, port)) = rest.rsplit_once(':') else {
        bail!("--to {s:?}: expected NAMESPACE/POD:PORT[/PROTO] or IP:PORT[/PROTO]");
    };
    let port: u16 =
        port.parse().ok().filter(|p| *p > 0).with_context(|| format!("--to {s:?}: port {port:?} is not 1..65535"))?;
    Ok((parse_end(end, "--to")?, port, proto))
}

fn endpoint<'a>(view: &'a ClusterView, end: &End, flag: &str) -> Result<Endpoint<'a>> {
    match end {
        End::Ip(ip) => Ok(view.endpoint(*ip)),
        End::Pod { namespace, name } => view
            .pod(namespace, name)
            .map(Endpoint::Pod)
            .with_context(|| format!("{flag}: no pod {namespace}/{name} in the manifests")),
    }
}

fn rule_json(r: &RuleRef) -> Value {
    json!({"namespace": r.namespace, "policy": r.policy, "direction": r.direction.to_string(),
           "rule_index": r.rule_index, "broad": r.broad})
}

fn decision_json(d: Option<&Decision>) -> Value {
    match d {
        None => Value::Null,
        Some(Decision::NotIsolated) => json!({"decision": "not_isolated", "rules": [], "selecting": []}),
        Some(Decision::Exempt(e)) => {
            json!({"decision": "exempt", "exemption": e.to_string().replace(' ', "_"), "rules": [], "selecting": []})
        }
        Some(Decision::Allowed(rules)) => {
            json!({"decision": "allowed", "rules": rules.iter().map(rule_json).collect::<Vec<_>>(), "selecting": []})
        }
        Some(Decision::Denied { selecting }) => json!({"decision": "denied", "rules": [],
            "selecting": selecting.iter().map(|(ns, p)| json!({"namespace": ns, "policy": p})).collect::<Vec<_>>()}),
    }
}

fn decision_text(d: Option<&Decision>) -> String {
    match d {
        None => "outside the cluster (or host network): no policy applies".into(),
        Some(Decision::NotIsolated) => "not isolated: no policy selects the pod for this direction".into(),
        Some(Decision::Exempt(e)) => format!("exempt ({e}): isolated, but policies never block this traffic"),
        Some(Decision::Allowed(rules)) => {
            let list: Vec<String> = rules
                .iter()
                .map(|r| {
                    let broad = if r.broad { ", broad" } else { "" };
                    format!("{}/{} {} rule {}{broad}", r.namespace, r.policy, r.direction, r.rule_index)
                })
                .collect();
            format!("allowed by {}", list.join("; "))
        }
        Some(Decision::Denied { selecting }) => {
            let list: Vec<String> = selecting.iter().map(|(ns, p)| format!("{ns}/{p}")).collect();
            format!("denied: isolated by {} and no rule allows it", list.join(", "))
        }
    }
}

/// Renders a verdict; the first line is the summary.
pub fn render(args: &PolicyCheckArgs, port: u16, proto: Protocol, v: &Verdict, errors: &[String]) -> String {
    if args.output == "json" {
        return json!({
            "from": args.from, "to": args.to, "port": port, "protocol": proto.as_k8s(), "permitted": v.permits(),
            "egress": decision_json(v.egress.as_ref()), "ingress": decision_json(v.ingress.as_ref()),
            "manifest_errors": errors,
        })
        .to_string();
    }
    format!(
        "{} {} -> {} {port}/{}\nEGRESS   {}\nINGRESS  {}",
        if v.permits() { "ALLOWED" } else { "DENIED " },
        args.from,
        args.to,
        proto.as_k8s(),
        decision_text(v.egress.as_ref()),
        decision_text(v.ingress.as_ref())
    )
}

/// Evaluates the connection; returns the rendered output, whether it is
/// permitted, and the manifest problems (the rest still loaded).
pub fn check(args: &PolicyCheckArgs) -> Result<(String, bool, Vec<String>)> {
    let from = parse_end(&args.from, "--from")?;
    let (to, port, proto) = parse_to(&args.to)?;
    let m =
        manifests::load_dir(&args.manifests).with_context(|| format!("--manifests {}", args.manifests.display()))?;
    let mut errors: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
    let (view, policy_errors) = ClusterView::new(&m.pods, &m.namespaces, &m.policies);
    let view = view.with_nodes(&m.nodes);
    errors.extend(policy_errors.iter().map(ToString::to_string));
    let c = Connection {
        from: endpoint(&view, &from, "--from")?,
        to: endpoint(&view, &to, "--to")?,
        port,
        protocol: proto,
    };
    let v = evaluate(&view, &c);
    Ok((render(args, port, proto, &v, &errors), v.permits(), errors))
}

pub fn run(args: PolicyCheckArgs) -> Result<ExitCode> {
    let (out, permitted, errors) = check(&args)?;
    for e in &errors {
        eprintln!("warning: {e}");
    }
    println!("{out}");
    Ok(if permitted { ExitCode::SUCCESS } else { ExitCode::from(EXIT_DENIED) })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

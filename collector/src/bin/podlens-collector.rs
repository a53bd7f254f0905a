//! `podlens-collector`: receives every node's batches and serves consumers.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use podlens_collector::{
    auth::{ConsumerAuth, TokenFile},
    cluster::kube::KubeMode,
    dedup::DedupStore,
    findings::DEFAULT_MAX_FINDINGS,
    hub::{Hub, DEFAULT_CONSUMER_BUFFER, DEFAULT_HISTORY_RECORDS, DEFAULT_MAX_CONSUMERS},
    metrics::{self, MetricsState},
    runtime::{init_logging, parse_duration, shutdown_signal},
    server::{Listener, ListenerStats},
    tls::{ClientAuth, ReloadingServerTls, ServerTlsFiles},
};
use podlens_proto::v1 as pb;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "podlens-collector",
    version,
    about = "podlens collector: ingests agent streams, serves Observe and Query"
)]
struct Args {
    /// A YAML file of flag names and values (`ingest-listen: 0.0.0.0:7701`);
    /// flags and environment variables override it, unknown keys are errors.
    #[arg(long, env = "PODLENS_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Consumer API (Observe, Query).
    #[arg(long, env = "PODLENS_LISTEN", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,
    /// Agent streams (Ingest).
    #[arg(long, env = "PODLENS_INGEST_LISTEN", default_value = "0.0.0.0:7701")]
    ingest_listen: SocketAddr,
    /// /metrics, /healthz, /readyz.
    #[arg(long, env = "PODLENS_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Server certificate (PEM), for both gRPC listeners; reloaded when it changes.
    #[arg(long, env = "PODLENS_SERVER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "PODLENS_SERVER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA bundle that signs agent client certificates (mTLS on the ingest listener).
    #[arg(long, env = "PODLENS_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// CA bundle that signs consumer client certificates.
    #[arg(long, env = "PODLENS_CONSUMER_CA")]
    consumer_ca: Option<PathBuf>,
    /// Bearer tokens accepted from consumers, one per line; re-read when it changes.
    #[arg(long, env = "PODLENS_CONSUMER_TOKEN_FILE")]
    consumer_token_file: Option<PathBuf>,
    /// No TLS on either listener (and no consumer authentication unless a token file is given).
    #[arg(long, env = "PODLENS_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Directory for what must survive a restart (which batches were admitted, so
    /// replays are not applied twice). Without it, that is kept in memory only.
    #[arg(long, env = "PODLENS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Records kept for consumers that ask for recent history (Observe since).
    #[arg(long, env = "PODLENS_HISTORY_RECORDS", default_value_t = DEFAULT_HISTORY_RECORDS)]
    history_records: usize,
    /// Observe consumers connected at once.
    #[arg(long, env = "PODLENS_MAX_CONSUMERS", default_value_t = DEFAULT_MAX_CONSUMERS)]
    max_consumers: usize,
    /// Records buffered per Observe consumer before it is disconnected as too slow.
    #[arg(long, env = "PODLENS_CONSUMER_BUFFER", default_value_t = DEFAULT_CONSUMER_BUFFER)]
    consumer_buffer: usize,
    /// Findings (noisy neighbours, ...) kept for `podlens findings`; when full, resolved ones are evicted first.
    #[arg(long, env = "PODLENS_MAX_FINDINGS", default_value_t = DEFAULT_MAX_FINDINGS)]
    max_findings: usize,
    /// Findings whose episode ended longer ago than this are dropped (e.g. 24h, 90m).
    #[arg(long, env = "PODLENS_FINDINGS_RETENTION", default_value = "24h", value_parser = parse_duration)]
    findings_retention: Duration,
    /// Directory of cluster manifests (pods, namespaces, services, endpoint slices, NetworkPolicies,
    /// workload owners; YAML/JSON as in a GitOps repo): turns on NetworkPolicy gap findings. Reloaded
    /// every minute.
    #[arg(long, env = "PODLENS_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Watch pods, namespaces, services, endpoint slices, nodes, NetworkPolicies and workload owners
    /// cluster-wide from the Kubernetes API (NetworkPolicy gap findings from the live cluster; needs
    /// cluster-wide list/watch RBAC). auto: when running in a cluster and --manifests is not given.
    #[arg(long, env = "PODLENS_KUBE", value_enum, default_value = "auto")]
    kube: KubeMode,
    /// Where each workload's known external destinations are kept (unexpected-egress findings);
    /// default: egress-baseline.json in --state-dir, else memory only.
    #[arg(long, env = "PODLENS_EGRESS_BASELINE")]
    egress_baseline: Option<PathBuf>,
    /// How long each workload's external destinations are learned before a new one is reported as
    /// unexpected egress (once per destination).
    #[arg(long, env = "PODLENS_EGRESS_LEARNING", default_value = "24h", value_parser = parse_duration)]
    egress_learning: Duration,
    /// Policy-gap findings, and what a workload was seen doing (its suggested
    /// policy), are forgotten after this long without traffic.
    #[arg(long, env = "PODLENS_POLICY_RETENTION", default_value = "24h", value_parser = parse_duration)]
    policy_retention: Duration,
    /// Agent streams end after this long and the agent reconnects at once, with a new TLS handshake
    /// (so a rotated CA or a revoked certificate applies), replaying what was not acknowledged;
    /// consumer connections get a GOAWAY at 1h (running Observe streams go on). 1s..24h.
    #[arg(long, env = "PODLENS_MAX_CONNECTION_AGE", default_value = "1h", value_parser = parse_connection_age)]
    max_connection_age: Duration,
    /// A node without a batch for this long is forgotten: its per-node series on /metrics, its
    /// counters and its replay bookkeeping (node names come and go with node pools).
    #[arg(long, env = "PODLENS_NODE_RETENTION", default_value = "24h", value_parser = parse_node_retention)]
    node_retention: Duration,
    /// Time consumers get to read the last records at shutdown.
    #[arg(long, env = "PODLENS_SHUTDOWN_GRACE", default_value = "5", value_name = "SECONDS")]
    shutdown_grace: u64,
    #[arg(long, env = "PODLENS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[arg(long, env = "PODLENS_LOG", default_value = "info")]
    log: String,
}

struct Security {
    ingest_tls: Option<Arc<ReloadingServerTls>>,
    consumer_tls: Option<Arc<ReloadingServerTls>>,
    consumer_auth: ConsumerAuth,
}

fn security(args: &Args) -> Result<Security> {
    let tokens = match &args.consumer_token_file {
        Some(p) => Some(Arc::new(TokenFile::load(p.clone())?)),
        None => None,
    };
    if args.insecure_plaintext {
        tracing::warn!("--insecure-plaintext: agent streams and consumer requests travel unencrypted and unauthenticated agents are accepted");
        let consumer_auth = match tokens {
            Some(t) => ConsumerAuth::new(Some(t), false),
            None => {
                tracing::warn!(
                    "--insecure-plaintext without --consumer-token-file: anyone who reaches --listen can read flows"
                );
                ConsumerAuth::open()
            }
        };
        return Ok(Security { ingest_tls: None, consumer_tls: None, consumer_auth });
    }
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        bail!("TLS needs --tls-cert and --tls-key (or --insecure-plaintext to run without TLS)");
    };
    let Some(agent_ca) = &args.agent_ca else {
        bail!("--agent-ca is required: agents authenticate with client certificates signed by it");
    };
    if args.consumer_ca.is_none() && tokens.is_none() {
        bail!("consumers must authenticate: give --consumer-ca, --consumer-token-file, or both");
    }
    let ingest = ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: Some(agent_ca.clone()),
        client_auth: ClientAuth::Required,
    };
    let consumer_client_auth = if args.consumer_ca.is_some() { ClientAuth::Optional } else { ClientAuth::None };
    let consumers = ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.consumer_ca.clone(),
        client_auth: consumer_client_auth,
    };
    Ok(Security {
        ingest_tls: Some(Arc::new(ReloadingServerTls::load(ingest)?)),
        consumer_tls: Some(Arc::new(ReloadingServerTls::load(consumers)?)),
        consumer_auth: ConsumerAuth::new(tokens, args.consumer_ca.is_some()),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Args = podlens_collector::config_file::parse()?;
    init_logging(&args.log, args.log_format == LogFormat::Json)?;
    let sec = security(&args)?;
    if args.history_records > args.consumer_buffer {
        bail!(
            "--history-records {} is larger than --consumer-buffer {}: a consumer asking for the history would be dropped at once",
            args.history_records,
            args.consumer_buffer
        );
    }
    let hub = Arc::new(
        Hub::with_limits(args.consumer_buffer, args.history_records, args.max_consumers)
            .with_findings_limits(args.max_findings, args.findings_retention),
    );
    let store = match &args.state_dir {
        Some(dir) => {
            let (store, admitted) = DedupStore::open(dir)?;
            for a in &admitted {
                let node = pb::NodeIdentity {
                    name: a.node.clone(),
                    boot_id: a.boot_id.clone(),
                    agent_epoch_unix_nano: a.agent_epoch_unix_nano,
                    ..Default::default()
                };
                hub.restore(node, a.last_sequence);
            }
            tracing::info!(dir = %dir.display(), nodes = admitted.len(), "admitted-batch state loaded");
            Some(store)
        }
        None => {
            tracing::warn!(
                "no --state-dir: after a restart, batches admitted before it can be applied again if replayed"
            );
            None
        }
    };
    tokio::spawn(forget_idle_nodes(hub.clone(), store.clone(), args.node_retention));
    // checked before the manifests are read, so a conflicting pair of flags fails at once
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let use_kube = args.kube.use_api(args.manifests.is_some(), in_cluster)?;
    let mut policy_task = None;
    let baseline =
        args.egress_baseline.clone().or_else(|| args.state_dir.as_ref().map(|d| d.join("egress-baseline.json")));
    if let Some(dir) = &args.manifests {
        podlens_collector::policy::watch::start(
            &hub,
            dir.clone(),
            baseline.clone(),
            args.egress_learning,
            args.policy_retention,
        )?;
    }
    let kube = match use_kube {
        false => None,
        true => match ::kube::Client::try_default().await {
            // the baseline is checked now so that a corrupt one stops startup, as with --manifests
            Ok(client) => Some((
                client,
                podlens_collector::policy::watch_kube::prepare(baseline, args.egress_learning, args.policy_retention)?,
            )),
            Err(e) if args.kube == KubeMode::On => {
                return Err(e).context("connecting to the Kubernetes API (--kube on)");
            }
            Err(e) => {
                // auto was not asked for explicitly: run without policy findings rather than not at all
                tracing::warn!(error = %e, "in a cluster but the Kubernetes API is not usable; no policy findings (--kube off silences this)");
                None
            }
        },
    };
    // Ingest stops first (agents keep what was not acknowledged and replay it
    // to the next collector), then consumers get what was published.
    let (ingest_stop_tx, ingest_stop_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let consumers = Listener::bind(args.listen).await?;
    let ingest = Listener::bind(args.ingest_listen).await?;
    let (consumer_stats, ingest_stats) = (Arc::new(ListenerStats::default()), Arc::new(ListenerStats::default()));
    tracing::info!(
        consumers = %consumers.local_addr()?, ingest = %ingest.local_addr()?, metrics = %args.metrics_listen,
        tls = !args.insecure_plaintext, "podlens-collector serving"
    );
    let metrics_state = MetricsState {
        hub: hub.clone(),
        listeners: vec![("consumers", consumer_stats.clone()), ("ingest", ingest_stats.clone())],
        needs_cluster_view: kube.is_some(),
    };
    let metrics_task = tokio::spawn(metrics::serve(args.metrics_listen, metrics_state, stopped(stop_rx.clone())));
    if let Some(dir) = &args.manifests {
        policy_task =
            Some(tokio::spawn(podlens_collector::policy::watch::run(hub.clone(), dir.clone(), stop_rx.clone())));
    }
    if let Some((client, detector)) = kube {
        tracing::info!("cluster state from the Kubernetes API (--kube)");
        let run = podlens_collector::policy::watch_kube::run(hub.clone(), client, detector, stop_rx.clone());
        policy_task = Some(tokio::spawn(run));
    }
    let mut ingest_task = tokio::spawn(ingest.serve_ingest(
        hub.clone(),
        store,
        sec.ingest_tls,
        ingest_stats,
        args.max_connection_age,
        ingest_stop_rx,
    ));
    let mut consumer_task = tokio::spawn(consumers.serve_consumers(
        hub.clone(),
        sec.consumer_auth,
        sec.consumer_tls,
        consumer_stats,
        stopped(stop_rx.clone()),
    ));

    tokio::select! {
        r = shutdown_signal() => r?,
        r = &mut ingest_task => bail!("the ingest server stopped: {:?}", r),
        r = &mut consumer_task => bail!("the consumer server stopped: {:?}", r),
    }
    let grace = Duration::from_secs(args.shutdown_grace);
    ingest_stop_tx.send_replace(true);
    if tokio::time::timeout(grace, ingest_task).await.is_err() {
        tracing::warn!(?grace, "ingest streams still open at the end of the grace period");
    }
    stop_tx.send_replace(true);
    hub.close_consumers();
    match tokio::time::timeout(grace, consumer_task).await {
        Ok(r) => r.context("consumer server")??,
        Err(_) => tracing::warn!(?grace, "consumers still connected at the end of the grace period"),
    }
    let _ = tokio::time::timeout(grace, metrics_task).await;
    if let Some(t) = policy_task {
        // writes the egress baseline one last time
        let _ = tokio::time::timeout(grace, t).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn parse_connection_age(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?} is out of range: between 1s and 24h"));
    }
    Ok(d)
}

fn parse_node_retention(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(600) {
        return Err(format!("{s:?} is too short: at least 10m (an agent reconnecting within it must be recognised)"));
    }
    Ok(d)
}

/// Once a minute, forgets the nodes without a batch for `retention`.
async fn forget_idle_nodes(hub: Arc<Hub>, store: Option<Arc<DedupStore>>, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let cutoff = now.saturating_sub(retention).as_nanos();
        let gone = hub.forget_nodes_idle_since(u64::try_from(cutoff).unwrap_or(u64::MAX));
        if let Some(first) = gone.first() {
            tracing::info!(nodes = gone.len(), first = %first, ?retention, "forgot nodes without a batch for the node retention");
            if let Some(store) = &store {
                store.forget(&gone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_default_is_in_the_readme() {
        let (collector, _) = podlens_collector::config_file::readme_sections(include_str!("../../../README.md"));
        let problems = podlens_collector::config_file::undocumented_flags(&super::Args::command(), &collector);
        assert!(problems.is_empty(), "README.md collector flags:\n{}", problems.join("\n"));
    }
}

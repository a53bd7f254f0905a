//! `podlens-agent`: the node daemon.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use podlens_agent::{
    config::{AgentArgs, KubeMode, LogFormat},
    ebpf::{Kernel, LoadOptions},
    flows::unix_nanos,
    identity::{cgroups::CgroupTable, inventory, kube, pods::PodStore, Resolver, SharedPods},
    pipeline::Pipeline,
    preflight,
    standalone::HubSink,
};
use podlens_collector::{hub::Hub, server::Listener};
use podlens_proto::v1 as pb;
use tokio::sync::watch;

/// Deleted pods and cgroups stay resolvable this long, for late flows.
const RETENTION: Duration = Duration::from_secs(600);
/// How long consumers get to read the last window at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn init_logging(args: &AgentArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log {:?} is not a valid filter", args.log))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn node_identity(args: &AgentArgs) -> pb::NodeIdentity {
    let name = args.node_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    pb::NodeIdentity {
        name,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default(),
        agent_epoch_unix_nano: unix_nanos(SystemTime::now()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

async fn start_pod_source(
    args: &AgentArgs,
    node: &str,
    pods: &SharedPods,
    shutdown: &watch::Receiver<bool>,
) -> Result<()> {
    if let Some(path) = &args.pods_file {
        let n = inventory::reload(path, pods)?;
        tracing::info!(pods = n, file = %path.display(), "pod metadata from inventory file");
        tokio::spawn(inventory::watch(path.clone(), pods.clone(), Duration::from_secs(1), shutdown.clone()));
        return Ok(());
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if args.kube == KubeMode::Off || (args.kube == KubeMode::Auto && !in_cluster) {
        tracing::warn!("no pod metadata source (--pods-file or the Kubernetes API): pods are identified by UID only");
        return Ok(());
    }
    let client = ::kube::Client::try_default().await.context("connecting to the Kubernetes API (--kube)")?;
    let (synced, _) = watch::channel(false);
    tokio::spawn(kube::run_watch(client, node.to_string(), pods.clone(), synced, shutdown.clone()));
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: flushing the last window"),
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; tracing::info!("interrupted: flushing the last window") }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = AgentArgs::parse();
    init_logging(&args)?;
    if !args.standalone {
        bail!("no output configured: pass --standalone to run the embedded collector and serve the Observe API on --listen");
    }
    let cgroup_root = preflight::run(args.cgroup_root.as_deref())?;
    let node = node_identity(&args);

    // Inputs first: a bad file fails before anything is loaded into the kernel.
    let (stop_tx, stop_rx) = watch::channel(false);
    let pods: SharedPods = Arc::new(RwLock::new(PodStore::new(RETENTION)));
    start_pod_source(&args, &node.name, &pods, &stop_rx).await?;

    let opts = LoadOptions { flow_map_entries: args.flow_map_entries, events_ring_bytes: args.events_ring_bytes };
    let mut kernel = Kernel::load(&opts)?;
    let mut cgroups = CgroupTable::new(&cgroup_root, RETENTION);
    // Scan after attaching the event programs would miss nothing, but the
    // programs must be attached last so records never precede the table.
    let features = kernel.attach(&cgroup_root)?;
    let stats = cgroups.scan(std::time::Instant::now())?;
    tracing::info!(
        cgroup_root = %cgroup_root.display(), cgroups = stats.cgroups, cgroup_events = features.cgroup_events,
        flow_map_entries = args.flow_map_entries, interval = ?args.interval, node = %node.name,
        "flow programs attached"
    );

    let hub = Arc::new(Hub::new(podlens_collector::hub::DEFAULT_CONSUMER_BUFFER));
    let listener = Listener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "Observe API listening (podlens observe --server http://{})", args.listen);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(listener.serve_observe(hub.clone(), async move {
        let _ = server_stop.changed().await;
    }));

    let pipeline = Pipeline::new(kernel, Resolver::new(cgroups, pods), node, Arc::new(HubSink(hub.clone())))?;
    let run = tokio::spawn(pipeline.run(args.interval, stop_rx));
    shutdown_signal().await?;
    stop_tx.send_replace(true);
    let pipeline = run.await.context("pipeline task")?;
    drop(pipeline); // detaches the programs
                    // The last window is queued for consumers; their streams end after it.
    hub.close_consumers();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(r) => r.context("server task")??,
        Err(_) => tracing::warn!(grace = ?SHUTDOWN_GRACE, "Observe consumers still connected; closing anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

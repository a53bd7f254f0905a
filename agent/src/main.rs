//! `podlens-agent`: the node daemon.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use podlens_agent::{
    admin::{self, readiness::Latch, Telemetry},
    config::{
        pressure::{SchedMode, SchedTiming},
        AgentArgs, KubeMode, LogFormat,
    },
    ebpf::{
        sched::{SchedMode as Timing, SchedOptions, SchedProbes},
        Kernel, LoadOptions,
    },
    export::{
        stream::{self, StreamConfig},
        Exporter,
    },
    flows::unix_nanos,
    identity::{cgroups::CgroupTable, inventory, kube, pods::PodStore, Resolver, SharedPods},
    pipeline::{Fanout, Pipeline, Sink},
    preflight,
    pressure::PressureSource,
    standalone::HubSink,
};
use podlens_collector::{
    auth::{ConsumerAuth, TokenFile},
    hub::Hub,
    runtime::{init_logging, shutdown_signal},
    server::{Listener, ListenerStats},
};
use podlens_proto::v1 as pb;
use tokio::sync::watch;

/// Deleted pods and cgroups stay resolvable this long, for late flows.
const RETENTION: Duration = Duration::from_secs(600);

fn node_identity(args: &AgentArgs) -> Result<pb::NodeIdentity> {
    let name = args.node_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    if name.is_empty() {
        bail!("no node name: set --node-name or NODE_NAME (the host name was empty or unreadable)");
    }
    Ok(pb::NodeIdentity {
        name,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default(),
        agent_epoch_unix_nano: unix_nanos(SystemTime::now()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Starts the pod metadata source; releases the identity latch once it has
/// loaded (or at once when there is none).
async fn start_pod_source(
    args: &AgentArgs,
    node: &str,
    pods: &SharedPods,
    shutdown: &watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<()> {
    if let Some(path) = &args.pods_file {
        let n = inventory::reload(path, pods)?;
        tracing::info!(pods = n, file = %path.display(), "pod metadata from inventory file");
        tokio::spawn(inventory::watch(path.clone(), pods.clone(), Duration::from_secs(1), shutdown.clone()));
        telemetry.ready.release(Latch::IdentitySynced);
        return Ok(());
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if args.kube == KubeMode::Off || (args.kube == KubeMode::Auto && !in_cluster) {
        tracing::warn!("no pod metadata source (--pods-file or the Kubernetes API): pods are identified by UID only");
        telemetry.ready.release(Latch::IdentitySynced);
        return Ok(());
    }
    let client = ::kube::Client::try_default().await.context("connecting to the Kubernetes API (--kube)")?;
    let (synced, mut listed) = watch::channel(false);
    tokio::spawn(kube::run_watch(client, node.to_string(), pods.clone(), synced, shutdown.clone()));
    let telemetry = telemetry.clone();
    tokio::spawn(async move {
        if listed.wait_for(|s| *s).await.is_ok() {
            telemetry.ready.release(Latch::IdentitySynced);
        }
    });
    Ok(())
}

/// Serves /metrics, /healthz and /readyz from the start, so a probe sees
/// "not ready" while the programs load.
async fn start_admin(args: &AgentArgs, telemetry: &Arc<Telemetry>, stop: &watch::Receiver<bool>) -> Result<()> {
    let Some(addr) = args.metrics_listen.0 else { return Ok(()) };
    let mut stop = stop.clone();
    let (local, serve) = admin::bind(addr, telemetry.clone(), async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
    .with_context(|| format!("--metrics-listen {addr}"))?;
    tracing::info!(addr = %local, "metrics and health endpoints listening (/metrics, /healthz, /readyz)");
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    Ok(())
}

/// Releases the stream latch once the collector stream opened (at once
/// without a collector).
fn watch_stream(exporter: Option<&Arc<Exporter>>, telemetry: &Arc<Telemetry>) {
    let Some(exporter) = exporter.cloned() else {
        telemetry.ready.release(Latch::StreamConnected);
        return;
    };
    let telemetry = telemetry.clone();
    tokio::spawn(async move {
        while exporter.stream.connects.load(std::sync::atomic::Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        telemetry.ready.release(Latch::StreamConnected);
    });
}

/// The exporter's stream settings, checked before anything is loaded.
fn export_config(args: &AgentArgs) -> Result<Option<StreamConfig>> {
    let Some(url) = &args.collector else { return Ok(None) };
    let tls = if url.starts_with("https://") {
        if args.tls.tls_ca.is_none() {
            bail!("--collector {url}: --tls-ca is required to verify the collector's certificate");
        }
        if args.tls.tls_cert.is_some() != args.tls.tls_key.is_some() {
            bail!("--tls-cert and --tls-key go together");
        }
        if args.tls.tls_cert.is_none() {
            tracing::warn!("--collector is https:// but no --tls-cert/--tls-key: a collector requiring client certificates will refuse this agent");
        }
        let files = args.tls.files();
        files.tonic_config()?;
        Some(files)
    } else if url.starts_with("http://") {
        if !args.insecure_plaintext {
            bail!("--collector {url} is plaintext: use https:// with --tls-ca (and --tls-cert/--tls-key), or pass --insecure-plaintext");
        }
        tracing::warn!(collector = %url, "--insecure-plaintext: records travel unencrypted and the collector is not authenticated");
        None
    } else {
        bail!("--collector {url:?} must start with https:// (or http:// with --insecure-plaintext)");
    };
    Ok(Some(StreamConfig { url: url.clone(), tls, shutdown_grace: args.shutdown_grace }))
}

/// Who may use the standalone API.
fn consumer_auth(args: &AgentArgs) -> Result<ConsumerAuth> {
    if let Some(path) = &args.consumer_token_file {
        if !args.listen.ip().is_loopback() {
            tracing::warn!(listen = %args.listen, "the standalone API is plaintext: tokens and flows cross the network unencrypted");
        }
        return Ok(ConsumerAuth::new(Some(Arc::new(TokenFile::load(path.clone())?)), false));
    }
    if args.listen.ip().is_loopback() {
        return Ok(ConsumerAuth::open());
    }
    if args.insecure_plaintext {
        tracing::warn!(listen = %args.listen, "--insecure-plaintext: anyone who reaches --listen can read flows");
        return Ok(ConsumerAuth::open());
    }
    bail!("--listen {} is not loopback: give --consumer-token-file (or --insecure-plaintext)", args.listen)
}

/// The pressure source with the scheduler probes as --sched asks; None when
/// --pressure is off.
fn pressure_source(
    args: &AgentArgs,
    cgroup_root: &std::path::Path,
    node: &pb::NodeIdentity,
    telemetry: &Telemetry,
) -> Result<Option<PressureSource>> {
    let p = &args.pressure;
    if !p.enabled {
        telemetry.set_feature("sched", "off");
        tracing::info!("pressure reporting off (--pressure false)");
        return Ok(None);
    }
    let load = |o: &SchedOptions| SchedProbes::load(o).and_then(|mut s| s.attach().map(|()| s));
    let sched = match p.sched {
        SchedMode::Off => None,
        mode => match load(&p.sched_options()).or_else(|e| {
            let opts = p.sched_options();
            if p.timing != SchedTiming::Auto || opts.mode != Timing::Schedinfo {
                return Err(e);
            }
            // e.g. a kernel without CONFIG_FAIR_GROUP_SCHED: no run-queue clock to read
            tracing::warn!(error = %e, "schedinfo timing unavailable; using the wakeup probes");
            load(&SchedOptions { mode: Timing::WakeupProbes, ..opts })
        }) {
            Ok(s) => Some(s),
            Err(e) if mode == SchedMode::Auto => {
                tracing::warn!(error = %e, "scheduler probes unavailable: no run-queue latency or culprits (--sched auto)");
                None
            }
            Err(e) => return Err(e).context("--sched on"),
        },
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut hierarchies = podlens_agent::pressure::mounts::parse_mountinfo(&mountinfo);
    hierarchies.v2 = Some(cgroup_root.to_path_buf());
    telemetry.set_feature(
        "sched",
        match sched.as_ref().map(SchedProbes::mode) {
            Some(Timing::Schedinfo) => "schedinfo",
            Some(Timing::WakeupProbes) => "wakeup_probes",
            None => "off",
        },
    );
    tracing::info!(
        sched = sched.is_some(), sched_timing = ?sched.as_ref().map(SchedProbes::mode), cgroup2 = %cgroup_root.display(), cgroup1_controllers = ?hierarchies.v1.keys().collect::<Vec<_>>(),
        "pressure reporting"
    );
    let cfg = podlens_agent::pressure::Config {
        hierarchies,
        proc_pressure: "/proc/pressure".into(),
        thresholds: p.thresholds(),
        hysteresis: p.hysteresis(),
        containers: p.containers,
    };
    let prefix = format!("{}/{}/nn-", node.name, node.agent_epoch_unix_nano);
    Ok(Some(PressureSource::new(cfg, sched, prefix)))
}

/// glibc gives every thread that allocates its own arena, and after large
/// buffers are freed it raises its mmap threshold, so each window's records
/// stay in the heaps: with 10 000 flows per window resident memory reached
/// 81 MiB with the defaults, 65 MiB with two arenas and 35 MiB with two
/// arenas and a fixed threshold (BENCHMARKS.md, agent memory).
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // a fixed threshold: large buffers (a window's records) are mapped and
        // given back when freed, instead of the threshold growing after each
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() -> Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?.block_on(run())
}

async fn run() -> Result<()> {
    let args: AgentArgs = podlens_collector::config_file::parse()?;
    init_logging(&args.log, args.log_format == LogFormat::Json)?;
    if !args.standalone && args.collector.is_none() {
        bail!(
            "nothing to send records to: pass --collector URL, --standalone (embedded collector on --listen), or both"
        );
    }
    let cgroup_root = preflight::run(args.cgroup_root.as_deref())?;
    let node = node_identity(&args)?;
    // Inputs first: bad files or flags fail before anything is loaded into the kernel.
    let export = export_config(&args)?;
    let auth = if args.standalone { Some(consumer_auth(&args)?) } else { None };
    let (stop_tx, stop_rx) = watch::channel(false);
    let exporter = export.as_ref().map(|_| Exporter::new(args.export_buffer_bytes as usize));
    let telemetry =
        Arc::new(Telemetry::new(&node.name, u64::from(args.flow_map_entries), args.interval, exporter.clone()));
    start_admin(&args, &telemetry, &stop_rx).await?;
    let pods: SharedPods = Arc::new(RwLock::new(PodStore::new(RETENTION)));
    start_pod_source(&args, &node.name, &pods, &stop_rx, &telemetry).await?;

    let opts = LoadOptions {
        flow_map_entries: args.flow_map_entries,
        events_ring_bytes: args.events_ring_bytes,
        dns_ports: args.dns.kernel_ports(),
        dns_ring_bytes: args.dns.ring_bytes,
    };
    let mut kernel = Kernel::load(&opts)?;
    let mut cgroups = CgroupTable::new(&cgroup_root, RETENTION);
    let features = kernel.attach(&cgroup_root)?;
    let stats = cgroups.scan(std::time::Instant::now())?;
    tracing::info!(
        cgroup_root = %cgroup_root.display(), cgroups = stats.cgroups, cgroup_events = features.cgroup_events,
        flow_map_entries = args.flow_map_entries, interval = ?args.interval, node = %node.name,
        "flow programs attached"
    );

    // Every probe is attached before the API opens: what it serves is complete from then on.
    let pressure = pressure_source(&args, &cgroup_root, &node, &telemetry)?;
    telemetry.set_feature("cgroup_events", if features.cgroup_events { "on" } else { "rescans" });
    telemetry.set_feature("dns", if args.dns.ports.0.is_empty() { "off" } else { "on" });
    telemetry.ready.release(Latch::ProgramsAttached);

    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let mut tasks = Vec::new();
    let mut hub = None;
    if let Some(auth) = auth {
        let h = Arc::new(Hub::new(
            podlens_collector::hub::DEFAULT_CONSUMER_BUFFER.max(2 * args.flow_map_entries as usize + 16),
        ));
        let listener = Listener::bind(args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "Observe and Query API listening (podlens observe --server http://{})", args.listen);
        let mut server_stop = stop_rx.clone();
        let serve = listener.serve_consumers(h.clone(), auth, None, Arc::new(ListenerStats::default()), async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
        tasks.push(tokio::spawn(async move { serve.await.map_err(anyhow::Error::from) }));
        sinks.push(Arc::new(HubSink(h.clone())));
        hub = Some(h);
    }
    let mut exporter_task = None;
    // The exporter stops after the pipeline published its last window.
    let (export_stop_tx, export_stop_rx) = watch::channel(false);
    watch_stream(exporter.as_ref(), &telemetry);
    if let (Some(cfg), Some(exporter)) = (export, exporter) {
        tracing::info!(collector = %cfg.url, buffer_bytes = args.export_buffer_bytes, "streaming to the collector");
        exporter_task = Some(tokio::spawn(stream::run(cfg, exporter.clone(), export_stop_rx)));
        sinks.push(exporter);
    }

    let dns = args.dns.config();
    tracing::info!(dns_ports = ?args.dns.ports.0, dns_timeout = ?args.dns.timeout, "DNS capture");
    let pipeline = Pipeline::new(kernel, Resolver::new(cgroups, pods), node, Arc::new(Fanout(sinks)), dns, pressure)?
        .with_telemetry(telemetry.clone());
    let run = tokio::spawn(pipeline.run(args.interval, stop_rx));
    shutdown_signal().await?;
    stop_tx.send_replace(true);
    let pipeline = run.await.context("pipeline task")?;
    drop(pipeline); // detaches the programs
    export_stop_tx.send_replace(true);
    if let Some(task) = exporter_task {
        // The exporter gives itself --shutdown-grace to deliver the last window.
        let _ = tokio::time::timeout(args.shutdown_grace + Duration::from_secs(1), task).await;
    }
    if let Some(h) = hub {
        // The last window is queued for consumers; their streams end after it.
        h.close_consumers();
    }
    for task in tasks {
        match tokio::time::timeout(args.shutdown_grace, task).await {
            Ok(r) => r.context("server task")??,
            Err(_) => tracing::warn!(grace = ?args.shutdown_grace, "consumers still connected; closing anyway"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

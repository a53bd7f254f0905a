//! Command-line flags, each with an environment twin.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use podlens_collector::runtime::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    /// Use the Kubernetes API when running in a cluster (KUBERNETES_SERVICE_HOST set).
    Auto,
    /// Always use the Kubernetes API (fails if no configuration is found).
    On,
    /// Never use the Kubernetes API.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(name = "podlens-agent", version, about = "podlens node agent: per-pod network flows from eBPF")]
pub struct AgentArgs {
    /// Run an embedded collector in this process and serve the Observe API locally.
    #[arg(long, env = "PODLENS_STANDALONE")]
    pub standalone: bool,

    /// Address of the Observe/Query API in standalone mode. Flows are sensitive: on
    /// loopback it needs no authentication; elsewhere it needs --consumer-token-file.
    #[arg(long, env = "PODLENS_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,

    /// Bearer tokens (one per line) consumers of the standalone API must present.
    #[arg(long, env = "PODLENS_CONSUMER_TOKEN_FILE")]
    pub consumer_token_file: Option<PathBuf>,

    /// Collector to stream to, e.g. https://podlens-collector:7701 (http:// needs --insecure-plaintext).
    #[arg(long, env = "PODLENS_COLLECTOR")]
    pub collector: Option<String>,

    /// TLS towards the collector: its CA (--tls-ca), this agent's client
    /// certificate and key (--tls-cert, --tls-key), the name to verify.
    #[command(flatten)]
    pub tls: podlens_collector::cli::connect::ClientTlsArgs,

    /// Allow an http:// collector (unencrypted, unauthenticated). Logged as a warning.
    #[arg(long, env = "PODLENS_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// Bound of the buffer of batches not yet acknowledged by the collector; beyond it
    /// the oldest are dropped and counted.
    #[arg(long, env = "PODLENS_EXPORT_BUFFER_BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(4096..=(8u64 << 30)))]
    pub export_buffer_bytes: u64,

    /// At shutdown, how long to keep trying to deliver what is buffered.
    #[arg(long, env = "PODLENS_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the kernel flow maps are drained into records (100ms..1h).
    #[arg(long, env = "PODLENS_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Name of this node (Kubernetes: from the downward API). Defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Pod metadata from a file in `kubectl get pods -A -o yaml` form, reloaded when it changes.
    #[arg(long, env = "PODLENS_PODS_FILE")]
    pub pods_file: Option<PathBuf>,

    /// Pod metadata from the Kubernetes API (watch of this node's pods).
    #[arg(long, env = "PODLENS_KUBE", value_enum, default_value = "auto")]
    pub kube: KubeMode,

    /// cgroup2 mount to attach to and resolve ids in (default: found in /proc/self/mountinfo).
    #[arg(long, env = "PODLENS_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// Capacity of each of the two kernel flow maps (distinct flows per interval before overflow).
    #[arg(long, env = "PODLENS_FLOW_MAP_ENTRIES", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub flow_map_entries: u32,

    /// Size of the kernel events ring buffer in bytes (power of two, 4KiB..256MiB).
    #[arg(long, env = "PODLENS_EVENTS_RING_BYTES", default_value_t = 262_144, value_parser = parse_ring_bytes)]
    pub events_ring_bytes: u32,

    /// Log format.
    #[arg(long, env = "PODLENS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "podlens_agent=debug".
    #[arg(long, env = "PODLENS_LOG", default_value = "info")]
    pub log: String,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range: the interval must be between 100ms and 1h"));
    }
    Ok(d)
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !n.is_power_of_two() || !(4096..=256 << 20).contains(&n) {
        return Err(format!("{n} must be a power of two between 4096 and 268435456"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_range() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_interval("10ms").unwrap_err().contains("between 100ms and 1h"));
        assert!(parse_interval("2h").unwrap_err().contains("between 100ms and 1h"));
    }

    #[test]
    fn flags_parse_and_bad_values_name_the_input() {
        let a = AgentArgs::try_parse_from(["podlens-agent", "--standalone", "--interval", "1s"]).unwrap();
        assert!(a.standalone);
        assert_eq!(a.interval, Duration::from_secs(1));
        assert_eq!(a.listen, "127.0.0.1:7700".parse().unwrap());
        let err = AgentArgs::try_parse_from(["podlens-agent", "--flow-map-entries", "10"]).unwrap_err().to_string();
        assert!(err.contains("--flow-map-entries"), "{err}");
        let err = AgentArgs::try_parse_from(["podlens-agent", "--events-ring-bytes", "5000"]).unwrap_err().to_string();
        assert!(err.contains("power of two"), "{err}");
        let err = AgentArgs::try_parse_from(["podlens-agent", "--listen", "nowhere"]).unwrap_err().to_string();
        assert!(err.contains("--listen"), "{err}");
    }
}

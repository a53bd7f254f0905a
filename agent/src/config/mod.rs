//! Command-line flags, each with an environment twin.

pub mod pressure;

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
    /// A YAML file of flag names and values (`flow-map-entries: 131072`);
    /// flags and environment variables override it, unknown keys are errors.
    #[arg(long, env = "PODLENS_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Run an embedded collector in this process and serve the Observe API locally.
    #[arg(long, env = "PODLENS_STANDALONE")]
    pub standalone: bool,

    /// Address of the Observe/Query API in standalone mode. Flows are sensitive: on
    /// loopback it needs no authentication; elsewhere it needs --consumer-token-file.
    #[arg(long, env = "PODLENS_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,

    /// Address of /metrics, /healthz and /readyz (plain HTTP: counters only, no
    /// flows), or `off`.
    #[arg(long, env = "PODLENS_METRICS_LISTEN", default_value = "0.0.0.0:9467", value_parser = parse_listen_or_off)]
    pub metrics_listen: ListenOrOff,

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

    #[command(flatten)]
    pub dns: DnsArgs,

    #[command(flatten)]
    pub pressure: pressure::PressureArgs,

    /// Log format.
    #[arg(long, env = "PODLENS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "podlens_agent=debug".
    #[arg(long, env = "PODLENS_LOG", default_value = "info")]
    pub log: String,
}

/// DNS capture and analysis.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// Ports whose TCP and UDP payload is decoded as DNS: comma-separated, at
    /// most 4, or "none" to turn DNS off.
    #[arg(long = "dns-ports", env = "PODLENS_DNS_PORTS", default_value = "53", value_parser = parse_dns_ports)]
    pub ports: DnsPorts,

    /// A query without a response this long after its last send is a timeout (100ms..60s).
    #[arg(long = "dns-timeout", env = "PODLENS_DNS_TIMEOUT", default_value = "5s", value_parser = parse_dns_timeout)]
    pub timeout: Duration,

    /// Size of the kernel DNS ring buffer in bytes (power of two, 4KiB..256MiB).
    #[arg(long = "dns-ring-bytes", env = "PODLENS_DNS_RING_BYTES", default_value_t = 4 << 20, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,

    /// Names reported per workload and window; the rest are summed as "other".
    #[arg(long = "dns-top-names", env = "PODLENS_DNS_TOP_NAMES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top_names: u32,

    /// Distinct names tracked per workload and window (a memory bound; beyond it, "other").
    #[arg(long = "dns-max-names", env = "PODLENS_DNS_MAX_NAMES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_names: u32,

    /// IP -> name entries kept to name flows (a memory bound; 0 turns naming off).
    #[arg(long = "dns-fqdn-entries", env = "PODLENS_DNS_FQDN_ENTRIES", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub fqdn_entries: u32,

    /// How long past its TTL a resolved address keeps naming flows to it.
    #[arg(long = "dns-fqdn-grace", env = "PODLENS_DNS_FQDN_GRACE", default_value = "2m", value_parser = parse_duration)]
    pub fqdn_grace: Duration,
}

/// The DNS ports (empty: DNS off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPorts(pub Vec<u16>);

fn parse_dns_ports(s: &str) -> Result<DnsPorts, String> {
    if s.trim() == "none" {
        return Ok(DnsPorts(Vec::new()));
    }
    let mut ports = Vec::new();
    for part in s.split(',').map(str::trim) {
        let port: u16 = part.parse().map_err(|_| format!("{part:?} is not a port number (1..65535)"))?;
        if port == 0 {
            return Err("port 0 is not a DNS port".into());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() > podlens_agent_ebpf::DNS_PORTS {
        return Err(format!(
            "{} ports given; the kernel program takes at most {}",
            ports.len(),
            podlens_agent_ebpf::DNS_PORTS
        ));
    }
    Ok(DnsPorts(ports))
}

fn parse_dns_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err(format!("{s:?} is out of range: the DNS timeout must be between 100ms and 60s"));
    }
    Ok(d)
}

impl DnsArgs {
    /// The kernel's port table (0 marks unused slots).
    pub fn kernel_ports(&self) -> [u16; podlens_agent_ebpf::DNS_PORTS] {
        let mut out = [0; podlens_agent_ebpf::DNS_PORTS];
        for (slot, port) in out.iter_mut().zip(&self.ports.0) {
            *slot = *port;
        }
        out
    }

    /// The analysis settings, or None when DNS is off.
    pub fn config(&self) -> Option<crate::dns::Config> {
        if self.ports.0.is_empty() {
            return None;
        }
        let d = crate::dns::Config::default();
        Some(crate::dns::Config {
            ports: self.ports.0.clone(),
            timeout: self.timeout,
            limits: crate::dns::window::Limits {
                top_names: self.top_names as usize,
                max_names: self.max_names as usize,
                ..d.limits
            },
            fqdn_entries: self.fqdn_entries as usize,
            fqdn_grace: self.fqdn_grace,
            ..d
        })
    }
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

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOrOff(pub Option<SocketAddr>);

fn parse_listen_or_off(s: &str) -> Result<ListenOrOff, String> {
    if s == "off" {
        return Ok(ListenOrOff(None));
    }
    s.parse().map(|a| ListenOrOff(Some(a))).map_err(|e| format!("{e}: expected ADDRESS:PORT or off"))
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
    fn a_config_file_sets_flags_of_every_group_and_rejects_unknown_ones() {
        use podlens_collector::config_file::merged_args;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "flow_map_entries: 4096\ndns-ports: [53, 5353]\npressure: false\nsched: off\n").unwrap();
        let argv = ["podlens-agent", "--config", path.to_str().unwrap(), "--standalone"].map(std::ffi::OsString::from);
        let a = AgentArgs::try_parse_from(merged_args::<AgentArgs>(argv.to_vec(), None).unwrap()).unwrap();
        assert_eq!((a.flow_map_entries, a.dns.ports.0.clone(), a.standalone), (4096, vec![53, 5353], true));
        assert!(!a.pressure.enabled);
        std::fs::write(&path, "flow-map-entrys: 4096\n").unwrap();
        let err = merged_args::<AgentArgs>(argv.to_vec(), None).unwrap_err().to_string();
        assert!(err.contains("unknown field \"flow-map-entrys\"") && err.contains("flow-map-entries"), "{err}");
        std::fs::write(&path, "sched: sometimes\n").unwrap();
        let err = merged_args::<AgentArgs>(argv.to_vec(), None).unwrap_err().to_string();
        assert!(err.contains("field \"sched\"") && err.contains("auto, on, off"), "{err}");
    }

    #[test]
    fn every_flag_and_default_is_in_the_readme() {
        use clap::CommandFactory;
        let (_, agent) = podlens_collector::config_file::readme_sections(include_str!("../../../README.md"));
        let problems = podlens_collector::config_file::undocumented_flags(&AgentArgs::command(), &agent);
        assert!(problems.is_empty(), "README.md agent flags:\n{}", problems.join("\n"));
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        let parse =
            |v: &str| AgentArgs::try_parse_from(["podlens-agent", "--metrics-listen", v]).map(|a| a.metrics_listen);
        assert_eq!(parse("127.0.0.1:9999").unwrap().0, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(parse("off").unwrap().0, None);
        let err = parse("9999").unwrap_err().to_string();
        assert!(err.contains("--metrics-listen") && err.contains("off"), "{err}");
        let default = AgentArgs::try_parse_from(["podlens-agent"]).unwrap().metrics_listen;
        assert_eq!(default.0, Some("0.0.0.0:9467".parse().unwrap()));
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

    #[test]
    fn dns_flags() {
        let a = AgentArgs::try_parse_from(["podlens-agent"]).unwrap();
        assert_eq!(a.dns.kernel_ports(), [53, 0, 0, 0]);
        assert_eq!(a.dns.config().unwrap().timeout, Duration::from_secs(5));
        let a = AgentArgs::try_parse_from(["podlens-agent", "--dns-ports", "53, 5353,53"]).unwrap();
        assert_eq!(a.dns.ports, DnsPorts(vec![53, 5353]));
        let a = AgentArgs::try_parse_from(["podlens-agent", "--dns-ports", "none"]).unwrap();
        assert!(a.dns.config().is_none());
        assert_eq!(a.dns.kernel_ports(), [0; 4]);
        for (flag, value, want) in [
            ("--dns-ports", "1,2,3,4,5", "at most 4"),
            ("--dns-ports", "dns", "not a port number"),
            ("--dns-ports", "0", "port 0"),
            ("--dns-timeout", "10ms", "between 100ms and 60s"),
            ("--dns-ring-bytes", "1000", "power of two"),
            ("--dns-top-names", "0", "--dns-top-names"),
        ] {
            let err = AgentArgs::try_parse_from(["podlens-agent", flag, value]).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(flag), "{flag} {value}: {err}");
        }
    }
}

//! The real collector binary, started, killed and restarted on fixed ports.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::pki::Pki;

/// The `podlens` CLI, built with the collector.
pub fn cli_path() -> PathBuf {
    let p = collector_path().with_file_name("podlens");
    assert!(p.exists(), "podlens CLI not found at {}: run `cargo xtask e2e`", p.display());
    p
}

/// Where the collector binary is: PODLENS_COLLECTOR_BIN, else next to the agent.
pub fn collector_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PODLENS_COLLECTOR_BIN") {
        return PathBuf::from(p);
    }
    let agent = crate::agent::agent_path();
    let p = agent.with_file_name("podlens-collector");
    assert!(
        p.exists(),
        "collector binary not found at {}: run `cargo xtask e2e` or set PODLENS_COLLECTOR_BIN",
        p.display()
    );
    p
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

pub struct Collector {
    child: Option<Child>,
    args: Vec<String>,
    pub consumers: SocketAddr,
    pub ingest: SocketAddr,
    pub metrics: SocketAddr,
    log: PathBuf,
    starts: u32,
}

impl Collector {
    /// mTLS for agents, TLS plus token or client certificate for consumers,
    /// admitted-batch state in `dir/state`.
    pub fn start_tls(pki: &Pki, dir: &Path, extra: &[&str]) -> Self {
        let s = |p: &Path| p.display().to_string();
        let mut args = vec![
            "--tls-cert".into(),
            s(&pki.server.cert),
            "--tls-key".into(),
            s(&pki.server.key),
            "--agent-ca".into(),
            s(&pki.ca),
            "--consumer-ca".into(),
            s(&pki.ca),
            "--consumer-token-file".into(),
            s(&pki.token_file),
            "--state-dir".into(),
            s(&dir.join("state")),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start(args, dir)
    }

    pub fn start(mut args: Vec<String>, dir: &Path) -> Self {
        crate::privileged::require_root();
        let (consumers, ingest, metrics) = (free_addr(), free_addr(), free_addr());
        args.extend([
            "--listen".into(),
            consumers.to_string(),
            "--ingest-listen".into(),
            ingest.to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
        ]);
        let mut c = Self { child: None, args, consumers, ingest, metrics, log: dir.join("collector.log"), starts: 0 };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("collector log");
        let child = Command::new(collector_path())
            .args(&self.args)
            .env("PODLENS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn podlens-collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.ingest).is_err() || TcpStream::connect(self.consumers).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("collector exited with {status}:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "collector not serving:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no goodbye, as a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again with the same arguments and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus exposition.
    pub fn metrics_text(&self) -> String {
        crate::http::get(self.metrics, "/metrics").expect("collector /metrics").1
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

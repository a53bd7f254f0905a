//! The real agent binary, started in standalone mode, and an Observe client
//! that collects its records in the background.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use podlens_collector::cli::connect::ConnectArgs;
use podlens_proto::v1::{self as pb, observe_client::ObserveClient};

/// Where the agent binary is: PODLENS_AGENT_BIN, else target/<profile>/podlens-agent.
pub fn agent_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PODLENS_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let podrun = crate::cluster::podrun_path();
    let dir = podrun.parent().expect("target/<profile>");
    let candidate = dir.join("podlens-agent");
    assert!(
        candidate.exists(),
        "agent binary not found at {}: run `cargo xtask e2e` (it builds the agent) or set PODLENS_AGENT_BIN",
        candidate.display()
    );
    candidate
}

/// The agent binary, run through `wrapper` (a command and its arguments) if any.
fn agent_command(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(agent_path());
            c
        }
        None => Command::new(agent_path()),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running agent; killed (SIGTERM, then SIGKILL) on drop.
pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// /metrics, /healthz, /readyz.
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts `podlens-agent --standalone` with `extra` flags and waits until it serves.
    pub fn start(node: &str, interval: &str, extra: &[&str], log_dir: &Path) -> Self {
        Self::start_wrapped(&[], node, interval, extra, log_dir)
    }

    /// Like [`Agent::start`], run through `wrapper` (e.g. setpriv with reduced capabilities).
    pub fn start_wrapped(wrapper: &[&str], node: &str, interval: &str, extra: &[&str], log_dir: &Path) -> Self {
        let mut agent = Self::launch(wrapper, node, interval, extra, log_dir);
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// Starts the agent and returns at once (it may still be loading).
    pub fn launch(wrapper: &[&str], node: &str, interval: &str, extra: &[&str], log_dir: &Path) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let standalone = ["--standalone", "--listen", &addr.to_string()];
        Self::spawn(wrapper, &standalone, node, interval, extra, log_dir, Some(addr))
    }

    /// `mode` flags, then the common ones, then `extra`; `addr` is the Observe
    /// API when there is one, else the metrics address stands for it.
    fn spawn(
        wrapper: &[&str],
        mode: &[&str],
        node: &str,
        interval: &str,
        extra: &[&str],
        log_dir: &Path,
        addr: Option<SocketAddr>,
    ) -> Self {
        crate::privileged::require_root();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let addr = addr.unwrap_or(metrics);
        let log = log_dir.join(format!("agent-{}.log", addr.port()));
        let log_file = std::fs::File::create(&log).expect("agent log");
        let child = agent_command(wrapper)
            .args(mode)
            .args(["--interval", interval, "--node-name", node, "--metrics-listen", &metrics.to_string()])
            .args(extra)
            .env("PODLENS_LOG", "info,podlens_agent=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn podlens-agent");
        Self { child: Some(child), addr, metrics, log }
    }

    /// Starts the agent as the DaemonSet runs it: no embedded collector, only
    /// `extra` (e.g. `--collector`); returns once `/readyz` answers 200.
    pub fn start_daemon(node: &str, interval: &str, extra: &[&str], log_dir: &Path) -> Self {
        let mut agent = Self::spawn(&[], &[], node, interval, extra, log_dir, None);
        let metrics = agent.metrics;
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::http::get(metrics, "/readyz").map(|r| r.0) != Some(200) {
            if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited with {status} before it was ready:\n{}", agent.log_text());
            }
            assert!(Instant::now() < deadline, "agent not ready after 30 s:\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// Waits until the Observe API serves: programs are attached before it opens.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited with {status} before serving:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "agent not serving after {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Freezes (SIGSTOP) or resumes (SIGCONT) the agent process.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// The agent's /metrics, parsed strictly as Prometheus text (it must answer 200).
    pub fn metrics(&self) -> Vec<crate::http::Sample> {
        let (code, text) = crate::http::get(self.metrics, "/metrics").expect("agent /metrics");
        assert_eq!(code, 200, "{text}");
        crate::http::parse_exposition(&text).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent ignored SIGTERM for 20s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A record and the batch it came from.
pub type Observed = (pb::Record, Option<pb::Origin>);

/// Records received from an Observe stream, collected by a background thread.
pub struct Observer {
    records: Arc<Mutex<Vec<Observed>>>,
    error: Arc<Mutex<Option<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Observer {
    /// Observe on a plaintext server without authentication (a standalone agent).
    pub fn connect(addr: SocketAddr, request: pb::ObserveRequest) -> Self {
        let connect = ConnectArgs { server: format!("http://{addr}"), ..Default::default() };
        Self::connect_with(connect, request)
    }

    /// Observe with any connection settings (TLS, token).
    pub fn connect_with(connect: ConnectArgs, request: pb::ObserveRequest) -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let (r, e) = (records.clone(), error.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let result = async {
                    let mut client = ObserveClient::new(connect.connect().await?);
                    let mut stream = client.observe(request).await?.into_inner();
                    let _ = ready_tx.send(());
                    while let Some(msg) = stream.message().await? {
                        if let Some(rec) = msg.record {
                            r.lock().expect("lock").push((rec, msg.origin));
                        }
                    }
                    Ok::<(), Box<dyn std::error::Error>>(())
                }
                .await;
                if let Err(err) = result {
                    *e.lock().expect("lock") = Some(err.to_string());
                    let _ = ready_tx.send(());
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("observe stream started");
        if let Some(err) = error.lock().expect("lock").clone() {
            panic!("observe failed: {err}");
        }
        Self { records, error, _thread: thread }
    }

    pub fn records(&self) -> Vec<pb::Record> {
        self.records.lock().expect("lock").iter().map(|(r, _)| r.clone()).collect()
    }

    /// Records with the batch each came from.
    pub fn with_origins(&self) -> Vec<Observed> {
        self.records.lock().expect("lock").clone()
    }

    /// The stream's error, if it ended with one.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("lock").clone()
    }

    /// Polls until `done(records)` holds or `timeout` passes; returns the records either way.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[pb::Record]) -> bool) -> Vec<pb::Record> {
        let deadline = Instant::now() + timeout;
        loop {
            let recs = self.records();
            if done(&recs) || Instant::now() > deadline {
                if let Some(err) = self.error.lock().expect("lock").clone() {
                    panic!("observe stream failed: {err}");
                }
                return recs;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the agent to completion with `args` (expected to fail fast); returns
/// (exit code, stderr).
pub fn run_agent_expecting_exit(wrapper: &[&str], args: &[&str]) -> (Option<i32>, String) {
    crate::privileged::require_root();
    // tests run in parallel: none of them may take the default metrics port
    let out = agent_command(wrapper)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("PODLENS_METRICS_LISTEN", "off")
        .output()
        .expect("run podlens-agent");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

//! Emulated pods on an emulated node.
//!
//! The node is a network namespace with a bridge; each pod is a network
//! namespace joined to it by a veth pair, plus cgroups laid out exactly as the
//! kubelet does (systemd or cgroupfs driver) under a test-private slice of the
//! cgroup2 root. Everything is uniquely named and removed on drop, also when a
//! test fails.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use crate::privileged::{require_root, unique};

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    sh("ip", args);
}

/// The cgroup2 mount of this machine.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    podlens_agent::preflight::find_cgroup2(&mountinfo).expect("cgroup2 is mounted")
}

/// The kubelet's cgroup driver, which decides the directory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// A pod's QoS class (its cgroup parent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// Removes cgroup directories deepest first, killing what still runs in them.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        let _ = std::fs::write(d.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A node: a network namespace with a bridge at 10.77.0.1/24 and fd77::1/64,
/// and a private cgroup slice holding the kubepods tree.
pub struct Node {
    pub netns: String,
    pub slice: PathBuf,
    pub driver: Driver,
    next_host: u8,
    podrun: PathBuf,
}

pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

impl Node {
    pub fn new(driver: Driver) -> Self {
        require_root();
        let id = unique("pl");
        let netns = format!("{id}-node");
        ip(&["netns", "add", &netns]);
        let node = Self {
            slice: cgroup2_root().join(match driver {
                Driver::Systemd => format!("podlens-e2e-{id}.slice"),
                Driver::Cgroupfs => format!("podlens-e2e-{id}"),
            }),
            netns,
            driver,
            next_host: 10,
            podrun: podrun_path(),
        };
        std::fs::create_dir_all(&node.slice).expect("create the test cgroup slice");
        let n = node.netns.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        ip(&["-n", n, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        ip(&["-n", n, "addr", "add", "fd77::1/64", "dev", "br0", "nodad"]);
        tcp_sysctls(n);
        node
    }

    /// Next free host number for a pod address.
    pub fn allocate_host(&mut self) -> u8 {
        let h = self.next_host;
        self.next_host += 1;
        h
    }

    /// A cgroup outside kubepods (a systemd unit), for host traffic.
    pub fn host_unit(&self, unit: &str) -> PathBuf {
        let dir = self.slice.join(unit);
        std::fs::create_dir_all(&dir).expect("create host unit cgroup");
        dir
    }

    /// Runs podrun in `cgroup` inside the node's network namespace.
    pub fn spawn_in(&self, cgroup: &Path, netns: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(&self.podrun);
        cmd.arg("--cgroup").arg(cgroup).arg("--netns").arg(netns).args(args);
        Proc::spawn(cmd)
    }

    /// Creates a pod: cgroups (pod + one container) and a netns at 10.77.0.h / fd77::h.
    pub fn pod(&mut self, namespace: &str, name: &str, qos: Qos) -> Pod {
        let host = self.allocate_host();
        self.pod_at(namespace, name, qos, host)
    }

    /// Creates a pod with a chosen host number (to reuse an IP).
    pub fn pod_at(&mut self, namespace: &str, name: &str, qos: Qos, host: u8) -> Pod {
        let uid = uuid_like();
        let container_id = hex64();
        let pod_dir = self.pod_cgroup(&uid, qos);
        let container_dir = pod_dir.join(match self.driver {
            Driver::Systemd => format!("cri-containerd-{container_id}.scope"),
            Driver::Cgroupfs => container_id.clone(),
        });
        std::fs::create_dir_all(&container_dir).expect("create pod cgroups");

        let netns = format!("{}-p{host}", self.netns.trim_end_matches("-node"));
        ip(&["netns", "add", &netns]);
        let veth = format!("h{host}");
        ip(&["-n", &self.netns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        ip(&["-n", &self.netns, "link", "set", &veth, "master", "br0", "up"]);
        let v4 = Ipv4Addr::new(10, 77, 0, host);
        let v6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(host));
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ip(&["-n", &netns, "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        tcp_sysctls(&netns);
        Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid,
            qos,
            container_id,
            container_cgroup: container_dir,
            pod_cgroup: pod_dir,
            netns,
            v4,
            v6,
            created: SystemTime::now(),
            podrun: self.podrun.clone(),
        }
    }

    fn pod_cgroup(&self, uid: &str, qos: Qos) -> PathBuf {
        match self.driver {
            Driver::Systemd => {
                let root = self.slice.join("kubepods.slice");
                let u = uid.replace('-', "_");
                match qos {
                    Qos::Guaranteed => root.join(format!("kubepods-pod{u}.slice")),
                    Qos::Burstable => {
                        root.join("kubepods-burstable.slice").join(format!("kubepods-burstable-pod{u}.slice"))
                    }
                    Qos::BestEffort => {
                        root.join("kubepods-besteffort.slice").join(format!("kubepods-besteffort-pod{u}.slice"))
                    }
                }
            }
            Driver::Cgroupfs => {
                let root = self.slice.join("kubepods");
                match qos {
                    Qos::Guaranteed => root.join(format!("pod{uid}")),
                    Qos::Burstable => root.join("burstable").join(format!("pod{uid}")),
                    Qos::BestEffort => root.join("besteffort").join(format!("pod{uid}")),
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.slice);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// Deterministic TCP headers (no timestamps, SACK or window scaling), so byte
/// counts can be checked exactly: 20-byte TCP headers, 24 on SYN (MSS only).
fn tcp_sysctls(netns: &str) {
    for kv in ["net.ipv4.tcp_timestamps=0", "net.ipv4.tcp_sack=0", "net.ipv4.tcp_window_scaling=0"] {
        sh("ip", &["netns", "exec", netns, "sysctl", "-q", "-w", kv]);
    }
}

/// An emulated pod.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub qos: Qos,
    pub container_id: String,
    pub container_cgroup: PathBuf,
    pub pod_cgroup: PathBuf,
    pub netns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub created: SystemTime,
    podrun: PathBuf,
}

impl Pod {
    /// Runs a podrun role in the pod's container.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new(&self.podrun);
        cmd.arg("--cgroup").arg(&self.container_cgroup).arg("--netns").arg(&self.netns).args(args);
        Proc::spawn(cmd)
    }

    /// Runs a command in the pod with `resolv_conf` as its /etc/resolv.conf.
    pub fn spawn_with_resolv_conf(&self, resolv_conf: &Path, argv: &[&str]) -> Proc {
        let mut cmd = Command::new(&self.podrun);
        cmd.arg("--cgroup").arg(&self.container_cgroup).arg("--netns").arg(&self.netns);
        cmd.arg("--resolv-conf").arg(resolv_conf).arg("exec").arg("--").args(argv);
        Proc::spawn(cmd)
    }

    /// Runs a role to completion and returns its JSON lines.
    pub fn run(&self, args: &[&str]) -> Vec<serde_json::Value> {
        self.spawn(args).wait_json(Duration::from_secs(120))
    }

    /// dnsmasq in the pod, listening on its IPv4 address, port 53:
    /// NXDOMAIN under each `local` domain, fixed answers for `address`
    /// entries ("/name/ip"). Returns once it listens.
    pub fn dnsmasq(&self, local: &[&str], address: &[&str]) -> Proc {
        let mut args: Vec<String> = [
            "exec",
            "--",
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--pid-file",
            "--local-ttl=60",
            "--log-facility=-",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--listen-address={}", self.v4));
        args.extend(local.iter().map(|d| format!("--local=/{d}/")));
        args.extend(address.iter().map(|a| format!("--address={a}")));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = self.spawn(&refs);
        self.wait_listening_udp(53);
        p
    }

    /// Waits until something in the pod listens on UDP `port` (no probe packet).
    pub fn wait_listening_udp(&self, port: u16) {
        for _ in 0..100 {
            let out = sh("ip", &["netns", "exec", &self.netns, "ss", "-Hlun", &format!("sport = :{port}")]);
            if !out.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on UDP {port} in pod {}/{}", self.namespace, self.name);
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }

    /// The pod as `kubectl get pods -o yaml` prints it (the fields podlens reads).
    pub fn manifest(&self, node: &str) -> serde_json::Value {
        let created = humantime_rfc3339(self.created);
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                         "creationTimestamp": created, "labels": {"app": self.name}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "podrun"}]},
            "status": {
                "qosClass": self.qos.name(),
                "podIP": self.v4.to_string(),
                "podIPs": [{"ip": self.v4.to_string()}, {"ip": self.v6.to_string()}],
                "containerStatuses": [{"name": "main", "containerID": format!("containerd://{}", self.container_id),
                    "image": "podrun", "imageID": "", "ready": true, "restartCount": 0}]
            }
        })
    }

    /// Deletes the pod: its processes, cgroups and network namespace.
    pub fn delete(self) {}
}

impl Drop for Pod {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.pod_cgroup);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// Writes a pod inventory file (a List, like `kubectl get pods -A -o yaml`).
pub fn write_inventory(path: &Path, node: &str, pods: &[&Pod]) {
    let list = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
        "items": pods.iter().map(|p| p.manifest(node)).collect::<Vec<_>>(),
    });
    // JSON is YAML; write atomically so the agent never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&list).expect("json")).expect("write inventory");
    std::fs::rename(&tmp, path).expect("rename inventory");
}

fn humantime_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: getrandom writes at most n bytes into b.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), n, 0) };
    assert_eq!(got, n as isize, "getrandom");
    b
}

fn uuid_like() -> String {
    let h: String = random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn hex64() -> String {
    random_bytes(32).iter().map(|b| format!("{b:02x}")).collect()
}

/// Path of the podrun helper: PODLENS_PODRUN_BIN, else next to the test
/// binary's directory (target/<profile>/podrun, built with the tests).
pub fn podrun_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PODLENS_PODRUN_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let dirs = exe.ancestors().skip(1).take(2);
    let candidates: Vec<PathBuf> = dirs.map(|d| d.join("podrun")).collect();
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("podrun not found at {candidates:?}: build it with `cargo build -p podlens-e2e --bins`")
    })
}

/// A child process killed on drop.
pub struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let what = format!("{cmd:?}");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Self { child: Some(child), what }
    }

    /// Waits for exit (bounded), asserts success, parses stdout as JSON lines.
    pub fn wait_json(self, timeout: Duration) -> Vec<serde_json::Value> {
        let what = self.what.clone();
        self.wait_stdout(timeout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: bad output line {l:?}: {e}")))
            .collect()
    }

    /// Waits for exit (bounded), asserts success, returns stdout.
    pub fn wait_stdout(self, timeout: Duration) -> String {
        let what = self.what.clone();
        let (status, out, err) = self.wait_output(timeout);
        assert!(status.success(), "{what} failed ({status}): {out}{err}");
        out
    }

    /// Waits for exit (bounded); returns the status, stdout and stderr.
    pub fn wait_output(mut self, timeout: Duration) -> (std::process::ExitStatus, String, String) {
        use std::io::Read;
        let mut child = self.child.take().expect("running");
        // Drain the pipes while waiting, so a chatty child never blocks on a full pipe.
        let reader = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let err = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} timed out after {timeout:?}: {}", self.what, err.join().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, out.join().unwrap_or_default(), err.join().unwrap_or_default())
    }

    /// Reads the first stdout line (e.g. a server's "listening").
    pub fn first_line(&mut self) -> serde_json::Value {
        use std::io::Read;
        let stdout = self.child.as_mut().and_then(|c| c.stdout.as_mut()).expect("stdout");
        // Byte by byte: a buffered reader could swallow later lines.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {line:?}: {e}", self.what))
    }

    /// Kills a long-running role and returns the JSON lines it printed
    /// (after any read with [`Proc::first_line`]).
    pub fn kill_and_collect(mut self) -> Vec<serde_json::Value> {
        use std::io::Read;
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad output line {l:?}: {e}", self.what)))
            .collect()
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

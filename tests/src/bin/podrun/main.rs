//! `podrun`: runs a traffic role (or any command) inside an emulated pod: it
//! first moves itself into the pod's cgroup and network namespace, so every
//! socket it opens belongs to the pod exactly as a container's would.
//!
//! Roles print one JSON object per connection or run on stdout, with the
//! kernel's own TCP_INFO counters for exact comparisons.

mod cpu;
mod dns;
mod rxts;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    /// cgroup directory to join (absolute path in the cgroup2 mount).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Network namespace (ip netns name) to join.
    #[arg(long)]
    netns: Option<String>,
    /// A cgroup v1 directory to join as well (e.g. in the cpu controller, for a CFS quota).
    #[arg(long)]
    cgroup_v1: Option<PathBuf>,
    /// Seen as /etc/resolv.conf by this process (a private mount namespace),
    /// as a pod's own resolv.conf is.
    #[arg(long)]
    resolv_conf: Option<PathBuf>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Replace this process with a command.
    Exec {
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// Accept `conns` connections one after the other; for each read to EOF,
    /// send `reply` bytes, close, and print its counters.
    TcpServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u64,
        #[arg(long, default_value_t = 0)]
        reply: u64,
    },
    /// Connect, send `send` bytes, half-close, read to EOF and print counters.
    TcpClient {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        send: u64,
        /// Pause this long after each 64 KiB written (a slow, long transfer).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
    },
    /// `count` short connections sending `send` bytes each; prints the summed
    /// counters of all of them.
    TcpChurn {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        send: u64,
        /// At most this many connections per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Send `count` datagrams of `size` payload bytes.
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Pause between datagrams, microseconds (keeps receivers from dropping).
        #[arg(long, default_value_t = 200)]
        gap_us: u64,
    },
    /// A DNS server on UDP and TCP that answers after `delay_ms`.
    DnsServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Ignore this many queries first (clients time out, retry).
        #[arg(long, default_value_t = 0)]
        drop: u64,
        /// name=ip answers (repeatable); other names are NXDOMAIN.
        #[arg(long = "record")]
        records: Vec<String>,
    },
    /// Send raw bytes (hex) to a DNS port.
    DnsRaw {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        hex: String,
        #[arg(long)]
        tcp: bool,
    },
    /// A queries at a fixed rate; prints sent and answered.
    DnsLoad {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        sockets: usize,
    },
    /// Wake every period on one CPU, work a little, report own lateness.
    Victim {
        #[arg(long, default_value_t = 1)]
        cpu: usize,
        #[arg(long, default_value_t = 1000)]
        period_us: u64,
        #[arg(long, default_value_t = 50)]
        work_us: u64,
        #[arg(long)]
        seconds: u64,
    },
    /// Spin `threads` threads on one CPU.
    Burn {
        #[arg(long, default_value_t = 1)]
        cpu: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        seconds: u64,
    },
    /// Receive datagrams until `count` arrived or `timeout_ms` passed.
    UdpRecv {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

fn enter(cgroup: Option<&PathBuf>, netns: Option<&str>) -> Result<()> {
    if let Some(cg) = cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cg.display()))?;
    }
    if let Some(ns) = netns {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
        // SAFETY: setns on a netns fd we own; this process is single-threaded here.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {ns}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The TCP_INFO fields the tests compare.
fn tcp_info(s: &TcpStream) -> Result<serde_json::Value> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_INFO: {}", std::io::Error::last_os_error());
    }
    Ok(json!({
        "state": info.tcpi_state,
        "segs_out": info.tcpi_segs_out,
        "segs_in": info.tcpi_segs_in,
        "bytes_sent": info.tcpi_bytes_sent,
        "bytes_received": info.tcpi_bytes_received,
        "total_retrans": info.tcpi_total_retrans,
    }))
}

fn read_to_eof(s: &mut TcpStream) -> Result<u64> {
    let mut buf = [0u8; 65536];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

fn write_n(s: &mut TcpStream, n: u64) -> Result<()> {
    write_paced(s, n, 0)
}

fn write_paced(s: &mut TcpStream, mut n: u64, pace_ms: u64) -> Result<()> {
    let buf = [0x5au8; 65536];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k])?;
        n -= k as u64;
        if pace_ms > 0 {
            std::thread::sleep(Duration::from_millis(pace_ms));
        }
    }
    Ok(())
}

/// Waits (bounded) until our FIN is acknowledged, so TCP_INFO includes the
/// peer's last ACK.
fn wait_closed(s: &TcpStream) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = tcp_info(s)?;
        if info["state"] == 7 || Instant::now() > deadline {
            return Ok(info);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn tcp_server(listen: SocketAddr, conns: u64, reply: u64) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("{}", json!({"listening": l.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    let mut sum = [0u64; 5];
    for _ in 0..conns {
        let (mut s, peer) = l.accept()?;
        let received = read_to_eof(&mut s)?;
        write_n(&mut s, reply)?;
        s.shutdown(Shutdown::Write)?;
        let info = wait_closed(&s)?;
        for (slot, field) in sum.iter_mut().zip(["segs_out", "segs_in", "bytes_sent", "total_retrans"]) {
            *slot += info[field].as_u64().unwrap_or(0);
        }
        sum[4] += received;
        if conns <= 100 {
            println!(
                "{}",
                json!({"local": s.local_addr()?.to_string(), "peer": peer.to_string(), "received": received, "tcp_info": info})
            );
            std::io::stdout().flush()?;
        }
    }
    println!(
        "{}",
        json!({"summary": true, "connections": conns, "segs_out": sum[0], "segs_in": sum[1], "bytes_sent": sum[2], "total_retrans": sum[3], "received": sum[4]})
    );
    Ok(())
}

fn tcp_client(connect: SocketAddr, send: u64, pace_ms: u64) -> Result<()> {
    let mut s = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
    write_paced(&mut s, send, pace_ms)?;
    s.shutdown(Shutdown::Write)?;
    let received = read_to_eof(&mut s)?;
    let info = tcp_info(&s)?;
    println!(
        "{}",
        json!({"local": s.local_addr()?.to_string(), "peer": connect.to_string(), "received": received, "tcp_info": info})
    );
    Ok(())
}

fn tcp_churn(connect: SocketAddr, count: u64, send: u64, rate: u64) -> Result<()> {
    let mut sum = [0u64; 4];
    let start = Instant::now();
    for i in 0..count {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let mut s = TcpStream::connect(connect).with_context(|| format!("connection {i} to {connect}"))?;
        write_n(&mut s, send)?;
        s.shutdown(Shutdown::Write)?;
        read_to_eof(&mut s)?;
        let info = tcp_info(&s)?;
        for (slot, field) in sum.iter_mut().zip(["segs_out", "segs_in", "bytes_sent", "total_retrans"]) {
            *slot += info[field].as_u64().unwrap_or(0);
        }
    }
    println!(
        "{}",
        json!({"connections": count, "segs_out": sum[0], "segs_in": sum[1], "bytes_sent": sum[2], "total_retrans": sum[3]})
    );
    Ok(())
}

fn udp_send(to: SocketAddr, count: u64, size: usize, bind: Option<SocketAddr>, gap_us: u64) -> Result<()> {
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let s = UdpSocket::bind(bind.unwrap_or(any))?;
    // Connected, so local_addr() reports the source address the route chose.
    s.connect(to)?;
    let payload = vec![0xa5u8; size];
    for _ in 0..count {
        s.send(&payload)?;
        if gap_us > 0 {
            std::thread::sleep(Duration::from_micros(gap_us));
        }
    }
    println!("{}", json!({"local": s.local_addr()?.to_string(), "sent": count}));
    Ok(())
}

fn udp_recv(listen: SocketAddr, count: u64, timeout_ms: u64) -> Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("{}", json!({"listening": s.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut buf = vec![0u8; 65536];
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left))?;
        match s.recv_from(&mut buf) {
            Ok((n, _)) => {
                got += 1;
                bytes += n as u64;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", json!({"received": got, "bytes": bytes}));
    Ok(())
}

/// Bind-mounts `file` over /etc/resolv.conf in a mount namespace of our own.
fn private_resolv_conf(file: &std::path::Path) -> Result<()> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).expect("no NUL");
    let src = c(&file.display().to_string());
    let (root, target) = (c("/"), c("/etc/resolv.conf"));
    // SAFETY: plain syscalls on NUL-terminated strings we own; single-threaded here.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
        if libc::mount(src.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
            bail!("bind-mounting {} on /etc/resolv.conf: {}", file.display(), std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    if !hex.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("bad hex digit")).collect()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    enter(cli.cgroup.as_ref(), cli.netns.as_deref())?;
    if let Some(v1) = &cli.cgroup_v1 {
        std::fs::write(v1.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup v1 {}", v1.display()))?;
    }
    if let Some(f) = &cli.resolv_conf {
        private_resolv_conf(f)?;
    }
    match cli.role {
        Role::Exec { argv } => {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
            bail!("exec {}: {err}", argv[0])
        }
        Role::TcpServer { listen, conns, reply } => tcp_server(listen, conns, reply),
        Role::TcpClient { connect, send, pace_ms } => tcp_client(connect, send, pace_ms),
        Role::TcpChurn { connect, count, send, rate } => tcp_churn(connect, count, send, rate),
        Role::UdpSend { to, count, size, bind, gap_us } => udp_send(to, count, size, bind, gap_us),
        Role::UdpRecv { listen, count, timeout_ms } => udp_recv(listen, count, timeout_ms),
        Role::DnsServer { listen, delay_ms, drop, records } => {
            dns::server(listen, Duration::from_millis(delay_ms), drop, dns::Zone::parse(&records)?)
        }
        Role::DnsRaw { to, hex, tcp } => dns::raw(to, &hex_bytes(&hex)?, tcp),
        Role::DnsLoad { server, names, rate, seconds, sockets } => dns::load(server, &names, rate, seconds, sockets),
        Role::Victim { cpu, period_us, work_us, seconds } => cpu::victim(cpu, period_us, work_us, seconds),
        Role::Burn { cpu, threads, seconds } => cpu::burn(cpu, threads, seconds),
    }
}

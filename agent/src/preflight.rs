//! Start-up checks that turn a missing requirement into one clear error naming
//! what is missing and how to fix it, before any eBPF syscall.

use std::path::{Path, PathBuf};

/// The oldest kernel with everything the core needs (ring buffer, cgroup ids
/// for cgroup_skb, BTF-typed tracepoints).
pub const MIN_KERNEL: (u32, u32) = (5, 8);
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("kernel {found} is too old: podlens needs Linux >= {}.{} (ring buffer, cgroup_skb cgroup ids, BTF tracepoints)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { found: String },
    #[error("cannot parse kernel release {0:?}")]
    KernelUnparsable(String),
    #[error("kernel BTF not found at {BTF_PATH}: podlens needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (standard in Debian, Ubuntu, RHEL/Fedora and most cloud kernels since 5.8)")]
    NoBtf,
    #[error("{BTF_PATH} is not BTF ({0}): podlens needs the kernel's own BTF (CONFIG_DEBUG_INFO_BTF=y); check what is mounted there")]
    InvalidBtf(String),
    #[error("no cgroup2 filesystem in /proc/self/mountinfo: mount it (mount -t cgroup2 none /sys/fs/cgroup) or point --cgroup-root at a cgroup2 mount")]
    NoCgroup2,
    #[error("--cgroup-root {0} is not a cgroup2 mount")]
    NotCgroup2(PathBuf),
    #[error("missing capabilities {}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (Kubernetes: securityContext.capabilities.add; shell: setpriv/capsh)", .0.join(", "))]
    MissingCapabilities(Vec<&'static str>),
    #[error("reading {path}: {message}")]
    Read { path: &'static str, message: String },
}

/// Parses "6.18.44-fc-v669" into (6, 18).
pub fn parse_release(release: &str) -> Result<(u32, u32), PreflightError> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts.next().and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(PreflightError::KernelUnparsable(release.trim().to_string())),
    }
}

pub fn check_kernel(release: &str) -> Result<(), PreflightError> {
    if parse_release(release)? < MIN_KERNEL {
        return Err(PreflightError::KernelTooOld { found: release.trim().to_string() });
    }
    Ok(())
}

/// The effective capability set from /proc/self/status.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Which of the needed capabilities are missing. CAP_SYS_ADMIN covers all three
/// (older kernels had no CAP_BPF/CAP_PERFMON).
pub fn missing_caps(eff: u64) -> Vec<&'static str> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| !has(*bit))
        .map(|(_, name)| name)
        .collect()
}

/// Checks the BTF magic (0xeb9f, little- or big-endian) at the start of `head`.
pub fn check_btf_header(head: &[u8]) -> Result<(), PreflightError> {
    match head.get(..2) {
        Some([0x9f, 0xeb]) | Some([0xeb, 0x9f]) => Ok(()),
        Some(_) => Err(PreflightError::InvalidBtf("bad magic".into())),
        None => Err(PreflightError::InvalidBtf(format!("{} bytes", head.len()))),
    }
}

fn check_btf() -> Result<(), PreflightError> {
    use std::io::Read;
    let mut head = [0u8; 2];
    let mut f = match std::fs::File::open(BTF_PATH) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PreflightError::NoBtf),
        Err(e) => return Err(PreflightError::Read { path: BTF_PATH, message: e.to_string() }),
    };
    let n = f.read(&mut head).map_err(|e| PreflightError::InvalidBtf(e.to_string()))?;
    check_btf_header(&head[..n])
}

/// The first cgroup2 mount point whose root is the hierarchy root.
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    crate::pressure::mounts::parse_mountinfo(mountinfo).v2
}

fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; c is NUL terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn read_proc(path: &'static str) -> Result<String, PreflightError> {
    std::fs::read_to_string(path).map_err(|e| PreflightError::Read { path, message: e.to_string() })
}

/// Runs every check and returns the cgroup2 root to attach to.
pub fn run(cgroup_root: Option<&Path>) -> Result<PathBuf, PreflightError> {
    check_kernel(&read_proc("/proc/sys/kernel/osrelease")?)?;
    check_btf()?;
    let status = read_proc("/proc/self/status")?;
    let eff = effective_caps(&status)
        .ok_or(PreflightError::Read { path: "/proc/self/status", message: "no CapEff line".into() })?;
    let missing = missing_caps(eff);
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities(missing));
    }
    match cgroup_root {
        Some(p) if is_cgroup2(p) => Ok(p.to_path_buf()),
        Some(p) => Err(PreflightError::NotCgroup2(p.to_path_buf())),
        None => find_cgroup2(&read_proc("/proc/self/mountinfo")?).ok_or(PreflightError::NoCgroup2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "\
25 23 0:22 / /proc rw,nosuid - proc proc rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_cgroup2_on_hybrid_and_pure_hosts() {
        assert_eq!(find_cgroup2(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_cgroup2(PURE_V2), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn skips_namespaced_subtree_mounts_and_handles_escapes() {
        let info = "\
50 23 0:26 /kubepods.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw
51 23 0:26 / /host/sys\\040fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2(info), Some(PathBuf::from("/host/sys fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_and_garbage() {
        assert_eq!(find_cgroup2("garbage line\n\n- - -\n"), None);
        assert_eq!(find_cgroup2(""), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Ok((6, 18)));
        assert!(check_kernel("5.8.0").is_ok());
        assert!(check_kernel("5.15.0-91-generic").is_ok());
        let err = check_kernel("5.4.0-150-generic").unwrap_err();
        assert!(err.to_string().contains("5.4.0-150-generic") && err.to_string().contains(">= 5.8"), "{err}");
        assert!(matches!(check_kernel("banana"), Err(PreflightError::KernelUnparsable(_))));
    }

    #[test]
    fn btf_header() {
        assert!(check_btf_header(&[0x9f, 0xeb, 1, 0]).is_ok());
        assert!(matches!(check_btf_header(b"\x7fELF"), Err(PreflightError::InvalidBtf(_))));
        assert!(matches!(check_btf_header(&[]), Err(PreflightError::InvalidBtf(m)) if m == "0 bytes"));
    }

    #[test]
    fn capabilities() {
        let status = "Name:\tagent\nCapEff:\t000001c000001000\n";
        let eff = effective_caps(status).unwrap();
        assert_eq!(missing_caps(eff), Vec::<&str>::new(), "BPF, PERFMON, NET_ADMIN");
        assert_eq!(missing_caps(1 << CAP_NET_ADMIN), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_caps(1 << CAP_SYS_ADMIN), Vec::<&str>::new());
        assert_eq!(missing_caps(0).len(), 3);
        let err = PreflightError::MissingCapabilities(missing_caps(0)).to_string();
        assert!(err.contains("CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"), "{err}");
        assert_eq!(effective_caps("no caps here"), None);
    }
}

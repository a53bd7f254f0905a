//! Privileged tests need root (eBPF, cgroups, netns). They never skip: without
//! root they fail with the reason, in CI and out of it.

/// Panics unless running as root (uid 0).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this privileged test needs root (eBPF programs, cgroups, network namespaces); run `sudo -E cargo xtask e2e`{}",
        if std::env::var("CI").is_ok_and(|v| v == "true") { " (CI=true: failing, not skipping)" } else { "" }
    );
}

/// A short suffix unique to this process and call, for names of netns,
/// interfaces and cgroups (interface names are limited to 15 bytes).
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{n:x}", std::process::id() % 0xffff)
}

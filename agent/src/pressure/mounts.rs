//! Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`.
//!
//! Hosts come in three layouts: pure cgroup2 (everything at one mount), pure
//! v1 (one mount per controller or per controller group such as
//! `cpu,cpuacct`, no cgroup2) and hybrid (v1 controllers plus a cgroup2 mount,
//! often `/sys/fs/cgroup/unified`, that has PSI but few or no controllers).
//! Paths differ between distributions and container images, so they are
//! always read from mountinfo rather than assumed.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

/// Super options of a v1 mount that are not controller names.
const NON_CONTROLLER_OPTIONS: &[&str] =
    &["rw", "ro", "none", "all", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods"];

/// The cgroup mounts of this mount namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The cgroup2 mount, if any.
    pub v2: Option<PathBuf>,
    /// v1 mounts keyed by controller; co-mounted controllers share a path.
    pub v1: BTreeMap<String, PathBuf>,
}

impl Hierarchies {
    /// The mount point of a v1 controller.
    pub fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }
}

/// Finds the cgroup mounts in mountinfo text. Malformed lines are skipped:
/// mountinfo comes from the kernel and a line we cannot split is not a cgroup
/// mount we could use anyway.
pub fn parse_mountinfo(text: &str) -> Hierarchies {
    let mut h = Hierarchies::default();
    for line in text.lines() {
        let Some(m) = parse_line(line) else {
            continue;
        };
        // A mount of a subtree (a container's view, a bind mount of one cgroup)
        // would put every relative cgroup path in the wrong place.
        if m.root != "/" {
            continue;
        }
        match m.fstype {
            "cgroup2" if h.v2.is_none() => h.v2 = Some(unescape(m.mount_point)),
            "cgroup" => {
                // Named hierarchies (name=systemd) carry no controller, so they
                // contribute nothing; a controller co-mounted with a name is
                // still that controller's only v1 hierarchy and is kept.
                let controllers = m
                    .super_options
                    .split(',')
                    .filter(|o| !o.is_empty() && !o.contains('=') && !NON_CONTROLLER_OPTIONS.contains(o));
                for c in controllers {
                    h.v1.entry(c.to_string()).or_insert_with(|| unescape(m.mount_point));
                }
            }
            _ => {}
        }
    }
    h
}

struct MountLine<'a> {
    root: &'a str,
    mount_point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

/// Splits "id parent maj:min root mount_point options [optional...] - fstype
/// source super_options". Optional fields vary in number, hence the search for
/// the lone "-" rather than a fixed index.
fn parse_line(line: &str) -> Option<MountLine<'_>> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let post = fields.get(sep + 1..)?;
    Some(MountLine {
        root: fields.get(3)?,
        mount_point: fields.get(4)?,
        fstype: post.first()?,
        super_options: post.get(2).copied().unwrap_or(""),
    })
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline, backslash) in a
/// mountinfo path. Works on bytes because a mount point need not be UTF-8.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(v) = octal_escape(&bytes[i..]) {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The byte value of a `\ooo` escape at the start of `b`, if there is one that
/// fits in a byte.
fn octal_escape(b: &[u8]) -> Option<u8> {
    let [b'\\', d @ ..] = b.get(..4)? else {
        return None;
    };
    let mut v: u32 = 0;
    for c in d {
        if !(b'0'..=b'7').contains(c) {
            return None;
        }
        v = v * 8 + u32::from(c - b'0');
    }
    u8::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn hybrid_host() {
        let text = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let h = parse_mountinfo(text);
        assert_eq!(h.v2, Some(p("/sys/fs/cgroup/unified")));
        assert_eq!(h.v1("cpu"), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(h.v1("cpuacct"), Some(Path::new("/sys/fs/cgroup/cpuacct")));
        assert_eq!(h.v1("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        assert_eq!(h.v1("blkio"), Some(Path::new("/sys/fs/cgroup/blkio")));
        let keys: Vec<&str> = h.v1.keys().map(String::as_str).collect();
        assert_eq!(keys, ["blkio", "cpu", "cpuacct", "cpuset", "memory", "pids"]);
    }

    #[test]
    fn pure_v2_host() {
        let text = "\
25 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
26 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:23 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";
        let h = parse_mountinfo(text);
        assert_eq!(h.v2, Some(p("/sys/fs/cgroup")));
        assert!(h.v1.is_empty());
    }

    #[test]
    fn pure_v1_host_with_comounted_cpu_cpuacct() {
        let text = "\
24 17 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
30 24 0:26 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
31 24 0:27 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,blkio
";
        let h = parse_mountinfo(text);
        assert_eq!(h.v2, None);
        assert_eq!(h.v1("cpu"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(h.v1("cpuacct"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(h.v1("net_prio"), Some(Path::new("/sys/fs/cgroup/net_cls,net_prio")));
        assert_eq!(h.v1("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        assert!(!h.v1.keys().any(|k| k.contains("systemd") || k == "xattr" || k == "rw"));
    }

    #[test]
    fn subtree_mounts_are_skipped_and_the_first_root_mount_wins() {
        let text = "\
1200 1100 0:22 /kubepods.slice/kubepods-pod1.slice /host/cg rw,relatime - cgroup2 cgroup2 rw
1201 1100 0:29 /kubepods/pod1 /host/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct
1202 1100 0:22 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
1203 1100 0:22 / /other/cgroup2 rw,relatime - cgroup2 cgroup2 rw
";
        let h = parse_mountinfo(text);
        assert_eq!(h.v2, Some(p("/sys/fs/cgroup")));
        assert!(h.v1.is_empty());
    }

    #[test]
    fn optional_fields_and_escaped_mount_points() {
        let text = "\
51 23 0:26 / /host/sys\\040fs/cgroup\\134x rw shared:4 master:1 propagate_from:2 - cgroup2 cgroup2 rw
52 23 0:27 / /host/my\\011cpu rw - cgroup cgroup rw,cpu
";
        let h = parse_mountinfo(text);
        assert_eq!(h.v2, Some(p("/host/sys fs/cgroup\\x")));
        assert_eq!(h.v1("cpu"), Some(Path::new("/host/my\tcpu")));
    }

    #[test]
    fn garbage_never_panics() {
        let text =
            "\n-\n1 2 3\n1 2 3 / /x o - \n1 2 3 / /x o -\n\\ \\0 \\777 - cgroup2\n1 2 3 / /a\\7 o - cgroup2 c rw\n";
        let h = parse_mountinfo(text);
        // The last line is well formed; a short escape stays literal.
        assert_eq!(h.v2, Some(p("/a\\7")));
        assert_eq!(unescape("\\777\\12"), p("\\777\\12"));
        assert_eq!(unescape("end\\040"), p("end "));
    }
}

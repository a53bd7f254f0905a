//! One window's counters for one cgroup (or the whole node), gathered from
//! whichever hierarchy has them.
//!
//! PSI exists only in cgroup2. CPU usage exists in cgroup2 `cpu.stat` even
//! without the cpu controller, but throttling there needs the controller,
//! which hybrid hosts keep in v1; memory events likewise. So each field is
//! taken from v2 when v2 has it and from v1 otherwise, and every field fails
//! on its own: a bad `io.pressure` must not cost the CPU numbers.

use std::path::Path;

use super::{
    files::{parse_failure, read_parsed, read_text, relative, ReadError},
    mounts::Hierarchies,
    psi::{parse_psi, PsiTotals},
    stat::{
        parse_cfs_period_us, parse_cfs_quota_us, parse_cpu_max, parse_cpu_stat_v1, parse_cpu_stat_v2,
        parse_cpuacct_usage, parse_memory_events_v2, parse_memory_oom_control_v1, CpuTotals, MemoryTotals,
    },
};

/// Which cgroup version a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CgroupV2,
    CgroupV1,
}

/// Counters of one cgroup at one instant; None = not available there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupSample {
    pub cpu: Option<PsiTotals>,
    pub memory: Option<PsiTotals>,
    pub io: Option<PsiTotals>,
    pub cpu_stat: CpuTotals,
    /// Where the throttling counters came from or, when there are none, the
    /// usage. Values from different sources are not comparable across windows.
    pub cpu_stat_source: Option<Source>,
    pub memory_events: MemoryTotals,
    /// Files that exist but could not be read or parsed.
    pub errors: Vec<ReadError>,
}

/// Node-wide PSI from /proc/pressure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSample {
    pub cpu: Option<PsiTotals>,
    pub memory: Option<PsiTotals>,
    pub io: Option<PsiTotals>,
    pub errors: Vec<ReadError>,
}

/// Reads the counters of the cgroup at `rel` (relative to each hierarchy's
/// root, e.g. "/kubepods.slice/...scope").
pub fn read_cgroup(h: &Hierarchies, rel: &str) -> CgroupSample {
    let mut s = CgroupSample::default();
    let rel = match relative(rel) {
        Ok(r) => r,
        Err(e) => {
            s.errors.push(e);
            return s;
        }
    };
    let v2 = h.v2.as_ref().map(|root| root.join(&rel));
    let v1 = |controller: &str| h.v1(controller).map(|root| root.join(&rel));
    let errors = &mut s.errors;

    if let Some(dir) = &v2 {
        s.cpu = read_parsed(&dir.join("cpu.pressure"), parse_psi, errors);
        s.memory = read_parsed(&dir.join("memory.pressure"), parse_psi, errors);
        s.io = read_parsed(&dir.join("io.pressure"), parse_psi, errors);
    }

    let v2_stat = v2.as_ref().and_then(|d| read_parsed(&d.join("cpu.stat"), parse_cpu_stat_v2, errors));
    match v2_stat {
        Some(t) if t.has_throttling() => {
            s.cpu_stat = t;
            s.cpu_stat_source = Some(Source::CgroupV2);
        }
        _ => {
            s.cpu_stat.usage_usec = v2_stat.and_then(|t| t.usage_usec);
            s.cpu_stat_source = s.cpu_stat.usage_usec.map(|_| Source::CgroupV2);
            let v1_stat = v1("cpu").and_then(|d| read_parsed(&d.join("cpu.stat"), parse_cpu_stat_v1, errors));
            if let Some(t) = v1_stat.filter(CpuTotals::has_throttling) {
                s.cpu_stat = CpuTotals { usage_usec: s.cpu_stat.usage_usec, ..t };
                s.cpu_stat_source = Some(Source::CgroupV1);
            }
        }
    }
    if s.cpu_stat.usage_usec.is_none() {
        let usage = v1("cpuacct").and_then(|d| read_parsed(&d.join("cpuacct.usage"), parse_cpuacct_usage, errors));
        if usage.is_some() {
            s.cpu_stat.usage_usec = usage;
            s.cpu_stat_source = s.cpu_stat_source.or(Some(Source::CgroupV1));
        }
    }

    let v2_events = v2.as_ref().and_then(|d| read_parsed(&d.join("memory.events"), parse_memory_events_v2, errors));
    s.memory_events = match v2_events {
        Some(m) => m,
        None => v1("memory")
            .and_then(|d| read_parsed(&d.join("memory.oom_control"), parse_memory_oom_control_v1, errors))
            .unwrap_or_default(),
    };
    s
}

/// Reads node-wide PSI from a /proc/pressure directory.
pub fn read_node(proc_pressure_dir: &Path) -> NodeSample {
    let mut errors = Vec::new();
    let cpu = read_parsed(&proc_pressure_dir.join("cpu"), parse_psi, &mut errors);
    let memory = read_parsed(&proc_pressure_dir.join("memory"), parse_psi, &mut errors);
    let io = read_parsed(&proc_pressure_dir.join("io"), parse_psi, &mut errors);
    NodeSample { cpu, memory, io, errors }
}

/// CPU limit of a cgroup in cores; Ok(None) when unlimited or unknown. A
/// cgroup2 `cpu.max` wins: a controller lives in one hierarchy only, so if v2
/// has the file, v1 cannot have the controller.
pub fn cpu_limit_cores(h: &Hierarchies, rel: &str) -> Result<Option<f64>, ReadError> {
    let rel = relative(rel)?;
    if let Some(root) = &h.v2 {
        let path = root.join(&rel).join("cpu.max");
        if let Some(text) = read_text(&path)? {
            return parse_cpu_max(&text).map_err(|e| parse_failure(&path, e));
        }
    }
    let Some(dir) = h.v1("cpu").map(|root| root.join(&rel)) else {
        return Ok(None);
    };
    let quota_path = dir.join("cpu.cfs_quota_us");
    let Some(text) = read_text(&quota_path)? else {
        return Ok(None);
    };
    let Some(quota) = parse_cfs_quota_us(&text).map_err(|e| parse_failure(&quota_path, e))? else {
        return Ok(None);
    };
    let period_path = dir.join("cpu.cfs_period_us");
    let Some(text) = read_text(&period_path)? else {
        return Ok(None);
    };
    let period = parse_cfs_period_us(&text).map_err(|e| parse_failure(&period_path, e))?;
    Ok(Some(quota as f64 / period as f64))
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;
    use crate::pressure::mounts::parse_mountinfo;

    const POD: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice";
    const PSI: &str =
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=300\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=100\n";

    fn put(root: &Path, mount: &str, file: &str, text: &str) {
        let dir = root.join(mount).join(POD.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file), text).unwrap();
    }

    /// Hierarchies rooted in `root`, found the same way as on a real host.
    fn hierarchies(root: &Path, mounts: &[(&str, &str, &str)]) -> Hierarchies {
        let text: String = mounts
            .iter()
            .enumerate()
            .map(|(i, (dir, fstype, opts))| {
                let mp = root.join(dir);
                fs::create_dir_all(&mp).unwrap();
                format!("{} 1 0:{i} / {} rw,relatime - {fstype} {fstype} {opts}\n", 30 + i, mp.display())
            })
            .collect();
        parse_mountinfo(&text)
    }

    fn hybrid(root: &Path) -> Hierarchies {
        let mounts = [
            ("unified", "cgroup2", "rw"),
            ("cpu", "cgroup", "rw,cpu"),
            ("cpuacct", "cgroup", "rw,cpuacct"),
            ("memory", "cgroup", "rw,memory"),
            ("systemd", "cgroup", "rw,name=systemd"),
        ];
        hierarchies(root, &mounts)
    }

    fn cpu_totals(usage: u64, periods: u64, throttled: u64, throttled_usec: u64) -> CpuTotals {
        let (nr_periods, nr_throttled) = (Some(periods), Some(throttled));
        CpuTotals { usage_usec: Some(usage), nr_periods, nr_throttled, throttled_usec: Some(throttled_usec) }
    }

    fn psi(some: u64, full: Option<u64>) -> Option<PsiTotals> {
        Some(PsiTotals { some_usec: some, full_usec: full })
    }

    #[test]
    fn hybrid_takes_psi_and_usage_from_v2_and_throttling_and_ooms_from_v1() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hybrid(tmp.path());
        put(tmp.path(), "unified", "cpu.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=300\n");
        put(tmp.path(), "unified", "memory.pressure", PSI);
        put(tmp.path(), "unified", "cpu.stat", "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n");
        put(tmp.path(), "cpu", "cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 7000000\n");
        put(tmp.path(), "cpuacct", "cpuacct.usage", "999000000\n");
        put(tmp.path(), "memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        put(tmp.path(), "cpu", "cpu.cfs_quota_us", "50000\n");
        put(tmp.path(), "cpu", "cpu.cfs_period_us", "100000\n");
        let s = read_cgroup(&h, POD);
        assert_eq!(s.errors, []);
        assert_eq!((s.cpu, s.memory, s.io), (psi(300, None), psi(300, Some(100)), None));
        let want = cpu_totals(5000, 10, 4, 7000);
        assert_eq!((s.cpu_stat, s.cpu_stat_source), (want, Some(Source::CgroupV1)));
        assert_eq!(s.memory_events, MemoryTotals { oom_kill: Some(2), ..MemoryTotals::default() });
        assert_eq!(cpu_limit_cores(&h, POD), Ok(Some(0.5)));
    }

    #[test]
    fn hybrid_cgroup_missing_from_unified_uses_cpuacct() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hybrid(tmp.path());
        put(tmp.path(), "cpuacct", "cpuacct.usage", "999000000\n");
        put(tmp.path(), "cpu", "cpu.cfs_quota_us", "-1\n");
        let s = read_cgroup(&h, POD);
        assert_eq!(s.errors, []);
        assert_eq!((s.cpu, s.memory, s.io), (None, None, None));
        assert_eq!(s.cpu_stat, CpuTotals { usage_usec: Some(999_000), ..CpuTotals::default() });
        assert_eq!(s.cpu_stat_source, Some(Source::CgroupV1));
        assert_eq!(s.memory_events, MemoryTotals::default());
        assert_eq!(cpu_limit_cores(&h, POD), Ok(None));
    }

    #[test]
    fn pure_v2_reads_everything_from_v2() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hierarchies(tmp.path(), &[("cgroup", "cgroup2", "rw,nsdelegate")]);
        for f in ["cpu.pressure", "memory.pressure", "io.pressure"] {
            put(tmp.path(), "cgroup", f, PSI);
        }
        put(tmp.path(), "cgroup", "cpu.stat", "usage_usec 9\nnr_periods 3\nnr_throttled 1\nthrottled_usec 40\n");
        put(tmp.path(), "cgroup", "memory.events", "low 0\nhigh 5\nmax 6\noom 1\noom_kill 1\noom_group_kill 0\n");
        put(tmp.path(), "cgroup", "cpu.max", "20000 100000\n");
        let s = read_cgroup(&h, POD);
        assert_eq!(s.errors, []);
        assert_eq!((s.cpu, s.memory, s.io), (psi(300, Some(100)), psi(300, Some(100)), psi(300, Some(100))));
        let want = cpu_totals(9, 3, 1, 40);
        assert_eq!((s.cpu_stat, s.cpu_stat_source), (want, Some(Source::CgroupV2)));
        assert_eq!(s.memory_events, MemoryTotals { oom: Some(1), oom_kill: Some(1), high: Some(5), max: Some(6) });
        assert_eq!(cpu_limit_cores(&h, POD), Ok(Some(0.2)));
        put(tmp.path(), "cgroup", "cpu.max", "max 100000\n");
        assert_eq!(cpu_limit_cores(&h, POD), Ok(None));
    }

    #[test]
    fn pure_v1_with_comounted_cpu_cpuacct() {
        let tmp = tempfile::tempdir().unwrap();
        let h =
            hierarchies(tmp.path(), &[("cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"), ("memory", "cgroup", "rw,memory")]);
        put(tmp.path(), "cpu,cpuacct", "cpu.stat", "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n");
        put(tmp.path(), "cpu,cpuacct", "cpuacct.usage", "2000\n");
        put(tmp.path(), "memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n");
        let s = read_cgroup(&h, POD);
        assert_eq!(s.errors, []);
        assert_eq!((s.cpu, s.memory, s.io), (None, None, None));
        let want = cpu_totals(2, 0, 0, 0);
        assert_eq!((s.cpu_stat, s.cpu_stat_source), (want, Some(Source::CgroupV1)));
        assert_eq!(s.memory_events, MemoryTotals::default());
        assert_eq!(cpu_limit_cores(&h, POD), Ok(None));
    }

    #[test]
    fn a_bad_file_costs_only_its_own_field() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hybrid(tmp.path());
        put(tmp.path(), "unified", "cpu.pressure", "some avg10=0.00 total=5\nfull avg10=0.00 avg60=0.00\n");
        put(tmp.path(), "unified", "memory.pressure", PSI);
        put(tmp.path(), "unified", "cpu.stat", "usage_usec lots\n");
        put(tmp.path(), "cpu", "cpu.stat", "nr_periods 1\nnr_throttled 1\nthrottled_time 1000\n");
        put(tmp.path(), "cpuacct", "cpuacct.usage", "3000\n");
        // A directory where a file should be: an I/O error other than ENOENT.
        let dir = tmp.path().join("unified").join(POD.trim_start_matches('/'));
        fs::create_dir(dir.join("io.pressure")).unwrap();
        let s = read_cgroup(&h, POD);
        let messages: Vec<String> = s.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        let want = format!(
            "{}: line 2: expected \"full ... total=N\", got \"full avg10=0.00 avg60=0.00\"",
            dir.join("cpu.pressure").display()
        );
        assert_eq!(messages[0], want);
        assert!(messages[1].starts_with(&format!("{}: ", dir.join("io.pressure").display())), "{}", messages[1]);
        assert!(messages[2].starts_with(&format!("{}: line 1: usage_usec", dir.join("cpu.stat").display())));
        assert_eq!((s.cpu, s.memory, s.io), (None, psi(300, Some(100)), None));
        let want = cpu_totals(3, 1, 1, 1);
        assert_eq!((s.cpu_stat, s.cpu_stat_source), (want, Some(Source::CgroupV1)));
    }

    #[test]
    fn dot_dot_is_refused_before_any_read() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hybrid(tmp.path());
        fs::write(tmp.path().join("cpu.pressure"), PSI).unwrap();
        let s = read_cgroup(&h, "/../");
        assert_eq!((s.cpu, s.cpu_stat, s.memory_events), (None, CpuTotals::default(), MemoryTotals::default()));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].path, PathBuf::from("/../"));
        assert!(cpu_limit_cores(&h, "/a/../..").is_err());
    }

    #[test]
    fn node_pressure() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cpu"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n").unwrap();
        fs::write(tmp.path().join("io"), "full avg10=0.00 avg60=0.00 avg300=0.00 total=3\n").unwrap();
        let n = read_node(tmp.path());
        assert_eq!((n.cpu, n.memory, n.io), (psi(12, None), None, None));
        assert_eq!(n.errors.len(), 1);
        assert_eq!(n.errors[0].to_string(), format!("{}: no \"some\" line", tmp.path().join("io").display()));
    }

    /// The real host: whatever its layout, the root cgroup must read cleanly.
    #[test]
    fn this_machine() {
        let h = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let s = read_cgroup(&h, "/");
        eprintln!("hierarchies: {h:?}\nroot cgroup: {s:?}");
        assert_eq!(s.errors, []);
        match &h.v2 {
            Some(v2) => match s.cpu {
                Some(cpu) => assert!(cpu.some_usec > 0, "{cpu:?}"),
                None => assert!(!v2.join("cpu.pressure").exists(), "{} exists but was not read", v2.display()),
            },
            None => {
                eprintln!("no cgroup2 mount in /proc/self/mountinfo: this host has no cgroup PSI");
                assert_eq!((s.cpu, s.memory, s.io), (None, None, None));
            }
        }
        assert!(cpu_limit_cores(&h, "/").is_ok());
        let node = read_node(Path::new("/proc/pressure"));
        eprintln!("node: {node:?}");
        assert_eq!(node.errors, []);
    }
}

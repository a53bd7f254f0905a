//! A CFS quota on an emulated pod, set where this machine's kernel keeps the
//! cpu controller: cgroup2 `cpu.max` when cgroup2 has the controller, else the
//! cgroup v1 cpu hierarchy at the same relative path (hybrid hosts, like this
//! development machine), which the pod's processes then join as well.

use std::path::{Path, PathBuf};

use crate::cluster::{cgroup2_root, remove_cgroup_tree};

pub struct CpuQuota {
    /// The v1 directory the pod's processes must join (None on cgroup2).
    pub v1_dir: Option<PathBuf>,
    /// The topmost v1 directory created, removed on drop.
    v1_created: Option<PathBuf>,
}

/// The cgroup v1 cpu controller's mount point, if any.
pub fn v1_cpu_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let mut post = post.split(' ');
        let (fstype, _source, opts) = (post.next()?, post.next()?, post.next()?);
        (fstype == "cgroup" && pre.get(3) == Some(&"/") && opts.split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(pre[4]))
    })
}

impl CpuQuota {
    /// Limits the cgroup `pod_cgroup` (a cgroup2 directory) to quota/period.
    pub fn apply(pod_cgroup: &Path, quota_us: u64, period_us: u64) -> Self {
        let root = cgroup2_root();
        let rel = pod_cgroup.strip_prefix(&root).expect("pod cgroup under the cgroup2 root");
        let v2_controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if v2_controllers.split_whitespace().any(|c| c == "cpu") {
            let mut dir = root.clone();
            for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                std::fs::write(dir.join("cgroup.subtree_control"), "+cpu").expect("enable the cpu controller");
                dir = dir.join(part);
            }
            std::fs::write(dir.join("cgroup.subtree_control"), "+cpu").expect("enable the cpu controller");
            std::fs::write(pod_cgroup.join("cpu.max"), format!("{quota_us} {period_us}")).expect("cpu.max");
            return Self { v1_dir: None, v1_created: None };
        }
        let mount = v1_cpu_mount().expect("no cpu controller in cgroup2 nor cgroup v1");
        let v1 = mount.join(rel);
        let top = mount.join(rel.components().next().expect("non-empty relative path"));
        std::fs::create_dir_all(&v1).expect("create the v1 cpu cgroup");
        std::fs::write(v1.join("cpu.cfs_period_us"), period_us.to_string()).expect("cpu.cfs_period_us");
        std::fs::write(v1.join("cpu.cfs_quota_us"), quota_us.to_string()).expect("cpu.cfs_quota_us");
        Self { v1_dir: Some(v1), v1_created: Some(top) }
    }

    /// podrun flags that join the quota's cgroup (none on cgroup2: the pod's own cgroup has it).
    pub fn podrun_args(&self) -> Vec<String> {
        match &self.v1_dir {
            Some(d) => vec!["--cgroup-v1".into(), d.display().to_string()],
            None => Vec::new(),
        }
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        if let Some(top) = &self.v1_created {
            // v1 has no cgroup.kill: the test's processes are gone by now; move strays out.
            remove_cgroup_tree(top);
        }
    }
}

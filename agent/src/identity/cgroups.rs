//! cgroup id -> path, kept current from a scan of the cgroup2 tree plus the
//! kernel's mkdir/rmdir events, and remembered for a while after removal so the
//! last window of a deleted pod is still attributed to it.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Deepest directory level scanned (kubepods paths are 4-6 deep).
const MAX_DEPTH: usize = 32;
/// Most cgroups a scan visits, so a pathological tree cannot stall the agent.
const MAX_CGROUPS: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupScanError {
    #[error("cannot read cgroup2 root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    removed_at: Option<Instant>,
}

/// The id -> path table.
#[derive(Debug)]
pub struct CgroupTable {
    root: PathBuf,
    entries: HashMap<u64, Entry>,
    /// How long a removed cgroup stays resolvable.
    retention: Duration,
    last_scan: Option<Instant>,
}

/// What a scan saw, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub cgroups: usize,
    pub unreadable: usize,
    pub truncated: bool,
}

impl CgroupTable {
    pub fn new(root: impl Into<PathBuf>, retention: Duration) -> Self {
        Self { root: root.into(), entries: HashMap::new(), retention, last_scan: None }
    }

    /// Path (relative to the cgroup2 root, starting with '/') of a cgroup id.
    pub fn path(&self, id: u64) -> Option<&str> {
        self.entries.get(&id).map(|e| e.path.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every known cgroup: id, path, and whether it was removed (and is kept
    /// only for its last window).
    pub fn entries(&self) -> impl Iterator<Item = (u64, &str, bool)> + '_ {
        self.entries.iter().map(|(id, e)| (*id, e.path.as_str(), e.removed_at.is_some()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A cgroup was created (kernel event or scan).
    pub fn insert(&mut self, id: u64, path: &str) {
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        self.entries.insert(id, Entry { path, removed_at: None });
    }

    /// A cgroup was removed: keep it resolvable for the retention period. The
    /// event's path (None when it was truncated) is used only for an id the
    /// table did not know.
    pub fn remove(&mut self, id: u64, path: Option<&str>, now: Instant) {
        match self.entries.get_mut(&id) {
            Some(e) => e.removed_at = Some(now),
            None => {
                if let Some(p) = path {
                    let path = if p.starts_with('/') { p.to_string() } else { format!("/{p}") };
                    self.entries.insert(id, Entry { path, removed_at: Some(now) });
                }
            }
        }
    }

    /// Drops removed cgroups older than the retention period.
    pub fn expire(&mut self, now: Instant) {
        let retention = self.retention;
        self.entries.retain(|_, e| e.removed_at.is_none_or(|t| now.duration_since(t) < retention));
    }

    /// Walks the tree and records every cgroup's id. Entries already known are
    /// refreshed; a complete walk also marks known cgroups it did not find as
    /// removed (their rmdir event was lost or events are unavailable), so they
    /// expire like the others.
    pub fn scan(&mut self, now: Instant) -> Result<ScanStats, CgroupScanError> {
        let root_id = std::fs::metadata(&self.root)
            .map_err(|source| CgroupScanError::Root { path: self.root.clone(), source })?
            .ino();
        let mut seen = std::collections::HashSet::new();
        seen.insert(root_id);
        self.insert(root_id, "/");
        let mut stats = ScanStats { cgroups: 1, ..Default::default() };
        let mut stack = vec![(self.root.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let Ok(read) = std::fs::read_dir(&dir) else {
                stats.unreadable += 1;
                continue;
            };
            for entry in read.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                if stats.cgroups >= MAX_CGROUPS {
                    stats.truncated = true;
                    break;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = format!("{rel}/{name}");
                self.insert(meta.ino(), &child);
                seen.insert(meta.ino());
                stats.cgroups += 1;
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), child, depth + 1));
                }
            }
        }
        if !stats.truncated && stats.unreadable == 0 {
            for (id, e) in self.entries.iter_mut() {
                if e.removed_at.is_none() && !seen.contains(id) {
                    e.removed_at = Some(now);
                }
            }
        }
        self.last_scan = Some(now);
        Ok(stats)
    }

    /// Rescans unless one happened within `min_interval`; for ids the events missed.
    pub fn rescan_if_stale(
        &mut self,
        now: Instant,
        min_interval: Duration,
    ) -> Option<Result<ScanStats, CgroupScanError>> {
        if self.last_scan.is_some_and(|t| now.duration_since(t) < min_interval) {
            return None;
        }
        Some(self.scan(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_maps_directory_inodes_to_paths() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("kubepods/burstable/podx");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(dir.path().join("kubepods/cgroup.procs"), "").unwrap();
        let mut t = CgroupTable::new(dir.path(), Duration::from_secs(60));
        let stats = t.scan(Instant::now()).unwrap();
        assert_eq!(stats.cgroups, 4, "root + 3 directories, files ignored");
        let ino = std::fs::metadata(&leaf).unwrap().ino();
        assert_eq!(t.path(ino), Some("/kubepods/burstable/podx"));
        let root = std::fs::metadata(dir.path()).unwrap().ino();
        assert_eq!(t.path(root), Some("/"));
    }

    #[test]
    fn a_complete_scan_retires_cgroups_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let mut t = CgroupTable::new(dir.path(), Duration::from_secs(10));
        let t0 = Instant::now();
        t.scan(t0).unwrap();
        let ino = std::fs::metadata(&a).unwrap().ino();
        std::fs::remove_dir(&a).unwrap();
        t.scan(t0).unwrap();
        assert_eq!(t.path(ino), Some("/a"), "still resolvable during retention");
        t.expire(t0 + Duration::from_secs(10));
        assert_eq!(t.path(ino), None);
    }

    #[test]
    fn removed_cgroups_resolve_until_retention_expires() {
        let mut t = CgroupTable::new("/nonexistent", Duration::from_secs(10));
        let t0 = Instant::now();
        t.insert(42, "/kubepods/pod1");
        t.remove(42, Some("/kubepods/pod1"), t0);
        t.expire(t0 + Duration::from_secs(9));
        assert_eq!(t.path(42), Some("/kubepods/pod1"));
        t.expire(t0 + Duration::from_secs(10));
        assert_eq!(t.path(42), None);
    }

    #[test]
    fn removal_of_unseen_cgroup_still_records_its_path() {
        let mut t = CgroupTable::new("/nonexistent", Duration::from_secs(10));
        t.remove(7, Some("/short/lived"), Instant::now());
        assert_eq!(t.path(7), Some("/short/lived"));
        t.remove(8, None, Instant::now());
        assert_eq!(t.path(8), None, "a truncated path is never stored");
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let mut t = CgroupTable::new("/definitely/not/here", Duration::from_secs(1));
        let err = t.scan(Instant::now()).unwrap_err().to_string();
        assert!(err.contains("/definitely/not/here"), "{err}");
    }

    #[test]
    fn rescan_is_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = CgroupTable::new(dir.path(), Duration::from_secs(60));
        let now = Instant::now();
        assert!(t.rescan_if_stale(now, Duration::from_secs(1)).is_some());
        assert!(t.rescan_if_stale(now + Duration::from_millis(500), Duration::from_secs(1)).is_none());
        assert!(t.rescan_if_stale(now + Duration::from_secs(2), Duration::from_secs(1)).is_some());
    }
}

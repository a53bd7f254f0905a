//! Per-workload baseline of the external destinations it talks to, for
//! "unexpected egress": destinations seen during a learning period after the
//! workload's first observation are learned silently; a new one after it is
//! reported once and then learned, so it is not reported again.
//!
//! Choices:
//! - A destination is its FQDN when the client resolved one (addresses behind
//!   a name rotate), else its address, with the port.
//! - A missing file loads as an empty baseline (a first start); a file that
//!   does not parse, or has another format version, is an error naming the
//!   path, and the caller decides whether to start fresh.
//! - Saving writes a temporary file next to the target, fsyncs it, renames it
//!   over the target and fsyncs the directory, so a crash leaves the old or
//!   the new file, never half of one.
//! - Bounds: a workload beyond `max_workloads` is not tracked; a destination
//!   beyond `max_destinations` of its workload is neither learned nor
//!   reported, as it could not be remembered and would be reported on every
//!   flow. Both are counted.
//! - The learning period and bounds are configuration, not saved.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{gaps::normalize_fqdn, owners::Workload};

pub const FORMAT_VERSION: u32 = 1;
pub const DEFAULT_LEARNING_NANOS: u64 = 24 * 3600 * 1_000_000_000;
pub const DEFAULT_MAX_WORKLOADS: usize = 10_000;
pub const DEFAULT_MAX_DESTINATIONS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalDest {
    Ip { ip: IpAddr, port: u16 },
    Fqdn { name: String, port: u16 },
}

impl ExternalDest {
    /// By FQDN when one is known, else by address.
    pub fn new(ip: IpAddr, fqdn: Option<&str>, port: u16) -> Self {
        match fqdn.map(normalize_fqdn).filter(|n| !n.is_empty()) {
            Some(name) => ExternalDest::Fqdn { name, port },
            None => ExternalDest::Ip { ip: ip.to_canonical(), port },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexpectedEgress {
    pub workload: Workload,
    pub dest: ExternalDest,
    pub seen: u64,
    /// When the workload was first observed.
    pub workload_first_seen: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("baseline {} is corrupt: {source}", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("baseline {} has format version {found}, expected {FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineConfig {
    pub learning_nanos: u64,
    pub max_workloads: usize,
    pub max_destinations: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            learning_nanos: DEFAULT_LEARNING_NANOS,
            max_workloads: DEFAULT_MAX_WORKLOADS,
            max_destinations: DEFAULT_MAX_DESTINATIONS,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Learned {
    first_seen: u64,
    destinations: BTreeSet<ExternalDest>,
}

#[derive(Debug, Clone, Default)]
pub struct Baseline {
    config: BaselineConfig,
    workloads: BTreeMap<Workload, Learned>,
    dropped_workloads: u64,
    dropped_destinations: u64,
}

/// The file: workloads as a list, as JSON object keys must be strings.
#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    workloads: Vec<FileWorkload>,
}

#[derive(Serialize, Deserialize)]
struct FileWorkload {
    namespace: String,
    kind: String,
    name: String,
    first_seen: u64,
    destinations: Vec<ExternalDest>,
}

/// Only the version, read first so a newer format is reported as such.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

impl Baseline {
    pub fn new(config: BaselineConfig) -> Self {
        Baseline { config, ..Baseline::default() }
    }

    pub fn with_config(mut self, config: BaselineConfig) -> Self {
        self.config = config;
        self
    }

    /// The next destination of `workload`: Some the first time a destination
    /// is seen after the learning period.
    pub fn observe(
        &mut self,
        workload: &Workload,
        dest: &ExternalDest,
        now_unix_nano: u64,
    ) -> Option<UnexpectedEgress> {
        if !self.workloads.contains_key(workload) && self.workloads.len() >= self.config.max_workloads {
            self.dropped_workloads += 1;
            return None;
        }
        let learned = self
            .workloads
            .entry(workload.clone())
            .or_insert_with(|| Learned { first_seen: now_unix_nano, destinations: BTreeSet::new() });
        if learned.destinations.contains(dest) {
            return None;
        }
        if learned.destinations.len() >= self.config.max_destinations {
            self.dropped_destinations += 1;
            return None;
        }
        learned.destinations.insert(dest.clone());
        let learning = now_unix_nano < learned.first_seen.saturating_add(self.config.learning_nanos);
        (!learning).then(|| UnexpectedEgress {
            workload: workload.clone(),
            dest: dest.clone(),
            seen: now_unix_nano,
            workload_first_seen: learned.first_seen,
        })
    }

    /// Whether `dest` is already known for `workload` (observing it again changes nothing).
    pub fn knows(&self, workload: &Workload, dest: &ExternalDest) -> bool {
        self.workloads.get(workload).is_some_and(|l| l.destinations.contains(dest))
    }

    /// Whether `workload` is still learning at `now_unix_nano` (true for one
    /// never seen).
    pub fn is_learning(&self, workload: &Workload, now_unix_nano: u64) -> bool {
        self.workloads
            .get(workload)
            .is_none_or(|l| now_unix_nano < l.first_seen.saturating_add(self.config.learning_nanos))
    }

    pub fn destinations(&self, workload: &Workload) -> impl Iterator<Item = &ExternalDest> {
        self.workloads.get(workload).into_iter().flat_map(|l| l.destinations.iter())
    }

    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// Observations of workloads that did not fit.
    pub fn dropped_workloads(&self) -> u64 {
        self.dropped_workloads
    }

    /// New destinations that did not fit in their workload's baseline.
    pub fn dropped_destinations(&self) -> u64 {
        self.dropped_destinations
    }

    /// Forgets a workload (deleted): if it comes back it learns again.
    pub fn forget(&mut self, workload: &Workload) -> bool {
        self.workloads.remove(workload).is_some()
    }

    /// Loads with the default configuration; a missing file is an empty
    /// baseline.
    pub fn load(path: &Path) -> Result<Self, BaselineError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Baseline::default()),
            Err(source) => return Err(BaselineError::Io { path: path.to_owned(), source }),
        };
        let corrupt = |source| BaselineError::Corrupt { path: path.to_owned(), source };
        let VersionOnly { version } = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if version != FORMAT_VERSION {
            return Err(BaselineError::Version { path: path.to_owned(), found: version });
        }
        let file: FileFormat = serde_json::from_slice(&bytes).map_err(corrupt)?;
        let mut baseline = Baseline::default();
        for w in file.workloads {
            let workload = Workload { namespace: w.namespace, kind: w.kind, name: w.name };
            let learned = Learned { first_seen: w.first_seen, destinations: w.destinations.into_iter().collect() };
            baseline.workloads.insert(workload, learned);
        }
        Ok(baseline)
    }

    /// Writes atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let io_err = |source| BaselineError::Io { path: path.to_owned(), source };
        let file = FileFormat {
            version: FORMAT_VERSION,
            workloads: self
                .workloads
                .iter()
                .map(|(w, l)| FileWorkload {
                    namespace: w.namespace.clone(),
                    kind: w.kind.clone(),
                    name: w.name.clone(),
                    first_seen: l.first_seen,
                    destinations: l.destinations.iter().cloned().collect(),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&file).map_err(|e| io_err(io::Error::other(e)))?;
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let written = (|| {
            let mut out = File::create(&tmp)?;
            out.write_all(&json)?;
            out.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            // Best effort: the temporary file is garbage either way.
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)
    }
}

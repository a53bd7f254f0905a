//! The collector's durable memory of what it admitted: per agent run (node,
//! boot id, epoch), the last sequence. Written (atomically, fsynced) before a
//! batch is acknowledged, so a restarted collector recognises
//! the replays of batches it already admitted. Writes are grouped: every batch
//! admitted while a write is under way goes into the next one.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use podlens_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

const FILE: &str = "admitted.json";

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a podlens state file: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub node: String,
    pub boot_id: String,
    pub agent_epoch_unix_nano: u64,
    pub last_sequence: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    nodes: Vec<Admitted>,
}

type RunKey = (String, String, u64);

fn key(node: &pb::NodeIdentity) -> RunKey {
    (node.name.clone(), node.boot_id.clone(), node.agent_epoch_unix_nano)
}

/// Runs kept per node.
const RUNS_PER_NODE: usize = 4;

pub struct DedupStore {
    dir: PathBuf,
    table: Mutex<BTreeMap<RunKey, Admitted>>,
    /// What the last successful write holds: acknowledgements never go beyond it.
    durable: Mutex<BTreeMap<RunKey, u64>>,
    /// Bumped by every change; the writer publishes the highest it wrote.
    generation: AtomicU64,
    written: watch::Sender<u64>,
    dirty: Notify,
    pub write_errors: AtomicU64,
}

impl DedupStore {
    /// Opens (creating) `dir` and loads what an earlier run admitted.
    pub fn open(dir: &Path) -> Result<(Arc<Self>, Vec<Admitted>), DedupError> {
        std::fs::create_dir_all(dir).map_err(|source| DedupError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join(FILE);
        let nodes = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: StateFile = serde_json::from_slice(&bytes)
                    .map_err(|e| DedupError::Parse { path: path.clone(), message: e.to_string() })?;
                f.nodes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(DedupError::Read { path, source }),
        };
        let table: BTreeMap<RunKey, Admitted> =
            nodes.iter().map(|a| ((a.node.clone(), a.boot_id.clone(), a.agent_epoch_unix_nano), a.clone())).collect();
        let durable = table.iter().map(|(k, a)| (k.clone(), a.last_sequence)).collect();
        let (written, _) = watch::channel(0);
        let store = Arc::new(Self {
            dir: dir.to_path_buf(),
            table: Mutex::new(table),
            durable: Mutex::new(durable),
            generation: AtomicU64::new(0),
            written,
            dirty: Notify::new(),
            write_errors: AtomicU64::new(0),
        });
        tokio::spawn(writer(store.clone()));
        Ok((store, nodes))
    }

    /// Records an admitted batch and waits until a write that includes it is
    /// on disk. A failed write is logged and counted; the batch proceeds (an
    /// unwritable disk costs duplicate detection after a restart, not data).
    pub async fn admitted(&self, node: &pb::NodeIdentity, sequence: u64) {
        let generation = {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let entry = t.entry(key(node)).or_insert_with(|| Admitted {
                node: node.name.clone(),
                boot_id: node.boot_id.clone(),
                agent_epoch_unix_nano: node.agent_epoch_unix_nano,
                last_sequence: 0,
            });
            entry.last_sequence = entry.last_sequence.max(sequence);
            // keep the newest runs of this node
            let mut runs: Vec<RunKey> = t.keys().filter(|k| k.0 == node.name).cloned().collect();
            if runs.len() > RUNS_PER_NODE {
                runs.sort_by_key(|k| k.2);
                for old in &runs[..runs.len() - RUNS_PER_NODE] {
                    t.remove(old);
                }
            }
            self.generation.fetch_add(1, Ordering::AcqRel) + 1
        };
        self.dirty.notify_one();
        let mut rx = self.written.subscribe();
        let _ = rx.wait_for(|w| *w >= generation).await;
    }

    /// Forgets every run of these nodes (see `Hub::forget_nodes_idle_since`).
    pub fn forget(&self, nodes: &[String]) {
        if nodes.is_empty() {
            return;
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|k, _| !nodes.contains(&k.0));
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(t);
        self.dirty.notify_one();
    }

    /// The highest sequence of this run known to be on disk.
    pub fn durable(&self, node: &pb::NodeIdentity) -> u64 {
        self.durable.lock().unwrap_or_else(|e| e.into_inner()).get(&key(node)).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> (u64, Vec<Admitted>) {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), t.values().cloned().collect())
    }
}

/// Writes the table whenever it changed, as one atomic replace.
async fn writer(store: Arc<DedupStore>) {
    loop {
        store.dirty.notified().await;
        let (generation, nodes) = store.snapshot();
        let bytes = serde_json::to_vec(&StateFile { version: 1, nodes: nodes.clone() }).unwrap_or_default();
        let dir = store.dir.clone();
        let result = tokio::task::spawn_blocking(move || write_atomically(&dir, &bytes)).await;
        match result {
            Ok(Ok(())) => {
                let mut durable = store.durable.lock().unwrap_or_else(|e| e.into_inner());
                *durable = nodes
                    .iter()
                    .map(|a| ((a.node.clone(), a.boot_id.clone(), a.agent_epoch_unix_nano), a.last_sequence))
                    .collect();
            }
            Ok(Err(e)) => {
                store.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %store.dir.display(), error = %e, "writing the admitted-batch state failed");
            }
            Err(e) => tracing::error!(error = %e, "state writer task failed"),
        }
        store.written.send_replace(generation);
        if store.generation.load(Ordering::Acquire) > generation {
            store.dirty.notify_one();
        }
    }
}

fn write_atomically(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, epoch: u64) -> pb::NodeIdentity {
        pb::NodeIdentity { name: name.into(), boot_id: "b".into(), agent_epoch_unix_nano: epoch, ..Default::default() }
    }

    #[tokio::test]
    async fn admitted_batches_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = DedupStore::open(dir.path()).unwrap();
            assert!(loaded.is_empty());
            store.admitted(&node("a", 1), 5).await;
            store.admitted(&node("b", 2), 9).await;
            store.admitted(&node("a", 1), 6).await;
        }
        let (_, mut loaded) = DedupStore::open(dir.path()).unwrap();
        loaded.sort_by(|x, y| (&x.node, x.agent_epoch_unix_nano).cmp(&(&y.node, y.agent_epoch_unix_nano)));
        assert_eq!(loaded.len(), 2);
        assert_eq!((loaded[0].node.as_str(), loaded[0].last_sequence, loaded[0].agent_epoch_unix_nano), ("a", 6, 1));
        assert_eq!((loaded[1].node.as_str(), loaded[1].last_sequence), ("b", 9));
    }

    #[tokio::test]
    async fn forgotten_nodes_leave_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DedupStore::open(dir.path()).unwrap();
        store.admitted(&node("a", 1), 5).await;
        store.admitted(&node("a", 2), 2).await;
        store.admitted(&node("b", 1), 9).await;
        store.forget(&["a".to_string()]);
        // returns once a write at least as new as the forgetting is on disk
        store.admitted(&node("b", 1), 10).await;
        let (_, loaded) = DedupStore::open(dir.path()).unwrap();
        let kept: Vec<(&str, u64)> = loaded.iter().map(|a| (a.node.as_str(), a.last_sequence)).collect();
        assert_eq!(kept, [("b", 10)]);
    }

    #[tokio::test]
    async fn runs_are_kept_apart_and_sequences_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DedupStore::open(dir.path()).unwrap();
        store.admitted(&node("a", 1), 9).await;
        store.admitted(&node("a", 2), 3).await;
        store.admitted(&node("a", 1), 7).await;
        assert_eq!((store.durable(&node("a", 1)), store.durable(&node("a", 2))), (9, 3));
        assert_eq!(store.durable(&node("a", 3)), 0);
        let (_, loaded) = DedupStore::open(dir.path()).unwrap();
        assert_eq!(loaded.len(), 2);
    }

    #[tokio::test]
    async fn concurrent_admissions_share_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DedupStore::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { s.admitted(&node(&format!("n{}", i % 5), 1), i).await }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (_, loaded) = DedupStore::open(dir.path()).unwrap();
        assert_eq!(loaded.len(), 5);
        assert_eq!(store.write_errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(async { DedupStore::open(dir.path()).err().unwrap() });
        assert!(err.to_string().contains("admitted.json"), "{err}");
    }
}

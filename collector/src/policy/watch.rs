//! Keeps the policy detector's cluster view current from a manifests
//! directory and its egress baseline on disk.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};

use super::detector::{ClusterState, PolicyDetector};
use crate::{cluster::manifests, hub::Hub};

/// How often the manifests are read again and the baseline written.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);

fn load(dir: &std::path::Path) -> Result<ClusterState> {
    let m = manifests::load_dir(dir).with_context(|| format!("--manifests {}", dir.display()))?;
    let state = ClusterState::from_manifests(&m);
    for e in &state.errors {
        tracing::warn!(error = %e, "manifest or policy left out");
    }
    tracing::info!(
        dir = %dir.display(), pods = m.pods.len(), policies = m.policies.len(), services = m.services.len(),
        errors = state.errors.len(), "cluster view loaded"
    );
    Ok(state)
}

/// Loads the manifests and the baseline (fails on an unreadable directory or
/// a corrupt baseline: both would silently change what gets reported) and
/// turns the detector on.
pub fn start(hub: &Hub, dir: PathBuf, baseline: Option<PathBuf>) -> Result<()> {
    let state = load(&dir)?;
    let detector = PolicyDetector::new(state, baseline.as_deref())
        .context("loading the egress baseline (delete the file to start learning afresh)")?;
    hub.set_policy_detector(detector);
    Ok(())
}

/// Reloads the manifests and writes the baseline every [`RELOAD_EVERY`]
/// until `stop`, then writes the baseline once more.
pub async fn run(hub: Arc<Hub>, dir: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let reloaded = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || load(&dir)
        })
        .await;
        match reloaded {
            Ok(Ok(state)) => {
                hub.with_policy_detector(|d| d.set_state(state));
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "manifests not reloaded; keeping the last view"),
            Err(e) => tracing::warn!(error = %e, "manifest reload task failed"),
        }
        persist(&hub);
    }
    persist(&hub);
}

fn persist(hub: &Hub) {
    if let Some(Err(e)) = hub.with_policy_detector(|d| d.persist()) {
        tracing::warn!(error = %e, "egress baseline not written");
    }
}

//! Keeps the policy detector's cluster view current from a manifests
//! directory and its egress baseline on disk.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};

use super::detector::{ClusterState, PolicyDetector};
use crate::{cluster::manifests, hub::Hub};

/// How often the manifests are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// How often a changed egress baseline is written: an alert is never repeated
/// after a restart unless the collector died within this of raising it.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);

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
pub fn start(
    hub: &Hub,
    dir: PathBuf,
    baseline: Option<PathBuf>,
    learning: Duration,
    retention: Duration,
) -> Result<()> {
    let state = load(&dir)?;
    let detector = PolicyDetector::new(state, baseline.as_deref())
        .context("loading the egress baseline (delete the file to start learning afresh)")?
        .with_learning(learning)
        .with_retention(retention);
    hub.set_policy_detector(detector);
    Ok(())
}

/// Reloads the manifests every [`RELOAD_EVERY`] and writes a changed
/// baseline every [`SAVE_EVERY`] until `stop`, then writes it once more.
pub async fn run(hub: Arc<Hub>, dir: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    let mut save = tokio::time::interval(SAVE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = save.tick() => {
                persist(&hub).await;
                continue;
            }
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
    }
    persist(&hub).await;
}

pub(super) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // the guard wait_for returns must not live across the select's other branches
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

pub(super) async fn persist(hub: &Hub) {
    let Some(Some((baseline, path))) = hub.with_policy_detector(|d| d.baseline_to_save()) else { return };
    match tokio::task::spawn_blocking(move || baseline.save(&path)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "egress baseline not written"),
        Err(e) => tracing::warn!(error = %e, "egress baseline writer failed"),
    }
}

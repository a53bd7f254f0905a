//! Keeps the policy detector's cluster view current from the Kubernetes API
//! (the live counterpart of [`super::watch`], which reads a manifests directory).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::time::MissedTickBehavior;

use super::detector::{ClusterState, PolicyDetector};
use super::watch::{persist, stopped, SAVE_EVERY};
use crate::cluster::{kube::KubeCluster, manifests::Manifests};
use crate::hub::Hub;

/// The cluster view is rebuilt at most this often: a rollout changes many pods within seconds, and
/// each rebuild re-indexes the whole cluster.
pub const REBUILD_EVERY: Duration = Duration::from_secs(10);
/// While waiting for the first lists, which kinds are still missing is logged this often.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// The detector to hand to [`run`], with an empty view until the API is listed. Built up front so a
/// corrupt baseline stops the collector at startup, as it does with --manifests, rather than after
/// the first sync.
pub fn prepare(baseline: Option<PathBuf>, learning: Duration, retention: Duration) -> Result<PolicyDetector> {
    let empty = ClusterState::from_manifests(&Manifests::default());
    Ok(PolicyDetector::new(empty, baseline.as_deref())
        .context("loading the egress baseline (delete the file to start learning afresh)")?
        .with_learning(learning)
        .with_retention(retention))
}

/// Watches the cluster; once every kind is listed, installs `detector` with that view in `hub` (not
/// before: a partial view would report every unlisted pod as unprotected), then rebuilds the view at
/// most every [`REBUILD_EVERY`] after a change and writes a changed baseline every [`SAVE_EVERY`]
/// until `stop`, then once more. API errors are logged and retried by the watchers, never fatal.
pub async fn run(
    hub: Arc<Hub>,
    client: kube::Client,
    detector: PolicyDetector,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let cluster = Arc::new(KubeCluster::start(client));
    let mut changes = cluster.changes();
    let mut waiting = tokio::time::interval(WAIT_LOG_EVERY);
    waiting.tick().await;
    while !cluster.synced() {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            Ok(()) = changes.changed() => {}
            _ = waiting.tick() => tracing::info!(
                waiting_for = ?cluster.unsynced(),
                "policy detector waits for the first list of these kinds (needs cluster-wide list/watch)"
            ),
        }
    }
    let mut detector = Some(detector);
    let mut rebuild = tokio::time::interval(REBUILD_EVERY);
    rebuild.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut save = tokio::time::interval(SAVE_EVERY);
    // the first build happens at once: the interval's first tick is immediate
    let (mut dirty, mut last_errors) = (true, Vec::new());
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = save.tick() => persist(&hub).await,
            Ok(()) = changes.changed() => dirty = true,
            _ = rebuild.tick(), if dirty => {
                dirty = false;
                let Some(state) = build(&cluster, &mut last_errors).await else {
                    dirty = true;
                    continue;
                };
                match detector.take() {
                    Some(mut d) => {
                        d.set_state(state);
                        hub.set_policy_detector(d);
                        tracing::info!("policy detector started from the Kubernetes API");
                    }
                    None => {
                        hub.with_policy_detector(|d| d.set_state(state));
                    }
                }
            }
        }
    }
    persist(&hub).await;
}

/// Snapshot and index off the async workers: both walk every object in the cluster.
async fn build(cluster: &Arc<KubeCluster>, last_errors: &mut Vec<String>) -> Option<ClusterState> {
    let cluster = cluster.clone();
    let built = tokio::task::spawn_blocking(move || {
        let m = cluster.snapshot();
        (ClusterState::from_manifests(&m), m.pods.len(), m.policies.len(), m.services.len())
    })
    .await;
    let (state, pods, policies, services) = match built {
        Ok(built) => built,
        Err(e) => {
            tracing::warn!(error = %e, "cluster view rebuild failed; keeping the last view");
            return None;
        }
    };
    // Rebuilt every few seconds, so only problems not reported last time are logged.
    for e in state.errors.iter().filter(|e| !last_errors.contains(e)) {
        tracing::warn!(error = %e, "policy left out");
    }
    last_errors.clone_from(&state.errors);
    tracing::debug!(pods, policies, services, errors = state.errors.len(), "cluster view rebuilt from the API");
    Some(state)
}

//! The agent's own HTTP endpoints: /metrics (Prometheus text format),
//! /healthz (the pipeline keeps draining windows) and /readyz (every
//! readiness latch released). Separate from the Observe API, so a scrape
//! never needs the consumer token.

pub mod metrics;
pub mod process;
pub mod readiness;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use self::readiness::Readiness;
use crate::export::Exporter;

/// What the pipeline reports at the end of every window.
#[derive(Debug, Clone, Default)]
pub struct WindowStats {
    /// Every loss and activity counter: (source, reason, cumulative total).
    pub counters: Vec<(&'static str, &'static str, u64)>,
    /// Records produced since start, per kind.
    pub records: Vec<(&'static str, u64)>,
    pub windows: u64,
    /// Distinct flows drained from the kernel map in the last window.
    pub flow_map_entries: u64,
    /// TCP connections whose initiator is remembered.
    pub tcp_connections_tracked: u64,
    pub last_window_unix_seconds: u64,
}

/// State shared by the pipeline, the exporter and the HTTP endpoints.
pub struct Telemetry {
    pub ready: Readiness,
    pub node: String,
    pub flow_map_capacity: u64,
    window: Mutex<WindowStats>,
    /// When the pipeline last finished a window (or started).
    last_window: Mutex<Instant>,
    /// The pipeline is unhealthy after this long without a window.
    stall_after: Duration,
    pub exporter: Option<Arc<Exporter>>,
    /// What this agent runs with: (feature, state), e.g. ("sched", "schedinfo").
    features: Mutex<Vec<(String, String)>>,
}

impl Telemetry {
    /// Records how a feature runs on this node (replacing an earlier state).
    pub fn set_feature(&self, feature: &str, state: &str) {
        let mut f = self.features.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|(name, _)| name != feature);
        f.push((feature.to_owned(), state.to_owned()));
    }

    pub fn features(&self) -> Vec<(String, String)> {
        self.features.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `interval`: the window length; a pipeline silent for three of them
    /// (at least 30 s) is reported unhealthy.
    pub fn new(node: &str, flow_map_capacity: u64, interval: Duration, exporter: Option<Arc<Exporter>>) -> Self {
        Telemetry {
            ready: Readiness::default(),
            node: node.to_owned(),
            flow_map_capacity,
            window: Mutex::new(WindowStats::default()),
            last_window: Mutex::new(Instant::now()),
            stall_after: (interval * 3).max(Duration::from_secs(30)),
            exporter,
            features: Mutex::new(Vec::new()),
        }
    }

    pub fn window_done(&self, stats: WindowStats) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        *self.last_window.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn window(&self) -> WindowStats {
        self.window.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// None when healthy, else why not.
    pub fn unhealthy(&self) -> Option<String> {
        let since = self.last_window.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        (since > self.stall_after).then(|| format!("no window drained for {since:?} (limit {:?})", self.stall_after))
    }
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics::render(&t))
}

async fn healthz(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    match t.unhealthy() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    let pending: Vec<&str> = t.ready.pending().into_iter().map(|l| l.name()).collect();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for: {}\n", pending.join(", ")))
    }
}

pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(telemetry)
}

/// Binds `addr` now (a taken port fails startup) and serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = async move { axum::serve(listener, router(telemetry)).with_graceful_shutdown(shutdown).await };
    Ok((local, serve))
}

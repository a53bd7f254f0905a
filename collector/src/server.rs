//! Serving the gRPC APIs: the consumer API (Observe, Query) behind consumer
//! authentication, and Ingest for agents; both with gRPC health and
//! reflection, over TLS (reloading certificates) or, when explicitly chosen,
//! plaintext.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use podlens_proto::v1::{
    ingest_server::IngestServer, observe_server::ObserveServer, query_server::QueryServer, FILE_DESCRIPTOR_SET,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::Routes, transport::Server};

use crate::{
    auth::ConsumerAuth,
    dedup::DedupStore,
    hub::Hub,
    ingest::{IngestService, DEFAULT_MAX_CONNECTION_AGE, MAX_BATCH_BYTES},
    observe::ObserveService,
    query::QueryService,
    tls::{incoming, ReloadingServerTls},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound listener, so callers learn the port (and bind errors) before serving.
pub struct Listener {
    listener: TcpListener,
}

/// Counters of a listener, shared with /metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// TLS handshakes that failed (no, expired or untrusted client certificate, ...).
    pub tls_rejected: Arc<AtomicU64>,
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn serve(
        self,
        routes: Routes,
        tls: Option<Arc<ReloadingServerTls>>,
        stats: Arc<ListenerStats>,
        max_age: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let mut server = Server::builder()
            // Dead peers are found even when nothing is sent (half-open connections).
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            // Calls started after this age go over a new connection (GOAWAY),
            // so a new TLS handshake; running streams are not cut here (the
            // Ingest service ends its own streams at their age).
            .max_connection_age(max_age);
        let router = server.add_routes(routes);
        match tls {
            Some(tls) => {
                let connections = incoming(self.listener, tls, stats.tls_rejected.clone());
                router.serve_with_incoming_shutdown(connections, shutdown).await?
            }
            None => router.serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown).await?,
        }
        Ok(())
    }

    /// Serves Observe and Query (behind `auth`) plus health and reflection
    /// until `shutdown` resolves.
    pub async fn serve_consumers(
        self,
        hub: Arc<Hub>,
        auth: ConsumerAuth,
        tls: Option<Arc<ReloadingServerTls>>,
        stats: Arc<ListenerStats>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ObserveServer<ObserveService>>().await;
        health.set_serving::<QueryServer<QueryService>>().await;
        let a = auth.clone();
        let observe = ObserveServer::with_interceptor(ObserveService::new(hub.clone()), move |req| {
            a.check(&req)?;
            Ok(req)
        });
        let query = QueryServer::with_interceptor(QueryService::new(hub, env!("CARGO_PKG_VERSION")), move |req| {
            auth.check(&req)?;
            Ok(req)
        });
        let mut routes = Routes::new(health_service);
        routes = routes.add_service(reflection()?).add_service(observe).add_service(query);
        self.serve(routes, tls, stats, DEFAULT_MAX_CONNECTION_AGE, shutdown).await
    }

    /// Serves Ingest (agents; TLS with required client certificates unless
    /// plaintext was chosen) plus health and reflection.
    /// Ingest streams end (UNAVAILABLE, nothing more acknowledged) when
    /// `shutdown` flips; the listener closes then too.
    pub async fn serve_ingest(
        self,
        hub: Arc<Hub>,
        store: Option<Arc<DedupStore>>,
        tls: Option<Arc<ReloadingServerTls>>,
        stats: Arc<ListenerStats>,
        max_age: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<IngestServer<IngestService>>().await;
        let service = IngestService::new(hub, store, shutdown.clone()).with_max_age(max_age);
        let ingest = IngestServer::new(service).max_decoding_message_size(MAX_BATCH_BYTES);
        let routes = Routes::new(health_service).add_service(reflection()?).add_service(ingest);
        let mut stop = shutdown;
        self.serve(routes, tls, stats, max_age, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    }
}

fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ServeError,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

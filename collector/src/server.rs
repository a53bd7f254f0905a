//! Serving the consumer API (Observe) with gRPC health and reflection.

use std::{net::SocketAddr, sync::Arc};

use podlens_proto::v1::{observe_server::ObserveServer, FILE_DESCRIPTOR_SET};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{hub::Hub, observe::ObserveService};

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

impl Listener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves Observe, health and reflection until `shutdown` resolves.
    pub async fn serve_observe(
        self,
        hub: Arc<Hub>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ObserveServer<ObserveService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()?;
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ObserveServer::new(ObserveService::new(hub)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await?;
        Ok(())
    }
}

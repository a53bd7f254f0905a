//! TLS for both ends of podlens's gRPC: rustls server configurations rebuilt
//! when the certificate files change (as Kubernetes Secret updates do), the
//! TLS accept loop handed to tonic, and the client configuration for agents
//! and the CLI.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::Stream;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path}: {message}")]
    Pem { what: &'static str, path: PathBuf, message: String },
    #[error("{what} {path} holds no certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("TLS configuration from {cert} and {key}: {message}")]
    Config { cert: PathBuf, key: PathBuf, message: String },
}

/// Whether clients must present a certificate signed by the client CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// mTLS: no certificate, no connection (agents).
    Required,
    /// A certificate is verified when presented; callers may authenticate
    /// otherwise (a bearer token) when it is not (consumers).
    Optional,
    /// No client certificates are asked for.
    None,
}

/// Where a server's TLS material lives.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that signs client certificates.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|e| TlsError::Pem { what, path: path.to_path_buf(), message: e.to_string() })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTlsFiles {
    /// Builds a rustls configuration from the files as they are now.
    pub fn build(&self) -> Result<ServerConfig, TlsError> {
        let certs = load_certs("certificate", &self.cert)?;
        let key = load_key(&self.key)?;
        let config_err = |message: String| TlsError::Config { cert: self.cert.clone(), key: self.key.clone(), message };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(e.to_string()))?;
        let builder = match (&self.client_ca, self.client_auth) {
            (Some(ca), ClientAuth::Required | ClientAuth::Optional) => {
                let roots = Arc::new(load_roots("client CA", ca)?);
                let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                if self.client_auth == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                builder.with_client_cert_verifier(verifier.build().map_err(|e| config_err(e.to_string()))?)
            }
            (None, ClientAuth::Required) => {
                return Err(config_err("client certificates are required but no client CA is configured".into()))
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| config_err(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn stamp(&self) -> Vec<Option<SystemTime>> {
        let paths = [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()];
        paths
            .into_iter()
            .flatten()
            // Kubernetes swaps a ..data symlink: metadata() follows it.
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// A server configuration that follows its files: checked at most once a
/// second when a connection arrives, rebuilt when any file changed. A broken
/// update keeps the previous configuration and is logged.
pub struct ReloadingServerTls {
    files: ServerTlsFiles,
    state: Mutex<Loaded>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// How often the files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl ReloadingServerTls {
    pub fn load(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let config = Arc::new(files.build()?);
        let stamp = files.stamp();
        Ok(Self { files, state: Mutex::new(Loaded { config, stamp, checked: Instant::now() }) })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != s.stamp {
                match self.files.build() {
                    Ok(c) => {
                        s.config = Arc::new(c);
                        s.stamp = stamp;
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "TLS certificate update rejected; keeping the previous one"),
                }
            }
        }
        s.config.clone()
    }
}

/// Completed TLS handshakes from `listener`, for `Server::serve_with_incoming`.
/// Handshakes run concurrently with a timeout; a failed one is logged and
/// counted in `rejected` (a bad client never stops the listener).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingServerTls>,
    rejected: Arc<std::sync::atomic::AtomicU64>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let acceptor = TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            let rejected = rejected.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(%peer, error = %e, "TLS handshake rejected");
                    }
                    Err(_) => {
                        rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Client-side TLS material (agents towards the collector, the CLI).
#[derive(Clone, Debug, Default)]
pub struct ClientTlsFiles {
    /// CA bundle that signs the server's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the URL's host).
    pub server_name: Option<String>,
}

impl ClientTlsFiles {
    /// A tonic TLS configuration from the files as they are now.
    pub fn tonic_config(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let mut c = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            load_certs("CA", ca)?;
            c = c.ca_certificate(tonic::transport::Certificate::from_pem(read("CA", ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                load_certs("certificate", cert)?;
                load_key(key)?;
                c = c.identity(tonic::transport::Identity::from_pem(
                    read("certificate", cert)?,
                    read("private key", key)?,
                ));
            }
            (None, None) => {}
            (Some(path), None) | (None, Some(path)) => {
                return Err(TlsError::Pem {
                    what: "client identity",
                    path: path.clone(),
                    message: "a certificate and its key go together (--tls-cert and --tls-key)".into(),
                })
            }
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        Ok(c)
    }

    /// File stamps, to notice a rotation.
    pub fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

//! How the CLI (and tests) reach a server: TLS from files when the address is
//! https://, and a bearer token on every request when one is given.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
};

use crate::tls::ClientTlsFiles;

/// TLS flags of a gRPC client (the CLI, and agents towards the collector).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// CA bundle that signs the server's certificate.
    #[arg(long, env = "PODLENS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; re-read at every connection.
    #[arg(long, env = "PODLENS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "PODLENS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the host of the address).
    #[arg(long, env = "PODLENS_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    pub fn files(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        }
    }

    pub fn any(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some()
    }
}

/// Connection flags shared by every subcommand.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConnectArgs {
    /// Address of a standalone agent or a collector (https:// for TLS).
    #[arg(long, env = "PODLENS_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// File holding a bearer token to present.
    #[arg(long, env = "PODLENS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

impl ConnectArgs {
    /// A connected channel with the bearer token attached.
    pub async fn connect(&self) -> Result<Authed> {
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .with_context(|| format!("--server {:?} is not a URL", self.server))?;
        if self.server.starts_with("https://") {
            endpoint = endpoint.tls_config(self.tls.files().tonic_config()?)?;
        } else if self.tls.any() {
            eprintln!("warning: --server {} is not https://; the TLS files given are not used", self.server);
        }
        let token = match &self.token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p).with_context(|| format!("reading --token-file {}", p.display()))?;
                let t = t.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
                if t.is_empty() {
                    bail!("--token-file {} holds no token", p.display());
                }
                Some(
                    format!("Bearer {t}")
                        .parse()
                        .with_context(|| format!("--token-file {}: not a valid header value", p.display()))?,
                )
            }
            None => None,
        };
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {}", self.server))?;
        Ok(InterceptedService::new(channel, Bearer(token)))
    }
}

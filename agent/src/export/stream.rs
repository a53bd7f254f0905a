//! The connection to the collector: one Ingest stream at a time, replaying
//! every unacknowledged batch after each (re)connect, with backoff and jitter
//! between attempts, and a reconnect when the TLS files change.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use podlens_collector::tls::ClientTlsFiles;
use podlens_proto::v1::{self as pb, ingest_client::IngestClient};
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;

use super::{backoff::Backoff, Exporter};

/// Largest message the exporter sends; the pipeline keeps batches well below.
const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// How often TLS files are checked for a rotation while connected.
const TLS_CHECK: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// `https://host:port` (or `http://` with plaintext).
    pub url: String,
    /// None: plaintext.
    pub tls: Option<ClientTlsFiles>,
    /// At shutdown, how long to keep trying to deliver what is buffered.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("collector address {0:?}: {1}")]
    Url(String, String),
    #[error(transparent)]
    Tls(#[from] podlens_collector::tls::TlsError),
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
}

enum Ended {
    /// The TLS files changed: reconnect with the new ones right away.
    Rotated,
    /// Shutting down and everything was acknowledged.
    Drained,
}

/// Runs until `shutdown` flips and the buffer is empty (or the grace period
/// ends). Never returns early on errors: it logs, backs off and reconnects.
pub async fn run(cfg: StreamConfig, exporter: Arc<Exporter>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && *shutdown.borrow() {
            deadline = Some(Instant::now() + cfg.shutdown_grace);
        }
        if deadline.is_some() && exporter.lock().is_empty() {
            return;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let left = exporter.lock().len();
            tracing::warn!(batches = left, "shutdown grace over: batches not delivered");
            return;
        }
        let result = connect_and_stream(&cfg, &exporter, &mut backoff, deadline).await;
        exporter.connected.store(false, Ordering::Release);
        match result {
            Ok(Ended::Drained) => return,
            Ok(Ended::Rotated) => {
                tracing::info!("TLS files changed: reconnecting with the new certificates");
                continue;
            }
            Err(e) => tracing::warn!(collector = %cfg.url, error = %e, "collector stream failed"),
        }
        exporter.reconnects.fetch_add(1, Ordering::Relaxed);
        let delay = backoff.delay();
        let wait = match deadline {
            Some(d) => delay.min(d.saturating_duration_since(Instant::now())),
            None => delay,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed(), if deadline.is_none() => {}
        }
    }
}

async fn connect_and_stream(
    cfg: &StreamConfig,
    exporter: &Arc<Exporter>,
    backoff: &mut Backoff,
    deadline: Option<Instant>,
) -> Result<Ended, StreamError> {
    let mut endpoint = Endpoint::from_shared(cfg.url.clone())
        .map_err(|e| StreamError::Url(cfg.url.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        // Half-open connections are detected within about 20 s.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let tls_stamp = cfg.tls.as_ref().map(ClientTlsFiles::stamp);
    if let Some(tls) = &cfg.tls {
        endpoint = endpoint.tls_config(tls.tonic_config()?)?;
    }
    let channel = endpoint.connect().await?;
    let mut client = IngestClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel::<pb::Batch>(8);
    let mut acks = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    exporter.connected.store(true, Ordering::Release);
    tracing::info!(collector = %cfg.url, buffered = exporter.lock().len(), "collector stream open; replaying what is unacknowledged");

    // Everything still buffered is unacknowledged: send it all, then follow.
    let mut sent_up_to = 0u64;
    let mut tls_check = tokio::time::interval(TLS_CHECK);
    loop {
        let pending = exporter.lock().after(sent_up_to);
        for batch in pending {
            sent_up_to = batch.sequence;
            tokio::select! {
                r = tx.send((*batch).clone()) => {
                    if r.is_err() {
                        return Err(StreamError::Status(tonic::Status::unavailable("request stream closed")));
                    }
                }
                ack = acks.message() => handle_ack(ack?, exporter, backoff)?,
            }
        }
        if deadline.is_some() && exporter.lock().is_empty() {
            return Ok(Ended::Drained);
        }
        tokio::select! {
            _ = exporter.notify.notified() => {}
            ack = acks.message() => handle_ack(ack?, exporter, backoff)?,
            _ = tls_check.tick() => {
                if let (Some(tls), Some(stamp)) = (&cfg.tls, &tls_stamp) {
                    if tls.stamp() != *stamp {
                        return Ok(Ended::Rotated);
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if deadline.is_some() => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(StreamError::Status(tonic::Status::deadline_exceeded("shutdown grace over")));
                }
            }
        }
    }
}

fn handle_ack(ack: Option<pb::Ack>, exporter: &Exporter, backoff: &mut Backoff) -> Result<(), StreamError> {
    let Some(ack) = ack else {
        return Err(StreamError::Status(tonic::Status::unavailable("collector closed the stream")));
    };
    exporter.lock().ack(ack.sequence);
    exporter.acked.store(ack.sequence, Ordering::Relaxed);
    backoff.reset();
    Ok(())
}

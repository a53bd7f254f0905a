//! The connection to the collector: one Ingest stream at a time, replaying
//! every unacknowledged batch after each (re)connect, with backoff and jitter
//! between attempts, and a reconnect when the TLS files change.
//!
//! Acknowledgements are read by their own task, so a send that is waiting
//! for room is never abandoned half-way (which would skip a batch).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use podlens_collector::tls::ClientTlsFiles;
use podlens_proto::v1::{self as pb, ingest_client::IngestClient};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Endpoint;

use super::{backoff::Backoff, Exporter};

/// Largest message the exporter sends; the pipeline keeps batches well below.
const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// How often TLS files are checked for a rotation while connected.
const TLS_CHECK: Duration = Duration::from_secs(5);
use podlens_collector::ingest::{RECONNECT, REJECTED_SEQUENCE};

#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// `https://host:port` (or `http://` with plaintext).
    pub url: String,
    /// None: plaintext.
    pub tls: Option<ClientTlsFiles>,
    /// After shutdown is signalled, how long to keep trying to deliver what is buffered.
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
    #[error("collector acknowledged sequence {acked}, but only {sent} was sent")]
    AckBeyondSent { acked: u64, sent: u64 },
    #[error("shutdown grace over")]
    GraceOver,
}

enum Ended {
    /// The TLS files changed: reconnect with the new ones right away.
    Rotated,
    /// Shutting down and everything was acknowledged.
    Drained,
}

/// Runs until `shutdown` flips (after the pipeline published its last
/// window) and the buffer is empty, or the grace period ends. Errors never
/// end it: it logs, backs off and reconnects.
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
        let progress = Arc::new(AtomicBool::new(false));
        let result = connect_and_stream(&cfg, &exporter, &progress, shutdown.clone(), deadline).await;
        exporter.stream.connected.store(false, Ordering::Release);
        let renew = matches!(&result, Err(StreamError::Status(s)) if s.metadata().contains_key(RECONNECT));
        if result.is_err() && !renew {
            exporter.stream.failures.fetch_add(1, Ordering::Relaxed);
        }
        if progress.load(Ordering::Acquire) {
            backoff.reset();
        }
        match result {
            Ok(Ended::Drained) => return,
            Ok(Ended::Rotated) => {
                tracing::info!("TLS files changed: reconnecting with the new certificates");
                continue;
            }
            // the collector's periodic re-handshake: not a failure
            Err(_) if renew => {
                tracing::debug!(collector = %cfg.url, "collector ended the stream at its maximum age; reconnecting");
                continue;
            }
            Err(StreamError::Status(s)) if rejected_sequence(&s).is_some() => {
                let seq = rejected_sequence(&s).unwrap_or(0);
                exporter.lock().reject(seq);
                tracing::error!(sequence = seq, error = %s.message(), "the collector refused a batch for good; dropped and counted");
                continue;
            }
            Err(e) => tracing::warn!(collector = %cfg.url, error = %e, "collector stream failed"),
        }
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

fn rejected_sequence(s: &tonic::Status) -> Option<u64> {
    if s.code() != tonic::Code::InvalidArgument {
        return None;
    }
    s.metadata().get(REJECTED_SEQUENCE)?.to_str().ok()?.parse().ok()
}

/// Aborts the ack reader when the connection attempt ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect_and_stream(
    cfg: &StreamConfig,
    exporter: &Arc<Exporter>,
    progress: &Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
    mut deadline: Option<Instant>,
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
    exporter.stream.connects.fetch_add(1, Ordering::Relaxed);
    exporter.stream.connected.store(true, Ordering::Release);
    // A new connection: nothing buffered has been sent on it yet.
    exporter.lock().unmark_sent();
    tracing::info!(collector = %cfg.url, buffered = exporter.lock().len(), "collector stream open; replaying what is unacknowledged");

    let sent = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done) = oneshot::channel::<StreamError>();
    let _reader = AbortOnDrop(tokio::spawn({
        let (exporter, sent, progress) = (exporter.clone(), sent.clone(), progress.clone());
        async move {
            let error = loop {
                match acks.message().await {
                    Ok(Some(ack)) => {
                        let max_sent = sent.load(Ordering::Acquire);
                        if ack.sequence > max_sent {
                            break StreamError::AckBeyondSent { acked: ack.sequence, sent: max_sent };
                        }
                        exporter.lock().ack(ack.sequence);
                        progress.store(true, Ordering::Release);
                        exporter.notify.notify_one();
                    }
                    Ok(None) => break StreamError::Status(tonic::Status::unavailable("collector closed the stream")),
                    Err(status) => break StreamError::Status(status),
                }
            };
            let _ = done_tx.send(error);
        }
    }));

    let mut sent_up_to = 0u64;
    let mut tls_check = tokio::time::interval(TLS_CHECK);
    loop {
        let pending = exporter.lock().after(sent_up_to);
        for batch in pending {
            tokio::select! {
                r = tx.send((*batch).clone()) => {
                    if r.is_err() {
                        return Err(StreamError::Status(tonic::Status::unavailable("request stream closed")));
                    }
                    sent_up_to = batch.sequence;
                    sent.fetch_max(batch.sequence, Ordering::AcqRel);
                    exporter.lock().mark_sent(batch.sequence);
                }
                e = &mut done => return Err(e.unwrap_or(StreamError::GraceOver)),
            }
        }
        if deadline.is_some() && exporter.lock().is_empty() {
            return Ok(Ended::Drained);
        }
        tokio::select! {
            _ = exporter.notify.notified() => {}
            e = &mut done => return Err(e.unwrap_or(StreamError::GraceOver)),
            _ = shutdown.changed(), if deadline.is_none() => {
                deadline = Some(Instant::now() + cfg.shutdown_grace);
            }
            _ = tls_check.tick() => {
                if let (Some(tls), Some(stamp)) = (&cfg.tls, &tls_stamp) {
                    if tls.stamp() != *stamp {
                        return Ok(Ended::Rotated);
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if deadline.is_some() => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(StreamError::GraceOver);
                }
            }
        }
    }
}

//! Process plumbing shared by the podlens binaries: logging and signals.

use std::time::Duration;

use anyhow::{Context, Result};

/// Text or JSON logs to stderr, filtered by a tracing EnvFilter expression.
pub fn init_logging(filter: &str, json: bool) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a valid filter"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            tracing::info!("interrupted: shutting down");
        }
    }
    Ok(())
}

/// Parses "250ms", "5s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("{s:?} is not a duration: expected a number followed by ms, s, m or h"))?;
    let too_big = || format!("{s:?} is too large");
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(too_big),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(too_big),
        _ => Err(format!("{s:?} has unit {unit:?}: expected ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").unwrap_err().contains("not a duration"));
        assert!(parse_duration("99999999999999999h").unwrap_err().contains("too large"));
    }
}

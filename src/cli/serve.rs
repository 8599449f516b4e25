//! `sluice serve`: the scheduler and the HTTP API in one long-running process.
//!
//! Start-up recovers runs left by a dead process (as every start does), then due pipelines run
//! (at most `--max-concurrent-runs` at once) while the API answers. SIGTERM or SIGINT stops
//! claiming new runs and lets running ones finish for up to `--grace`, then cancels the rest
//! (staged files deleted, runs `cancelled`) and exits 0; a second signal cancels at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice::Engine;
use sluice::scheduler::Scheduler;
use sluice::server::{self, Api};
use tokio_util::sync::CancellationToken;

use super::CliError;

/// `sluice serve` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API; a non-loopback one needs SLUICE_TOKEN.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// How long running runs may go on after SIGTERM / SIGINT before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Most runs at once; due runs beyond it wait, `queued`.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent_runs: usize,
    /// How often the scheduler looks for due runs.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,
}

/// A duration such as `30s`, `500ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}`: expected a duration such as 30s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        _ => Err(format!("`{text}`: expected a duration such as 30s or 500ms")),
    }
}

/// Serves until a signal, then stops gracefully.
pub async fn serve(engine: Engine, args: &ServeArgs) -> Result<(), CliError> {
    let token = std::env::var("SLUICE_TOKEN").ok().filter(|t| !t.is_empty());
    let listener = server::bind(args.listen, token.as_deref()).await.map_err(|e| CliError::Usage(e.to_string()))?;
    let address = listener.local_addr().map_err(|source| CliError::Io { path: args.listen.to_string(), source })?;
    let engine = Arc::new(engine);
    let scheduler = Scheduler::new(engine.clone(), args.max_concurrent_runs);
    let api = Api::new(scheduler.clone(), token);
    let (stop, abort, http_stop) = (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let signals = tokio::spawn(on_signals(stop.clone(), abort.clone()));
    let http = tokio::spawn(server::serve(listener, api, http_stop.clone()));
    eprintln!("sluice serve: listening on http://{address}");
    tracing::info!(%address, "serving");
    scheduler.serve(args.tick, args.grace, stop, abort).await;
    http_stop.cancel();
    signals.abort();
    let served = http.await.map_err(|e| CliError::Usage(format!("the HTTP server's task failed: {e}")))?;
    served.map_err(|e| CliError::Usage(e.to_string()))?;
    eprintln!("sluice serve: stopped");
    Ok(())
}

/// The first SIGTERM or SIGINT fires `stop`, the second `abort`.
async fn on_signals(stop: CancellationToken, abort: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot listen for signals; stop the server with SIGKILL");
        return;
    };
    for token in [stop, abort] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("sluice serve: stopping ({})", if token.is_cancelled() { "again" } else { "signal" });
        token.cancel();
    }
}

//! `GET /metrics`: the Prometheus text exposition (OpenMetrics), through prometheus-client.
//! Run counters and histograms follow the engine's run events; queue depth, dead runs and runs
//! in flight are read when scraped.
//!
//! | metric | labels |
//! |---|---|
//! | `sluice_runs_total` | pipeline, status |
//! | `sluice_run_duration_seconds` | pipeline |
//! | `sluice_step_duration_seconds` | pipeline, step |
//! | `sluice_rows_committed_total`, `sluice_bytes_committed_total` | pipeline |
//! | `sluice_commit_latency_seconds` (last shard finished → committed) | |
//! | `sluice_retries_total` (step attempts after the first, and scheduled retries) | |
//! | `sluice_queue_depth`, `sluice_dead_runs`, `sluice_runs_in_flight` | |

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

use crate::events::RunEvent;
use crate::scheduler::{AD_HOC, Scheduler};

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Durations from 50 ms to about 7 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// The metrics of one `sluice serve`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<Labels, Counter>,
    run_seconds: Histograms,
    step_seconds: Histograms,
    rows: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    commit_seconds: Histogram,
    retries: Counter,
    queue_depth: Gauge,
    dead_runs: Gauge,
    in_flight: Gauge,
    /// The scheduler's retries already counted.
    scheduled_retries: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Self {
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(seconds),
            step_seconds: Family::new_with_constructor(seconds),
            rows: Family::default(),
            bytes: Family::default(),
            commit_seconds: seconds(),
            retries: Counter::default(),
            queue_depth: Gauge::default(),
            dead_runs: Gauge::default(),
            in_flight: Gauge::default(),
            scheduled_retries: AtomicU64::default(),
            registry: Registry::default(),
        };
        registry.register("runs", "Runs ended, by pipeline and status", metrics.runs.clone());
        registry.register("run_duration_seconds", "Wall time of runs", metrics.run_seconds.clone());
        registry.register("step_duration_seconds", "Wall time of pipeline steps", metrics.step_seconds.clone());
        registry.register("rows_committed", "Rows committed", metrics.rows.clone());
        registry.register("bytes_committed", "Bytes of data files committed", metrics.bytes.clone());
        registry.register(
            "commit_latency_seconds",
            "From a run's last shard finishing to its commit",
            metrics.commit_seconds.clone(),
        );
        registry.register("retries", "Attempts after a failed one (steps and scheduled runs)", metrics.retries.clone());
        registry.register("queue_depth", "Due runs waiting for a free run slot", metrics.queue_depth.clone());
        registry.register("dead_runs", "Runs on the dead-letter list", metrics.dead_runs.clone());
        registry.register("runs_in_flight", "Runs this server is running", metrics.in_flight.clone());
        Self { registry, ..metrics }
    }
}

fn pipeline_label(pipeline: &str) -> Labels {
    vec![("pipeline".to_string(), pipeline.to_string())]
}

impl Metrics {
    /// Follows the run events of `scheduler`'s engine into the counters, until the engine goes.
    pub fn follow(self: &Arc<Self>, scheduler: &Scheduler) -> tokio::task::JoinHandle<()> {
        let mut events = scheduler.engine().subscribe();
        let metrics = self.clone();
        tokio::spawn(async move {
            // run id → (pipeline, when its last shard finished); (run id, step) → started.
            let mut runs: HashMap<String, (String, Instant)> = HashMap::new();
            let mut steps: HashMap<(String, String), Instant> = HashMap::new();
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "metrics missed run events");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                metrics.observe(event, &mut runs, &mut steps);
            }
        })
    }

    fn observe(
        &self,
        event: RunEvent,
        runs: &mut HashMap<String, (String, Instant)>,
        steps: &mut HashMap<(String, String), Instant>,
    ) {
        match event {
            RunEvent::Opened { run_id, pipeline, .. } => {
                runs.insert(run_id, (pipeline.unwrap_or_else(|| AD_HOC.to_string()), Instant::now()));
            }
            RunEvent::ShardFinished { run_id, .. } => {
                if let Some((_, last)) = runs.get_mut(&run_id) {
                    *last = Instant::now();
                }
            }
            RunEvent::Committed { run_id, rows, bytes, .. } => {
                if let Some((pipeline, last)) = runs.get(&run_id) {
                    self.rows.get_or_create(&pipeline_label(pipeline)).inc_by(rows);
                    self.bytes.get_or_create(&pipeline_label(pipeline)).inc_by(bytes);
                    self.commit_seconds.observe(last.elapsed().as_secs_f64());
                }
            }
            RunEvent::Closed { run_id, status, elapsed_ms } => {
                if let Some((pipeline, _)) = runs.remove(&run_id) {
                    let mut labels = pipeline_label(&pipeline);
                    self.run_seconds.get_or_create(&labels).observe(elapsed_ms as f64 / 1000.0);
                    labels.push(("status".to_string(), status));
                    self.runs.get_or_create(&labels).inc();
                }
            }
            RunEvent::Step { run_id, pipeline, step, status, attempt, .. } => {
                let key = (run_id, step.clone());
                if status == "running" {
                    if attempt.is_some_and(|a| a > 1) {
                        self.retries.inc();
                    }
                    steps.entry(key).or_insert_with(Instant::now);
                } else if let Some(started) = steps.remove(&key) {
                    let labels = vec![("pipeline".to_string(), pipeline), ("step".to_string(), step)];
                    self.step_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                }
            }
            RunEvent::Failed { .. } => {}
        }
    }

    /// The exposition, with the gauges read now.
    pub async fn render(&self, scheduler: &Scheduler) -> Result<String, crate::error::Error> {
        let ledger = scheduler.engine().ledger();
        self.queue_depth.set(ledger.queued_schedules().await? as i64);
        self.dead_runs.set(ledger.dead_runs().await? as i64);
        self.in_flight.set(scheduler.running() as i64);
        let total = scheduler.retries();
        let counted = self.scheduled_retries.swap(total, Ordering::Relaxed);
        self.retries.inc_by(total.saturating_sub(counted));
        let mut text = String::new();
        encode(&mut text, &self.registry)
            .map_err(|e| crate::error::Error::Unsupported(format!("encoding metrics: {e}")))?;
        Ok(text)
    }
}

//! The scheduler's loop body: on the engine's clock (a test clock in tests, so nothing sleeps),
//! each scheduled, unpaused pipeline's owed due times are claimed in the ledger — a conditional
//! insert, so two schedulers on one home never run one due time twice — and run.
//!
//! Owed due times are those after the pipeline's last claimed one (or since its schedule was
//! set), up to now, thinned by its `catchup` option: `last` (the default) runs only the latest,
//! `all` every one (at most `max_catchup_runs`, the latest), `none` only one that is not late by
//! more than [`ON_TIME`] (a late one is claimed as `skipped`, so it is not owed again).

use std::sync::Arc;
use std::time::Duration;

use super::Schedule;
use crate::engine::Engine;
use crate::error::Result;
use crate::pipeline::{Catchup, PipelineOptions, parse_definition};

/// How late a due time may be run with `catchup = 'none'`.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// One due time a tick handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The pipeline.
    pub pipeline: String,
    /// The due time, ms since the epoch.
    pub due_ms: i64,
    /// `succeeded`, `failed` or `skipped` (late, with `catchup = 'none'`).
    pub status: String,
    /// The run, when one was opened.
    pub run_id: Option<String>,
}

/// Runs the pipelines of one engine's home when they are due.
#[derive(Debug, Clone)]
pub struct Scheduler {
    engine: Arc<Engine>,
}

impl Scheduler {
    /// A scheduler over `engine`'s pipelines, on its clock.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// Claims and runs every due time owed now (one after another); returns what it handled.
    /// Due times another scheduler claimed first are left to it.
    pub async fn tick(&self) -> Result<Vec<Ran>> {
        let now = self.engine.clock().now_ms();
        let mut handled = Vec::new();
        for (pipeline, due_ms, late) in self.owed(now).await? {
            let ledger = self.engine.ledger();
            if !ledger.claim_due(&pipeline, due_ms).await? {
                continue;
            }
            if late {
                ledger.scheduled_run(&pipeline, due_ms, "skipped", "", Some("late, and catchup = 'none'")).await?;
                handled.push(Ran { pipeline, due_ms, status: "skipped".into(), run_id: None });
                continue;
            }
            tracing::info!(%pipeline, due_ms, "running a scheduled pipeline");
            let (status, run_id, error) = match self.engine.run_pipeline(&pipeline).await {
                Ok(report) => ("succeeded", Some(report.run_id), None),
                Err(e) => ("failed", e.run_id().map(str::to_string), Some(e.to_string())),
            };
            let recorded_id = run_id.as_deref().unwrap_or_default();
            ledger.scheduled_run(&pipeline, due_ms, status, recorded_id, error.as_deref()).await?;
            handled.push(Ran { pipeline, due_ms, status: status.into(), run_id });
        }
        Ok(handled)
    }

    /// The due times owed at `now`: (pipeline, due time, late with `catchup = 'none'`).
    async fn owed(&self, now: i64) -> Result<Vec<(String, i64, bool)>> {
        let ledger = self.engine.ledger();
        let mut owed = Vec::new();
        for pipeline in ledger.pipelines().await? {
            let Some((cron, zone)) = pipeline.schedule.as_ref().filter(|_| !pipeline.paused) else { continue };
            let schedule = match Schedule::parse(cron, zone.as_deref()) {
                Ok(schedule) => schedule,
                Err(e) => {
                    tracing::warn!(pipeline = %pipeline.name, "not scheduled: {e}");
                    continue;
                }
            };
            let options = parse_definition(&pipeline.name, &pipeline.definition)
                .and_then(|create| PipelineOptions::parse(&pipeline.name, &create.options));
            let options = match options {
                Ok(options) => options,
                Err(e) => {
                    tracing::warn!(pipeline = %pipeline.name, "not scheduled: {e}");
                    continue;
                }
            };
            let since = pipeline.schedule_since_ms.unwrap_or(pipeline.created_at_ms);
            let after = ledger.last_due(&pipeline.name).await?.map_or(since, |last| last.max(since));
            let limit = match options.catchup {
                Catchup::All => options.max_catchup_runs,
                Catchup::Last | Catchup::None => 1,
            };
            for due in schedule.due_between(after, now, limit) {
                let late = options.catchup == Catchup::None && now - due > ON_TIME.as_millis() as i64;
                owed.push((pipeline.name.clone(), due, late));
            }
        }
        Ok(owed)
    }
}

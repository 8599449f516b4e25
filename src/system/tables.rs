//! The ledger as system tables: `sluice.pipelines`, `sluice.runs`, `sluice.shard_tasks`,
//! `sluice.events`, and for pipelines with steps `sluice.pipeline_runs` and `sluice.steps`.
//! Each query reads the ledger afresh, so runs by other processes show up at once.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};

use super::ResultBatch;
use crate::ledger::{
    ExpectationRecord, Ledger, LedgerError, PipelineRecord, PipelineRunRecord, RunRecord, ScheduledRunRecord,
    ShardTaskRecord, StepRecord,
};
use crate::scheduler::Schedule;

/// The schema holding the system tables.
pub const SYSTEM_SCHEMA: &str = "sluice";
const TABLES: [&str; 8] =
    ["pipelines", "runs", "shard_tasks", "events", "pipeline_runs", "steps", "schedules", "expectations"];

/// A DataFusion schema whose tables are views of the ledger.
#[derive(Debug)]
pub struct SystemSchema {
    /// The ledger, or why it cannot be read (every query of a system table then says so).
    ledger: std::result::Result<Ledger, String>,
}

impl SystemSchema {
    /// System tables over `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger: Ok(ledger) }
    }

    /// System tables whose ledger file cannot be used: each query fails with `reason`.
    pub fn unavailable(reason: String) -> Self {
        Self { ledger: Err(reason) }
    }
}

fn ledger_error(e: LedgerError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if !TABLES.contains(&name) {
            return Ok(None);
        }
        let ledger = self.ledger.as_ref().map_err(|reason| DataFusionError::Plan(reason.clone()))?;
        let batch = match name {
            "pipelines" => pipelines_batch(&ledger.pipelines().await.map_err(ledger_error)?, ledger.clock().now_ms()),
            "runs" => runs_batch(&ledger.runs(None).await.map_err(ledger_error)?),
            "shard_tasks" => shard_tasks_batch(&ledger.shard_tasks(None).await.map_err(ledger_error)?),
            "pipeline_runs" => pipeline_runs_batch(&ledger.pipeline_runs().await.map_err(ledger_error)?),
            "steps" => steps_batch(&ledger.steps(None).await.map_err(ledger_error)?),
            "schedules" => schedules_batch(&ledger.scheduled_runs(None).await.map_err(ledger_error)?),
            "expectations" => expectations_batch(&ledger.expectations().await.map_err(ledger_error)?),
            _ => events_batch(&ledger.events().await.map_err(ledger_error)?),
        };
        Ok(Some(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

/// Times in the ledger (ms since the epoch) as UTC timestamps.
fn timestamps(values: impl Iterator<Item = Option<i64>>) -> TimestampMillisecondArray {
    TimestampMillisecondArray::from_iter(values).with_timezone("UTC")
}

fn elapsed_ms(started: i64, finished: Option<i64>) -> Option<u64> {
    finished.map(|f| (f - started).max(0) as u64)
}

/// Pipelines as rows (what `SHOW PIPELINES` prints); `now_ms` is when their next due time is
/// counted from.
pub fn pipelines_batch(pipelines: &[PipelineRecord], now_ms: i64) -> RecordBatch {
    let next_due = |p: &PipelineRecord| {
        let (cron, zone) = p.schedule.as_ref().filter(|_| !p.paused)?;
        Schedule::parse(cron, zone.as_deref()).ok()?.next_after(now_ms)
    };
    let schedules = pipelines.iter().map(|p| p.schedule.as_ref().map(|(cron, _)| cron.as_str()));
    let zones = pipelines.iter().map(|p| p.schedule.as_ref().map(|(_, zone)| zone.as_deref().unwrap_or("UTC")));
    ResultBatch::default()
        .column("name", false, StringArray::from_iter_values(pipelines.iter().map(|p| p.name.as_str())))
        .column("target", false, StringArray::from_iter_values(pipelines.iter().map(|p| p.target.as_str())))
        .column("schedule", true, StringArray::from_iter(schedules))
        .column("timezone", true, StringArray::from_iter(zones))
        .column("paused", false, BooleanArray::from_iter(pipelines.iter().map(|p| Some(p.paused))))
        .column("last_status", true, StringArray::from_iter(pipelines.iter().map(|p| p.last_status.as_deref())))
        .column("next_due", true, timestamps(pipelines.iter().map(next_due)))
        .column("shards", true, UInt64Array::from_iter(pipelines.iter().map(|p| p.shards.map(|s| s as u64))))
        .column("created_at", false, timestamps(pipelines.iter().map(|p| Some(p.created_at_ms))))
        .column("definition", false, StringArray::from_iter_values(pipelines.iter().map(|p| p.definition.as_str())))
        .build()
}

/// Runs as rows (what `SHOW RUNS` prints).
pub fn runs_batch(runs: &[RunRecord]) -> RecordBatch {
    ResultBatch::default()
        .column("run_id", false, StringArray::from_iter_values(runs.iter().map(|r| r.run_id.as_str())))
        .column("pipeline", true, StringArray::from_iter(runs.iter().map(|r| r.pipeline.as_deref())))
        .column("target", false, StringArray::from_iter_values(runs.iter().map(|r| r.target.as_str())))
        .column("status", false, StringArray::from_iter_values(runs.iter().map(|r| r.status.as_str())))
        .column("shards", false, UInt64Array::from_iter_values(runs.iter().map(|r| r.shards as u64)))
        .column("rows", false, UInt64Array::from_iter_values(runs.iter().map(|r| r.rows)))
        .column("files", false, UInt64Array::from_iter_values(runs.iter().map(|r| r.files)))
        .column("bytes", false, UInt64Array::from_iter_values(runs.iter().map(|r| r.bytes)))
        .column("snapshot_id", true, Int64Array::from_iter(runs.iter().map(|r| r.snapshot_id)))
        .column("started_at", false, timestamps(runs.iter().map(|r| Some(r.started_at_ms))))
        .column(
            "elapsed_ms",
            true,
            UInt64Array::from_iter(runs.iter().map(|r| elapsed_ms(r.started_at_ms, r.finished_at_ms))),
        )
        .column("error", true, StringArray::from_iter(runs.iter().map(|r| r.error.as_deref())))
        .build()
}

fn shard_tasks_batch(tasks: &[ShardTaskRecord]) -> RecordBatch {
    ResultBatch::default()
        .column("run_id", false, StringArray::from_iter_values(tasks.iter().map(|t| t.run_id.as_str())))
        .column("shard", false, UInt64Array::from_iter_values(tasks.iter().map(|t| t.shard as u64)))
        .column("executor", false, StringArray::from_iter_values(tasks.iter().map(|t| t.executor.as_str())))
        .column("status", false, StringArray::from_iter_values(tasks.iter().map(|t| t.status.as_str())))
        .column("rows", false, UInt64Array::from_iter_values(tasks.iter().map(|t| t.totals.rows)))
        .column("files", false, UInt64Array::from_iter_values(tasks.iter().map(|t| t.totals.files)))
        .column("bytes", false, UInt64Array::from_iter_values(tasks.iter().map(|t| t.totals.bytes)))
        .column("started_at", false, timestamps(tasks.iter().map(|t| Some(t.started_at_ms))))
        .column(
            "elapsed_ms",
            true,
            UInt64Array::from_iter(tasks.iter().map(|t| elapsed_ms(t.started_at_ms, t.finished_at_ms))),
        )
        .column("error", true, StringArray::from_iter(tasks.iter().map(|t| t.error.as_deref())))
        .build()
}

/// The steps of pipeline runs (`sluice.steps`, and what `RUN PIPELINE` prints for one with steps).
pub fn steps_batch(steps: &[StepRecord]) -> RecordBatch {
    let text = |f: fn(&StepRecord) -> &str| StringArray::from_iter_values(steps.iter().map(f));
    ResultBatch::default()
        .column("run_id", false, text(|s| &s.run_id))
        .column("pipeline", false, text(|s| &s.pipeline))
        .column("step", false, text(|s| &s.step))
        .column("target", false, text(|s| &s.target))
        .column("status", false, text(|s| &s.status))
        .column("attempt", false, Int64Array::from_iter_values(steps.iter().map(|s| s.attempt)))
        .column("step_run_id", true, StringArray::from_iter(steps.iter().map(|s| s.step_run_id.as_deref())))
        .column("started_at", true, timestamps(steps.iter().map(|s| s.started_at_ms)))
        .column("finished_at", true, timestamps(steps.iter().map(|s| s.finished_at_ms)))
        .column("rows", false, UInt64Array::from_iter_values(steps.iter().map(|s| s.rows)))
        .column("files", false, UInt64Array::from_iter_values(steps.iter().map(|s| s.files)))
        .column("bytes", false, UInt64Array::from_iter_values(steps.iter().map(|s| s.bytes)))
        .column("snapshot_id", true, Int64Array::from_iter(steps.iter().map(|s| s.snapshot_id)))
        .column("error", true, StringArray::from_iter(steps.iter().map(|s| s.error.as_deref())))
        .build()
}

fn pipeline_runs_batch(runs: &[PipelineRunRecord]) -> RecordBatch {
    ResultBatch::default()
        .column("run_id", false, StringArray::from_iter_values(runs.iter().map(|r| r.run_id.as_str())))
        .column("pipeline", false, StringArray::from_iter_values(runs.iter().map(|r| r.pipeline.as_str())))
        .column("status", false, StringArray::from_iter_values(runs.iter().map(|r| r.status.as_str())))
        .column("started_at", false, timestamps(runs.iter().map(|r| Some(r.started_at_ms))))
        .column(
            "elapsed_ms",
            true,
            UInt64Array::from_iter(runs.iter().map(|r| elapsed_ms(r.started_at_ms, r.finished_at_ms))),
        )
        .column("error", true, StringArray::from_iter(runs.iter().map(|r| r.error.as_deref())))
        .build()
}

/// Due times the scheduler claimed: queued, running, succeeded, retrying, dead, cancelled or
/// skipped.
fn schedules_batch(due: &[ScheduledRunRecord]) -> RecordBatch {
    ResultBatch::default()
        .column("pipeline", false, StringArray::from_iter_values(due.iter().map(|d| d.pipeline.as_str())))
        .column("due_at", false, timestamps(due.iter().map(|d| Some(d.due_ms))))
        .column("status", false, StringArray::from_iter_values(due.iter().map(|d| d.status.as_str())))
        .column("attempt", false, Int64Array::from_iter_values(due.iter().map(|d| d.attempt)))
        .column("run_id", true, StringArray::from_iter(due.iter().map(|d| d.run_id.as_deref())))
        .column("next_attempt_at", true, timestamps(due.iter().map(|d| d.next_attempt_ms)))
        .column("error", true, StringArray::from_iter(due.iter().map(|d| d.error.as_deref())))
        .build()
}

/// What each write's expectations found; `step` is set for a step's write run
/// (`<pipeline>/<step>`).
fn expectations_batch(found: &[ExpectationRecord]) -> RecordBatch {
    let split = |r: &ExpectationRecord| -> (Option<String>, Option<String>) {
        match r.pipeline.as_deref().map(|p| p.split_once('/')) {
            Some(Some((pipeline, step))) => (Some(pipeline.to_string()), Some(step.to_string())),
            Some(None) => (r.pipeline.clone(), None),
            None => (None, None),
        }
    };
    let (pipelines, steps): (Vec<_>, Vec<_>) = found.iter().map(split).unzip();
    ResultBatch::default()
        .column("run_id", false, StringArray::from_iter_values(found.iter().map(|r| r.run_id.as_str())))
        .column("pipeline", true, StringArray::from(pipelines))
        .column("step", true, StringArray::from(steps))
        .column("table", false, StringArray::from_iter_values(found.iter().map(|r| r.target.as_str())))
        .column("constraint", false, StringArray::from_iter_values(found.iter().map(|r| r.name.as_str())))
        .column("action", false, StringArray::from_iter_values(found.iter().map(|r| r.action.as_str())))
        .column("passed", false, UInt64Array::from_iter_values(found.iter().map(|r| r.passed)))
        .column("failed", false, UInt64Array::from_iter_values(found.iter().map(|r| r.failed)))
        .column("rows_in", false, UInt64Array::from_iter_values(found.iter().map(|r| r.rows_in)))
        .column("recorded_at", false, timestamps(found.iter().map(|r| Some(r.recorded_at_ms))))
        .build()
}

fn events_batch(events: &[(String, i64, String, String)]) -> RecordBatch {
    ResultBatch::default()
        .column("run_id", false, StringArray::from_iter_values(events.iter().map(|e| e.0.as_str())))
        .column("at", false, timestamps(events.iter().map(|e| Some(e.1))))
        .column("kind", false, StringArray::from_iter_values(events.iter().map(|e| e.2.as_str())))
        .column("detail", false, StringArray::from_iter_values(events.iter().map(|e| e.3.as_str())))
        .build()
}

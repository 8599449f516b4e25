//! Runs of multi-step pipelines (`pipeline_runs`) and their steps (`steps`): each step's status
//! (queued, running, succeeded, failed, upstream_failed, cancelled), attempt, timing, what it
//! committed, and the run of today's coordinator that wrote it (`step_run_id`). A `CANCEL RUN`
//! from any process sets `cancel_requested`, which the running process reads at its heartbeat.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Ledger, LedgerError, Result};

/// One step of one pipeline run, as the ledger records it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// The pipeline run.
    pub run_id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The step.
    pub step: String,
    /// What it writes.
    pub target: String,
    /// queued, running, succeeded, failed, upstream_failed or cancelled.
    pub status: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    /// The run (of the coordinator) that wrote it, once one was opened.
    pub step_run_id: Option<String>,
    /// Start of its latest attempt, ms since the epoch.
    pub started_at_ms: Option<i64>,
    /// End, ms since the epoch.
    pub finished_at_ms: Option<i64>,
    /// Rows committed.
    pub rows: u64,
    /// Files committed.
    pub files: u64,
    /// Bytes committed.
    pub bytes: u64,
    /// The snapshot / version committed.
    pub snapshot_id: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One run of a pipeline with steps.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRunRecord {
    /// The run.
    pub run_id: String,
    /// The pipeline.
    pub pipeline: String,
    /// running, succeeded, failed or cancelled.
    pub status: String,
    /// Start, ms since the epoch.
    pub started_at_ms: i64,
    /// End, ms since the epoch.
    pub finished_at_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a step committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTotals {
    /// Rows committed.
    pub rows: u64,
    /// Files committed.
    pub files: u64,
    /// Bytes committed.
    pub bytes: u64,
    /// The snapshot / version committed.
    pub snapshot_id: Option<i64>,
}

fn step_from_row(r: &SqliteRow) -> StepRecord {
    StepRecord {
        run_id: r.get("run_id"),
        pipeline: r.get("pipeline"),
        step: r.get("step"),
        target: r.get("target"),
        status: r.get("status"),
        attempt: r.get("attempt"),
        step_run_id: r.get("step_run_id"),
        started_at_ms: r.get("started_at_ms"),
        finished_at_ms: r.get("finished_at_ms"),
        rows: r.get::<i64, _>("rows") as u64,
        files: r.get::<i64, _>("files") as u64,
        bytes: r.get::<i64, _>("bytes") as u64,
        snapshot_id: r.get("snapshot_id"),
        error: r.get("error"),
    }
}

impl Ledger {
    /// Opens a run of the multi-step pipeline `pipeline` with every step `queued`; refused
    /// (in one statement) while another run of it holds its lease.
    pub async fn open_pipeline_run(
        &self,
        run_id: &str,
        pipeline: &str,
        steps: &[(String, String)],
        lease_until_ms: i64,
    ) -> Result<()> {
        let opened = self
            .execute(
                "opening a pipeline run",
                sqlx::query(
                    "INSERT INTO pipeline_runs (run_id, pipeline, status, started_at_ms, lease_until_ms)
                     SELECT ?1, ?2, 'running', ?3, ?4 WHERE NOT EXISTS (
                         SELECT 1 FROM pipeline_runs WHERE pipeline = ?2 AND status IN ('running', 'publishing')
                                                   AND lease_until_ms > ?3)",
                )
                .bind(run_id)
                .bind(pipeline)
                .bind(self.now_ms())
                .bind(lease_until_ms),
            )
            .await?;
        if opened == 0 {
            let open = self
                .fetch_optional(
                    "opening a pipeline run",
                    sqlx::query(
                        "SELECT run_id FROM pipeline_runs WHERE pipeline = ? AND status IN ('running', 'publishing')",
                    )
                    .bind(pipeline),
                )
                .await?;
            let run_id = open.map(|r| r.get::<String, _>("run_id")).unwrap_or_default();
            return Err(LedgerError::PipelineBusy { pipeline: pipeline.to_string(), run_id });
        }
        for (step, target) in steps {
            let queued = sqlx::query(
                "INSERT INTO steps (run_id, pipeline, step, target, status, attempt) VALUES (?, ?, ?, ?, 'queued', 0)",
            );
            self.execute("queueing a step", queued.bind(run_id).bind(pipeline).bind(step).bind(target)).await?;
        }
        Ok(())
    }

    /// Reopens a failed, cancelled or dead pipeline run for `RETRY RUN` (`running`, leased until
    /// `lease_until_ms`; its steps that did not succeed `queued` again): false when it is not in
    /// such a state, or another run of its pipeline holds its lease.
    pub async fn reopen_pipeline_run(&self, run_id: &str, lease_until_ms: i64) -> Result<bool> {
        let reopened = self
            .execute(
                "reopening a pipeline run",
                sqlx::query(
                    "UPDATE pipeline_runs SET status = 'running', finished_at_ms = NULL, error = NULL,
                                              cancel_requested = 0, lease_until_ms = ?1
                     WHERE run_id = ?2 AND status IN ('failed', 'cancelled', 'dead') AND NOT EXISTS (
                         SELECT 1 FROM pipeline_runs o WHERE o.pipeline = pipeline_runs.pipeline
                         AND o.status IN ('running', 'publishing') AND o.lease_until_ms > ?3)",
                )
                .bind(lease_until_ms)
                .bind(run_id)
                .bind(self.now_ms()),
            )
            .await?;
        if reopened == 0 {
            return Ok(false);
        }
        let steps = sqlx::query(
            "UPDATE steps SET status = 'queued', finished_at_ms = NULL, error = NULL
             WHERE run_id = ? AND status <> 'succeeded'",
        );
        self.execute("requeueing a pipeline run's steps", steps.bind(run_id)).await?;
        Ok(true)
    }

    /// Extends a pipeline run's lease; true when a `CANCEL RUN` asked for it to stop.
    pub async fn renew_pipeline_lease(&self, run_id: &str, lease_until_ms: i64) -> Result<bool> {
        let row = self
            .fetch_optional(
                "renewing a pipeline run's lease",
                sqlx::query(
                    "UPDATE pipeline_runs SET lease_until_ms = ? WHERE run_id = ? AND status IN ('running', 'publishing')
                     RETURNING cancel_requested",
                )
                .bind(lease_until_ms)
                .bind(run_id),
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<i64, _>("cancel_requested") != 0))
    }

    /// Asks the process running `run_id` (a pipeline run or a write run) to cancel it; false
    /// when no such run is running.
    pub async fn request_cancel(&self, run_id: &str) -> Result<bool> {
        let pipeline = self
            .execute(
                "asking a pipeline run to cancel",
                sqlx::query("UPDATE pipeline_runs SET cancel_requested = 1 WHERE run_id = ? AND status = 'running'")
                    .bind(run_id),
            )
            .await?;
        let write = self
            .execute(
                "asking a run to cancel",
                sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE run_id = ? AND status = 'staging'")
                    .bind(run_id),
            )
            .await?;
        Ok(pipeline + write > 0)
    }

    /// A step's attempt starts.
    pub async fn step_started(&self, run_id: &str, step: &str, attempt: i64) -> Result<()> {
        let query = sqlx::query(
            "UPDATE steps SET status = 'running', attempt = ?, started_at_ms = ?, finished_at_ms = NULL, error = NULL
             WHERE run_id = ? AND step = ?",
        );
        self.execute("starting a step", query.bind(attempt).bind(self.now_ms()).bind(run_id).bind(step)).await?;
        Ok(())
    }

    /// Names the write run of a step's attempt.
    pub async fn step_run(&self, run_id: &str, step: &str, step_run_id: &str) -> Result<()> {
        let query = sqlx::query("UPDATE steps SET step_run_id = ? WHERE run_id = ? AND step = ?");
        self.execute("recording a step's run", query.bind(step_run_id).bind(run_id).bind(step)).await?;
        Ok(())
    }

    /// A step ends: `succeeded` with what it committed, or `failed`, `upstream_failed` or
    /// `cancelled` with why.
    pub async fn step_finished(
        &self,
        run_id: &str,
        step: &str,
        status: &str,
        totals: StepTotals,
        error: Option<&str>,
    ) -> Result<()> {
        let query = sqlx::query(
            "UPDATE steps SET status = ?, finished_at_ms = ?, rows = ?, files = ?, bytes = ?, snapshot_id = ?, error = ?
             WHERE run_id = ? AND step = ?",
        );
        let query = query
            .bind(status)
            .bind(self.now_ms())
            .bind(totals.rows as i64)
            .bind(totals.files as i64)
            .bind(totals.bytes as i64)
            .bind(totals.snapshot_id)
            .bind(error)
            .bind(run_id)
            .bind(step);
        self.execute("finishing a step", query).await?;
        Ok(())
    }

    /// The pipeline run ends: `succeeded`, `failed` or `cancelled`.
    pub async fn pipeline_run_finished(&self, run_id: &str, status: &str, error: Option<&str>) -> Result<()> {
        let query = sqlx::query(
            "UPDATE pipeline_runs SET status = ?, finished_at_ms = ?, error = ?, lease_until_ms = NULL WHERE run_id = ?",
        );
        self.execute("finishing a pipeline run", query.bind(status).bind(self.now_ms()).bind(error).bind(run_id))
            .await?;
        Ok(())
    }

    /// An atomic pipeline run starts publishing its steps' held commits, as one group: its step
    /// runs (`committing`) are published in one catalog transaction, or none is. Recovery
    /// settles the group from those runs.
    pub async fn pipeline_run_publishing(&self, run_id: &str) -> Result<()> {
        let query = sqlx::query("UPDATE pipeline_runs SET status = 'publishing' WHERE run_id = ?");
        self.execute("marking a pipeline run publishing", query.bind(run_id)).await?;
        Ok(())
    }

    /// Settles pipeline runs whose process stopped renewing their lease (after run recovery has
    /// settled their steps' write runs): an unfinished step whose write run committed is
    /// `succeeded` with what it committed, a queued one `cancelled`, any other `failed`; the
    /// pipeline run is `succeeded` when every step is (an atomic run that crashed after its
    /// catalog transaction), else `failed`. Returns how many were settled.
    pub async fn settle_abandoned_pipeline_runs(&self) -> Result<u64> {
        let now = self.now_ms();
        let error = "abandoned: its process stopped";
        let abandoned = self
            .fetch_all(
                "listing abandoned pipeline runs",
                sqlx::query(
                    "SELECT run_id FROM pipeline_runs
                     WHERE status IN ('running', 'publishing') AND COALESCE(lease_until_ms, 0) < ?",
                )
                .bind(now),
            )
            .await?;
        for row in &abandoned {
            let run_id: String = row.get("run_id");
            let steps = sqlx::query(
                "UPDATE steps SET
                     status = CASE WHEN steps.status = 'queued' THEN 'cancelled'
                                   WHEN w.run_status = 'succeeded' THEN 'succeeded' ELSE 'failed' END,
                     rows = CASE WHEN w.run_status = 'succeeded' THEN w.rows ELSE 0 END,
                     files = CASE WHEN w.run_status = 'succeeded' THEN w.files ELSE 0 END,
                     bytes = CASE WHEN w.run_status = 'succeeded' THEN w.bytes ELSE 0 END,
                     snapshot_id = CASE WHEN w.run_status = 'succeeded' THEN w.snapshot_id END,
                     error = CASE WHEN w.run_status = 'succeeded' AND steps.status <> 'queued' THEN NULL ELSE ?1 END,
                     finished_at_ms = ?2
                 FROM (SELECT s.step AS step_name, r.status AS run_status, r.rows, r.files, r.bytes, r.snapshot_id
                       FROM steps s LEFT JOIN runs r ON r.run_id = s.step_run_id WHERE s.run_id = ?3) AS w
                 WHERE steps.run_id = ?3 AND steps.step = w.step_name AND steps.status IN ('queued', 'running')",
            );
            self.execute("settling abandoned steps", steps.bind(error).bind(now).bind(&run_id)).await?;
            let pipeline_run = sqlx::query(
                "UPDATE pipeline_runs SET
                     status = CASE WHEN EXISTS (SELECT 1 FROM steps WHERE run_id = ?1 AND status <> 'succeeded')
                                   THEN 'failed' ELSE 'succeeded' END,
                     error = CASE WHEN EXISTS (SELECT 1 FROM steps WHERE run_id = ?1 AND status <> 'succeeded')
                                  THEN ?2 END,
                     finished_at_ms = ?3, lease_until_ms = NULL
                 WHERE run_id = ?1",
            );
            self.execute("settling an abandoned pipeline run", pipeline_run.bind(&run_id).bind(error).bind(now))
                .await?;
        }
        Ok(abandoned.len() as u64)
    }

    /// The steps of every pipeline run (of `run_id` only, when given), oldest run first.
    pub async fn steps(&self, run_id: Option<&str>) -> Result<Vec<StepRecord>> {
        let rows = self
            .fetch_all(
                "listing steps",
                sqlx::query(
                    "SELECT s.* FROM steps s JOIN pipeline_runs r ON r.run_id = s.run_id
                     WHERE ?1 IS NULL OR s.run_id = ?1 ORDER BY r.started_at_ms, s.run_id, s.rowid",
                )
                .bind(run_id),
            )
            .await?;
        Ok(rows.iter().map(step_from_row).collect())
    }

    /// Every run of a pipeline with steps, oldest first.
    pub async fn pipeline_runs(&self) -> Result<Vec<PipelineRunRecord>> {
        let rows = self
            .fetch_all(
                "listing pipeline runs",
                sqlx::query("SELECT * FROM pipeline_runs ORDER BY started_at_ms, run_id"),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PipelineRunRecord {
                run_id: r.get("run_id"),
                pipeline: r.get("pipeline"),
                status: r.get("status"),
                started_at_ms: r.get("started_at_ms"),
                finished_at_ms: r.get("finished_at_ms"),
                error: r.get("error"),
            })
            .collect())
    }
}

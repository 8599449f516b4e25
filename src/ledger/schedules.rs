//! Due times of scheduled pipelines (`scheduled_runs`): a scheduler claims a due time with a
//! conditional insert (the pipeline and due time are the key), so two schedulers on one home
//! never run one due time twice; then it records how the run ended.

use sqlx::Row;

use super::{Ledger, Result};

/// One due time of a scheduled pipeline, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRunRecord {
    /// The pipeline.
    pub pipeline: String,
    /// The due time, ms since the epoch.
    pub due_ms: i64,
    /// queued, running, succeeded or failed.
    pub status: String,
    /// The run that ran it, once started.
    pub run_id: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl Ledger {
    /// Claims `due_ms` of `pipeline` (`queued`): false when another scheduler claimed it first.
    pub async fn claim_due(&self, pipeline: &str, due_ms: i64) -> Result<bool> {
        let query = sqlx::query(
            "INSERT INTO scheduled_runs (pipeline, due_ms, status, claimed_at_ms) VALUES (?, ?, 'queued', ?)
             ON CONFLICT (pipeline, due_ms) DO NOTHING",
        );
        Ok(self.execute("claiming a due time", query.bind(pipeline).bind(due_ms).bind(self.now_ms())).await? == 1)
    }

    /// The latest due time of `pipeline` that a scheduler claimed, if any.
    pub async fn last_due(&self, pipeline: &str) -> Result<Option<i64>> {
        let query = sqlx::query("SELECT MAX(due_ms) AS due_ms FROM scheduled_runs WHERE pipeline = ?").bind(pipeline);
        let row = self.fetch_optional("reading the last due time", query).await?;
        Ok(row.and_then(|r| r.get("due_ms")))
    }

    /// A claimed due time's run starts (`running`, as `run_id`) or ends (`succeeded` or
    /// `failed`, with why).
    pub async fn scheduled_run(
        &self,
        pipeline: &str,
        due_ms: i64,
        status: &str,
        run_id: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let query = sqlx::query(
            "UPDATE scheduled_runs SET status = ?, run_id = ?, error = ?,
                 finished_at_ms = CASE WHEN ? IN ('succeeded', 'failed') THEN ? END
             WHERE pipeline = ? AND due_ms = ?",
        )
        .bind(status)
        .bind(run_id)
        .bind(error)
        .bind(status)
        .bind(self.now_ms())
        .bind(pipeline)
        .bind(due_ms);
        self.execute("recording a scheduled run", query).await?;
        Ok(())
    }

    /// Every claimed due time (of `pipeline` only, when given), oldest first.
    pub async fn scheduled_runs(&self, pipeline: Option<&str>) -> Result<Vec<ScheduledRunRecord>> {
        let query =
            sqlx::query("SELECT * FROM scheduled_runs WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY due_ms, pipeline")
                .bind(pipeline);
        let rows = self.fetch_all("listing scheduled runs", query).await?;
        Ok(rows
            .iter()
            .map(|r| ScheduledRunRecord {
                pipeline: r.get("pipeline"),
                due_ms: r.get("due_ms"),
                status: r.get("status"),
                run_id: r.get("run_id"),
                error: r.get("error"),
            })
            .collect())
    }
}

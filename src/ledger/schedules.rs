//! Due times of scheduled pipelines (`scheduled_runs`). A scheduler claims a due time with a
//! conditional insert (the pipeline and due time are the key), so two schedulers on one home
//! never run one due time twice; its claim is leased, renewed while it is queued or running, so
//! that a claim whose scheduler died is settled by another. A failed attempt waits as `retrying`
//! until its next attempt is due (claimed again by a conditional update), or ends `dead`.
//!
//! ```text
//!  queued ─► running ─► succeeded
//!    │          ├─────► retrying ─(next attempt due, claimed)─► queued ...
//!    │          ├─────► dead          (retries spent: the dead-letter list)
//!    │          └─────► cancelled     (shutdown)
//!    └─► skipped (late, catchup = 'none')     released (shutdown before it started): deleted
//! ```

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Ledger, Result};

/// One due time of a scheduled pipeline, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRunRecord {
    /// The pipeline.
    pub pipeline: String,
    /// The due time, ms since the epoch.
    pub due_ms: i64,
    /// queued, running, succeeded, retrying, dead, cancelled or skipped.
    pub status: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    /// The run of the latest attempt, once started.
    pub run_id: Option<String>,
    /// When a `retrying` one's next attempt is due, ms since the epoch.
    pub next_attempt_ms: Option<i64>,
    /// Why its latest attempt failed.
    pub error: Option<String>,
}

fn scheduled_from_row(r: &SqliteRow) -> ScheduledRunRecord {
    ScheduledRunRecord {
        pipeline: r.get("pipeline"),
        due_ms: r.get("due_ms"),
        status: r.get("status"),
        attempt: r.get("attempt"),
        run_id: r.get("run_id"),
        next_attempt_ms: r.get("next_attempt_ms"),
        error: r.get("error"),
    }
}

impl Ledger {
    /// Claims `due_ms` of `pipeline` (`queued`, leased until `lease_until_ms`): false when
    /// another scheduler claimed it first.
    pub async fn claim_due(&self, pipeline: &str, due_ms: i64, lease_until_ms: i64) -> Result<bool> {
        let query = sqlx::query(
            "INSERT INTO scheduled_runs (pipeline, due_ms, status, claimed_at_ms, lease_until_ms)
             VALUES (?, ?, 'queued', ?, ?) ON CONFLICT (pipeline, due_ms) DO NOTHING",
        );
        let query = query.bind(pipeline).bind(due_ms).bind(self.now_ms()).bind(lease_until_ms);
        Ok(self.execute("claiming a due time", query).await? == 1)
    }

    /// Claims a run started by hand (an API trigger, or a retry of a given run) as a due time at
    /// `at_ms` (the next free millisecond), `queued` as attempt `attempt` of `run_id` when that
    /// is given; returns the due time claimed.
    pub async fn claim_manual(
        &self,
        pipeline: &str,
        at_ms: i64,
        attempt: i64,
        run_id: Option<&str>,
        lease_until_ms: i64,
    ) -> Result<i64> {
        let mut due_ms = at_ms;
        loop {
            let query = sqlx::query(
                "INSERT INTO scheduled_runs (pipeline, due_ms, status, attempt, run_id, claimed_at_ms, lease_until_ms)
                 VALUES (?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (pipeline, due_ms) DO NOTHING",
            );
            let query =
                query.bind(pipeline).bind(due_ms).bind(attempt).bind(run_id).bind(self.now_ms()).bind(lease_until_ms);
            if self.execute("claiming a run started by hand", query).await? == 1 {
                return Ok(due_ms);
            }
            due_ms += 1;
        }
    }

    /// The claimed due time whose latest attempt ran as `run_id`, if any.
    pub async fn scheduled_run_of(&self, run_id: &str) -> Result<Option<ScheduledRunRecord>> {
        let query = sqlx::query("SELECT * FROM scheduled_runs WHERE run_id = ? ORDER BY due_ms DESC LIMIT 1");
        let row = self.fetch_optional("reading a scheduled run", query.bind(run_id)).await?;
        Ok(row.as_ref().map(scheduled_from_row))
    }

    /// Claims every `retrying` due time whose next attempt is due (`queued` again, its attempt
    /// counted up, leased until `lease_until_ms`).
    pub async fn claim_retries(&self, lease_until_ms: i64) -> Result<Vec<ScheduledRunRecord>> {
        let query = sqlx::query(
            "UPDATE scheduled_runs SET status = 'queued', attempt = attempt + 1, lease_until_ms = ?1,
                                       next_attempt_ms = NULL
             WHERE status = 'retrying' AND next_attempt_ms <= ?2 RETURNING *",
        );
        let rows = self.fetch_all("claiming retries", query.bind(lease_until_ms).bind(self.now_ms())).await?;
        Ok(rows.iter().map(scheduled_from_row).collect())
    }

    /// Claims, for settling, claims whose scheduler stopped renewing their lease while they
    /// were queued or running (marked `retrying`, due now: the caller decides what follows).
    pub async fn claim_abandoned_schedules(&self) -> Result<Vec<ScheduledRunRecord>> {
        let now = self.now_ms();
        let query = sqlx::query(
            "UPDATE scheduled_runs SET status = 'retrying', next_attempt_ms = ?1, lease_until_ms = NULL,
                                       error = 'abandoned: its scheduler stopped'
             WHERE status IN ('queued', 'running') AND COALESCE(lease_until_ms, 0) < ?1 RETURNING *",
        );
        let rows = self.fetch_all("claiming abandoned schedules", query.bind(now)).await?;
        Ok(rows.iter().map(scheduled_from_row).collect())
    }

    /// Renews the lease of a claim this scheduler holds.
    pub async fn renew_schedule_lease(&self, pipeline: &str, due_ms: i64, lease_until_ms: i64) -> Result<()> {
        let query = sqlx::query(
            "UPDATE scheduled_runs SET lease_until_ms = ? WHERE pipeline = ? AND due_ms = ?
             AND status IN ('queued', 'running')",
        );
        self.execute("renewing a schedule's lease", query.bind(lease_until_ms).bind(pipeline).bind(due_ms)).await?;
        Ok(())
    }

    /// Gives a claim back that never started (shutdown): a first attempt is forgotten (owed
    /// again), a retry waits as `retrying` again.
    pub async fn release_claim(&self, pipeline: &str, due_ms: i64) -> Result<()> {
        let forget = sqlx::query(
            "DELETE FROM scheduled_runs WHERE pipeline = ? AND due_ms = ? AND status = 'queued' AND attempt = 1",
        );
        self.execute("releasing a claim", forget.bind(pipeline).bind(due_ms)).await?;
        let wait = sqlx::query(
            "UPDATE scheduled_runs SET status = 'retrying', attempt = attempt - 1, next_attempt_ms = ?, lease_until_ms = NULL
             WHERE pipeline = ? AND due_ms = ? AND status = 'queued'",
        );
        self.execute("releasing a claim", wait.bind(self.now_ms()).bind(pipeline).bind(due_ms)).await?;
        Ok(())
    }

    /// The latest due time of `pipeline` that a scheduler claimed, if any.
    pub async fn last_due(&self, pipeline: &str) -> Result<Option<i64>> {
        let query = sqlx::query("SELECT MAX(due_ms) AS due_ms FROM scheduled_runs WHERE pipeline = ?").bind(pipeline);
        let row = self.fetch_optional("reading the last due time", query).await?;
        Ok(row.and_then(|r| r.get("due_ms")))
    }

    /// Whether `pipeline` has a due time queued, running or waiting for a retry (a scheduler
    /// then claims no other: one run of a pipeline at a time).
    pub async fn schedule_busy(&self, pipeline: &str) -> Result<bool> {
        let query = sqlx::query(
            "SELECT 1 FROM scheduled_runs WHERE pipeline = ? AND status IN ('queued', 'running', 'retrying') LIMIT 1",
        );
        Ok(self.fetch_optional("reading a pipeline's schedule", query.bind(pipeline)).await?.is_some())
    }

    /// A claimed due time moves on: `running` (as `run_id`), `succeeded`, `retrying` (its next
    /// attempt due at `next_attempt_ms`), `dead`, `cancelled` or `skipped`, with why.
    pub async fn scheduled_run(
        &self,
        pipeline: &str,
        due_ms: i64,
        status: &str,
        run_id: Option<&str>,
        next_attempt_ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        let ended = matches!(status, "succeeded" | "dead" | "cancelled" | "skipped");
        let query = sqlx::query(
            "UPDATE scheduled_runs SET status = ?, run_id = COALESCE(?, run_id), next_attempt_ms = ?, error = ?,
                 finished_at_ms = ?, lease_until_ms = CASE WHEN ? IN ('queued', 'running') THEN lease_until_ms END
             WHERE pipeline = ? AND due_ms = ?",
        )
        .bind(status)
        .bind(run_id)
        .bind(next_attempt_ms)
        .bind(error)
        .bind(ended.then(|| self.now_ms()))
        .bind(status)
        .bind(pipeline)
        .bind(due_ms);
        self.execute("recording a scheduled run", query).await?;
        Ok(())
    }

    /// Puts a run on the dead-letter list: its write run, or its pipeline run, is `dead`.
    pub async fn mark_dead(&self, run_id: &str) -> Result<()> {
        let runs =
            sqlx::query("UPDATE runs SET status = 'dead' WHERE run_id = ? AND status IN ('failed', 'cancelled')");
        self.execute("marking a run dead", runs.bind(run_id)).await?;
        let pipeline_runs = sqlx::query(
            "UPDATE pipeline_runs SET status = 'dead' WHERE run_id = ? AND status IN ('failed', 'cancelled')",
        );
        self.execute("marking a run dead", pipeline_runs.bind(run_id)).await?;
        Ok(())
    }

    /// How many runs are on the dead-letter list (write runs and pipeline runs).
    pub async fn dead_runs(&self) -> Result<u64> {
        let row = self
            .fetch_optional(
                "counting dead runs",
                sqlx::query(
                    "SELECT (SELECT count(*) FROM runs WHERE status = 'dead')
                          + (SELECT count(*) FROM pipeline_runs WHERE status = 'dead') AS n",
                ),
            )
            .await?;
        Ok(row.map_or(0, |r| r.get::<i64, _>("n") as u64))
    }

    /// How many claimed due times are queued (waiting for a free run slot).
    pub async fn queued_schedules(&self) -> Result<u64> {
        let row = self
            .fetch_optional(
                "counting queued schedules",
                sqlx::query("SELECT count(*) AS n FROM scheduled_runs WHERE status = 'queued'"),
            )
            .await?;
        Ok(row.map_or(0, |r| r.get::<i64, _>("n") as u64))
    }

    /// Every claimed due time (of `pipeline` only, when given), oldest first.
    pub async fn scheduled_runs(&self, pipeline: Option<&str>) -> Result<Vec<ScheduledRunRecord>> {
        let query =
            sqlx::query("SELECT * FROM scheduled_runs WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY due_ms, pipeline")
                .bind(pipeline);
        let rows = self.fetch_all("listing scheduled runs", query).await?;
        Ok(rows.iter().map(scheduled_from_row).collect())
    }
}

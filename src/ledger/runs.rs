//! The run lifecycle in the ledger (DESIGN §4): open, lease, shard tasks, committing,
//! succeeded or failed, and recovery's claim on an abandoned run.

use sqlx::Row;

use super::records::run_from_row;
use super::{Ledger, LedgerError, NewRun, Result, RunRecord, RunStatus, ShardTaskRecord, ShardTotals, query_error};

impl Ledger {
    /// Step 1 of the protocol: records a new run in `staging` and returns its sequence number
    /// within its pipeline. A pipeline run is refused while another run of the pipeline holds its
    /// lease (checked and inserted in one statement, so two processes cannot both pass).
    pub async fn open_run(&self, run: &NewRun<'_>) -> Result<i64> {
        let row = self.fetch_optional("opening a run", sqlx::query(
            "INSERT INTO runs (run_id, pipeline, target, status, shards, started_at_ms, sequence, statement, base, lease_until_ms)
             SELECT ?1, ?2, ?3, 'staging', ?4, ?5,
                    (SELECT COALESCE(MAX(sequence), 0) + 1 FROM runs WHERE pipeline IS ?2), ?6, ?7, ?8
             WHERE ?2 IS NULL OR NOT EXISTS (
                 SELECT 1 FROM runs WHERE pipeline = ?2 AND status IN ('staging', 'committing') AND lease_until_ms > ?5)
             RETURNING sequence",
        )
        .bind(run.run_id)
        .bind(run.pipeline)
        .bind(run.target)
        .bind(run.shards as i64)
        .bind(self.now_ms())
        .bind(run.statement)
        .bind(run.base)
        .bind(run.lease_until_ms)).await?;
        match (row, run.pipeline) {
            (Some(row), _) => Ok(row.get("sequence")),
            (None, Some(pipeline)) => {
                let open = self.fetch_optional("opening a run", sqlx::query("SELECT run_id FROM runs WHERE pipeline = ? AND status IN ('staging', 'committing') AND lease_until_ms > ?")
                    .bind(pipeline)
                    .bind(self.now_ms())).await?;
                let run_id = open.map(|r| r.get::<String, _>("run_id")).unwrap_or_default();
                Err(LedgerError::PipelineBusy { pipeline: pipeline.to_string(), run_id })
            }
            (None, None) => unreachable!("ad-hoc runs are never refused"),
        }
    }

    /// Opens a failed run again under its id (`RETRY RUN`), in `staging` with a new lease, as
    /// its next attempt; returns the attempt's number.
    pub async fn reopen_run(&self, run_id: &str, base: Option<i64>, lease_until_ms: i64) -> Result<i64> {
        let row = self
            .fetch_optional(
                "reopening a run",
                sqlx::query(
                    "UPDATE runs SET status = 'staging', started_at_ms = ?, finished_at_ms = NULL, error = NULL,
                                 rows = 0, files = 0, bytes = 0, snapshot_id = NULL, base = ?, lease_until_ms = ?,
                                 attempt = attempt + 1
                     WHERE run_id = ? RETURNING attempt",
                )
                .bind(self.now_ms())
                .bind(base)
                .bind(lease_until_ms)
                .bind(run_id),
            )
            .await?;
        Ok(row.map_or(1, |row| row.get("attempt")))
    }

    /// Extends an open run's lease (the run's heartbeat); true when a `CANCEL RUN` asked for it
    /// to stop.
    pub async fn renew_lease(&self, run_id: &str, lease_until_ms: i64) -> Result<bool> {
        let row = self
            .fetch_optional(
                "renewing a run's lease",
                sqlx::query(
                    "UPDATE runs SET lease_until_ms = ? WHERE run_id = ? AND status IN ('staging', 'committing')
                     RETURNING cancel_requested",
                )
                .bind(lease_until_ms)
                .bind(run_id),
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<i64, _>("cancel_requested") != 0))
    }

    /// Runs left `staging` or `committing` whose lease has expired: their process is gone.
    pub async fn abandoned_runs(&self) -> Result<Vec<RunRecord>> {
        self.open_runs("COALESCE(lease_until_ms, 0) < ?").await
    }

    /// Runs `staging` or `committing` whose lease is live: a process is (or was, moments ago)
    /// working on them.
    pub async fn leased_runs(&self) -> Result<Vec<RunRecord>> {
        self.open_runs("lease_until_ms >= ?").await
    }

    /// Runs `staging` or `committing` whose lease matches `lease` (bound to now).
    async fn open_runs(&self, lease: &str) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT * FROM runs WHERE status IN ('staging', 'committing') AND {lease} ORDER BY started_at_ms, run_id"
        );
        let rows = self.fetch_all("listing open runs", sqlx::query(&sql).bind(self.now_ms())).await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records that a shard task started.
    pub async fn shard_started(&self, run_id: &str, shard: usize) -> Result<()> {
        self.execute(
            "recording a shard start",
            sqlx::query(
                "INSERT OR REPLACE INTO shard_tasks (run_id, shard, status, started_at_ms) VALUES (?, ?, 'running', ?)",
            )
            .bind(run_id)
            .bind(shard as i64)
            .bind(self.now_ms()),
        )
        .await?;
        Ok(())
    }

    /// Records how a shard task ended: its totals, or its error.
    pub async fn shard_finished(
        &self,
        run_id: &str,
        shard: usize,
        outcome: std::result::Result<ShardTotals, &str>,
    ) -> Result<()> {
        let (status, totals, error) = match outcome {
            Ok(totals) => ("succeeded", totals, None),
            Err(e) => ("failed", ShardTotals::default(), Some(e)),
        };
        self.execute(
            "recording a shard end",
            sqlx::query(
                "UPDATE shard_tasks SET status = ?, finished_at_ms = ?, rows = ?, files = ?, bytes = ?, error = ?
             WHERE run_id = ? AND shard = ?",
            )
            .bind(status)
            .bind(self.now_ms())
            .bind(totals.rows as i64)
            .bind(totals.files as i64)
            .bind(totals.bytes as i64)
            .bind(error)
            .bind(run_id)
            .bind(shard as i64),
        )
        .await?;
        Ok(())
    }

    /// Step 4: the run enters `committing`, if it is still `staging`; false when recovery has
    /// meanwhile settled it (its process had let the lease lapse): then it must not commit.
    pub async fn set_committing(&self, run_id: &str) -> Result<bool> {
        let done = self
            .execute(
                "marking a run committing",
                sqlx::query("UPDATE runs SET status = 'committing' WHERE run_id = ? AND status = 'staging'")
                    .bind(run_id),
            )
            .await?;
        Ok(done == 1)
    }

    /// Recovery's claim on an abandoned run: marks it failed with `error` if it is still in
    /// `status` (what recovery saw, and settled it for) and its lease has lapsed. False when it is
    /// not (settled by another, alive again, or moved on from `staging` to `committing`, where
    /// only a fence makes its files safe to delete), in which case the caller must leave its
    /// files alone.
    pub async fn claim_abandoned(&self, run_id: &str, status: RunStatus, error: &str) -> Result<bool> {
        let now = self.now_ms();
        let done = self
            .execute(
                "claiming an abandoned run",
                sqlx::query(
                    "UPDATE runs SET status = 'failed', finished_at_ms = ?1, error = ?2, lease_until_ms = NULL
             WHERE run_id = ?3 AND status = ?4 AND COALESCE(lease_until_ms, 0) < ?1",
                )
                .bind(now)
                .bind(error)
                .bind(run_id)
                .bind(status.as_str()),
            )
            .await?;
        Ok(done == 1)
    }

    /// Step 6: the run succeeded with this snapshot; its staged files are now table files.
    pub async fn run_succeeded(&self, run_id: &str, snapshot_id: Option<i64>, totals: ShardTotals) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(query_error("closing a run"))?;
        sqlx::query(
            "UPDATE runs SET status = 'succeeded', finished_at_ms = ?, rows = ?, files = ?, bytes = ?, snapshot_id = ?,
                             lease_until_ms = NULL
             WHERE run_id = ?",
        )
        .bind(self.now_ms())
        .bind(totals.rows as i64)
        .bind(totals.files as i64)
        .bind(totals.bytes as i64)
        .bind(snapshot_id)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(query_error("closing a run"))?;
        sqlx::query("UPDATE staged_files SET state = 'committed' WHERE run_id = ? AND state = 'staged'")
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("closing a run"))?;
        tx.commit().await.map_err(query_error("closing a run"))
    }

    /// The run was rolled back: `status` is [`RunStatus::Failed`] or [`RunStatus::Cancelled`],
    /// `error` says why.
    pub async fn run_rolled_back(&self, run_id: &str, status: RunStatus, error: &str) -> Result<()> {
        self.execute(
            "marking a run rolled back",
            sqlx::query(
                "UPDATE runs SET status = ?, finished_at_ms = ?, error = ?, lease_until_ms = NULL WHERE run_id = ?",
            )
            .bind(status.as_str())
            .bind(self.now_ms())
            .bind(error)
            .bind(run_id),
        )
        .await?;
        Ok(())
    }

    /// One run.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row = self
            .fetch_optional("reading a run", sqlx::query("SELECT * FROM runs WHERE run_id = ?").bind(run_id))
            .await?;
        row.map(|r| run_from_row(&r)).transpose()
    }

    /// Runs, oldest first; only those of `pipeline` when given (with its steps' runs,
    /// `<pipeline>/<step>`).
    pub async fn runs(&self, pipeline: Option<&str>) -> Result<Vec<RunRecord>> {
        let rows = self
            .fetch_all(
                "listing runs",
                sqlx::query(
                    "SELECT * FROM runs WHERE ?1 IS NULL OR pipeline = ?1 OR substr(pipeline, 1, length(?1) + 1) = ?1 || '/'
                     ORDER BY started_at_ms, run_id",
                )
                .bind(pipeline),
            )
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Shard tasks, by run and shard; only those of `run_id` when given.
    pub async fn shard_tasks(&self, run_id: Option<&str>) -> Result<Vec<ShardTaskRecord>> {
        let rows = self
            .fetch_all(
                "listing shard tasks",
                sqlx::query("SELECT * FROM shard_tasks WHERE ?1 IS NULL OR run_id = ?1 ORDER BY run_id, shard")
                    .bind(run_id),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ShardTaskRecord {
                run_id: r.get("run_id"),
                shard: r.get::<i64, _>("shard") as usize,
                status: r.get("status"),
                started_at_ms: r.get("started_at_ms"),
                finished_at_ms: r.get("finished_at_ms"),
                totals: ShardTotals {
                    rows: r.get::<i64, _>("rows") as u64,
                    files: r.get::<i64, _>("files") as u64,
                    bytes: r.get::<i64, _>("bytes") as u64,
                },
                error: r.get("error"),
                executor: r.get("executor"),
            })
            .collect())
    }

    /// Records which executor of a cluster ran a shard (`host:port`, as it registered).
    pub async fn shard_ran_on(&self, run_id: &str, shard: usize, executor: &str) -> Result<()> {
        self.execute(
            "recording a shard's executor",
            sqlx::query("UPDATE shard_tasks SET executor = ? WHERE run_id = ? AND shard = ?")
                .bind(executor)
                .bind(run_id)
                .bind(shard as i64),
        )
        .await?;
        Ok(())
    }
}

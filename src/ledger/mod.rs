//! The run ledger: a SQLite file (`<home>/ledger.db`) that remembers pipelines, runs, shard tasks
//! and every staged file.
//!
//! The ledger is what makes a run recoverable. A staged file's path is written here *before* the
//! file is opened, so after any failure the coordinator (or a later recovery) knows exactly which
//! files a run may have left behind.
//!
//! ```text
//!   runs.status:  staging ──► committing ──► succeeded
//!                    │             │
//!                    └─────────────┴──────► failed   (staged files deleted)
//! ```

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};

use crate::clock::ClockRef;

/// A statement with its arguments bound.
type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Errors of the ledger layer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The ledger file could not be opened or initialised.
    #[error("cannot open the run ledger {path}: {source}")]
    Open {
        /// The ledger file.
        path: String,
        /// The SQLite error.
        source: sqlx::Error,
    },
    /// SQLite's integrity check found the file damaged.
    #[error("the run ledger {path} is damaged: {detail}")]
    Damaged {
        /// The ledger file.
        path: String,
        /// What the check reported.
        detail: String,
    },
    /// A ledger statement failed.
    #[error("run ledger: {context}: {source}")]
    Query {
        /// What the ledger was doing.
        context: &'static str,
        /// The SQLite error.
        source: sqlx::Error,
    },
    /// `CREATE PIPELINE` of a name that is taken.
    #[error("pipeline `{0}` already exists (use CREATE OR REPLACE PIPELINE, or DROP PIPELINE first)")]
    PipelineExists(String),
    /// A run of the pipeline is still open (its process holds the lease).
    #[error("pipeline `{pipeline}` is already running (run {run_id}); runs of one pipeline never overlap")]
    PipelineBusy {
        /// The pipeline.
        pipeline: String,
        /// The open run.
        run_id: String,
    },
    /// A status string in the file that this version does not know.
    #[error("run ledger: unknown run status `{0}`")]
    UnknownStatus(String),
}

type Result<T> = std::result::Result<T, LedgerError>;

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
    move |source| LedgerError::Query { context, source }
}

/// Whether SQLite says the file is damaged or not a database (`SQLITE_CORRUPT`,
/// `SQLITE_NOTADB`, and their extended codes).
fn is_damage(error: &sqlx::Error) -> bool {
    let code = match error {
        sqlx::Error::Database(e) => e.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    matches!(code.map(|c| c & 0xff), Some(11 | 26))
}

/// Where a run is in the commit protocol (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Shards are writing files; nothing is visible.
    Staging,
    /// The catalog commit is in flight; its outcome may be unknown after a crash.
    Committing,
    /// Committed: the snapshot is visible.
    Succeeded,
    /// Aborted: nothing became visible and the staged files were deleted.
    Failed,
}

impl RunStatus {
    /// The status as stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Staging => "staging",
            RunStatus::Committing => "committing",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }
}

impl FromStr for RunStatus {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "staging" => RunStatus::Staging,
            "committing" => RunStatus::Committing,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            other => return Err(LedgerError::UnknownStatus(other.to_string())),
        })
    }
}

/// A persisted pipeline definition.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRecord {
    /// Pipeline name.
    pub name: String,
    /// The full `CREATE PIPELINE` statement, as SQL text.
    pub definition: String,
    /// The table it writes, `catalog.schema.table`.
    pub target: String,
    /// Number of shards, when fixed by `WITH (shards = N)`.
    pub shards: Option<usize>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
}

/// One run as the ledger records it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Run id (UUIDv7).
    pub run_id: String,
    /// The pipeline, or `None` for an ad-hoc `INSERT` / CTAS.
    pub pipeline: Option<String>,
    /// The table written, `catalog.schema.table`, or the absolute path of an exported file.
    pub target: String,
    /// Current status.
    pub status: RunStatus,
    /// Number of shards.
    pub shards: usize,
    /// Start time, ms since the epoch.
    pub started_at_ms: i64,
    /// End time, ms since the epoch.
    pub finished_at_ms: Option<i64>,
    /// Rows committed.
    pub rows: u64,
    /// Data files committed.
    pub files: u64,
    /// Bytes of data files committed.
    pub bytes: u64,
    /// The snapshot the run committed.
    pub snapshot_id: Option<i64>,
    /// Why the run failed.
    pub error: Option<String>,
    /// The run's number within its pipeline (ad-hoc runs count among themselves).
    pub sequence: i64,
    /// The write statement, as SQL (what `RETRY RUN` runs again).
    pub statement: String,
    /// The table's snapshot / version when the run started.
    pub base: Option<i64>,
    /// While the run is open, until when its process holds it (renewed by a heartbeat).
    pub lease_until_ms: Option<i64>,
    /// Which attempt of the run this is: 1, then one more for each `RETRY RUN`.
    pub attempt: i64,
}

/// How a new run is opened.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Run id (UUIDv7).
    pub run_id: &'a str,
    /// The pipeline, `None` for an ad-hoc write.
    pub pipeline: Option<&'a str>,
    /// The table written, `catalog.schema.table`, or the absolute path of an exported file.
    pub target: &'a str,
    /// Number of shards.
    pub shards: usize,
    /// The write statement, as SQL.
    pub statement: &'a str,
    /// The table's snapshot / version now.
    pub base: Option<i64>,
    /// Until when the run is leased, ms since the epoch.
    pub lease_until_ms: i64,
}

/// What a shard task did, as the ledger records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardTotals {
    /// Rows written.
    pub rows: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// One shard task of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardTaskRecord {
    /// The run.
    pub run_id: String,
    /// Shard index.
    pub shard: usize,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// Start time, ms since the epoch.
    pub started_at_ms: i64,
    /// End time, ms since the epoch.
    pub finished_at_ms: Option<i64>,
    /// What the shard wrote.
    pub totals: ShardTotals,
    /// Why it failed.
    pub error: Option<String>,
}

impl std::iter::Sum for ShardTotals {
    fn sum<I: Iterator<Item = Self>>(totals: I) -> Self {
        totals.fold(Self::default(), |a, t| Self {
            rows: a.rows + t.rows,
            files: a.files + t.files,
            bytes: a.bytes + t.bytes,
        })
    }
}

/// Handle on the ledger database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: SqlitePool,
    clock: ClockRef,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pipelines (
    name          TEXT PRIMARY KEY,
    definition    TEXT NOT NULL,
    target        TEXT NOT NULL,
    shards        INTEGER,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id         TEXT PRIMARY KEY,
    pipeline       TEXT,
    target         TEXT NOT NULL,
    status         TEXT NOT NULL,
    shards         INTEGER NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    rows           INTEGER NOT NULL DEFAULT 0,
    files          INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    snapshot_id    INTEGER,
    error          TEXT,
    sequence       INTEGER NOT NULL,
    statement      TEXT NOT NULL,
    base           INTEGER,
    lease_until_ms INTEGER,
    attempt        INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, started_at_ms);
CREATE TABLE IF NOT EXISTS shard_tasks (
    run_id         TEXT NOT NULL,
    shard          INTEGER NOT NULL,
    status         TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    rows           INTEGER NOT NULL DEFAULT 0,
    files          INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    error          TEXT,
    PRIMARY KEY (run_id, shard)
);
CREATE TABLE IF NOT EXISTS staged_files (
    path    TEXT PRIMARY KEY,
    run_id  TEXT NOT NULL,
    shard   INTEGER NOT NULL,
    state   TEXT NOT NULL DEFAULT 'staged'
);
CREATE INDEX IF NOT EXISTS staged_files_by_run ON staged_files (run_id);
-- Recovery looks for files deleted once and not yet verified on every start.
CREATE INDEX IF NOT EXISTS staged_files_unverified ON staged_files (state) WHERE state IN ('deleted', 'verifying');
CREATE TABLE IF NOT EXISTS session_tables (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    at_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, at_ms);
"#;

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, after SQLite's quick integrity check: a
    /// damaged file is reported as [`LedgerError::Damaged`], not met halfway through a run.
    /// Times come from `clock`.
    pub async fn open(path: &Path, clock: ClockRef) -> Result<Self> {
        let open_error = |source| LedgerError::Open { path: path.display().to_string(), source };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let damaged = |detail: String| LedgerError::Damaged { path: path.display().to_string(), detail };
        // A damaged file is told apart from other failures (permissions, a full disk): only the
        // former lets the engine go on without it.
        let failed = |source: sqlx::Error| match is_damage(&source) {
            true => damaged(source.to_string()),
            false => open_error(source),
        };
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(failed)?;
        let ledger = Self { pool, clock };
        match ledger.check(false).await {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => return Err(damaged(problems.join("; "))),
            Err(LedgerError::Query { source, .. }) => return Err(failed(source)),
            Err(other) => return Err(other),
        }
        sqlx::raw_sql(SCHEMA).execute(&ledger.pool).await.map_err(failed)?;
        ledger.upgrade().await?;
        Ok(ledger)
    }

    /// A ledger that lives in memory only, for a process whose ledger file is damaged: its runs
    /// still stage and roll back, but nothing survives the process.
    pub async fn in_memory(clock: ClockRef) -> Result<Self> {
        let open_error = |source| LedgerError::Open { path: ":memory:".to_string(), source };
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(open_error)?;
        // One connection, kept for the pool's life: each connection to `:memory:` is its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(open_error)?;
        Ok(Self { pool, clock })
    }

    /// Brings a ledger file an older version wrote up to this version's tables.
    async fn upgrade(&self) -> Result<()> {
        let columns = self.fetch_all("reading the runs table", sqlx::query("PRAGMA table_info(runs)")).await?;
        if !columns.iter().any(|c| c.get::<String, _>("name") == "attempt") {
            let add = sqlx::query("ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1");
            self.execute("adding the attempt column to runs", add).await?;
        }
        Ok(())
    }

    /// The clock the ledger's times come from (the engine's).
    pub fn clock(&self) -> &ClockRef {
        &self.clock
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Runs a statement; returns the rows it changed.
    async fn execute(&self, context: &'static str, query: Query<'_>) -> Result<u64> {
        Ok(query.execute(&self.pool).await.map_err(query_error(context))?.rows_affected())
    }

    /// Runs a query; returns its rows.
    async fn fetch_all(&self, context: &'static str, query: Query<'_>) -> Result<Vec<SqliteRow>> {
        query.fetch_all(&self.pool).await.map_err(query_error(context))
    }

    /// Runs a query; returns its one row, if any.
    async fn fetch_optional(&self, context: &'static str, query: Query<'_>) -> Result<Option<SqliteRow>> {
        query.fetch_optional(&self.pool).await.map_err(query_error(context))
    }

    /// SQLite's `integrity_check` (`thorough`) or `quick_check`: the problems found, none when
    /// the file is sound.
    pub async fn check(&self, thorough: bool) -> Result<Vec<String>> {
        let sql = if thorough { "PRAGMA integrity_check" } else { "PRAGMA quick_check" };
        let rows = self.fetch_all("checking the file", sqlx::query(sql)).await?;
        let lines: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
        Ok(lines.into_iter().filter(|line| line != "ok").collect())
    }

    /// Moves everything from the write-ahead log into the database file (on exit: the ledger's
    /// data should not live only in `ledger.db-wal`).
    pub async fn checkpoint(&self) -> Result<()> {
        self.execute("checkpointing the write-ahead log", sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")).await?;
        Ok(())
    }

    /// Saves a pipeline; with `replace`, an existing one of that name is overwritten.
    pub async fn save_pipeline(&self, pipeline: &PipelineRecord, replace: bool) -> Result<()> {
        let verb = if replace { "INSERT OR REPLACE" } else { "INSERT" };
        let result = sqlx::query(&format!(
            "{verb} INTO pipelines (name, definition, target, shards, created_at_ms) VALUES (?, ?, ?, ?, ?)"
        ))
        .bind(&pipeline.name)
        .bind(&pipeline.definition)
        .bind(&pipeline.target)
        .bind(pipeline.shards.map(|s| s as i64))
        .bind(pipeline.created_at_ms)
        .execute(&self.pool)
        .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(LedgerError::PipelineExists(pipeline.name.clone()))
            }
            other => other.map(|_| ()).map_err(query_error("saving a pipeline")),
        }
    }

    /// The pipeline called `name`, if any.
    pub async fn pipeline(&self, name: &str) -> Result<Option<PipelineRecord>> {
        let row = self
            .fetch_optional("reading a pipeline", sqlx::query("SELECT * FROM pipelines WHERE name = ?").bind(name))
            .await?;
        Ok(row.map(|r| pipeline_from_row(&r)))
    }

    /// All pipelines, by name.
    pub async fn pipelines(&self) -> Result<Vec<PipelineRecord>> {
        let rows = self.fetch_all("listing pipelines", sqlx::query("SELECT * FROM pipelines ORDER BY name")).await?;
        Ok(rows.iter().map(pipeline_from_row).collect())
    }

    /// Removes a pipeline (its runs stay in the history); false when there was none.
    pub async fn drop_pipeline(&self, name: &str) -> Result<bool> {
        let done =
            self.execute("dropping a pipeline", sqlx::query("DELETE FROM pipelines WHERE name = ?").bind(name)).await?;
        Ok(done > 0)
    }

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

    /// Extends an open run's lease (the run's heartbeat).
    pub async fn renew_lease(&self, run_id: &str, lease_until_ms: i64) -> Result<()> {
        self.execute(
            "renewing a run's lease",
            sqlx::query("UPDATE runs SET lease_until_ms = ? WHERE run_id = ? AND status IN ('staging', 'committing')")
                .bind(lease_until_ms)
                .bind(run_id),
        )
        .await?;
        Ok(())
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

    /// Step 2: records staged files' paths before the files are opened, all in one transaction.
    pub async fn stage_files(&self, run_id: &str, shard: usize, paths: &[String]) -> Result<()> {
        let mut transaction = self.pool.begin().await.map_err(query_error("recording staged files"))?;
        for path in paths {
            sqlx::query("INSERT OR REPLACE INTO staged_files (path, run_id, shard, state) VALUES (?, ?, ?, 'staged')")
                .bind(path)
                .bind(run_id)
                .bind(shard as i64)
                .execute(&mut *transaction)
                .await
                .map_err(query_error("recording a staged file"))?;
        }
        transaction.commit().await.map_err(query_error("recording staged files"))
    }

    /// Every file the run staged that has not been deleted or committed yet.
    pub async fn staged_files(&self, run_id: &str) -> Result<Vec<String>> {
        self.files_of(run_id, "state = 'staged'").await
    }

    /// Every file the run staged and did not commit, deleted already or not.
    pub async fn uncommitted_files(&self, run_id: &str) -> Result<Vec<String>> {
        self.files_of(run_id, "state != 'committed'").await
    }

    /// The run's staged files in states matching `state`.
    async fn files_of(&self, run_id: &str, state: &str) -> Result<Vec<String>> {
        let sql = format!("SELECT path FROM staged_files WHERE run_id = ? AND {state} ORDER BY path");
        let rows = self.fetch_all("listing staged files", sqlx::query(&sql).bind(run_id)).await?;
        Ok(rows.iter().map(|r| r.get::<String, _>("path")).collect())
    }

    /// Marks the run's staged files as deleted (after the coordinator removed them); files that
    /// were deleted before are now `verified` (deleted a second time, after every writer of the
    /// run had long stopped).
    pub async fn mark_staged_files_deleted(&self, run_id: &str) -> Result<()> {
        self.execute(
            "marking staged files deleted",
            sqlx::query(
                "UPDATE staged_files SET state = CASE state WHEN 'staged' THEN 'deleted' ELSE 'verified' END
             WHERE run_id = ? AND state IN ('staged', 'deleted', 'verifying')",
            )
            .bind(run_id),
        )
        .await?;
        Ok(())
    }

    /// Files that rollbacks of now-failed runs deleted once, not yet checked again: (run id,
    /// target, path). Recovery deletes each again (a writer that outlived its run could have
    /// put one back) and marks it verified.
    pub async fn unverified_deletions(&self) -> Result<Vec<(String, String, String)>> {
        let rows = self
            .fetch_all(
                "listing deleted files to verify",
                sqlx::query(
                    "SELECT f.run_id, r.target, f.path FROM staged_files f JOIN runs r ON r.run_id = f.run_id
             WHERE f.state IN ('deleted', 'verifying') AND r.status = 'failed' ORDER BY f.run_id, f.path",
                ),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get("run_id"), r.get("target"), r.get("path"))).collect())
    }

    /// Claims a deleted file of a failed run for its second deletion (`verifying`, so that a
    /// recovery killed half-way takes it up again); false when its run was retried meanwhile
    /// (the path is the retry's now, not ours to delete).
    pub async fn claim_verification(&self, path: &str) -> Result<bool> {
        self.set_verification(path, "verifying", "claiming a deleted file").await
    }

    /// Records that a claimed file is gone for good.
    pub async fn verified(&self, path: &str) -> Result<()> {
        self.set_verification(path, "verified", "marking a deleted file verified").await.map(|_| ())
    }

    async fn set_verification(&self, path: &str, state: &str, context: &'static str) -> Result<bool> {
        let done = self
            .execute(
                context,
                sqlx::query(
                    "UPDATE staged_files SET state = ? WHERE path = ? AND state IN ('deleted', 'verifying')
             AND run_id IN (SELECT run_id FROM runs WHERE status = 'failed')",
                )
                .bind(state)
                .bind(path),
            )
            .await?;
        Ok(done == 1)
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

    /// Recovery's claim on an abandoned run: marks it failed with `error` if it is still open
    /// and its lease has lapsed. False when it is not (settled by another, or alive again), in
    /// which case the caller must leave its files alone.
    pub async fn claim_abandoned(&self, run_id: &str, error: &str) -> Result<bool> {
        let now = self.now_ms();
        let done = self
            .execute(
                "claiming an abandoned run",
                sqlx::query(
                    "UPDATE runs SET status = 'failed', finished_at_ms = ?1, error = ?2, lease_until_ms = NULL
             WHERE run_id = ?3 AND status IN ('staging', 'committing') AND COALESCE(lease_until_ms, 0) < ?1",
                )
                .bind(now)
                .bind(error)
                .bind(run_id),
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

    /// The run failed; `error` says why.
    pub async fn run_failed(&self, run_id: &str, error: &str) -> Result<()> {
        self.execute("marking a run failed", sqlx::query(
            "UPDATE runs SET status = 'failed', finished_at_ms = ?, error = ?, lease_until_ms = NULL WHERE run_id = ?",
        )
        .bind(self.now_ms())
        .bind(error)
        .bind(run_id)).await?;
        Ok(())
    }

    /// One run.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row = self
            .fetch_optional("reading a run", sqlx::query("SELECT * FROM runs WHERE run_id = ?").bind(run_id))
            .await?;
        row.map(|r| run_from_row(&r)).transpose()
    }

    /// Runs, oldest first; only those of `pipeline` when given.
    pub async fn runs(&self, pipeline: Option<&str>) -> Result<Vec<RunRecord>> {
        let rows = self
            .fetch_all(
                "listing runs",
                sqlx::query("SELECT * FROM runs WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY started_at_ms, run_id")
                    .bind(pipeline),
            )
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Keeps the definition of an external table of the session (`CREATE EXTERNAL TABLE`).
    pub async fn save_session_table(&self, name: &str, definition: &str) -> Result<()> {
        self.execute(
            "saving an external table",
            sqlx::query("INSERT OR REPLACE INTO session_tables (name, definition) VALUES (?, ?)")
                .bind(name)
                .bind(definition),
        )
        .await?;
        Ok(())
    }

    /// Forgets a session table (after `DROP TABLE`); nothing happens for other tables.
    pub async fn drop_session_table(&self, name: &str) -> Result<()> {
        self.execute(
            "forgetting an external table",
            sqlx::query("DELETE FROM session_tables WHERE name = ?").bind(name),
        )
        .await?;
        Ok(())
    }

    /// The kept external-table definitions, as (name, SQL).
    pub async fn session_tables(&self) -> Result<Vec<(String, String)>> {
        let rows = self
            .fetch_all(
                "listing external tables",
                sqlx::query("SELECT name, definition FROM session_tables ORDER BY rowid"),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get("name"), r.get("definition"))).collect())
    }

    /// Records a run event (its kind, and the whole event as JSON).
    pub async fn record_event(&self, run_id: &str, kind: &str, at_ms: i64, detail: &str) -> Result<()> {
        self.execute(
            "recording a run event",
            sqlx::query("INSERT INTO events (run_id, at_ms, kind, detail) VALUES (?, ?, ?, ?)")
                .bind(run_id)
                .bind(at_ms)
                .bind(kind)
                .bind(detail),
        )
        .await?;
        Ok(())
    }

    /// Run events as (run id, time, kind, JSON detail), in the order they were recorded.
    pub async fn events(&self) -> Result<Vec<(String, i64, String, String)>> {
        let rows = self
            .fetch_all(
                "listing run events",
                sqlx::query("SELECT run_id, at_ms, kind, detail FROM events ORDER BY rowid"),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get("run_id"), r.get("at_ms"), r.get("kind"), r.get("detail"))).collect())
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
            })
            .collect())
    }
}

fn pipeline_from_row(r: &SqliteRow) -> PipelineRecord {
    PipelineRecord {
        name: r.get("name"),
        definition: r.get("definition"),
        target: r.get("target"),
        shards: r.get::<Option<i64>, _>("shards").map(|s| s as usize),
        created_at_ms: r.get("created_at_ms"),
    }
}

fn run_from_row(r: &SqliteRow) -> Result<RunRecord> {
    Ok(RunRecord {
        run_id: r.get("run_id"),
        pipeline: r.get("pipeline"),
        target: r.get("target"),
        status: r.get::<String, _>("status").parse()?,
        shards: r.get::<i64, _>("shards") as usize,
        started_at_ms: r.get("started_at_ms"),
        finished_at_ms: r.get("finished_at_ms"),
        rows: r.get::<i64, _>("rows") as u64,
        files: r.get::<i64, _>("files") as u64,
        bytes: r.get::<i64, _>("bytes") as u64,
        snapshot_id: r.get("snapshot_id"),
        error: r.get("error"),
        sequence: r.get("sequence"),
        statement: r.get("statement"),
        base: r.get("base"),
        lease_until_ms: r.get("lease_until_ms"),
        attempt: r.get("attempt"),
    })
}

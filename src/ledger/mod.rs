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

mod expectations;
mod files;
mod records;
mod runs;
mod schedules;
mod steps;

pub use expectations::ExpectationRecord;
use records::pipeline_from_row;
pub use records::{NewRun, PipelineRecord, RunRecord, RunStatus, ShardTaskRecord, ShardTotals};
pub use schedules::ScheduledRunRecord;
pub use steps::{PipelineRunRecord, StepRecord, StepTotals};

/// What `shard_tasks.executor` says of a shard that ran in the process that opened its run.
pub const LOCAL_EXECUTOR: &str = "local";

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
    executor       TEXT NOT NULL DEFAULT 'local',
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
CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id           TEXT PRIMARY KEY,
    pipeline         TEXT NOT NULL,
    status           TEXT NOT NULL,
    started_at_ms    INTEGER NOT NULL,
    finished_at_ms   INTEGER,
    error            TEXT,
    lease_until_ms   INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_pipeline ON pipeline_runs (pipeline, status);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_start ON pipeline_runs (pipeline, started_at_ms);
CREATE TABLE IF NOT EXISTS table_expectations (
    table_name    TEXT NOT NULL,
    name          TEXT NOT NULL,
    condition     TEXT NOT NULL,
    action        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (table_name, name)
);
CREATE TABLE IF NOT EXISTS expectations (
    run_id         TEXT NOT NULL,
    pipeline       TEXT,
    target         TEXT NOT NULL,
    name           TEXT NOT NULL,
    action         TEXT NOT NULL,
    passed         INTEGER NOT NULL,
    failed         INTEGER NOT NULL,
    rows_in        INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS scheduled_runs (
    pipeline        TEXT NOT NULL,
    due_ms          INTEGER NOT NULL,
    status          TEXT NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 1,
    run_id          TEXT,
    claimed_at_ms   INTEGER NOT NULL,
    lease_until_ms  INTEGER,
    next_attempt_ms INTEGER,
    finished_at_ms  INTEGER,
    error           TEXT,
    PRIMARY KEY (pipeline, due_ms)
);
CREATE INDEX IF NOT EXISTS scheduled_runs_by_status ON scheduled_runs (status, pipeline);
CREATE TABLE IF NOT EXISTS steps (
    run_id         TEXT NOT NULL,
    pipeline       TEXT NOT NULL,
    step           TEXT NOT NULL,
    target         TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    step_run_id    TEXT,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER,
    rows           INTEGER NOT NULL DEFAULT 0,
    files          INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    snapshot_id    INTEGER,
    error          TEXT,
    PRIMARY KEY (run_id, step)
);
"#;

/// A pipeline's columns, and the status of its latest run (a write run, or a run of its steps).
/// Each side takes its latest run through its index, so the cost does not grow with the history
/// (the scheduler reads this every tick).
const PIPELINE_COLUMNS: &str = "p.*, (SELECT status FROM (
        SELECT * FROM (SELECT status, started_at_ms FROM runs WHERE pipeline = p.name
                       ORDER BY started_at_ms DESC LIMIT 1)
        UNION ALL
        SELECT * FROM (SELECT status, started_at_ms FROM pipeline_runs WHERE pipeline = p.name
                       ORDER BY started_at_ms DESC LIMIT 1)
    ) ORDER BY started_at_ms DESC LIMIT 1) AS last_status";

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
        if !columns.iter().any(|c| c.get::<String, _>("name") == "cancel_requested") {
            let add = sqlx::query("ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0");
            self.execute("adding the cancel_requested column to runs", add).await?;
        }
        let columns =
            self.fetch_all("reading the shard_tasks table", sqlx::query("PRAGMA table_info(shard_tasks)")).await?;
        if !columns.iter().any(|c| c.get::<String, _>("name") == "executor") {
            let add = sqlx::query("ALTER TABLE shard_tasks ADD COLUMN executor TEXT NOT NULL DEFAULT 'local'");
            self.execute("adding the executor column to shard_tasks", add).await?;
        }
        let columns =
            self.fetch_all("reading the pipelines table", sqlx::query("PRAGMA table_info(pipelines)")).await?;
        let added = [
            ("catalog_file", "ALTER TABLE pipelines ADD COLUMN catalog_file TEXT"),
            ("schedule", "ALTER TABLE pipelines ADD COLUMN schedule TEXT"),
            ("timezone", "ALTER TABLE pipelines ADD COLUMN timezone TEXT"),
            ("paused", "ALTER TABLE pipelines ADD COLUMN paused INTEGER NOT NULL DEFAULT 0"),
            ("schedule_since_ms", "ALTER TABLE pipelines ADD COLUMN schedule_since_ms INTEGER"),
        ];
        for (column, add) in added {
            if !columns.iter().any(|c| c.get::<String, _>("name") == column) {
                self.execute("adding a column to pipelines", sqlx::query(add)).await?;
            }
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
            "{verb} INTO pipelines (name, definition, target, shards, created_at_ms, catalog_file, schedule, timezone,
                                    paused, schedule_since_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&pipeline.name)
        .bind(&pipeline.definition)
        .bind(&pipeline.target)
        .bind(pipeline.shards.map(|s| s as i64))
        .bind(pipeline.created_at_ms)
        .bind(&pipeline.catalog_file)
        .bind(pipeline.schedule.as_ref().map(|(cron, _)| cron))
        .bind(pipeline.schedule.as_ref().and_then(|(_, zone)| zone.as_ref()))
        .bind(pipeline.paused)
        .bind(pipeline.schedule_since_ms)
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
            .fetch_optional(
                "reading a pipeline",
                sqlx::query(&format!("SELECT {PIPELINE_COLUMNS} FROM pipelines p WHERE name = ?")).bind(name),
            )
            .await?;
        Ok(row.map(|r| pipeline_from_row(&r)))
    }

    /// All pipelines, by name.
    pub async fn pipelines(&self) -> Result<Vec<PipelineRecord>> {
        let query = format!("SELECT {PIPELINE_COLUMNS} FROM pipelines p ORDER BY name");
        let rows = self.fetch_all("listing pipelines", sqlx::query(&query)).await?;
        Ok(rows.iter().map(pipeline_from_row).collect())
    }

    /// Saves a pipeline's new definition, schedule and pause state (`ALTER PIPELINE`); false
    /// when there is no such pipeline.
    pub async fn alter_pipeline(&self, pipeline: &PipelineRecord) -> Result<bool> {
        let query = sqlx::query(
            "UPDATE pipelines SET definition = ?, shards = ?, schedule = ?, timezone = ?, paused = ?,
                                  schedule_since_ms = ?
             WHERE name = ?",
        )
        .bind(&pipeline.definition)
        .bind(pipeline.shards.map(|s| s as i64))
        .bind(pipeline.schedule.as_ref().map(|(cron, _)| cron))
        .bind(pipeline.schedule.as_ref().and_then(|(_, zone)| zone.as_ref()))
        .bind(pipeline.paused)
        .bind(pipeline.schedule_since_ms)
        .bind(&pipeline.name);
        Ok(self.execute("altering a pipeline", query).await? == 1)
    }

    /// Removes a pipeline (its runs stay in the history); false when there was none.
    pub async fn drop_pipeline(&self, name: &str) -> Result<bool> {
        let done =
            self.execute("dropping a pipeline", sqlx::query("DELETE FROM pipelines WHERE name = ?").bind(name)).await?;
        Ok(done > 0)
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
}

//! What the ledger keeps, as values: pipelines, runs and their states, shard tasks.

use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{LedgerError, Result};

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
    /// Cancelled before its commit (Ctrl-C, or its caller gave up on it): nothing became
    /// visible and the staged files were deleted.
    Cancelled,
    /// Failed, and the scheduler gave up on it after its retries: on the dead-letter list
    /// (`RETRY RUN` runs it again under its id).
    Dead,
}

impl RunStatus {
    /// The status as stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Staging => "staging",
            RunStatus::Committing => "committing",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Dead => "dead",
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
            "cancelled" => RunStatus::Cancelled,
            "dead" => RunStatus::Dead,
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
    /// The catalog file its target's catalog was declared in, when not the home's own catalog
    /// (named when a later process runs the pipeline without it).
    pub catalog_file: Option<String>,
    /// When `sluice serve` runs it: the cron expression and time zone, if scheduled.
    pub schedule: Option<(String, Option<String>)>,
    /// Paused (`ALTER PIPELINE ... PAUSE`): the scheduler leaves it alone.
    pub paused: bool,
    /// Since when its schedule counts (ms since the epoch): due times before it are not owed.
    pub schedule_since_ms: Option<i64>,
    /// The status of its latest run, if it ran (read from the runs; not written).
    pub last_status: Option<String>,
}

impl PipelineRecord {
    /// The tables (or files) it writes: one, or one per step.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.target.split(", ")
    }
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
    /// Where it ran: `local` (this process), or a cluster executor's `host:port`.
    pub executor: String,
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

pub(super) fn pipeline_from_row(r: &SqliteRow) -> PipelineRecord {
    PipelineRecord {
        name: r.get("name"),
        definition: r.get("definition"),
        target: r.get("target"),
        shards: r.get::<Option<i64>, _>("shards").map(|s| s as usize),
        created_at_ms: r.get("created_at_ms"),
        catalog_file: r.get("catalog_file"),
        schedule: r.get::<Option<String>, _>("schedule").map(|cron| (cron, r.get("timezone"))),
        paused: r.get::<i64, _>("paused") != 0,
        schedule_since_ms: r.get("schedule_since_ms"),
        last_status: r.get("last_status"),
    }
}

pub(super) fn run_from_row(r: &SqliteRow) -> Result<RunRecord> {
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

//! The coordinator layer owns a run. A [`Coordinator`] decides how a run's input is split into
//! shards, writes each shard, and, when every shard has succeeded, publishes what they wrote in
//! one step; when anything fails it removes all of it. The [`Runner`] drives every run through
//! the same lifecycle, with the ledger, a lease and events around it (DESIGN §4):
//!
//! ```text
//!  prepare_shards (plan with N output partitions)         before anything is recorded
//!     │
//!  open run (ledger: staging, a lease renewed by a heartbeat)          events: Opened
//!  on_start
//!     │
//!  write_shard 0..N ──► staged files (each path in the ledger before it is opened)
//!     │  any shard failed ───────────────────────────────┐            ShardFinished × N
//!  ledger: committing                                    │
//!     │                                                  ▼
//!  on_finish(every shard's files, rows, bytes, time)   on_error: delete staged files,
//!     │  one snapshot / version / renamed file            ledger: failed    Failed, Closed
//!     │  outcome unknown: find the run in the target's history
//!     ▼
//!  ledger: succeeded (snapshot id, rows, files, bytes)                 Committed, Closed
//! ```
//!
//! Built-ins: [`TableCommit`], the Iceberg and Delta commit coordinator (one snapshot or
//! version through the table's [`crate::runtime::TableFormat`]); [`FileMerge`], for `COPY (SELECT ...) TO 'out.csv'`
//! (JSONL, Parquet): part files merged into the one requested file and renamed into place; and
//! [`Composite`], which chains several (commit, then notify) with a defined order and error
//! semantics. A library user plugs in their own through
//! [`crate::EngineBuilder::wrap_coordinator`]; `examples/notify.rs` shows one.
//!
//! A run whose process dies keeps its ledger row `staging` or `committing` until its lease runs
//! out; [`Runner::resolve`] then settles it from the target's history
//! ([`Coordinator::find_commit`]), never by a blind retry, fencing a `committing` run off first
//! ([`Coordinator::fence`]) so that a process that was only stalled cannot commit afterwards.

mod commit;
mod composite;
mod file_merge;
mod runner;

pub use commit::{CommitTarget, RemoteJob, TableCommit, written_files_schema};
pub use composite::Composite;
pub use file_merge::{ExportFormat, FileMerge};
pub use runner::{CANCEL_POLL, HeldRun, RunError, Runner, StagedRun};

use std::sync::Arc;

use std::time::Duration;
use tokio_util::sync::CancellationToken;

use async_trait::async_trait;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;

use crate::ledger::ShardTotals;
use crate::runtime::{BoxError, ShardError};
pub use crate::runtime::{CommitError, Fence, HeldCommit, RunContext, StagedFile};

/// A run's lifecycle, as the [`Runner`] drives it: `prepare_shards`, `on_start`, `write_shard`
/// on every shard at once, then `on_finish` with every shard's result, or `on_error` when any
/// step failed. Every hook but `write_shard` has a default that does nothing, so a coordinator
/// that only observes (a notification) implements just the hooks it needs and runs after one that
/// writes, in a [`Composite`].
///
/// A coordinator value serves one run.
#[async_trait]
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// Names it in logs and errors (`iceberg-commit`, `file-merge`, ...).
    fn name(&self) -> &str;

    /// Decides how the input is split into shards: returns the plan whose output partitions are
    /// the shards; `shards` is how many the run asks for. Called before the run is recorded, so
    /// an error here leaves nothing behind. The default keeps `input` as it is.
    fn prepare_shards(
        &self,
        input: Arc<dyn ExecutionPlan>,
        shards: usize,
    ) -> Result<Arc<dyn ExecutionPlan>, CoordinatorError> {
        let _ = shards;
        Ok(input)
    }

    /// Called once the run is open in the ledger, before any shard starts.
    async fn on_start(&self, run: &RunContext) -> Result<(), CoordinatorError> {
        let _ = run;
        Ok(())
    }

    /// Writes shard `shard` from its input and returns the files it staged. Each file's location
    /// goes to [`RunContext::stage_files`] before the file is created, so that a crash cannot
    /// leave a file nobody knows of. The default refuses: a coordinator that does not write
    /// belongs after one that does, in a [`Composite`].
    async fn write_shard(
        &self,
        run: &RunContext,
        shard: usize,
        input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        let _ = (run, input);
        let message = format!("coordinator `{}` does not write shards", self.name());
        Err(ShardError::Input { shard, source: datafusion::error::DataFusionError::Plan(message) })
    }

    /// Called when every shard has succeeded, with each shard's files, rows, bytes and time:
    /// publishes the run in one step. Returns the snapshot / version it committed, if any.
    async fn on_finish(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        let _ = (run, shards);
        Ok(None)
    }

    /// Instead of `on_finish`, for a run published together with others (an atomic pipeline's
    /// step): writes the commit without publishing it, and hands it over for the group's swap
    /// ([`HeldCommit`]); `None` when there is nothing to commit. The default refuses: only a
    /// table commit can be held.
    async fn on_hold(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<HeldCommit>, CoordinatorError> {
        let _ = (run, shards);
        Err(CoordinatorError::new(self.name(), "this coordinator cannot hold a commit to publish it with other tables"))
    }

    /// Called once when the run failed (in `on_start`, a shard, or `on_finish`), or when
    /// recovery settles a run whose process died: nothing the run staged may stay.
    async fn on_error(&self, run: &RunContext, error: &str) -> Result<(), CoordinatorError> {
        let _ = (run, error);
        Ok(())
    }

    /// The snapshot / version that `run` committed, if the target's history has one: how a
    /// commit whose outcome is unknown, or a run whose process died, is settled. The default
    /// knows of no history.
    async fn find_commit(&self, run: &RunContext) -> Result<Option<i64>, CoordinatorError> {
        let _ = run;
        Ok(None)
    }

    /// Makes a late commit of `run` impossible (recovery of a run left `committing`, whose
    /// process may only be stalled): see [`Fence`]. Only after [`Fence::Fenced`] may recovery
    /// delete what the run staged. The default has nothing a late process could publish.
    async fn fence(&self, run: &RunContext) -> Result<Fence, CoordinatorError> {
        let _ = run;
        Ok(Fence::Fenced)
    }
}

/// Why a coordinator's hook failed.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct CoordinatorError {
    /// The coordinator ([`Coordinator::name`]).
    pub coordinator: String,
    /// What went wrong.
    pub source: BoxError,
    /// A snapshot / version already committed before the failure (by an earlier member of a
    /// [`Composite`]): it stays, and the run is recorded as succeeded with it.
    pub committed: Option<i64>,
    /// Whether the commit may have landed (its answer was lost and the target's history could
    /// not be read): the run's files must stay until recovery settles it.
    pub outcome_unknown: bool,
}

impl CoordinatorError {
    /// An error of `coordinator`.
    pub fn new(coordinator: &str, source: impl Into<BoxError>) -> Self {
        Self { coordinator: coordinator.to_string(), source: source.into(), committed: None, outcome_unknown: false }
    }

    /// A commit error of `coordinator`, keeping whether the commit may have landed.
    pub fn commit(coordinator: &str, error: CommitError) -> Self {
        let outcome_unknown = !error.nothing_landed();
        Self { outcome_unknown, ..Self::new(coordinator, error) }
    }
}

/// What one shard did, as [`Coordinator::on_finish`] sees it.
#[derive(Debug, Clone)]
pub struct ShardResult {
    /// Shard index.
    pub shard: usize,
    /// The files it staged.
    pub files: Vec<StagedFile>,
    /// Rows, files and bytes it staged.
    pub totals: ShardTotals,
    /// How long it ran.
    pub elapsed: Duration,
}

/// A run to drive: its input, the coordinator that writes and publishes it, and where it
/// comes from.
#[derive(Debug)]
pub struct RunJob {
    /// The table (`catalog.schema.table`) or file written.
    pub target: String,
    /// The run's coordinator.
    pub coordinator: Arc<dyn Coordinator>,
    /// The rows to write (a DataFusion physical plan).
    pub input: Arc<dyn ExecutionPlan>,
    /// Number of shards asked for (the coordinator decides: [`Coordinator::prepare_shards`]).
    pub shards: usize,
    /// The target's snapshot / version before the run: its commit can only be later.
    pub base: Option<i64>,
    /// Where the run comes from.
    pub origin: RunOrigin,
    /// Cancels the run: before its commit it is rolled back and recorded `cancelled`; once it
    /// is committing, the commit goes on to its end (see [`Runner::run`]).
    pub cancel: CancellationToken,
    /// Checked once every shard has staged, before the commit (a data quality gate).
    pub check: Option<Arc<dyn StagedCheck>>,
}

/// A check of a run's staged rows, made once every shard has staged and before the commit: an
/// error fails the run (rolled back, nothing committed) with its reason.
pub trait StagedCheck: Send + Sync + std::fmt::Debug {
    /// `Err(why)` when the run may not commit.
    fn check(&self) -> Result<(), String>;
}

/// Where a run comes from: what the ledger keeps of it besides its target.
#[derive(Debug, Clone, Default)]
pub struct RunOrigin {
    /// The pipeline this run belongs to, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
    /// The write statement as SQL, kept in the ledger for `RETRY RUN`.
    pub statement: String,
    /// Set when this is a retry of a failed run, which keeps its id and sequence number.
    pub retry_of: Option<(String, i64)>,
    /// The id a new run gets (its caller named it beforehand); `None`: a fresh UUIDv7.
    pub run_id: Option<String>,
}

/// How an abandoned run was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Its commit had landed: the run is marked succeeded with this snapshot / version.
    Committed(i64),
    /// It had not committed: its staged files were deleted and it is marked failed.
    RolledBack,
    /// Its process renewed the lease (or another recovery settled it) meanwhile: left alone.
    StillRunning,
    /// It was committing, its commit is not in the table's history, and the catalog cannot
    /// fence a late commit off: it is marked failed, and its staged files are kept (a late
    /// commit may still reference them).
    KeptFiles,
}

/// The typed outcome of a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The run id (UUIDv7).
    pub run_id: String,
    /// The pipeline, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
    /// The table (`catalog.schema.table`) or file written.
    pub target: String,
    /// Shards the run was split into.
    pub shards: usize,
    /// Rows committed.
    pub rows: u64,
    /// Data files committed.
    pub files: u64,
    /// Bytes of data files committed.
    pub bytes: u64,
    /// The snapshot committed; `None` when there was nothing to commit, or the target keeps no
    /// snapshots (an exported file).
    pub snapshot_id: Option<i64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The cluster executors that ran its shards (`host:port`; empty: this process).
    pub executors: Vec<String>,
    /// For a run of a pipeline with steps: every step, as `sluice.steps` has it.
    pub steps: Vec<crate::ledger::StepRecord>,
    /// For a write with expectations: rows in, dropped, and each constraint's counts.
    pub quality: Option<QualityReport>,
}

/// What a write's expectations found ([`RunReport::quality`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QualityReport {
    /// Rows the query gave.
    pub rows_in: u64,
    /// Rows not written (a `DROP ROW` expectation broken).
    pub rows_dropped: u64,
    /// Rows kept in the quarantine table instead.
    pub rows_quarantined: u64,
    /// Each expectation: name, action, rows that met it, rows that broke it.
    pub constraints: Vec<ConstraintCount>,
}

/// One expectation's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintCount {
    /// The constraint's name.
    pub name: String,
    /// `WARN`, `DROP ROW`, `QUARANTINE` or `FAIL`.
    pub action: String,
    /// Rows that met it (NULL counts as met).
    pub passed: u64,
    /// Rows that broke it.
    pub failed: u64,
}

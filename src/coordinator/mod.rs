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
//! Built-ins: [`TableCommit`], the Iceberg and Delta commit coordinators (one snapshot or
//! version through a [`TableWriter`]); [`FileMerge`], for `COPY (SELECT ...) TO 'out.csv'`
//! (JSONL, Parquet): part files merged into the one requested file and renamed into place; and
//! [`Composite`], which chains several (commit, then notify) with a defined order and error
//! semantics. A library user plugs in their own through
//! [`crate::EngineBuilder::wrap_coordinator`]; `examples/notify.rs` shows one.
//!
//! A run whose process dies keeps its ledger row `staging` or `committing` until its lease runs
//! out; [`Runner::resolve`] then settles it from the target's history
//! ([`Coordinator::find_commit`]), never by a blind retry.

mod commit;
mod composite;
mod file_merge;

pub use commit::TableCommit;
pub use composite::Composite;
pub use file_merge::{ExportFormat, FileMerge};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::memory_pool::{MemoryPool, UnboundedMemoryPool};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use crate::events::{EventLog, RunEvent};
use crate::ledger::{Ledger, LedgerError, NewRun, RunRecord, ShardTotals};
use crate::runtime::{self, BoxError, ShardError};
pub use crate::sinks::{RunIdentity, StagedFile, TableWriter, WriteMode};

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
}

impl CoordinatorError {
    /// An error of `coordinator`.
    pub fn new(coordinator: &str, source: impl Into<BoxError>) -> Self {
        Self { coordinator: coordinator.to_string(), source: source.into(), committed: None }
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

/// The run a coordinator's hook is called for.
#[derive(Debug, Clone)]
pub struct RunContext {
    identity: RunIdentity,
    target: String,
    shards: usize,
    ledger: Ledger,
    memory_pool: Arc<dyn MemoryPool>,
}

impl RunContext {
    /// The context of run `identity` into `target` with `shards` shards, recording its staged
    /// files in `ledger`. The [`Runner`] makes one per run; tests of a coordinator make their own.
    pub fn new(identity: RunIdentity, target: impl Into<String>, shards: usize, ledger: Ledger) -> Self {
        let memory_pool = Arc::new(UnboundedMemoryPool::default());
        Self { identity, target: target.into(), shards, ledger, memory_pool }
    }

    /// The same context, with rows a shard holds accounted in `pool` (the [`Runner`] passes the
    /// session's, so that `--memory-limit` bounds them too; the default pool is unbounded).
    pub fn with_memory_pool(mut self, pool: Arc<dyn MemoryPool>) -> Self {
        self.memory_pool = pool;
        self
    }

    /// The memory pool that rows held by a shard are accounted in.
    pub fn memory_pool(&self) -> &Arc<dyn MemoryPool> {
        &self.memory_pool
    }

    /// The run id (UUIDv7).
    pub fn run_id(&self) -> &str {
        &self.identity.run_id
    }

    /// Who the run is: id, pipeline, sequence number and the target's version at its start.
    pub fn identity(&self) -> &RunIdentity {
        &self.identity
    }

    /// The table (`catalog.schema.table`) or file the run writes.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How many shards the run has.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Records files `shard` is about to create, before they exist (DESIGN §4 step 2): whatever
    /// happens next, rollback and recovery know to delete them. One ledger transaction (and one
    /// sync to disk) for all of them.
    pub async fn stage_files(&self, shard: usize, locations: &[String]) -> Result<(), LedgerError> {
        self.ledger.stage_files(self.run_id(), shard, locations).await
    }

    /// Deletes every file recorded with [`RunContext::stage_files`] and not committed with
    /// `delete` (again, for files a rollback deleted before: recovery re-checks them), then records
    /// them deleted. A file that is not there must not be an error. Only files inside `root` (the
    /// table's or the export's own folder, after normalisation) are deleted: a ledger entry
    /// pointing elsewhere is left alone, with a warning.
    pub async fn delete_staged<F, Fut>(&self, coordinator: &str, root: &str, delete: F) -> Result<(), CoordinatorError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let error = |source: BoxError| CoordinatorError::new(coordinator, source);
        for location in self.ledger.uncommitted_files(self.run_id()).await.map_err(|e| error(e.into()))? {
            if !crate::catalog::names::is_inside(root, &location) {
                tracing::warn!(run_id = %self.run_id(), "staged file {location} is not inside {root}: not deleting it");
                continue;
            }
            delete(location.clone())
                .await
                .map_err(|e| error(format!("deleting staged file {location}: {e}").into()))?;
        }
        self.ledger.mark_staged_files_deleted(self.run_id()).await.map_err(|e| error(e.into()))
    }
}

/// Errors of a run. Each names the run and its target.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The coordinator could not split the input into shards (the rows do not fit the table,
    /// say); raised before anything is recorded or written.
    #[error("cannot write into `{target}`: {source}")]
    Prepare {
        /// The table or file.
        target: String,
        /// The coordinator's error.
        source: CoordinatorError,
    },
    /// A shard failed; the run was rolled back.
    #[error("run {run_id} into `{target}` failed and was rolled back: {source}")]
    Shard {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The shard's error.
        source: ShardError,
    },
    /// The coordinator's `on_start` or `on_finish` failed; the run was rolled back.
    #[error("run {run_id} into `{target}` failed to {step} and was rolled back: {source}")]
    Coordinator {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// `start` or `commit`.
        step: &'static str,
        /// The coordinator's error.
        source: CoordinatorError,
    },
    /// The run committed, and a coordinator after the commit (a notification) failed. The
    /// commit stands and the run is recorded as succeeded: retrying it would write nothing.
    #[error(
        "run {run_id} into `{target}` committed (snapshot {snapshot_id}), but coordinator `{}` failed after the commit: {source}",
        .source.coordinator
    )]
    AfterCommit {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The snapshot / version committed.
        snapshot_id: i64,
        /// The error of the coordinator that failed.
        source: CoordinatorError,
    },
    /// Rolling back failed: some staged files may be left (the ledger still lists them, and
    /// recovery deletes them on a later start).
    #[error("run {run_id} into `{target}` failed ({error}), and rolling it back failed too: {source}")]
    RollBack {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// Why the run failed.
        error: String,
        /// Why the rollback failed.
        source: CoordinatorError,
    },
    /// A test failpoint stopped the run (rolled back, or left as a crash would leave it).
    #[error(
        "run {run_id} into `{target}` stopped by failpoint `{failpoint}`{}",
        if *.rolled_back { " and was rolled back" } else { "" }
    )]
    Injected {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The failpoint.
        failpoint: String,
        /// Whether the staged files were deleted.
        rolled_back: bool,
    },
    /// Recovery settled the run while it was staging (its process had let the lease lapse).
    #[error("run {run_id} into `{target}` lost its lease: recovery settled it while it ran; nothing was committed")]
    LeaseLost {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A run to drive: its input, the coordinator that writes and publishes it, and what the
/// ledger keeps of it.
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
    /// The pipeline this run belongs to, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
    /// The write statement as SQL, kept in the ledger for `RETRY RUN`.
    pub statement: String,
    /// The target's snapshot / version before the run: its commit can only be later.
    pub base: Option<i64>,
    /// Set when this is a retry of a failed run, which keeps its id and sequence number.
    pub retry_of: Option<(String, i64)>,
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
}

impl RunReport {
    /// The report as a one-row batch, the result of `RUN PIPELINE`, `INSERT` and `COPY`.
    pub fn to_batch(&self) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("pipeline", DataType::Utf8, true),
            Field::new("target", DataType::Utf8, false),
            Field::new("shards", DataType::UInt64, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("files", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("snapshot_id", DataType::Int64, true),
            Field::new("elapsed_ms", DataType::UInt64, false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str()])),
            Arc::new(StringArray::from(vec![self.pipeline.as_deref()])),
            Arc::new(StringArray::from(vec![self.target.as_str()])),
            Arc::new(UInt64Array::from(vec![self.shards as u64])),
            Arc::new(UInt64Array::from(vec![self.rows])),
            Arc::new(UInt64Array::from(vec![self.files])),
            Arc::new(UInt64Array::from(vec![self.bytes])),
            Arc::new(Int64Array::from(vec![self.snapshot_id])),
            Arc::new(UInt64Array::from(vec![self.elapsed.as_millis() as u64])),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).expect("run report columns match their schema")
    }
}

/// Drives runs through their coordinator's lifecycle, keeping the ledger, the lease and the
/// events.
#[derive(Debug, Clone)]
pub struct Runner {
    ledger: Ledger,
    events: EventLog,
    lease: Duration,
}

/// Renews a run's lease until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Runner {
    /// A runner recording its runs in `ledger` and publishing their events to `events`; a run
    /// whose process stops renewing its lease for `lease` counts as abandoned.
    pub fn new(ledger: Ledger, events: EventLog, lease: Duration) -> Self {
        Self { ledger, events, lease }
    }

    fn lease_until_ms(&self) -> i64 {
        crate::ledger::now_ms() + self.lease.as_millis() as i64
    }

    fn heartbeat(&self, run_id: &str) -> Heartbeat {
        let (runner, run_id) = (self.clone(), run_id.to_string());
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(runner.lease / 3).await;
                if let Err(e) = runner.ledger.renew_lease(&run_id, runner.lease_until_ms()).await {
                    tracing::warn!(%run_id, "could not renew the run's lease: {e}");
                }
            }
        }))
    }

    /// Settles a run left `staging` or `committing` by a process that is gone (DESIGN §4 step 5):
    /// if the target's history has the run, it succeeded; otherwise `coordinator` deletes what
    /// it staged.
    pub async fn resolve(&self, coordinator: &dyn Coordinator, record: &RunRecord) -> Result<Resolution, RunError> {
        let identity = RunIdentity {
            run_id: record.run_id.clone(),
            pipeline: record.pipeline.clone(),
            sequence: record.sequence,
            base: record.base,
        };
        let run = RunContext::new(identity, &record.target, record.shards, self.ledger.clone());
        let elapsed_ms = || (crate::ledger::now_ms() - record.started_at_ms).max(0) as u64;
        let found = coordinator
            .find_commit(&run)
            .await
            .map_err(|source| self.roll_back_error(&run, "abandoned by its process", source))?;
        if let Some(snapshot_id) = found {
            let tasks = self.ledger.shard_tasks(Some(run.run_id())).await?;
            let totals: ShardTotals = tasks.iter().map(|t| t.totals).sum();
            self.ledger.run_succeeded(run.run_id(), Some(snapshot_id), totals).await?;
            self.closed(run.run_id(), Some(snapshot_id), totals, elapsed_ms()).await;
            return Ok(Resolution::Committed(snapshot_id));
        }
        // Claim it first: only then are its files ours to delete.
        let error = "abandoned: its process stopped before the commit; staged files deleted";
        if !self.ledger.claim_abandoned(run.run_id(), error).await? {
            return Ok(Resolution::StillRunning);
        }
        coordinator.on_error(&run, error).await.map_err(|source| self.roll_back_error(&run, error, source))?;
        self.failed(run.run_id(), error, elapsed_ms()).await;
        Ok(Resolution::RolledBack)
    }

    /// Runs `job`: prepare the shards, write every one, then publish them in one step through
    /// the coordinator, or roll back.
    pub async fn run(&self, job: RunJob, task_ctx: Arc<TaskContext>) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let RunJob { target, coordinator, input, shards, pipeline, statement, base, retry_of } = job;
        let plan = coordinator
            .prepare_shards(input, shards)
            .map_err(|source| RunError::Prepare { target: target.clone(), source })?;
        let shards = plan.output_partitioning().partition_count();
        let (run_id, sequence) = match retry_of {
            Some((run_id, sequence)) => {
                self.ledger.reopen_run(&run_id, base, self.lease_until_ms()).await?;
                (run_id, sequence)
            }
            None => {
                let run_id = uuid::Uuid::now_v7().to_string();
                let new_run = NewRun {
                    run_id: &run_id,
                    pipeline: pipeline.as_deref(),
                    target: &target,
                    shards,
                    statement: &statement,
                    base,
                    lease_until_ms: self.lease_until_ms(),
                };
                let sequence = self.ledger.open_run(&new_run).await?;
                (run_id, sequence)
            }
        };
        let identity = RunIdentity { run_id, pipeline, sequence, base };
        let run = RunContext::new(identity, target, shards, self.ledger.clone())
            .with_memory_pool(task_ctx.memory_pool().clone());
        let run_id = run.run_id().to_string();
        let _heartbeat = self.heartbeat(&run_id);
        tracing::info!(%run_id, target = %run.target, shards, coordinator = coordinator.name(), "run opened");
        let opened = RunEvent::Opened {
            run_id: run_id.clone(),
            pipeline: run.identity.pipeline.clone(),
            target: run.target.clone(),
            shards,
        };
        self.events.emit(opened).await;
        let elapsed_ms = || started.elapsed().as_millis() as u64;
        let coordinator_failed =
            |step, source| RunError::Coordinator { run_id: run_id.clone(), target: run.target.clone(), step, source };

        if let Err(source) = coordinator.on_start(&run).await {
            self.roll_back(coordinator.as_ref(), &run, &source.to_string(), elapsed_ms()).await?;
            return Err(coordinator_failed("start", source));
        }
        let shard_results = runtime::run_shards(plan, task_ctx, |shard, stream| {
            self.clone().write_shard(coordinator.clone(), run.clone(), shard, stream)
        })
        .await;
        let shard_results = match shard_results {
            Ok(results) => results,
            Err(source) => {
                self.roll_back(coordinator.as_ref(), &run, &source.to_string(), elapsed_ms()).await?;
                return Err(RunError::Shard { run_id, target: run.target.clone(), source });
            }
        };
        let totals: ShardTotals = shard_results.iter().map(|s| s.totals).sum();

        let injected = |failpoint: String, rolled_back| RunError::Injected {
            run_id: run_id.clone(),
            target: run.target.clone(),
            failpoint,
            rolled_back,
        };
        if let Err(failpoint) = crate::failpoint::check("before-commit", &run.target) {
            let error = format!("injected failure at failpoint `{failpoint}`");
            self.roll_back(coordinator.as_ref(), &run, &error, elapsed_ms()).await?;
            return Err(injected(failpoint, true));
        }
        if !self.ledger.set_committing(&run_id).await? {
            // Recovery took the run while it was staging (its lease had lapsed): it is failed in
            // the ledger and must not commit. Delete what was staged since recovery's sweep.
            let error = "lost its lease";
            coordinator.on_error(&run, error).await.map_err(|source| self.roll_back_error(&run, error, source))?;
            return Err(RunError::LeaseLost { run_id, target: run.target.clone() });
        }
        let snapshot_id = match coordinator.on_finish(&run, &shard_results).await {
            Ok(snapshot_id) => snapshot_id,
            Err(source) => {
                let error = source.to_string();
                // The commit stands (DESIGN §4): what failed came after it.
                if let Some(snapshot_id) = source.committed {
                    if let Err(e) = coordinator.on_error(&run, &error).await {
                        tracing::warn!(%run_id, "after the commit, a coordinator's on_error failed too: {e}");
                    }
                    self.ledger.run_succeeded(&run_id, Some(snapshot_id), totals).await?;
                    self.closed(&run_id, Some(snapshot_id), totals, elapsed_ms()).await;
                    return Err(RunError::AfterCommit { run_id, target: run.target.clone(), snapshot_id, source });
                }
                self.roll_back(coordinator.as_ref(), &run, &error, elapsed_ms()).await?;
                return Err(coordinator_failed("commit", source));
            }
        };
        if let Err(failpoint) = crate::failpoint::check("after-commit", &run.target) {
            // As if the process died between the commit and the ledger update: the run stays
            // `committing` and its files, now part of the table, stay.
            return Err(injected(failpoint, false));
        }
        self.ledger.run_succeeded(&run_id, snapshot_id, totals).await?;
        self.closed(&run_id, snapshot_id, totals, elapsed_ms()).await;
        tracing::info!(%run_id, target = %run.target, rows = totals.rows, files = totals.files, ?snapshot_id, "run committed");
        Ok(RunReport {
            run_id,
            pipeline: run.identity.pipeline.clone(),
            target: run.target.clone(),
            shards,
            rows: totals.rows,
            files: totals.files,
            bytes: totals.bytes,
            snapshot_id,
            elapsed: started.elapsed(),
        })
    }

    /// One shard's task: the coordinator writes it; the ledger and the events learn how it ended.
    async fn write_shard(
        self,
        coordinator: Arc<dyn Coordinator>,
        run: RunContext,
        shard: usize,
        input: SendableRecordBatchStream,
    ) -> Result<ShardResult, ShardError> {
        let started = Instant::now();
        let ledger_error = |source| ShardError::Ledger { shard, source };
        self.ledger.shard_started(run.run_id(), shard).await.map_err(ledger_error)?;
        let written = coordinator.write_shard(&run, shard, input).await;
        let elapsed = started.elapsed();
        let result = written.map(|files| ShardResult {
            shard,
            totals: ShardTotals {
                rows: files.iter().map(StagedFile::rows).sum(),
                files: files.len() as u64,
                bytes: files.iter().map(StagedFile::bytes).sum(),
            },
            files,
            elapsed,
        });
        let totals = result.as_ref().map(|r| r.totals).unwrap_or_default();
        let error = result.as_ref().err().map(ToString::to_string);
        let finished = RunEvent::ShardFinished {
            run_id: run.run_id().to_string(),
            shard,
            rows: totals.rows,
            files: totals.files,
            bytes: totals.bytes,
            elapsed_ms: elapsed.as_millis() as u64,
            error: error.clone(),
        };
        self.events.emit(finished).await;
        let outcome = match &error {
            None => Ok(totals),
            Some(error) => Err(error.as_str()),
        };
        let recorded = self.ledger.shard_finished(run.run_id(), shard, outcome).await;
        let result = result?;
        recorded.map_err(ledger_error)?;
        Ok(result)
    }

    /// Announces a committed run: `Committed`, then `Closed`.
    async fn closed(&self, run_id: &str, snapshot_id: Option<i64>, totals: ShardTotals, elapsed_ms: u64) {
        let run_id = run_id.to_string();
        let (rows, files, bytes) = (totals.rows, totals.files, totals.bytes);
        self.events.emit(RunEvent::Committed { run_id: run_id.clone(), snapshot_id, rows, files, bytes }).await;
        self.events.emit(RunEvent::Closed { run_id, status: "succeeded".into(), elapsed_ms }).await;
    }

    /// Has the coordinator delete what the run staged, and marks the run failed.
    async fn roll_back(
        &self,
        coordinator: &dyn Coordinator,
        run: &RunContext,
        error: &str,
        elapsed_ms: u64,
    ) -> Result<(), RunError> {
        tracing::warn!(run_id = %run.run_id(), error, "rolling back run");
        // If the cleanup fails the run stays open: once its lease lapses, recovery tries again.
        coordinator.on_error(run, error).await.map_err(|source| self.roll_back_error(run, error, source))?;
        self.ledger.run_failed(run.run_id(), error).await?;
        self.failed(run.run_id(), error, elapsed_ms).await;
        Ok(())
    }

    fn roll_back_error(&self, run: &RunContext, error: &str, source: CoordinatorError) -> RunError {
        RunError::RollBack {
            run_id: run.run_id().to_string(),
            target: run.target.clone(),
            error: error.to_string(),
            source,
        }
    }

    /// Announces a failed run: `Failed`, then `Closed`.
    async fn failed(&self, run_id: &str, error: &str, elapsed_ms: u64) {
        self.events.emit(RunEvent::Failed { run_id: run_id.to_string(), error: error.to_string() }).await;
        self.events.emit(RunEvent::Closed { run_id: run_id.to_string(), status: "failed".into(), elapsed_ms }).await;
    }
}

//! The coordinator owns a run: it opens it in the ledger, starts the shards, and when every
//! shard has staged its files, publishes all of them in ONE snapshot (Iceberg) or version
//! (Delta) through the table's [`TableWriter`]. If anything fails,
//! nothing becomes visible and every staged file is deleted (DESIGN §4).
//!
//! ```text
//!  open run (ledger: staging, a lease renewed by a heartbeat)          events: Opened
//!     │
//!  shards 0..N ──► stage Parquet files (each path in the ledger before it is opened)
//!     │  any shard failed ───────────────────────────────┐            ShardFinished × N
//!  ledger: committing                                    │
//!     │                                                  ▼
//!  one snapshot / version {sluice.run-id, sluice.pipeline}     delete staged files,
//!     │  (append, overwrite or partition overwrite)             ledger: failed   Failed, Closed
//!     │  commit error: is the run id in the table history?
//!     ▼        yes → succeeded       no ──────────────────┘
//!  ledger: succeeded (snapshot id, rows, files, bytes)                 Committed, Closed
//! ```
//!
//! A run whose process dies keeps its ledger row `staging` or `committing` until its lease runs
//! out; [`Coordinator::resolve`] then settles it from the table's history, never by a blind retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::catalog::{CatalogError, TableName};
use crate::events::{EventLog, RunEvent};
use crate::ledger::{Ledger, LedgerError, NewRun, RunRecord, ShardTotals};
use crate::planner;
use crate::runtime::{self, BoxError, ShardError};
use crate::sinks::{CommitError, RunIdentity, ShardSink, StagedFile, TableWriter, WriteMode};

/// Errors of a run. Each names the run and the table.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The rows do not fit the table; raised before any file is written.
    #[error("cannot write into `{table}`: {message}")]
    Schema {
        /// The target table.
        table: TableName,
        /// What does not fit.
        message: String,
    },
    /// A shard failed; the run was rolled back.
    #[error("run {run_id} into `{table}` failed and was rolled back: {source}")]
    Shard {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
        /// The shard's error.
        source: ShardError,
    },
    /// The table format refused the commit; the run was rolled back.
    #[error("run {run_id} into `{table}` failed to commit and was rolled back: {source}")]
    Commit {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
        /// The table format's error.
        source: CommitError,
    },
    /// A staged file could not be deleted while rolling back.
    #[error("run {run_id} into `{table}`: deleting staged file {location} failed: {source}")]
    Cleanup {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
        /// The file.
        location: String,
        /// The error.
        source: BoxError,
    },
    /// A test failpoint stopped the run (rolled back, or left as a crash would leave it).
    #[error(
        "run {run_id} into `{table}` stopped by failpoint `{failpoint}`{}",
        if *.rolled_back { " and was rolled back" } else { "" }
    )]
    Injected {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
        /// The failpoint.
        failpoint: String,
        /// Whether the staged files were deleted.
        rolled_back: bool,
    },
    /// Recovery settled the run while it was staging (its process had let the lease lapse).
    #[error("run {run_id} into `{table}` lost its lease: recovery settled it while it ran; nothing was committed")]
    LeaseLost {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
    },
    /// Preparing the write failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The plan could not be split into shards.
    #[error("planning the shards: {0}")]
    Plan(#[from] datafusion::error::DataFusionError),
}

/// What a write asks the coordinator to do.
#[derive(Debug)]
pub struct WriteJob {
    /// The target table.
    pub table: TableName,
    /// How to stage files into it and commit them.
    pub writer: Arc<dyn TableWriter>,
    /// The rows to append, columns in table order (a DataFusion physical plan).
    pub input: Arc<dyn ExecutionPlan>,
    /// Expressions over `input` that split rows into shards by table partition (empty: none).
    pub partition_key: Vec<Arc<dyn PhysicalExpr>>,
    /// Number of shards (output partitions) to write with.
    pub shards: usize,
    /// The pipeline this run belongs to, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
    /// Append, or replace the table or the partitions written.
    pub mode: WriteMode,
    /// The write statement as SQL, kept in the ledger for `RETRY RUN`.
    pub statement: String,
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
    /// The table written.
    pub table: TableName,
    /// Shards the run was split into.
    pub shards: usize,
    /// Rows committed.
    pub rows: u64,
    /// Data files committed.
    pub files: u64,
    /// Bytes of data files committed.
    pub bytes: u64,
    /// The snapshot committed; `None` when there were no rows (nothing to commit).
    pub snapshot_id: Option<i64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl RunReport {
    /// The report as a one-row batch, the result of `RUN PIPELINE` and `INSERT`.
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
            Arc::new(StringArray::from(vec![self.table.to_string()])),
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

/// Runs writes through the commit protocol.
#[derive(Debug, Clone)]
pub struct Coordinator {
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

impl Coordinator {
    /// A coordinator recording its runs in `ledger` and publishing their events to `events`; a
    /// run whose process stops renewing its lease for `lease` counts as abandoned.
    pub fn new(ledger: Ledger, events: EventLog, lease: Duration) -> Self {
        Self { ledger, events, lease }
    }

    fn lease_until_ms(&self) -> i64 {
        crate::ledger::now_ms() + self.lease.as_millis() as i64
    }

    fn heartbeat(&self, run_id: &str) -> Heartbeat {
        let (coordinator, run_id) = (self.clone(), run_id.to_string());
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(coordinator.lease / 3).await;
                if let Err(e) = coordinator.ledger.renew_lease(&run_id, coordinator.lease_until_ms()).await {
                    tracing::warn!(%run_id, "could not renew the run's lease: {e}");
                }
            }
        }))
    }

    /// Settles a run left `staging` or `committing` by a process that is gone (DESIGN §4 step 5):
    /// if the table's history has the run, it succeeded; otherwise its staged files are deleted.
    pub async fn resolve(
        &self,
        writer: &dyn TableWriter,
        table: &TableName,
        record: &RunRecord,
    ) -> Result<Resolution, RunError> {
        let run = RunIdentity {
            run_id: record.run_id.clone(),
            pipeline: record.pipeline.clone(),
            sequence: record.sequence,
            base: record.base,
        };
        let found = writer.find_run(&run).await.map_err(|source| RunError::Commit {
            run_id: run.run_id.clone(),
            table: table.clone(),
            source,
        })?;
        match found {
            Some(snapshot_id) => {
                let tasks = self.ledger.shard_tasks(Some(&run.run_id)).await?;
                let totals: ShardTotals = tasks.iter().map(|t| t.totals).sum();
                self.ledger.run_succeeded(&run.run_id, Some(snapshot_id), totals).await?;
                let elapsed_ms = (crate::ledger::now_ms() - record.started_at_ms).max(0) as u64;
                self.closed(&run.run_id, Some(snapshot_id), totals, elapsed_ms).await;
                Ok(Resolution::Committed(snapshot_id))
            }
            None => {
                // Claim it first: only then are its files ours to delete.
                let error = "abandoned: its process stopped before the commit; staged files deleted";
                if !self.ledger.claim_abandoned(&run.run_id, error).await? {
                    return Ok(Resolution::StillRunning);
                }
                let elapsed_ms = (crate::ledger::now_ms() - record.started_at_ms).max(0) as u64;
                self.delete_staged(writer, table, &run.run_id).await?;
                self.failed(&run.run_id, error, elapsed_ms).await;
                Ok(Resolution::RolledBack)
            }
        }
    }

    /// Runs `job`: stage on every shard, then commit one snapshot, or roll back.
    pub async fn run(&self, job: WriteJob, task_ctx: Arc<TaskContext>) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let WriteJob { table, writer, input, partition_key, shards, pipeline, mode, statement, retry_of } = job;
        check_fits(&table, &input.schema(), writer.schema())?;
        let plan = planner::shard_plan(input, shards, partition_key)?;
        let target = table.to_string();
        let base = writer.base();
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
        let run = RunIdentity { run_id, pipeline, sequence, base };
        let _heartbeat = self.heartbeat(&run.run_id);
        tracing::info!(run_id = %run.run_id, table = %target, shards, "run opened");
        let opened = RunEvent::Opened {
            run_id: run.run_id.clone(),
            pipeline: run.pipeline.clone(),
            target: target.clone(),
            shards,
        };
        self.events.emit(opened).await;
        let elapsed_ms = || started.elapsed().as_millis() as u64;

        let sink = ShardSink::new(&run.run_id, &table, writer.clone(), self.ledger.clone(), self.events.clone());
        let staged = runtime::run_shards(plan, task_ctx, |shard, stream| sink.clone().write_shard(shard, stream)).await;
        let staged = match staged {
            Ok(staged) => staged,
            Err(source) => {
                self.roll_back(writer.as_ref(), &table, &run.run_id, &source.to_string(), elapsed_ms()).await?;
                return Err(RunError::Shard { run_id: run.run_id, table, source });
            }
        };
        let files: Vec<StagedFile> = staged.iter().flat_map(|s| s.files.iter().cloned()).collect();
        let totals: ShardTotals = staged.iter().map(|s| s.totals).sum();

        if let Err(failpoint) = crate::failpoint::check("before-commit", &target) {
            let error = format!("injected failure at failpoint `{failpoint}`");
            self.roll_back(writer.as_ref(), &table, &run.run_id, &error, elapsed_ms()).await?;
            return Err(RunError::Injected { run_id: run.run_id, table, failpoint, rolled_back: true });
        }
        if !self.ledger.set_committing(&run.run_id).await? {
            // Recovery took the run while it was staging (its lease had lapsed): it is failed in
            // the ledger and must not commit. Delete what was staged since recovery's sweep.
            self.delete_staged(writer.as_ref(), &table, &run.run_id).await?;
            return Err(RunError::LeaseLost { run_id: run.run_id, table });
        }
        // Appending nothing, or replacing the partitions of no rows, changes nothing; replacing the
        // whole table with no rows empties it.
        let snapshot_id = if files.is_empty() && mode != WriteMode::Overwrite {
            None
        } else {
            match commit_through_failpoints(writer.as_ref(), files, &run, mode, &target).await {
                Ok(id) => Some(id),
                // Outcome unknown: the table may have taken the commit before the error. Look for
                // the run in the table's history instead of retrying blindly.
                Err(source) => match writer.find_run(&run).await {
                    Ok(Some(id)) => Some(id),
                    _ => {
                        self.roll_back(writer.as_ref(), &table, &run.run_id, &source.to_string(), elapsed_ms()).await?;
                        return Err(RunError::Commit { run_id: run.run_id, table, source });
                    }
                },
            }
        };
        if let Err(failpoint) = crate::failpoint::check("after-commit", &target) {
            // As if the process died between the commit and the ledger update: the run stays
            // `committing` and its files, now part of the table, stay.
            return Err(RunError::Injected { run_id: run.run_id, table, failpoint, rolled_back: false });
        }
        self.ledger.run_succeeded(&run.run_id, snapshot_id, totals).await?;
        self.closed(&run.run_id, snapshot_id, totals, elapsed_ms()).await;
        tracing::info!(run_id = %run.run_id, table = %target, rows = totals.rows, files = totals.files, ?snapshot_id, "run committed");
        Ok(RunReport {
            run_id: run.run_id,
            pipeline: run.pipeline,
            table,
            shards,
            rows: totals.rows,
            files: totals.files,
            bytes: totals.bytes,
            snapshot_id,
            elapsed: started.elapsed(),
        })
    }

    /// Announces a committed run: `Committed`, then `Closed`.
    async fn closed(&self, run_id: &str, snapshot_id: Option<i64>, totals: ShardTotals, elapsed_ms: u64) {
        let run_id = run_id.to_string();
        let (rows, files, bytes) = (totals.rows, totals.files, totals.bytes);
        self.events.emit(RunEvent::Committed { run_id: run_id.clone(), snapshot_id, rows, files, bytes }).await;
        self.events.emit(RunEvent::Closed { run_id, status: "succeeded".into(), elapsed_ms }).await;
    }

    /// Deletes every file the run staged and marks the run failed.
    async fn roll_back(
        &self,
        writer: &dyn TableWriter,
        table: &TableName,
        run_id: &str,
        error: &str,
        elapsed_ms: u64,
    ) -> Result<(), RunError> {
        tracing::warn!(%run_id, error, "rolling back run");
        self.delete_staged(writer, table, run_id).await?;
        self.ledger.run_failed(run_id, error).await?;
        self.failed(run_id, error, elapsed_ms).await;
        Ok(())
    }

    /// Announces a failed run: `Failed`, then `Closed`.
    async fn failed(&self, run_id: &str, error: &str, elapsed_ms: u64) {
        self.events.emit(RunEvent::Failed { run_id: run_id.to_string(), error: error.to_string() }).await;
        self.events.emit(RunEvent::Closed { run_id: run_id.to_string(), status: "failed".into(), elapsed_ms }).await;
    }

    /// Deletes the files the ledger lists as staged (and not yet deleted) for the run.
    async fn delete_staged(&self, writer: &dyn TableWriter, table: &TableName, run_id: &str) -> Result<(), RunError> {
        for location in self.ledger.staged_files(run_id).await? {
            writer.delete_file(&location).await.map_err(|source| RunError::Cleanup {
                run_id: run_id.to_string(),
                table: table.clone(),
                location: location.clone(),
                source,
            })?;
        }
        self.ledger.mark_staged_files_deleted(run_id).await?;
        Ok(())
    }
}

/// The table's commit, with the test failpoints around the catalog call: `commit-refused` (the
/// request never reaches the catalog) and `commit-response-lost` (the catalog took the commit,
/// but its answer never came back: the outcome is unknown to the caller).
async fn commit_through_failpoints(
    writer: &dyn TableWriter,
    files: Vec<StagedFile>,
    run: &RunIdentity,
    mode: WriteMode,
    target: &str,
) -> Result<i64, CommitError> {
    let injected = |failpoint: String| CommitError::new(format!("injected failure at failpoint `{failpoint}`"));
    crate::failpoint::check("commit-refused", target).map_err(injected)?;
    let committed = writer.commit(files, run, mode).await?;
    crate::failpoint::check("commit-response-lost", target).map_err(injected)?;
    Ok(committed)
}

/// Fails before any file is written when the input's columns cannot be stored in the table.
fn check_fits(table: &TableName, input: &Schema, target: &Schema) -> Result<(), RunError> {
    let mismatch = |message: String| Err(RunError::Schema { table: table.clone(), message });
    if input.fields().len() != target.fields().len() {
        return mismatch(format!(
            "the input has {} columns but the table has {}",
            input.fields().len(),
            target.fields().len()
        ));
    }
    for (have, want) in input.fields().iter().zip(target.fields()) {
        if !datafusion::arrow::compute::can_cast_types(have.data_type(), want.data_type()) {
            return mismatch(format!(
                "column `{}` is {} in the table, and {} cannot be converted to it",
                want.name(),
                want.data_type(),
                have.data_type()
            ));
        }
    }
    Ok(())
}

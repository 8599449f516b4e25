//! The coordinator owns a run: it opens it in the ledger, starts the shards, and when every
//! shard has staged its files, publishes all of them in ONE Iceberg snapshot. If anything fails,
//! nothing becomes visible and every staged file is deleted (DESIGN §4).
//!
//! ```text
//!  open run (ledger: staging)
//!     │
//!  shards 0..N ──► stage Parquet files (each path in the ledger before it is opened)
//!     │  any shard failed ───────────────────────────────┐
//!  ledger: committing                                    │
//!     │                                                  ▼
//!  one fast-append snapshot {sluice.run-id, sluice.pipeline}   delete staged files,
//!     │  commit error: is the run id in the table history?     ledger: failed
//!     ▼        yes → succeeded       no ──────────────────┘
//!  ledger: succeeded (snapshot id, rows, files, bytes)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use crate::catalog::{CatalogError, IcebergCatalog, TableName};
use crate::ledger::{Ledger, LedgerError, ShardTotals};
use crate::planner;
use crate::runtime::{self, ShardError};
use crate::sinks::iceberg::IcebergShardSink;

/// Snapshot summary key holding the run id.
pub const RUN_ID_PROPERTY: &str = "sluice.run-id";
/// Snapshot summary key holding the pipeline name.
pub const PIPELINE_PROPERTY: &str = "sluice.pipeline";

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
    /// The catalog refused the commit; the run was rolled back.
    #[error("run {run_id} into `{table}` failed to commit and was rolled back: {source}")]
    Commit {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
        /// The catalog's error.
        source: iceberg::Error,
    },
    /// A test failpoint fired between staging and commit; the run was rolled back.
    #[error("run {run_id} into `{table}` was rolled back: injected failure at failpoint `{failpoint}`")]
    Injected {
        /// The run.
        run_id: String,
        /// The target table.
        table: TableName,
        /// The failpoint.
        failpoint: String,
    },
    /// Loading the table failed.
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
    /// The catalog holding the target table.
    pub catalog: Arc<IcebergCatalog>,
    /// The target table.
    pub table: TableName,
    /// The rows to append, columns in table order (a DataFusion physical plan).
    pub input: Arc<dyn ExecutionPlan>,
    /// Number of shards (output partitions) to write with.
    pub shards: usize,
    /// The pipeline this run belongs to, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
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
}

/// The snapshot of `table` whose summary carries `run_id`, if it is in the table's history.
pub fn snapshot_of_run(table: &Table, run_id: &str) -> Option<i64> {
    table
        .metadata()
        .snapshots()
        .find(|s| s.summary().additional_properties.get(RUN_ID_PROPERTY).map(String::as_str) == Some(run_id))
        .map(|s| s.snapshot_id())
}

impl Coordinator {
    /// A coordinator recording its runs in `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }

    /// Runs `job`: stage on every shard, then commit one snapshot, or roll back.
    pub async fn run(&self, job: WriteJob, task_ctx: Arc<TaskContext>) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let table = job.catalog.load_table(&job.table).await?;
        let run_id = uuid::Uuid::now_v7().to_string();
        let sink = IcebergShardSink::new(&table, &job.table, &run_id, self.ledger.clone())
            .map_err(|source| RunError::Commit { run_id: run_id.clone(), table: job.table.clone(), source })?;
        check_fits(&job.table, &job.input.schema(), sink.schema())?;
        let plan = planner::shard_plan(job.input, job.shards)?;
        let shards = job.shards;
        let target = job.table.to_string();
        self.ledger.open_run(&run_id, job.pipeline.as_deref(), &target, shards).await?;
        tracing::info!(%run_id, table = %target, shards, "run opened");

        let staged = runtime::run_shards(plan, task_ctx, |shard, stream| sink.clone().write_shard(shard, stream)).await;
        let staged = match staged {
            Ok(staged) => staged,
            Err(source) => {
                self.roll_back(&table, &job.table, &run_id, &source.to_string()).await?;
                return Err(RunError::Shard { run_id, table: job.table, source });
            }
        };
        let files: Vec<DataFile> = staged.iter().flat_map(|s| s.files.iter().cloned()).collect();
        let totals = staged.iter().fold(ShardTotals::default(), |a, s| ShardTotals {
            rows: a.rows + s.totals.rows,
            files: a.files + s.totals.files,
            bytes: a.bytes + s.totals.bytes,
        });

        if let Err(failpoint) = crate::failpoint::check("before-commit", &target) {
            self.roll_back(&table, &job.table, &run_id, &format!("injected failure at failpoint `{failpoint}`"))
                .await?;
            return Err(RunError::Injected { run_id, table: job.table, failpoint });
        }
        self.ledger.set_committing(&run_id).await?;
        let snapshot_id = if files.is_empty() {
            None
        } else {
            match commit_with_retries(&job.catalog, &job.table, files, &run_id, job.pipeline.as_deref()).await {
                Ok(snapshot_id) => Some(snapshot_id),
                Err(source) => {
                    // Outcome unknown: the catalog may have taken the commit before failing.
                    // Look for the run in the table's history instead of retrying blindly.
                    let latest = job.catalog.load_table(&job.table).await?;
                    match snapshot_of_run(&latest, &run_id) {
                        Some(snapshot_id) => Some(snapshot_id),
                        None => {
                            self.roll_back(&table, &job.table, &run_id, &source.to_string()).await?;
                            return Err(RunError::Commit { run_id, table: job.table, source });
                        }
                    }
                }
            }
        };
        self.ledger.run_succeeded(&run_id, snapshot_id, totals).await?;
        tracing::info!(%run_id, table = %target, rows = totals.rows, files = totals.files, ?snapshot_id, "run committed");
        Ok(RunReport {
            run_id,
            pipeline: job.pipeline,
            table: job.table,
            shards,
            rows: totals.rows,
            files: totals.files,
            bytes: totals.bytes,
            snapshot_id,
            elapsed: started.elapsed(),
        })
    }

    /// Deletes every file the run staged and marks the run failed.
    async fn roll_back(&self, table: &Table, name: &TableName, run_id: &str, error: &str) -> Result<(), RunError> {
        tracing::warn!(%run_id, error, "rolling back run");
        for path in self.ledger.staged_files(run_id).await? {
            table.file_io().delete(&path).await.map_err(|source| RunError::Commit {
                run_id: run_id.to_string(),
                table: name.clone(),
                source,
            })?;
        }
        self.ledger.mark_staged_files_deleted(run_id).await?;
        self.ledger.run_failed(run_id, error).await?;
        Ok(())
    }
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

/// Most commit attempts of an append that keeps losing to concurrent writers.
pub const COMMIT_ATTEMPTS_MAX: usize = 12;

/// Commits, re-reading the table and retrying (bounded, with jittered exponential backoff) when a
/// concurrent writer won the race. Before every attempt the table's history is checked for the
/// run, so an attempt whose response was lost is never applied twice.
async fn commit_with_retries(
    catalog: &IcebergCatalog,
    name: &TableName,
    files: Vec<DataFile>,
    run_id: &str,
    pipeline: Option<&str>,
) -> Result<i64, iceberg::Error> {
    let attempt = || async {
        let table = catalog.iceberg().load_table(&name.ident()).await?;
        if let Some(snapshot_id) = snapshot_of_run(&table, run_id) {
            return Ok(snapshot_id);
        }
        commit(catalog, &table, files.clone(), run_id, pipeline).await
    };
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(COMMIT_ATTEMPTS_MAX - 1);
    attempt
        .retry(backoff)
        .when(|e: &iceberg::Error| e.kind() == iceberg::ErrorKind::CatalogCommitConflicts)
        .notify(|e, delay| tracing::info!(%run_id, table = %name, ?delay, "commit conflict, retrying: {e}"))
        .await
}

/// One fast-append snapshot with every staged file; returns its id.
async fn commit(
    catalog: &IcebergCatalog,
    table: &Table,
    files: Vec<DataFile>,
    run_id: &str,
    pipeline: Option<&str>,
) -> Result<i64, iceberg::Error> {
    let mut properties = HashMap::from([(RUN_ID_PROPERTY.to_string(), run_id.to_string())]);
    if let Some(pipeline) = pipeline {
        properties.insert(PIPELINE_PROPERTY.to_string(), pipeline.to_string());
    }
    let transaction = Transaction::new(table);
    let append = transaction.fast_append().add_data_files(files).set_snapshot_properties(properties);
    let transaction = append.apply(transaction)?;
    let committed = transaction.commit(catalog.iceberg()).await?;
    snapshot_of_run(&committed, run_id).ok_or_else(|| {
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("committed, but no snapshot carries run id {run_id}"),
        )
    })
}

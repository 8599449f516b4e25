//! The table commit coordinator: shards stage Parquet data files through the table's
//! [`TableFormat`]; `on_finish` publishes all of them in one snapshot (Iceberg) or version
//! (Delta); `on_error` deletes them. Generic over the format, so each format's file descriptions
//! reach its own commit as they are; [`CommitTarget`] hides the format from the engine.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BinaryArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};
use tokio::sync::Semaphore;

use super::{Coordinator, CoordinatorError, HeldCommit, RunContext, ShardResult};
use crate::planner;
use crate::runtime::{self, CommitError, Fence, ShardError, ShardSink, StagedFile, TableFormat, TableWriter};
use crate::table::{TableName, WriteMode};

/// A table being written, whatever its format: what a catalog hands the engine.
#[async_trait]
pub trait CommitTarget: TableWriter {
    /// The coordinator of one run into `table`: rows split into shards by `partition_key`
    /// (expressions over the input; empty: round-robin), committed as `mode` says.
    fn coordinator(
        self: Arc<Self>,
        table: TableName,
        partition_key: Vec<Arc<dyn PhysicalExpr>>,
        mode: WriteMode,
    ) -> Arc<dyn Coordinator>;

    /// The coordinator of one run into `table` whose shards are written elsewhere (by the
    /// executors of a cluster, [`CommitTarget::write_elsewhere`]) into files named `<files>-...`:
    /// its input's rows are the files they wrote ([`written_files_schema`]), committed here as
    /// `mode` says. Before they start, the ledger holds an entry for every file so named
    /// ([`crate::runtime::format::files_named_entry`]), so that a rollback or a recovery
    /// deletes what they wrote even when they never said.
    fn coordinator_of_written(
        self: Arc<Self>,
        table: TableName,
        mode: WriteMode,
        files: String,
        job: Arc<dyn RemoteJob>,
    ) -> Arc<dyn Coordinator>;

    /// Writes shard `shard` of `run` from `input` in this process (`executor`, as the cluster
    /// knows it; the task's `attempt`, which the run's files are named after) for a commit made
    /// in another (the Sluice process that opened the run): its files as rows of
    /// [`written_files_schema`].
    async fn write_elsewhere(
        self: Arc<Self>,
        run: &RunContext,
        table: &TableName,
        shard: usize,
        (executor, attempt): (&str, &str),
        input: SendableRecordBatchStream,
    ) -> Result<RecordBatch, ShardError>;
}

/// The job that writes a run's shards elsewhere (a cluster's), as the run's rollback sees it.
#[async_trait]
pub trait RemoteJob: Send + Sync + std::fmt::Debug {
    /// Stops the job if it still runs, and waits until it has, so that a rollback deletes files
    /// no task is still writing. A file written even later is deleted by recovery's second
    /// deletion of a failed run's files.
    async fn stop(&self) -> Result<(), crate::runtime::BoxError>;
    /// Takes what a shard's task counted besides its files (its rows against the write's
    /// expectations) and the rows it quarantined (an Arrow IPC stream), once per shard, from the
    /// attempt whose files the run commits.
    fn counted(&self, shard: usize, counts: &str, quarantined: Option<&[u8]>) -> Result<(), crate::runtime::BoxError>;
}

/// The rows a shard written elsewhere hands back: its number, where it ran and the attempt that
/// wrote it, then one row per file (location, rows, bytes and the format's description of it,
/// [`TableFormat::encode_file`]); a shard that wrote no file, one row with no location. The
/// first row may carry what the task counted besides, and the rows it quarantined
/// ([`RemoteJob::counted`]).
pub fn written_files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::UInt64, false),
        Field::new("executor", DataType::Utf8, false),
        Field::new("attempt", DataType::Utf8, false),
        Field::new("location", DataType::Utf8, true),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("description", DataType::Utf8, true),
        Field::new("counts", DataType::Utf8, true),
        Field::new("quarantined", DataType::Binary, true),
    ]))
}

#[async_trait]
impl<W: TableFormat> CommitTarget for W {
    fn coordinator(
        self: Arc<Self>,
        table: TableName,
        partition_key: Vec<Arc<dyn PhysicalExpr>>,
        mode: WriteMode,
    ) -> Arc<dyn Coordinator> {
        Arc::new(TableCommit::new(table, self, partition_key, mode))
    }

    fn coordinator_of_written(
        self: Arc<Self>,
        table: TableName,
        mode: WriteMode,
        files: String,
        job: Arc<dyn RemoteJob>,
    ) -> Arc<dyn Coordinator> {
        let mut commit = TableCommit::new(table, self, vec![], mode);
        commit.written_elsewhere = Some((files, job));
        Arc::new(commit)
    }

    async fn write_elsewhere(
        self: Arc<Self>,
        run: &RunContext,
        table: &TableName,
        shard: usize,
        (executor, attempt): (&str, &str),
        input: SendableRecordBatchStream,
    ) -> Result<RecordBatch, ShardError> {
        let files = ShardSink::new(run, table, self.clone()).write_shard(shard, input).await?;
        let error =
            |source: crate::runtime::BoxError| ShardError::Write { shard, path: self.location().to_string(), source };
        let mut described: Vec<(Option<String>, u64, u64, Option<String>)> = Vec::new();
        for file in &files {
            let staged = self.describe(file);
            described.push((
                Some(staged.location),
                staged.rows,
                staged.bytes,
                Some(self.encode_file(file).map_err(error)?),
            ));
        }
        if described.is_empty() {
            described.push((None, 0, 0, None));
        }
        let n = described.len();
        RecordBatch::try_new(
            written_files_schema(),
            vec![
                Arc::new(UInt64Array::from(vec![shard as u64; n])),
                Arc::new(StringArray::from(vec![executor; n])),
                Arc::new(StringArray::from(vec![attempt; n])),
                Arc::new(StringArray::from_iter(described.iter().map(|d| d.0.as_deref()))),
                Arc::new(UInt64Array::from_iter_values(described.iter().map(|d| d.1))),
                Arc::new(UInt64Array::from_iter_values(described.iter().map(|d| d.2))),
                Arc::new(StringArray::from_iter(described.iter().map(|d| d.3.as_deref()))),
                Arc::new(StringArray::new_null(n)),
                Arc::new(BinaryArray::new_null(n)),
            ],
        )
        .map_err(|e| error(e.into()))
    }
}

/// Commits a run into an Iceberg or Delta table: one snapshot / version, or nothing.
#[derive(Debug)]
pub struct TableCommit<W: TableFormat> {
    name: String,
    table: TableName,
    writer: Arc<W>,
    partition_key: Vec<Arc<dyn PhysicalExpr>>,
    mode: WriteMode,
    /// Files the run's shards may write at once when their input has ended: one per core.
    writers: Arc<Semaphore>,
    /// What the shards staged, as the format describes it, for the commit.
    staged: Mutex<Vec<W::File>>,
    /// The shards are written elsewhere, by this job, into files named `<this>-...`: the
    /// input's rows are their files.
    written_elsewhere: Option<(String, Arc<dyn RemoteJob>)>,
}

impl<W: TableFormat> TableCommit<W> {
    /// Commits into `table` through `writer` (`iceberg-commit` or `delta-commit`, after its
    /// format), splitting rows into shards by `partition_key`, appending or replacing as `mode`
    /// says.
    pub fn new(table: TableName, writer: Arc<W>, partition_key: Vec<Arc<dyn PhysicalExpr>>, mode: WriteMode) -> Self {
        let name = format!("{}-commit", writer.format());
        let writers = Arc::new(Semaphore::new(runtime::default_shards()));
        let staged = Mutex::new(Vec::new());
        Self { name, table, writer, partition_key, mode, writers, staged, written_elsewhere: None }
    }

    fn error(&self, source: impl Into<crate::runtime::BoxError>) -> CoordinatorError {
        CoordinatorError::new(&self.name, source)
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Vec<W::File>> {
        self.staged.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the files shard `shard` wrote elsewhere, as rows of [`written_files_schema`]: where
    /// it ran is recorded, and each file in the ledger as the run's, then kept for the commit.
    /// Only one attempt's files are taken, each once, whatever the cluster handed back (a task
    /// run again after an executor was lost has been seen reported twice): the first attempt
    /// reported wins, and [`TableCommit::delete_losers`] deletes the others' files.
    async fn take_written(
        &self,
        run: &RunContext,
        shard: usize,
        mut input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        use futures::StreamExt;
        let failed = |source: crate::runtime::BoxError| ShardError::Write {
            shard,
            path: self.writer.location().to_string(),
            source,
        };
        let (mut described, mut winner, mut taken) = (Vec::new(), None::<String>, HashSet::new());
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| ShardError::Input { shard, source })?;
            let strings =
                |i: usize| batch.columns().get(i).and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
            let (Some(executors), Some(attempts), Some(descriptions), Some(counts)) =
                (strings(1), strings(2), strings(6), strings(7))
            else {
                return Err(failed("the shards written elsewhere did not hand back their files".into()));
            };
            for row in 0..batch.num_rows() {
                let attempt = attempts.value(row);
                if winner.is_none() {
                    winner = Some(attempt.to_string());
                    let ran_on = run.shard_ran_on(shard, executors.value(row)).await;
                    ran_on.map_err(|source| ShardError::Ledger { shard, source })?;
                    if let (Some((_, job)), true) = (&self.written_elsewhere, counts.is_valid(row)) {
                        let quarantined = batch.columns().get(8).and_then(|c| c.as_any().downcast_ref::<BinaryArray>());
                        let quarantined = quarantined.filter(|q| q.is_valid(row)).map(|q| q.value(row));
                        job.counted(shard, counts.value(row), quarantined).map_err(failed)?;
                    }
                } else if winner.as_deref() != Some(attempt) {
                    continue;
                }
                if descriptions.is_valid(row) && taken.insert(descriptions.value(row).to_string()) {
                    described.push(self.writer.decode_file(descriptions.value(row)).map_err(failed)?);
                }
            }
        }
        let staged: Vec<StagedFile> = described.iter().map(|file| self.writer.describe(file)).collect();
        // Only the run's own files, in the table: a commit (or a rollback) never takes (or
        // deletes) another file, whatever an executor said.
        let prefix = self.written_elsewhere.as_ref().map(|(files, _)| format!("{files}-")).unwrap_or_default();
        if let Some(other) = staged.iter().find(|file| {
            let name = file.location.rsplit('/').next().unwrap_or_default();
            !name.starts_with(&prefix) || !crate::paths::is_inside(self.writer.location(), &file.location)
        }) {
            return Err(failed(format!("{} is not a file of this run in the table", other.location).into()));
        }
        let locations: Vec<String> = staged.iter().map(|file| file.location.clone()).collect();
        run.stage_files(shard, &locations).await.map_err(|source| ShardError::Ledger { shard, source })?;
        self.staged().extend(described);
        Ok(staged)
    }

    /// Shards written elsewhere: deletes their files that the commit will not take, which task
    /// attempts that failed or lost to a retry wrote (files are named after the attempt), so
    /// that only the winning attempts' files stay. Done before the commit: a run stopped after
    /// it leaves nothing it did not commit. A failure fails the run (rolled back, everything of
    /// it deleted) rather than leave a file nobody knows of.
    async fn delete_losers(&self) -> Result<(), CoordinatorError> {
        let Some((files, _)) = &self.written_elsewhere else { return Ok(()) };
        let prefix = format!("{files}-");
        let keep: HashSet<String> = self
            .staged()
            .iter()
            .filter_map(|file| self.writer.describe(file).location.rsplit('/').next().map(str::to_string))
            .collect();
        let deleted = self.writer.delete_files_named(&prefix, &keep).await.map_err(|e| self.error(e))?;
        if deleted > 0 {
            tracing::info!(table = %self.table, deleted, "deleted the files of task attempts that did not win");
        }
        Ok(())
    }

    /// Settles a commit whose answer was lost: landed (its snapshot / version), or certainly not
    /// (an error; the run is rolled back), or still unknown (an error that leaves the run to
    /// recovery, its files kept).
    async fn settle_unknown(&self, run: &RunContext, error: CommitError) -> Result<Option<i64>, CoordinatorError> {
        let unknown = |detail: String| {
            CoordinatorError::commit(&self.name, CommitError::OutcomeUnknown(format!("{error}; {detail}").into()))
        };
        let not_landed = |detail: &str| self.error(format!("{error}; {detail}"));
        match self.writer.fence(run.identity()).await {
            Ok(Fence::Landed(id)) => Ok(Some(id)),
            Ok(Fence::Fenced) => Err(not_landed("the run is not in the table's history and is fenced off now")),
            // No fence: the commit call has returned, so no retry of ours is still under way;
            // the history decides.
            Ok(Fence::Unsupported) => match self.writer.find_run(run.identity()).await {
                Ok(Some(id)) => Ok(Some(id)),
                Ok(None) => Err(not_landed("the run is not in the table's history, so it did not land")),
                Err(lookup) => Err(unknown(format!("and the table's history could not be read: {lookup}"))),
            },
            Err(fence) => Err(unknown(format!("and the run could not be fenced off: {fence}"))),
        }
    }
}

#[async_trait]
impl<W: TableFormat> Coordinator for TableCommit<W> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Fails before anything is written when the rows cannot be stored in the table; hash-splits
    /// a partitioned table's rows by partition so that each partition is written by one shard.
    fn prepare_shards(
        &self,
        input: Arc<dyn ExecutionPlan>,
        shards: usize,
    ) -> Result<Arc<dyn ExecutionPlan>, CoordinatorError> {
        if self.written_elsewhere.is_some() {
            return Ok(Arc::new(ShardsOfWritten::new(input, shards)));
        }
        check_fits(&input.schema(), self.writer.schema()).map_err(|e| self.error(e))?;
        planner::shard_plan(input, shards, self.partition_key.clone()).map_err(|e| self.error(e))
    }

    /// Shards written elsewhere: the entry for all their files, before any starts.
    async fn on_start(&self, run: &RunContext) -> Result<(), CoordinatorError> {
        let Some((files, _)) = &self.written_elsewhere else { return Ok(()) };
        let entry = crate::runtime::format::files_named_entry(self.writer.location(), files);
        run.stage_files(0, &[entry]).await.map_err(|e| self.error(e))
    }

    async fn write_shard(
        &self,
        run: &RunContext,
        shard: usize,
        input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        if self.written_elsewhere.is_some() {
            return self.take_written(run, shard, input).await;
        }
        let files = ShardSink::new(run, &self.table, self.writer.clone())
            .with_writers(self.writers.clone())
            .write_shard(shard, input)
            .await?;
        let described = files.iter().map(|file| self.writer.describe(file)).collect();
        self.staged().extend(files);
        Ok(described)
    }

    /// Appending nothing, or replacing the partitions of no rows, changes nothing; replacing the
    /// whole table with no rows empties it. When the commit's outcome is unknown, the table may
    /// still have taken it (the answer was lost): the run is fenced off, which first looks for it
    /// in the table's history, so that it has either landed or never can.
    async fn on_finish(&self, run: &RunContext, _shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        self.delete_losers().await?;
        let files = std::mem::take(&mut *self.staged());
        if files.is_empty() && self.mode != WriteMode::Overwrite {
            return Ok(None);
        }
        match commit_through_failpoints(self.writer.as_ref(), files, run, self.mode).await {
            Ok(id) => Ok(Some(id)),
            Err(error @ CommitError::OutcomeUnknown(_)) => self.settle_unknown(run, error).await,
            Err(error) => Err(CoordinatorError::commit(&self.name, error)),
        }
    }

    /// As `on_finish`, up to the catalog's pointer swap, which the caller makes with other
    /// tables'.
    async fn on_hold(&self, run: &RunContext, _shards: &[ShardResult]) -> Result<Option<HeldCommit>, CoordinatorError> {
        self.delete_losers().await?;
        let files = std::mem::take(&mut *self.staged());
        if files.is_empty() && self.mode != WriteMode::Overwrite {
            return Ok(None);
        }
        let held = self.writer.hold(files, run, self.mode).await;
        held.map(Some).map_err(|e| CoordinatorError::commit(&self.name, e))
    }

    /// Shards written elsewhere: their job is stopped first.
    async fn on_error(&self, run: &RunContext, _error: &str) -> Result<(), CoordinatorError> {
        if let Some((_, job)) = &self.written_elsewhere
            && let Err(e) = job.stop().await
        {
            tracing::warn!(run_id = %run.run_id(), "the run's job on the cluster could not be stopped: {e}");
        }
        self.staged().clear();
        let root = self.writer.location();
        let delete = |location: String| async move { self.writer.delete_file(&location).await };
        run.delete_staged(root, delete).await.map_err(|e| self.error(e))
    }

    async fn find_commit(&self, run: &RunContext) -> Result<Option<i64>, CoordinatorError> {
        self.writer.find_run(run.identity()).await.map_err(|e| CoordinatorError::commit(&self.name, e))
    }

    async fn fence(&self, run: &RunContext) -> Result<Fence, CoordinatorError> {
        self.writer.fence(run.identity()).await.map_err(|e| CoordinatorError::commit(&self.name, e))
    }
}

/// The files shards wrote elsewhere, by shard: partition `i` is shard `i`'s rows of the input
/// (one partition of [`written_files_schema`] rows, read once, by whichever shard asks first),
/// so that the run records each shard as its own.
struct ShardsOfWritten {
    input: Arc<dyn ExecutionPlan>,
    collected: Arc<tokio::sync::OnceCell<Result<Vec<RecordBatch>, String>>>,
    properties: Arc<PlanProperties>,
}

impl ShardsOfWritten {
    fn new(input: Arc<dyn ExecutionPlan>, shards: usize) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_files_schema()),
            Partitioning::UnknownPartitioning(shards),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self { input, collected: Arc::default(), properties: Arc::new(properties) }
    }
}

impl std::fmt::Debug for ShardsOfWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardsOfWritten").field("shards", &self.properties.partitioning.partition_count()).finish()
    }
}

impl DisplayAs for ShardsOfWritten {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ShardsOfWritten: {} shard(s)", self.properties.partitioning.partition_count())
    }
}

impl ExecutionPlan for ShardsOfWritten {
    fn name(&self) -> &str {
        "ShardsOfWritten"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let shards = self.properties.partitioning.partition_count();
        let input = children.pop().ok_or_else(|| DataFusionError::Internal("ShardsOfWritten has one input".into()))?;
        Ok(Arc::new(Self::new(input, shards)))
    }

    fn execute(
        &self,
        shard: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let (input, collected) = (self.input.clone(), self.collected.clone());
        let rows = futures::stream::once(async move {
            let all = collected
                .get_or_init(|| async move {
                    let stream = input.execute(0, context).map_err(|e| e.to_string())?;
                    datafusion::physical_plan::common::collect(stream).await.map_err(|e| e.to_string())
                })
                .await;
            let all = all.as_ref().map_err(|e| DataFusionError::Execution(e.clone()))?;
            let mut of_shard = Vec::with_capacity(all.len());
            for batch in all {
                let shards = batch.column(0);
                let mask =
                    datafusion::arrow::compute::kernels::cmp::eq(shards, &UInt64Array::new_scalar(shard as u64))?;
                of_shard.push(datafusion::arrow::compute::filter_record_batch(batch, &mask)?);
            }
            Ok(datafusion::arrow::compute::concat_batches(&written_files_schema(), &of_shard)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(written_files_schema(), rows)))
    }
}

/// The table's commit, with the test failpoints around the catalog call: `commit-refused` (the
/// request never reaches the catalog), `commit-request-lost` (it never reaches it either, but
/// the caller cannot tell: the outcome is unknown) and `commit-response-lost` (the catalog took
/// the commit, but its answer never came back: the outcome is unknown to the caller).
async fn commit_through_failpoints<W: TableFormat>(
    writer: &W,
    files: Vec<W::File>,
    run: &RunContext,
    mode: WriteMode,
) -> Result<i64, CommitError> {
    let injected = |failpoint: String| format!("injected failure at failpoint `{failpoint}`");
    crate::failpoint::check("commit-refused", run.target()).map_err(|f| CommitError::Refused(injected(f).into()))?;
    crate::failpoint::check("commit-request-lost", run.target())
        .map_err(|f| CommitError::OutcomeUnknown(injected(f).into()))?;
    let committed = writer.commit(files, run, mode).await?;
    crate::failpoint::check("commit-response-lost", run.target())
        .map_err(|f| CommitError::OutcomeUnknown(injected(f).into()))?;
    Ok(committed)
}

/// Fails before any file is written when the input's columns cannot be stored in the table.
fn check_fits(input: &Schema, target: &Schema) -> Result<(), String> {
    if input.fields().len() != target.fields().len() {
        return Err(format!(
            "the input has {} columns but the table has {}",
            input.fields().len(),
            target.fields().len()
        ));
    }
    for (have, want) in input.fields().iter().zip(target.fields()) {
        if !datafusion::arrow::compute::can_cast_types(have.data_type(), want.data_type()) {
            return Err(format!(
                "column `{}` is {} in the table, and {} cannot be converted to it",
                want.name(),
                want.data_type(),
                have.data_type()
            ));
        }
    }
    Ok(())
}

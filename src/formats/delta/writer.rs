//! The Delta writer: Parquet files written straight into the table folder, each described by an `add`
//! action with Delta statistics (record count, per-column min / max / null count), committed as
//! ONE log version that also holds a `txn` action (`appId = sluice/<pipeline>`, `version` = the
//! run's sequence number) and, in `commitInfo`, `sluice.run-id` and `sluice.pipeline`. An
//! overwrite adds `remove` actions for the files it replaces, in the same version.
//!
//! Every commit attempt is one conditional put of the next log version (delta-rs's own retries
//! are off): an attempt that loses the race is tried again on the new version (appends) or
//! fails (overwrites), and before each the log is searched for the run and for a fence.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::object_store::ObjectStoreExt;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::arrow::async_writer::ParquetObjectWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, Transaction as DeltaTxn};
use deltalake::logstore::ObjectStoreRef;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTable, DeltaTableError, checkpoints};
use futures::TryStreamExt;
use serde_json::json;

use super::file::{DeltaFile, escape_path_value, object_path};
use crate::runtime::format::{DICTIONARY_PAGE_BYTES, retry_conflicts, split_rows};
use crate::runtime::{BoxError, CommitError, Fence, FileWriter, RunContext, StagedFile, TableFormat, TableWriter};
use crate::table::{PartitionField, RunIdentity, Transform, WriteMode};

/// `commitInfo` key holding the run id.
pub const RUN_ID_KEY: &str = "sluice.run-id";
/// `commitInfo` key holding the pipeline name.
pub const PIPELINE_KEY: &str = "sluice.pipeline";
/// Delta's default target file size (`delta.targetFileSize`), 128 MiB.
const TARGET_FILE_SIZE: usize = 128 << 20;
/// Most commit attempts of an append that keeps losing to concurrent writers.
const COMMIT_ATTEMPTS_MAX: usize = 16;

/// The `txn` application id of a pipeline.
pub fn app_id(pipeline: &str) -> String {
    format!("sluice/{pipeline}")
}

/// The `txn` application id whose presence fences a run off (see [`TableWriter::fence`]).
pub fn fence_app_id(run_id: &str) -> String {
    format!("sluice-fence/{run_id}")
}

/// A Delta partition: each partition column with its value as the log writes it (NULL: `None`).
pub type DeltaPartition = Vec<(String, Option<String>)>;

/// Writes and commits one run into one Delta table.
#[derive(Debug)]
pub struct DeltaTableWriter {
    table: DeltaTable,
    store: ObjectStoreRef,
    root: String,
    schema: SchemaRef,
    /// The columns written into data files: the table's minus its partition columns.
    file_schema: SchemaRef,
    partitioning: Vec<PartitionField>,
    /// The table's version when the run started (`None`: no version yet).
    base_version: Option<u64>,
    /// The table's new metadata (columns added), committed with the run's files.
    evolution: Option<deltalake::kernel::Metadata>,
}

impl DeltaTableWriter {
    /// A writer into `table` as loaded now (its version is where history searches start).
    pub fn new(table: DeltaTable) -> Result<Self, deltalake::DeltaTableError> {
        let snapshot = table.snapshot()?.snapshot();
        let schema = snapshot.arrow_schema();
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let file_fields: Vec<_> =
            schema.fields().iter().filter(|f| !partition_columns.contains(f.name())).cloned().collect();
        let partitioning = partition_columns
            .into_iter()
            .map(|column| PartitionField { column: column.to_string(), transform: Transform::Identity })
            .collect();
        let root = table.table_url().as_str().trim_end_matches('/').to_string();
        let base_version = table.version();
        Ok(Self {
            store: table.object_store(),
            table,
            root,
            file_schema: Arc::new(Schema::new(file_fields)),
            schema,
            partitioning,
            base_version,
            evolution: None,
        })
    }

    /// This writer with `columns` added (nullable) to the table's schema: its data files carry
    /// them, and its commit (one attempt, from the version the run started on) adds a `metaData`
    /// action with the new schema.
    pub fn evolving(self, columns: &[datafusion::arrow::datatypes::Field]) -> Result<Self, deltalake::DeltaTableError> {
        use deltalake::kernel::MetadataExt;
        use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
        let mut fields: Vec<_> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(columns.iter().map(|f| f.clone().with_nullable(true)));
        let schema = Schema::new(fields);
        let delta =
            super::catalog::delta_schema(&schema).map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
        let metadata = self.table.snapshot()?.snapshot().metadata().clone().with_schema(&delta)?;
        // The schema the files are written with: Delta's types, as the table will read them.
        let schema: Schema =
            (&delta).try_into_arrow().map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
        let schema: SchemaRef = Arc::new(schema);
        let partition_columns: Vec<String> = self.partitioning.iter().map(|p| p.column.clone()).collect();
        let file_fields: Vec<_> =
            schema.fields().iter().filter(|f| !partition_columns.contains(f.name())).cloned().collect();
        Ok(Self { schema, file_schema: Arc::new(Schema::new(file_fields)), evolution: Some(metadata), ..self })
    }

    /// The path of a location relative to the table root (how Delta actions name files).
    fn relative<'a>(&self, location: &'a str) -> Result<&'a str, BoxError> {
        location
            .strip_prefix(&self.root)
            .map(|rest| rest.trim_start_matches('/'))
            .ok_or_else(|| format!("{location} is not inside the table at {}", self.root).into())
    }

    fn conflict(&self, detail: String) -> CommitError {
        CommitError::Conflict(
            format!(
                "the Delta table at {} changed while this overwrite ran: {detail}; nothing was replaced",
                self.root
            )
            .into(),
        )
    }

    /// `remove` actions for the live files an overwrite replaces: all of them, or (dynamic
    /// partition overwrite of a partitioned table) those in the partitions `adds` write.
    async fn replaced_files(
        &self,
        table: &DeltaTable,
        adds: &[Add],
        mode: WriteMode,
    ) -> Result<Vec<Remove>, CommitError> {
        if table.version() != self.base_version {
            return Err(self.conflict(format!(
                "version {} is not the version {} the run started on",
                table.version().map_or(-1, |v| v as i64),
                self.base_version.map_or(-1, |v| v as i64)
            )));
        }
        let partition_of = |values: &HashMap<String, Option<String>>| -> BTreeMap<String, Option<String>> {
            values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let replaced: Option<HashSet<BTreeMap<String, Option<String>>>> = (mode == WriteMode::OverwritePartitions
            && !self.partitioning.is_empty())
        .then(|| adds.iter().map(|add| partition_of(&add.partition_values)).collect());
        let snapshot = table.snapshot().map_err(refused)?;
        let log_store = table.log_store();
        let files: Vec<_> =
            snapshot.snapshot().file_views(log_store.as_ref(), None).try_collect().await.map_err(refused)?;
        Ok(files
            .iter()
            .map(|file| file.remove_action(true))
            .filter(|remove| match &replaced {
                None => true,
                Some(partitions) => {
                    partitions.contains(&partition_of(&remove.partition_values.clone().unwrap_or_default()))
                }
            })
            .collect())
    }

    /// Writes a checkpoint of `version` when the table's `delta.checkpointInterval` (100 by
    /// default) says one is due, as delta-rs's own commit would: readers then start from it
    /// instead of replaying every commit since the last one.
    async fn checkpoint_if_due(&self, mut table: DeltaTable, version: u64) -> Result<(), deltalake::DeltaTableError> {
        let interval = table.snapshot()?.table_config().checkpoint_interval().get();
        if (version + 1).is_multiple_of(interval) {
            table.update_incremental(Some(version)).await?;
            checkpoints::create_checkpoint(&table, None).await?;
        }
        Ok(())
    }

    async fn latest(&self) -> Result<DeltaTable, deltalake::DeltaTableError> {
        let mut table = self.table.clone();
        table.update_state().await?;
        Ok(table)
    }

    /// The version of `table` that `run` committed, if any. A pipeline's `txn` says whether its
    /// run landed at all, and only then is the whole history searched; an ad-hoc run is searched
    /// for in the versions committed since it started (the run's recorded base, or this
    /// writer's).
    async fn find_run_in(&self, table: &DeltaTable, run: &RunIdentity) -> Result<Option<i64>, DeltaTableError> {
        let Some(latest) = table.version() else { return Ok(None) };
        let log = table.log_store();
        let oldest = match &run.pipeline {
            Some(pipeline) => {
                let landed = table.snapshot()?.transaction_version(log.as_ref(), app_id(pipeline)).await?;
                if landed.is_none_or(|version| version < run.sequence) {
                    return Ok(None);
                }
                0
            }
            None => run.base.map(|v| v as u64).or(self.base_version).map_or(0, |base| base + 1),
        };
        // The run's tag in `commitInfo`, as serde_json writes it (a fence's `txn` names the run
        // too, and must not count).
        let tag = format!("\"{RUN_ID_KEY}\":{}", json!(run.run_id));
        for version in (oldest..=latest).rev() {
            let Some(entry) = log.read_commit_entry(version).await? else { continue };
            if String::from_utf8_lossy(&entry).contains(&tag) {
                return Ok(Some(version as i64));
            }
        }
        Ok(None)
    }

    /// Whether recovery has fenced this attempt of `run` off in `table` (the fence's `txn`
    /// version is the attempt fenced off, and every earlier one).
    async fn fenced(&self, table: &DeltaTable, run: &RunIdentity) -> Result<bool, DeltaTableError> {
        let fence = fence_app_id(&run.run_id);
        let fenced = table.snapshot()?.transaction_version(table.log_store().as_ref(), fence).await?;
        Ok(fenced.is_some_and(|attempt| attempt >= run.attempt))
    }

    /// One attempt: a conditional put of the version after `table`'s.
    async fn commit_once(
        &self,
        table: DeltaTable,
        adds: &[Add],
        context: &RunContext,
        mode: WriteMode,
    ) -> Result<i64, CommitError> {
        let run = context.identity();
        if let Some(version) = self.find_run_in(&table, run).await.map_err(refused)? {
            return Ok(version);
        }
        if self.fenced(&table, run).await.map_err(refused)? {
            let message = format!(
                "attempt {} of run {} was fenced off by recovery (its lease had lapsed); it may not commit",
                run.attempt, run.run_id
            );
            return Err(CommitError::Refused(message.into()));
        }
        let mut metadata = vec![(RUN_ID_KEY.to_string(), json!(run.run_id))];
        // delta-rs checkpoints only from a snapshot that lists every file; this one lists none.
        // Its own retries are off: each attempt is one conditional put (see the module doc).
        let mut properties = CommitProperties::default().with_create_checkpoint(false).with_max_retries(0);
        if let Some(pipeline) = &run.pipeline {
            metadata.push((PIPELINE_KEY.to_string(), json!(pipeline)));
            properties = properties.with_application_transaction(DeltaTxn::new(app_id(pipeline), run.sequence));
        }
        let removes =
            if mode == WriteMode::Append { Vec::new() } else { self.replaced_files(&table, adds, mode).await? };
        let save_mode = if mode == WriteMode::Append { SaveMode::Append } else { SaveMode::Overwrite };
        let partition_by =
            (!self.partitioning.is_empty()).then(|| self.partitioning.iter().map(|p| p.column.clone()).collect());
        let operation = DeltaOperation::Write { mode: save_mode, partition_by, predicate: None };
        let mut actions: Vec<Action> =
            adds.iter().cloned().map(Action::Add).chain(removes.into_iter().map(Action::Remove)).collect();
        if let Some(metadata) = &self.evolution {
            if table.version() != self.base_version {
                return Err(self.conflict("another commit landed before its schema change".to_string()));
            }
            actions.push(Action::Metadata(metadata.clone()));
        }
        let snapshot = table.snapshot().map_err(refused)?;
        crate::failpoint::check("commit-stall", context.target()).map_err(refused)?;
        let committed = CommitBuilder::from(properties.with_metadata(metadata))
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(|e| match (is_lost_race(&e), mode) {
                (true, WriteMode::Append) => CommitError::Conflict(e.into()),
                (true, _) => self.conflict(format!("another commit landed first ({e})")),
                (false, _) => CommitError::OutcomeUnknown(e.into()),
            })?;
        let version = committed.version();
        if let Err(e) = self.checkpoint_if_due(table, version).await {
            tracing::warn!(table = %self.root, version, "the commit landed, but its checkpoint was not written: {e}");
        }
        Ok(version as i64)
    }
}

fn refused(e: impl Into<BoxError>) -> CommitError {
    CommitError::Refused(e.into())
}

/// Whether a commit lost the race for its version (so nothing of it landed).
fn is_lost_race(error: &DeltaTableError) -> bool {
    matches!(
        error,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::VersionAlreadyExists(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::CommitConflict(_)
            }
    )
}

#[async_trait]
impl TableWriter for DeltaTableWriter {
    fn format(&self) -> &'static str {
        "delta"
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn location(&self) -> &str {
        &self.root
    }

    fn base(&self) -> Option<i64> {
        self.base_version.map(|v| v as i64)
    }

    fn partitioning(&self) -> &[PartitionField] {
        &self.partitioning
    }

    async fn delete_files_named(&self, prefix: &str, keep: &HashSet<String>) -> Result<usize, BoxError> {
        let listed: Vec<_> = self.store.list(None).try_collect().await?;
        let named = listed
            .iter()
            .filter(|o| !o.location.as_ref().starts_with("_delta_log/"))
            .filter(|o| o.location.filename().is_some_and(|name| name.starts_with(prefix) && !keep.contains(name)));
        let mut deleted = 0;
        for object in named {
            match self.store.delete(&object.location).await {
                Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    async fn delete_one_file(&self, location: &str) -> Result<(), BoxError> {
        let path = object_path(self.relative(location)?)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // Verified: a file that is back (a write that outlived its run) fails the rollback,
        // which recovery then tries again.
        match self.store.head(&path).await {
            Err(datafusion::object_store::Error::NotFound { .. }) => Ok(()),
            Ok(_) => Err(format!("{location} is still there after its deletion").into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn find_run(&self, run: &RunIdentity) -> Result<Option<i64>, CommitError> {
        let table = self.latest().await.map_err(|e| CommitError::OutcomeUnknown(e.into()))?;
        self.find_run_in(&table, run).await.map_err(|e| CommitError::OutcomeUnknown(e.into()))
    }

    /// A version of its own, holding only a `txn` action for the fence's application id: it
    /// takes the next version number with a conditional put, so an attempt of the run that read
    /// the log before it loses its put, and every later attempt sees the fence.
    async fn fence(&self, run: &RunIdentity) -> Result<Fence, CommitError> {
        let unknown = |e: DeltaTableError| CommitError::OutcomeUnknown(e.into());
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let table = self.latest().await.map_err(unknown)?;
            if let Some(version) = self.find_run_in(&table, run).await.map_err(unknown)? {
                return Ok(Fence::Landed(version));
            }
            if self.fenced(&table, run).await.map_err(unknown)? {
                return Ok(Fence::Fenced);
            }
            let properties = CommitProperties::default()
                .with_create_checkpoint(false)
                .with_max_retries(0)
                .with_application_transaction(DeltaTxn::new(fence_app_id(&run.run_id), run.attempt));
            let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
            let snapshot = table.snapshot().map_err(unknown)?;
            match CommitBuilder::from(properties).build(Some(snapshot), table.log_store(), operation).await {
                Ok(_) => return Ok(Fence::Fenced),
                Err(e) if is_lost_race(&e) => continue,
                Err(e) => return Err(unknown(e)),
            }
        }
        Err(CommitError::AttemptsExhausted {
            attempts: COMMIT_ATTEMPTS_MAX,
            last: format!("could not fence run {} off: the table at {} kept changing", run.run_id, self.root).into(),
        })
    }
}

#[async_trait]
impl TableFormat for DeltaTableWriter {
    type Partition = DeltaPartition;
    type File = Add;

    fn target_file_size(&self) -> usize {
        TARGET_FILE_SIZE
    }

    /// Groups rows by their partition columns' values and drops those columns (Delta keeps
    /// partition values in the log, not in the data files).
    fn split(&self, batch: RecordBatch) -> Result<Vec<(DeltaPartition, RecordBatch)>, BoxError> {
        if self.partitioning.is_empty() {
            return Ok(vec![(Vec::new(), batch)]);
        }
        let schema = batch.schema();
        let key_columns: Vec<usize> =
            self.partitioning.iter().map(|p| schema.index_of(&p.column)).collect::<Result<_, _>>()?;
        let keys: Vec<ArrayRef> = key_columns.iter().map(|&i| batch.column(i).clone()).collect();
        let options = FormatOptions::default();
        let formatters: Vec<_> =
            keys.iter().map(|column| ArrayFormatter::try_new(column.as_ref(), &options)).collect::<Result<_, _>>()?;
        let data_columns: Vec<usize> = (0..batch.num_columns()).filter(|i| !key_columns.contains(i)).collect();
        let data = RecordBatch::try_new(self.file_schema.clone(), batch.project(&data_columns)?.columns().to_vec())?;
        split_rows(&data, &keys)?
            .into_iter()
            .map(|(first, rows)| {
                let key =
                    keys.iter().zip(&formatters).map(|(c, f)| c.is_valid(first).then(|| f.value(first).to_string()));
                let values = self.partitioning.iter().map(|p| p.column.clone()).zip(key).collect();
                Ok((values, rows))
            })
            .collect()
    }

    /// Hive-style folders: `column=value/...`.
    fn partition_path(&self, partition: &DeltaPartition) -> String {
        partition
            .iter()
            .map(|(column, value)| match value {
                Some(value) => format!("{column}={}", escape_path_value(value)),
                None => format!("{column}=__HIVE_DEFAULT_PARTITION__"),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn file_location(&self, partition: &DeltaPartition, name: &str) -> String {
        match self.partition_path(partition) {
            path if path.is_empty() => format!("{}/{name}", self.root),
            path => format!("{}/{path}/{name}", self.root),
        }
    }

    async fn open_file(
        &self,
        partition: &DeltaPartition,
        location: &str,
    ) -> Result<Box<dyn FileWriter<Add>>, BoxError> {
        let path = self.relative(location)?.to_string();
        let partition_values = partition.iter().cloned().collect();
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
            .build();
        let output = ParquetObjectWriter::new(self.store.clone(), object_path(&path)?);
        let writer = AsyncArrowWriter::try_new(output, self.file_schema.clone(), Some(properties))?;
        Ok(Box::new(DeltaFile::new(path, self.file_schema.clone(), partition_values, writer)))
    }

    fn describe(&self, add: &Add) -> StagedFile {
        let rows = add.get_stats().ok().flatten().map(|s| s.num_records.max(0) as u64).unwrap_or_default();
        StagedFile { location: format!("{}/{}", self.root, add.path), rows, bytes: add.size.max(0) as u64 }
    }

    /// The `add` action as the log writes it.
    fn encode_file(&self, add: &Add) -> Result<String, BoxError> {
        Ok(serde_json::to_string(add)?)
    }

    fn decode_file(&self, text: &str) -> Result<Add, BoxError> {
        Ok(serde_json::from_str(text)?)
    }

    async fn commit(&self, adds: Vec<Add>, run: &RunContext, mode: WriteMode) -> Result<i64, CommitError> {
        let now = run.clock().now_ms();
        let adds: Vec<Add> = adds.into_iter().map(|add| Add { modification_time: now, ..add }).collect();
        let identity = run.identity();
        let attempt = || async {
            let table = self.latest().await.map_err(refused)?;
            self.commit_once(table, &adds, run, mode).await
        };
        if mode != WriteMode::Append || self.evolution.is_some() {
            // One attempt: another commit since the run started is a conflict, not something to
            // rebase on (an overwrite's answer, or a schema change, would differ).
            return attempt().await;
        }
        retry_conflicts(COMMIT_ATTEMPTS_MAX, &identity.run_id, &self.root, attempt).await
    }
}

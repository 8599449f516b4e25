//! Delta Lake: Parquet files written straight into the table folder, each described by an `add`
//! action with Delta statistics (record count, per-column min / max / null count), committed as
//! ONE log version that also holds a `txn` action (`appId = sluice/<pipeline>`, `version` = the
//! run's sequence number) and, in `commitInfo`, `sluice.run-id` and `sluice.pipeline`. An
//! overwrite adds `remove` actions for the files it replaces, in the same version.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::temporal_conversions::date32_to_datetime;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::object_store::ObjectStoreExt;
use datafusion::object_store::path::Path;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use datafusion::parquet::arrow::async_writer::ParquetObjectWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::properties::WriterProperties;
use deltalake::DeltaTable;
use deltalake::checkpoints;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, Transaction as DeltaTxn};
use deltalake::logstore::ObjectStoreRef;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use futures::TryStreamExt;
use serde_json::{Map, Value, json};

use super::{CommitError, FileWriter, Partition, RunIdentity, StagedFile, TableWriter, WriteMode};
use crate::catalog::{PartitionField, Transform};
use crate::runtime::BoxError;

/// `commitInfo` key holding the run id.
pub const RUN_ID_KEY: &str = "sluice.run-id";
/// `commitInfo` key holding the pipeline name.
pub const PIPELINE_KEY: &str = "sluice.pipeline";
/// Delta's default target file size (`delta.targetFileSize`), 128 MiB.
const TARGET_FILE_SIZE: usize = 128 << 20;
/// Longest string kept as a min / max statistic (longer ones are left out, never truncated wrong).
const STRING_STAT_CHARS_MAX: usize = 32;

/// The `txn` application id of a pipeline.
pub fn app_id(pipeline: &str) -> String {
    format!("sluice/{pipeline}")
}

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
        })
    }

    /// The path of a location relative to the table root (how Delta actions name files).
    fn relative<'a>(&self, location: &'a str) -> Result<&'a str, BoxError> {
        location
            .strip_prefix(&self.root)
            .map(|rest| rest.trim_start_matches('/'))
            .ok_or_else(|| format!("{location} is not inside the table at {}", self.root).into())
    }

    fn conflict(&self, detail: String) -> CommitError {
        CommitError::conflict(format!(
            "the Delta table at {} changed while this overwrite ran: {detail}; nothing was replaced",
            self.root
        ))
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
        let snapshot = table.snapshot().map_err(CommitError::new)?;
        let log_store = table.log_store();
        let files: Vec<_> =
            snapshot.snapshot().file_views(log_store.as_ref(), None).try_collect().await.map_err(CommitError::new)?;
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
}

struct DeltaFile {
    path: String,
    schema: SchemaRef,
    partition_values: HashMap<String, Option<String>>,
    writer: AsyncArrowWriter<ParquetObjectWriter>,
}

#[async_trait]
impl FileWriter for DeltaFile {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), BoxError> {
        Ok(self.writer.write(&batch).await?)
    }

    fn written_bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    async fn finish(mut self: Box<Self>) -> Result<StagedFile, BoxError> {
        let metadata = self.writer.finish().await?;
        let add = Add {
            path: self.path.clone(),
            size: self.writer.bytes_written() as i64,
            modification_time: crate::ledger::now_ms(),
            data_change: true,
            partition_values: std::mem::take(&mut self.partition_values),
            stats: Some(file_stats(&metadata, &self.schema)?),
            ..Default::default()
        };
        Ok(StagedFile::Delta(Box::new(add)))
    }
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

    fn target_file_size(&self) -> usize {
        TARGET_FILE_SIZE
    }

    /// Groups rows by their partition columns' values and drops those columns (Delta keeps
    /// partition values in the log, not in the data files).
    fn split(&self, batch: RecordBatch) -> Result<Vec<(Partition, RecordBatch)>, BoxError> {
        if self.partitioning.is_empty() {
            return Ok(vec![(Partition::Unpartitioned, batch)]);
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
        super::split_rows(&data, &keys)?
            .into_iter()
            .map(|(first, rows)| {
                let key =
                    keys.iter().zip(&formatters).map(|(c, f)| c.is_valid(first).then(|| f.value(first).to_string()));
                let values = self.partitioning.iter().map(|p| p.column.clone()).zip(key).collect();
                Ok((Partition::Delta(values), rows))
            })
            .collect()
    }

    fn file_location(&self, partition: &Partition, name: &str) -> String {
        match partition.path() {
            path if path.is_empty() => format!("{}/{name}", self.root),
            path => format!("{}/{path}/{name}", self.root),
        }
    }

    async fn open_file(&self, partition: &Partition, location: &str) -> Result<Box<dyn FileWriter>, BoxError> {
        let path = self.relative(location)?.to_string();
        let partition_values = match partition {
            Partition::Delta(values) => values.iter().cloned().collect(),
            _ => HashMap::new(),
        };
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .set_dictionary_page_size_limit(super::DICTIONARY_PAGE_BYTES)
            .build();
        let output = ParquetObjectWriter::new(self.store.clone(), object_path(&path)?);
        let writer = AsyncArrowWriter::try_new(output, self.file_schema.clone(), Some(properties))?;
        Ok(Box::new(DeltaFile { path, schema: self.file_schema.clone(), partition_values, writer }))
    }

    async fn delete_file(&self, location: &str) -> Result<(), BoxError> {
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

    async fn commit(&self, files: Vec<StagedFile>, run: &RunIdentity, mode: WriteMode) -> Result<i64, CommitError> {
        if let Some(version) = self.find_run(run).await? {
            return Ok(version);
        }
        let adds = files
            .into_iter()
            .map(|file| match file {
                StagedFile::Delta(add) => Ok(*add),
                other => Err(CommitError::new(format!("{other:?} is not a Delta data file"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut metadata = vec![(RUN_ID_KEY.to_string(), json!(run.run_id))];
        // delta-rs checkpoints only from a snapshot that lists every file; this one lists none.
        let mut properties = CommitProperties::default().with_create_checkpoint(false);
        if let Some(pipeline) = &run.pipeline {
            metadata.push((PIPELINE_KEY.to_string(), json!(pipeline)));
            properties = properties.with_application_transaction(DeltaTxn::new(app_id(pipeline), run.sequence));
        }
        let table = self.latest().await.map_err(CommitError::new)?;
        let snapshot = table.snapshot().map_err(CommitError::new)?;
        let removes =
            if mode == WriteMode::Append { Vec::new() } else { self.replaced_files(&table, &adds, mode).await? };
        let save_mode = if mode == WriteMode::Append {
            SaveMode::Append
        } else {
            // One attempt: another commit since the run started is a conflict, not something to rebase on.
            properties = properties.with_max_retries(0);
            SaveMode::Overwrite
        };
        let partition_by =
            (!self.partitioning.is_empty()).then(|| self.partitioning.iter().map(|p| p.column.clone()).collect());
        let operation = DeltaOperation::Write { mode: save_mode, partition_by, predicate: None };
        let actions = adds.into_iter().map(Action::Add).chain(removes.into_iter().map(Action::Remove)).collect();
        let committed = CommitBuilder::from(properties.with_metadata(metadata))
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(|e| match mode {
                WriteMode::Append => CommitError::new(e),
                _ => self.conflict(format!("another commit landed first ({e})")),
            })?;
        let version = committed.version();
        if let Err(e) = self.checkpoint_if_due(table, version).await {
            tracing::warn!(table = %self.root, version, "the commit landed, but its checkpoint was not written: {e}");
        }
        Ok(version as i64)
    }

    /// A pipeline's `txn` says whether its run landed at all, and only then is the whole history
    /// searched; an ad-hoc run is searched for in the versions committed since it started (the
    /// run's recorded base, or this writer's).
    async fn find_run(&self, run: &RunIdentity) -> Result<Option<i64>, CommitError> {
        let table = self.latest().await.map_err(CommitError::new)?;
        let Some(latest) = table.version() else { return Ok(None) };
        let log = table.log_store();
        let oldest = match &run.pipeline {
            Some(pipeline) => {
                let snapshot = table.snapshot().map_err(CommitError::new)?;
                let landed =
                    snapshot.transaction_version(log.as_ref(), app_id(pipeline)).await.map_err(CommitError::new)?;
                if landed.is_none_or(|version| version < run.sequence) {
                    return Ok(None);
                }
                0
            }
            None => run.base.map(|v| v as u64).or(self.base_version).map_or(0, |base| base + 1),
        };
        for version in (oldest..=latest).rev() {
            let Some(entry) = log.read_commit_entry(version).await.map_err(CommitError::new)? else { continue };
            if String::from_utf8_lossy(&entry).contains(&run.run_id) {
                return Ok(Some(version as i64));
            }
        }
        Ok(None)
    }
}

/// The object-store path of a file's table-relative path. Partition folders are already escaped
/// (`region=a%2Fb`), so the path is taken as it is: `Path::from` would escape the `%` again and put
/// the file where the log does not point.
fn object_path(relative: &str) -> Result<Path, BoxError> {
    Ok(Path::parse(relative)?)
}

/// Delta statistics JSON for one file from its Parquet footer. A column gets its null count, min
/// and max together or not at all: some readers (delta-rs) turn a null count without min / max
/// into a guarantee that no row matches, and would skip the file.
fn file_stats(metadata: &ParquetMetaData, schema: &Schema) -> Result<String, BoxError> {
    let (mut min_values, mut max_values, mut null_count) = (Map::new(), Map::new(), Map::new());
    let row_groups = metadata.row_groups();
    for field in schema.fields() {
        if field.data_type().is_nested() {
            continue;
        }
        let converter = StatisticsConverter::try_new(field.name(), schema, metadata.file_metadata().schema_descr())?;
        let nulls = converter.row_group_null_counts(row_groups.iter())?;
        if nulls.null_count() > 0 {
            continue;
        }
        // A row group of nothing but NULLs has no min / max and does not need one.
        let all_null: Vec<bool> =
            row_groups.iter().enumerate().map(|(i, group)| nulls.value(i) == group.num_rows() as u64).collect();
        let mins = converter.row_group_mins(row_groups.iter())?;
        let maxes = converter.row_group_maxes(row_groups.iter())?;
        let extremes = (fold(&mins, &all_null, Ordering::Less)?, fold(&maxes, &all_null, Ordering::Greater)?);
        if let (Some(min), Some(max)) = extremes
            && let (Some(min), Some(max)) = (stat_value(&min), stat_value(&max))
        {
            min_values.insert(field.name().clone(), min);
            max_values.insert(field.name().clone(), max);
            null_count.insert(field.name().clone(), json!(nulls.values().iter().sum::<u64>()));
        }
    }
    let stats = json!({
        "numRecords": metadata.file_metadata().num_rows(),
        "minValues": min_values,
        "maxValues": max_values,
        "nullCount": null_count,
    });
    Ok(stats.to_string())
}

/// The least (or greatest) of the row groups' values, skipping all-NULL row groups; `None`
/// when another row group has no statistic (then nothing can be said about the file).
fn fold(values: &ArrayRef, all_null: &[bool], keep: Ordering) -> Result<Option<ScalarValue>, BoxError> {
    let mut best: Option<ScalarValue> = None;
    for (index, all_null) in all_null.iter().enumerate().take(values.len()) {
        if *all_null {
            continue;
        }
        if values.is_null(index) {
            return Ok(None);
        }
        let value = ScalarValue::try_from_array(values, index)?;
        if best.as_ref().is_none_or(|b| value.partial_cmp(b) == Some(keep)) {
            best = Some(value);
        }
    }
    Ok(best)
}

/// A statistic as Delta writes it in JSON; `None` for types whose statistics Sluice leaves out
/// (timestamps and decimals, whose JSON forms lose precision, and long strings).
fn stat_value(value: &ScalarValue) -> Option<Value> {
    Some(match value {
        ScalarValue::Boolean(Some(v)) => json!(v),
        ScalarValue::Int8(Some(v)) => json!(v),
        ScalarValue::Int16(Some(v)) => json!(v),
        ScalarValue::Int32(Some(v)) => json!(v),
        ScalarValue::Int64(Some(v)) => json!(v),
        ScalarValue::UInt8(Some(v)) => json!(v),
        ScalarValue::UInt16(Some(v)) => json!(v),
        ScalarValue::UInt32(Some(v)) => json!(v),
        ScalarValue::UInt64(Some(v)) => json!(v),
        ScalarValue::Float32(Some(v)) if v.is_finite() => json!(v),
        ScalarValue::Float64(Some(v)) if v.is_finite() => json!(v),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s))
            if s.chars().count() <= STRING_STAT_CHARS_MAX =>
        {
            json!(s)
        }
        ScalarValue::Date32(Some(days)) => json!(date32_to_datetime(*days)?.date().to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::parquet::arrow::ArrowWriter;

    use super::*;

    #[test]
    fn statistics_span_row_groups_and_count_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let properties = WriterProperties::builder().set_max_row_group_row_count(Some(2)).build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties)).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![5, 3, 9, 7])),
                Arc::new(StringArray::from(vec![Some("b"), None, Some("a"), Some(&"z".repeat(40)[..])])),
                Arc::new(Float64Array::from(vec![None, None, Some(1.5), Some(-2.0)])),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        let metadata = writer.close().unwrap();
        let stats: Value = serde_json::from_str(&file_stats(&metadata, &schema).unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 4);
        assert_eq!(stats["minValues"]["id"], 3);
        assert_eq!(stats["maxValues"]["id"], 9);
        assert_eq!(stats["nullCount"], json!({"id": 0, "x": 2}));
        // The 40-character maximum is left out rather than written truncated (and wrong), and
        // with it the column's other statistics.
        assert!(stats["minValues"].get("name").is_none() && stats["nullCount"].get("name").is_none(), "{stats}");
        assert_eq!(stats["minValues"]["x"], -2.0);
    }
}

//! Sinks: per-shard writers that stage data files in a table format, without committing them.
//!
//! The shard loop is the same for every format ([`ShardSink::write_shard`]): cast each batch to
//! the table's schema and split it by partition (`split_rows`: rows grouped on their key, one
//! `take`, a slice per partition); when the partition has no open file, choose the next file
//! name (`<run id>-<shard>-<n>.parquet`, under the partition's folder), record it in the ledger,
//! and only then open it; gather a partition's rows to 8,192 before each write (bounded across
//! the shard's open files); roll to a new file past the table's target file size. What differs
//! per format — how a file is written and described, how rows map to partitions, how the run is
//! committed — is a [`TableWriter`]. A sink only stages; making the files visible is the
//! coordinator's job ([`crate::coordinator::TableCommit`]).

pub mod delta;
pub mod iceberg;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use crate::catalog::{PartitionField, TableName};
use crate::coordinator::RunContext;
use crate::runtime::{BoxError, ShardError};

/// The dictionary page size at which a column chunk falls back to plain encoding (parquet-rs:
/// 1 MiB). A high-cardinality column (keys, prices) otherwise hashes its first 1 MiB of values
/// into a dictionary it then abandons; at 128 KiB the TPC-H write runs ~10% faster and its files
/// come out smaller (benches/README.md), while low-cardinality columns stay dictionary-encoded.
pub const DICTIONARY_PAGE_BYTES: usize = 128 * 1024;

/// One staged data file, described as its table format needs it to be referenced (the table
/// formats' descriptions are boxed: they are large, and runs move thousands of them).
#[derive(Debug, Clone)]
pub enum StagedFile {
    /// An Iceberg data file with its metrics.
    Iceberg(Box<::iceberg::spec::DataFile>),
    /// A Delta `add` action with its statistics.
    Delta(Box<deltalake::kernel::Add>),
    /// A plain file (a part of an export), with what it holds.
    Part {
        /// Where it is.
        location: String,
        /// Rows in it.
        rows: u64,
        /// Its size in bytes.
        bytes: u64,
    },
}

impl StagedFile {
    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        match self {
            StagedFile::Iceberg(file) => file.record_count(),
            StagedFile::Delta(add) => {
                add.get_stats().ok().flatten().map(|s| s.num_records.max(0) as u64).unwrap_or_default()
            }
            StagedFile::Part { rows, .. } => *rows,
        }
    }

    /// Size of the file in bytes.
    pub fn bytes(&self) -> u64 {
        match self {
            StagedFile::Iceberg(file) => file.file_size_in_bytes(),
            StagedFile::Delta(add) => add.size.max(0) as u64,
            StagedFile::Part { bytes, .. } => *bytes,
        }
    }
}

/// The partition a batch of rows belongs to.
#[derive(Debug, Clone)]
pub enum Partition {
    /// The table is not partitioned.
    Unpartitioned,
    /// An Iceberg partition (its values under the table's partition spec).
    Iceberg(::iceberg::spec::PartitionKey),
    /// A Delta partition: each partition column with its value as the log writes it (NULL: `None`).
    Delta(Vec<(String, Option<String>)>),
}

impl Partition {
    /// The partition's folder under the table's data location (empty when unpartitioned).
    pub fn path(&self) -> String {
        match self {
            Partition::Unpartitioned => String::new(),
            Partition::Iceberg(key) => key.to_path(),
            Partition::Delta(values) => values
                .iter()
                .map(|(column, value)| match value {
                    Some(value) => format!("{column}={}", escape_path_value(value)),
                    None => format!("{column}=__HIVE_DEFAULT_PARTITION__"),
                })
                .collect::<Vec<_>>()
                .join("/"),
        }
    }
}

/// Splits `batch` by the values of `keys` (columns as long as the batch): for each group, in
/// order of first appearance, the index of its first row in `batch` and its rows. Keys are
/// compared in Arrow's row format, so nothing is formatted or converted per row (callers
/// describe each partition once, from its first row), and the rows are gathered with one `take`
/// for the whole batch, each group a slice of it.
pub(crate) fn split_rows(batch: &RecordBatch, keys: &[ArrayRef]) -> Result<Vec<(usize, RecordBatch)>, ArrowError> {
    let fields = keys.iter().map(|key| SortField::new(key.data_type().clone())).collect();
    let rows = RowConverter::new(fields)?.convert_columns(keys)?;
    let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut index: HashMap<_, usize> = HashMap::new();
    for (row, key) in rows.iter().enumerate() {
        let group = *index.entry(key).or_insert_with(|| {
            groups.push((row, Vec::new()));
            groups.len() - 1
        });
        groups[group].1.push(row as u32);
    }
    if let [(first, _)] = groups.as_slice() {
        return Ok(vec![(*first, batch.clone())]);
    }
    let order = UInt32Array::from_iter_values(groups.iter().flat_map(|(_, rows)| rows.iter().copied()));
    let gathered = take_record_batch(batch, &order)?;
    let mut offset = 0;
    Ok(groups
        .into_iter()
        .map(|(first, rows)| {
            let slice = gathered.slice(offset, rows.len());
            offset += rows.len();
            (first, slice)
        })
        .collect())
}

/// Hive-style folder-name escaping: `%XX` for anything but letters, digits, `-`, `_` and `.`.
fn escape_path_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// How a run's files change the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Add the files (`INSERT INTO`).
    #[default]
    Append,
    /// Replace everything in the table with the files (`INSERT OVERWRITE`).
    Overwrite,
    /// Replace the partitions that the files have rows for, keep the others (dynamic partition
    /// overwrite; on an unpartitioned table the same as [`WriteMode::Overwrite`]).
    OverwritePartitions,
}

impl WriteMode {
    /// The mode as written in `WITH (mode = '...')`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Overwrite => "overwrite",
            WriteMode::OverwritePartitions => "overwrite_partitions",
        }
    }
}

/// Who a commit is for: what the coordinator tells the table format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// The run id (UUIDv7).
    pub run_id: String,
    /// The pipeline, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
    /// The run's number within its pipeline (1, 2, ...), for Delta's `txn` action.
    pub sequence: i64,
    /// The table's snapshot / version when the run started: its commit can only be later.
    pub base: Option<i64>,
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct CommitError {
    /// The table format's error.
    pub source: BoxError,
}

impl CommitError {
    /// Wraps a table format's error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self { source: source.into() }
    }
}

/// Writes one data file.
#[async_trait]
pub trait FileWriter: Send {
    /// Appends a batch (already cast to the table's schema).
    async fn write(&mut self, batch: RecordBatch) -> Result<(), BoxError>;
    /// Bytes written so far, including what is still buffered.
    fn written_bytes(&self) -> usize;
    /// Finishes the file and describes it for the commit.
    async fn finish(self: Box<Self>) -> Result<StagedFile, BoxError>;
}

/// A table format as the coordinator drives it: stage files, commit them once, find a commit.
#[async_trait]
pub trait TableWriter: Send + Sync + std::fmt::Debug {
    /// The table format: `iceberg` or `delta`.
    fn format(&self) -> &'static str;
    /// The Arrow schema batches are written with (the table's current schema).
    fn schema(&self) -> &SchemaRef;
    /// The table's snapshot id (Iceberg) or version (Delta) as the writer found it.
    fn base(&self) -> Option<i64>;
    /// The table's partition fields (empty when unpartitioned); shards are split by them.
    fn partitioning(&self) -> &[PartitionField];
    /// Roll to a new file once the current one is this large.
    fn target_file_size(&self) -> usize;
    /// Splits a batch (in [`TableWriter::schema`]) by partition.
    fn split(&self, batch: RecordBatch) -> Result<Vec<(Partition, RecordBatch)>, BoxError>;
    /// The full location of a new data file called `name` in `partition` (what the ledger records).
    fn file_location(&self, partition: &Partition, name: &str) -> String;
    /// Opens a data file of `partition` at a location from [`TableWriter::file_location`].
    async fn open_file(&self, partition: &Partition, location: &str) -> Result<Box<dyn FileWriter>, BoxError>;
    /// Deletes a staged file; a file that is not there is not an error.
    async fn delete_file(&self, location: &str) -> Result<(), BoxError>;
    /// Publishes all `files` in one snapshot / version tagged with `run`; returns its id. An
    /// append retries (bounded) when concurrent writers win the race; an overwrite is one attempt
    /// and fails with a conflict when any other commit landed since the run started.
    async fn commit(&self, files: Vec<StagedFile>, run: &RunIdentity, mode: WriteMode) -> Result<i64, CommitError>;
    /// The snapshot / version that `run` committed, if the table's history has one.
    async fn find_run(&self, run: &RunIdentity) -> Result<Option<i64>, CommitError>;
}

/// Writes the shards of one run through a [`TableWriter`].
#[derive(Debug)]
pub struct ShardSink<'a> {
    run: &'a RunContext,
    table: &'a TableName,
    writer: Arc<dyn TableWriter>,
}

impl<'a> ShardSink<'a> {
    /// A sink for `run` into `table`.
    pub fn new(run: &'a RunContext, table: &'a TableName, writer: Arc<dyn TableWriter>) -> Self {
        Self { run, table, writer }
    }

    /// Streams shard `shard`'s input into data files and returns them, finished but not
    /// committed.
    pub async fn write_shard(
        &self,
        shard: usize,
        mut input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        let schema = self.writer.schema().clone();
        let write_error =
            |location: &str, source: BoxError| ShardError::Write { shard, path: location.to_string(), source };
        let mut staged = Vec::new();
        let mut sequence = 0usize;
        // One open file per partition this shard has rows for, keyed by the partition's path.
        let mut open: HashMap<String, OpenFile> = HashMap::new();
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| ShardError::Input { shard, source })?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(batch, &schema).map_err(|source| ShardError::Input { shard, source })?;
            let parts = self
                .writer
                .split(batch)
                .map_err(|e| ShardError::Input { shard, source: DataFusionError::External(e) })?;
            for (partition, rows) in parts {
                let key = partition.path();
                if !open.contains_key(&key) {
                    let name = format!("{}-{shard:05}-{sequence:05}.parquet", self.run.run_id());
                    let location = self.writer.file_location(&partition, &name);
                    sequence += 1;
                    // DESIGN §4 step 2: the location is in the ledger before the file exists.
                    self.run
                        .stage_file(shard, &location)
                        .await
                        .map_err(|source| ShardError::Ledger { shard, source })?;
                    let file =
                        self.writer.open_file(&partition, &location).await.map_err(|e| write_error(&location, e))?;
                    open.insert(key.clone(), OpenFile { location, file, pending: Vec::new(), pending_rows: 0 });
                }
                let file = open.get_mut(&key).expect("a file is open for the partition");
                let wrote = file.push(rows).await.map_err(|e| write_error(&file.location, e))?;
                if wrote && file.file.written_bytes() >= self.writer.target_file_size() {
                    let file = open.remove(&key).expect("a file is open for the partition");
                    let location = file.location.clone();
                    staged.push(file.finish().await.map_err(|e| write_error(&location, e))?);
                }
            }
            // With many partitions open, the gathered rows are bounded: write them all out.
            if open.values().map(|f| f.pending_rows).sum::<usize>() > PENDING_ROWS_MAX {
                for file in open.values_mut() {
                    file.flush().await.map_err(|e| write_error(&file.location, e))?;
                }
            }
            crate::failpoint::check("shard-write", &self.table.to_string())
                .map_err(|failpoint| ShardError::Injected { shard, failpoint })?;
        }
        for (_, file) in open {
            let location = file.location.clone();
            staged.push(file.finish().await.map_err(|e| write_error(&location, e))?);
        }
        Ok(staged)
    }
}

/// Rows gathered for a file before each write: a partitioned table's batches split into many
/// small pieces, and the Parquet writer's cost is per call as much as per row.
const WRITE_ROWS: usize = 8192;

/// Rows a shard may hold gathered across all its open files (a table with thousands of
/// partitions would otherwise gather up to [`WRITE_ROWS`] for each).
const PENDING_ROWS_MAX: usize = 128 * 1024;

/// A data file being written, with the rows that arrived for it since its last write.
struct OpenFile {
    location: String,
    file: Box<dyn FileWriter>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl OpenFile {
    /// Adds rows; writes them once [`WRITE_ROWS`] have gathered, and says whether it wrote.
    async fn push(&mut self, rows: RecordBatch) -> Result<bool, BoxError> {
        self.pending_rows += rows.num_rows();
        self.pending.push(rows);
        if self.pending_rows < WRITE_ROWS {
            return Ok(false);
        }
        self.flush().await?;
        Ok(true)
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        let batch = match self.pending.len() {
            0 => return Ok(()),
            1 => self.pending.pop().expect("one pending batch"),
            _ => concat_batches(&self.pending[0].schema(), &self.pending)?,
        };
        self.pending.clear();
        self.pending_rows = 0;
        self.file.write(batch).await
    }

    /// Writes what is pending and finishes the file.
    async fn finish(mut self) -> Result<StagedFile, BoxError> {
        self.flush().await?;
        self.file.finish().await
    }
}

/// Casts a batch to the table's Arrow schema, column by column, failing (instead of writing
/// NULL) when a value does not fit, and naming the column.
pub fn conform(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch, DataFusionError> {
    if batch.num_columns() != target.fields().len() {
        return Err(DataFusionError::Plan(format!(
            "the input has {} columns but the table has {}",
            batch.num_columns(),
            target.fields().len()
        )));
    }
    let options = CastOptions { safe: false, format_options: FormatOptions::default() };
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                return Ok(column.clone());
            }
            cast_with_options(column, field.data_type(), &options).map_err(|e| {
                DataFusionError::Execution(format!(
                    "column `{}`: cannot store {} as {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.clone(), columns).map_err(|e| DataFusionError::Execution(e.to_string()))
}

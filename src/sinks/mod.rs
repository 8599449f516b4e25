//! Sinks: per-shard writers that stage data files in a table format, without committing them.
//!
//! The shard loop is the same for every format ([`ShardSink::write_shard`]): cast each batch to
//! the table's schema and split it by partition (`split_rows`: rows grouped on their key, one
//! `take` per partition); let the rows wait per partition (bounded in bytes and by the run's
//! memory pool) and write them out a file at a time; before a file is opened, choose its name
//! (`<run id>-<shard>-<n>.parquet`, under the partition's folder) and record it in the ledger;
//! roll to a new file past the table's target file size. What differs
//! per format — how a file is written and described, how rows map to partitions, how the run is
//! committed — is a [`TableWriter`]. A sink only stages; making the files visible is the
//! coordinator's job ([`crate::coordinator::TableCommit`]).

pub mod delta;
pub mod iceberg;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryConsumer;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::catalog::{PartitionField, TableName};
use crate::coordinator::RunContext;
use crate::runtime::{BoxError, ShardError};

/// The dictionary page size at which a column chunk falls back to plain encoding (parquet-rs:
/// 1 MiB). A high-cardinality column (keys, prices) otherwise hashes its first 1 MiB of values
/// into a dictionary it then abandons, in every file: at 32 KiB the TPC-H writes run faster and
/// their files come out smaller (benches/README.md), while low-cardinality columns (a few
/// thousand distinct values) stay dictionary-encoded.
pub const DICTIONARY_PAGE_BYTES: usize = 32 * 1024;

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
/// describe each partition once, from its first row). Each group's rows are gathered into
/// buffers of their own, so a group that waits to be written holds only its own rows, not the
/// whole batch.
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
    groups.into_iter().map(|(first, rows)| Ok((first, take_record_batch(batch, &UInt32Array::from(rows))?))).collect()
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
#[error("{}{source}", if *.conflict { "conflict: " } else { "" })]
pub struct CommitError {
    /// The table format's error.
    pub source: BoxError,
    /// Whether another commit won the race: nothing of this one landed, and an append may be
    /// tried again on the new state.
    pub conflict: bool,
}

impl CommitError {
    /// Wraps a table format's error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self { source: source.into(), conflict: false }
    }

    /// Another commit won the race.
    pub fn conflict(source: impl Into<BoxError>) -> Self {
        Self { source: source.into(), conflict: true }
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
    /// The table's own location (a URL or path): every file the writer stages lies inside it,
    /// and rollback deletes nothing outside it.
    fn location(&self) -> &str;
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
    /// Deletes a staged file and checks that it is gone; a file that is not there is not an
    /// error.
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
    writers: Arc<Semaphore>,
}

impl<'a> ShardSink<'a> {
    /// A sink for `run` into `table`, writing as many files at once as there are cores once
    /// its input has ended.
    pub fn new(run: &'a RunContext, table: &'a TableName, writer: Arc<dyn TableWriter>) -> Self {
        let writers = Arc::new(Semaphore::new(crate::planner::default_shards()));
        Self { run, table, writer, writers }
    }

    /// The same sink, taking a permit from `writers` for each file it writes once its input has
    /// ended: shared by a run's shards, so that a shard that finishes early lends its cores to
    /// the others.
    pub fn with_writers(mut self, writers: Arc<Semaphore>) -> Self {
        self.writers = writers;
        self
    }

    /// Streams shard `shard`'s input into data files and returns them, finished but not
    /// committed.
    ///
    /// Rows wait in memory, per partition, while the shard holds less than
    /// `PENDING_BYTES_MAX` (64 MiB) of them and the run's memory pool grants them; past that, the
    /// partition holding the most is written out, its file opened if it has none yet. The rest
    /// are written when the input ends, each partition's file a task of its own (their files
    /// recorded in the ledger in one step), as many at a time as the run's `writers` permit. A
    /// Parquet file being written holds a column writer per column, with page buffers,
    /// dictionary and compression contexts; a shard writing many small partitions would
    /// otherwise hold all of them at once. A partition whose file is open, and an unpartitioned
    /// table (one file at a time anyway), is written every `WRITE_ROWS` (8,192) rows.
    pub async fn write_shard(
        &self,
        shard: usize,
        mut input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        let schema = self.writer.schema().clone();
        let files = ShardFiles {
            run: self.run.clone(),
            writer: self.writer.clone(),
            shard,
            sequence: Arc::new(AtomicUsize::new(0)),
        };
        let mut staged = Vec::new();
        let reservation = MemoryConsumer::new(format!("rows waiting to be written by shard {shard}"))
            .register(self.run.memory_pool());
        let unpartitioned = self.writer.partitioning().is_empty();
        // The rows waiting for each partition this shard has seen, keyed by the partition's path.
        let mut partitions: HashMap<String, PartitionRows> = HashMap::new();
        let mut pending_bytes = 0usize;
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
                let waiting = partitions.entry(partition.path()).or_insert_with(|| PartitionRows::new(partition));
                pending_bytes += waiting.add(rows);
                if (unpartitioned || waiting.file.is_some()) && waiting.rows >= WRITE_ROWS {
                    pending_bytes -= files.write(waiting, &mut staged).await?;
                }
            }
            while pending_bytes > PENDING_BYTES_MAX || reservation.try_resize(pending_bytes).is_err() {
                let largest = partitions.values_mut().max_by_key(|p| p.bytes).expect("rows are waiting");
                pending_bytes -= files.write(largest, &mut staged).await?;
            }
            crate::failpoint::check("shard-write", &self.table.to_string())
                .map_err(|failpoint| ShardError::Injected { shard, failpoint })?;
        }

        let mut partitions: Vec<_> = partitions.into_iter().collect();
        partitions.sort_by(|(a, _), (b, _)| a.cmp(b));
        let unopened = partitions.iter().filter(|(_, p)| p.file.is_none() && p.rows > 0);
        let locations: Vec<String> = unopened.map(|(_, p)| files.next_location(&p.partition)).collect();
        files.stage(&locations).await?;
        let mut locations = locations.into_iter();
        let mut tasks = JoinSet::new();
        for (_, mut waiting) in partitions {
            let location = (waiting.file.is_none() && waiting.rows > 0).then(|| locations.next()).flatten();
            let (files, writers) = (files.clone(), self.writers.clone());
            tasks.spawn(async move {
                let _permit = writers.acquire_owned().await.expect("the writers' semaphore is never closed");
                let mut staged = Vec::new();
                if let Some(location) = location {
                    waiting.file = Some(files.open(&waiting.partition, location).await?);
                }
                let bytes = files.write(&mut waiting, &mut staged).await?;
                if let Some(file) = waiting.file.take() {
                    staged.push(files.finish(file).await?);
                }
                Ok::<_, ShardError>((staged, bytes))
            });
        }
        // Every task ends before the shard does, failed or not: a file still being written
        // when the run rolls back could otherwise appear after its deletion.
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|e| Err(ShardError::Panicked { shard, message: e.to_string() }));
            match result {
                Ok((files, bytes)) => {
                    staged.extend(files);
                    pending_bytes -= bytes;
                    reservation.resize(pending_bytes);
                }
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(staged),
        }
    }
}

/// Bytes of rows one shard holds unwritten across its partitions (see
/// [`ShardSink::write_shard`]).
const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Rows gathered for an open file before each write: a partitioned table's batches split into
/// many small pieces, and the Parquet writer's cost is per call as much as per row.
const WRITE_ROWS: usize = 8192;

/// One partition's rows waiting to be written, and its file once opened.
struct PartitionRows {
    partition: Partition,
    file: Option<OpenFile>,
    pending: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl PartitionRows {
    fn new(partition: Partition) -> Self {
        Self { partition, file: None, pending: Vec::new(), rows: 0, bytes: 0 }
    }

    /// Adds rows to wait; returns the bytes they hold.
    fn add(&mut self, rows: RecordBatch) -> usize {
        let bytes = rows.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or_default()).sum();
        self.rows += rows.num_rows();
        self.bytes += bytes;
        self.pending.push(rows);
        bytes
    }
}

/// A data file being written.
struct OpenFile {
    location: String,
    file: Box<dyn FileWriter>,
}

/// How one shard's files are named, recorded in the ledger, opened, written and finished.
#[derive(Clone)]
struct ShardFiles {
    run: RunContext,
    writer: Arc<dyn TableWriter>,
    shard: usize,
    sequence: Arc<AtomicUsize>,
}

impl ShardFiles {
    /// Writes the partition's waiting rows in pieces of at least [`WRITE_ROWS`], opening a file
    /// when it has none, and finishing it (into `staged`; the next rows roll to a new file) once
    /// it has reached the table's target size. Returns the bytes the rows held.
    async fn write(&self, waiting: &mut PartitionRows, staged: &mut Vec<StagedFile>) -> Result<usize, ShardError> {
        let pending = std::mem::take(&mut waiting.pending);
        let freed = std::mem::take(&mut waiting.bytes);
        waiting.rows = 0;
        let (mut start, mut rows) = (0, 0);
        for (i, piece) in pending.iter().enumerate() {
            rows += piece.num_rows();
            if rows < WRITE_ROWS && i + 1 < pending.len() {
                continue;
            }
            let file = match waiting.file.take() {
                Some(file) => file,
                None => {
                    let location = self.next_location(&waiting.partition);
                    self.stage(std::slice::from_ref(&location)).await?;
                    self.open(&waiting.partition, location).await?
                }
            };
            let file = waiting.file.insert(file);
            let batch = match &pending[start..=i] {
                [one] => one.clone(),
                pieces => concat_batches(&pieces[0].schema(), pieces).map_err(|e| self.error(file, e.into()))?,
            };
            file.file.write(batch).await.map_err(|e| self.error(file, e))?;
            (start, rows) = (i + 1, 0);
            if file.file.written_bytes() >= self.writer.target_file_size() {
                let file = waiting.file.take().expect("the file written to");
                staged.push(self.finish(file).await?);
            }
        }
        Ok(freed)
    }

    /// The next file's location: `<run id>-<shard>-<n>.parquet` in the partition's folder.
    fn next_location(&self, partition: &Partition) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{:05}-{sequence:05}.parquet", self.run.run_id(), self.shard);
        self.writer.file_location(partition, &name)
    }

    /// DESIGN §4 step 2: a file's location is in the ledger before the file exists.
    async fn stage(&self, locations: &[String]) -> Result<(), ShardError> {
        if locations.is_empty() {
            return Ok(());
        }
        let staged = self.run.stage_files(self.shard, locations).await;
        staged.map_err(|source| ShardError::Ledger { shard: self.shard, source })
    }

    /// Opens a file at a location already staged.
    async fn open(&self, partition: &Partition, location: String) -> Result<OpenFile, ShardError> {
        match self.writer.open_file(partition, &location).await {
            Ok(file) => Ok(OpenFile { location, file }),
            Err(source) => Err(ShardError::Write { shard: self.shard, path: location, source }),
        }
    }

    async fn finish(&self, file: OpenFile) -> Result<StagedFile, ShardError> {
        let OpenFile { location, file } = file;
        file.finish().await.map_err(|source| ShardError::Write { shard: self.shard, path: location, source })
    }

    fn error(&self, file: &OpenFile, source: BoxError) -> ShardError {
        ShardError::Write { shard: self.shard, path: file.location.clone(), source }
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

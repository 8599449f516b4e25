//! The shard loop: per-shard writing that stages data files in a table format, without
//! committing them.
//!
//! The loop is the same for every format ([`ShardSink::write_shard`]), generic over the
//! format's partition and file types: cast each batch to
//! the table's schema and split it by partition (`split_rows`: rows grouped on their key, one
//! `take` per partition); let the rows wait per partition (bounded in bytes and by the run's
//! memory pool) and write them out a file at a time; before a file is opened, choose its name
//! (`<run id>-<shard>-<n>.parquet`, under the partition's folder) and record it in the ledger;
//! roll to a new file past the table's target file size. What differs
//! per format — how a file is written and described, how rows map to partitions, how the run is
//! committed — is a [`TableFormat`]. A sink only stages; making the files visible is the
//! coordinator's job.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::conform::conform;
use super::format::{FileWriter, TableFormat};
use super::{BoxError, RunContext, ShardError};
use crate::table::TableName;

/// Writes the shards of one run through a [`TableFormat`].
#[derive(Debug)]
pub struct ShardSink<'a, W: TableFormat> {
    run: &'a RunContext,
    table: &'a TableName,
    writer: Arc<W>,
    writers: Arc<Semaphore>,
}

impl<'a, W: TableFormat> ShardSink<'a, W> {
    /// A sink for `run` into `table`, writing as many files at once as there are cores once
    /// its input has ended.
    pub fn new(run: &'a RunContext, table: &'a TableName, writer: Arc<W>) -> Self {
        let writers = Arc::new(Semaphore::new(super::default_shards()));
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
        input: SendableRecordBatchStream,
    ) -> Result<Vec<W::File>, ShardError> {
        let files = ShardFiles {
            run: self.run.clone(),
            writer: self.writer.clone(),
            shard,
            sequence: Arc::new(AtomicUsize::new(0)),
        };
        let mut staged = Vec::new();
        let reservation = MemoryConsumer::new(format!("rows waiting to be written by shard {shard}"))
            .register(self.run.memory_pool());
        // The rows waiting for each partition this shard has seen, keyed by the partition's path.
        let mut partitions: HashMap<String, PartitionRows<W>> = HashMap::new();
        let streamed = self.stream_in(&files, input, &mut partitions, &mut staged, &reservation).await;
        let mut pending_bytes = match streamed {
            Ok(pending_bytes) => pending_bytes,
            Err(error) => {
                // No upload of this shard may land after the rollback that follows.
                for waiting in partitions.into_values() {
                    if let Some(file) = waiting.file {
                        file.file.abort().await;
                    }
                }
                return Err(error);
            }
        };

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
                let bytes = match files.write(&mut waiting, &mut staged).await {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        if let Some(file) = waiting.file.take() {
                            file.file.abort().await;
                        }
                        return Err(error);
                    }
                };
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

    /// Reads the shard's input into `partitions`, writing out rows past the thresholds; returns
    /// the bytes still waiting.
    async fn stream_in(
        &self,
        files: &ShardFiles<W>,
        mut input: SendableRecordBatchStream,
        partitions: &mut HashMap<String, PartitionRows<W>>,
        staged: &mut Vec<W::File>,
        reservation: &MemoryReservation,
    ) -> Result<usize, ShardError> {
        let shard = files.shard;
        let schema = self.writer.schema().clone();
        let unpartitioned = self.writer.partitioning().is_empty();
        let mut pending_bytes = 0usize;
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| ShardError::Input { shard, source })?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(batch, &schema).map_err(|source| ShardError::Unfit { shard, source })?;
            let parts = self
                .writer
                .split(batch)
                .map_err(|e| ShardError::Input { shard, source: DataFusionError::External(e) })?;
            for (partition, rows) in parts {
                let path = self.writer.partition_path(&partition);
                let waiting = partitions.entry(path).or_insert_with(|| PartitionRows::new(partition));
                pending_bytes += waiting.add(rows);
                if (unpartitioned || waiting.file.is_some()) && waiting.rows >= WRITE_ROWS {
                    pending_bytes -= files.write(waiting, staged).await?;
                }
            }
            while pending_bytes > PENDING_BYTES_MAX || reservation.try_resize(pending_bytes).is_err() {
                let largest = partitions.values_mut().max_by_key(|p| p.bytes).expect("rows are waiting");
                pending_bytes -= files.write(largest, staged).await?;
            }
            crate::failpoint::check("shard-write", &self.table.to_string())
                .map_err(|failpoint| ShardError::Injected { shard, failpoint })?;
        }
        Ok(pending_bytes)
    }
}

/// Bytes of rows one shard holds unwritten across its partitions (see
/// [`ShardSink::write_shard`]).
const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Rows gathered for an open file before each write: a partitioned table's batches split into
/// many small pieces, and the Parquet writer's cost is per call as much as per row.
const WRITE_ROWS: usize = 8192;

/// One partition's rows waiting to be written, and its file once opened.
struct PartitionRows<W: TableFormat> {
    partition: W::Partition,
    file: Option<OpenFile<W::File>>,
    pending: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl<W: TableFormat> PartitionRows<W> {
    fn new(partition: W::Partition) -> Self {
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
struct OpenFile<F> {
    location: String,
    file: Box<dyn FileWriter<F>>,
}

/// How one shard's files are named, recorded in the ledger, opened, written and finished.
struct ShardFiles<W> {
    run: RunContext,
    writer: Arc<W>,
    shard: usize,
    sequence: Arc<AtomicUsize>,
}

impl<W> Clone for ShardFiles<W> {
    fn clone(&self) -> Self {
        let (run, writer, shard, sequence) = (self.run.clone(), self.writer.clone(), self.shard, self.sequence.clone());
        Self { run, writer, shard, sequence }
    }
}

impl<W: TableFormat> ShardFiles<W> {
    /// Writes the partition's waiting rows in pieces of at least [`WRITE_ROWS`], opening a file
    /// when it has none, and finishing it (into `staged`; the next rows roll to a new file) once
    /// it has reached the table's target size. Returns the bytes the rows held.
    async fn write(&self, waiting: &mut PartitionRows<W>, staged: &mut Vec<W::File>) -> Result<usize, ShardError> {
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
    fn next_location(&self, partition: &W::Partition) -> String {
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
    async fn open(&self, partition: &W::Partition, location: String) -> Result<OpenFile<W::File>, ShardError> {
        match self.writer.open_file(partition, &location).await {
            Ok(file) => Ok(OpenFile { location, file }),
            Err(source) => Err(ShardError::Write { shard: self.shard, path: location, source }),
        }
    }

    async fn finish(&self, file: OpenFile<W::File>) -> Result<W::File, ShardError> {
        let OpenFile { location, file } = file;
        file.finish().await.map_err(|source| ShardError::Write { shard: self.shard, path: location, source })
    }

    fn error(&self, file: &OpenFile<W::File>, source: BoxError) -> ShardError {
        ShardError::Write { shard: self.shard, path: file.location.clone(), source }
    }
}

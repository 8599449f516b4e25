//! What a table format must provide for the shard loop and the commit: [`TableWriter`] (what
//! everyone may ask of a table being written, usable as a trait object) and [`TableFormat`]
//! (the typed part: how rows map to partitions, how a file is written and described, how the
//! run is committed). Each format owns its partition and file types; nothing here names a format.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::TableProvider;

use super::{BoxError, RunContext};
use crate::table::{PartitionField, RunIdentity, WriteMode};

/// The dictionary page size at which a column chunk falls back to plain encoding (parquet-rs:
/// 1 MiB). A high-cardinality column (keys, prices) otherwise hashes its first 1 MiB of values
/// into a dictionary it then abandons, in every file: at 32 KiB the TPC-H writes run faster and
/// their files come out smaller (benches/README.md), while low-cardinality columns (a few
/// thousand distinct values) stay dictionary-encoded.
pub const DICTIONARY_PAGE_BYTES: usize = 32 * 1024;

/// The ledger's entry standing for every file whose name starts with `files` (`<run id>-...`)
/// anywhere in the table at `location`: `<location>/<files>-*`. Staged before shards written
/// elsewhere (a cluster's executors) start, whose files the ledger learns only once they
/// finish, so that a rollback or a recovery deletes whatever of theirs is there
/// ([`TableWriter::delete_file`] takes it).
pub fn files_named_entry(location: &str, files: &str) -> String {
    format!("{}/{files}-*", location.trim_end_matches('/'))
}

/// The name prefix (`<files>-`) `location` stands for, if it is a [`files_named_entry`]: one
/// that starts with a run id (a UUID), so that no entry can stand for a table's other files.
pub fn files_named(location: &str) -> Option<&str> {
    let prefix = location.strip_suffix('*').and_then(|l| l.rsplit('/').next())?;
    let run_id = prefix.get(..36)?;
    (prefix.len() > 37 && uuid::Uuid::try_parse(run_id).is_ok()).then_some(prefix)
}

/// A staged file as every layer sees it: where it is and what it holds. The format's own
/// description (an Iceberg data file, a Delta `add`) stays with the format's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Where it is.
    pub location: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A commit written but not published (an atomic pipeline's step): the table's next metadata
/// is in place, and only a swap of the catalog's pointer from `from` to `to` — together with the
/// other tables' swaps, in one catalog transaction — makes it current.
#[derive(Debug, Clone)]
pub struct HeldCommit {
    /// The table's namespace, as the catalog names it.
    pub namespace: String,
    /// The table's name.
    pub table: String,
    /// The metadata location the table points at now: the swap's expected value.
    pub from: String,
    /// The new metadata location.
    pub to: String,
    /// The snapshot the new metadata makes current.
    pub snapshot_id: i64,
    /// The table as it will be once published: how the run's later steps read it.
    pub provider: Arc<dyn TableProvider>,
}

/// Why a commit did not publish the run. The variants say what the caller may do next.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another commit won the race; nothing of this one landed. An append may try again on the
    /// new state; an overwrite may not (its answer would change).
    #[error("conflict: {0}")]
    Conflict(BoxError),
    /// Every attempt lost to concurrent writers; nothing of this run landed.
    #[error("gave up after {attempts} attempts lost to concurrent commits: {last}")]
    AttemptsExhausted {
        /// Attempts made.
        attempts: usize,
        /// The last attempt's conflict.
        last: BoxError,
    },
    /// The catalog may or may not have taken the commit (a lost answer, a failed request):
    /// only the table's history can tell.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(BoxError),
    /// The commit was refused before the catalog had it (the table or request cannot be
    /// committed, or recovery has fenced the run off): nothing landed.
    #[error("{0}")]
    Refused(BoxError),
}

impl CommitError {
    /// Whether nothing of the run can have landed.
    pub fn nothing_landed(&self) -> bool {
        !matches!(self, CommitError::OutcomeUnknown(_))
    }
}

/// What a table being written is, as the coordinator, rollback and recovery see it; a trait
/// object ([`TableFormat`] adds the typed part).
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
    /// Deletes a staged file and checks that it is gone; a file that is not there is not an
    /// error. A [`files_named_entry`] deletes every data file of the table named so.
    async fn delete_file(&self, location: &str) -> Result<(), BoxError> {
        match files_named(location) {
            Some(prefix) => self.delete_files_named(prefix, &HashSet::new()).await.map(|_| ()),
            None => self.delete_one_file(location).await,
        }
    }
    /// Deletes one staged file (not an entry) and checks that it is gone.
    async fn delete_one_file(&self, location: &str) -> Result<(), BoxError>;
    /// Deletes every data file of the table whose name starts with `prefix` (the files of a run
    /// written elsewhere, [`files_named`]) and is not in `keep` (file names); returns how many.
    async fn delete_files_named(&self, prefix: &str, keep: &HashSet<String>) -> Result<usize, BoxError>;
    /// The snapshot / version that `run` committed, if the table's history has one.
    async fn find_run(&self, run: &RunIdentity) -> Result<Option<i64>, CommitError>;
    /// Makes a late commit of `run` impossible (recovery of a run whose process was committing
    /// when it went silent): afterwards the run's commit is refused, whatever state it was in.
    /// Returns [`Fence::Landed`] if the run turned out to have landed, [`Fence::Fenced`] once it
    /// is fenced off, and [`Fence::Unsupported`] when the catalog cannot express a fence.
    async fn fence(&self, run: &RunIdentity) -> Result<Fence, CommitError>;
}

/// The result of [`TableWriter::fence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The run had landed, in this snapshot / version.
    Landed(i64),
    /// The run can no longer land.
    Fenced,
    /// The catalog offers no fence: whether a late commit lands cannot be ruled out, so the
    /// run's files must be kept.
    Unsupported,
}

/// Writes one data file of a format whose description of a finished file is `F`.
#[async_trait]
pub trait FileWriter<F>: Send {
    /// Appends a batch (already cast to the table's schema).
    async fn write(&mut self, batch: RecordBatch) -> Result<(), BoxError>;
    /// Bytes written so far, including what is still buffered.
    fn written_bytes(&self) -> usize;
    /// Finishes the file and describes it for the commit.
    async fn finish(self: Box<Self>) -> Result<F, BoxError>;
    /// Abandons the file: any upload still in flight is stopped before this returns, so the
    /// file cannot appear after a rollback has deleted it.
    async fn abort(self: Box<Self>);
}

/// A table format's typed writer: splits rows by partition, writes files, commits them.
#[async_trait]
pub trait TableFormat: TableWriter + 'static {
    /// A partition of the table (its key and folder).
    type Partition: Send + Sync + 'static;
    /// A finished data file, described as the format's commit needs it.
    type File: Send + Sync + Clone + std::fmt::Debug + 'static;

    /// Roll to a new file once the current one is this large.
    fn target_file_size(&self) -> usize;
    /// Splits a batch (in [`TableWriter::schema`]) by partition.
    fn split(&self, batch: RecordBatch) -> Result<Vec<(Self::Partition, RecordBatch)>, BoxError>;
    /// The partition's folder under the table's data location (empty when unpartitioned): also
    /// how a shard tells partitions apart.
    fn partition_path(&self, partition: &Self::Partition) -> String;
    /// The full location of a new data file called `name` in `partition` (what the ledger records).
    fn file_location(&self, partition: &Self::Partition, name: &str) -> String;
    /// Opens a data file of `partition` at a location from [`TableFormat::file_location`].
    async fn open_file(
        &self,
        partition: &Self::Partition,
        location: &str,
    ) -> Result<Box<dyn FileWriter<Self::File>>, BoxError>;
    /// Where a finished file is and what it holds.
    fn describe(&self, file: &Self::File) -> StagedFile;
    /// A finished file's description as text, so that a shard written in another process (an
    /// executor of a cluster) can hand its files to the commit made here.
    fn encode_file(&self, file: &Self::File) -> Result<String, BoxError>;
    /// The description [`TableFormat::encode_file`] wrote.
    fn decode_file(&self, text: &str) -> Result<Self::File, BoxError>;
    /// Publishes all `files` in one snapshot / version tagged with the run; returns its id. A
    /// file the commit writes itself (manifests, metadata) is recorded with the run's staged
    /// files before it is written (files a library writes inside its own transaction cannot
    /// be). An append retries (bounded) when concurrent writers win the race; an overwrite is
    /// one attempt and fails with a conflict when any other commit landed since the run started.
    /// Where the format can fence (see [`TableWriter::fence`]), every attempt of a fenced-off
    /// run is refused.
    async fn commit(&self, files: Vec<Self::File>, run: &RunContext, mode: WriteMode) -> Result<i64, CommitError>;

    /// Writes the commit of `files` (its manifests and metadata, each recorded with the run's
    /// staged files first) without publishing it, for a swap together with other tables'
    /// ([`HeldCommit`]). What it wrote is deleted again when it fails. The default refuses: only
    /// a table behind a catalog pointer that one transaction can swap with others' can hold.
    async fn hold(&self, files: Vec<Self::File>, run: &RunContext, mode: WriteMode) -> Result<HeldCommit, CommitError> {
        let _ = (files, run, mode);
        Err(CommitError::Refused(
            format!("a {} table cannot hold its commit to publish it with other tables", self.format()).into(),
        ))
    }
}

/// Runs a commit `attempt` again while it loses to concurrent commits ([`CommitError::Conflict`]),
/// at most `attempts` times in all, with jittered exponential backoff (20 ms, doubling, up to
/// 2 s) between; when every attempt lost, [`CommitError::AttemptsExhausted`]. `run_id` and
/// `table` name the commit in the log.
pub async fn retry_conflicts<F, Fut>(attempts: usize, run_id: &str, table: &str, attempt: F) -> Result<i64, CommitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<i64, CommitError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(attempts.saturating_sub(1));
    let committed = attempt
        .retry(backoff)
        .when(|e: &CommitError| matches!(e, CommitError::Conflict(_)))
        .notify(|e, delay| tracing::info!(%run_id, %table, ?delay, "commit conflict, retrying: {e}"))
        .await;
    committed.map_err(|e| match e {
        CommitError::Conflict(last) => CommitError::AttemptsExhausted { attempts, last },
        other => other,
    })
}

/// Splits `batch` by the values of `keys` (columns as long as the batch): for each group, in
/// order of first appearance, the index of its first row in `batch` and its rows. Keys are
/// compared in Arrow's row format, so nothing is formatted or converted per row (callers
/// describe each partition once, from its first row). Each group's rows are gathered into
/// buffers of their own, so a group that waits to be written holds only its own rows, not the
/// whole batch.
pub fn split_rows(batch: &RecordBatch, keys: &[ArrayRef]) -> Result<Vec<(usize, RecordBatch)>, ArrowError> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_run_s_own_files_are_named_by_an_entry() {
        let entry = super::files_named_entry("s3://b/t", "01a2417d-71ba-7678-9d20-9829fc9050e2-5c4f1f19");
        assert_eq!(super::files_named(&entry), Some("01a2417d-71ba-7678-9d20-9829fc9050e2-5c4f1f19-"));
        for not_a_run in [
            "s3://b/t/x-*",
            "s3://b/t/*",
            "s3://b/t/part-00000.csv",
            "s3://b/t/not-a-uuid-at-all-not-a-uuid-at-all-x-*",
        ] {
            assert_eq!(super::files_named(not_a_run), None, "{not_a_run}");
        }
    }
}

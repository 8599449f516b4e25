//! The file-merge coordinator, for plain exports: `COPY (SELECT ...) TO 'out.csv'` (JSONL,
//! Parquet). Each shard writes a part file into a hidden folder beside the requested file;
//! `on_finish` merges the parts, in shard order, into a hidden temporary file, syncs it and
//! renames it into place: a reader sees the old file or the whole new one, never a part.
//! `on_error` deletes the parts and the temporary file.
//!
//! ```text
//!  dir/.out.csv.<run id>/part-00000.csv  part-00001.csv ...     (staged, each in the ledger)
//!  dir/.out.csv.<run id>.tmp   ◄── header + parts, in order      (merge)
//!  dir/out.csv                 ◄── rename                         (commit)
//! ```
//!
//! An export into an object store (`s3://bucket/dir/out.csv`) stages and merges the same way in
//! the home's `exports/` folder, then uploads the merged file (one put, or a multipart upload
//! completed only at its end): a reader sees the old object or the whole new one, and a failed
//! upload is aborted, leaving the old object.
//!
//! CSV and JSONL parts are concatenated byte for byte (CSV parts have no header; the merged file
//! gets one). Parquet parts' row groups are copied without decoding them. A query that ends
//! sorted (`ORDER BY`) is written by one shard, so the file keeps its order.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::buffered::BufWriter as ObjectWriter;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::column::writer::ColumnCloseResult;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use datafusion::parquet::file::writer::SerializedFileWriter;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Coordinator, CoordinatorError, RunContext, ShardResult, StagedFile};
use crate::runtime::{BoxError, ShardError};

/// The format of an exported file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// Newline-delimited JSON, one object per row.
    Jsonl,
    /// Apache Parquet (zstd level 3, as DataFusion's `COPY` writes it).
    Parquet,
}

impl ExportFormat {
    /// The format called `name` (`STORED AS` or a file extension): `csv`, `json` / `jsonl` /
    /// `ndjson`, `parquet`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Some(ExportFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(ExportFormat::Jsonl),
            "parquet" => Some(ExportFormat::Parquet),
            _ => None,
        }
    }

    /// The format of `path`, from its extension.
    pub fn of_path(path: &Path) -> Option<Self> {
        path.extension().and_then(|e| e.to_str()).and_then(Self::parse)
    }

    fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Parquet => "parquet",
        }
    }
}

/// Writes a query's result as one file, from N shards, atomically.
#[derive(Debug)]
pub struct FileMerge {
    /// The file exported into, or (for an object) the file staged in its place.
    path: PathBuf,
    /// The object the merged file is uploaded to, if the export goes to an object store.
    object: Option<Object>,
    format: ExportFormat,
    schema: OnceLock<SchemaRef>,
}

/// An object exported into.
struct Object {
    url: String,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

const NAME: &str = "file-merge";

impl FileMerge {
    /// Exports into `path` (absolute) as `format`; an existing file there is replaced.
    pub fn new(path: PathBuf, format: ExportFormat) -> Self {
        Self { path, object: None, format, schema: OnceLock::new() }
    }

    /// Exports into the object `url` (at `path` in `store`) as `format`, staging and merging in
    /// the local folder `staging`; an existing object there is replaced.
    pub fn to_object(
        url: &str,
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        staging: &Path,
        format: ExportFormat,
    ) -> Self {
        let name = path.filename().unwrap_or("export").to_string();
        let object = Object { url: url.to_string(), store, path };
        Self { path: staging.join(name), object: Some(object), format, schema: OnceLock::new() }
    }

    fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The hidden folder the run's parts are staged in.
    fn parts_dir(&self, run: &RunContext) -> PathBuf {
        self.path.with_file_name(format!(".{}.{}", self.file_name(), run.run_id()))
    }

    /// The hidden file the parts are merged into before the rename.
    fn merged_path(&self, run: &RunContext) -> PathBuf {
        self.path.with_file_name(format!(".{}.{}.tmp", self.file_name(), run.run_id()))
    }

    fn error(&self, path: &Path, source: impl std::fmt::Display) -> CoordinatorError {
        error(path, source)
    }
}

/// The file-merge coordinator's error about `path`.
fn error(path: &Path, source: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::new(NAME, format!("{}: {source}", path.display()))
}

/// Concatenates the parts (after a header, for CSV) or copies their row groups (Parquet) into
/// `into`, and syncs it.
fn merge(format: ExportFormat, schema: &SchemaRef, parts: &[PathBuf], into: &Path) -> Result<(), CoordinatorError> {
    let file = File::create(into).map_err(|e| error(into, e))?;
    let mut out = BufWriter::new(file);
    match format {
        ExportFormat::Parquet => merge_parquet(parts, schema, &mut out).map_err(|e| error(into, e))?,
        ExportFormat::Csv | ExportFormat::Jsonl => {
            if format == ExportFormat::Csv {
                let mut header = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                header.write(&RecordBatch::new_empty(schema.clone())).map_err(|e| error(into, e))?;
            }
            for part in parts {
                let mut input = File::open(part).map_err(|e| error(part, e))?;
                std::io::copy(&mut input, &mut out).map_err(|e| error(part, e))?;
            }
        }
    }
    let file = out.into_inner().map_err(|e| error(into, e.error()))?;
    file.sync_all().map_err(|e| error(into, e))
}

#[async_trait]
impl Coordinator for FileMerge {
    fn name(&self) -> &str {
        NAME
    }

    fn prepare_shards(
        &self,
        input: Arc<dyn ExecutionPlan>,
        shards: usize,
    ) -> Result<Arc<dyn ExecutionPlan>, CoordinatorError> {
        if self.path.is_dir() {
            return Err(CoordinatorError::new(NAME, "it is a folder; name a file to export into"));
        }
        let _ = self.schema.set(input.schema());
        let shards = if input.output_ordering().is_some() { 1 } else { shards };
        crate::planner::shard_plan(input, shards, vec![]).map_err(|e| CoordinatorError::new(NAME, e))
    }

    async fn on_start(&self, run: &RunContext) -> Result<(), CoordinatorError> {
        let parts = self.parts_dir(run);
        std::fs::create_dir_all(&parts).map_err(|e| self.error(&parts, e))
    }

    async fn write_shard(
        &self,
        run: &RunContext,
        shard: usize,
        mut input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        let path = self.parts_dir(run).join(format!("part-{shard:05}.{}", self.format.extension()));
        let location = path.display().to_string();
        let write_error = |source: BoxError| ShardError::Write { shard, path: location.clone(), source };
        let mut part: Option<PartWriter> = None;
        let mut rows = 0u64;
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| ShardError::Input { shard, source })?;
            if batch.num_rows() == 0 {
                continue;
            }
            if part.is_none() {
                run.stage_files(shard, std::slice::from_ref(&location))
                    .await
                    .map_err(|source| ShardError::Ledger { shard, source })?;
                part = Some(PartWriter::create(self.format, &path, &batch.schema()).map_err(write_error)?);
            }
            rows += batch.num_rows() as u64;
            part.as_mut().expect("opened above").write(&batch).map_err(write_error)?;
            crate::failpoint::check("shard-write", run.target())
                .map_err(|failpoint| ShardError::Injected { shard, failpoint })?;
        }
        let Some(part) = part else { return Ok(vec![]) };
        let bytes = part.finish().map_err(write_error)?;
        Ok(vec![StagedFile { location, rows, bytes }])
    }

    async fn on_finish(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        let parts: Vec<PathBuf> =
            shards.iter().flat_map(|s| &s.files).map(|file| PathBuf::from(&file.location)).collect();
        // Merging reads and writes whole files: off the async workers, so that the run's
        // heartbeat keeps renewing its lease however long it takes.
        let (format, schema) = (self.format, self.schema.get().expect("prepare_shards saw the schema").clone());
        let (merged, target, local) = (self.merged_path(run), self.path.clone(), self.object.is_none());
        let staged = merged.clone();
        tokio::task::spawn_blocking(move || {
            merge(format, &schema, &parts, &merged)?;
            match local {
                true => std::fs::rename(&merged, &target).map_err(|e| error(&target, e)),
                false => Ok(()),
            }
        })
        .await
        .map_err(|e| CoordinatorError::new(NAME, e))??;
        if let Some(object) = &self.object {
            upload(&staged, object).await.map_err(|e| CoordinatorError::new(NAME, format!("{}: {e}", object.url)))?;
            if let Err(e) = std::fs::remove_file(&staged) {
                tracing::warn!(run_id = %run.run_id(), "the export is in place, but {} was left: {e}", staged.display());
            }
        }
        // The export is in place: leftover parts are only litter now, not a reason to fail it.
        let parts_dir = self.parts_dir(run).display().to_string();
        let cleaned = match run.delete_staged(&parts_dir, remove_file).await {
            Ok(()) => std::fs::remove_dir(self.parts_dir(run)).map_err(|e| self.error(&self.parts_dir(run), e)),
            Err(e) => Err(CoordinatorError::new(NAME, e)),
        };
        if let Err(e) = cleaned {
            tracing::warn!(run_id = %run.run_id(), "the export is in place, but cleaning up its parts failed: {e}");
        }
        Ok(None)
    }

    async fn on_error(&self, run: &RunContext, _error: &str) -> Result<(), CoordinatorError> {
        let parts = self.parts_dir(run).display().to_string();
        run.delete_staged(&parts, remove_file).await.map_err(|e| CoordinatorError::new(NAME, e))?;
        remove_file(self.merged_path(run).display().to_string()).await.map_err(|e| CoordinatorError::new(NAME, e))?;
        let parts_dir = self.parts_dir(run);
        match std::fs::remove_dir_all(&parts_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.error(&parts_dir, e)),
            _ => Ok(()),
        }
    }
}

/// Uploads the file `from` into `to`, in parts as it is read; aborted on failure (the object
/// before it stays).
async fn upload(from: &Path, to: &Object) -> Result<(), BoxError> {
    const CHUNK: usize = 8 << 20;
    let mut file = File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut writer = ObjectWriter::with_capacity(to.store.clone(), to.path.clone(), CHUNK);
    let written: Result<(), BoxError> = async {
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let read = tokio::task::block_in_place(|| (&mut file).take(CHUNK as u64).read_to_end(&mut chunk))?;
            if read == 0 {
                break;
            }
            writer.put(chunk.into()).await?;
        }
        crate::failpoint::check("export-upload", &to.url)?;
        Ok(writer.shutdown().await?)
    }
    .await;
    if written.is_err()
        && let Err(e) = writer.abort().await
    {
        tracing::warn!(url = %to.url, "aborting the failed upload failed too: {e}");
    }
    written
}

/// Deletes a file; one that is not there is not an error.
async fn remove_file(location: String) -> Result<(), BoxError> {
    match std::fs::remove_file(&location) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{location}: {e}").into()),
        _ => Ok(()),
    }
}

/// One shard's part file.
enum PartWriter {
    Csv(datafusion::arrow::csv::Writer<BufWriter<File>>),
    Jsonl(datafusion::arrow::json::LineDelimitedWriter<BufWriter<File>>),
    Parquet(ArrowWriter<File>),
}

impl PartWriter {
    fn create(format: ExportFormat, path: &Path, schema: &SchemaRef) -> Result<Self, BoxError> {
        let file = File::create(path)?;
        Ok(match format {
            ExportFormat::Csv => PartWriter::Csv(
                datafusion::arrow::csv::WriterBuilder::new().with_header(false).build(BufWriter::new(file)),
            ),
            ExportFormat::Jsonl => {
                PartWriter::Jsonl(datafusion::arrow::json::LineDelimitedWriter::new(BufWriter::new(file)))
            }
            ExportFormat::Parquet => {
                let properties =
                    WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
                PartWriter::Parquet(ArrowWriter::try_new(file, schema.clone(), Some(properties))?)
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), BoxError> {
        match self {
            PartWriter::Csv(writer) => writer.write(batch)?,
            PartWriter::Jsonl(writer) => writer.write(batch)?,
            PartWriter::Parquet(writer) => writer.write(batch)?,
        }
        Ok(())
    }

    /// Finishes the part and returns its size.
    fn finish(self) -> Result<u64, BoxError> {
        let file = match self {
            PartWriter::Csv(writer) => writer.into_inner().into_inner().map_err(|e| e.into_error())?,
            PartWriter::Jsonl(mut writer) => {
                writer.finish()?;
                writer.into_inner().into_inner().map_err(|e| e.into_error())?
            }
            PartWriter::Parquet(writer) => writer.into_inner()?,
        };
        Ok(file.metadata()?.len())
    }
}

/// Writes one Parquet file holding every row group of `parts`, copied as they are (no decoding),
/// with the first part's schema and key-value metadata (the Arrow schema among them).
fn merge_parquet<W: Write + Send>(parts: &[PathBuf], schema: &SchemaRef, out: W) -> Result<(), BoxError> {
    let Some(first) = parts.first() else {
        // No rows: a valid file with the schema and no row groups.
        ArrowWriter::try_new(out, schema.clone(), None)?.close()?;
        return Ok(());
    };
    let open = |part: &PathBuf| -> Result<(File, SerializedFileReader<File>), BoxError> {
        let in_part = |e: &dyn std::fmt::Display| format!("{}: {e}", part.display());
        let file = File::open(part).map_err(|e| in_part(&e))?;
        let reader = file.try_clone().map_err(|e| in_part(&e))?;
        Ok((file, SerializedFileReader::new(reader).map_err(|e| in_part(&e))?))
    };
    let (_, first) = open(first)?;
    let file_metadata = first.metadata().file_metadata();
    let properties =
        WriterProperties::builder().set_key_value_metadata(file_metadata.key_value_metadata().cloned()).build();
    let root = file_metadata.schema_descr().root_schema_ptr();
    let mut writer = SerializedFileWriter::new(out, root, Arc::new(properties))?;
    for part in parts {
        let (file, reader) = open(part)?;
        for row_group in reader.metadata().row_groups() {
            let mut group = writer.next_row_group()?;
            for column in row_group.columns() {
                let close = ColumnCloseResult {
                    bytes_written: column.compressed_size() as u64,
                    rows_written: row_group.num_rows() as u64,
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                group.append_column(&file, close).map_err(|e| format!("{}: {e}", part.display()))?;
            }
            group.close()?;
        }
    }
    writer.close()?;
    Ok(())
}

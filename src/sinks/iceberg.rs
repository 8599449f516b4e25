//! The Iceberg shard sink: streams one shard's batches into Parquet data files under the table's
//! data location, with the per-file metrics (row counts, sizes, bounds, null counts) that the
//! commit needs.
//!
//! Files are named `<run id>-<shard>-<sequence>.parquet`, deterministic per (run, shard, n), so a
//! replayed commit is rejected by Iceberg's duplicate-file check. Each path is recorded in the
//! ledger before the file is opened; the shard rolls to a new file once the current one passes
//! the table's target file size (`write.target-file-size-bytes`).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{CurrentFileStatus, IcebergWriter, IcebergWriterBuilder};

use crate::catalog::TableName;
use crate::ledger::{Ledger, ShardTotals};
use crate::runtime::ShardError;

/// What one shard staged: its data files (not yet referenced by any snapshot) and totals.
#[derive(Debug, Default)]
pub struct StagedShard {
    /// The data files, with their metrics.
    pub files: Vec<DataFile>,
    /// Rows, files and bytes written.
    pub totals: ShardTotals,
}

/// Writes shards of one run into one Iceberg table.
#[derive(Debug, Clone)]
pub struct IcebergShardSink {
    run_id: String,
    table: TableName,
    file_io: FileIO,
    schema: SchemaRef,
    location: DefaultLocationGenerator,
    parquet: ParquetWriterBuilder,
    target_file_size: usize,
    ledger: Ledger,
}

/// A file-name generator that always answers the one name the shard chose (and recorded).
#[derive(Debug, Clone)]
struct ChosenName(String);

impl FileNameGenerator for ChosenName {
    fn generate_file_name(&self) -> String {
        self.0.clone()
    }
}

/// The table's Parquet codec (`write.parquet.compression-codec`, default zstd, as in Iceberg 1.4+).
fn writer_properties(table: &Table) -> Result<WriterProperties, iceberg::Error> {
    let properties = table.metadata().properties();
    let codec = properties.get("write.parquet.compression-codec").map(String::as_str).unwrap_or("zstd");
    let level = properties.get("write.parquet.compression-level");
    let spec = match (codec.to_lowercase().as_str(), level) {
        ("zstd", None) => "zstd(1)".to_string(),
        ("gzip", None) => "gzip(6)".to_string(),
        (codec @ ("zstd" | "gzip" | "brotli"), Some(level)) => format!("{codec}({level})"),
        (codec, _) => codec.to_string(),
    };
    let compression: Compression = spec.parse().map_err(|e| {
        iceberg::Error::new(
            iceberg::ErrorKind::DataInvalid,
            format!("table property write.parquet.compression-codec: {e}"),
        )
    })?;
    Ok(WriterProperties::builder().set_compression(compression).build())
}

impl IcebergShardSink {
    /// A sink for `run_id` writing into the current schema of `table`.
    pub fn new(table: &Table, name: &TableName, run_id: &str, ledger: Ledger) -> Result<Self, iceberg::Error> {
        let metadata = table.metadata();
        let iceberg_schema = metadata.current_schema().clone();
        Ok(Self {
            run_id: run_id.to_string(),
            table: name.clone(),
            file_io: table.file_io().clone(),
            schema: Arc::new(schema_to_arrow_schema(&iceberg_schema)?),
            location: DefaultLocationGenerator::new(metadata)?,
            parquet: ParquetWriterBuilder::new(writer_properties(table)?, iceberg_schema),
            target_file_size: metadata.table_properties()?.write_target_file_size_bytes,
            ledger,
        })
    }

    /// The Arrow schema batches are written with (the table's current schema).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Streams `input` into data files; the shard's task body.
    pub async fn write_shard(
        self,
        shard: usize,
        mut input: SendableRecordBatchStream,
    ) -> Result<StagedShard, ShardError> {
        self.ledger.shard_started(&self.run_id, shard).await.map_err(|source| ShardError::Ledger { shard, source })?;
        let result = self.write_files(shard, &mut input).await;
        let outcome = match &result {
            Ok(staged) => Ok(staged.totals),
            Err(e) => Err(e.to_string()),
        };
        let recorded =
            self.ledger.shard_finished(&self.run_id, shard, outcome.as_ref().map(|t| *t).map_err(String::as_str)).await;
        let staged = result?;
        recorded.map_err(|source| ShardError::Ledger { shard, source })?;
        Ok(staged)
    }

    async fn write_files(
        &self,
        shard: usize,
        input: &mut SendableRecordBatchStream,
    ) -> Result<StagedShard, ShardError> {
        let mut staged = StagedShard::default();
        let mut sequence = 0usize;
        let mut current = None;
        let mut current_path = String::new();
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| ShardError::Input { shard, source })?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(batch, &self.schema).map_err(|source| ShardError::Input { shard, source })?;
            if current.is_none() {
                let name = format!("{}-{shard:05}-{sequence:05}.parquet", self.run_id);
                sequence += 1;
                current_path = self.location.generate_location(None, &name);
                // DESIGN §4 step 2: the path is in the ledger before the file exists.
                self.ledger
                    .stage_file(&self.run_id, shard, &current_path)
                    .await
                    .map_err(|source| ShardError::Ledger { shard, source })?;
                let files = RollingFileWriterBuilder::new(
                    self.parquet.clone(),
                    usize::MAX, // rolling is decided here, so that each new path is recorded first
                    self.file_io.clone(),
                    self.location.clone(),
                    ChosenName(name),
                );
                current = Some(
                    DataFileWriterBuilder::new(files)
                        .build(None)
                        .await
                        .map_err(|e| self.write_error(shard, &current_path, e))?,
                );
            }
            let writer = current.as_mut().expect("a writer is open");
            writer.write(batch).await.map_err(|e| self.write_error(shard, &current_path, e))?;
            crate::failpoint::check("shard-write", &self.table.to_string())
                .map_err(|failpoint| ShardError::Injected { shard, failpoint })?;
            if writer.current_written_size() >= self.target_file_size {
                let mut full = current.take().expect("a writer is open");
                staged.files.extend(full.close().await.map_err(|e| self.write_error(shard, &current_path, e))?);
            }
        }
        if let Some(mut last) = current {
            staged.files.extend(last.close().await.map_err(|e| self.write_error(shard, &current_path, e))?);
        }
        staged.totals = ShardTotals {
            rows: staged.files.iter().map(|f| f.record_count()).sum(),
            files: staged.files.len() as u64,
            bytes: staged.files.iter().map(|f| f.file_size_in_bytes()).sum(),
        };
        debug_assert!(staged.files.iter().all(|f| f.file_format() == DataFileFormat::Parquet));
        Ok(staged)
    }

    fn write_error(&self, shard: usize, path: &str, error: iceberg::Error) -> ShardError {
        ShardError::Write { shard, path: path.to_string(), source: Box::new(error) }
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

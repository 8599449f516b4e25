//! The Iceberg writer: data files through iceberg-rust's writers (so every file carries the metrics Iceberg
//! needs: row counts, sizes, bounds, null counts), committed as one snapshot whose summary holds
//! `sluice.run-id` and `sluice.pipeline`. On SQL catalogs every snapshot is built by hand and
//! published by a compare-and-swap of the metadata pointer (`snapshot.rs`), so an attempt that
//! loses a race deletes what it wrote; REST catalogs get a fast append through iceberg-rust's
//! transaction.
//!
//! Before every commit attempt the table's history is searched for the run, and the hand-built
//! swap only succeeds on the metadata that search saw, so a run never lands twice. File names
//! are deterministic per (run, shard, n), so where iceberg-rust's transaction rebases an append
//! on its own (REST catalogs, v1 tables), Iceberg's duplicate-file check rejects a replay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, FormatVersion, Literal, PartitionKey, PartitionSpec, SchemaRef as IcebergSchemaRef, StructType,
    Transform as IcebergTransform,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{CurrentFileStatus, IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, TableIdent};

use super::catalog::MetadataPointer;
use super::snapshot::{self, SnapshotCommit};
use crate::runtime::format::{DICTIONARY_PAGE_BYTES, retry_conflicts, split_rows};
use crate::runtime::{
    BoxError, CommitError, Fence, FileWriter, HeldCommit, RunContext, StagedFile, TableFormat, TableWriter,
};
use crate::table::{PartitionField, RunIdentity, Transform, WriteMode};

/// Snapshot summary key holding the run id.
pub const RUN_ID_PROPERTY: &str = "sluice.run-id";
/// Snapshot summary key holding the pipeline name.
pub const PIPELINE_PROPERTY: &str = "sluice.pipeline";
/// Most commit attempts of an append that keeps losing to concurrent writers.
pub const COMMIT_ATTEMPTS_MAX: usize = 12;
/// Table properties starting with this fence a run off (the run id follows; the value is the
/// attempt fenced off, and every earlier one): see [`TableWriter::fence`].
pub const FENCE_PROPERTY_PREFIX: &str = "sluice.fenced-run.";

/// The snapshot of `table` whose summary carries `run_id`, if it is in the table's history.
pub fn snapshot_of_run(table: &Table, run_id: &str) -> Option<i64> {
    table
        .metadata()
        .snapshots()
        .find(|s| s.summary().additional_properties.get(RUN_ID_PROPERTY).map(String::as_str) == Some(run_id))
        .map(|s| s.snapshot_id())
}

/// Writes and commits one run into one Iceberg table.
pub struct IcebergTableWriter {
    catalog: Arc<dyn Catalog>,
    pointer: Option<MetadataPointer>,
    /// The table as loaded when the run started (what an overwrite replaces from).
    base: Table,
    ident: TableIdent,
    file_io: FileIO,
    schema: SchemaRef,
    location: DefaultLocationGenerator,
    parquet: ParquetWriterBuilder,
    target_file_size: usize,
    partitioning: Vec<PartitionField>,
    /// Splits batches by the table's partition spec (`None`: unpartitioned).
    splitter: Option<Arc<Splitter>>,
    /// `base` carries a schema change of this run: its commit is one attempt from `base`.
    evolving: bool,
    /// The catalog's warehouse, when it has one (where files can be listed).
    warehouse: Option<crate::storage::Root>,
}

impl std::fmt::Debug for IcebergTableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergTableWriter")
            .field("table", &self.ident)
            .field("partitioning", &self.partitioning)
            .field("target_file_size", &self.target_file_size)
            .finish()
    }
}

/// The table's Parquet codec (`write.parquet.compression-codec`, default zstd, as in Iceberg 1.4+)
/// and dictionary size (`write.parquet.dict-size-bytes`, default [`DICTIONARY_PAGE_BYTES`]).
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
    let dictionary = match properties.get("write.parquet.dict-size-bytes") {
        None => DICTIONARY_PAGE_BYTES,
        Some(bytes) => bytes.parse().map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("table property write.parquet.dict-size-bytes `{bytes}`: {e}"),
            )
        })?,
    };
    Ok(WriterProperties::builder().set_compression(compression).set_dictionary_page_size_limit(dictionary).build())
}

/// Splits batches by an Iceberg partition spec: the transforms run over whole columns, rows are
/// grouped on the transformed values ([`split_rows`]), and each partition's key is built
/// once, from its first row (iceberg-rust's own splitter converts every row to a literal and
/// filters the batch once per partition).
#[derive(Debug)]
struct Splitter {
    calculator: PartitionValueCalculator,
    partition_type: StructType,
    spec: PartitionSpec,
    schema: IcebergSchemaRef,
}

impl Splitter {
    fn new(schema: IcebergSchemaRef, spec: PartitionSpec) -> Result<Self, iceberg::Error> {
        let calculator = PartitionValueCalculator::try_new(&spec, &schema)?;
        let partition_type = spec.partition_type(&schema)?;
        Ok(Self { calculator, partition_type, spec, schema })
    }

    fn split(&self, batch: &RecordBatch) -> Result<Vec<(PartitionKey, RecordBatch)>, BoxError> {
        let values = self.calculator.calculate(batch)?;
        split_rows(batch, values.as_struct().columns())?
            .into_iter()
            .map(|(first, rows)| {
                let key = match arrow_struct_to_literal(&values.slice(first, 1), &self.partition_type)?.pop() {
                    Some(Some(Literal::Struct(key))) => key,
                    other => return Err(format!("partition value of row {first} is not a struct: {other:?}").into()),
                };
                Ok((PartitionKey::new(self.spec.clone(), self.schema.clone(), key), rows))
            })
            .collect()
    }
}

impl IcebergTableWriter {
    /// The same writer, knowing the catalog's warehouse (see [`IcebergTableWriter::delete_file`]).
    pub fn with_warehouse(mut self, warehouse: Option<crate::storage::Root>) -> Self {
        self.warehouse = warehouse;
        self
    }

    /// A writer into the current schema of `table`, committing through `pointer` (SQL catalogs)
    /// or `catalog` (REST: appends only, overwrites are refused).
    pub fn new(
        catalog: Arc<dyn Catalog>,
        pointer: Option<MetadataPointer>,
        table: &Table,
    ) -> Result<Self, iceberg::Error> {
        let metadata = table.metadata();
        let iceberg_schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().clone();
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(Arc::new(Splitter::new(iceberg_schema.clone(), spec.as_ref().clone())?))
        };
        let partitioning = spec
            .fields()
            .iter()
            .filter_map(|field| {
                let column = iceberg_schema.field_by_id(field.source_id)?.name.clone();
                let transform = match field.transform {
                    IcebergTransform::Identity => Transform::Identity,
                    IcebergTransform::Year => Transform::Year,
                    IcebergTransform::Month => Transform::Month,
                    IcebergTransform::Day => Transform::Day,
                    IcebergTransform::Hour => Transform::Hour,
                    IcebergTransform::Bucket(n) => Transform::Bucket(n),
                    IcebergTransform::Truncate(w) => Transform::Truncate(w),
                    IcebergTransform::Void | IcebergTransform::Unknown => return None,
                };
                Some(PartitionField { column, transform })
            })
            .collect();
        Ok(Self {
            catalog,
            pointer,
            base: table.clone(),
            ident: table.identifier().clone(),
            file_io: table.file_io().clone(),
            schema: Arc::new(schema_to_arrow_schema(&iceberg_schema)?),
            location: DefaultLocationGenerator::new(metadata)?,
            parquet: ParquetWriterBuilder::new(writer_properties(table)?, iceberg_schema),
            target_file_size: metadata.table_properties()?.write_target_file_size_bytes,
            partitioning,
            splitter,
            evolving: false,
            warehouse: None,
        })
    }

    /// This writer's table (`base`) carries a schema change, published with the run's commit:
    /// one attempt, from the metadata the change was made on (a commit that lands meanwhile is
    /// a conflict).
    pub fn evolving(self) -> Self {
        Self { evolving: true, ..self }
    }

    /// One fast-append snapshot with every staged file; returns its id.
    async fn append(&self, table: &Table, files: Vec<DataFile>, run: &RunIdentity) -> Result<i64, iceberg::Error> {
        let mut properties = HashMap::from([(RUN_ID_PROPERTY.to_string(), run.run_id.clone())]);
        if let Some(pipeline) = &run.pipeline {
            properties.insert(PIPELINE_PROPERTY.to_string(), pipeline.clone());
        }
        let transaction = Transaction::new(table);
        let append = transaction.fast_append().add_data_files(files).set_snapshot_properties(properties);
        let transaction = append.apply(transaction)?;
        let committed = transaction.commit(self.catalog.as_ref()).await?;
        snapshot_of_run(&committed, &run.run_id).ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("committed, but no snapshot carries run {}", run.run_id),
            )
        })
    }
}

/// A file-name generator that always answers the one name the shard chose (and recorded).
#[derive(Debug, Clone)]
struct ChosenName(String);

impl FileNameGenerator for ChosenName {
    fn generate_file_name(&self) -> String {
        self.0.clone()
    }
}

struct IcebergFile {
    writer: DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, ChosenName>,
}

#[async_trait]
impl FileWriter<DataFile> for IcebergFile {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), BoxError> {
        Ok(self.writer.write(batch).await?)
    }

    fn written_bytes(&self) -> usize {
        self.writer.current_written_size()
    }

    async fn finish(mut self: Box<Self>) -> Result<DataFile, BoxError> {
        let mut files = self.writer.close().await?;
        match (files.pop(), files.is_empty()) {
            (Some(file), true) => Ok(file),
            _ => Err("the Iceberg writer did not produce exactly one data file".into()),
        }
    }

    /// Nothing is in flight between writes: iceberg-rust writes each batch's bytes before
    /// `write` returns, so dropping the writer stops it (the partial file is the rollback's).
    async fn abort(self: Box<Self>) {}
}

/// The table property that fences `run_id` off: set by recovery, checked by every commit attempt.
fn fence_property(run_id: &str) -> String {
    format!("{FENCE_PROPERTY_PREFIX}{run_id}")
}

/// The latest attempt of `run` that recovery has fenced off in `table`, if any.
fn fenced_attempt(table: &Table, run: &RunIdentity) -> Option<i64> {
    table.metadata().properties().get(&fence_property(&run.run_id)).and_then(|attempt| attempt.parse().ok())
}

/// Refuses to commit an attempt of a run that recovery has fenced off (a later attempt, a
/// `RETRY RUN`, may commit).
fn check_not_fenced(table: &Table, run: &RunIdentity) -> Result<(), CommitError> {
    match fenced_attempt(table, run) {
        Some(fenced) if fenced >= run.attempt => Err(CommitError::Refused(
            format!(
                "attempt {} of run {} was fenced off by recovery (its lease had lapsed); it may not commit",
                run.attempt, run.run_id
            )
            .into(),
        )),
        _ => Ok(()),
    }
}

#[async_trait]
impl TableWriter for IcebergTableWriter {
    fn format(&self) -> &'static str {
        "iceberg"
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn location(&self) -> &str {
        self.base.metadata().location()
    }

    fn base(&self) -> Option<i64> {
        self.base.metadata().current_snapshot().map(|s| s.snapshot_id())
    }

    fn partitioning(&self) -> &[PartitionField] {
        &self.partitioning
    }

    async fn delete_files_named(&self, prefix: &str, keep: &HashSet<String>) -> Result<usize, BoxError> {
        let table = self.base.metadata().location();
        let store = match &self.warehouse {
            Some(crate::storage::Root::Remote { store, .. }) => Some(store.clone()),
            Some(crate::storage::Root::Local(_)) => None,
            // A table its catalog's server placed (REST): listed where it is, through the
            // environment's store; only its own folder is listed.
            None if crate::storage::is_remote(table) => {
                Some(crate::storage::object_store(table, &crate::storage::StoreSettings::default())?)
            }
            None => None,
        };
        Ok(crate::storage::delete_files_named(table, prefix, keep, store.as_deref()).await?)
    }

    async fn delete_one_file(&self, location: &str) -> Result<(), BoxError> {
        self.file_io.delete(location).await?;
        // Verified: a file that is back (a write that outlived its run) fails the rollback,
        // which recovery then tries again.
        match self.file_io.exists(location).await? {
            true => Err(format!("{location} is still there after its deletion").into()),
            false => Ok(()),
        }
    }

    async fn find_run(&self, run: &RunIdentity) -> Result<Option<i64>, CommitError> {
        let table = self.load().await.map_err(CommitError::OutcomeUnknown)?;
        Ok(snapshot_of_run(&table, &run.run_id))
    }

    /// A new metadata file with the fence property, swapped in like a commit: every commit
    /// attempt checks the property on the metadata it swaps from, so an attempt that loaded
    /// the table before the fence loses its swap, and every later one sees the fence. Tables
    /// committed through iceberg-rust's transaction (REST catalogs, v1 tables) retry inside it,
    /// past any check of ours: there, no fence.
    async fn fence(&self, run: &RunIdentity) -> Result<Fence, CommitError> {
        let Some(pointer) = &self.pointer else { return Ok(Fence::Unsupported) };
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let table = self.load().await.map_err(CommitError::OutcomeUnknown)?;
            if let Some(snapshot_id) = snapshot_of_run(&table, &run.run_id) {
                return Ok(Fence::Landed(snapshot_id));
            }
            if table.metadata().format_version() != FormatVersion::V2 {
                return Ok(Fence::Unsupported);
            }
            if check_not_fenced(&table, run).is_err() {
                return Ok(Fence::Fenced);
            }
            let property = HashMap::from([(fence_property(&run.run_id), run.attempt.to_string())]);
            if snapshot::set_properties(&table, &self.ident, pointer, property).await? {
                return Ok(Fence::Fenced);
            }
        }
        Err(CommitError::AttemptsExhausted {
            attempts: COMMIT_ATTEMPTS_MAX,
            last: format!("could not fence run {} off: `{}` kept changing", run.run_id, self.ident).into(),
        })
    }
}

#[async_trait]
impl TableFormat for IcebergTableWriter {
    type Partition = Option<PartitionKey>;
    type File = DataFile;

    fn target_file_size(&self) -> usize {
        self.target_file_size
    }

    fn split(&self, batch: RecordBatch) -> Result<Vec<(Self::Partition, RecordBatch)>, BoxError> {
        match &self.splitter {
            None => Ok(vec![(None, batch)]),
            Some(splitter) => Ok(splitter.split(&batch)?.into_iter().map(|(key, rows)| (Some(key), rows)).collect()),
        }
    }

    fn partition_path(&self, partition: &Self::Partition) -> String {
        partition.as_ref().map(PartitionKey::to_path).unwrap_or_default()
    }

    fn file_location(&self, partition: &Self::Partition, name: &str) -> String {
        self.location.generate_location(partition.as_ref(), name)
    }

    async fn open_file(
        &self,
        partition: &Self::Partition,
        location: &str,
    ) -> Result<Box<dyn FileWriter<DataFile>>, BoxError> {
        let name = location.rsplit('/').next().unwrap_or(location).to_string();
        let files = RollingFileWriterBuilder::new(
            self.parquet.clone(),
            usize::MAX, // the shard loop decides when to roll, so that each new file is recorded first
            self.file_io.clone(),
            self.location.clone(),
            ChosenName(name),
        );
        let writer = DataFileWriterBuilder::new(files).build(partition.clone()).await?;
        Ok(Box::new(IcebergFile { writer }))
    }

    fn describe(&self, file: &DataFile) -> StagedFile {
        StagedFile {
            location: file.file_path().to_string(),
            rows: file.record_count(),
            bytes: file.file_size_in_bytes(),
        }
    }

    /// Iceberg's own JSON form of a data file (its manifest entry's fields).
    fn encode_file(&self, file: &DataFile) -> Result<String, BoxError> {
        let metadata = self.base.metadata();
        let partition_type = metadata.default_partition_spec().partition_type(metadata.current_schema())?;
        Ok(iceberg::spec::serialize_data_file_to_json(file.clone(), &partition_type, metadata.format_version())?)
    }

    fn decode_file(&self, text: &str) -> Result<DataFile, BoxError> {
        let metadata = self.base.metadata();
        let spec = metadata.default_partition_spec();
        let partition_type = spec.partition_type(metadata.current_schema())?;
        let schema = metadata.current_schema();
        Ok(iceberg::spec::deserialize_data_file_from_json(text, spec.spec_id(), &partition_type, schema)?)
    }

    /// Retries (bounded, jittered exponential backoff) when a concurrent writer won the race.
    /// Before every attempt the table's history is checked for the run, so an attempt whose
    /// response was lost is never applied twice, and the table's properties for a fence.
    async fn commit(&self, files: Vec<DataFile>, run: &RunContext, mode: WriteMode) -> Result<i64, CommitError> {
        if mode != WriteMode::Append || self.evolving {
            return self.overwrite(files, run, mode).await;
        }
        let identity = run.identity();
        let attempt = || async {
            let table = self.load().await.map_err(CommitError::Refused)?;
            if let Some(snapshot_id) = snapshot_of_run(&table, &identity.run_id) {
                return Ok(snapshot_id);
            }
            check_not_fenced(&table, identity)?;
            match &self.pointer {
                // iceberg-rust's transaction for v1 tables (the hand-built snapshot is v2 only).
                Some(pointer) if table.metadata().format_version() == FormatVersion::V2 => {
                    let ident = &self.ident;
                    SnapshotCommit { base: &table, ident, pointer, run, mode }.commit(files.clone()).await
                }
                _ => self.append(&table, files.clone(), identity).await.map_err(|e| match e.kind() {
                    iceberg::ErrorKind::CatalogCommitConflicts => CommitError::Conflict(e.into()),
                    _ => CommitError::OutcomeUnknown(e.into()),
                }),
            }
        };
        retry_conflicts(COMMIT_ATTEMPTS_MAX, &identity.run_id, &self.ident.to_string(), attempt).await
    }

    /// The hand-built snapshot and next metadata file of an Iceberg v2 table in a SQL catalog,
    /// for the catalog to swap in with other tables' in one transaction. An append builds on
    /// the table as it is now, an overwrite on the table as the run found it; either way the
    /// swap expects that metadata still current, so a commit that lands meanwhile fails the
    /// group.
    async fn hold(&self, files: Vec<DataFile>, run: &RunContext, mode: WriteMode) -> Result<HeldCommit, CommitError> {
        let Some(pointer) = &self.pointer else {
            return Err(CommitError::Refused(
                format!("`{}` is in a REST catalog, which commits one table per request", self.ident).into(),
            ));
        };
        let table = match mode {
            WriteMode::Append if !self.evolving => self.load().await.map_err(CommitError::Refused)?,
            _ => self.base.clone(),
        };
        if let Some(snapshot_id) = snapshot_of_run(&table, &run.identity().run_id) {
            return Err(CommitError::Refused(
                format!("run {} already committed snapshot {snapshot_id} of `{}`", run.run_id(), self.ident).into(),
            ));
        }
        check_not_fenced(&table, run.identity())?;
        SnapshotCommit { base: &table, ident: &self.ident, pointer, run, mode }.hold(files).await
    }
}

impl IcebergTableWriter {
    /// The table as the catalog has it now.
    async fn load(&self) -> Result<Table, BoxError> {
        Ok(self.catalog.load_table(&self.ident).await?)
    }

    /// One attempt: the table must still be as the run found it, or the overwrite is a conflict.
    async fn overwrite(&self, files: Vec<DataFile>, run: &RunContext, mode: WriteMode) -> Result<i64, CommitError> {
        if let Some(snapshot_id) = self.find_run(run.identity()).await? {
            return Ok(snapshot_id);
        }
        let pointer = self.pointer.as_ref().ok_or_else(|| {
            CommitError::Refused(
                format!(
                    "{} into `{}` needs an Iceberg SQL catalog: iceberg-rust 0.10 cannot send an overwrite to a REST catalog",
                    mode.as_str(),
                    self.ident
                )
                .into(),
            )
        })?;
        SnapshotCommit { base: &self.base, ident: &self.ident, pointer, run, mode }.commit(files).await
    }
}

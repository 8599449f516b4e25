//! Iceberg snapshots built by hand, for the commits of SQL catalogs: iceberg-rust 0.10 has no
//! overwrite action, so the snapshot is assembled from the spec's building blocks, as DESIGN §4
//! describes. Appends go the same way: iceberg-rust's transaction retries a lost race inside
//! `commit` and leaves each losing attempt's manifests and metadata file behind, referenced by
//! nothing; here a lost attempt deletes what it wrote.
//!
//! ```text
//!  current snapshot's manifests ──► untouched manifests: carried over as they are
//!                                └► manifests with replaced files (overwrites): rewritten,
//!                                   those files DELETED, the rest EXISTING
//!  new files ──► one manifest of ADDED files
//!  manifest list + `append` / `overwrite` snapshot + next metadata file
//!  catalog pointer: compare-and-swap from the metadata the attempt started on (lost race: conflict)
//! ```
//!
//! Every file the commit writes is recorded with the run's staged files before it is written, so
//! recovery deletes what a process killed mid-commit left; everything written is deleted again
//! at once when the swap certainly did not happen, and kept when its outcome is unknown.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestList,
    ManifestListWriter, ManifestWriterBuilder, Operation, PartitionSpec, Snapshot, Struct, Summary, TableMetadata,
    TableMetadataBuilder,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;

use super::catalog::MetadataPointer;
use super::writer::{PIPELINE_PROPERTY, RUN_ID_PROPERTY};
use crate::runtime::{BoxError, CommitError, HeldCommit, RunContext};
use crate::table::{RunIdentity, WriteMode};

/// Which live files a commit replaces.
enum Replaced {
    /// None (an append).
    Nothing,
    /// Every live data file.
    All,
    /// The live data files of these partitions.
    Partitions(HashSet<Struct>),
}

impl Replaced {
    fn covers(&self, file: &DataFile) -> bool {
        match self {
            Replaced::Nothing => false,
            Replaced::All => true,
            Replaced::Partitions(partitions) => partitions.contains(file.partition()),
        }
    }
}

/// Counts for the snapshot summary.
#[derive(Default)]
struct Totals {
    files: u64,
    records: u64,
    bytes: u64,
}

impl Totals {
    fn add(&mut self, file: &DataFile) {
        self.files += 1;
        self.records += file.record_count();
        self.bytes += file.file_size_in_bytes();
    }
}

/// Files written so far, deleted again if the commit does not go through.
struct Written<'a> {
    file_io: &'a FileIO,
    /// The run the files are recorded for (`None`: the fence, which stages nothing).
    run: Option<&'a RunContext>,
    locations: Vec<String>,
}

impl Written<'_> {
    /// Records `location` (with the run's staged files) before it is written.
    async fn add(&mut self, location: String) -> Result<String, CommitError> {
        if let Some(run) = self.run {
            run.stage_files(run.shards(), std::slice::from_ref(&location)).await.map_err(refused)?;
        }
        self.locations.push(location.clone());
        Ok(location)
    }

    async fn discard(self) {
        for location in self.locations {
            if let Err(e) = self.file_io.delete(&location).await {
                tracing::warn!(%location, "could not delete an uncommitted metadata file: {e}");
            }
        }
    }
}

fn refused(e: impl Into<BoxError>) -> CommitError {
    CommitError::Refused(e.into())
}

/// One commit attempt on a table as it was loaded (`base`), for `run`.
#[derive(Clone, Copy)]
pub(super) struct SnapshotCommit<'a> {
    pub base: &'a Table,
    pub ident: &'a TableIdent,
    pub pointer: &'a MetadataPointer,
    pub run: &'a RunContext,
    pub mode: WriteMode,
}

impl SnapshotCommit<'_> {
    /// Adds `files` to the table (replacing files, for overwrites) in one snapshot; returns its id.
    /// Whatever was written is deleted again when the snapshot certainly did not become current.
    pub async fn commit(self, files: Vec<DataFile>) -> Result<i64, CommitError> {
        let mut written = Written { file_io: self.base.file_io(), run: Some(self.run), locations: Vec::new() };
        let result = async {
            let (snapshot_id, next) = self.build(files, &mut written).await?;
            let (base, ident, pointer) = (self.base, self.ident, self.pointer);
            if !swap(base, ident, pointer, next, &mut written, Some(self.run.target())).await? {
                return Err(CommitError::Conflict(
                    format!(
                        "`{ident}` changed while this {} ran (another commit landed first); nothing was written",
                        self.mode.as_str()
                    )
                    .into(),
                ));
            }
            Ok(snapshot_id)
        }
        .await;
        if result.as_ref().is_err_and(CommitError::nothing_landed) {
            written.discard().await;
        }
        result
    }

    /// Writes the snapshot and the table's next metadata file, without swapping the pointer:
    /// the catalog publishes it together with other tables' ([`HeldCommit`]). Whatever was
    /// written is deleted again when this fails.
    pub async fn hold(self, files: Vec<DataFile>) -> Result<HeldCommit, CommitError> {
        let mut written = Written { file_io: self.base.file_io(), run: Some(self.run), locations: Vec::new() };
        let result = async {
            let (snapshot_id, next) = self.build(files, &mut written).await?;
            let from = current_location(self.base)?;
            let to = write_next(self.base, next.clone(), &mut written).await?;
            let table = Table::builder()
                .metadata(next)
                .metadata_location(to.clone())
                .identifier(self.ident.clone())
                .file_io(self.base.file_io().clone())
                .runtime(iceberg::Runtime::try_current().map_err(refused)?)
                .readonly(true)
                .build()
                .map_err(refused)?;
            let provider = IcebergStaticTableProvider::try_new_from_table(table).await.map_err(refused)?;
            Ok(HeldCommit {
                namespace: self.ident.namespace().join("."),
                table: self.ident.name().to_string(),
                from: from.to_string(),
                to,
                snapshot_id,
                provider: Arc::new(provider),
            })
        }
        .await;
        if result.is_err() {
            written.discard().await;
        }
        result
    }

    /// Writes the snapshot's manifests and manifest list; returns its id and the table's next
    /// metadata, which makes it current.
    async fn build(self, files: Vec<DataFile>, written: &mut Written<'_>) -> Result<(i64, TableMetadata), CommitError> {
        let SnapshotCommit { base, ident, run, mode, .. } = self;
        let metadata = base.metadata();
        let file_io = base.file_io();
        if metadata.format_version() != FormatVersion::V2 {
            return Err(refused(format!(
                "{} needs an Iceberg v2 table, `{ident}` is {}",
                mode.as_str(),
                metadata.format_version()
            )));
        }
        let current_location = current_location(base)?;
        let spec = metadata.default_partition_spec();
        let replaced = match mode {
            WriteMode::Append => Replaced::Nothing,
            WriteMode::OverwritePartitions if !spec.is_unpartitioned() => {
                Replaced::Partitions(files.iter().map(|f| f.partition().clone()).collect())
            }
            _ => Replaced::All,
        };
        let schema = metadata.current_schema().clone();
        let snapshot_id = unique_snapshot_id(base);
        let sequence_number = metadata.next_sequence_number();
        let parent = metadata.current_snapshot();
        let error = refused;
        let attempt = uuid::Uuid::now_v7();
        // The `n`th manifest of the snapshot, its location recorded before it exists (for cleanup).
        let new_manifest = async |n: usize, spec: &PartitionSpec, written: &mut Written<'_>| {
            let location = written.add(format!("{}/metadata/{attempt}-m{n}.avro", metadata.location())).await?;
            let output = file_io.new_output(&location).map_err(error)?;
            let builder = ManifestWriterBuilder::new(output, Some(snapshot_id), schema.clone(), spec.clone());
            Ok::<_, CommitError>(builder.build_v2_data())
        };

        // The current snapshot's data manifests: carried over, or rewritten without the replaced files.
        let (mut deleted, mut manifests) = (Totals::default(), Vec::<ManifestFile>::new());
        if let Some(parent) = parent {
            let bytes = file_io.new_input(parent.manifest_list()).map_err(error)?.read().await.map_err(error)?;
            let list = ManifestList::parse_with_version(&bytes, metadata.format_version()).map_err(error)?;
            for manifest_file in list.entries() {
                if manifest_file.content != ManifestContentType::Data || matches!(replaced, Replaced::Nothing) {
                    manifests.push(manifest_file.clone());
                    continue;
                }
                let manifest = manifest_file.load_manifest(file_io).await.map_err(error)?;
                let live: Vec<_> = manifest.entries().iter().filter(|e| e.is_alive()).collect();
                if !live.iter().any(|e| replaced.covers(e.data_file())) {
                    manifests.push(manifest_file.clone());
                    continue;
                }
                let spec = metadata
                    .partition_spec_by_id(manifest_file.partition_spec_id)
                    .ok_or_else(|| refused(format!("unknown partition spec {}", manifest_file.partition_spec_id)))?;
                let mut writer = new_manifest(manifests.len(), spec.as_ref(), written).await?;
                for entry in live {
                    let sequence =
                        entry.sequence_number().ok_or_else(|| refused("a live entry has no sequence number"))?;
                    let data_file = entry.data_file().clone();
                    if replaced.covers(&data_file) {
                        deleted.add(&data_file);
                        writer.add_delete_file(data_file, sequence, entry.file_sequence_number).map_err(error)?;
                    } else {
                        let added_by = entry.snapshot_id().unwrap_or(parent.snapshot_id());
                        writer
                            .add_existing_file(data_file, added_by, sequence, entry.file_sequence_number)
                            .map_err(error)?;
                    }
                }
                manifests.push(writer.write_manifest_file().await.map_err(error)?);
            }
        }

        // The run's files, ADDED.
        let mut added = Totals::default();
        if !files.is_empty() {
            let mut writer = new_manifest(manifests.len(), spec.as_ref(), written).await?;
            for file in files {
                if file.content_type() != DataContentType::Data {
                    return Err(refused("only data files can be committed"));
                }
                added.add(&file);
                writer.add_file(file, sequence_number).map_err(error)?;
            }
            manifests.push(writer.write_manifest_file().await.map_err(error)?);
        }

        let list_location =
            written.add(format!("{}/metadata/snap-{snapshot_id}-0-{attempt}.avro", metadata.location())).await?;
        let list_output = file_io.new_output(&list_location).map_err(error)?;
        let mut list = ManifestListWriter::v2(
            list_output.writer().await.map_err(error)?,
            snapshot_id,
            parent.map(|p| p.snapshot_id()),
            sequence_number,
        );
        list.add_manifests(manifests.into_iter()).map_err(error)?;
        list.close().await.map_err(error)?;

        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
            .with_sequence_number(sequence_number)
            .with_timestamp_ms(run.clock().now_ms())
            .with_manifest_list(list_location)
            .with_summary(summary(parent.map(|p| p.summary()), &added, &deleted, run.identity(), mode))
            .with_schema_id(metadata.current_schema_id())
            .build();
        let next = TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(current_location.to_string()))
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .map_err(error)?
            .build()
            .map_err(error)?
            .metadata;
        Ok((snapshot_id, next))
    }
}

/// Writes `next` as the table's next metadata file and swaps the catalog's pointer to it from
/// `base`'s: true when swapped, false when another commit moved the pointer first. `failpoints`
/// names the run's target, for the test failpoint `commit-stall` just before the swap.
async fn swap(
    base: &Table,
    ident: &TableIdent,
    pointer: &MetadataPointer,
    next: TableMetadata,
    written: &mut Written<'_>,
    failpoints: Option<&str>,
) -> Result<bool, CommitError> {
    let current = current_location(base)?;
    let next_location = write_next(base, next, written).await?;
    if let Some(target) = failpoints {
        crate::failpoint::check("commit-stall", target).map_err(refused)?;
    }
    pointer
        .swap(ident, current, &next_location)
        .await
        .map_err(|e| CommitError::OutcomeUnknown(format!("catalog update failed: {e}").into()))
}

/// The metadata location the catalog points `base` at.
fn current_location(base: &Table) -> Result<&str, CommitError> {
    base.metadata_location().ok_or_else(|| refused("the table has no metadata location"))
}

/// Writes `next` as the metadata file after `base`'s (recorded first); returns its location.
async fn write_next(base: &Table, next: TableMetadata, written: &mut Written<'_>) -> Result<String, CommitError> {
    let next_location = MetadataLocation::from_str(current_location(base)?).map_err(refused)?.with_next_version();
    written.add(next_location.to_string()).await?;
    next.write_to(base.file_io(), &next_location).await.map_err(refused)?;
    Ok(next_location.to_string())
}

/// Sets table properties by a metadata swap, as a commit would (recovery's fence); false when
/// another commit moved the pointer first. Nothing is left behind when it does not swap.
pub(super) async fn set_properties(
    base: &Table,
    ident: &TableIdent,
    pointer: &MetadataPointer,
    properties: HashMap<String, String>,
) -> Result<bool, CommitError> {
    let current = current_location(base)?;
    let next = TableMetadataBuilder::new_from_metadata(base.metadata().clone(), Some(current.to_string()))
        .set_properties(properties)
        .map_err(refused)?
        .build()
        .map_err(refused)?
        .metadata;
    let mut written = Written { file_io: base.file_io(), run: None, locations: Vec::new() };
    let swapped = swap(base, ident, pointer, next, &mut written, None).await;
    if matches!(swapped, Ok(false)) || swapped.as_ref().is_err_and(CommitError::nothing_landed) {
        written.discard().await;
    }
    swapped
}

/// A positive snapshot id the table does not use yet.
fn unique_snapshot_id(table: &Table) -> i64 {
    loop {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((high ^ low) >> 1) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// The snapshot summary: what was added and deleted, the new totals, and the run.
fn summary(parent: Option<&Summary>, added: &Totals, deleted: &Totals, run: &RunIdentity, mode: WriteMode) -> Summary {
    let previous = |key: &str| -> u64 {
        parent.and_then(|s| s.additional_properties.get(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let total = |key: &str, plus: u64, minus: u64| (previous(key) + plus).saturating_sub(minus).to_string();
    let mut properties = HashMap::from([
        ("added-data-files".to_string(), added.files.to_string()),
        ("added-records".to_string(), added.records.to_string()),
        ("added-files-size".to_string(), added.bytes.to_string()),
        ("deleted-data-files".to_string(), deleted.files.to_string()),
        ("deleted-records".to_string(), deleted.records.to_string()),
        ("removed-files-size".to_string(), deleted.bytes.to_string()),
        ("total-data-files".to_string(), total("total-data-files", added.files, deleted.files)),
        ("total-records".to_string(), total("total-records", added.records, deleted.records)),
        ("total-files-size".to_string(), total("total-files-size", added.bytes, deleted.bytes)),
        ("total-delete-files".to_string(), previous("total-delete-files").to_string()),
        ("total-position-deletes".to_string(), previous("total-position-deletes").to_string()),
        ("total-equality-deletes".to_string(), previous("total-equality-deletes").to_string()),
        ("sluice.write-mode".to_string(), mode.as_str().to_string()),
        (RUN_ID_PROPERTY.to_string(), run.run_id.clone()),
    ]);
    if let Some(pipeline) = &run.pipeline {
        properties.insert(PIPELINE_PROPERTY.to_string(), pipeline.clone());
    }
    if matches!(mode, WriteMode::OverwritePartitions) {
        properties.insert("replace-partitions".to_string(), "true".to_string());
    }
    let operation = if mode == WriteMode::Append { Operation::Append } else { Operation::Overwrite };
    Summary { operation, additional_properties: properties }
}

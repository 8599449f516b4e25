//! An Iceberg table's metadata tables: `t$snapshots` (every snapshot), `t$files` (the current
//! snapshot's data files) and `t$partitions` (rows, files and bytes per partition).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result as DFResult};
use futures::TryStreamExt;
use iceberg::table::Table;

use crate::system::ResultBatch;

fn external(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn table_of(batch: RecordBatch) -> DFResult<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
}

/// The table's snapshots (id, parent, time, operation, summary).
pub(super) async fn snapshots_table(table: &Table) -> DFResult<Arc<dyn TableProvider>> {
    let inspect = table.inspect();
    let snapshots = inspect.snapshots();
    let batches: Vec<_> = snapshots.scan().await.map_err(external)?.try_collect().await.map_err(external)?;
    let schema: SchemaRef = match batches.first() {
        Some(batch) => batch.schema(),
        None => Arc::new(iceberg::arrow::schema_to_arrow_schema(&snapshots.schema()).map_err(external)?),
    };
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// One live data file of the current snapshot.
struct LiveFile {
    content: String,
    path: String,
    format: String,
    spec_id: i32,
    partition: String,
    rows: u64,
    bytes: u64,
}

/// Every live file of the current snapshot, read from its manifests.
async fn live_files(table: &Table) -> DFResult<Vec<LiveFile>> {
    let metadata = table.metadata();
    let Some(snapshot) = metadata.current_snapshot() else { return Ok(vec![]) };
    let schema = metadata.current_schema().clone();
    let manifests = table.manifest_list_reader(snapshot).load().await.map_err(external)?;
    let mut files = Vec::new();
    for manifest_file in manifests.entries() {
        let manifest = manifest_file.load_manifest(table.file_io()).await.map_err(external)?;
        let spec = metadata.partition_spec_by_id(manifest_file.partition_spec_id);
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let file = entry.data_file();
            let partition = match spec {
                Some(spec) if !spec.fields().is_empty() => spec.partition_to_path(file.partition(), schema.clone()),
                _ => String::new(),
            };
            files.push(LiveFile {
                content: format!("{:?}", file.content_type()).to_lowercase(),
                path: file.file_path().to_string(),
                format: file.file_format().to_string(),
                spec_id: manifest_file.partition_spec_id,
                partition,
                rows: file.record_count(),
                bytes: file.file_size_in_bytes(),
            });
        }
    }
    files.sort_by(|a, b| (&a.partition, &a.path).cmp(&(&b.partition, &b.path)));
    Ok(files)
}

/// `t$files`: the current snapshot's data files.
pub(super) async fn files_table(table: &Table) -> DFResult<Arc<dyn TableProvider>> {
    let files = live_files(table).await?;
    let text = |f: fn(&LiveFile) -> &str| StringArray::from_iter_values(files.iter().map(f));
    let batch = ResultBatch::default()
        .column("content", false, text(|f| &f.content))
        .column("file_path", false, text(|f| &f.path))
        .column("file_format", false, text(|f| &f.format))
        .column("spec_id", false, Int32Array::from_iter_values(files.iter().map(|f| f.spec_id)))
        .column("partition", false, text(|f| &f.partition))
        .column("record_count", false, UInt64Array::from_iter_values(files.iter().map(|f| f.rows)))
        .column("file_size_in_bytes", false, UInt64Array::from_iter_values(files.iter().map(|f| f.bytes)))
        .build();
    table_of(batch)
}

/// `t$partitions`: per partition of the current snapshot, its rows, files and bytes.
pub(super) async fn partitions_table(table: &Table) -> DFResult<Arc<dyn TableProvider>> {
    let mut partitions: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for file in live_files(table).await? {
        let totals = partitions.entry(file.partition).or_default();
        *totals = (totals.0 + file.rows, totals.1 + 1, totals.2 + file.bytes);
    }
    let batch = ResultBatch::default()
        .column("partition", false, StringArray::from_iter_values(partitions.keys()))
        .column("record_count", false, UInt64Array::from_iter_values(partitions.values().map(|t| t.0)))
        .column("file_count", false, UInt64Array::from_iter_values(partitions.values().map(|t| t.1)))
        .column("total_size_in_bytes", false, UInt64Array::from_iter_values(partitions.values().map(|t| t.2)))
        .build();
    table_of(batch)
}

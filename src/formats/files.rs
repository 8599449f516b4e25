//! A table's snapshot as its Parquet data files ([`SnapshotFiles`]): what a cluster's executors
//! read of an Iceberg or Delta table. Any process that reaches the table's storage can scan it,
//! with no catalog: the Sluice process lists the files (Iceberg's manifests, Delta's log) and the
//! list travels in the plan.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DFResult, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::logical_expr::Expr;
use datafusion::object_store::ObjectMeta;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use serde::{Deserialize, Serialize};

/// The data files of one snapshot / version of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFiles {
    /// The table (`catalog.schema.table`, with `@<id>` when as of a snapshot), for plans.
    pub table: String,
    /// The columns whose values are kept beside the files, not in them (Delta's partition
    /// columns), in the order of [`DataFile::partition`].
    pub partition_columns: Vec<String>,
    /// The files.
    pub files: Vec<DataFile>,
}

/// One Parquet data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Where it is: a URL (`file://`, `s3://`...) or an absolute path.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// The values of [`SnapshotFiles::partition_columns`] for its rows, as text (NULL: `None`).
    pub partition: Vec<Option<String>>,
}

/// [`SnapshotFiles`] as a table: a Parquet scan of exactly those files, columns by name (files
/// written before a column was added read it as NULL, narrower types are widened).
#[derive(Debug)]
pub struct SnapshotFilesTable {
    schema: SchemaRef,
    files: SnapshotFiles,
}

impl SnapshotFilesTable {
    /// The files, read with the table's `schema` (its columns in the table's order, partition
    /// columns included).
    pub fn new(schema: SchemaRef, files: SnapshotFiles) -> DFResult<Self> {
        for column in &files.partition_columns {
            schema.field_with_name(column)?;
        }
        if let Some(file) = files.files.iter().find(|f| f.partition.len() != files.partition_columns.len()) {
            return Err(DataFusionError::Plan(format!("{}: partition values do not match the columns", file.url)));
        }
        Ok(Self { schema, files })
    }

    /// The files, as they travel in a plan.
    pub fn files(&self) -> &SnapshotFiles {
        &self.files
    }

    /// The scan of `files`, each in one of `groups` groups, with the file columns first and the
    /// partition columns after them (as DataFusion's file scans place them).
    fn file_scan(&self, table_schema: TableSchema, groups: usize) -> DFResult<FileScanConfigBuilder> {
        let mut store = None;
        let mut grouped = vec![Vec::new(); groups.clamp(1, self.files.files.len())];
        for (i, file) in self.files.files.iter().enumerate() {
            let url = ListingTableUrl::parse(&file.url)?;
            match &store {
                None => store = Some(url.object_store()),
                Some(store) if *store != url.object_store() => {
                    return Err(DataFusionError::Plan(format!(
                        "`{}`: {} is not in the store of its other files ({store})",
                        self.files.table, file.url
                    )));
                }
                Some(_) => {}
            }
            let partition = self.files.partition_columns.iter().zip(&file.partition);
            let values = partition
                .map(|(column, value)| {
                    let data_type = self.schema.field_with_name(column)?.data_type();
                    match value {
                        Some(text) => ScalarValue::try_from_string(text.clone(), data_type),
                        None => ScalarValue::try_from(data_type),
                    }
                })
                .collect::<DFResult<Vec<_>>>()?;
            let meta = ObjectMeta {
                location: url.prefix().clone(),
                last_modified: Default::default(),
                size: file.size,
                e_tag: None,
                version: None,
            };
            let group = i % grouped.len();
            grouped[group].push(PartitionedFile::new_from_meta(meta).with_partition_values(values));
        }
        let store = store.ok_or_else(|| DataFusionError::Internal("a file scan of no files".into()))?;
        let source = Arc::new(ParquetSource::new(table_schema));
        Ok(FileScanConfigBuilder::new(store, source)
            .with_file_groups(grouped.into_iter().map(FileGroup::new).collect()))
    }
}

#[async_trait]
impl TableProvider for SnapshotFilesTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        if self.files.files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        // The file scan's columns: the file columns in table order, then the partition columns.
        let is_partition = |name: &str| self.files.partition_columns.iter().any(|c| c == name);
        let mut order: Vec<usize> =
            (0..self.schema.fields().len()).filter(|&i| !is_partition(self.schema.field(i).name())).collect();
        let file_columns = order.len();
        for column in &self.files.partition_columns {
            order.push(self.schema.index_of(column)?);
        }
        let fields =
            |indices: &[usize]| -> Vec<FieldRef> { indices.iter().map(|&i| self.schema.fields()[i].clone()).collect() };
        let file_schema = Arc::new(Schema::new(fields(&order[..file_columns])));
        let table_schema = TableSchema::new(file_schema, fields(&order[file_columns..]));
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let in_scan =
            wanted.iter().map(|i| order.iter().position(|o| o == i).expect("every column is scanned")).collect();
        let config = self
            .file_scan(table_schema, state.config().target_partitions())?
            .with_limit(limit)
            .with_projection_indices(Some(in_scan))?
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

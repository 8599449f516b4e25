//! A folder of Delta tables as a DataFusion catalog: schema `s` is the folder `<root>/s`, table
//! `s.t` the Delta table at `<root>/s/t` (a folder with a `_delta_log`).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{StringArray, TimestampMillisecondArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::TableType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{CommitInfo, StructType};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ensure_table_uri};

use super::writer::DeltaTableWriter;
use crate::catalog::{
    CatalogError, DeltaConfig, LakeCatalog, Listing, MetadataTable, Result, TableRequest, check_columns,
    check_partitioning, check_schema_name, names,
};
use crate::coordinator::CommitTarget;
use crate::paths;
use crate::system::ResultBatch;
use crate::table::{PartitionField, TableName, Transform};

/// Loads the Delta table in `dir`, at `version` or the latest, without its list of files.
///
/// Replaying every `add` action of the log costs time and memory in proportion to the table's
/// history, and neither a write nor a scan needs it here: a write reads only the schema and
/// version, and delta-rs's scan lists the files it reads when it runs.
async fn load(dir: &Path, version: Option<u64>) -> std::result::Result<DeltaTable, DeltaTableError> {
    let builder = DeltaTableBuilder::from_url(ensure_table_uri(dir.display().to_string())?)?.without_files();
    match version {
        Some(version) => builder.with_version(version).load().await,
        None => builder.load().await,
    }
}

/// A Delta catalog, usable from DataFusion SQL as `<name>.<schema>.<table>`.
#[derive(Debug)]
pub struct DeltaCatalog {
    name: String,
    root: PathBuf,
    location: String,
    listing: Listing,
}

fn is_delta_table(dir: &Path) -> bool {
    dir.join("_delta_log").is_dir()
}

fn subfolders(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir()
            && let Some(name) = entry.file_name().to_str()
        {
            folders.push((name.to_string(), entry.path()));
        }
    }
    folders.sort();
    Ok(folders)
}

/// Delta stores timestamps in microseconds; DataFusion's default `TIMESTAMP` is nanoseconds.
fn delta_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        other => other.clone(),
    }
}

/// The Delta schema of an Arrow schema (timestamps in microseconds).
pub(super) fn delta_schema(
    schema: &ArrowSchema,
) -> std::result::Result<StructType, datafusion::arrow::error::ArrowError> {
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| Field::new(f.name(), delta_type(f.data_type()), f.is_nullable())).collect();
    (&ArrowSchema::new(fields)).try_into_kernel()
}

/// Delta partitions by plain columns of simple types; their values are written in the log (and
/// the folder names), not in the data files.
fn partition_columns(name: &TableName, schema: &ArrowSchema, partitioning: &[PartitionField]) -> Result<Vec<String>> {
    partitioning
        .iter()
        .map(|field| {
            let bad = |reason: &str| CatalogError::BadPartition {
                table: Box::new(name.clone()),
                field: field.to_string(),
                reason: reason.to_string(),
            };
            if field.transform != Transform::Identity {
                return Err(bad("Delta tables partition by columns, not transforms (write the column)"));
            }
            let column = schema.field_with_name(&field.column).map_err(|_| bad("no such column"))?;
            let simple = column.data_type().is_integer()
                || matches!(
                    column.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Date32 | DataType::Boolean
                );
            if !simple {
                return Err(bad("Delta partition columns here must be integers, strings, dates or booleans"));
            }
            Ok(field.column.clone())
        })
        .collect()
}

impl DeltaCatalog {
    /// Opens (creating the root folder if needed) a Delta catalog.
    pub async fn open(name: &str, config: &DeltaConfig) -> Result<Arc<Self>> {
        let root = PathBuf::from(config.root.strip_prefix("file://").unwrap_or(&config.root));
        let open_error =
            |message: String| CatalogError::Open { catalog: name.to_string(), location: config.root.clone(), message };
        if config.root.contains("://") && !config.root.starts_with("file://") {
            return Err(open_error("only local folders (or file:// URLs) are supported as a Delta root".into()));
        }
        std::fs::create_dir_all(&root).map_err(|e| open_error(e.to_string()))?;
        let root = std::path::absolute(&root).map_err(|e| open_error(e.to_string()))?;
        let root = paths::normalize(&root).ok_or_else(|| open_error("the root climbs above `/`".into()))?;
        let catalog = Arc::new(Self {
            name: name.to_string(),
            location: root.display().to_string(),
            root,
            listing: Listing::default(),
        });
        catalog.refresh().await?;
        Ok(catalog)
    }

    fn error(&self, context: impl Into<String>) -> impl FnOnce(DeltaTableError) -> CatalogError + '_ {
        let context = context.into();
        move |source| CatalogError::Format { catalog: self.name.clone(), context, source: Box::new(source) }
    }

    fn io_error(&self, context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
        let context = context.into();
        move |source| CatalogError::Format { catalog: self.name.clone(), context, source: Box::new(source) }
    }

    /// The folder of schema `schema`, once its name is checked as a name of `kind`.
    fn schema_dir(&self, kind: names::NameKind, schema: &str) -> Result<PathBuf> {
        check_schema_name(kind, schema)?;
        self.confined("schema folder", self.root.join(schema))
    }

    /// The folder of table `name`, once its name is checked.
    fn table_dir(&self, name: &TableName) -> Result<PathBuf> {
        name.check()?;
        self.confined("table folder", self.root.join(&name.schema).join(&name.table))
    }

    /// `dir`, if it lies inside the root (a second line of defence behind the name checks).
    fn confined(&self, what: &str, dir: PathBuf) -> Result<PathBuf> {
        let root = self.root.display().to_string();
        if paths::is_inside(&root, &dir.display().to_string()) {
            return Ok(dir);
        }
        Err(CatalogError::Escapes {
            catalog: self.name.clone(),
            what: what.to_string(),
            location: dir.display().to_string(),
            root,
        })
    }

    /// A writer for one run into table `name` as it is now (what [`LakeCatalog::writer`] hands
    /// out, typed).
    pub async fn table_writer(&self, name: &TableName) -> Result<DeltaTableWriter> {
        let table = self.load_table(name).await?;
        DeltaTableWriter::new(table).map_err(self.error(format!("preparing a write into `{name}`")))
    }

    /// Loads the table at its latest version.
    pub async fn load_table(&self, name: &TableName) -> Result<DeltaTable> {
        let dir = self.table_dir(name)?;
        if !is_delta_table(&dir) {
            return Err(CatalogError::TableNotFound(name.clone()));
        }
        load(&dir, None).await.map_err(self.error(format!("loading table `{name}`")))
    }
}

#[async_trait]
impl LakeCatalog for DeltaCatalog {
    fn name(&self) -> &str {
        &self.name
    }

    fn can_publish_together(&self) -> std::result::Result<(), &'static str> {
        Err(
            "a folder of Delta tables commits each table's log on its own, so several tables cannot become visible together",
        )
    }

    fn kind(&self) -> &'static str {
        "delta"
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    async fn refresh(&self) -> Result<()> {
        let mut listing = BTreeMap::new();
        for (schema, dir) in subfolders(&self.root).map_err(self.io_error("listing schemas"))? {
            let tables = subfolders(&dir)
                .map_err(self.io_error("listing tables"))?
                .into_iter()
                .filter(|(_, dir)| is_delta_table(dir))
                .map(|(table, _)| table)
                .collect();
            listing.insert(schema, tables);
        }
        self.listing.replace(listing);
        Ok(())
    }

    async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()> {
        let dir = self.schema_dir(names::NameKind::Schema, schema)?;
        if dir.is_dir() {
            if if_not_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaExists { catalog: self.name.clone(), schema: schema.to_string() });
        }
        std::fs::create_dir(&dir).map_err(self.io_error(format!("creating schema `{schema}`")))?;
        self.refresh().await
    }

    async fn drop_schema(&self, schema: &str, if_exists: bool) -> Result<()> {
        let dir = self.schema_dir(names::NameKind::ExistingSchema, schema)?;
        if !dir.is_dir() {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: schema.to_string() });
        }
        let tables = subfolders(&dir).map_err(self.io_error("listing tables"))?;
        if tables.iter().any(|(_, dir)| is_delta_table(dir)) {
            return Err(CatalogError::SchemaNotEmpty { catalog: self.name.clone(), schema: schema.to_string() });
        }
        std::fs::remove_dir_all(&dir).map_err(self.io_error(format!("dropping schema `{schema}`")))?;
        self.refresh().await
    }

    async fn create_table(
        &self,
        name: &TableName,
        schema: &ArrowSchema,
        partitioning: &[PartitionField],
        if_not_exists: bool,
    ) -> Result<bool> {
        let dir = self.table_dir(name)?;
        if !self.root.join(&name.schema).is_dir() {
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: name.schema.clone() });
        }
        if is_delta_table(&dir) {
            if if_not_exists {
                return Ok(false);
            }
            return Err(CatalogError::TableExists(name.clone()));
        }
        check_columns(name, schema, "Delta", |t| {
            delta_schema(&ArrowSchema::new(vec![Field::new("c", t.clone(), true)])).is_ok()
        })?;
        check_partitioning(name, partitioning)?;
        let partition_columns = partition_columns(name, schema, partitioning)?;
        let columns = delta_schema(schema)
            .map_err(|e| self.error(format!("converting the schema of `{name}`"))(DeltaTableError::from(e)))?;
        let existed = dir.exists();
        let url = ensure_table_uri(dir.display().to_string()).map_err(self.error(format!("locating `{name}`")))?;
        let created = async {
            DeltaTable::try_from_url(url)
                .await?
                .create()
                .with_table_name(name.table.clone())
                .with_columns(columns.fields().cloned())
                .with_partition_columns(partition_columns)
                .with_save_mode(SaveMode::ErrorIfExists)
                .await
        }
        .await;
        if let Err(e) = created {
            // A failed CREATE leaves no table: remove the folder if this statement made it.
            if !existed && let Err(cleanup) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(table = %name, "could not remove the folder of the failed CREATE TABLE: {cleanup}");
            }
            return Err(self.error(format!("creating table `{name}`"))(e));
        }
        self.refresh().await?;
        Ok(true)
    }

    async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<()> {
        let dir = self.table_dir(name)?;
        if !is_delta_table(&dir) {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::TableNotFound(name.clone()));
        }
        std::fs::remove_dir_all(&dir).map_err(self.io_error(format!("dropping table `{name}`")))?;
        self.refresh().await
    }

    async fn writer(&self, name: &TableName) -> Result<Arc<dyn CommitTarget>> {
        Ok(Arc::new(self.table_writer(name).await?))
    }

    /// Columns added by a `metaData` action in the run's own commit. Widening a type needs
    /// Delta's `typeWidening` table feature, which this version does not write.
    async fn writer_evolving(
        &self,
        name: &TableName,
        columns: &[Field],
        widened: &[Field],
    ) -> Result<Arc<dyn CommitTarget>> {
        if let Some(field) = widened.first() {
            return Err(CatalogError::Unsupported(format!(
                "widening column `{}` of Delta table `{name}` needs Delta's typeWidening table feature, which delta-rs 0.32 neither reads nor writes (the table would be closed to it)",
                field.name()
            )));
        }
        let writer = self.table_writer(name).await?;
        let evolving = writer.evolving(columns).map_err(self.error(format!("adding columns to `{name}`")))?;
        Ok(Arc::new(evolving))
    }
}

impl CatalogProvider for DeltaCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        self.listing.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let tables = self.listing.tables(name)?;
        Some(Arc::new(DeltaSchema {
            catalog: self.name.clone(),
            schema: name.to_string(),
            dir: self.root.join(name),
            tables,
        }))
    }
}

/// One folder of Delta tables seen as a DataFusion schema.
#[derive(Debug)]
struct DeltaSchema {
    catalog: String,
    schema: String,
    dir: PathBuf,
    tables: BTreeSet<String>,
}

fn external(e: DeltaTableError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for DeltaSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.iter().cloned().collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let request = TableRequest::parse(name);
        let base = request.base();
        let table_name = TableName::new(&self.catalog, &self.schema, base);
        table_name.check().map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let dir = self.dir.join(base);
        if !is_delta_table(&dir) {
            return Ok(None);
        }
        let table = match request {
            TableRequest::Current(_) => load(&dir, None).await.map_err(external)?,
            TableRequest::AsOf(_, version) => {
                // A version past the latest is an error at once (delta-rs would look for it
                // version by version).
                let latest = load(&dir, None).await.map_err(external)?.version().unwrap_or_default();
                let no_version = |why: String| {
                    DataFusionError::Plan(format!("table `{table_name}` has no version {version}: {why}"))
                };
                let version = u64::try_from(version).map_err(|_| no_version("versions start at 0".into()))?;
                if version > latest {
                    return Err(no_version(format!("the latest is {latest}")));
                }
                load(&dir, Some(version)).await.map_err(|e| no_version(e.to_string()))?
            }
            TableRequest::Metadata(_, MetadataTable::History) => {
                let table = load(&dir, None).await.map_err(external)?;
                return Ok(Some(history_table(&table).await?));
            }
            TableRequest::Metadata(_, other) => {
                return Err(DataFusionError::Plan(other.unsupported(&table_name, "Delta", "$history")));
            }
        };
        Ok(Some(table.table_provider().await?))
    }

    /// From the listing, without loading the table: `SHOW TABLES` and `information_schema` ask
    /// this of every table, and one table with unreadable metadata must not fail them all.
    async fn table_type(&self, name: &str) -> DFResult<Option<TableType>> {
        Ok(self.tables.contains(name).then_some(TableType::Base))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains(name)
    }
}

/// `t$history`: every commit of the table, newest first, as delta-rs reads the log (versions
/// counted down from the latest, as delta-rs's own Python `history()` numbers them).
async fn history_table(table: &DeltaTable) -> DFResult<Arc<dyn TableProvider>> {
    let latest = table.version().unwrap_or_default();
    let commits: Vec<_> = table.history(None).await.map_err(external)?.collect();
    let versions = (0..commits.len() as u64).map(|i| latest.saturating_sub(i));
    let text = |f: fn(&CommitInfo) -> Option<String>| StringArray::from_iter(commits.iter().map(f));
    let batch = ResultBatch::default()
        .column("version", false, UInt64Array::from_iter_values(versions))
        .column("timestamp", true, TimestampMillisecondArray::from_iter(commits.iter().map(|c| c.timestamp)))
        .column("operation", true, text(|c| c.operation.clone()))
        .column("operation_parameters", true, text(|c| c.operation_parameters.as_ref().map(json)))
        .column("read_version", true, UInt64Array::from_iter(commits.iter().map(|c| c.read_version)))
        .column("engine_info", true, text(|c| c.engine_info.clone()))
        .column("info", true, text(|c| (!c.info.is_empty()).then(|| json(&c.info))))
        .build();
    Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

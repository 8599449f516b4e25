//! A folder of Delta tables as a DataFusion catalog: schema `s` is the folder `<root>/s`, table
//! `s.t` the Delta table at `<root>/s/t` (a folder with a `_delta_log`). The root may be a prefix
//! in an object store (`s3://bucket/prefix`, ...): a schema is then the prefix `<root>/s/` (kept
//! by a marker object while it has no table), and commits are conditional puts (`If-None-Match`),
//! so two writers never both take a version.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Once};

use async_trait::async_trait;
use datafusion::arrow::array::{StringArray, TimestampMillisecondArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::TableType;
use datafusion::object_store::ObjectStoreExt;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{CommitInfo, StructType};
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories,
};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError, ensure_table_uri};
use futures::StreamExt;
use url::Url;

use super::writer::DeltaTableWriter;
use crate::catalog::{
    CatalogError, DeltaConfig, LakeCatalog, Listing, MetadataTable, Result, TableRequest, check_columns,
    check_partitioning, check_schema_name, names,
};
use crate::coordinator::CommitTarget;
use crate::formats::files::{DataFile, SnapshotFiles};
use crate::paths;
use crate::storage::{self, Root};
use crate::system::ResultBatch;
use crate::table::{PartitionField, TableName, Transform};

/// The marker object that keeps a schema's prefix in an object store while it has no table.
const SCHEMA_MARKER: &str = ".sluice-schema";

/// delta-rs's own log store for the object store schemes (its commits are conditional puts):
/// delta-rs registers it only for local files unless built with a cloud feature, and here the
/// stores are Sluice's (`storage::object_store`), handed over with each table.
struct ObjectLogStores;

impl LogStoreFactory for ObjectLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

fn register_object_log_stores() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        for scheme in ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://", "azure://"] {
            logstore_factories().insert(Url::parse(scheme).expect("a scheme"), Arc::new(ObjectLogStores));
        }
    });
}

/// A builder of the Delta table at `location` under `root` (with the root's store, if remote).
fn table_builder(root: &Root, location: &str) -> DeltaResult<DeltaTableBuilder> {
    match root {
        Root::Local(_) => {
            let path = paths::local_path(location).unwrap_or_default();
            DeltaTableBuilder::from_url(ensure_table_uri(path.display().to_string())?)
        }
        Root::Remote { store, .. } => {
            let url = Url::parse(location).map_err(|_| DeltaTableError::InvalidTableLocation(location.to_string()))?;
            Ok(DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(store.clone(), url))
        }
    }
}

/// Loads the Delta table at `location`, at `version` or the latest, without its list of files.
///
/// Replaying every `add` action of the log costs time and memory in proportion to the table's
/// history, and neither a write nor a scan needs it here: a write reads only the schema and
/// version, and delta-rs's scan lists the files it reads when it runs.
async fn load(root: &Root, location: &str, version: Option<u64>) -> std::result::Result<DeltaTable, DeltaTableError> {
    let builder = table_builder(root, location)?.without_files();
    match version {
        Some(version) => builder.with_version(version).load().await,
        None => builder.load().await,
    }
}

/// A Delta catalog, usable from DataFusion SQL as `<name>.<schema>.<table>`.
#[derive(Debug)]
pub struct DeltaCatalog {
    name: String,
    root: Root,
    location: String,
    listing: Listing,
    /// Set once the root's object store has shown it enforces conditional puts (a failed or
    /// refused probe is asked again at the next write: a long-lived process, an executor or
    /// `sluice serve`, is not locked out by a passing network error).
    safe_commits: tokio::sync::OnceCell<()>,
    /// Why the root's bucket could not be listed at the last refresh, if it could not.
    unreachable: std::sync::RwLock<Option<String>>,
}

/// Whether `location` (under `root`) holds a Delta table: a `_delta_log`.
async fn is_delta_table(root: &Root, location: &str) -> bool {
    match root {
        Root::Local(_) => paths::local_path(location).is_some_and(|dir| dir.join("_delta_log").is_dir()),
        Root::Remote { store, .. } => match storage::object_path(location) {
            Some(path) => {
                store.list(Some(&path.clone().join("_delta_log"))).next().await.is_some_and(|first| first.is_ok())
            }
            None => false,
        },
    }
}

/// The names of the folders (prefixes) in `location` under `root`, sorted.
async fn subfolders(root: &Root, location: &str) -> std::result::Result<Vec<String>, String> {
    let mut folders = match root {
        Root::Local(_) => {
            let dir = paths::local_path(location).ok_or_else(|| format!("{location} is not local"))?;
            let mut folders = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                let entry = entry.map_err(|e| e.to_string())?;
                if entry.file_type().map_err(|e| e.to_string())?.is_dir()
                    && let Some(name) = entry.file_name().to_str()
                {
                    folders.push(name.to_string());
                }
            }
            folders
        }
        Root::Remote { store, .. } => {
            let path = storage::object_path(location).ok_or_else(|| format!("{location}: not an object path"))?;
            let listed = store.list_with_delimiter(Some(&path)).await.map_err(|e| format!("{location}: {e}"))?;
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect()
        }
    };
    folders.sort();
    Ok(folders)
}

/// Whether the folder (prefix) `location` under `root` exists: has anything in it, remotely.
async fn folder_exists(root: &Root, location: &str) -> bool {
    match root {
        Root::Local(_) => paths::local_path(location).is_some_and(|dir| dir.is_dir()),
        Root::Remote { store, .. } => match storage::object_path(location) {
            Some(path) => store.list(Some(&path)).next().await.is_some_and(|first| first.is_ok()),
            None => false,
        },
    }
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
    /// Opens a Delta catalog: a local folder (created if needed) or a prefix in an object store
    /// (reached with the environment's credentials and the file's `[storage]` settings).
    pub async fn open(name: &str, config: &DeltaConfig) -> Result<Arc<Self>> {
        let open_error =
            |message: String| CatalogError::Open { catalog: name.to_string(), location: config.root.clone(), message };
        let root = match storage::is_remote(&config.root) {
            true => {
                register_object_log_stores();
                Root::remote(&config.root, &config.storage).map_err(|e| open_error(e.to_string()))?
            }
            false => {
                let root = config.root.strip_prefix("file://").unwrap_or(&config.root);
                std::fs::create_dir_all(root).map_err(|e| open_error(e.to_string()))?;
                let root = std::path::absolute(root).map_err(|e| open_error(e.to_string()))?;
                Root::Local(paths::normalize(&root).ok_or_else(|| open_error("the root climbs above `/`".into()))?)
            }
        };
        let catalog = Arc::new(Self {
            name: name.to_string(),
            location: root.display(),
            root,
            listing: Listing::default(),
            safe_commits: Default::default(),
            unreachable: Default::default(),
        });
        match catalog.refresh().await {
            // An unreachable bucket costs this catalog, not the session: statements on its
            // tables fail saying why (see `DeltaSchema::table`), until a refresh lists it.
            Err(e) if catalog.root.local().is_none() => tracing::warn!("{e}"),
            other => other?,
        }
        Ok(catalog)
    }

    /// The schemas (folders or prefixes under the root) and the Delta tables in each.
    async fn list(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let mut listing = BTreeMap::new();
        let root = self.root.location(&[]);
        for schema in subfolders(&self.root, &root).await.map_err(self.io_error("listing schemas"))? {
            let dir = self.root.location(&[&schema]);
            let mut tables = BTreeSet::new();
            for table in subfolders(&self.root, &dir).await.map_err(self.io_error("listing tables"))? {
                if is_delta_table(&self.root, &self.root.location(&[&schema, &table])).await {
                    tables.insert(table);
                }
            }
            listing.insert(schema, tables);
        }
        Ok(listing)
    }

    /// Refuses to commit into an object store that does not enforce conditional puts (asked
    /// with a probe object under the root until it once answers well); a local root is safe.
    async fn check_safe_commits(&self) -> Result<()> {
        let Root::Remote { url, store } = &self.root else { return Ok(()) };
        let checked = self
            .safe_commits
            .get_or_try_init(|| async {
                let root = storage::object_path(url).unwrap_or_default();
                let probe = root.join(format!(".sluice-probe-{}", uuid::Uuid::now_v7()).as_str());
                storage::check_conditional_put(store.as_ref(), &probe).await
            })
            .await;
        checked.map(|_| ()).map_err(|message| CatalogError::Open {
            catalog: self.name.clone(),
            location: self.location.clone(),
            message,
        })
    }

    fn error(&self, context: impl Into<String>) -> impl FnOnce(DeltaTableError) -> CatalogError + '_ {
        let context = context.into();
        move |source| CatalogError::Format { catalog: self.name.clone(), context, source: Box::new(source) }
    }

    fn io_error(&self, context: impl Into<String>) -> impl FnOnce(String) -> CatalogError + '_ {
        let context = context.into();
        move |message| CatalogError::Format {
            catalog: self.name.clone(),
            context,
            source: Box::new(std::io::Error::other(message)),
        }
    }

    /// The folder of schema `schema`, once its name is checked as a name of `kind`.
    fn schema_dir(&self, kind: names::NameKind, schema: &str) -> Result<String> {
        check_schema_name(kind, schema)?;
        self.confined("schema folder", self.root.location(&[schema]))
    }

    /// The folder of table `name`, once its name is checked.
    fn table_dir(&self, name: &TableName) -> Result<String> {
        name.check()?;
        self.confined("table folder", self.root.location(&[&name.schema, &name.table]))
    }

    /// `dir`, if it lies inside the root (a second line of defence behind the name checks).
    fn confined(&self, what: &str, dir: String) -> Result<String> {
        if self.root.contains(&dir) {
            return Ok(dir);
        }
        Err(CatalogError::Escapes {
            catalog: self.name.clone(),
            what: what.to_string(),
            location: dir,
            root: self.root.display(),
        })
    }

    /// A writer for one run into table `name` as it is now (what [`LakeCatalog::writer`] hands
    /// out, typed).
    pub async fn table_writer(&self, name: &TableName) -> Result<DeltaTableWriter> {
        self.check_safe_commits().await?;
        let table = self.load_table(name).await?;
        DeltaTableWriter::new(table).map_err(self.error(format!("preparing a write into `{name}`")))
    }

    /// Loads the table at its latest version.
    pub async fn load_table(&self, name: &TableName) -> Result<DeltaTable> {
        let dir = self.table_dir(name)?;
        if !is_delta_table(&self.root, &dir).await {
            return Err(CatalogError::TableNotFound(name.clone()));
        }
        load(&self.root, &dir, None).await.map_err(self.error(format!("loading table `{name}`")))
    }
}

#[async_trait]
impl LakeCatalog for DeltaCatalog {
    fn name(&self) -> &str {
        &self.name
    }

    /// The `add`s of the version with their partition values; a table whose files carry
    /// deletion vectors or whose columns are mapped to other names in the files is refused.
    async fn snapshot_files(&self, schema: &str, table: &str) -> Result<Option<SnapshotFiles>> {
        use futures::TryStreamExt;
        let request = TableRequest::parse(table);
        let Some(version) = request.data_as_of() else { return Ok(None) };
        let name = TableName::new(&self.name, schema, request.base());
        let dir = self.table_dir(&name)?;
        if !is_delta_table(&self.root, &dir).await {
            return Err(CatalogError::TableNotFound(name));
        }
        let version = version
            .map(|v| u64::try_from(v).map_err(|_| CatalogError::Unsupported(format!("`{name}` has no version {v}"))))
            .transpose()?;
        let context = format!("listing the data files of `{name}`");
        let loaded = load(&self.root, &dir, version).await.map_err(self.error(context.clone()))?;
        let snapshot = loaded.snapshot().map_err(self.error(context.clone()))?;
        let mapped = snapshot.metadata().configuration().get("delta.columnMapping.mode");
        if mapped.is_some_and(|mode| mode != "none") {
            return Err(CatalogError::Unsupported(format!(
                "`{name}` maps its columns to other names in its files, which a cluster's executors cannot read yet"
            )));
        }
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let log_store = loaded.log_store();
        let views: Vec<_> = snapshot
            .snapshot()
            .file_views(log_store.as_ref(), None)
            .try_collect()
            .await
            .map_err(self.error(context))?;
        let mut files = Vec::with_capacity(views.len());
        for view in views {
            let action = view.remove_action(false);
            if action.deletion_vector.is_some() {
                return Err(CatalogError::Unsupported(format!(
                    "`{name}`: {} has a deletion vector, which a cluster's executors cannot apply yet",
                    action.path
                )));
            }
            let path = datafusion::object_store::path::Path::parse(&action.path)
                .unwrap_or_else(|_| datafusion::object_store::path::Path::from(action.path.as_str()));
            let values = action.partition_values.unwrap_or_default();
            files.push(DataFile {
                url: log_store.to_uri(&path),
                size: action.size.unwrap_or_default().max(0) as u64,
                partition: partition_columns.iter().map(|c| values.get(c).cloned().flatten()).collect(),
            });
        }
        Ok(Some(SnapshotFiles { table: format!("{}.{schema}.{table}", self.name), partition_columns, files }))
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

    fn root(&self) -> Option<&Root> {
        Some(&self.root)
    }

    async fn refresh(&self) -> Result<()> {
        let listed = self.list().await;
        *self.unreachable.write().expect("catalog listing lock") = listed.as_ref().err().map(ToString::to_string);
        self.listing.replace(listed?);
        Ok(())
    }

    async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()> {
        let dir = self.schema_dir(names::NameKind::Schema, schema)?;
        if folder_exists(&self.root, &dir).await {
            if if_not_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaExists { catalog: self.name.clone(), schema: schema.to_string() });
        }
        let created = match &self.root {
            Root::Local(_) => {
                std::fs::create_dir(paths::local_path(&dir).unwrap_or_default()).map_err(|e| e.to_string())
            }
            Root::Remote { store, .. } => {
                let marker = storage::object_path(&dir).map(|path| path.join(SCHEMA_MARKER)).unwrap_or_default();
                store.put(&marker, Vec::new().into()).await.map(drop).map_err(|e| format!("{dir}: {e}"))
            }
        };
        created.map_err(self.io_error(format!("creating schema `{schema}`")))?;
        self.refresh().await
    }

    async fn drop_schema(&self, schema: &str, if_exists: bool) -> Result<()> {
        let dir = self.schema_dir(names::NameKind::ExistingSchema, schema)?;
        if !folder_exists(&self.root, &dir).await {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: schema.to_string() });
        }
        for table in subfolders(&self.root, &dir).await.map_err(self.io_error("listing tables"))? {
            if is_delta_table(&self.root, &self.root.location(&[schema, &table])).await {
                return Err(CatalogError::SchemaNotEmpty { catalog: self.name.clone(), schema: schema.to_string() });
            }
        }
        self.root.delete_folder(&dir).await.map_err(self.io_error(format!("dropping schema `{schema}`")))?;
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
        self.check_safe_commits().await?;
        if !folder_exists(&self.root, &self.root.location(&[&name.schema])).await {
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: name.schema.clone() });
        }
        if is_delta_table(&self.root, &dir).await {
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
        let existed = folder_exists(&self.root, &dir).await;
        let created = async {
            table_builder(&self.root, &dir)?
                .build()?
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
            if !existed && let Err(cleanup) = self.root.delete_folder(&dir).await {
                tracing::warn!(table = %name, "could not remove the folder of the failed CREATE TABLE: {cleanup}");
            }
            return Err(self.error(format!("creating table `{name}`"))(e));
        }
        self.refresh().await?;
        Ok(true)
    }

    async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<()> {
        let dir = self.table_dir(name)?;
        if !is_delta_table(&self.root, &dir).await {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::TableNotFound(name.clone()));
        }
        self.root.delete_folder(&dir).await.map_err(self.io_error(format!("dropping table `{name}`")))?;
        self.refresh().await
    }

    async fn writer(&self, name: &TableName) -> Result<Arc<dyn CommitTarget>> {
        Ok(Arc::new(self.table_writer(name).await?))
    }

    /// Columns added by a `metaData` action in the run's own commit. Widening a type needs
    /// Delta's `typeWidening` table feature, which delta-rs 0.32 neither reads nor writes.
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
        let unreachable = self.unreachable.read().expect("catalog listing lock").clone();
        let tables = match (self.listing.tables(name), &unreachable) {
            (Some(tables), _) => tables,
            (None, Some(_)) => BTreeSet::new(),
            (None, None) => return None,
        };
        Some(Arc::new(DeltaSchema {
            catalog: self.name.clone(),
            schema: name.to_string(),
            root: self.root.clone(),
            tables,
            unreachable,
        }))
    }
}

/// One folder of Delta tables seen as a DataFusion schema.
#[derive(Debug)]
struct DeltaSchema {
    catalog: String,
    schema: String,
    root: Root,
    tables: BTreeSet<String>,
    /// Why the catalog's bucket could not be listed, if it could not: a table not found is
    /// then that error.
    unreachable: Option<String>,
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
        let dir = self.root.location(&[&self.schema, base]);
        if !is_delta_table(&self.root, &dir).await {
            return match &self.unreachable {
                Some(why) => Err(DataFusionError::Plan(format!("`{table_name}`: {why}"))),
                None => Ok(None),
            };
        }
        let table = match request {
            TableRequest::Current(_) => load(&self.root, &dir, None).await.map_err(external)?,
            TableRequest::AsOf(_, version) => {
                // A version past the latest is an error at once (delta-rs would look for it
                // version by version).
                let latest = load(&self.root, &dir, None).await.map_err(external)?.version().unwrap_or_default();
                let no_version = |why: String| {
                    DataFusionError::Plan(format!("table `{table_name}` has no version {version}: {why}"))
                };
                let version = u64::try_from(version).map_err(|_| no_version("versions start at 0".into()))?;
                if version > latest {
                    return Err(no_version(format!("the latest is {latest}")));
                }
                load(&self.root, &dir, Some(version)).await.map_err(|e| no_version(e.to_string()))?
            }
            TableRequest::Metadata(_, MetadataTable::History) => {
                let table = load(&self.root, &dir, None).await.map_err(external)?;
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

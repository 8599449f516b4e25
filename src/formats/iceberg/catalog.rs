//! Iceberg SQL and REST catalogs as DataFusion catalogs whose schemas are Iceberg namespaces.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use iceberg::arrow::{arrow_schema_to_schema_auto_assign_ids, arrow_type_to_type};
use iceberg::io::{LocalFsStorageFactory, StorageFactory};
use iceberg::spec::{PartitionSpec, Schema as TableSchema, Transform as IcebergTransform};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle, SqlCatalogBuilder,
};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use super::schema::IcebergSchema;
use super::storage::ObjectStorageFactory;
use super::writer::IcebergTableWriter;
use crate::catalog::{
    CatalogError, IcebergRestConfig, IcebergSqlConfig, LakeCatalog, Listing, Result, TableRequest, check_columns,
    check_partitioning, check_schema_name, names,
};
use crate::coordinator::{CommitError, CommitTarget, HeldCommit};
use crate::formats::files::{DataFile, SnapshotFiles};
use crate::paths;
use crate::storage::{self, Root};
use crate::table::{PartitionField, TableName, Transform};

fn ident(name: &TableName) -> TableIdent {
    TableIdent::new(NamespaceIdent::new(name.schema.clone()), name.table.clone())
}

/// The compare-and-swap of a table's metadata pointer in the catalog database (SQLite or
/// PostgreSQL), the statement iceberg-rust's own commit runs, for the commits its transactions
/// cannot express (overwrites).
#[derive(Debug, Clone)]
pub struct MetadataPointer {
    pool: AnyPool,
    catalog: String,
}

impl MetadataPointer {
    /// Points `table` at `to` if it still points at `from`; false when another commit moved it.
    pub async fn swap(&self, table: &TableIdent, from: &str, to: &str) -> std::result::Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2
             WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6",
        )
        .bind(to)
        .bind(from)
        .bind(&self.catalog)
        .bind(table.namespace().join("."))
        .bind(table.name())
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Swaps every held commit's pointer in one transaction, each only if its table still points
    /// where the commit was built from: all swapped, or none.
    pub async fn swap_all(&self, commits: &[HeldCommit]) -> std::result::Result<(), CommitError> {
        let failed = |e: sqlx::Error| CommitError::Refused(format!("the catalog transaction failed: {e}").into());
        let mut transaction = self.pool.begin().await.map_err(failed)?;
        for commit in commits {
            let done = sqlx::query(
                "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2
                 WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6",
            )
            .bind(&commit.to)
            .bind(&commit.from)
            .bind(&self.catalog)
            .bind(&commit.namespace)
            .bind(&commit.table)
            .bind(&commit.from)
            .execute(&mut *transaction)
            .await
            .map_err(failed)?;
            if done.rows_affected() != 1 {
                transaction.rollback().await.map_err(failed)?;
                return Err(CommitError::Conflict(
                    format!(
                        "`{}.{}` changed while the run staged it (another commit landed first); no table was published",
                        commit.namespace, commit.table
                    )
                    .into(),
                ));
            }
        }
        // Only the commit's own answer can be lost with the commit made.
        transaction
            .commit()
            .await
            .map_err(|e| CommitError::OutcomeUnknown(format!("the catalog transaction's commit failed: {e}").into()))
    }
}

/// An Iceberg catalog, usable from DataFusion SQL as `<name>.<schema>.<table>`.
#[derive(Debug)]
pub struct IcebergCatalog {
    name: String,
    location: String,
    inner: Arc<dyn Catalog>,
    kind: &'static str,
    /// For overwrites (SQL catalogs only).
    pointer: Option<MetadataPointer>,
    /// The warehouse (SQL catalogs): a local folder, absolute and normalised, or a bucket prefix;
    /// every table Sluice creates, writes or drops lies inside it. REST catalogs place tables
    /// themselves.
    warehouse: Option<Root>,
    listing: Listing,
}

impl IcebergCatalog {
    /// Opens an Iceberg SQL catalog. A SQLite database and a local warehouse folder are created
    /// when missing; a warehouse in an object store (`s3://bucket/prefix`, ...) is reached with
    /// the environment's credentials and the file's `[storage]` settings.
    pub async fn open_sql(name: &str, config: &IcebergSqlConfig) -> Result<Arc<Self>> {
        let open_error =
            |message: String| CatalogError::Open { catalog: name.to_string(), location: config.uri.clone(), message };
        let mut uri = config.uri.clone();
        if let Some(path) = uri.strip_prefix("sqlite:") {
            let file = path.split('?').next().unwrap_or_default();
            if let Some(parent) = std::path::Path::new(file).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| open_error(format!("{}: {e}", parent.display())))?;
            }
            if !uri.contains("mode=") {
                uri.push_str(if uri.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
        }
        let (root, factory): (Root, Arc<dyn StorageFactory>) = match storage::is_remote(&config.warehouse) {
            true => {
                let root = Root::remote(&config.warehouse, &config.storage).map_err(|e| open_error(e.to_string()))?;
                let factory = ObjectStorageFactory::new(&root.display(), &config.storage);
                (root, Arc::new(factory))
            }
            false => {
                let warehouse = config.warehouse.strip_prefix("file://").unwrap_or(&config.warehouse);
                std::fs::create_dir_all(warehouse).map_err(|e| open_error(format!("{warehouse}: {e}")))?;
                let dir = std::path::absolute(warehouse)
                    .ok()
                    .and_then(|path| paths::normalize(&path))
                    .ok_or_else(|| open_error(format!("{warehouse}: not a usable folder")))?;
                (Root::Local(dir), Arc::new(LocalFsStorageFactory))
            }
        };
        let warehouse = root.location(&[]).trim_end_matches('/').to_string();
        // `?` for SQLite, `$1` for PostgreSQL, as the JDBC catalog does.
        let bind_style = if uri.starts_with("sqlite:") { SqlBindStyle::QMark } else { SqlBindStyle::DollarNumeric };
        if !uri.starts_with("sqlite:") && !uri.starts_with("postgres://") && !uri.starts_with("postgresql://") {
            return Err(open_error("the uri must start with sqlite: or postgres://".to_string()));
        }
        let props = HashMap::from([
            (SQL_CATALOG_PROP_URI.to_string(), uri.clone()),
            (SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse),
            (SQL_CATALOG_PROP_BIND_STYLE.to_string(), bind_style.to_string()),
        ]);
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(factory)
            .load(name, props)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        // The catalog has created its tables by now; the pointer shares its database.
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .idle_timeout(Duration::from_secs(10))
            .connect(&uri)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let pointer = MetadataPointer { pool, catalog: name.to_string() };
        let location = format!("{} (warehouse {})", config.uri, config.warehouse);
        Self::open(name, "iceberg-sql", location, Arc::new(catalog), Some(pointer), Some(root)).await
    }

    /// Opens an Iceberg REST catalog; the token or client credential comes from the environment
    /// variables the configuration names, and is never shown.
    pub async fn open_rest(name: &str, config: &IcebergRestConfig) -> Result<Arc<Self>> {
        let open_error =
            |message: String| CatalogError::Open { catalog: name.to_string(), location: config.uri.clone(), message };
        let mut props = HashMap::from([(REST_CATALOG_PROP_URI.to_string(), config.uri.clone())]);
        if let Some(warehouse) = &config.warehouse {
            props.insert(REST_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.clone());
        }
        for (key, variable) in [("token", &config.token_env), ("credential", &config.credential_env)] {
            if let Some(variable) = variable {
                let secret = std::env::var(variable)
                    .map_err(|_| open_error(format!("environment variable `{variable}` ({key}) is not set")))?;
                props.insert(key.to_string(), secret);
            }
        }
        let catalog = RestCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(name, props)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let location = match &config.warehouse {
            Some(warehouse) => format!("{} (warehouse {warehouse})", config.uri),
            None => config.uri.clone(),
        };
        Self::open(name, "iceberg-rest", location, Arc::new(catalog), None, None).await
    }

    async fn open(
        name: &str,
        kind: &'static str,
        location: String,
        inner: Arc<dyn Catalog>,
        pointer: Option<MetadataPointer>,
        warehouse: Option<Root>,
    ) -> Result<Arc<Self>> {
        let catalog = Arc::new(Self {
            name: name.to_string(),
            kind,
            location: location.clone(),
            inner,
            pointer,
            warehouse,
            listing: Listing::default(),
        });
        // The first request to the catalog: an unreachable or refusing catalog fails here.
        catalog.refresh().await.map_err(|e| CatalogError::Open {
            catalog: name.to_string(),
            location,
            message: e.to_string(),
        })?;
        Ok(catalog)
    }

    /// A writer for one run into table `name` as it is now (what [`LakeCatalog::writer`] hands
    /// out, typed).
    pub async fn table_writer(&self, name: &TableName) -> Result<IcebergTableWriter> {
        let table = self.load_table(name).await?;
        self.confined(&format!("the location of `{name}`"), table.metadata().location())?;
        IcebergTableWriter::new(self.inner.clone(), self.pointer.clone(), &table)
            .map(|writer| writer.with_warehouse(self.warehouse.clone()))
            .map_err(self.error(format!("preparing a write into `{name}`")))
    }

    /// The underlying Iceberg catalog.
    pub fn iceberg(&self) -> &Arc<dyn Catalog> {
        &self.inner
    }

    fn error(&self, context: impl Into<String>) -> impl FnOnce(iceberg::Error) -> CatalogError + '_ {
        let context = context.into();
        move |source| CatalogError::Format { catalog: self.name.clone(), context, source: Box::new(source) }
    }

    /// Loads the table's current metadata.
    pub async fn load_table(&self, name: &TableName) -> Result<Table> {
        name.check()?;
        match self.inner.load_table(&ident(name)).await {
            Ok(table) => Ok(table),
            Err(e) if matches!(e.kind(), ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound) => {
                Err(CatalogError::TableNotFound(name.clone()))
            }
            Err(e) => Err(self.error(format!("loading table `{name}`"))(e)),
        }
    }

    /// The location Sluice gives table `name`: `<warehouse>/<schema>/<table>`, as iceberg-rust's
    /// SQL catalog does (`None` for REST catalogs, which place tables themselves).
    fn table_dir(&self, name: &TableName) -> Result<Option<String>> {
        name.check()?;
        let Some(warehouse) = &self.warehouse else { return Ok(None) };
        let dir = warehouse.location(&[&name.schema, &name.table]);
        self.confined("table location", &dir)?;
        Ok(Some(dir))
    }

    /// Refuses `location` unless it lies inside the warehouse (REST catalogs: anywhere).
    fn confined(&self, what: &str, location: &str) -> Result<()> {
        let Some(warehouse) = &self.warehouse else { return Ok(()) };
        if warehouse.contains(location) {
            return Ok(());
        }
        Err(CatalogError::Escapes {
            catalog: self.name.clone(),
            what: what.to_string(),
            location: location.to_string(),
            root: warehouse.display(),
        })
    }

    /// Whether `location` is the table's own folder: `<warehouse>/<schema>/<table>` (Sluice,
    /// iceberg-rust) or `<warehouse>/<schema>.db/<table>` (pyiceberg, Spark). Only such a folder
    /// is deleted whole when the table is dropped; it cannot hold another table.
    fn is_own_folder(&self, name: &TableName, location: &str) -> bool {
        let Some(warehouse) = &self.warehouse else { return false };
        [name.schema.clone(), format!("{}.db", name.schema)]
            .iter()
            .any(|schema| warehouse.is_location_of(location, &[schema, &name.table]))
    }

    /// Drops a table of a SQL catalog: its catalog entry first, then its own folder. A table
    /// whose metadata cannot be read loses its entry all the same (one broken table must not
    /// stay in the way); files outside the table's own folder are left, with a warning.
    async fn drop_warehouse_table(&self, name: &TableName, dir: String) -> Result<()> {
        let loaded = self.inner.load_table(&ident(name)).await;
        self.inner.drop_table(&ident(name)).await.map_err(self.error(format!("dropping table `{name}`")))?;
        let location = match &loaded {
            Ok(table) => table.metadata().location().to_string(),
            Err(e) => {
                tracing::warn!(table = %name, "its metadata is unreadable ({e}): dropped its catalog entry; deleting its folder {dir}");
                dir
            }
        };
        let Some(warehouse) = self.warehouse.as_ref().filter(|_| self.is_own_folder(name, &location)) else {
            tracing::warn!(table = %name, "dropped; its files at {location} were left: that is not the table's own folder inside the warehouse");
            return Ok(());
        };
        if let Err(e) = warehouse.delete_folder(&location).await {
            tracing::warn!(table = %name, "dropped, but deleting its folder failed: {e}");
        }
        Ok(())
    }

    async fn schema_exists(&self, schema: &str) -> Result<bool> {
        self.inner
            .namespace_exists(&NamespaceIdent::new(schema.to_string()))
            .await
            .map_err(self.error("looking up a schema"))
    }
}

/// The Iceberg partition spec of `partitioning` over `schema`; each field is checked against its
/// column's type (e.g. `day` needs a date or timestamp).
fn partition_spec(name: &TableName, schema: &TableSchema, partitioning: &[PartitionField]) -> Result<PartitionSpec> {
    let bad = |field: &PartitionField, e: iceberg::Error| CatalogError::BadPartition {
        table: Box::new(name.clone()),
        field: field.to_string(),
        reason: e.message().to_string(),
    };
    let mut spec = PartitionSpec::builder(Arc::new(schema.clone()));
    for field in partitioning {
        let (transform, suffix) = match field.transform {
            Transform::Identity => (IcebergTransform::Identity, ""),
            Transform::Year => (IcebergTransform::Year, "_year"),
            Transform::Month => (IcebergTransform::Month, "_month"),
            Transform::Day => (IcebergTransform::Day, "_day"),
            Transform::Hour => (IcebergTransform::Hour, "_hour"),
            Transform::Bucket(n) => (IcebergTransform::Bucket(n), "_bucket"),
            Transform::Truncate(w) => (IcebergTransform::Truncate(w), "_trunc"),
        };
        spec = spec
            .add_partition_field(&field.column, format!("{}{suffix}", field.column), transform)
            .map_err(|e| bad(field, e))?;
    }
    spec.build().map_err(|e| CatalogError::BadPartition {
        table: Box::new(name.clone()),
        field: partitioning.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        reason: e.message().to_string(),
    })
}

/// Iceberg stores DataFusion's types except unsigned 64-bit integers and a few exotic ones.
/// Nanosecond timestamps are stored as microseconds (the Iceberg v2 precision).
fn iceberg_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        other => other.clone(),
    }
}

#[async_trait]
impl LakeCatalog for IcebergCatalog {
    fn name(&self) -> &str {
        &self.name
    }

    /// The files of the snapshot, as iceberg-rust's scan plans them; a snapshot with delete
    /// files (rows deleted by position or value) is refused: a plain Parquet scan would read
    /// the deleted rows.
    async fn snapshot_files(&self, schema: &str, table: &str) -> Result<Option<SnapshotFiles>> {
        use futures::TryStreamExt;
        let request = TableRequest::parse(table);
        let Some(snapshot) = request.data_as_of() else { return Ok(None) };
        let name = TableName::new(&self.name, schema, request.base());
        let loaded = self.load_table(&name).await?;
        // Executors read columns by name: a column renamed since a file was written would read
        // as NULL there.
        let mut schemas: Vec<_> = loaded.metadata().schemas_iter().collect();
        schemas.sort_by_key(|s| s.schema_id());
        let mut names: HashMap<i32, &str> = HashMap::new();
        for (id, column) in schemas.iter().flat_map(|s| s.field_id_to_name_map()) {
            if let Some(before) = names.insert(*id, column)
                && before != column
            {
                return Err(CatalogError::Unsupported(format!(
                    "`{name}` renamed column `{before}` to `{column}`: a cluster's executors read columns by \
                     name, and cannot read its older files yet"
                )));
            }
        }
        let scan = match snapshot {
            Some(id) => loaded.scan().snapshot_id(id),
            None => loaded.scan(),
        };
        let planned = async { scan.select_all().build()?.plan_files().await?.try_collect::<Vec<_>>().await };
        let tasks = planned.await.map_err(self.error(format!("listing the data files of `{name}`")))?;
        let mut files = Vec::with_capacity(tasks.len());
        for task in tasks {
            if let Some(deletes) = task.deletes.first() {
                return Err(CatalogError::Unsupported(format!(
                    "`{name}` has delete files ({}), which a cluster's executors cannot apply yet",
                    deletes.file_path
                )));
            }
            if task.data_file_format != iceberg::spec::DataFileFormat::Parquet {
                return Err(CatalogError::Unsupported(format!(
                    "`{name}`: {} is not a Parquet file, which a cluster's executors cannot read yet",
                    task.data_file_path
                )));
            }
            files.push(DataFile { url: task.data_file_path, size: task.file_size_in_bytes, partition: vec![] });
        }
        Ok(Some(SnapshotFiles { table: format!("{}.{schema}.{table}", self.name), partition_columns: vec![], files }))
    }

    fn can_publish_together(&self) -> std::result::Result<(), &'static str> {
        match self.pointer {
            Some(_) => Ok(()),
            None => Err("a REST catalog takes one table's commit per request in this version"),
        }
    }

    async fn publish_together(&self, commits: &[HeldCommit]) -> std::result::Result<(), CommitError> {
        match &self.pointer {
            Some(pointer) => pointer.swap_all(commits).await,
            None => Err(CommitError::Refused(
                format!("catalog `{}`: {}", self.name, self.can_publish_together().unwrap_err()).into(),
            )),
        }
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn root(&self) -> Option<&Root> {
        self.warehouse.as_ref()
    }

    async fn refresh(&self) -> Result<()> {
        let mut listing = BTreeMap::new();
        for namespace in self.inner.list_namespaces(None).await.map_err(self.error("listing schemas"))? {
            // One unreadable schema is that schema's problem: the others stay listed.
            match self.inner.list_tables(&namespace).await {
                Ok(tables) => {
                    listing.insert(namespace.join("."), tables.into_iter().map(|t| t.name().to_string()).collect());
                }
                Err(e) => {
                    tracing::warn!(catalog = %self.name, schema = %namespace.join("."), "cannot list the schema's tables: {e}")
                }
            }
        }
        self.listing.replace(listing);
        Ok(())
    }

    async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()> {
        check_schema_name(names::NameKind::Schema, schema)?;
        if self.schema_exists(schema).await? {
            if if_not_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaExists { catalog: self.name.clone(), schema: schema.to_string() });
        }
        let namespace = NamespaceIdent::new(schema.to_string());
        self.inner.create_namespace(&namespace, HashMap::new()).await.map_err(self.error("creating a schema"))?;
        self.refresh().await
    }

    async fn drop_schema(&self, schema: &str, if_exists: bool) -> Result<()> {
        check_schema_name(names::NameKind::ExistingSchema, schema)?;
        if !self.schema_exists(schema).await? {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: schema.to_string() });
        }
        let namespace = NamespaceIdent::new(schema.to_string());
        if !self.inner.list_tables(&namespace).await.map_err(self.error("listing tables"))?.is_empty() {
            return Err(CatalogError::SchemaNotEmpty { catalog: self.name.clone(), schema: schema.to_string() });
        }
        self.inner.drop_namespace(&namespace).await.map_err(self.error(format!("dropping schema `{schema}`")))?;
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
        if !self.schema_exists(&name.schema).await? {
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: name.schema.clone() });
        }
        if self.inner.table_exists(&ident(name)).await.map_err(self.error("looking up a table"))? {
            if if_not_exists {
                return Ok(false);
            }
            return Err(CatalogError::TableExists(name.clone()));
        }
        check_partitioning(name, partitioning)?;
        check_columns(name, schema, "Iceberg", |t| arrow_type_to_type(&iceberg_type(t)).is_ok())?;
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), iceberg_type(f.data_type()), f.is_nullable()))
            .collect();
        let schema = arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields))
            .map_err(self.error(format!("converting the schema of `{name}`")))?;
        let spec = partition_spec(name, &schema, partitioning)?;
        let creation = TableCreation::builder()
            .name(name.table.clone())
            .schema(schema)
            .partition_spec(spec)
            .location_opt(dir)
            .build();
        self.inner
            .create_table(&NamespaceIdent::new(name.schema.clone()), creation)
            .await
            .map_err(self.error(format!("creating table `{name}`")))?;
        self.refresh().await?;
        Ok(true)
    }

    async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<()> {
        let dir = self.table_dir(name)?;
        if !self.inner.table_exists(&ident(name)).await.map_err(self.error("looking up a table"))? {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::TableNotFound(name.clone()));
        }
        match dir {
            Some(dir) => self.drop_warehouse_table(name, dir).await?,
            // A REST catalog's server deletes the files it placed.
            None => {
                self.inner.purge_table(&ident(name)).await.map_err(self.error(format!("dropping table `{name}`")))?
            }
        }
        self.refresh().await
    }

    async fn writer(&self, name: &TableName) -> Result<Arc<dyn CommitTarget>> {
        Ok(Arc::new(self.table_writer(name).await?))
    }

    /// The table's metadata with the columns added (optional, fresh field ids) and widened (same
    /// ids, Iceberg's promotions), in memory only: the writer writes data files with it, and its
    /// commit swaps it in with the snapshot.
    async fn writer_evolving(
        &self,
        name: &TableName,
        columns: &[Field],
        widened: &[Field],
    ) -> Result<Arc<dyn CommitTarget>> {
        if self.pointer.is_none() {
            return Err(CatalogError::Unsupported(format!(
                "changing the schema of `{name}` with its data needs an Iceberg SQL catalog (catalog `{}` is REST)",
                self.name
            )));
        }
        let table = self.load_table(name).await?;
        self.confined(&format!("the location of `{name}`"), table.metadata().location())?;
        let error = self.error(format!("changing the schema of `{name}`"));
        let evolved = evolve(&table, columns, widened).map_err(error)?;
        let writer = IcebergTableWriter::new(self.inner.clone(), self.pointer.clone(), &evolved)
            .map_err(self.error(format!("preparing a write into `{name}`")))?
            .with_warehouse(self.warehouse.clone())
            .evolving();
        Ok(Arc::new(writer))
    }
}

/// `table` with `columns` added to its current schema (optional fields with fresh ids) and the
/// `widened` columns given their wider types (same ids), not committed: the commit of the run
/// that writes with it publishes both.
fn evolve(table: &Table, columns: &[Field], widened: &[Field]) -> iceberg::Result<Table> {
    use iceberg::spec::{NestedField, TableMetadataBuilder};
    let metadata = table.metadata();
    let current = metadata.current_schema();
    let mut next_id = metadata.last_column_id();
    let mut fields: Vec<_> = current.as_struct().fields().to_vec();
    for wider in widened {
        let field_type = arrow_type_to_type(wider.data_type())?;
        if let Some(field) = fields.iter_mut().find(|f| f.name == *wider.name()) {
            let mut promoted = field.as_ref().clone();
            promoted.field_type = Box::new(field_type);
            *field = Arc::new(promoted);
        }
    }
    for column in columns {
        next_id += 1;
        let field_type = arrow_type_to_type(column.data_type())?;
        fields.push(Arc::new(NestedField::optional(next_id, column.name(), field_type)));
    }
    let schema = TableSchema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_identifier_field_ids(current.identifier_field_ids())
        .with_fields(fields)
        .build()?;
    let evolved =
        TableMetadataBuilder::new_from_metadata(metadata.clone(), None).add_current_schema(schema)?.build()?;
    Table::builder()
        .metadata(evolved.metadata)
        .metadata_location(table.metadata_location().unwrap_or_default().to_string())
        .identifier(table.identifier().clone())
        .file_io(table.file_io().clone())
        .runtime(iceberg::Runtime::try_current()?)
        .build()
}

impl CatalogProvider for IcebergCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        self.listing.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let tables = self.listing.tables(name)?;
        Some(Arc::new(IcebergSchema {
            catalog: self.name.clone(),
            schema: name.to_string(),
            tables,
            inner: self.inner.clone(),
        }))
    }
}

//! Table catalogs: where tables live and how DataFusion sees them.
//!
//! The embedded default is an Iceberg SQL catalog on SQLite (`<home>/catalog.db`, the JDBC
//! `iceberg_tables` layout that pyiceberg's `SqlCatalog` also reads) with a local warehouse folder.
//! [`IcebergCatalog`] wraps any `iceberg::Catalog` and exposes it to DataFusion as a catalog whose
//! schemas are Iceberg namespaces. Table lookups are live (every statement sees the latest
//! snapshot, including commits by other processes); the name lists behind `SHOW TABLES` are
//! refreshed before each statement.
//!
//! Two suffixes on a table name reach past the current snapshot:
//! `lake.ns."t@<snapshot_id>"` reads the table as of that snapshot (time travel), and
//! `lake.ns."t$snapshots"` lists its snapshots.

mod config;

pub use config::{CatalogConfig, CatalogConfigError, IcebergSqlConfig, load_catalogs, parse_catalog};

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DFResult};
use futures::TryStreamExt;
use iceberg::arrow::{arrow_schema_to_schema_auto_assign_ids, arrow_type_to_type};
use iceberg::io::LocalFsStorageFactory;
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle, SqlCatalogBuilder,
};
use iceberg_datafusion::IcebergStaticTableProvider;

/// Errors of the catalog layer. Every variant names the catalog object it is about.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog could not be opened.
    #[error("cannot open catalog `{catalog}` at {uri}: {source}")]
    Open {
        /// Catalog name.
        catalog: String,
        /// Where it was looked for.
        uri: String,
        /// The Iceberg error.
        source: iceberg::Error,
    },
    /// No schema (namespace) of that name.
    #[error("schema `{catalog}.{schema}` does not exist (create it with CREATE SCHEMA {catalog}.{schema})")]
    SchemaNotFound {
        /// Catalog name.
        catalog: String,
        /// Schema name.
        schema: String,
    },
    /// The schema exists already.
    #[error("schema `{catalog}.{schema}` already exists")]
    SchemaExists {
        /// Catalog name.
        catalog: String,
        /// Schema name.
        schema: String,
    },
    /// No table of that name.
    #[error("table `{0}` does not exist")]
    TableNotFound(TableName),
    /// The table exists already.
    #[error("table `{0}` already exists")]
    TableExists(TableName),
    /// A column whose type the table format cannot store.
    #[error("table `{table}`: column `{column}` has type {data_type}, which Iceberg cannot store")]
    UnsupportedType {
        /// The table being created.
        table: TableName,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: DataType,
    },
    /// Any other error from the Iceberg catalog.
    #[error("catalog `{catalog}`: {context}: {source}")]
    Iceberg {
        /// Catalog name.
        catalog: String,
        /// What was being done.
        context: String,
        /// The Iceberg error.
        source: iceberg::Error,
    },
}

type Result<T> = std::result::Result<T, CatalogError>;

/// A fully qualified table name: `catalog.schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Catalog name.
    pub catalog: String,
    /// Schema (Iceberg namespace) name.
    pub schema: String,
    /// Table name.
    pub table: String,
}

impl TableName {
    /// A table name from its three parts.
    pub fn new(catalog: impl Into<String>, schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self { catalog: catalog.into(), schema: schema.into(), table: table.into() }
    }

    /// The Iceberg identifier (namespace + name).
    pub fn ident(&self) -> TableIdent {
        TableIdent::new(NamespaceIdent::new(self.schema.clone()), self.table.clone())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.schema, self.table)
    }
}

/// An Iceberg catalog, usable from DataFusion SQL as `<name>.<schema>.<table>`.
#[derive(Debug)]
pub struct IcebergCatalog {
    name: String,
    location: String,
    inner: Arc<dyn Catalog>,
    /// schema name → table names, as of the last [`IcebergCatalog::refresh`].
    listing: RwLock<BTreeMap<String, BTreeSet<String>>>,
}

impl IcebergCatalog {
    /// Opens an Iceberg SQL catalog. A SQLite database and a local warehouse folder are created
    /// when missing.
    pub async fn open_sql(name: &str, config: &IcebergSqlConfig) -> Result<Arc<Self>> {
        let io_error = |path: &str, e: std::io::Error| CatalogError::Open {
            catalog: name.to_string(),
            uri: config.uri.clone(),
            source: iceberg::Error::new(ErrorKind::Unexpected, format!("{path}: {e}")),
        };
        let mut uri = config.uri.clone();
        if let Some(path) = uri.strip_prefix("sqlite:") {
            let file = path.split('?').next().unwrap_or_default();
            if let Some(parent) = std::path::Path::new(file).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| io_error(file, e))?;
            }
            if !uri.contains("mode=") {
                uri.push_str(if uri.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
        }
        let warehouse = match config.warehouse.strip_prefix("file://") {
            Some(path) => path.to_string(),
            None if config.warehouse.contains("://") => String::new(),
            None => config.warehouse.clone(),
        };
        if !warehouse.is_empty() {
            std::fs::create_dir_all(&warehouse).map_err(|e| io_error(&warehouse, e))?;
        }
        let warehouse =
            if config.warehouse.contains("://") { config.warehouse.clone() } else { format!("file://{warehouse}") };
        let uri = uri.as_str();
        let bind_style = if uri.starts_with("sqlite:") { SqlBindStyle::QMark } else { SqlBindStyle::DollarNumeric };
        let props = HashMap::from([
            (SQL_CATALOG_PROP_URI.to_string(), uri.to_string()),
            (SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse),
            (SQL_CATALOG_PROP_BIND_STYLE.to_string(), bind_style.to_string()),
        ]);
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(name, props)
            .await
            .map_err(|source| CatalogError::Open { catalog: name.to_string(), uri: uri.to_string(), source })?;
        let catalog = Arc::new(Self {
            name: name.to_string(),
            location: format!("{} (warehouse {})", config.uri, config.warehouse),
            inner: Arc::new(catalog),
            listing: RwLock::default(),
        });
        catalog.refresh().await?;
        Ok(catalog)
    }

    /// The catalog's name (the first part of its tables' names).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The catalog type, as declared in catalog files.
    pub fn kind(&self) -> &'static str {
        "iceberg-sql"
    }

    /// Where the catalog lives (database URI and warehouse).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The underlying Iceberg catalog, for commits.
    pub fn iceberg(&self) -> &dyn Catalog {
        self.inner.as_ref()
    }

    fn error(&self, context: impl Into<String>) -> impl FnOnce(iceberg::Error) -> CatalogError + '_ {
        let context = context.into();
        move |source| CatalogError::Iceberg { catalog: self.name.clone(), context, source }
    }

    /// Re-reads the schema and table lists (what `SHOW TABLES` and `information_schema` show).
    pub async fn refresh(&self) -> Result<()> {
        let mut listing = BTreeMap::new();
        for namespace in self.inner.list_namespaces(None).await.map_err(self.error("listing schemas"))? {
            let tables = self.inner.list_tables(&namespace).await.map_err(self.error("listing tables"))?;
            listing.insert(namespace.join("."), tables.into_iter().map(|t| t.name().to_string()).collect());
        }
        *self.listing.write().expect("catalog listing lock") = listing;
        Ok(())
    }

    /// `CREATE SCHEMA <catalog>.<schema>`.
    pub async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()> {
        let namespace = NamespaceIdent::new(schema.to_string());
        if self.inner.namespace_exists(&namespace).await.map_err(self.error("looking up a schema"))? {
            if if_not_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaExists { catalog: self.name.clone(), schema: schema.to_string() });
        }
        self.inner.create_namespace(&namespace, HashMap::new()).await.map_err(self.error("creating a schema"))?;
        self.refresh().await
    }

    /// `DROP SCHEMA <catalog>.<schema>`; the schema must be empty.
    pub async fn drop_schema(&self, schema: &str, if_exists: bool) -> Result<()> {
        let namespace = NamespaceIdent::new(schema.to_string());
        if !self.inner.namespace_exists(&namespace).await.map_err(self.error("looking up a schema"))? {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: schema.to_string() });
        }
        self.inner.drop_namespace(&namespace).await.map_err(self.error(format!("dropping schema `{schema}`")))?;
        self.refresh().await
    }

    /// Creates a table whose columns are those of `schema` (a DataFusion/Arrow schema).
    /// Returns `None` when it exists and `if_not_exists` is set.
    pub async fn create_table(
        &self,
        name: &TableName,
        schema: &ArrowSchema,
        if_not_exists: bool,
    ) -> Result<Option<Table>> {
        self.require_schema(&name.schema).await?;
        if self.inner.table_exists(&name.ident()).await.map_err(self.error("looking up a table"))? {
            if if_not_exists {
                return Ok(None);
            }
            return Err(CatalogError::TableExists(name.clone()));
        }
        let schema = iceberg_schema(name, schema)?;
        let creation = TableCreation::builder().name(name.table.clone()).schema(schema).build();
        let table = self
            .inner
            .create_table(&name.ident().namespace, creation)
            .await
            .map_err(self.error(format!("creating table `{name}`")))?;
        self.refresh().await?;
        Ok(Some(table))
    }

    /// Loads the table's current metadata.
    pub async fn load_table(&self, name: &TableName) -> Result<Table> {
        match self.inner.load_table(&name.ident()).await {
            Ok(table) => Ok(table),
            Err(e) if matches!(e.kind(), ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound) => {
                Err(CatalogError::TableNotFound(name.clone()))
            }
            Err(e) => Err(self.error(format!("loading table `{name}`"))(e)),
        }
    }

    /// Drops a table and deletes its files (`DROP TABLE`).
    pub async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<()> {
        if !self.inner.table_exists(&name.ident()).await.map_err(self.error("looking up a table"))? {
            if if_exists {
                return Ok(());
            }
            return Err(CatalogError::TableNotFound(name.clone()));
        }
        self.inner.purge_table(&name.ident()).await.map_err(self.error(format!("dropping table `{name}`")))?;
        self.refresh().await
    }

    async fn require_schema(&self, schema: &str) -> Result<()> {
        let namespace = NamespaceIdent::new(schema.to_string());
        if self.inner.namespace_exists(&namespace).await.map_err(self.error("looking up a schema"))? {
            Ok(())
        } else {
            Err(CatalogError::SchemaNotFound { catalog: self.name.clone(), schema: schema.to_string() })
        }
    }

    fn schema_listing(&self, schema: &str) -> Option<BTreeSet<String>> {
        self.listing.read().expect("catalog listing lock").get(schema).cloned()
    }
}

/// Converts a DataFusion schema into an Iceberg schema with fresh field ids, naming the column
/// when a type has no Iceberg counterpart. Nanosecond timestamps are stored as microseconds (the
/// Iceberg v2 precision); batches are cast accordingly when written.
fn iceberg_schema(table: &TableName, schema: &ArrowSchema) -> Result<iceberg::spec::Schema> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let data_type = match field.data_type() {
                DataType::Timestamp(TimeUnit::Nanosecond, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                other => other.clone(),
            };
            arrow_type_to_type(&data_type).map_err(|_| CatalogError::UnsupportedType {
                table: table.clone(),
                column: field.name().clone(),
                data_type: field.data_type().clone(),
            })?;
            Ok(Field::new(field.name(), data_type, field.is_nullable()))
        })
        .collect::<Result<_>>()?;
    arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields)).map_err(|source| CatalogError::Iceberg {
        catalog: table.catalog.clone(),
        context: format!("converting the schema of `{table}`"),
        source,
    })
}

impl CatalogProvider for IcebergCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        self.listing.read().expect("catalog listing lock").keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let tables = self.schema_listing(name)?;
        Some(Arc::new(IcebergSchema {
            catalog: self.name.clone(),
            schema: name.to_string(),
            tables,
            inner: self.inner.clone(),
        }))
    }
}

/// One Iceberg namespace seen as a DataFusion schema.
#[derive(Debug)]
struct IcebergSchema {
    catalog: String,
    schema: String,
    tables: BTreeSet<String>,
    inner: Arc<dyn Catalog>,
}

/// What a table name in a query asks for.
enum TableRequest<'a> {
    Current(&'a str),
    AsOf(&'a str, i64),
    Snapshots(&'a str),
}

fn table_request(name: &str) -> TableRequest<'_> {
    if let Some(base) = name.strip_suffix("$snapshots") {
        return TableRequest::Snapshots(base);
    }
    if let Some((base, snapshot)) = name.rsplit_once('@')
        && let Ok(snapshot_id) = snapshot.parse()
    {
        return TableRequest::AsOf(base, snapshot_id);
    }
    TableRequest::Current(name)
}

#[async_trait]
impl SchemaProvider for IcebergSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.iter().cloned().collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let request = table_request(name);
        let base = match request {
            TableRequest::Current(b) | TableRequest::AsOf(b, _) | TableRequest::Snapshots(b) => b,
        };
        let ident = TableIdent::new(NamespaceIdent::new(self.schema.clone()), base.to_string());
        let table = match self.inner.load_table(&ident).await {
            Ok(table) => table,
            Err(e) if matches!(e.kind(), ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound) => return Ok(None),
            Err(e) => return Err(DataFusionError::External(Box::new(e))),
        };
        let qualified = TableName::new(&self.catalog, &self.schema, base);
        let provider: Arc<dyn TableProvider> = match request {
            TableRequest::Current(_) => Arc::new(
                IcebergStaticTableProvider::try_new_from_table(table)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            ),
            TableRequest::AsOf(_, snapshot_id) => {
                if table.metadata().snapshot_by_id(snapshot_id).is_none() {
                    return Err(DataFusionError::Plan(format!(
                        "table `{qualified}` has no snapshot {snapshot_id} (list them with SELECT * FROM {}.{}.\"{base}$snapshots\")",
                        self.catalog, self.schema
                    )));
                }
                Arc::new(
                    IcebergStaticTableProvider::try_new_from_table_snapshot(table, snapshot_id)
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?,
                )
            }
            TableRequest::Snapshots(_) => snapshots_table(&table).await?,
        };
        Ok(Some(provider))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains(name)
    }
}

/// The table's snapshots (id, parent, time, operation, summary) as an in-memory table.
async fn snapshots_table(table: &Table) -> DFResult<Arc<dyn TableProvider>> {
    let to_df = |e: iceberg::Error| DataFusionError::External(Box::new(e));
    let inspect = table.inspect();
    let snapshots = inspect.snapshots();
    let batches: Vec<_> = snapshots.scan().await.map_err(to_df)?.try_collect().await.map_err(to_df)?;
    let schema: SchemaRef = match batches.first() {
        Some(batch) => batch.schema(),
        None => Arc::new(iceberg::arrow::schema_to_arrow_schema(&snapshots.schema()).map_err(to_df)?),
    };
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_name_suffixes() {
        assert!(matches!(table_request("t"), TableRequest::Current("t")));
        assert!(matches!(table_request("t@42"), TableRequest::AsOf("t", 42)));
        assert!(matches!(table_request("t$snapshots"), TableRequest::Snapshots("t")));
        assert!(matches!(table_request("a@b"), TableRequest::Current("a@b")));
    }
}

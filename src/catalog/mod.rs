//! Table catalogs: where tables live and how DataFusion sees them.
//!
//! A [`LakeCatalog`] is a DataFusion catalog (schemas and tables for queries) that also creates
//! and drops schemas and tables and hands the engine a [`CommitTarget`] for a table. The
//! formats implement it (`crate::formats`): an Iceberg SQL or REST catalog, and a folder of
//! Delta tables. This module holds what they share: the trait, the errors, catalog files,
//! name checks, the listing behind `SHOW TABLES`, and the session's list of catalogs.
//!
//! Table lookups are live (every statement sees the latest commit, including other processes');
//! the name lists behind `SHOW TABLES` are refreshed before each statement that plans SQL. Two suffixes on a
//! table name reach past the latest state: `"t@<id>"` reads the table as of that Iceberg snapshot
//! or Delta version (time travel); `"t$snapshots"`, `"t$files"` and `"t$partitions"` describe an
//! Iceberg table's snapshots and current files, `"t$history"` a Delta table's commits.

mod config;
pub mod names;
mod pending;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema as ArrowSchema};
use datafusion::catalog::{CatalogProvider, CatalogProviderList};

pub use self::config::{
    CatalogConfig, CatalogConfigError, DeltaConfig, IcebergRestConfig, IcebergSqlConfig, load_catalogs, parse_catalog,
};
pub use self::pending::{PendingTables, pending_table, reading_pending};
use crate::coordinator::{CommitError, CommitTarget, HeldCommit};
use crate::table::{PartitionField, TableName};

/// Errors of the catalog layer. Every variant names the catalog object it is about.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog could not be opened.
    #[error("cannot open catalog `{catalog}` at {location}: {message}")]
    Open {
        /// Catalog name.
        catalog: String,
        /// Where it was looked for.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// A schema or table name that cannot be used (see [`names::refusal`]).
    #[error("{0}")]
    BadName(String),
    /// A location that is not inside the root it must stay in.
    #[error("catalog `{catalog}`: {what} `{location}` is outside {root}: refused")]
    Escapes {
        /// Catalog name.
        catalog: String,
        /// What the location is for.
        what: String,
        /// The location.
        location: String,
        /// The root it had to stay in.
        root: String,
    },
    /// No schema of that name.
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
    /// The schema still holds tables.
    #[error("schema `{catalog}.{schema}` is not empty: drop its tables first")]
    SchemaNotEmpty {
        /// Catalog name.
        catalog: String,
        /// Schema name.
        schema: String,
    },
    /// No table of that name.
    #[error("table `{0}` does not exist")]
    TableNotFound(TableName),
    /// What this catalog cannot do (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The table exists already.
    #[error("table `{0}` already exists")]
    TableExists(TableName),
    /// A partition field the table cannot have.
    #[error("table `{table}`: cannot partition by `{field}`: {reason}")]
    BadPartition {
        /// The table being created (boxed: keeps the error small).
        table: Box<TableName>,
        /// The partition field as written.
        field: String,
        /// Why not.
        reason: String,
    },
    /// A column whose type the table format cannot store.
    #[error("table `{table}`: column `{column}` has type {data_type}, which {format} cannot store")]
    UnsupportedType {
        /// The table being created (boxed: keeps the error small).
        table: Box<TableName>,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: DataType,
        /// The table format.
        format: &'static str,
    },
    /// Any other error from the table format's library.
    #[error("catalog `{catalog}`: {context}: {source}")]
    Format {
        /// Catalog name.
        catalog: String,
        /// What was being done.
        context: String,
        /// The library's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result of the catalog layer.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

impl TableName {
    /// Refuses a schema or table name that could leave its folder (see [`names::refusal`]).
    pub fn check(&self) -> Result<()> {
        check_schema_name(names::NameKind::Schema, &self.schema)?;
        match names::refusal(names::NameKind::Table, &self.table) {
            Some(reason) => Err(CatalogError::BadName(format!("{reason} (in `{self}`)"))),
            None => Ok(()),
        }
    }
}

/// Refuses a schema name that could leave its folder or (for a new schema, `kind`
/// [`names::NameKind::Schema`]) would not read back in `catalog.schema.table`.
pub fn check_schema_name(kind: names::NameKind, schema: &str) -> Result<()> {
    match names::refusal(kind, schema) {
        Some(reason) => Err(CatalogError::BadName(reason)),
        None => Ok(()),
    }
}

/// Refuses a partitioning that names one field twice.
pub(crate) fn check_partitioning(name: &TableName, partitioning: &[PartitionField]) -> Result<()> {
    for (i, field) in partitioning.iter().enumerate() {
        if partitioning[..i].contains(field) {
            return Err(CatalogError::BadPartition {
                table: Box::new(name.clone()),
                field: field.to_string(),
                reason: "it appears twice in PARTITIONED BY".to_string(),
            });
        }
    }
    Ok(())
}

/// A catalog of tables Sluice can create, read and write.
#[async_trait]
pub trait LakeCatalog: CatalogProvider + fmt::Debug {
    /// The catalog's name (the first part of its tables' names).
    fn name(&self) -> &str;
    /// Its type, as written in catalog files (`iceberg-sql`, `delta`).
    fn kind(&self) -> &'static str;
    /// Where it lives, for `SHOW CATALOGS` (never a credential).
    fn location(&self) -> &str;
    /// The folder or bucket prefix all its tables live in (a SQL catalog's warehouse, a Delta
    /// root); `None` when a server places them. Exports may not write into it.
    fn root(&self) -> Option<&crate::storage::Root>;
    /// Re-reads the schema and table lists (what `SHOW TABLES` and `information_schema` show).
    async fn refresh(&self) -> Result<()>;
    /// `CREATE SCHEMA <catalog>.<schema>`.
    async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()>;
    /// `DROP SCHEMA <catalog>.<schema>`; the schema must be empty.
    async fn drop_schema(&self, schema: &str, if_exists: bool) -> Result<()>;
    /// Creates a table with the columns of `schema`, partitioned by `partitioning` (empty: not
    /// partitioned); false when it existed and `if_not_exists`.
    async fn create_table(
        &self,
        name: &TableName,
        schema: &ArrowSchema,
        partitioning: &[PartitionField],
        if_not_exists: bool,
    ) -> Result<bool>;
    /// Drops a table and deletes its files.
    async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<()>;
    /// A writer for one run into the table as it is now.
    async fn writer(&self, name: &TableName) -> Result<Arc<dyn CommitTarget>>;
    /// A writer for one run into the table with `columns` added (nullable, at the end) and the
    /// columns named in `widened` given those (wider) types: the schema change publishes in the
    /// run's own commit (`schema_evolution = 'add_columns'`, `'widen_types'`). The default
    /// refuses.
    async fn writer_evolving(
        &self,
        name: &TableName,
        columns: &[datafusion::arrow::datatypes::Field],
        widened: &[datafusion::arrow::datatypes::Field],
    ) -> Result<Arc<dyn CommitTarget>> {
        let _ = (columns, widened);
        Err(CatalogError::Unsupported(format!(
            "changing the schema of `{name}` with its data: catalog `{}` ({}) cannot yet",
            self.name(),
            self.kind()
        )))
    }
    /// The data files of `schema`.`table` (as a query names it: the table, or `t@<id>` as of a
    /// snapshot / version) as plain Parquet files, which a process with no catalog can read
    /// (what a cluster's executors scan); `None` for what is not a table of data files (`t$...`).
    /// The default refuses.
    async fn snapshot_files(&self, schema: &str, table: &str) -> Result<Option<crate::formats::files::SnapshotFiles>> {
        let _ = (schema, table);
        Ok(None)
    }
    /// Whether the catalog can publish several tables' commits in one transaction
    /// ([`LakeCatalog::publish_together`]); if not, why (what an `atomic` pipeline's refusal says).
    fn can_publish_together(&self) -> std::result::Result<(), &'static str>;
    /// Publishes every held commit (tables of this catalog) in one transaction: every table
    /// refreshed, or none. [`CommitError::Conflict`] when a table moved since its commit was
    /// built; [`CommitError::OutcomeUnknown`] when the transaction's answer was lost.
    async fn publish_together(&self, commits: &[HeldCommit]) -> std::result::Result<(), CommitError> {
        let _ = commits;
        let why = self.can_publish_together().err().unwrap_or("not supported");
        Err(CommitError::Refused(
            format!("catalog `{}` cannot publish several tables at once: {why}", self.name()).into(),
        ))
    }
}

/// The session's catalogs: Sluice's own, as they are, and DataFusion's (the in-memory session
/// catalog, with `SELECT * FROM 'file.csv'`) behind DataFusion's dynamic-file wrapper. Ours are
/// kept out of that wrapper: it does not pass on `table_type`, so `SHOW TABLES` would load every
/// table, and one table with unreadable metadata would fail the listing of all of them.
#[derive(Debug)]
pub struct CatalogList {
    lakes: BTreeMap<String, Arc<dyn LakeCatalog>>,
    others: Arc<dyn CatalogProviderList>,
}

impl CatalogList {
    /// `lakes` by name, in front of `others`.
    pub fn new(lakes: BTreeMap<String, Arc<dyn LakeCatalog>>, others: Arc<dyn CatalogProviderList>) -> Self {
        Self { lakes, others }
    }
}

impl CatalogProviderList for CatalogList {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn register_catalog(&self, name: String, catalog: Arc<dyn CatalogProvider>) -> Option<Arc<dyn CatalogProvider>> {
        self.others.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.lakes.keys().cloned().collect();
        names.extend(self.others.catalog_names());
        names.into_iter().collect()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        match self.lakes.get(name) {
            Some(lake) => Some(lake.clone() as Arc<dyn CatalogProvider>),
            None => self.others.catalog(name),
        }
    }
}

/// The part of a table name before a time-travel (`@`) or metadata (`$`) suffix, and the suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableRequest<'a> {
    /// The latest state.
    Current(&'a str),
    /// `t@<id>`: as of a snapshot / version.
    AsOf(&'a str, i64),
    /// `t$snapshots`, `t$files`, ...: a table about the table.
    Metadata(&'a str, MetadataTable),
}

/// The metadata tables: `t$snapshots`, `t$files`, `t$partitions` (Iceberg), `t$history` (Delta).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetadataTable {
    /// Every snapshot (Iceberg).
    Snapshots,
    /// The data files of the current snapshot (Iceberg).
    Files,
    /// Rows, files and bytes per partition of the current snapshot (Iceberg).
    Partitions,
    /// Every commit, newest first (Delta).
    History,
}

impl MetadataTable {
    const ALL: [MetadataTable; 4] =
        [MetadataTable::Snapshots, MetadataTable::Files, MetadataTable::Partitions, MetadataTable::History];

    /// The suffix after `$`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            MetadataTable::Snapshots => "snapshots",
            MetadataTable::Files => "files",
            MetadataTable::Partitions => "partitions",
            MetadataTable::History => "history",
        }
    }

    /// The error for a metadata table the format does not have.
    pub(crate) fn unsupported(self, table: &TableName, format: &str, has: &str) -> String {
        format!("`{table}` ({format}) has no `${}` metadata table; it has {has}", self.name())
    }
}

impl<'a> TableRequest<'a> {
    /// The snapshot / version of the table's data asked for: `Some(None)` the latest,
    /// `Some(Some(id))` as of `id`; `None` for a table about the table (`t$...`).
    pub(crate) fn data_as_of(&self) -> Option<Option<i64>> {
        match self {
            TableRequest::Current(_) => Some(None),
            TableRequest::AsOf(_, id) => Some(Some(*id)),
            TableRequest::Metadata(..) => None,
        }
    }

    pub(crate) fn parse(name: &'a str) -> Self {
        for table in MetadataTable::ALL {
            if let Some(base) = name.strip_suffix(table.name()).and_then(|n| n.strip_suffix('$')) {
                return TableRequest::Metadata(base, table);
            }
        }
        if let Some((base, id)) = name.rsplit_once('@')
            && let Ok(id) = id.parse()
        {
            return TableRequest::AsOf(base, id);
        }
        TableRequest::Current(name)
    }

    pub(crate) fn base(self) -> &'a str {
        match self {
            TableRequest::Current(base) | TableRequest::AsOf(base, _) | TableRequest::Metadata(base, _) => base,
        }
    }
}

/// Schema and table names as of the last refresh: what `SHOW TABLES` and `information_schema`
/// list (DataFusion asks for names synchronously; tables themselves are always loaded live).
#[derive(Debug, Default)]
pub(crate) struct Listing(RwLock<BTreeMap<String, BTreeSet<String>>>);

impl Listing {
    pub(crate) fn replace(&self, listing: BTreeMap<String, BTreeSet<String>>) {
        *self.0.write().expect("catalog listing lock") = listing;
    }

    pub(crate) fn schema_names(&self) -> Vec<String> {
        self.0.read().expect("catalog listing lock").keys().cloned().collect()
    }

    pub(crate) fn tables(&self, schema: &str) -> Option<BTreeSet<String>> {
        self.0.read().expect("catalog listing lock").get(schema).cloned()
    }
}

/// Checks every column of a new table's schema with `supported`, naming the first one that fails.
pub(crate) fn check_columns(
    table: &TableName,
    schema: &ArrowSchema,
    format: &'static str,
    supported: impl Fn(&DataType) -> bool,
) -> Result<()> {
    match schema.fields().iter().find(|f| !supported(f.data_type())) {
        Some(field) => Err(CatalogError::UnsupportedType {
            table: Box::new(table.clone()),
            column: field.name().clone(),
            data_type: field.data_type().clone(),
            format,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_name_suffixes() {
        assert_eq!(TableRequest::parse("t"), TableRequest::Current("t"));
        assert_eq!(TableRequest::parse("t@42"), TableRequest::AsOf("t", 42));
        assert_eq!(TableRequest::parse("t$snapshots"), TableRequest::Metadata("t", MetadataTable::Snapshots));
        assert_eq!(TableRequest::parse("t$history"), TableRequest::Metadata("t", MetadataTable::History));
        assert_eq!(TableRequest::parse("a@b"), TableRequest::Current("a@b"));
        assert_eq!(TableRequest::parse("t@42").base(), "t");
    }
}

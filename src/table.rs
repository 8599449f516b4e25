//! The shared words every layer speaks: which table ([`TableName`]), how it is partitioned
//! ([`PartitionField`], [`Transform`]), how a run changes it ([`WriteMode`]), and who a commit
//! is for ([`RunIdentity`]). Nothing here does I/O; everything above may use it.

use std::fmt;

/// A fully qualified table name: `catalog.schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Catalog name.
    pub catalog: String,
    /// Schema (Iceberg namespace, Delta folder) name.
    pub schema: String,
    /// Table name.
    pub table: String,
}

impl TableName {
    /// A table name from its three parts.
    pub fn new(catalog: impl Into<String>, schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self { catalog: catalog.into(), schema: schema.into(), table: table.into() }
    }

    /// Reads back a name written by `Display` (`catalog.schema.table`).
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(catalog), Some(schema), Some(table)) => Some(Self::new(catalog, schema, table)),
            _ => None,
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.schema, self.table)
    }
}

/// How a partition value is derived from its source column (Iceberg's transforms; Delta tables
/// partition by plain columns, i.e. [`Transform::Identity`] only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The column's value.
    Identity,
    /// Years since 1970 of a date or timestamp.
    Year,
    /// Months since 1970-01.
    Month,
    /// The date.
    Day,
    /// Hours since the epoch.
    Hour,
    /// A hash of the value modulo N.
    Bucket(u32),
    /// The value truncated to width W (strings: the first W characters).
    Truncate(u32),
}

/// One partition field of a table: a source column and its transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// The source column.
    pub column: String,
    /// How the partition value is derived from it.
    pub transform: Transform,
}

impl fmt::Display for PartitionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = &self.column;
        match self.transform {
            Transform::Identity => write!(f, "{column}"),
            Transform::Year => write!(f, "year({column})"),
            Transform::Month => write!(f, "month({column})"),
            Transform::Day => write!(f, "day({column})"),
            Transform::Hour => write!(f, "hour({column})"),
            Transform::Bucket(n) => write!(f, "bucket({n}, {column})"),
            Transform::Truncate(w) => write!(f, "truncate({w}, {column})"),
        }
    }
}

/// How a run's files change the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Add the files (`INSERT INTO`).
    #[default]
    Append,
    /// Replace everything in the table with the files (`INSERT OVERWRITE`).
    Overwrite,
    /// Replace the partitions that the files have rows for, keep the others (dynamic partition
    /// overwrite; on an unpartitioned table the same as [`WriteMode::Overwrite`]).
    OverwritePartitions,
}

impl WriteMode {
    /// The mode as written in `WITH (mode = '...')`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Overwrite => "overwrite",
            WriteMode::OverwritePartitions => "overwrite_partitions",
        }
    }
}

/// Who a commit is for: what the coordinator tells the table format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// The run id (UUIDv7).
    pub run_id: String,
    /// The pipeline, `None` for an ad-hoc write.
    pub pipeline: Option<String>,
    /// The run's number within its pipeline (1, 2, ...), for Delta's `txn` action.
    pub sequence: i64,
    /// The table's snapshot / version when the run started: its commit can only be later.
    pub base: Option<i64>,
    /// Which attempt of the run this is (1, then one more for each `RETRY RUN`): recovery fences
    /// off one attempt, and a later attempt may still commit.
    pub attempt: i64,
}

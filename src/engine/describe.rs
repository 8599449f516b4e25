//! Describing tables: `DESCRIBE t` / `\d t` (columns, then format, location, partitioning and
//! snapshot), `SHOW CREATE TABLE t`, and finding a table by its bare name.

use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast::ObjectName;

use super::{Engine, Output};
use crate::error::{Error, Result};
use crate::system::{ResultBatch, SYSTEM_SCHEMA, properties_batch};
use crate::table::TableName;

use datafusion::arrow::array::StringArray;

/// The DataFusion reference of a table name.
pub(super) fn reference(table: &TableName) -> TableReference {
    TableReference::full(table.catalog.clone(), table.schema.clone(), table.table.clone())
}

impl Engine {
    /// Every table of every catalog the session sees (from the listings), but the system schema's.
    pub(super) fn table_names(&self) -> Vec<TableName> {
        let mut tables = Vec::new();
        for catalog_name in self.ctx.catalog_names() {
            let Some(catalog) = self.ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table in schema.table_names() {
                    tables.push(TableName::new(&catalog_name, &schema_name, table));
                }
            }
        }
        tables.retain(|t| t.schema != "information_schema" && t.schema != SYSTEM_SCHEMA);
        tables
    }

    /// The table `name` means: as DataFusion resolves it if it exists there, else the one
    /// table of that bare name in any catalog (`\d orders` finds `lake.shop.orders`).
    async fn locate_table(&self, name: &ObjectName) -> Result<TableName> {
        let reference = TableReference::parse_str(&name.to_string());
        let resolved = self.resolve(&reference);
        if self.ctx.table_exist(reference.clone())? {
            return Ok(resolved);
        }
        let tables = self.table_names();
        let same: Vec<&TableName> = match &reference {
            TableReference::Bare { table } => tables.iter().filter(|t| t.table == table.as_ref()).collect(),
            TableReference::Partial { schema, table } => {
                tables.iter().filter(|t| t.table == table.as_ref() && t.schema == schema.as_ref()).collect()
            }
            TableReference::Full { .. } => vec![],
        };
        match same.as_slice() {
            [table] => Ok((*table).clone()),
            [] => Err(Error::Plan(self.no_table(&name.to_string()))),
            several => {
                let names: Vec<String> = several.iter().map(ToString::to_string).collect();
                Err(Error::Plan(format!("`{name}` could be any of {}: name it in full", names.join(", "))))
            }
        }
    }

    /// `DESCRIBE t`: each column's name, type and nullability; for a catalog table, also its
    /// format, location, partitioning and current snapshot / version.
    pub(super) async fn describe_table(&self, name: &ObjectName) -> Result<Output> {
        let table = self.locate_table(name).await?;
        let provider = self.ctx.table_provider(reference(&table)).await?;
        let schema = provider.schema();
        let column = |f: fn(&datafusion::arrow::datatypes::Field) -> String| {
            StringArray::from_iter_values(schema.fields().iter().map(|field| f(field)))
        };
        let batch = ResultBatch::default()
            .column("column_name", false, column(|f| f.name().clone()))
            .column("data_type", false, column(|f| f.data_type().to_string()))
            .column("is_nullable", false, column(|f| if f.is_nullable() { "YES" } else { "NO" }.to_string()))
            .build();
        let mut details = vec![("Table".to_string(), table.to_string())];
        if let Some(catalog) = self.catalog_of(&table.catalog) {
            let writer = catalog.writer(&table).await?;
            let fields: Vec<String> = writer.partitioning().iter().map(ToString::to_string).collect();
            let partitioning = if fields.is_empty() { "none".to_string() } else { fields.join(", ") };
            let current = writer.base().map_or_else(|| "none (empty)".to_string(), |id| id.to_string());
            details.extend([
                ("Format".to_string(), writer.format().to_string()),
                ("Location".to_string(), writer.location().to_string()),
                ("Partitioned by".to_string(), partitioning),
                ("Current snapshot / version".to_string(), current),
            ]);
        }
        Ok(Output { details, ..Output::rows(batch) })
    }

    /// `SHOW CREATE TABLE t`: a statement that creates the table again (columns, NOT NULL,
    /// partitioning; for an external table, the statement that made it).
    pub(super) async fn show_create_table(&self, name: &ObjectName) -> Result<Output> {
        let table = self.locate_table(name).await?;
        let statement = match self.catalog_of(&table.catalog) {
            Some(catalog) => {
                let writer = catalog.writer(&table).await?;
                create_table_sql(
                    &table,
                    writer.schema(),
                    &writer.partitioning().iter().map(ToString::to_string).collect::<Vec<_>>(),
                )?
            }
            None => {
                let tables = self.ledger.session_tables().await?;
                let name = table.to_string();
                match tables.into_iter().find(|(t, _)| *t == name) {
                    Some((_, definition)) => definition,
                    None => {
                        let provider = self.ctx.table_provider(reference(&table)).await?;
                        create_table_sql(&table, &provider.schema(), &[])?
                    }
                }
            }
        };
        Ok(Output::rows(properties_batch(&[("create_statement", statement)])))
    }
}

/// `CREATE TABLE` for `schema`, in the types Sluice's SQL reads back.
fn create_table_sql(table: &TableName, schema: &Schema, partitioned_by: &[String]) -> Result<String> {
    let mut columns = Vec::new();
    for field in schema.fields() {
        let sql_type = sql_type(field.data_type()).ok_or_else(|| {
            Error::Unsupported(format!(
                "SHOW CREATE TABLE `{table}`: column `{}` has type {}",
                field.name(),
                field.data_type()
            ))
        })?;
        let not_null = if field.is_nullable() { "" } else { " NOT NULL" };
        columns.push(format!("  {} {sql_type}{not_null}", quote(field.name())));
    }
    let name = [&table.catalog, &table.schema, &table.table].map(|p| quote(p)).join(".");
    let mut sql = format!("CREATE TABLE {name} (\n{}\n)", columns.join(",\n"));
    if !partitioned_by.is_empty() {
        sql.push_str(&format!(" PARTITIONED BY ({})", partitioned_by.join(", ")));
    }
    Ok(sql)
}

/// An identifier as SQL reads it back: bare when it is lower-case letters, digits and `_`.
fn quote(name: &str) -> String {
    let bare = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// The SQL type of an Arrow type, for the types Sluice's tables hold.
fn sql_type(data_type: &DataType) -> Option<String> {
    Some(match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time64(TimeUnit::Microsecond) => "TIME".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        _ => return None,
    })
}

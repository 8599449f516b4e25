//! Errors that help: DataFusion's planning errors rewritten to name what the user wrote (the
//! table, the column, the file) with the position DataFusion knows, and a "did you mean" for
//! near names.

use datafusion::common::{DataFusionError, SchemaError, TableReference};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Insert, SetExpr, Spanned, Statement as SqlStatement, TableObject, Value, ValueWithSpan,
};

use super::Engine;
use crate::error::Error;
use crate::suggest::{closest, did_you_mean};

/// File extensions DataFusion reads as tables (`SELECT * FROM 'f.csv'`).
const FILE_EXTENSIONS: [&str; 8] = [".csv", ".tsv", ".parquet", ".json", ".jsonl", ".ndjson", ".avro", ".arrow"];

impl Engine {
    /// `error`, from planning or running `statement`, said in the user's terms where we can.
    pub(super) async fn diagnose(&self, error: DataFusionError, statement: &DFStatement) -> Error {
        let span = error.diagnostic().and_then(|d| d.span).map(|s| (s.start.line, s.start.column));
        let insert = match statement {
            DFStatement::Statement(s) => match s.as_ref() {
                SqlStatement::Insert(insert) => Some(insert),
                _ => None,
            },
            _ => None,
        };
        let root = error.find_root();
        let text = root.message();
        let message = if let DataFusionError::SchemaError(schema_error, _) = root
            && let SchemaError::FieldNotFound { field, valid_fields } = schema_error.as_ref()
        {
            let names: Vec<&str> = valid_fields.iter().map(|f| f.name.as_str()).collect();
            let hint = did_you_mean(&field.name, names.iter().copied());
            Some(format!("column `{}` does not exist{hint}; the columns are: {}", field.name, names.join(", ")))
        } else if let Some(table) = table_not_found(&text) {
            Some(self.no_table(table))
        } else if let Some(insert) = insert {
            self.insert_error(insert, &text).await
        } else {
            None
        };
        let Some(message) = message else { return with_position(error.into(), span) };
        let located = match insert.zip(cast_literal(&error.to_string())) {
            Some((insert, literal)) => literal_span(insert, &literal).or(span),
            None => span,
        };
        with_position(Error::Plan(message), located)
    }

    /// "table does not exist", with the file, catalog or table the user may have meant: a table
    /// of a near name in the same schema (or, for a bare name, anywhere).
    pub(super) fn no_table(&self, name: &str) -> String {
        let state = self.ctx.state();
        let defaults = &state.config_options().catalog;
        let default_prefix = format!("{}.{}.", defaults.default_catalog, defaults.default_schema);
        let written = name.strip_prefix(&default_prefix).unwrap_or(name);
        if FILE_EXTENSIONS.iter().any(|ext| written.to_lowercase().ends_with(ext)) || written.contains('/') {
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            return format!("file `{written}` not found (relative paths start at {cwd})");
        }
        let reference = TableReference::parse_str(written);
        if let Some(catalog) = reference.catalog()
            && !self.ctx.catalog_names().iter().any(|c| c == catalog)
        {
            let names = self.ctx.catalog_names();
            let hint = did_you_mean(catalog, names.iter().map(String::as_str));
            return format!("catalog `{catalog}` does not exist{hint} (catalogs: {})", names.join(", "));
        }
        let tables = self.table_names();
        let resolved = self.resolve(&reference);
        let hint = match reference {
            TableReference::Bare { .. } => did_you_mean(written, tables.iter().map(|t| t.table.as_str())),
            _ => {
                let same_schema =
                    tables.iter().filter(|t| t.catalog == resolved.catalog && t.schema == resolved.schema);
                match closest(&resolved.table, same_schema.map(|t| t.table.as_str())) {
                    Some(table) => format!(" (did you mean `{}.{}.{table}`?)", resolved.catalog, resolved.schema),
                    None => String::new(),
                }
            }
        };
        format!("table `{written}` does not exist{hint}")
    }

    /// An `INSERT`'s column-count and NOT NULL errors, naming the table's columns.
    async fn insert_error(&self, insert: &Insert, text: &str) -> Option<String> {
        let TableObject::TableName(name) = &insert.table else { return None };
        let table = self.resolve(&TableReference::parse_str(&name.to_string()));
        let provider = self.ctx.table_provider(super::describe::reference(&table)).await.ok()?;
        let schema = provider.schema();
        let columns: Vec<String> = match insert.columns.is_empty() {
            true => schema.fields().iter().map(|f| f.name().clone()).collect(),
            false => insert.columns.iter().map(|c| c.value.clone()).collect(),
        };
        let listed = columns.join(", ");
        if let Some(rest) = text.strip_prefix("Inconsistent data length across values list: got ") {
            let (count, rest) = rest.split_once(" values in row ")?;
            let row: usize = rest.split_whitespace().next()?.parse().ok()?;
            return Some(format!(
                "row {} of VALUES has {count} value(s), but `{table}` takes {} column(s): {listed}",
                row + 1,
                columns.len()
            ));
        }
        if let Some(rest) = text.split("Column 'column").nth(1)
            && text.contains("is declared as non-nullable but contains null values")
        {
            let index: usize = rest.split('\'').next()?.parse().ok()?;
            let column = columns.get(index.checked_sub(1)?)?;
            return Some(format!("column `{column}` of `{table}` is NOT NULL, but VALUES gives it a NULL"));
        }
        if text == "Column count doesn't match insert query!" {
            let given = query_width(insert)
                .map(|n| format!("{n} column(s)"))
                .unwrap_or_else(|| "a different number of columns".into());
            let more = query_width(insert).is_some_and(|n| n > columns.len());
            let grow = match more {
                true => {
                    "; INSERT INTO t WITH (schema_evolution = 'add_columns') SELECT ... (or a pipeline WITH it) adds the columns the table lacks, by name"
                }
                false => "",
            };
            return Some(format!(
                "the query gives {given}, but `{table}` takes {}: {listed} (INSERT INTO {table} (column, ...) SELECT ... fills the columns it names, the others with NULL{grow})",
                columns.len()
            ));
        }
        if let Some(number) = overflowing_literal(text) {
            let index = values_rows(insert)?.iter().find_map(|row| row.iter().position(|e| is_number(e, &number)))?;
            let column = columns.get(index)?;
            let data_type = schema.field_with_name(column).map(|f| f.data_type().to_string()).unwrap_or_default();
            return Some(format!("column `{column}` of `{table}` is {data_type}: the value {number} does not fit it"));
        }
        let literal = cast_literal(text)?;
        let index = literal_column(insert, &literal)?;
        let column = columns.get(index)?;
        let data_type = schema.field_with_name(column).map(|f| f.data_type().to_string()).unwrap_or_default();
        Some(format!("cannot insert '{literal}' into column `{column}` ({data_type}) of `{table}`: {text}"))
    }
}

/// The table in DataFusion's "table 'x' not found".
fn table_not_found(message: &str) -> Option<&str> {
    message.strip_prefix("table '")?.strip_suffix("' not found")
}

/// The string in a failed cast of a literal: "Cannot cast string 'x' to ...".
fn cast_literal(text: &str) -> Option<String> {
    let rest = text.split("Cannot cast string '").nth(1)?;
    Some(rest.split_once("' to ")?.0.to_string())
}

/// The number in a failed cast of a literal: "Can't cast value 3000000000 to type Int32".
fn overflowing_literal(text: &str) -> Option<String> {
    let rest = text.split("Can't cast value ").nth(1)?;
    Some(rest.split_once(" to type ")?.0.to_string())
}

/// How many columns the query of an `INSERT ... SELECT` gives, when its SELECT list says so.
fn query_width(insert: &Insert) -> Option<usize> {
    match insert.source.as_ref()?.body.as_ref() {
        SetExpr::Select(select) => select
            .projection
            .iter()
            .all(|item| {
                matches!(
                    item,
                    datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(_)
                        | datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { .. }
                )
            })
            .then_some(select.projection.len()),
        SetExpr::Values(values) => values.rows.first().map(Vec::len),
        _ => None,
    }
}

fn is_number(expr: &Expr, number: &str) -> bool {
    match expr {
        Expr::Value(ValueWithSpan { value: Value::Number(n, _), .. }) => n == number,
        Expr::UnaryOp { expr, .. } => is_number(expr, number.trim_start_matches('-')),
        _ => false,
    }
}

/// The VALUES rows of an `INSERT ... VALUES`.
fn values_rows(insert: &Insert) -> Option<&Vec<Vec<Expr>>> {
    match insert.source.as_ref()?.body.as_ref() {
        SetExpr::Values(values) => Some(&values.rows),
        _ => None,
    }
}

fn is_literal(expr: &Expr, literal: &str) -> bool {
    matches!(expr, Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(s), .. }) if s == literal)
}

/// Which column of the VALUES holds `literal`.
fn literal_column(insert: &Insert, literal: &str) -> Option<usize> {
    values_rows(insert)?.iter().find_map(|row| row.iter().position(|e| is_literal(e, literal)))
}

/// Where `literal` stands in the statement: (line, column).
fn literal_span(insert: &Insert, literal: &str) -> Option<(u64, u64)> {
    let rows = values_rows(insert)?;
    let span = rows.iter().flatten().find(|e| is_literal(e, literal)).map(Spanned::span)?;
    Some((span.start.line, span.start.column))
}

/// `error` at `position` (line, column), when it has one.
fn with_position(error: Error, position: Option<(u64, u64)>) -> Error {
    match position {
        Some((line, column)) if line > 0 => Error::At { line, column, source: Box::new(error) },
        _ => error,
    }
}

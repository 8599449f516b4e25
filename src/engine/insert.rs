//! `INSERT` as PostgreSQL and DuckDB take it: the query's columns map to the table's by position
//! (or by the column list), so a SELECT list with repeated names (`SELECT value, value`) is not
//! an error; and values reach the table's types only through the checked casts of
//! [`crate::runtime::conform`], never through a cast that could drop digits or wrap around.

use datafusion::common::Result as DFResult;
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, Projection};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Ident, Query, SelectItem, SetExpr, Statement as SqlStatement};

use crate::runtime::is_widening;

/// `statement`, where it is an `INSERT ... SELECT`, with a positional alias on every unnamed
/// SELECT item whose name repeats another's (DataFusion requires unique names in a projection;
/// an INSERT only uses positions).
pub(super) fn positional(statement: SqlStatement) -> SqlStatement {
    match statement {
        SqlStatement::Insert(mut insert) => {
            if let Some(source) = insert.source.as_mut() {
                alias_repeated(source);
            }
            SqlStatement::Insert(insert)
        }
        other => other,
    }
}

/// [`positional`] of a DataFusion statement.
pub(super) fn positional_df(statement: DFStatement) -> DFStatement {
    match statement {
        DFStatement::Statement(sql) => DFStatement::Statement(Box::new(positional(*sql))),
        other => other,
    }
}

fn alias_repeated(query: &mut Query) {
    alias_repeated_in(query.body.as_mut());
}

fn alias_repeated_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            let name = |item: &SelectItem| match item {
                SelectItem::UnnamedExpr(expr) => Some(output_name(expr)),
                SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
                _ => None,
            };
            let names: Vec<Option<String>> = select.projection.iter().map(name).collect();
            for (i, item) in select.projection.iter_mut().enumerate() {
                let repeated =
                    names[i].as_ref().is_some_and(|n| names.iter().filter(|m| m.as_ref() == Some(n)).count() > 1);
                if let (true, SelectItem::UnnamedExpr(expr)) = (repeated, &*item) {
                    let alias = Ident::with_quote('"', format!("column{}", i + 1));
                    *item = SelectItem::ExprWithAlias { expr: expr.clone(), alias };
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            alias_repeated_in(left.as_mut());
            alias_repeated_in(right.as_mut());
        }
        SetExpr::Query(query) => alias_repeated(query.as_mut()),
        _ => {}
    }
}

/// The name DataFusion gives an unnamed SELECT item, as far as it can repeat another's: a column's
/// own name (a cast keeps it), else the expression's text.
fn output_name(expr: &datafusion::sql::sqlparser::ast::Expr) -> String {
    use datafusion::sql::sqlparser::ast::Expr;
    match expr {
        Expr::Identifier(ident) => ident.value.to_lowercase(),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.to_lowercase()).unwrap_or_default(),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => output_name(expr),
        other => other.to_string().to_lowercase(),
    }
}

/// The rows of an INSERT (DataFusion's projection onto the table's columns) without the casts
/// that could change a value (narrowing, float to integer, string to number): the shards cast
/// those with checks instead. Widening casts stay.
pub(super) fn without_lossy_casts(input: LogicalPlan) -> DFResult<LogicalPlan> {
    let LogicalPlan::Projection(projection) = input else { return Ok(input) };
    let schema = projection.input.schema().clone();
    let mut changed = false;
    let exprs = projection
        .expr
        .iter()
        .map(|expr| {
            if let Expr::Alias(Alias { expr: inner, relation, name, .. }) = expr
                && let Expr::Cast(cast) = inner.as_ref()
                && !is_widening(&cast.expr.get_type(&schema)?, &cast.data_type)
            {
                changed = true;
                return Ok(Expr::Alias(Alias::new(cast.expr.as_ref().clone(), relation.clone(), name.clone())));
            }
            Ok(expr.clone())
        })
        .collect::<DFResult<Vec<_>>>()?;
    match changed {
        true => Ok(LogicalPlan::Projection(Projection::try_new(exprs, projection.input.clone())?)),
        false => Ok(LogicalPlan::Projection(projection)),
    }
}

//! The planner: turns a write's input into a physical plan with exactly N output partitions, the
//! shards.
//!
//! The shard split is applied to the *optimized* physical plan, so no optimizer rule can fold it
//! away: a run always has the shard count it asked for and, downstream, always one commit. Rows
//! of a partitioned table are hash-split by their partition key, so each table partition is
//! written by one shard (tables partitioned only by `bucket` are split by the bucket column's
//! value instead); rows of an unpartitioned table are spread round-robin by batch.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::{Column, DFSchema};
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::functions::expr_fn::{date_trunc, left};
use datafusion::logical_expr::{Expr, lit};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning, PhysicalExpr};

use crate::table::{PartitionField, Transform};

/// Expressions over the input whose values are equal for all rows of one table partition (they
/// may put several partitions together, never split one). `bucket` fields are left out (their
/// hash is not DataFusion's), unless nothing else is left: then rows are split by the column.
pub fn partition_key(fields: &[PartitionField], input: &Schema) -> Vec<Expr> {
    let unbucketed: Vec<&PartitionField> =
        fields.iter().filter(|f| !matches!(f.transform, Transform::Bucket(_))).collect();
    let fields = if unbucketed.is_empty() { fields.iter().collect() } else { unbucketed };
    fields
        .into_iter()
        .map(|field| {
            let column = Expr::Column(Column::new_unqualified(&field.column));
            let unit = |unit: &str| date_trunc(lit(unit), column.clone());
            match field.transform {
                Transform::Identity | Transform::Bucket(_) => column,
                Transform::Year => unit("year"),
                Transform::Month => unit("month"),
                Transform::Day => unit("day"),
                Transform::Hour => unit("hour"),
                Transform::Truncate(width) => {
                    let is_text = input.field_with_name(&field.column).is_ok_and(|f| {
                        matches!(f.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
                    });
                    if is_text { left(column, lit(width as i64)) } else { column / lit(width as i64) }
                }
            }
        })
        .collect()
}

/// `partition_key` as physical expressions over `plan`'s output.
pub fn physical_partition_key(
    state: &SessionState,
    fields: &[PartitionField],
    plan: &Arc<dyn ExecutionPlan>,
) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    let schema = plan.schema();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    partition_key(fields, &schema).into_iter().map(|expr| state.create_physical_expr(expr, &df_schema)).collect()
}

/// Gives `plan` exactly `shards` output partitions: hash-split by `key` when there is one,
/// otherwise round-robin by batch (unless it already has exactly that many).
pub fn shard_plan(
    plan: Arc<dyn ExecutionPlan>,
    shards: usize,
    key: Vec<Arc<dyn PhysicalExpr>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partitioning = if key.is_empty() {
        if plan.output_partitioning().partition_count() == shards {
            return Ok(plan);
        }
        Partitioning::RoundRobinBatch(shards)
    } else {
        Partitioning::Hash(key, shards)
    };
    Ok(Arc::new(RepartitionExec::try_new(plan, partitioning)?))
}

//! The planner: turns a write's logical plan into a physical plan with exactly N output
//! partitions, the shards.
//!
//! The shard split is applied to the *optimized* physical plan, so no optimizer rule can fold it
//! away: a run always has the shard count it asked for and, downstream, always one commit.

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

/// The default number of shards: the cores available to this process.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Gives `plan` exactly `shards` output partitions (round-robin by batch), unless it already
/// has exactly that many.
pub fn shard_plan(plan: Arc<dyn ExecutionPlan>, shards: usize) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.output_partitioning().partition_count() == shards {
        return Ok(plan);
    }
    Ok(Arc::new(RepartitionExec::try_new(plan, Partitioning::RoundRobinBatch(shards))?))
}

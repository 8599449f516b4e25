//! The runtime: runs each output partition of a physical plan as its own task (a shard), each
//! streaming its rows through the shard loop ([`ShardSink`]) into a table format's files
//! ([`TableFormat`]), for the run described by a [`RunContext`].
//!
//! All shards run concurrently; DataFusion's repartitioning feeds them through bounded channels,
//! so they must be driven together. When one shard fails, the others are cancelled and the runtime
//! waits until every task has stopped before reporting, so the caller can clean up knowing that
//! no shard is still writing. Cancelling is cooperative: the other shards' inputs end with an
//! error at their next batch, so a shard finishes (or abandons) the file it is writing through
//! its own code path. Aborting the tasks instead would drop them at any await, with an upload's
//! blocking file operations still running, and a file could appear after the rollback deleted it.

use std::future::Future;
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ledger::LedgerError;

mod conform;
mod context;
pub mod format;
mod kept;
mod sink;

pub use conform::{conform, is_widening};
pub use context::RunContext;
pub use format::{CommitError, Fence, FileWriter, HeldCommit, StagedFile, TableFormat, TableWriter};
pub use kept::Kept;
pub use sink::ShardSink;

/// Boxed error from a table-format writer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default number of shards: the cores available to this process.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Why a shard failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The shard's input (the query) failed.
    #[error("shard {shard}: {source}")]
    Input {
        /// Shard index.
        shard: usize,
        /// The DataFusion error.
        source: DataFusionError,
    },
    /// A row did not fit the table (schema enforcement: [`conform`]).
    #[error("shard {shard}: {source}")]
    Unfit {
        /// Shard index.
        shard: usize,
        /// What did not fit, and where.
        source: DataFusionError,
    },
    /// Writing a data file failed.
    #[error("shard {shard}: writing {path} failed: {source}")]
    Write {
        /// Shard index.
        shard: usize,
        /// The file being written.
        path: String,
        /// The writer's error.
        source: BoxError,
    },
    /// The ledger could not record the shard's progress.
    #[error("shard {shard}: {source}")]
    Ledger {
        /// Shard index.
        shard: usize,
        /// The ledger error.
        source: LedgerError,
    },
    /// A test failpoint fired.
    #[error("shard {shard}: injected failure at failpoint `{failpoint}`")]
    Injected {
        /// Shard index.
        shard: usize,
        /// Failpoint name.
        failpoint: String,
    },
    /// The run was cancelled (Ctrl-C, `CANCEL`, or its caller dropped it) while the shard ran.
    #[error("cancelled while its shards were writing")]
    Cancelled,
    /// The shard's task panicked.
    #[error("shard {shard}: task panicked: {message}")]
    Panicked {
        /// Shard index.
        shard: usize,
        /// The panic message.
        message: String,
    },
}

/// Runs partition `i` of `plan` as shard `i`, each in its own tokio task, with `write_shard`
/// consuming the partition's stream. Returns every shard's output in shard order, or the first
/// failure once all tasks have stopped; [`ShardError::Cancelled`] when `run_cancel` fired.
pub async fn run_shards<T, F, Fut>(
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
    run_cancel: &CancellationToken,
    write_shard: F,
) -> Result<Vec<T>, ShardError>
where
    T: Send + 'static,
    F: Fn(usize, SendableRecordBatchStream) -> Fut,
    Fut: Future<Output = Result<T, ShardError>> + Send + 'static,
{
    let shards = plan.output_partitioning().partition_count();
    // Open every stream before starting any task: a plan that fails to start leaves nothing running.
    let streams = (0..shards)
        .map(|shard| plan.execute(shard, task_ctx.clone()).map_err(|source| ShardError::Input { shard, source }))
        .collect::<Result<Vec<_>, _>>()?;
    // Fired by the first failing shard, or by the run's own cancel.
    let cancel = run_cancel.child_token();
    let mut tasks = JoinSet::new();
    let mut task_shards = std::collections::HashMap::new();
    for (shard, stream) in streams.into_iter().enumerate() {
        let task = write_shard(shard, cancellable(stream, cancel.clone()));
        let handle = tasks.spawn(async move { (shard, task.await) });
        task_shards.insert(handle.id(), shard);
    }
    let mut outputs: Vec<Option<T>> = (0..shards).map(|_| None).collect();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = match joined {
            Ok((shard, result)) => result.map(|output| (shard, output)),
            Err(e) if e.is_cancelled() => continue,
            Err(e) => Err(ShardError::Panicked { shard: task_shards[&e.id()], message: e.to_string() }),
        };
        match result {
            Ok((shard, output)) => outputs[shard] = Some(output),
            Err(error) => {
                if failure.is_none() {
                    failure = Some(error);
                    cancel.cancel();
                }
            }
        }
    }
    match failure {
        Some(_) if run_cancel.is_cancelled() => Err(ShardError::Cancelled),
        Some(error) => Err(error),
        None => Ok(outputs.into_iter().map(|o| o.expect("every shard reported")).collect()),
    }
}

/// `input`, ending with an error at the next batch once `cancel` fires.
fn cancellable(input: SendableRecordBatchStream, cancel: CancellationToken) -> SendableRecordBatchStream {
    let schema = input.schema();
    let batches = futures::stream::unfold(Some(input), move |input| {
        let cancel = cancel.clone();
        async move {
            let mut input = input?;
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    let error = DataFusionError::Execution("cancelled (the run was cancelled, or another shard failed)".into());
                    Some((Err(error), None))
                }
                next = input.next() => next.map(|batch| (batch, Some(input))),
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

//! The Iceberg and Delta commit coordinators: shards stage Parquet data files through the
//! table's [`TableWriter`]; `on_finish` publishes all of them in one snapshot (Iceberg) or
//! version (Delta); `on_error` deletes them.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use tokio::sync::Semaphore;

use super::{Coordinator, CoordinatorError, RunContext, ShardResult};
use crate::catalog::TableName;
use crate::planner;
use crate::runtime::ShardError;
use crate::sinks::{CommitError, RunIdentity, ShardSink, StagedFile, TableWriter, WriteMode};

/// Commits a run into an Iceberg or Delta table: one snapshot / version, or nothing.
#[derive(Debug)]
pub struct TableCommit {
    name: String,
    table: TableName,
    writer: Arc<dyn TableWriter>,
    partition_key: Vec<Arc<dyn PhysicalExpr>>,
    mode: WriteMode,
    /// Files the run's shards may write at once when their input has ended: one per core.
    writers: Arc<Semaphore>,
}

impl TableCommit {
    /// Commits into `table` through `writer` (which knows the format: `iceberg-commit` or
    /// `delta-commit`), splitting rows into shards by `partition_key` (expressions over the
    /// input; empty: round-robin), appending or replacing as `mode` says.
    pub fn new(
        table: TableName,
        writer: Arc<dyn TableWriter>,
        partition_key: Vec<Arc<dyn PhysicalExpr>>,
        mode: WriteMode,
    ) -> Self {
        let name = format!("{}-commit", writer.format());
        let writers = Arc::new(Semaphore::new(planner::default_shards()));
        Self { name, table, writer, partition_key, mode, writers }
    }

    fn error(&self, source: impl Into<crate::runtime::BoxError>) -> CoordinatorError {
        CoordinatorError::new(&self.name, source)
    }
}

#[async_trait]
impl Coordinator for TableCommit {
    fn name(&self) -> &str {
        &self.name
    }

    /// Fails before anything is written when the rows cannot be stored in the table; hash-splits
    /// a partitioned table's rows by partition so that each partition is written by one shard.
    fn prepare_shards(
        &self,
        input: Arc<dyn ExecutionPlan>,
        shards: usize,
    ) -> Result<Arc<dyn ExecutionPlan>, CoordinatorError> {
        check_fits(&input.schema(), self.writer.schema()).map_err(|e| self.error(e))?;
        planner::shard_plan(input, shards, self.partition_key.clone()).map_err(|e| self.error(e))
    }

    async fn write_shard(
        &self,
        run: &RunContext,
        shard: usize,
        input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        ShardSink::new(run, &self.table, self.writer.clone())
            .with_writers(self.writers.clone())
            .write_shard(shard, input)
            .await
    }

    /// Appending nothing, or replacing the partitions of no rows, changes nothing; replacing the
    /// whole table with no rows empties it. When the commit fails, the table may still have taken
    /// it (the answer was lost): the run is looked up in the table's history before giving up.
    async fn on_finish(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        let files: Vec<StagedFile> = shards.iter().flat_map(|s| s.files.iter().cloned()).collect();
        if files.is_empty() && self.mode != WriteMode::Overwrite {
            return Ok(None);
        }
        match commit_through_failpoints(self.writer.as_ref(), files, run.identity(), self.mode, run.target()).await {
            Ok(id) => Ok(Some(id)),
            Err(error) => match self.writer.find_run(run.identity()).await {
                Ok(Some(id)) => Ok(Some(id)),
                _ => Err(self.error(error)),
            },
        }
    }

    async fn on_error(&self, run: &RunContext, _error: &str) -> Result<(), CoordinatorError> {
        let root = self.writer.location();
        run.delete_staged(&self.name, root, |location| async move { self.writer.delete_file(&location).await }).await
    }

    async fn find_commit(&self, run: &RunContext) -> Result<Option<i64>, CoordinatorError> {
        self.writer.find_run(run.identity()).await.map_err(|e| self.error(e))
    }
}

/// The table's commit, with the test failpoints around the catalog call: `commit-refused` (the
/// request never reaches the catalog) and `commit-response-lost` (the catalog took the commit,
/// but its answer never came back: the outcome is unknown to the caller).
async fn commit_through_failpoints(
    writer: &dyn TableWriter,
    files: Vec<StagedFile>,
    run: &RunIdentity,
    mode: WriteMode,
    target: &str,
) -> Result<i64, CommitError> {
    let injected = |failpoint: String| CommitError::new(format!("injected failure at failpoint `{failpoint}`"));
    crate::failpoint::check("commit-refused", target).map_err(injected)?;
    let committed = writer.commit(files, run, mode).await?;
    crate::failpoint::check("commit-response-lost", target).map_err(injected)?;
    Ok(committed)
}

/// Fails before any file is written when the input's columns cannot be stored in the table.
fn check_fits(input: &Schema, target: &Schema) -> Result<(), String> {
    if input.fields().len() != target.fields().len() {
        return Err(format!(
            "the input has {} columns but the table has {}",
            input.fields().len(),
            target.fields().len()
        ));
    }
    for (have, want) in input.fields().iter().zip(target.fields()) {
        if !datafusion::arrow::compute::can_cast_types(have.data_type(), want.data_type()) {
            return Err(format!(
                "column `{}` is {} in the table, and {} cannot be converted to it",
                want.name(),
                want.data_type(),
                have.data_type()
            ));
        }
    }
    Ok(())
}

//! [`RunContext`]: the run a shard, a writer or a coordinator's hook works for.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use datafusion::execution::memory_pool::{MemoryPool, UnboundedMemoryPool};

use super::BoxError;
use crate::clock::ClockRef;
use crate::ledger::{Ledger, LedgerError};
use crate::table::RunIdentity;

/// The run a coordinator's hook, a shard or a commit is working for.
#[derive(Debug, Clone)]
pub struct RunContext {
    identity: RunIdentity,
    target: String,
    shards: usize,
    ledger: Ledger,
    memory_pool: Arc<dyn MemoryPool>,
    /// The cluster executor that ran each shard which ran on one.
    executors: Arc<Mutex<BTreeMap<usize, String>>>,
}

impl RunContext {
    /// The context of run `identity` into `target` with `shards` shards, recording its staged
    /// files in `ledger`. The runner makes one per run; tests of a coordinator make their own.
    pub fn new(identity: RunIdentity, target: impl Into<String>, shards: usize, ledger: Ledger) -> Self {
        let memory_pool = Arc::new(UnboundedMemoryPool::default());
        Self { identity, target: target.into(), shards, ledger, memory_pool, executors: Arc::default() }
    }

    /// The same context, with rows a shard holds accounted in `pool` (the runner passes the
    /// session's, so that `--memory-limit` bounds them too; the default pool is unbounded).
    pub fn with_memory_pool(mut self, pool: Arc<dyn MemoryPool>) -> Self {
        self.memory_pool = pool;
        self
    }

    /// The memory pool that rows held by a shard are accounted in.
    pub fn memory_pool(&self) -> &Arc<dyn MemoryPool> {
        &self.memory_pool
    }

    /// The run id (UUIDv7).
    pub fn run_id(&self) -> &str {
        &self.identity.run_id
    }

    /// Who the run is: id, pipeline, sequence number and the target's version at its start.
    pub fn identity(&self) -> &RunIdentity {
        &self.identity
    }

    /// The table (`catalog.schema.table`) or file the run writes.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How many shards the run has.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The engine's clock (snapshot and file times).
    pub fn clock(&self) -> &ClockRef {
        self.ledger.clock()
    }

    /// Records that shard `shard` ran on a cluster's executor `executor` (`host:port`).
    pub async fn shard_ran_on(&self, shard: usize, executor: &str) -> Result<(), LedgerError> {
        self.ledger.shard_ran_on(self.run_id(), shard, executor).await?;
        self.ran_on().insert(shard, executor.to_string());
        Ok(())
    }

    /// The executor that ran shard `shard`: its `host:port`, or `local` (this process).
    pub fn executor_of(&self, shard: usize) -> String {
        self.ran_on().get(&shard).cloned().unwrap_or_else(|| crate::ledger::LOCAL_EXECUTOR.to_string())
    }

    /// The cluster executors that ran the run's shards, each once (none for a local run).
    pub fn executors(&self) -> Vec<String> {
        let mut executors: Vec<String> = self.ran_on().values().cloned().collect();
        executors.sort();
        executors.dedup();
        executors
    }

    fn ran_on(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, String>> {
        self.executors.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records files `shard` is about to create, before they exist (DESIGN §4 step 2): whatever
    /// happens next, rollback and recovery know to delete them. One ledger transaction (and one
    /// sync to disk) for all of them. A commit records the metadata files it writes the same way.
    pub async fn stage_files(&self, shard: usize, locations: &[String]) -> Result<(), LedgerError> {
        self.ledger.stage_files(self.run_id(), shard, locations).await
    }

    /// Deletes every file recorded with [`RunContext::stage_files`] and not committed with
    /// `delete` (again, for files a rollback deleted before: recovery re-checks them), then records
    /// them deleted. A file that is not there must not be an error. Only files inside `root` (the
    /// table's or the export's own folder, after normalisation) are deleted: a ledger entry
    /// pointing elsewhere is left alone, with a warning.
    pub async fn delete_staged<F, Fut>(&self, root: &str, delete: F) -> Result<(), BoxError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        for location in self.ledger.uncommitted_files(self.run_id()).await? {
            if !crate::paths::is_inside(root, &location) {
                tracing::warn!(run_id = %self.run_id(), "staged file {location} is not inside {root}: not deleting it");
                continue;
            }
            delete(location.clone()).await.map_err(|e| format!("deleting staged file {location}: {e}"))?;
        }
        Ok(self.ledger.mark_staged_files_deleted(self.run_id()).await?)
    }
}

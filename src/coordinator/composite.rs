//! A coordinator made of several, run in a defined order: e.g. commit, then notify.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;

use super::{Coordinator, CoordinatorError, Fence, HeldCommit, RunContext, ShardResult, StagedFile};
use crate::runtime::ShardError;

/// Chains coordinators. The first member writes the shards; the others observe.
///
/// Order: `prepare_shards`, `on_start` and `on_finish` go first to last (each member's
/// `prepare_shards` gets the plan the one before it returned); `on_error` goes last to first, as
/// an unwinding would. `find_commit` asks each member in order and takes the first answer;
/// `fence` is the first member's (the one that writes).
///
/// Errors: the first member whose `on_start` or `on_finish` fails stops the chain; the run fails
/// with its error, and `on_error` then reaches every member that was started, except one that
/// already committed, because a commit cannot be taken back. When a member committed before the
/// failure, the error carries the snapshot ([`CoordinatorError::committed`]): the run is recorded
/// as succeeded, and the caller learns which member failed after the commit. Every `on_error` is
/// called even if one fails; the first failure is returned.
#[derive(Debug)]
pub struct Composite {
    name: String,
    members: Vec<Arc<dyn Coordinator>>,
    state: Mutex<Progress>,
}

/// How far the chain got in its run.
#[derive(Debug, Default)]
struct Progress {
    /// Members whose `on_start` was called.
    started: usize,
    /// Members whose `on_finish` committed (returned a snapshot).
    committed: Vec<usize>,
}

impl Composite {
    /// Chains `members`, in that order; the first writes the shards.
    ///
    /// # Panics
    /// If `members` is empty.
    pub fn new(members: Vec<Arc<dyn Coordinator>>) -> Self {
        assert!(!members.is_empty(), "a composite coordinator needs at least one member");
        let names: Vec<&str> = members.iter().map(|m| m.name()).collect();
        let name = format!("composite({})", names.join(", "));
        Self { name, members, state: Mutex::new(Progress::default()) }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Coordinator for Composite {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare_shards(
        &self,
        input: Arc<dyn ExecutionPlan>,
        shards: usize,
    ) -> Result<Arc<dyn ExecutionPlan>, CoordinatorError> {
        self.members.iter().try_fold(input, |plan, member| member.prepare_shards(plan, shards))
    }

    async fn on_start(&self, run: &RunContext) -> Result<(), CoordinatorError> {
        for (index, member) in self.members.iter().enumerate() {
            self.progress().started = index + 1;
            member.on_start(run).await?;
        }
        Ok(())
    }

    async fn write_shard(
        &self,
        run: &RunContext,
        shard: usize,
        input: SendableRecordBatchStream,
    ) -> Result<Vec<StagedFile>, ShardError> {
        self.members[0].write_shard(run, shard, input).await
    }

    async fn on_finish(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        let mut committed = None;
        for (index, member) in self.members.iter().enumerate() {
            match member.on_finish(run, shards).await {
                Ok(Some(snapshot)) => {
                    self.progress().committed.push(index);
                    committed = committed.or(Some(snapshot));
                }
                Ok(None) => {}
                Err(mut error) => {
                    error.committed = error.committed.or(committed);
                    return Err(error);
                }
            }
        }
        Ok(committed)
    }

    /// The first member (the one that writes) holds the commit; the group's publish happens
    /// outside the run, so the members after it are not told of it.
    async fn on_hold(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<HeldCommit>, CoordinatorError> {
        self.members[0].on_hold(run, shards).await
    }

    async fn on_error(&self, run: &RunContext, error: &str) -> Result<(), CoordinatorError> {
        let (started, committed) = {
            let progress = self.progress();
            // A run settled by recovery never started here: every member cleans up.
            let started = if progress.started == 0 { self.members.len() } else { progress.started };
            (started, progress.committed.clone())
        };
        let mut first_failure = None;
        for (index, member) in self.members.iter().enumerate().take(started).rev() {
            if committed.contains(&index) {
                continue;
            }
            if let Err(e) = member.on_error(run, error).await {
                tracing::warn!(run_id = %run.run_id(), coordinator = member.name(), "on_error failed: {e}");
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    async fn find_commit(&self, run: &RunContext) -> Result<Option<i64>, CoordinatorError> {
        for member in &self.members {
            if let Some(snapshot) = member.find_commit(run).await? {
                return Ok(Some(snapshot));
            }
        }
        Ok(None)
    }

    async fn fence(&self, run: &RunContext) -> Result<Fence, CoordinatorError> {
        self.members[0].fence(run).await
    }
}

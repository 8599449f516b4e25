//! The [`Runner`]: every run through the same lifecycle, each state a value that only the
//! step before can make:
//!
//! ```text
//!  RunJob ──open──► Opened ──stage──► Staged ──prepare──► Prepared ──commit──► RunReport
//!                     │ (ledger: staging)  │ (shards' files)   │ (ledger: committing)
//!                     └────────────────────┴───────────────────┴──► rolled back (ledger: failed,
//!                                          │                          or cancelled)
//!                                          └──► cancelled: rolled back (ledger: cancelled)
//!                                                               └──► outcome unknown: left
//!                                                                    committing, for recovery
//! ```
//!
//! A run is cancelled by its job's token, or by dropping the future of [`Runner::run`]: until
//! it is `committing` it rolls back; from then on the commit goes to its end, so a run is never
//! left half-committed.
//!
//! Once every shard has staged, the job's [`super::StagedCheck`] (a data quality gate) may
//! still reject the run (rolled back). Two variants stop short of the commit, for a caller
//! that publishes with something else:
//! - [`Runner::hold`]: `committing`, its commit written but not published ([`HeldRun`]); then
//!   [`Runner::publish_together`] (one catalog transaction for a group) or [`Runner::release`];
//! - [`Runner::stage`]: staged only ([`StagedRun`]); then [`Runner::commit_staged`] or
//!   [`Runner::release_staged`] (a quarantine commits in between).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    CommitError, Coordinator, CoordinatorError, Fence, HeldCommit, Resolution, RunContext, RunJob, RunOrigin,
    RunReport, ShardResult,
};
use crate::events::{EventLog, RunEvent};
use crate::ledger::{Ledger, LedgerError, NewRun, RunRecord, RunStatus, ShardTotals};
use crate::runtime::{self, ShardError};
use crate::table::RunIdentity;

/// Errors of a run. Each names the run and its target.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The coordinator could not split the input into shards (the rows do not fit the table,
    /// say); raised before anything is recorded or written.
    #[error("cannot write into `{target}`: {source}")]
    Prepare {
        /// The table or file.
        target: String,
        /// The coordinator's error.
        source: CoordinatorError,
    },
    /// A shard failed; the run was rolled back.
    #[error("run {run_id} into `{target}` failed and was rolled back: {source}")]
    Shard {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The shard's error.
        source: ShardError,
    },
    /// The coordinator's `on_start` or `on_finish` failed; the run was rolled back.
    #[error("run {run_id} into `{target}` failed to {step} and was rolled back: {source}")]
    Coordinator {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// `start` or `commit`.
        step: &'static str,
        /// The coordinator's error.
        source: CoordinatorError,
    },
    /// The run committed, and a coordinator after the commit (a notification) failed. The
    /// commit stands and the run is recorded as succeeded: retrying it would write nothing.
    #[error(
        "run {run_id} into `{target}` committed (snapshot {snapshot_id}), but coordinator `{}` failed after the commit: {source}",
        .source.coordinator
    )]
    AfterCommit {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The snapshot / version committed.
        snapshot_id: i64,
        /// The error of the coordinator that failed.
        source: CoordinatorError,
    },
    /// Rolling back failed: some staged files may be left (the ledger still lists them, and
    /// recovery deletes them on a later start).
    #[error("run {run_id} into `{target}` failed ({error}), and rolling it back failed too: {source}")]
    RollBack {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// Why the run failed.
        error: String,
        /// Why the rollback failed.
        source: CoordinatorError,
    },
    /// A test failpoint stopped the run (rolled back, or left as a crash would leave it).
    #[error(
        "run {run_id} into `{target}` stopped by failpoint `{failpoint}`{}",
        if *.rolled_back { " and was rolled back" } else { "" }
    )]
    Injected {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The failpoint.
        failpoint: String,
        /// Whether the staged files were deleted.
        rolled_back: bool,
    },
    /// The run was cancelled before its commit: rolled back, recorded `cancelled`.
    #[error("run {run_id} into `{target}` was cancelled; nothing was committed and its staged files were deleted")]
    Cancelled {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
    },
    /// Recovery settled the run while it was staging (its process had let the lease lapse).
    #[error("run {run_id} into `{target}` lost its lease: recovery settled it while it ran; nothing was committed")]
    LeaseLost {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
    },
    /// The commit's outcome is unknown (its answer was lost and the target's history could not
    /// be read): the run stays `committing`, its files stay, and recovery settles it once its
    /// lease has lapsed.
    #[error(
        "run {run_id} into `{target}`: the commit's outcome is unknown ({source}); recovery settles it once its lease lapses (sluice recover)"
    )]
    OutcomeUnknown {
        /// The run.
        run_id: String,
        /// The table or file.
        target: String,
        /// The coordinator's error.
        source: CoordinatorError,
    },
    /// Held runs could not be published together ([`Runner::publish_together`]).
    #[error(
        "publishing {targets} together failed: {error}; {}",
        if *.rolled_back {
            "no table was published, and every run was rolled back"
        } else {
            "whether the catalog took it is unknown: the runs are left committing, and recovery settles all of them alike (sluice recover)"
        }
    )]
    Publish {
        /// The tables.
        targets: String,
        /// Why.
        error: String,
        /// Whether the runs were rolled back (false: the outcome is unknown).
        rolled_back: bool,
    },
    /// The run's staged rows failed its check ([`super::StagedCheck`]): rolled back.
    #[error("run {run_id} into `{target}` was rejected and rolled back: {reason}")]
    Rejected {
        /// The run.
        run_id: String,
        /// The table.
        target: String,
        /// Why.
        reason: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// How often a run looks for a `CANCEL RUN` from another process (with its heartbeat).
pub const CANCEL_POLL: Duration = Duration::from_millis(500);

impl RunError {
    /// The run the error is about, once it was opened.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            RunError::Shard { run_id, .. }
            | RunError::Coordinator { run_id, .. }
            | RunError::AfterCommit { run_id, .. }
            | RunError::RollBack { run_id, .. }
            | RunError::Injected { run_id, .. }
            | RunError::Cancelled { run_id, .. }
            | RunError::LeaseLost { run_id, .. }
            | RunError::OutcomeUnknown { run_id, .. }
            | RunError::Rejected { run_id, .. } => Some(run_id),
            RunError::Prepare { .. } | RunError::Publish { .. } | RunError::Ledger(_) => None,
        }
    }
}

/// Drives runs through their coordinator's lifecycle, keeping the ledger, the lease and the
/// events.
#[derive(Debug, Clone)]
pub struct Runner {
    ledger: Ledger,
    events: EventLog,
    lease: Duration,
}

/// Renews a run's lease until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A run open in the ledger (`staging`), its lease renewed until this is dropped.
struct Opened {
    run: RunContext,
    coordinator: Arc<dyn Coordinator>,
    check: Option<Arc<dyn super::StagedCheck>>,
    plan: Arc<dyn ExecutionPlan>,
    started: Instant,
    _heartbeat: Heartbeat,
}

/// A run whose commit is written but held, to be published together with other runs' (an
/// atomic pipeline's steps): `committing` in the ledger, its lease renewed until
/// [`Runner::publish_together`] publishes it or [`Runner::release`] rolls it back. Dropped
/// otherwise, it is left to recovery, which fences it off and deletes what it staged.
pub struct HeldRun {
    opened: Opened,
    totals: ShardTotals,
    commit: Option<HeldCommit>,
}

impl HeldRun {
    /// The run.
    pub fn run_id(&self) -> &str {
        self.opened.run.run_id()
    }

    /// The table it writes.
    pub fn target(&self) -> &str {
        self.opened.run.target()
    }

    /// Its commit, waiting for the swap; `None` when it has nothing to commit.
    pub fn commit(&self) -> Option<&HeldCommit> {
        self.commit.as_ref()
    }
}

impl std::fmt::Debug for HeldRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldRun").field("run_id", &self.run_id()).field("target", &self.target()).finish()
    }
}

/// A run whose shards have all staged, not yet `committing` ([`Runner::stage`]): its lease is
/// renewed until [`Runner::commit_staged`] commits it or [`Runner::release_staged`] rolls it back.
pub struct StagedRun {
    opened: Opened,
    staged: Staged,
}

impl StagedRun {
    /// The run.
    pub fn run_id(&self) -> &str {
        self.opened.run.run_id()
    }
}

impl std::fmt::Debug for StagedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedRun").field("run_id", &self.run_id()).field("target", &self.opened.run.target()).finish()
    }
}

/// Every shard has written its files.
struct Staged {
    shards: Vec<ShardResult>,
    totals: ShardTotals,
}

/// The run is `committing` in the ledger: only its commit (or recovery) settles it now.
struct Prepared(Staged);

impl Opened {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run_id(&self) -> String {
        self.run.run_id().to_string()
    }

    fn target(&self) -> String {
        self.run.target().to_string()
    }
}

impl Runner {
    /// A runner recording its runs in `ledger` and publishing their events to `events`; a run
    /// whose process stops renewing its lease for `lease` counts as abandoned.
    pub fn new(ledger: Ledger, events: EventLog, lease: Duration) -> Self {
        Self { ledger, events, lease }
    }

    fn lease_until_ms(&self) -> i64 {
        self.ledger.clock().now_ms() + self.lease.as_millis() as i64
    }

    /// Renews the run's lease every third of it (checking for a `CANCEL RUN` at least every
    /// [`CANCEL_POLL`]), and cancels the run when one asked.
    fn heartbeat(&self, run_id: &str, cancel: CancellationToken) -> Heartbeat {
        let (runner, run_id) = (self.clone(), run_id.to_string());
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep((runner.lease / 3).min(CANCEL_POLL)).await;
                match runner.ledger.renew_lease(&run_id, runner.lease_until_ms()).await {
                    Ok(true) => cancel.cancel(),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%run_id, "could not renew the run's lease: {e}"),
                }
            }
        }))
    }

    /// Settles a run left `staging` or `committing` by a process that is gone (DESIGN §4 step 5):
    /// if the target's history has the run, it succeeded; otherwise a `committing` run is fenced
    /// off first (its process may only be stalled, with its commit still to come), and then
    /// `coordinator` deletes what it staged.
    pub async fn resolve(&self, coordinator: &dyn Coordinator, record: &RunRecord) -> Result<Resolution, RunError> {
        let identity = RunIdentity {
            run_id: record.run_id.clone(),
            pipeline: record.pipeline.clone(),
            sequence: record.sequence,
            base: record.base,
            attempt: record.attempt,
        };
        let run = RunContext::new(identity, &record.target, record.shards, self.ledger.clone());
        let elapsed_ms = || (self.ledger.clock().now_ms() - record.started_at_ms).max(0) as u64;
        let settle_error = |source| self.roll_back_error(&run, "abandoned by its process", source);
        let mut found = coordinator.find_commit(&run).await.map_err(settle_error)?;
        let mut fenced = true;
        if found.is_none() && record.status == RunStatus::Committing {
            match coordinator.fence(&run).await.map_err(settle_error)? {
                Fence::Landed(snapshot_id) => found = Some(snapshot_id),
                Fence::Fenced => {}
                Fence::Unsupported => fenced = false,
            }
        }
        if let Some(snapshot_id) = found {
            let tasks = self.ledger.shard_tasks(Some(run.run_id())).await?;
            let totals: ShardTotals = tasks.iter().map(|t| t.totals).sum();
            self.ledger.run_succeeded(run.run_id(), Some(snapshot_id), totals).await?;
            self.closed(run.run_id(), Some(snapshot_id), totals, elapsed_ms()).await;
            return Ok(Resolution::Committed(snapshot_id));
        }
        // Claim it first: only then are its files ours to delete.
        let error = match fenced {
            true => "abandoned: its process stopped before the commit; staged files deleted",
            false => {
                "abandoned while committing; the catalog cannot rule out a late commit, so its staged files were kept"
            }
        };
        // Claimed only in the state it was settled for: a run that moved from `staging` to
        // `committing` meanwhile may be committing now, and is left for a recovery that fences.
        if !self.ledger.claim_abandoned(run.run_id(), record.status, error).await? {
            return Ok(Resolution::StillRunning);
        }
        if !fenced {
            self.ended(run.run_id(), error, RunStatus::Failed, elapsed_ms()).await;
            return Ok(Resolution::KeptFiles);
        }
        coordinator.on_error(&run, error).await.map_err(|source| self.roll_back_error(&run, error, source))?;
        self.ended(run.run_id(), error, RunStatus::Failed, elapsed_ms()).await;
        Ok(Resolution::RolledBack)
    }

    /// Runs `job`: prepare the shards, write every one, then publish them in one step through
    /// the coordinator, or roll back.
    ///
    /// The run goes on in a task of its own. Dropping this future cancels it like the job's
    /// token does: before the commit it rolls back (recorded `cancelled`, staged files deleted);
    /// a commit under way goes to its end. Either way the run is settled in the background.
    pub async fn run(&self, job: RunJob, task_ctx: Arc<TaskContext>) -> Result<RunReport, RunError> {
        self.in_task(job, |runner, job| async move { runner.drive(job, task_ctx).await }).await
    }

    /// Runs `job` up to its commit, which is written but not published: the run is held, to be
    /// published together with others ([`Runner::publish_together`]) or rolled back
    /// ([`Runner::release`]). Cancelled (or dropped) before that, it rolls back as in
    /// [`Runner::run`].
    pub async fn hold(&self, job: RunJob, task_ctx: Arc<TaskContext>) -> Result<HeldRun, RunError> {
        self.in_task(job, |runner, job| async move { runner.drive_held(job, task_ctx).await }).await
    }

    /// Runs `job` until every shard has staged (and its check passed), without committing: the
    /// caller does something first (a quarantine's commit), then [`Runner::commit_staged`] or
    /// [`Runner::release_staged`]. Cancelled (or dropped) before that, it rolls back.
    pub async fn stage(&self, job: RunJob, task_ctx: Arc<TaskContext>) -> Result<StagedRun, RunError> {
        self.in_task(job, |runner, job| async move {
            let cancel = job.cancel.clone();
            let opened = runner.open(job, &task_ctx).await?;
            let staged = runner.stage_shards(&opened, task_ctx, &cancel).await?;
            if cancel.is_cancelled() {
                return Err(runner.cancelled(&opened).await);
            }
            Ok(StagedRun { opened, staged })
        })
        .await
    }

    /// Commits a staged run, in a task of its own (a commit under way goes to its end).
    pub async fn commit_staged(&self, run: StagedRun) -> Result<RunReport, RunError> {
        let runner = self.clone();
        let committed = tokio::spawn(async move {
            let StagedRun { opened, staged } = run;
            let prepared = runner.prepare(&opened, staged).await?;
            runner.commit(opened, prepared).await
        });
        match committed.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(RunError::Cancelled { run_id: "(not recorded)".to_string(), target: String::new() }),
        }
    }

    /// Rolls a staged run back (recorded failed, with `error`).
    pub async fn release_staged(&self, run: StagedRun, error: &str) -> Result<(), RunError> {
        self.roll_back(&run.opened, error, RunStatus::Failed).await
    }

    /// Drives `job` in a task of its own, cancelled when this future is dropped.
    async fn in_task<T, F, Fut>(&self, job: RunJob, drive: F) -> Result<T, RunError>
    where
        T: Send + 'static,
        F: FnOnce(Runner, RunJob) -> Fut,
        Fut: Future<Output = Result<T, RunError>> + Send + 'static,
    {
        let target = job.target.clone();
        let cancel_on_drop = job.cancel.clone().drop_guard();
        // Every log line of the run carries its id (recorded once open), pipeline and target.
        let pipeline = job.origin.pipeline.as_deref().unwrap_or_default();
        let span = tracing::info_span!("run", run_id = tracing::field::Empty, %pipeline, %target);
        let joined = tokio::spawn(drive(self.clone(), job).instrument(span)).await;
        cancel_on_drop.disarm();
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: the run stays open for recovery.
            Err(_) => Err(RunError::Cancelled { run_id: "(not recorded)".to_string(), target }),
        }
    }

    async fn drive_held(&self, job: RunJob, task_ctx: Arc<TaskContext>) -> Result<HeldRun, RunError> {
        let cancel = job.cancel.clone();
        let opened = self.open(job, &task_ctx).await?;
        let staged = self.stage_shards(&opened, task_ctx, &cancel).await?;
        if cancel.is_cancelled() {
            return Err(self.cancelled(&opened).await);
        }
        // `committing` before the commit is written: from now on recovery fences the run off
        // (which fails the group's swap) before it deletes anything.
        let Prepared(Staged { shards, totals }) = self.prepare(&opened, staged).await?;
        match opened.coordinator.on_hold(&opened.run, &shards).await {
            Ok(commit) => Ok(HeldRun { opened, totals, commit }),
            Err(source) => {
                self.roll_back(&opened, &source.to_string(), RunStatus::Failed).await?;
                Err(RunError::Coordinator { run_id: opened.run_id(), target: opened.target(), step: "hold", source })
            }
        }
    }

    /// Publishes held runs together: `publish` swaps every held commit in one catalog
    /// transaction. Then every run is `succeeded`; when the swap certainly did not happen, every
    /// run is rolled back; when its outcome is unknown, every run is left `committing`, and
    /// recovery settles them all alike (the swap was one transaction: each run is in its
    /// table's history, or none is). `label` names the group for the failpoints
    /// `before-publish` (failing: all rolled back) and `after-publish` (as a crash right after
    /// the transaction: the ledger is not told).
    pub async fn publish_together<F, Fut>(
        &self,
        label: &str,
        held: Vec<HeldRun>,
        publish: F,
    ) -> Result<Vec<RunReport>, RunError>
    where
        F: FnOnce(Vec<HeldCommit>) -> Fut,
        Fut: Future<Output = Result<(), CommitError>>,
    {
        let targets = held.iter().map(|h| format!("`{}`", h.target())).collect::<Vec<_>>().join(", ");
        let commits: Vec<HeldCommit> = held.iter().filter_map(|h| h.commit.clone()).collect();
        let outcome = match crate::failpoint::check("before-publish", label) {
            Err(failpoint) => Err(CommitError::Refused(format!("injected failure at failpoint `{failpoint}`").into())),
            Ok(()) if commits.is_empty() => Ok(()),
            Ok(()) => publish(commits).await,
        };
        if let Err(e) = outcome {
            let (error, rolled_back) = (e.to_string(), e.nothing_landed());
            if rolled_back {
                self.release(held, &error, RunStatus::Failed).await?;
            }
            return Err(RunError::Publish { targets, error, rolled_back });
        }
        if let Err(failpoint) = crate::failpoint::check("after-publish", label) {
            let error = format!("stopped by failpoint `{failpoint}` after the catalog transaction");
            return Err(RunError::Publish { targets, error, rolled_back: false });
        }
        let mut reports = Vec::with_capacity(held.len());
        for HeldRun { opened, totals, commit } in held {
            let snapshot_id = commit.map(|c| c.snapshot_id);
            self.ledger.run_succeeded(&opened.run_id(), snapshot_id, totals).await?;
            self.closed(&opened.run_id(), snapshot_id, totals, opened.elapsed_ms()).await;
            reports.push(report(&opened, totals, snapshot_id));
        }
        Ok(reports)
    }

    /// Rolls held runs back (recorded `status`, with `error`): another run of their group
    /// failed, or the group was cancelled.
    pub async fn release(&self, held: Vec<HeldRun>, error: &str, status: RunStatus) -> Result<(), RunError> {
        let mut first_failure = None;
        for run in held {
            if let Err(e) = self.roll_back(&run.opened, error, status).await {
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    async fn drive(&self, job: RunJob, task_ctx: Arc<TaskContext>) -> Result<RunReport, RunError> {
        let cancel = job.cancel.clone();
        let opened = self.open(job, &task_ctx).await?;
        let staged = self.stage_shards(&opened, task_ctx, &cancel).await?;
        if cancel.is_cancelled() {
            return Err(self.cancelled(&opened).await);
        }
        let prepared = self.prepare(&opened, staged).await?;
        self.commit(opened, prepared).await
    }

    /// Rolls a cancelled run back.
    async fn cancelled(&self, opened: &Opened) -> RunError {
        match self.roll_back(opened, "cancelled", RunStatus::Cancelled).await {
            Ok(()) => RunError::Cancelled { run_id: opened.run_id(), target: opened.target() },
            Err(e) => e,
        }
    }

    /// Splits the input into shards, then records the run (`staging`) and starts its lease.
    async fn open(&self, job: RunJob, task_ctx: &TaskContext) -> Result<Opened, RunError> {
        let RunJob { target, coordinator, input, shards, base, origin, cancel, check } = job;
        let RunOrigin { pipeline, statement, retry_of, run_id: named } = origin;
        let plan = coordinator
            .prepare_shards(input, shards)
            .map_err(|source| RunError::Prepare { target: target.clone(), source })?;
        let shards = plan.output_partitioning().partition_count();
        let (run_id, sequence, attempt) = match retry_of {
            Some((run_id, sequence)) => {
                let attempt = self.ledger.reopen_run(&run_id, base, self.lease_until_ms()).await?;
                (run_id, sequence, attempt)
            }
            None => {
                let run_id = named.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                let new_run = NewRun {
                    run_id: &run_id,
                    pipeline: pipeline.as_deref(),
                    target: &target,
                    shards,
                    statement: &statement,
                    base,
                    lease_until_ms: self.lease_until_ms(),
                };
                let sequence = self.ledger.open_run(&new_run).await?;
                (run_id, sequence, 1)
            }
        };
        let identity = RunIdentity { run_id, pipeline, sequence, base, attempt };
        let run = RunContext::new(identity, target, shards, self.ledger.clone())
            .with_memory_pool(task_ctx.memory_pool().clone());
        tracing::Span::current().record("run_id", run.run_id());
        tracing::info!(run_id = %run.run_id(), target = %run.target(), shards, coordinator = coordinator.name(), "run opened");
        let opened = RunEvent::Opened {
            run_id: run.run_id().to_string(),
            pipeline: run.identity().pipeline.clone(),
            target: run.target().to_string(),
            shards,
        };
        self.events.emit(opened).await;
        let heartbeat = self.heartbeat(run.run_id(), cancel);
        Ok(Opened { run, coordinator, check, plan, started: Instant::now(), _heartbeat: heartbeat })
    }

    /// `on_start`, then every shard at once; rolls back when any fails.
    async fn stage_shards(
        &self,
        opened: &Opened,
        task_ctx: Arc<TaskContext>,
        cancel: &CancellationToken,
    ) -> Result<Staged, RunError> {
        let (run, coordinator) = (&opened.run, &opened.coordinator);
        if let Err(source) = coordinator.on_start(run).await {
            self.roll_back(opened, &source.to_string(), RunStatus::Failed).await?;
            let (run_id, target) = (opened.run_id(), opened.target());
            return Err(RunError::Coordinator { run_id, target, step: "start", source });
        }
        let shards = runtime::run_shards(opened.plan.clone(), task_ctx, cancel, |shard, stream| {
            self.clone().write_shard(coordinator.clone(), run.clone(), shard, stream)
        })
        .await;
        match shards {
            Ok(shards) => {
                if let Some(Err(reason)) = opened.check.as_ref().map(|check| check.check()) {
                    self.roll_back(opened, &reason, RunStatus::Failed).await?;
                    return Err(RunError::Rejected { run_id: opened.run_id(), target: opened.target(), reason });
                }
                let totals = shards.iter().map(|s| s.totals).sum();
                Ok(Staged { shards, totals })
            }
            Err(ShardError::Cancelled) => Err(self.cancelled(opened).await),
            Err(source) => {
                self.roll_back(opened, &source.to_string(), RunStatus::Failed).await?;
                Err(RunError::Shard { run_id: opened.run_id(), target: opened.target(), source })
            }
        }
    }

    /// Moves the run to `committing`, unless recovery took it meanwhile (its lease had lapsed):
    /// then it may not commit, and what it staged since recovery's sweep is deleted.
    async fn prepare(&self, opened: &Opened, staged: Staged) -> Result<Prepared, RunError> {
        let (run_id, target) = (opened.run_id(), opened.target());
        if let Err(failpoint) = crate::failpoint::check("before-commit", &target) {
            self.roll_back(opened, &format!("injected failure at failpoint `{failpoint}`"), RunStatus::Failed).await?;
            return Err(RunError::Injected { run_id, target, failpoint, rolled_back: true });
        }
        if !self.ledger.set_committing(&run_id).await? {
            let error = "lost its lease";
            let cleaned = opened.coordinator.on_error(&opened.run, error).await;
            cleaned.map_err(|source| self.roll_back_error(&opened.run, error, source))?;
            return Err(RunError::LeaseLost { run_id, target });
        }
        Ok(Prepared(staged))
    }

    /// `on_finish` publishes the run: succeeded, or rolled back, or (outcome unknown) left
    /// `committing` for recovery.
    async fn commit(&self, opened: Opened, prepared: Prepared) -> Result<RunReport, RunError> {
        let Prepared(Staged { shards, totals }) = prepared;
        let (run_id, target) = (opened.run_id(), opened.target());
        let snapshot_id = match opened.coordinator.on_finish(&opened.run, &shards).await {
            Ok(snapshot_id) => snapshot_id,
            // The commit stands (DESIGN §4): what failed came after it.
            Err(source) if source.committed.is_some() => {
                let snapshot_id = source.committed.expect("matched");
                if let Err(e) = opened.coordinator.on_error(&opened.run, &source.to_string()).await {
                    tracing::warn!(%run_id, "after the commit, a coordinator's on_error failed too: {e}");
                }
                self.ledger.run_succeeded(&run_id, Some(snapshot_id), totals).await?;
                self.closed(&run_id, Some(snapshot_id), totals, opened.elapsed_ms()).await;
                return Err(RunError::AfterCommit { run_id, target, snapshot_id, source });
            }
            Err(source) if source.outcome_unknown => {
                tracing::warn!(%run_id, "the commit's outcome is unknown; left for recovery: {source}");
                return Err(RunError::OutcomeUnknown { run_id, target, source });
            }
            Err(source) => {
                self.roll_back(&opened, &source.to_string(), RunStatus::Failed).await?;
                return Err(RunError::Coordinator { run_id, target, step: "commit", source });
            }
        };
        if let Err(failpoint) = crate::failpoint::check("after-commit", &target) {
            // As if the process died between the commit and the ledger update: the run stays
            // `committing` and its files, now part of the table, stay.
            return Err(RunError::Injected { run_id, target, failpoint, rolled_back: false });
        }
        self.ledger.run_succeeded(&run_id, snapshot_id, totals).await?;
        self.closed(&run_id, snapshot_id, totals, opened.elapsed_ms()).await;
        tracing::info!(%run_id, %target, rows = totals.rows, files = totals.files, ?snapshot_id, "run committed");
        Ok(report(&opened, totals, snapshot_id))
    }

    /// One shard's task: the coordinator writes it; the ledger and the events learn how it ended.
    async fn write_shard(
        self,
        coordinator: Arc<dyn Coordinator>,
        run: RunContext,
        shard: usize,
        input: SendableRecordBatchStream,
    ) -> Result<ShardResult, ShardError> {
        let started = Instant::now();
        let ledger_error = |source| ShardError::Ledger { shard, source };
        self.ledger.shard_started(run.run_id(), shard).await.map_err(ledger_error)?;
        let written = coordinator.write_shard(&run, shard, input).await;
        let elapsed = started.elapsed();
        let result = written.map(|files| ShardResult {
            shard,
            totals: ShardTotals {
                rows: files.iter().map(|f| f.rows).sum(),
                files: files.len() as u64,
                bytes: files.iter().map(|f| f.bytes).sum(),
            },
            files,
            elapsed,
        });
        let totals = result.as_ref().map(|r| r.totals).unwrap_or_default();
        let error = result.as_ref().err().map(ToString::to_string);
        let finished = RunEvent::ShardFinished {
            run_id: run.run_id().to_string(),
            shard,
            rows: totals.rows,
            files: totals.files,
            bytes: totals.bytes,
            elapsed_ms: elapsed.as_millis() as u64,
            executor: run.executor_of(shard),
            error: error.clone(),
        };
        self.events.emit(finished).await;
        let outcome = match &error {
            None => Ok(totals),
            Some(error) => Err(error.as_str()),
        };
        let recorded = self.ledger.shard_finished(run.run_id(), shard, outcome).await;
        let result = result?;
        recorded.map_err(ledger_error)?;
        Ok(result)
    }

    /// Announces a committed run: `Committed`, then `Closed`.
    async fn closed(&self, run_id: &str, snapshot_id: Option<i64>, totals: ShardTotals, elapsed_ms: u64) {
        let run_id = run_id.to_string();
        let (rows, files, bytes) = (totals.rows, totals.files, totals.bytes);
        self.events.emit(RunEvent::Committed { run_id: run_id.clone(), snapshot_id, rows, files, bytes }).await;
        self.events.emit(RunEvent::Closed { run_id, status: "succeeded".into(), elapsed_ms }).await;
    }

    /// Has the coordinator delete what the run staged, and marks the run failed or cancelled.
    async fn roll_back(&self, opened: &Opened, error: &str, status: RunStatus) -> Result<(), RunError> {
        let run = &opened.run;
        tracing::debug!(run_id = %run.run_id(), error, "rolling back run");
        // If the cleanup fails the run stays open: once its lease lapses, recovery tries again.
        opened.coordinator.on_error(run, error).await.map_err(|source| self.roll_back_error(run, error, source))?;
        self.ledger.run_rolled_back(run.run_id(), status, error).await?;
        self.ended(run.run_id(), error, status, opened.elapsed_ms()).await;
        Ok(())
    }

    fn roll_back_error(&self, run: &RunContext, error: &str, source: CoordinatorError) -> RunError {
        RunError::RollBack {
            run_id: run.run_id().to_string(),
            target: run.target().to_string(),
            error: error.to_string(),
            source,
        }
    }

    /// Announces a run rolled back: `Failed`, then `Closed` with its status.
    async fn ended(&self, run_id: &str, error: &str, status: RunStatus, elapsed_ms: u64) {
        self.events.emit(RunEvent::Failed { run_id: run_id.to_string(), error: error.to_string() }).await;
        let status = status.as_str().to_string();
        self.events.emit(RunEvent::Closed { run_id: run_id.to_string(), status, elapsed_ms }).await;
    }
}

/// The report of a committed run.
fn report(opened: &Opened, totals: ShardTotals, snapshot_id: Option<i64>) -> RunReport {
    RunReport {
        run_id: opened.run_id(),
        pipeline: opened.run.identity().pipeline.clone(),
        target: opened.target(),
        shards: opened.run.shards(),
        rows: totals.rows,
        files: totals.files,
        bytes: totals.bytes,
        snapshot_id,
        elapsed: opened.started.elapsed(),
        executors: opened.run.executors(),
        steps: Vec::new(),
        quality: None,
    }
}

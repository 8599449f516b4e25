//! The scheduler: on the engine's clock (a test clock in tests, so nothing sleeps), each
//! scheduled, unpaused pipeline's owed due times are claimed in the ledger — a conditional
//! insert, so two schedulers on one home never run one due time twice — and run, at most
//! `max_concurrent_runs` at once (the rest wait `queued`) and one per pipeline at a time.
//!
//! Owed due times are those after the pipeline's last claimed one (or since its schedule was
//! set or resumed), up to now, thinned by its `catchup` option: `last` (the default) runs only
//! the latest, `all` every one (at most `max_catchup_runs`, the latest), `none` only one that is
//! not late by more than [`ON_TIME`] (a late one is recorded `skipped`, so it is not owed again).
//!
//! A failed run of a single-statement pipeline is retried under its run id (`RETRY RUN`: its
//! commit looks for the run in the table's history first, so it never lands twice) after
//! `retry_backoff`, doubling, up to `retries` times; a pipeline with steps retries each step
//! inside its run. A run that is still failing is `dead`: the dead-letter list
//! (`SHOW RUNS WHERE status = 'dead'`), which `RETRY RUN '<id>'` takes runs from by hand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Schedule;
use crate::engine::{DEFAULT_RUN_LEASE, Engine};
use crate::error::Result;
use crate::ledger::{Ledger, RunStatus, ScheduledRunRecord};
use crate::pipeline::{Catchup, PipelineOptions, parse_definition, retry_wait};

/// The scheduler's name for the runs of no pipeline (ad-hoc writes) it retries.
pub const AD_HOC: &str = "(ad hoc)";

/// How late a due time may be run with `catchup = 'none'`.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// One due time a scheduler handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The pipeline.
    pub pipeline: String,
    /// The due time, ms since the epoch.
    pub due_ms: i64,
    /// How it ended: `succeeded`, `retrying`, `dead`, `cancelled`, `skipped` (late, with
    /// `catchup = 'none'`) or `released` (the scheduler stopped before it started).
    pub status: String,
    /// The attempt (1 for the first).
    pub attempt: i64,
    /// The run, when one was opened.
    pub run_id: Option<String>,
}

/// A due time this scheduler claimed and is to run.
#[derive(Debug, Clone)]
struct Claim {
    pipeline: String,
    due_ms: i64,
    attempt: i64,
    /// The write run a retry runs again under its id.
    retry_of: Option<String>,
    /// Late with `catchup = 'none'`: recorded `skipped`, not run.
    late: bool,
    /// The id a new run gets (named beforehand for a run started by hand).
    run_id: Option<String>,
}

/// Why a run cannot be started by hand ([`Scheduler::trigger`], [`Scheduler::retry`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No such pipeline or run.
    #[error("{0}")]
    NotFound(String),
    /// The pipeline has a run queued, running or waiting for a retry.
    #[error("pipeline `{0}` has a run queued, running or waiting for a retry; one run of a pipeline at a time")]
    Busy(String),
    /// The run cannot be retried (it runs, or it succeeded).
    #[error("{0}")]
    Conflict(String),
    /// The ledger or the engine failed.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
}

impl From<crate::ledger::LedgerError> for StartError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        StartError::Engine(e.into())
    }
}

/// Claims a scheduler holds, by (pipeline, due time): the run's canceller once it started.
type InFlight = HashMap<(String, i64), Option<CancellationToken>>;

/// Runs the pipelines of one engine's home when they are due.
#[derive(Debug, Clone)]
pub struct Scheduler {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
    /// Claims this scheduler holds, by (pipeline, due time): the run's canceller once started.
    in_flight: Arc<Mutex<InFlight>>,
    /// When the serving loop last went round, ms since the epoch (0: not serving).
    alive_ms: Arc<AtomicI64>,
    /// Runs started by hand, for the serving loop to start.
    started: Arc<Mutex<Vec<Claim>>>,
    wake: Arc<Notify>,
    /// Retries this scheduler has scheduled.
    retries: Arc<AtomicU64>,
}

impl Scheduler {
    /// A scheduler over `engine`'s pipelines, on its clock, running at most
    /// `max_concurrent_runs` at once.
    pub fn new(engine: Arc<Engine>, max_concurrent_runs: usize) -> Self {
        Self {
            engine,
            slots: Arc::new(Semaphore::new(max_concurrent_runs.max(1))),
            in_flight: Arc::default(),
            alive_ms: Arc::default(),
            started: Arc::default(),
            wake: Arc::default(),
            retries: Arc::default(),
        }
    }

    /// The engine it runs pipelines of.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// How many retries this scheduler has scheduled so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs `pipeline` now, as a due time of its own (queued for a free run slot, retried and
    /// dead-lettered like a scheduled one); returns the run's id at once. Only the serving loop
    /// ([`Scheduler::serve`]) starts it.
    pub async fn trigger(&self, pipeline: &str) -> std::result::Result<String, StartError> {
        let ledger = self.ledger();
        if ledger.pipeline(pipeline).await?.is_none() {
            let hint =
                crate::suggest::did_you_mean(pipeline, ledger.pipelines().await?.iter().map(|p| p.name.as_str()));
            return Err(StartError::NotFound(format!("pipeline `{pipeline}` does not exist{hint}")));
        }
        if ledger.schedule_busy(pipeline).await? {
            return Err(StartError::Busy(pipeline.to_string()));
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        let now = self.engine.clock().now_ms();
        let due_ms = ledger.claim_manual(pipeline, now, 1, None, self.lease_until()).await?;
        let claim = Claim {
            pipeline: pipeline.to_string(),
            due_ms,
            attempt: 1,
            retry_of: None,
            late: false,
            run_id: Some(run_id.clone()),
        };
        self.hand_over(claim);
        Ok(run_id)
    }

    /// Runs the failed, cancelled or dead run `run_id` (a write run, or a run of a pipeline with
    /// steps) again under its id, as `RETRY RUN` does, through the serving loop; returns its id.
    pub async fn retry(&self, run_id: &str) -> std::result::Result<String, StartError> {
        let ledger = self.ledger();
        let (pipeline, status, attempt) = match ledger.run(run_id).await? {
            Some(record) => (record.pipeline.clone(), record.status.as_str().to_string(), record.attempt),
            None => match ledger.pipeline_runs().await?.into_iter().find(|r| r.run_id == run_id) {
                Some(run) => (Some(run.pipeline), run.status, 1),
                None => return Err(StartError::NotFound(format!("run {run_id} does not exist"))),
            },
        };
        if !matches!(status.as_str(), "failed" | "cancelled" | "dead") {
            return Err(StartError::Conflict(format!(
                "run {run_id} is {status}: only a failed, cancelled or dead run is retried"
            )));
        }
        let pipeline = pipeline.unwrap_or_else(|| AD_HOC.to_string());
        if ledger.schedule_busy(&pipeline).await? {
            return Err(StartError::Busy(pipeline));
        }
        let now = self.engine.clock().now_ms();
        let attempt = attempt + 1;
        let due_ms = ledger.claim_manual(&pipeline, now, attempt, Some(run_id), self.lease_until()).await?;
        let claim = Claim { pipeline, due_ms, attempt, retry_of: Some(run_id.to_string()), late: false, run_id: None };
        self.hand_over(claim);
        Ok(run_id.to_string())
    }

    /// Gives a claim made by hand to the serving loop.
    fn hand_over(&self, claim: Claim) {
        self.in_flight().insert((claim.pipeline.clone(), claim.due_ms), None);
        self.started.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(claim);
        self.wake.notify_one();
    }

    fn ledger(&self) -> &Ledger {
        self.engine.ledger()
    }

    fn lease_until(&self) -> i64 {
        self.engine.clock().now_ms() + DEFAULT_RUN_LEASE.as_millis() as i64
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs this scheduler holds now.
    pub fn running(&self) -> usize {
        self.in_flight().values().filter(|c| c.is_some()).count()
    }

    /// When the serving loop last went round (ms since the epoch), if it is serving.
    pub fn alive_ms(&self) -> Option<i64> {
        Some(self.alive_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Claims every due time owed now and runs them all (at most `max_concurrent_runs` at
    /// once); returns how each ended. Due times another scheduler claimed first are its own.
    pub async fn tick(&self) -> Result<Vec<Ran>> {
        let never = CancellationToken::new();
        let runs = by_pipeline(self.claim().await?).into_iter().map(|claims| self.run_in_turn(claims, never.clone()));
        let ran: Vec<Vec<Ran>> = futures::future::join_all(runs).await.into_iter().collect::<Result<_>>()?;
        Ok(ran.into_iter().flatten().collect())
    }

    /// Runs one pipeline's claims one after another (one run of a pipeline at a time).
    async fn run_in_turn(&self, claims: Vec<Claim>, stop: CancellationToken) -> Result<Vec<Ran>> {
        let mut ran = Vec::with_capacity(claims.len());
        for claim in claims {
            ran.push(self.run_claim(claim, stop.clone()).await?);
        }
        Ok(ran)
    }

    /// Serves until `stop` fires: every `period` it claims what is owed and starts it (runs go
    /// on in the background). Then it claims nothing more, lets running runs finish for up to
    /// `grace` (or until `abort` fires), cancels the rest (rolled back, `cancelled`), gives back
    /// claims that never started, and returns.
    pub async fn serve(&self, period: Duration, grace: Duration, stop: CancellationToken, abort: CancellationToken) {
        let mut runs = JoinSet::new();
        while !stop.is_cancelled() {
            self.alive_ms.store(self.engine.clock().now_ms().max(1), Ordering::Relaxed);
            self.renew_leases().await;
            match self.claim().await {
                Ok(claims) => {
                    for claims in by_pipeline(claims) {
                        let (scheduler, stop) = (self.clone(), stop.clone());
                        runs.spawn(async move { scheduler.run_in_turn(claims, stop).await });
                    }
                }
                Err(e) => tracing::warn!("the scheduler could not claim due runs: {e}"),
            }
            let started = std::mem::take(&mut *self.started.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            for claim in started {
                let (scheduler, stop) = (self.clone(), stop.clone());
                runs.spawn(async move { scheduler.run_in_turn(vec![claim], stop).await });
            }
            while let Some(done) = runs.try_join_next() {
                log_outcome(done);
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => {}
            }
        }
        tracing::info!(running = self.running(), ?grace, "stopping: no new runs; running runs may finish");
        let drained = tokio::select! {
            () = drain(&mut runs) => true,
            () = tokio::time::sleep(grace) => false,
            () = abort.cancelled() => false,
        };
        if !drained {
            tracing::info!(running = self.running(), "cancelling the runs still going");
            self.in_flight().values().flatten().for_each(CancellationToken::cancel);
            drain(&mut runs).await;
        }
        self.alive_ms.store(0, Ordering::Relaxed);
    }

    async fn renew_leases(&self) {
        let held: Vec<(String, i64)> = self.in_flight().keys().cloned().collect();
        for (pipeline, due_ms) in held {
            if let Err(e) = self.ledger().renew_schedule_lease(&pipeline, due_ms, self.lease_until()).await {
                tracing::warn!(%pipeline, due_ms, "could not renew a schedule's lease: {e}");
            }
        }
    }

    /// Claims what is owed now: claims whose scheduler died (retried), retries whose time has
    /// come, and new due times of pipelines with nothing queued, running or retrying.
    async fn claim(&self) -> Result<Vec<Claim>> {
        let ledger = self.ledger();
        for abandoned in ledger.claim_abandoned_schedules().await? {
            tracing::warn!(pipeline = %abandoned.pipeline, due_ms = abandoned.due_ms, "a claim's scheduler stopped; retrying it");
        }
        let mut claims: Vec<Claim> = Vec::new();
        for retry in ledger.claim_retries(self.lease_until()).await? {
            claims.push(self.retry_claim(retry).await?);
        }
        let now = self.engine.clock().now_ms();
        for (pipeline, due_ms, late) in self.owed(now).await? {
            if ledger.claim_due(&pipeline, due_ms, self.lease_until()).await? {
                claims.push(Claim { pipeline, due_ms, attempt: 1, retry_of: None, late, run_id: None });
            }
        }
        let mut in_flight = self.in_flight();
        for claim in &claims {
            in_flight.insert((claim.pipeline.clone(), claim.due_ms), None);
        }
        Ok(claims)
    }

    /// A claimed retry: under its run's id when there is one.
    async fn retry_claim(&self, retry: ScheduledRunRecord) -> Result<Claim> {
        let retry_of = retry.run_id.clone().filter(|id| !id.is_empty());
        Ok(Claim {
            pipeline: retry.pipeline,
            due_ms: retry.due_ms,
            attempt: retry.attempt,
            retry_of,
            late: false,
            run_id: None,
        })
    }

    /// Runs one claim (once a run slot is free) and records how it ended.
    async fn run_claim(&self, claim: Claim, stop: CancellationToken) -> Result<Ran> {
        let key = (claim.pipeline.clone(), claim.due_ms);
        let ran = self.run_claimed(&claim, stop).await;
        self.in_flight().remove(&key);
        ran
    }

    async fn run_claimed(&self, claim: &Claim, stop: CancellationToken) -> Result<Ran> {
        let ledger = self.ledger();
        let (pipeline, due_ms) = (claim.pipeline.as_str(), claim.due_ms);
        let ended = |status: &str, run_id: Option<String>| Ran {
            pipeline: pipeline.to_string(),
            due_ms,
            status: status.to_string(),
            attempt: claim.attempt,
            run_id,
        };
        if claim.late {
            ledger.scheduled_run(pipeline, due_ms, "skipped", None, None, Some("late, and catchup = 'none'")).await?;
            return Ok(ended("skipped", None));
        }
        let _slot = tokio::select! {
            slot = self.slots.acquire() => slot.expect("the scheduler's semaphore is never closed"),
            () = stop.cancelled() => {
                ledger.release_claim(pipeline, due_ms).await?;
                return Ok(ended("released", None));
            }
        };
        let run = match (&claim.retry_of, &claim.run_id) {
            (Some(run_id), _) => self.engine.start_retry(run_id),
            (None, Some(run_id)) => self.engine.start_pipeline_as(pipeline, run_id.clone()),
            (None, None) => self.engine.start_pipeline(pipeline),
        };
        let run_id = run.run_id.clone();
        self.in_flight().insert((pipeline.to_string(), due_ms), Some(run.canceller()));
        ledger.scheduled_run(pipeline, due_ms, "running", Some(&run_id), None, None).await?;
        tracing::info!(%pipeline, due_ms, attempt = claim.attempt, %run_id, "scheduled run started");
        let cancelled = run.canceller();
        let outcome = run.finish().await;
        // A retry of a run whose commit had landed after all is a success.
        let record = ledger.run(&run_id).await?;
        let committed = record.as_ref().is_some_and(|r| r.status == RunStatus::Succeeded);
        let error = match outcome {
            Ok(_) => None,
            Err(_) if committed => None,
            Err(e) => Some(e.to_string()),
        };
        let Some(error) = error else {
            ledger.scheduled_run(pipeline, due_ms, "succeeded", Some(&run_id), None, None).await?;
            return Ok(ended("succeeded", Some(run_id)));
        };
        if cancelled.is_cancelled() {
            ledger.scheduled_run(pipeline, due_ms, "cancelled", Some(&run_id), None, Some(&error)).await?;
            return Ok(ended("cancelled", Some(run_id)));
        }
        let options = self.options(pipeline).await;
        // Steps retry inside their run; a run of a single statement is retried here.
        let retries = match (&options, record.is_some()) {
            (Some(options), true) => i64::from(options.retries),
            _ => 0,
        };
        if claim.attempt <= retries {
            let backoff = options.map_or(Duration::from_secs(2), |o| o.retry_backoff);
            let next = self.engine.clock().now_ms() + retry_wait(backoff, claim.attempt).as_millis() as i64;
            ledger.scheduled_run(pipeline, due_ms, "retrying", Some(&run_id), Some(next), Some(&error)).await?;
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%pipeline, due_ms, attempt = claim.attempt, "scheduled run failed; retrying: {error}");
            return Ok(ended("retrying", Some(run_id)));
        }
        ledger.mark_dead(&run_id).await?;
        ledger.scheduled_run(pipeline, due_ms, "dead", Some(&run_id), None, Some(&error)).await?;
        tracing::warn!(%pipeline, due_ms, attempt = claim.attempt, %run_id, "scheduled run is dead: {error}");
        Ok(ended("dead", Some(run_id)))
    }

    /// The pipeline's current options, if it still has a readable definition.
    async fn options(&self, pipeline: &str) -> Option<PipelineOptions> {
        let record = self.ledger().pipeline(pipeline).await.ok()??;
        let create = parse_definition(pipeline, &record.definition).ok()?;
        PipelineOptions::parse(pipeline, &create.options).ok()
    }

    /// The due times owed at `now`: (pipeline, due time, late with `catchup = 'none'`).
    async fn owed(&self, now: i64) -> Result<Vec<(String, i64, bool)>> {
        let ledger = self.ledger();
        let mut owed = Vec::new();
        for pipeline in ledger.pipelines().await? {
            let Some((cron, zone)) = pipeline.schedule.as_ref().filter(|_| !pipeline.paused) else { continue };
            if ledger.schedule_busy(&pipeline.name).await? {
                continue;
            }
            let schedule = Schedule::parse(cron, zone.as_deref());
            let options = parse_definition(&pipeline.name, &pipeline.definition)
                .and_then(|create| PipelineOptions::parse(&pipeline.name, &create.options));
            let (schedule, options) = match (schedule, options) {
                (Ok(schedule), Ok(options)) => (schedule, options),
                (Err(e), _) => {
                    tracing::warn!(pipeline = %pipeline.name, "not scheduled: {e}");
                    continue;
                }
                (_, Err(e)) => {
                    tracing::warn!(pipeline = %pipeline.name, "not scheduled: {e}");
                    continue;
                }
            };
            let since = pipeline.schedule_since_ms.unwrap_or(pipeline.created_at_ms);
            let after = ledger.last_due(&pipeline.name).await?.map_or(since, |last| last.max(since));
            let limit = match options.catchup {
                Catchup::All => options.max_catchup_runs,
                Catchup::Last | Catchup::None => 1,
            };
            for due in schedule.due_between(after, now, limit) {
                let late = options.catchup == Catchup::None && now - due > ON_TIME.as_millis() as i64;
                owed.push((pipeline.name.clone(), due, late));
            }
        }
        Ok(owed)
    }
}

/// Claims grouped by pipeline, each group oldest first.
fn by_pipeline(claims: Vec<Claim>) -> Vec<Vec<Claim>> {
    let mut groups: Vec<Vec<Claim>> = Vec::new();
    for claim in claims {
        match groups.iter_mut().find(|g| g[0].pipeline == claim.pipeline) {
            Some(group) => group.push(claim),
            None => groups.push(vec![claim]),
        }
    }
    groups.iter_mut().for_each(|g| g.sort_by_key(|c| c.due_ms));
    groups
}

/// Waits for every task of the set.
async fn drain(runs: &mut JoinSet<Result<Vec<Ran>>>) {
    while let Some(done) = runs.join_next().await {
        log_outcome(done);
    }
}

fn log_outcome(done: std::result::Result<Result<Vec<Ran>>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(ran)) => {
            for ran in ran {
                tracing::info!(pipeline = %ran.pipeline, due_ms = ran.due_ms, status = %ran.status, "scheduled run ended");
            }
        }
        Ok(Err(e)) => tracing::warn!("a scheduled run could not be recorded: {e}"),
        Err(e) => tracing::error!("a scheduled run's task failed: {e}"),
    }
}

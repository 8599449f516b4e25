//! Multi-step pipelines: `CREATE PIPELINE ... AS BEGIN <step>; ... END` checked and saved, and
//! runs of them: independent steps at once (at most `max_parallel_steps`), each step a run of
//! today's coordinator (its own shards and commit) recorded under the pipeline run in
//! `sluice.steps`; retries with backoff under the step's run identity; `on_failure`; cancel (the
//! statement's token, or `CANCEL RUN` from any process, seen at the run's heartbeat).
//!
//! `atomic = true` (one Iceberg SQL catalog, `INSERT` steps only):
//!
//! ```text
//!  each step: shards stage ─► ledger: committing ─► manifests + next metadata written (held)
//!             later steps plan over the held tables (catalog::reading_pending)
//!  every step held ─► pipeline run `publishing` ─► ONE catalog transaction swaps every pointer
//!                                                   ─► every write run succeeded
//!  any step failed / cancelled / the swap refused ─► every held run rolled back (nothing visible)
//!  a crash anywhere ─► recovery settles each write run from its table's history (fencing the
//!                      ones not there): the transaction landed for all of them or for none
//! ```

use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Engine, Output, SCOPE, StatementScope};
use crate::catalog::{PendingTables, reading_pending};
use crate::coordinator::{CANCEL_POLL, HeldCommit, HeldRun, RunError, RunOrigin, RunReport};
use crate::error::{Error, Result};
use crate::events::RunEvent;
use crate::ledger::{RunStatus, StepRecord, StepTotals};
use crate::parser::{CreatePipeline, Expectation, PipelineBody, PipelineStep, Statement};
use crate::pipeline::{Dag, DagStep, OnFailure, PipelineError, PipelineOptions, StepOptions, retry_wait};
use crate::system::{explain_batch, steps_batch};

/// Where a step stands in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    /// Staged, its commit held for the atomic publish.
    Held,
    Succeeded,
    Failed,
    UpstreamFailed,
    Cancelled,
}

impl Engine {
    /// The graph of a pipeline's steps, names resolved against the session's defaults.
    pub(super) fn dag_of(&self, pipeline: &str, steps: &[PipelineStep]) -> Result<Dag> {
        let resolve = |name: &datafusion::sql::sqlparser::ast::ObjectName| {
            self.resolve(&datafusion::common::TableReference::parse_str(&name.to_string())).to_string()
        };
        Ok(Dag::build(pipeline, steps, &resolve)?)
    }

    /// Checks a multi-step `CREATE PIPELINE` (options, steps' options, the graph, `atomic`) and
    /// saves it.
    pub(super) async fn create_steps_pipeline(
        &self,
        create: &CreatePipeline,
        steps: &[PipelineStep],
        statement: &Statement,
    ) -> Result<Output> {
        let options = PipelineOptions::parse(&create.name, &create.options)?;
        super::cluster::parse_setting(options.cluster.as_deref().unwrap_or_default())?;
        if options.mode.is_some() {
            return Err(PipelineError::BadValue {
                pipeline: create.name.clone(),
                option: "mode".into(),
                value: format!("{:?}", options.mode),
                expected: "no mode on a pipeline with steps (each step says INSERT INTO or INSERT OVERWRITE)",
            }
            .into());
        }
        let dag = self.dag_of(&create.name, steps)?;
        for step in &dag.steps {
            StepOptions::parse(&create.name, &step.name, &step.step.options)?;
        }
        if options.atomic {
            self.check_atomic(&create.name, &dag)?;
        }
        let target = dag.steps.iter().map(|s| s.target.as_str()).collect::<Vec<_>>().join(", ");
        self.save_pipeline(create, statement, target, options.shards, None).await
    }

    /// `atomic = true` needs every step to be an `INSERT` into a table of one catalog that can
    /// publish several tables in one transaction; each refusal names the step and says why.
    fn check_atomic(&self, pipeline: &str, dag: &Dag) -> Result<()> {
        let catalog_of = |step: &DagStep| self.catalog_of(step.target.split('.').next().unwrap_or_default());
        let refuse = |why: String| -> Error {
            PipelineError::BadValue {
                pipeline: pipeline.to_string(),
                option: "atomic".into(),
                value: format!("true ({why})"),
                expected: "false",
            }
            .into()
        };
        for step in &dag.steps {
            let Some(catalog) = catalog_of(step) else {
                return Err(refuse(format!(
                    "step `{}` writes `{}`, which is not a catalog table",
                    step.name, step.target
                )));
            };
            if let Err(why) = catalog.can_publish_together() {
                let kind = match catalog.kind() {
                    "delta" => "Delta",
                    "iceberg-rest" => "REST",
                    other => other,
                };
                return Err(refuse(format!(
                    "step `{}` writes into {kind} catalog `{}`: {why}",
                    step.name,
                    catalog.name()
                )));
            }
        }
        if let [first, ..] = dag.steps.as_slice() {
            let one = catalog_of(first).map(|c| c.name());
            if let Some(other) = dag.steps.iter().find(|s| catalog_of(s).map(|c| c.name()) != one) {
                return Err(refuse(format!(
                    "steps `{}` and `{}` write into different catalogs: one catalog's transaction cannot publish both",
                    first.name, other.name
                )));
            }
        }
        if let Some(step) = dag.steps.iter().find(|s| insert_of(&s.step.statement).is_none()) {
            return Err(refuse(format!(
                "step `{}` is not an INSERT: only inserts into existing tables are held and published together",
                step.name
            )));
        }
        Ok(())
    }

    /// Runs a multi-step pipeline; the report's `steps` say how each ended. The run is
    /// `succeeded` when every step committed, `cancelled` when it was cancelled, else `failed`
    /// (an error naming the failed steps).
    pub(super) async fn run_steps(
        &self,
        name: &str,
        steps: &[PipelineStep],
        options: PipelineOptions,
    ) -> Result<RunReport> {
        let dag = self.dag_of(name, steps)?;
        let run_id = Self::named_run().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let queued: Vec<(String, String)> = dag.steps.iter().map(|s| (s.name.clone(), s.target.clone())).collect();
        let lease_until = self.clock.now_ms() + super::DEFAULT_RUN_LEASE.as_millis() as i64;
        self.ledger.open_pipeline_run(&run_id, name, &queued, lease_until).await?;
        self.drive_steps(name, run_id, &dag, options, &[]).await
    }

    /// `RETRY RUN` of a failed, cancelled or dead run of a pipeline with steps, under its id:
    /// steps that succeeded stay as they are; the others run again, a failed step's write under
    /// its own run id (its commit looks for the run in the table's history first).
    pub(super) async fn retry_steps(&self, run_id: &str, pipeline: &str) -> Result<RunReport> {
        let cannot = |reason: String| Error::CannotRetry { run_id: run_id.to_string(), reason };
        let (create, options) = self.pipeline_or_error(pipeline).await?;
        let PipelineBody::Steps(steps) = create.body else {
            return Err(cannot(format!("pipeline `{pipeline}` has no steps any more")));
        };
        let dag = self.dag_of(pipeline, &steps)?;
        let before = self.ledger.steps(Some(run_id)).await?;
        let lease_until = self.clock.now_ms() + super::DEFAULT_RUN_LEASE.as_millis() as i64;
        if !self.ledger.reopen_pipeline_run(run_id, lease_until).await? {
            return Err(cannot("it is running or succeeded, or another run of its pipeline is going".into()));
        }
        self.drive_steps(pipeline, run_id.to_string(), &dag, options, &before).await
    }

    /// Runs the steps of the open pipeline run `run_id` (those not `succeeded` in `before`,
    /// an earlier attempt's steps), with its heartbeat, and settles it.
    async fn drive_steps(
        &self,
        name: &str,
        run_id: String,
        dag: &Dag,
        options: PipelineOptions,
        before: &[StepRecord],
    ) -> Result<RunReport> {
        let started = Instant::now();
        let lease = super::DEFAULT_RUN_LEASE;
        let cancel = Self::cancel_token().child_token();
        // The run's heartbeat: its lease, and a `CANCEL RUN` from another process.
        let heartbeat = {
            let (ledger, run_id, cancel) = (self.ledger.clone(), run_id.clone(), cancel.clone());
            let clock = self.clock.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep((lease / 3).min(CANCEL_POLL)).await;
                    let until = clock.now_ms() + lease.as_millis() as i64;
                    match ledger.renew_pipeline_lease(&run_id, until).await {
                        Ok(true) => cancel.cancel(),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(%run_id, "could not renew the pipeline run's lease: {e}"),
                    }
                }
            })
        };
        let result = match self.schedule(name, &run_id, dag, options.clone(), &cancel, before).await {
            Ok((states, held)) if options.atomic => self.publish_steps(name, &run_id, dag, states, held).await,
            other => other.map(|(states, _)| states),
        };
        heartbeat.abort();
        let result = match result {
            // Left `publishing`, its steps `running`: recovery settles them from their runs.
            Err(Error::Run(e)) if matches!(e.as_ref(), RunError::Publish { rolled_back: false, .. }) => {
                return Err(Error::Run(e));
            }
            other => other,
        };
        let (status, error) = match &result {
            Ok(states) if states.iter().all(|s| *s == State::Succeeded) => ("succeeded", None),
            Ok(_) if cancel.is_cancelled() => ("cancelled", Some("cancelled".to_string())),
            Ok(states) => {
                let failed: Vec<&str> = dag
                    .steps
                    .iter()
                    .zip(states)
                    .filter(|(_, s)| **s == State::Failed)
                    .map(|(step, _)| step.name.as_str())
                    .collect();
                ("failed", Some(format!("step(s) {} failed", failed.join(", "))))
            }
            Err(e) => ("failed", Some(e.to_string())),
        };
        self.ledger.pipeline_run_finished(&run_id, status, error.as_deref()).await?;
        result?;
        let steps = self.ledger.steps(Some(&run_id)).await?;
        if let Some(error) = error {
            let detail: Vec<String> = steps
                .iter()
                .filter(|s| s.status != "succeeded")
                .map(|s| {
                    format!(
                        "{}: {}{}",
                        s.step,
                        s.status,
                        s.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                    )
                })
                .collect();
            return Err(Error::PipelineRun {
                run_id,
                pipeline: name.to_string(),
                status,
                error,
                steps: detail.join("; "),
            });
        }
        Ok(RunReport {
            run_id,
            pipeline: Some(name.to_string()),
            target: format!("{} step(s)", steps.len()),
            shards: 0,
            rows: steps.iter().map(|s| s.rows).sum(),
            files: steps.iter().map(|s| s.files).sum(),
            bytes: steps.iter().map(|s| s.bytes).sum(),
            snapshot_id: None,
            elapsed: started.elapsed(),
            executors: Vec::new(),
            steps,
            quality: None,
        })
    }

    /// Starts every step whose dependencies committed (at most `max_parallel_steps` at once)
    /// until none is left to start; returns how each ended, and, in an atomic run, the held
    /// runs of the steps that staged (a step starts once its dependencies are held, and reads
    /// their tables as they will be published).
    async fn schedule(
        &self,
        pipeline: &str,
        run_id: &str,
        dag: &Dag,
        options: PipelineOptions,
        cancel: &CancellationToken,
        before: &[StepRecord],
    ) -> Result<(Vec<State>, Vec<(usize, Vec<HeldRun>)>)> {
        let earlier = |step: &DagStep| before.iter().find(|b| b.step == step.name);
        let mut states: Vec<State> = dag
            .steps
            .iter()
            .map(|step| match earlier(step) {
                Some(b) if b.status == "succeeded" => State::Succeeded,
                _ => State::Waiting,
            })
            .collect();
        let mut held = Vec::new();
        let mut pending = PendingTables::new();
        let step_tokens: Vec<CancellationToken> = dag.steps.iter().map(|_| cancel.child_token()).collect();
        let mut running = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            // Steps behind a failed one never start.
            for i in 0..dag.steps.len() {
                let blocked = dag.steps[i]
                    .depends_on
                    .iter()
                    .any(|&j| matches!(states[j], State::Failed | State::UpstreamFailed | State::Cancelled));
                if states[i] == State::Waiting && blocked {
                    states[i] = State::UpstreamFailed;
                    let why = "a step it depends on did not commit";
                    self.finish_step(
                        pipeline,
                        run_id,
                        &dag.steps[i].name,
                        "upstream_failed",
                        StepTotals::default(),
                        Some(why),
                    )
                    .await?;
                }
            }
            if stopping || cancel.is_cancelled() {
                for (i, state) in states.iter_mut().enumerate() {
                    if *state == State::Waiting {
                        *state = State::Cancelled;
                        let step = &dag.steps[i].name;
                        self.finish_step(pipeline, run_id, step, "cancelled", StepTotals::default(), Some("cancelled"))
                            .await?;
                    }
                }
            }
            for i in 0..dag.steps.len() {
                let ready = states[i] == State::Waiting
                    && dag.steps[i].depends_on.iter().all(|&j| matches!(states[j], State::Succeeded | State::Held));
                if ready && running.len() < options.max_parallel_steps {
                    states[i] = State::Running;
                    let step = &dag.steps[i];
                    let token = step_tokens[i].clone();
                    let hold = options.atomic.then(|| pending.clone());
                    let retry_of = earlier(step).and_then(|b| b.step_run_id.clone());
                    let span = tracing::info_span!("step", %run_id, %pipeline, step = %step.name);
                    let run =
                        self.run_step(pipeline, run_id, step, options.clone(), token, hold, retry_of).instrument(span);
                    running.push(async move { (i, run.await) });
                }
            }
            let Some((i, outcome)) = running.next().await else { return Ok((states, held)) };
            let step = &dag.steps[i].name;
            match outcome {
                Ok(StepDone::Held(runs)) => {
                    states[i] = State::Held;
                    if let Some(commit) = runs.first().and_then(HeldRun::commit) {
                        pending.insert(dag.steps[i].target.clone(), commit.provider.clone());
                    }
                    held.push((i, runs));
                }
                Ok(StepDone::Committed(report)) => {
                    states[i] = State::Succeeded;
                    self.finish_step(pipeline, run_id, step, "succeeded", committed(&report), None).await?;
                }
                Err(e) => {
                    let cancelled = step_tokens[i].is_cancelled();
                    states[i] = if cancelled { State::Cancelled } else { State::Failed };
                    let status = if cancelled { "cancelled" } else { "failed" };
                    self.finish_step(pipeline, run_id, step, status, StepTotals::default(), Some(&e.to_string()))
                        .await?;
                    if !cancelled && options.on_failure == OnFailure::Stop {
                        stopping = true;
                        step_tokens.iter().for_each(CancellationToken::cancel);
                    }
                }
            }
        }
    }

    /// One step, retried up to its `retries` with backoff; a retry of a write reuses the failed
    /// attempt's run id (its commit looks for the run in the table's history first). With
    /// `hold` (an atomic run: the tables earlier steps hold), its commit is held, not made.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        pipeline: &str,
        run_id: &str,
        step: &DagStep,
        options: PipelineOptions,
        cancel: CancellationToken,
        hold: Option<PendingTables>,
        earlier_run: Option<String>,
    ) -> Result<StepDone> {
        let step_options = StepOptions::parse(pipeline, &step.name, &step.step.options)?;
        let retries = step_options.retries.unwrap_or(options.retries);
        let backoff = step_options.retry_backoff.unwrap_or(options.retry_backoff);
        let shards = step_options.shards.or(options.shards).unwrap_or(self.shards);
        // A step of a retried pipeline run writes under its earlier write run's id.
        let mut retry_of = match earlier_run {
            Some(earlier) => self.ledger.run(&earlier).await?.map(|r| (r.run_id, r.sequence)),
            None => None,
        };
        let mut attempt = 1;
        loop {
            self.ledger.step_started(run_id, &step.name, attempt).await?;
            let started = RunEvent::Step {
                run_id: run_id.to_string(),
                pipeline: pipeline.to_string(),
                step: step.name.clone(),
                status: "running".to_string(),
                attempt: Some(attempt),
                rows: 0,
                error: None,
            };
            self.events.emit(started).await;
            // The step's own scope: its cancel, and the pipeline's quarantine table, bad rows and
            // cluster.
            let StatementScope { quarantine_table, bad_rows, cluster, .. } = StatementScope::current();
            let scope = StatementScope {
                cancel: cancel.clone(),
                quarantine_table,
                bad_rows,
                cluster,
                ..StatementScope::default()
            };
            let label = format!("{pipeline}/{}", step.name);
            let execute = self.execute_step(&label, step, shards, retry_of.clone(), hold.clone());
            let result = SCOPE.scope(scope, Box::pin(execute)).await;
            let error = match result {
                Ok(done) => {
                    self.ledger.step_run(run_id, &step.name, done.run_id()).await?;
                    return Ok(done);
                }
                Err(e) => e,
            };
            if let Some(failed) = error.run_id() {
                self.ledger.step_run(run_id, &step.name, failed).await?;
                retry_of = self.ledger.run(failed).await?.map(|r| (r.run_id, r.sequence));
            }
            if cancel.is_cancelled() || attempt > i64::from(retries) {
                return Err(error);
            }
            tracing::info!(pipeline, step = %step.name, attempt, "step failed, retrying: {error}");
            let wait = retry_wait(backoff, attempt);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return Err(error),
            }
            attempt += 1;
        }
    }

    /// A step ends (`succeeded`, `failed`, `upstream_failed` or `cancelled`): recorded in the
    /// ledger and published.
    async fn finish_step(
        &self,
        pipeline: &str,
        run_id: &str,
        step: &str,
        status: &str,
        totals: StepTotals,
        error: Option<&str>,
    ) -> Result<()> {
        self.ledger.step_finished(run_id, step, status, totals, error).await?;
        let event = RunEvent::Step {
            run_id: run_id.to_string(),
            pipeline: pipeline.to_string(),
            step: step.to_string(),
            status: status.to_string(),
            attempt: None,
            rows: totals.rows,
            error: error.map(str::to_string),
        };
        self.events.emit(event).await;
        Ok(())
    }

    /// Runs one step's statement as pipeline `label` (`pipeline/step`); with `hold`, an
    /// `INSERT` planned over the tables earlier steps hold, its commit held.
    async fn execute_step(
        &self,
        label: &str,
        step: &DagStep,
        shards: usize,
        retry_of: Option<(String, i64)>,
        hold: Option<PendingTables>,
    ) -> Result<StepDone> {
        let statement = step.step.statement.as_ref();
        if let Some((sql, expectations)) = insert_of(&step.step.statement) {
            let write = async {
                let statement = Self::statement_text(sql);
                let origin = RunOrigin { pipeline: Some(label.to_string()), statement, retry_of, run_id: None };
                let not_catalog = || super::runs::not_a_catalog_insert(label);
                let Some(pending) = hold else {
                    let plan = self.plan_sql_statement(sql.clone()).await?;
                    let insert = self.insert_target(plan)?.ok_or_else(not_catalog)?;
                    return Ok(StepDone::Committed(Box::new(self.write(insert, shards, origin).await?)));
                };
                let plan = reading_pending(pending, self.plan_sql_statement(sql.clone())).await?;
                let insert = self.insert_target(plan)?.ok_or_else(not_catalog)?;
                Ok(StepDone::Held(self.write_held(insert, shards, origin).await?))
            };
            return Self::expecting(expectations.to_vec(), write).await;
        }
        if hold.is_some() {
            let message = format!("step `{}` of an atomic pipeline is not an INSERT", step.name);
            return Err(Error::Unsupported(message));
        }
        if let Statement::RunPipeline { name } = statement {
            return Ok(StepDone::Committed(Box::new(self.run_pipeline(name).await?)));
        }
        // CREATE TABLE ... AS and COPY: a failed one leaves nothing to retry under its id.
        let output = self.execute_statement(statement, &statement.to_string()).await?;
        let report = output.run.ok_or_else(|| Error::Unsupported(format!("step `{}` wrote nothing", step.name)))?;
        Ok(StepDone::Committed(Box::new(report)))
    }

    /// The end of an atomic run: when every step is held, their commits are published in one
    /// catalog transaction (the pipeline run `publishing` meanwhile); otherwise, or when the
    /// publish fails, every held step is rolled back. Returns how each step ended.
    async fn publish_steps(
        &self,
        pipeline: &str,
        run_id: &str,
        dag: &Dag,
        mut states: Vec<State>,
        held: Vec<(usize, Vec<HeldRun>)>,
    ) -> Result<Vec<State>> {
        // Each step's held runs: its own, then its quarantine's, if it quarantined rows.
        let (indices, groups): (Vec<usize>, Vec<Vec<HeldRun>>) = held.into_iter().unzip();
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        let runs: Vec<HeldRun> = groups.into_iter().flatten().collect();
        if states.iter().any(|s| *s != State::Held) {
            let unfinished: Vec<&str> = dag
                .steps
                .iter()
                .zip(&states)
                .filter(|(_, s)| !matches!(s, State::Held))
                .map(|(step, _)| step.name.as_str())
                .collect();
            let why =
                format!("not published: the pipeline is atomic, and step(s) {} did not succeed", unfinished.join(", "));
            self.runner.release(runs, &why, RunStatus::Cancelled).await?;
            for i in indices {
                states[i] = State::Cancelled;
                self.finish_step(pipeline, run_id, &dag.steps[i].name, "cancelled", StepTotals::default(), Some(&why))
                    .await?;
            }
            return Ok(states);
        }
        let catalog = dag.steps.first().and_then(|s| self.catalog_of(s.target.split('.').next().unwrap_or_default()));
        let catalog =
            catalog.ok_or_else(|| Error::Unsupported(format!("pipeline `{pipeline}`: no catalog to publish to")))?;
        self.ledger.pipeline_run_publishing(run_id).await?;
        let publish = move |commits: Vec<HeldCommit>| async move { catalog.publish_together(&commits).await };
        let published = self.runner.publish_together(pipeline, runs, publish);
        match published.await {
            Ok(reports) => {
                let mut reports = reports.into_iter();
                for (i, size) in indices.into_iter().zip(sizes) {
                    let mut of_step = reports.by_ref().take(size);
                    let Some(report) = of_step.next() else { continue };
                    of_step.for_each(drop); // the quarantine's
                    states[i] = State::Succeeded;
                    let step = &dag.steps[i].name;
                    self.finish_step(pipeline, run_id, step, "succeeded", committed(&report), None).await?;
                }
            }
            Err(e @ RunError::Publish { rolled_back: true, .. }) => {
                let error = e.to_string();
                for i in indices {
                    states[i] = State::Failed;
                    self.finish_step(
                        pipeline,
                        run_id,
                        &dag.steps[i].name,
                        "failed",
                        StepTotals::default(),
                        Some(&error),
                    )
                    .await?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(states)
    }

    /// `EXPLAIN PIPELINE name` of a pipeline with steps: its graph (which steps run together),
    /// then each step's write plan where its tables exist already.
    pub(super) async fn explain_steps(
        &self,
        name: &str,
        steps: &[PipelineStep],
        options: PipelineOptions,
    ) -> Result<Output> {
        let dag = self.dag_of(name, steps)?;
        let levels = dag.levels();
        let mut graph = Vec::new();
        let top = levels.iter().flatten().max().copied().unwrap_or(0);
        for level in 0..=top {
            let at: Vec<&DagStep> =
                dag.steps.iter().zip(&levels).filter(|(_, l)| **l == Some(level)).map(|(s, _)| s).collect();
            let names: Vec<String> = at
                .iter()
                .map(|s| {
                    let waits: Vec<&str> = s.depends_on.iter().map(|&j| dag.steps[j].name.as_str()).collect();
                    match waits.is_empty() {
                        true => format!("{} -> {}", s.name, s.target),
                        false => format!("{} -> {} (after {})", s.name, s.target, waits.join(", ")),
                    }
                })
                .collect();
            graph.push(format!("level {level}: {}", names.join(" | ")));
        }
        let mut rows = vec![(
            "pipeline".to_string(),
            format!(
                "{} step(s), at most {} at once, on_failure = {:?}{}\n{}",
                dag.steps.len(),
                options.max_parallel_steps,
                options.on_failure,
                match options.atomic {
                    true => ", atomic: every step's commit held, all published in one catalog transaction",
                    false => "",
                },
                graph.join("\n")
            ),
        )];
        for step in &dag.steps {
            let shards = StepOptions::parse(name, &step.name, &step.step.options)?
                .shards
                .or(options.shards)
                .unwrap_or(self.shards);
            let plan = match self.explain_step(step, shards).await {
                Ok(Some(output)) => crate::system::explain_text(&output.batches),
                Ok(None) => format!("{}", step.step.statement),
                Err(e) => format!("planned when it runs ({e})"),
            };
            rows.push((format!("step {}", step.name), format!("{shards} shard(s)\n{plan}")));
        }
        let rows: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Ok(Output::rows(explain_batch(&rows)))
    }

    /// The write plan of one step, where its tables exist already; `None` for `RUN PIPELINE`.
    async fn explain_step(&self, step: &DagStep, shards: usize) -> Result<Option<Output>> {
        let Statement::DataFusion(df) = step.step.statement.as_ref() else { return Ok(None) };
        if let datafusion::sql::parser::Statement::Statement(sql) = df.as_ref()
            && matches!(sql.as_ref(), datafusion::sql::sqlparser::ast::Statement::Insert(_))
        {
            let plan = self.plan_sql_statement(sql.as_ref().clone()).await?;
            return match self.insert_target(plan)? {
                Some(insert) => Ok(Some(self.explain_write(insert, shards).await?)),
                None => Ok(None),
            };
        }
        self.explain_catalog_write(df).await
    }

    /// `CANCEL RUN '<id>'`: asks the process running it (any process on this home) to stop.
    pub(super) async fn cancel_run(&self, run_id: &str) -> Result<Output> {
        self.require_ledger()?;
        if !self.ledger.request_cancel(run_id).await? {
            return Err(Error::CannotCancel { run_id: run_id.to_string() });
        }
        Ok(Output::empty())
    }

    /// The steps of a pipeline run as the result of `RUN PIPELINE`.
    pub(super) fn steps_output(report: RunReport) -> Output {
        let batch = steps_batch(&report.steps);
        Output { run: Some(report), ..Output::rows(batch) }
    }
}

/// What a step's committed run wrote, as `sluice.steps` keeps it.
fn committed(report: &RunReport) -> StepTotals {
    StepTotals { rows: report.rows, files: report.files, bytes: report.bytes, snapshot_id: report.snapshot_id }
}

/// How a step's statement ended: committed, or (atomic runs) held for the publish.
enum StepDone {
    Committed(Box<RunReport>),
    /// The step's own held run, then its quarantine's, if any.
    Held(Vec<HeldRun>),
}

impl StepDone {
    /// The write run.
    fn run_id(&self) -> &str {
        match self {
            StepDone::Committed(report) => &report.run_id,
            StepDone::Held(runs) => runs.first().map_or("", HeldRun::run_id),
        }
    }
}

/// The SQL of an `INSERT` step, and its expectations.
fn insert_of(statement: &Statement) -> Option<(&datafusion::sql::sqlparser::ast::Statement, &[Expectation])> {
    let (statement, expectations) = match statement {
        Statement::InsertWith { insert, expectations, .. } => (insert.as_ref(), expectations.as_slice()),
        other => (other, [].as_slice()),
    };
    let Statement::DataFusion(df) = statement else { return None };
    let datafusion::sql::parser::Statement::Statement(sql) = df.as_ref() else { return None };
    matches!(sql.as_ref(), datafusion::sql::sqlparser::ast::Statement::Insert(_))
        .then_some((sql.as_ref(), expectations))
}

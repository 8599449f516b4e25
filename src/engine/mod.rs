//! The engine: one DataFusion session, the catalogs, the ledger and the runner, behind
//! `sql()` and `run_pipeline()`. The command line is a thin layer over it.
//!
//! - `builder.rs`: [`EngineBuilder`], opening the home, the catalogs and the ledger;
//! - `dispatch.rs`: each statement to its handler, and DataFusion's own statements;
//! - `ddl.rs`: DDL on our catalogs (schemas, tables);
//! - `describe.rs`: `DESCRIBE`, `SHOW CREATE TABLE`, finding a table by its bare name;
//! - `diagnose.rs`: DataFusion's errors said in the user's terms, with positions and "did you mean";
//! - `write.rs`: writes (`INSERT`, `CREATE TABLE ... AS`, `COPY`) as runs;
//! - `runs.rs`: pipelines, `RETRY RUN` and recovery;
//! - `steps.rs`: pipelines with steps: the graph, its runs (parallel steps, retries, cancel);
//! - `cluster.rs`: where runs execute (this process or a Ballista cluster), `SHOW CLUSTER`;
//! - `doctor.rs`: `sluice doctor`.
//!
//! # Sharing, runtime, cancel
//!
//! [`Engine`] is `Send + Sync`: build one per home and share it in an `Arc` between tasks and
//! threads; statements may run concurrently (each write is its own run). It needs a multi-threaded
//! [tokio] runtime (`#[tokio::main]` or `Runtime::new()`); shards run as tasks on it.
//!
//! A statement can be cancelled with [`Engine::execute_cancellable`]: a query stops, a write
//! rolls back (its staged files deleted, the run recorded `cancelled`) before the call returns.
//! Dropping the future of a statement is safe too: a query stops, and a write that has not begun
//! to commit is cancelled and rolled back in the background, while one already committing
//! finishes its commit. A run is never left half-committed.

mod builder;
mod cluster;
mod ddl;
mod describe;
mod diagnose;
mod dispatch;
mod doctor;
pub(crate) mod expect;
mod insert;
mod locate;
mod runs;
mod schedules;
mod steps;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
pub use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
pub use tokio_util::sync::CancellationToken;

pub use builder::{CoordinatorLayer, EngineBuilder};

use crate::catalog::LakeCatalog;
use crate::clock::ClockRef;
use crate::coordinator::{RunReport, Runner};
use crate::error::{Error, Result};
use crate::events::{EventLog, RunEvent};
use crate::ledger::Ledger;
use crate::parser::{self, Located};

/// Name of the embedded default catalog.
pub const DEFAULT_CATALOG: &str = "lake";
/// How long a run may go without its heartbeat before it counts as abandoned.
pub const DEFAULT_RUN_LEASE: Duration = Duration::from_secs(30);

tokio::task_local! {
    /// What the statement running in this task was given besides its text: how to cancel it,
    /// and the values of its `$1`-style parameters.
    static SCOPE: StatementScope;
}

/// See [`SCOPE`].
#[derive(Debug, Clone, Default)]
struct StatementScope {
    cancel: CancellationToken,
    params: Option<ParamValues>,
    /// The id the statement's run gets ([`Engine::start_pipeline`] names it beforehand).
    run_id: Option<String>,
    /// Expectations on the rows the statement writes (`INSERT ... (CONSTRAINT ...)`).
    expectations: Vec<crate::parser::Expectation>,
    /// Where quarantined rows go (`quarantine_table = '...'` of the running pipeline).
    quarantine_table: Option<String>,
    /// What a bad line of a CSV / JSON file the statement reads does (`bad_rows = ...` of the
    /// running pipeline).
    bad_rows: Option<crate::pipeline::BadRows>,
    /// Where the running pipeline's writes execute (`cluster = ...`), over the session's.
    cluster: Option<String>,
}

impl StatementScope {
    fn current() -> Self {
        SCOPE.try_with(Clone::clone).unwrap_or_default()
    }
}

/// A pipeline run going on in the background ([`Engine::start_pipeline`]).
#[derive(Debug)]
pub struct PipelineRun {
    /// The run's id: the pipeline run's for a pipeline with steps, else its one write run's.
    pub run_id: String,
    /// Every run event from the run's start: its own, its steps' and their write runs'.
    pub events: tokio::sync::broadcast::Receiver<RunEvent>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<RunReport>>,
}

impl PipelineRun {
    /// Cancels the run: running steps stop and roll back, committed ones stay.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the run as [`PipelineRun::cancel`] does, for whoever must be able
    /// to cancel it while another waits for its end.
    pub fn canceller(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the run's end: its report, listing every step.
    pub async fn finish(self) -> Result<RunReport> {
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Cancelled),
        }
    }
}

/// An embedded Sluice: SQL in, atomic table commits out.
///
/// `Send + Sync`: share one in an `Arc` (see the [module docs](self) for the runtime it needs and
/// what cancelling or dropping a statement does).
///
/// ```no_run
/// # async fn example() -> sluice::error::Result<()> {
/// let engine = std::sync::Arc::new(sluice::Engine::builder().home(".sluice").build().await?);
/// let rows = engine.sql_with_params("SELECT $1 + 1 AS answer", vec![sluice::engine::ScalarValue::from(41_i64)]).await?;
/// # Ok(()) }
/// ```
pub struct Engine {
    ctx: SessionContext,
    catalogs: BTreeMap<String, Arc<dyn LakeCatalog>>,
    /// How each catalog was reached (what a cluster's executors reach it by).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    catalog_configs: BTreeMap<String, crate::catalog::CatalogConfig>,
    /// The file each catalog declared in a catalog file came from.
    catalog_files: BTreeMap<String, PathBuf>,
    ledger: Ledger,
    /// Why the home's ledger file could not be used (the engine then runs on one in memory).
    ledger_damage: Option<String>,
    runner: Runner,
    layer: Option<CoordinatorLayer>,
    events: EventLog,
    home: PathBuf,
    shards: usize,
    clock: ClockRef,
}

// The promise of the docs above, kept by the compiler.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Engine>();
};

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("home", &self.home)
            .field("catalogs", &self.catalogs.keys().collect::<Vec<_>>())
            .field("shards", &self.shards)
            .finish()
    }
}

/// The result of one statement.
#[derive(Debug, Clone)]
pub struct Output {
    /// The result's schema (empty for statements that return nothing).
    pub schema: SchemaRef,
    /// The result rows.
    pub batches: Vec<RecordBatch>,
    /// The run report, for statements that ran a write.
    pub run: Option<RunReport>,
    /// Facts about the object a `DESCRIBE` is about (format, location, partitioning, ...), as
    /// (name, value) pairs, shown under its columns.
    pub details: Vec<(String, String)>,
}

impl Output {
    fn empty() -> Self {
        Self { schema: Arc::new(Schema::empty()), batches: vec![], run: None, details: vec![] }
    }

    /// Rows to show.
    pub fn rows(batch: RecordBatch) -> Self {
        Self { schema: batch.schema(), batches: vec![batch], run: None, details: vec![] }
    }

    fn run(report: RunReport) -> Self {
        let batch = crate::system::run_report_batch(&report);
        Self { schema: batch.schema(), batches: vec![batch], run: Some(report), details: vec![] }
    }
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The home folder.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The DataFusion session, for registering tables, functions and object stores.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Every run event (opened, shard finished, committed, failed, closed) from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RunEvent> {
        self.events.subscribe()
    }

    /// The run ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The catalog called `name`.
    pub fn catalog(&self, name: &str) -> Option<&Arc<dyn LakeCatalog>> {
        self.catalogs.get(name)
    }

    /// Every catalog of the session (Sluice's own), by name.
    pub fn catalogs(&self) -> impl Iterator<Item = (&str, &Arc<dyn LakeCatalog>)> {
        self.catalogs.iter().map(|(name, catalog)| (name.as_str(), catalog))
    }

    /// Why the home's ledger file is unusable, if it is: pipelines and run history are then
    /// unavailable, while tables stay readable and writable.
    pub fn ledger_damage(&self) -> Option<&str> {
        self.ledger_damage.as_deref()
    }

    /// Fails when the ledger file is damaged (for what needs the persisted ledger).
    pub(super) fn require_ledger(&self) -> Result<()> {
        match &self.ledger_damage {
            Some(damage) => Err(Error::LedgerUnavailable(damage.clone())),
            None => Ok(()),
        }
    }

    /// Ends the engine's use of its files: the ledger's write-ahead log is folded into
    /// `ledger.db`, so the file holds everything on its own.
    pub async fn close(&self) -> Result<()> {
        if self.ledger_damage.is_none() {
            self.ledger.checkpoint().await?;
        }
        Ok(())
    }

    /// Runs every statement in `sql` in order and returns the rows of the last one.
    /// Stops at the first error; a syntax error anywhere runs nothing.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let mut last = Output::empty();
        for statement in parser::parse(sql)? {
            last = self.execute(&statement).await?;
        }
        Ok(last.batches)
    }

    /// Starts a run of the pipeline `name` in the background: the handle has its run id at
    /// once, every run event from its start, `cancel()`, and the report at the end.
    pub fn start_pipeline(self: &Arc<Self>, name: &str) -> PipelineRun {
        self.start_pipeline_as(name, uuid::Uuid::now_v7().to_string())
    }

    /// As [`Engine::start_pipeline`], the run getting the id `run_id` (a UUIDv7 its caller made
    /// beforehand, e.g. to answer an API request with it at once).
    pub fn start_pipeline_as(self: &Arc<Self>, name: &str, run_id: String) -> PipelineRun {
        let (engine, name) = (self.clone(), name.to_string());
        self.start(run_id, async move { engine.run_pipeline(&name).await })
    }

    /// Starts `RETRY RUN` of the write run `run_id` in the background, as
    /// [`Engine::start_pipeline`] starts a run.
    pub fn start_retry(self: &Arc<Self>, run_id: &str) -> PipelineRun {
        let (engine, retried) = (self.clone(), run_id.to_string());
        self.start(run_id.to_string(), async move { engine.retry_run(&retried).await })
    }

    /// Runs `run` (whose run is to get `run_id`) in a task of its own, cancellable.
    fn start(
        &self,
        run_id: String,
        run: impl std::future::Future<Output = Result<RunReport>> + Send + 'static,
    ) -> PipelineRun {
        let events = self.subscribe();
        let cancel = CancellationToken::new();
        let scope =
            StatementScope { cancel: cancel.clone(), run_id: Some(run_id.clone()), ..StatementScope::default() };
        let task = tokio::spawn(SCOPE.scope(scope, run));
        PipelineRun { run_id, events, cancel, task }
    }

    /// Like [`Engine::sql`], with values for the statements' `$1`, `$2`, ... placeholders
    /// (bound by DataFusion as typed values, never spliced into the SQL text).
    pub async fn sql_with_params(&self, sql: &str, params: impl Into<ParamValues>) -> Result<Vec<RecordBatch>> {
        let scope = StatementScope { params: Some(params.into()), ..StatementScope::default() };
        SCOPE.scope(scope, self.sql(sql)).await
    }

    /// Runs one parsed statement; errors say on which line it starts.
    pub async fn execute(&self, statement: &Located) -> Result<Output> {
        self.execute_statement(&statement.statement, &statement.sql)
            .await
            .map_err(|e| e.at(statement.line, statement.column))
    }

    /// Runs one parsed statement until `cancel` fires. Then a query stops, and a write rolls
    /// back (nothing committed, its staged files deleted, the run recorded `cancelled`) before
    /// this returns [`Error::Cancelled`] or the run's [`crate::coordinator::RunError::Cancelled`].
    /// A write already committing when `cancel` fires finishes its commit.
    pub async fn execute_cancellable(&self, statement: &Located, cancel: CancellationToken) -> Result<Output> {
        let scope = StatementScope { cancel, ..StatementScope::current() };
        SCOPE.scope(scope, self.execute(statement)).await
    }

    /// The expectations on the rows the running statement writes.
    pub(super) fn expectations() -> Vec<crate::parser::Expectation> {
        StatementScope::current().expectations
    }

    /// A write's statement as its run keeps it (for `RETRY RUN`): with the constraint list of
    /// the expectations it runs under.
    pub(super) fn statement_text(statement: &datafusion::sql::sqlparser::ast::Statement) -> String {
        let expectations = Self::expectations();
        if expectations.is_empty() {
            return statement.to_string();
        }
        let df = datafusion::sql::parser::Statement::Statement(Box::new(statement.clone()));
        let insert = crate::parser::Statement::DataFusion(Box::new(df));
        crate::parser::Statement::InsertWith { insert: Box::new(insert), expectations, options: Vec::new() }.to_string()
    }

    /// Runs `future` (a write) with `expectations` on its rows.
    pub(super) async fn expecting<T>(
        expectations: Vec<crate::parser::Expectation>,
        future: impl std::future::Future<Output = T>,
    ) -> T {
        SCOPE.scope(StatementScope { expectations, ..StatementScope::current() }, future).await
    }

    /// Runs `future` (a pipeline's run) with its quarantine table, if it names one, what bad
    /// input lines do, and where its writes execute.
    pub(super) async fn under_pipeline<T>(
        table: Option<String>,
        options: &crate::pipeline::PipelineOptions,
        future: impl std::future::Future<Output = T>,
    ) -> T {
        let (bad_rows, cluster) = (options.bad_rows, options.cluster.clone());
        SCOPE
            .scope(StatementScope { quarantine_table: table, bad_rows, cluster, ..StatementScope::current() }, future)
            .await
    }

    /// Runs `future` (the write of quarantined rows) with no expectations and no bad-row
    /// handling: what it writes was already judged. It runs in this process, which holds the
    /// rows (a cluster's executors handed them back).
    pub(super) async fn unchecked<T>(future: impl std::future::Future<Output = T>) -> T {
        let scope = StatementScope {
            expectations: Vec::new(),
            bad_rows: None,
            cluster: Some("local".to_string()),
            ..StatementScope::current()
        };
        SCOPE.scope(scope, future).await
    }

    /// Where the running pipeline's writes execute, if it says.
    pub(super) fn pipeline_cluster() -> Option<String> {
        StatementScope::current().cluster
    }

    /// What a bad line of an input file does in the running pipeline, if it says.
    pub(super) fn bad_rows() -> Option<crate::pipeline::BadRows> {
        StatementScope::current().bad_rows
    }

    /// The quarantine table the running pipeline names, if any.
    pub(super) fn quarantine_table() -> Option<String> {
        StatementScope::current().quarantine_table
    }

    /// The id the running statement's run is to get, when its caller named it.
    pub(super) fn named_run() -> Option<String> {
        StatementScope::current().run_id
    }

    /// The cancel token of the running statement (a fresh one outside [`Engine::execute_cancellable`]).
    pub(super) fn cancel_token() -> CancellationToken {
        StatementScope::current().cancel
    }

    /// Binds the running statement's parameter values, if it was given any.
    pub(super) fn bind_params(plan: LogicalPlan) -> Result<LogicalPlan> {
        match StatementScope::current().params {
            Some(params) => Ok(plan.with_param_values(params)?),
            None => Ok(plan),
        }
    }

    /// Awaits `work` unless the running statement is cancelled first.
    pub(super) async fn until_cancelled<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
        let cancel = Self::cancel_token();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Cancelled),
            result = work => result,
        }
    }

    /// The engine's clock (what leases and recovery go by).
    pub fn clock(&self) -> &ClockRef {
        &self.clock
    }

    /// The catalog an object reference points at, if it is one of ours.
    pub(super) fn catalog_of(&self, catalog: &str) -> Option<&Arc<dyn LakeCatalog>> {
        self.catalogs.get(catalog)
    }
}

//! The engine: one DataFusion session, the catalogs, the ledger and the coordinator, behind
//! `sql()` and `run_pipeline()`. The CLI is a thin layer over it.
//!
//! Each statement is parsed by [`crate::parser`]. Extension statements are handled here;
//! everything else is planned by DataFusion, and the plans that write into a catalog table
//! (`INSERT`, `CREATE TABLE ... AS`) or change it (`CREATE SCHEMA`, `CREATE TABLE`, `DROP`) are
//! routed to the catalog and the coordinator instead of DataFusion's in-memory tables.

mod doctor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{SchemaReference, TableReference};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{CopyToSource, CopyToStatement, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::catalog::{
    CatalogConfig, CatalogError, CatalogList, DeltaCatalog, IcebergCatalog, IcebergSqlConfig, LakeCatalog,
    PartitionField, TableName, load_catalogs,
};
use crate::coordinator::{
    Coordinator, ExportFormat, FileMerge, Resolution, RunJob, RunReport, Runner, TableCommit, WriteMode,
};
use crate::error::{Error, Result};
use crate::events::{EventLog, RunEvent};
use crate::ledger::{
    Ledger, LedgerError, PipelineRecord, RunRecord, RunStatus, SYSTEM_SCHEMA, SystemSchema, now_ms, pipelines_batch,
    runs_batch,
};
use crate::parser::{self, CreatePipeline, Located, Statement};
use crate::pipeline::{self, PipelineError, PipelineOptions};
use crate::planner;

pub use doctor::{Finding, findings_batch};

/// Name of the embedded default catalog.
pub const DEFAULT_CATALOG: &str = "lake";
/// How long a run may go without its heartbeat before it counts as abandoned.
pub const DEFAULT_RUN_LEASE: Duration = Duration::from_secs(30);

/// A write to run, as the engine hands it to the coordinator.
struct WriteRequest {
    table: TableName,
    input: LogicalPlan,
    mode: WriteMode,
    shards: usize,
    pipeline: Option<String>,
    /// The write statement as SQL, for the ledger (and `RETRY RUN`).
    statement: String,
    /// The run this retries, keeping its id and sequence.
    retry_of: Option<(String, i64)>,
}

/// Wraps the built-in coordinator of each run (see [`EngineBuilder::wrap_coordinator`]).
pub type CoordinatorLayer = Arc<dyn Fn(Arc<dyn Coordinator>) -> Arc<dyn Coordinator> + Send + Sync>;

/// Builds an [`Engine`].
#[derive(Clone, Default)]
pub struct EngineBuilder {
    layer: Option<CoordinatorLayer>,
    home: Option<PathBuf>,
    shards: Option<usize>,
    memory_limit: Option<usize>,
    run_lease: Option<Duration>,
    skip_recovery: bool,
    catalog_dirs: Vec<PathBuf>,
    catalogs: Vec<(String, CatalogConfig)>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("home", &self.home)
            .field("shards", &self.shards)
            .field("memory_limit", &self.memory_limit)
            .field("run_lease", &self.run_lease)
            .field("catalogs", &self.catalogs)
            .field("wraps_coordinator", &self.layer.is_some())
            .finish()
    }
}

impl EngineBuilder {
    /// The home folder (catalog, warehouse, ledger). Default: `.sluice` in the working directory.
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Default shard count for writes. Default: the available cores.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Memory limit in bytes for query execution; operators that can spill do so beyond it.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// How long a run may go without its heartbeat before it counts as abandoned (default 30 s).
    pub fn run_lease(mut self, lease: Duration) -> Self {
        self.run_lease = Some(lease);
        self
    }

    /// Wraps the coordinator of every run (the Iceberg or Delta commit of an `INSERT` or a
    /// pipeline, the file merge of a `COPY`) in one of your own, e.g. a
    /// [`crate::coordinator::Composite`] that commits, then notifies. Runs that recovery settles
    /// after a crash go through the built-in coordinators only (the wrapper lived in the process
    /// that died):
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sluice::coordinator::{Composite, Coordinator};
    ///
    /// #[derive(Debug)]
    /// struct Audit;
    /// impl Coordinator for Audit {
    ///     fn name(&self) -> &str { "audit" }
    /// }
    ///
    /// let builder = sluice::Engine::builder().wrap_coordinator(|builtin| {
    ///     Arc::new(Composite::new(vec![builtin, Arc::new(Audit)])) as Arc<dyn Coordinator>
    /// });
    /// ```
    pub fn wrap_coordinator(
        mut self,
        layer: impl Fn(Arc<dyn Coordinator>) -> Arc<dyn Coordinator> + Send + Sync + 'static,
    ) -> Self {
        self.layer = Some(Arc::new(layer));
        self
    }

    /// Whether `build` settles abandoned runs (default: yes; `sluice recover` does it itself).
    pub fn recover_on_start(mut self, recover: bool) -> Self {
        self.skip_recovery = !recover;
        self
    }

    /// Also reads catalog files (`<name>.toml`) from `dir`, besides `<home>/catalogs/`.
    pub fn catalogs_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.catalog_dirs.push(dir.into());
        self
    }

    /// Adds a catalog under `name`; it wins over a catalog file of the same name.
    pub fn catalog(mut self, name: impl Into<String>, config: CatalogConfig) -> Self {
        self.catalogs.push((name.into(), config));
        self
    }

    /// Opens the home folder (creating it), the catalogs and the ledger.
    pub async fn build(self) -> Result<Engine> {
        let home = self.home.unwrap_or_else(|| PathBuf::from(".sluice"));
        let io_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&home).map_err(io_error(&home))?;
        let home = home.canonicalize().map_err(io_error(&home))?;
        let warehouse = home.join("warehouse");

        let shards = self.shards.unwrap_or_else(planner::default_shards);
        if !(1..=pipeline::SHARDS_MAX).contains(&shards) {
            return Err(Error::Config(format!("shards must be between 1 and {}, got {shards}", pipeline::SHARDS_MAX)));
        }
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            // When the pool runs out, the error names the operators holding the most.
            let pool =
                TrackConsumersPool::new(FairSpillPool::new(limit), std::num::NonZeroUsize::new(5).expect("5 > 0"));
            runtime = runtime.with_memory_pool(Arc::new(pool));
        }
        let config = SessionConfig::new().with_information_schema(true).with_target_partitions(shards);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.build_arc()?)
            .with_default_features()
            .build();
        let dirs: Vec<PathBuf> = std::iter::once(home.join("catalogs")).chain(self.catalog_dirs).collect();
        let mut configs: BTreeMap<String, CatalogConfig> =
            load_catalogs(&dirs)?.into_iter().map(|(name, (_, config))| (name, config)).collect();
        configs.extend(self.catalogs);
        configs.entry(DEFAULT_CATALOG.to_string()).or_insert_with(|| {
            CatalogConfig::IcebergSql(IcebergSqlConfig {
                uri: format!("sqlite:{}", home.join("catalog.db").display()),
                warehouse: warehouse.display().to_string(),
            })
        });
        let mut catalogs = BTreeMap::new();
        for (name, config) in configs {
            let catalog: Arc<dyn LakeCatalog> = match &config {
                CatalogConfig::IcebergSql(sql) => IcebergCatalog::open_sql(&name, sql).await?,
                CatalogConfig::IcebergRest(rest) => IcebergCatalog::open_rest(&name, rest).await?,
                CatalogConfig::Delta(delta) => DeltaCatalog::open(&name, delta).await?,
            };
            catalogs.insert(name, catalog);
        }
        // `SELECT * FROM 'file.parquet'` (or .csv, .json) reads a file, as in DuckDB; our
        // catalogs stay outside the wrapper that does it (see `CatalogList`).
        let ctx = SessionContext::new_with_state(state).enable_url_table();
        ctx.register_catalog_list(Arc::new(CatalogList::new(catalogs.clone(), ctx.state().catalog_list().clone())));
        crate::functions::register(&ctx);
        // A damaged ledger costs the pipelines and the run history, not the tables: this process
        // runs on a ledger in memory, and the commands that need the file say so.
        let (ledger, ledger_damage) = match Ledger::open(&home.join("ledger.db")).await {
            Ok(ledger) => (ledger, None),
            Err(e @ LedgerError::Damaged { .. }) => {
                let damage = e.to_string();
                tracing::error!(
                    "{damage}; tables stay readable and writable, pipelines and runs are unavailable (run `sluice doctor`)"
                );
                (Ledger::in_memory().await?, Some(damage))
            }
            Err(other) => return Err(other.into()),
        };
        let system = match &ledger_damage {
            None => SystemSchema::new(ledger.clone()),
            Some(damage) => SystemSchema::unavailable(Error::LedgerUnavailable(damage.clone()).to_string()),
        };
        let default_catalog =
            ctx.catalog(&ctx.state().config_options().catalog.default_catalog).expect("the default catalog exists");
        default_catalog.register_schema(SYSTEM_SCHEMA, Arc::new(system))?;
        let events = EventLog::new(ledger.clone());
        let runner = Runner::new(ledger.clone(), events.clone(), self.run_lease.unwrap_or(DEFAULT_RUN_LEASE));
        let engine = Engine { ctx, catalogs, runner, layer: self.layer, events, ledger, ledger_damage, home, shards };
        if engine.ledger_damage.is_some() {
            return Ok(engine);
        }
        engine.restore_session_tables().await?;
        // DESIGN §4 step 7: runs left open by a process that is gone are settled on every start.
        if self.skip_recovery {
            return Ok(engine);
        }
        match engine.recover().await {
            Ok(settled) => {
                for (run, resolution) in settled.into_iter().filter(|(_, r)| *r != Resolution::StillRunning) {
                    tracing::info!(run_id = %run.run_id, target = %run.target, ?resolution, "recovered an abandoned run");
                }
            }
            Err(e) => tracing::warn!("recovering abandoned runs: {e}"),
        }
        Ok(engine)
    }
}

/// An embedded Sluice: SQL in, atomic table commits out.
pub struct Engine {
    ctx: SessionContext,
    catalogs: BTreeMap<String, Arc<dyn LakeCatalog>>,
    ledger: Ledger,
    /// Why the home's ledger file could not be used (the engine then runs on one in memory).
    ledger_damage: Option<String>,
    runner: Runner,
    layer: Option<CoordinatorLayer>,
    events: EventLog,
    home: PathBuf,
    shards: usize,
}

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
}

impl Output {
    fn empty() -> Self {
        Self { schema: Arc::new(Schema::empty()), batches: vec![], run: None }
    }

    /// Rows to show.
    pub fn rows(batch: RecordBatch) -> Self {
        Self { schema: batch.schema(), batches: vec![batch], run: None }
    }

    fn run(report: RunReport) -> Self {
        let batch = report.to_batch();
        Self { schema: batch.schema(), batches: vec![batch], run: Some(report) }
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

    /// Why the home's ledger file is unusable, if it is: pipelines and run history are then
    /// unavailable, while tables stay readable and writable.
    pub fn ledger_damage(&self) -> Option<&str> {
        self.ledger_damage.as_deref()
    }

    /// Fails when the ledger file is damaged (for what needs the persisted ledger).
    fn require_ledger(&self) -> Result<()> {
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

    /// Runs the pipeline called `name` and returns its run report.
    pub async fn run_pipeline(&self, name: &str) -> Result<RunReport> {
        self.require_ledger()?;
        let record = self.ledger.pipeline(name).await?.ok_or_else(|| PipelineError::NotFound(name.to_string()))?;
        let create = pipeline::parse_definition(name, &record.definition)?;
        let options = PipelineOptions::parse(name, &create.options)?;
        let statement = create.body.to_string();
        let plan = self.plan_sql_statement(*create.body).await?;
        let (table, input, body_mode) = self.insert_target(plan)?.ok_or_else(|| not_a_catalog_insert(name))?;
        let mode = options.write_mode(name, body_mode)?;
        let shards = options.shards.unwrap_or(self.shards);
        self.write(WriteRequest {
            table,
            input,
            mode,
            shards,
            pipeline: Some(name.to_string()),
            statement,
            retry_of: None,
        })
        .await
    }

    /// Runs a failed (or abandoned) run again under its id and sequence number. A run whose
    /// commit turns out to have landed is only marked succeeded: nothing is written twice.
    pub async fn retry_run(&self, run_id: &str) -> Result<RunReport> {
        self.require_ledger()?;
        let started = std::time::Instant::now();
        let cannot = |reason: String| Error::CannotRetry { run_id: run_id.to_string(), reason };
        let record = self
            .ledger
            .run(run_id)
            .await?
            .ok_or_else(|| cannot("there is no such run (SHOW RUNS lists them)".into()))?;
        if Path::new(&record.target).is_absolute() {
            return Err(cannot(format!("it exported `{}` (run the COPY again instead)", record.target)));
        }
        let table =
            TableName::parse(&record.target).ok_or_else(|| cannot(format!("unreadable target `{}`", record.target)))?;
        let catalog = self
            .catalog_of(&table.catalog)
            .ok_or_else(|| cannot(format!("catalog `{}` is not declared", table.catalog)))?;
        match record.status {
            RunStatus::Succeeded => {
                let snapshot = record.snapshot_id.map_or_else(|| "no rows".to_string(), |s| format!("snapshot {s}"));
                return Err(cannot(format!("it already succeeded ({snapshot}); there is nothing to retry")));
            }
            RunStatus::Staging | RunStatus::Committing
                if record.lease_until_ms.is_some_and(|until| until > now_ms()) =>
            {
                return Err(cannot("it is still running (its process holds the lease)".into()));
            }
            RunStatus::Staging | RunStatus::Committing => {
                let commit = TableCommit::new(table.clone(), catalog.writer(&table).await?, vec![], WriteMode::Append);
                match self.runner.resolve(&commit, &record).await? {
                    Resolution::Committed(_) => {
                        let settled = self
                            .ledger
                            .run(run_id)
                            .await?
                            .ok_or_else(|| cannot("it vanished from the ledger".into()))?;
                        return Ok(report_of(&settled, started.elapsed()));
                    }
                    Resolution::StillRunning => {
                        return Err(cannot("it is still running (its process holds the lease)".into()));
                    }
                    Resolution::RolledBack => {}
                }
            }
            RunStatus::Failed => {}
        }
        let mut statements = parser::parse(&record.statement)?;
        let Some(Statement::DataFusion(statement)) = statements.pop().map(|s| s.statement) else {
            return Err(cannot("its statement is not an INSERT".into()));
        };
        let plan = self.ctx.state().statement_to_plan(*statement).await?;
        let not_insert = || cannot("it was not an INSERT (run a CREATE TABLE AS again instead)".into());
        let (table, input, body_mode) = self.insert_target(plan)?.ok_or_else(not_insert)?;
        // A pipeline's current options decide, as they would for a new run.
        let pipeline = match &record.pipeline {
            Some(name) => self
                .ledger
                .pipeline(name)
                .await?
                .map(|p| pipeline::parse_definition(name, &p.definition))
                .transpose()?,
            None => None,
        };
        let options = match (&pipeline, &record.pipeline) {
            (Some(create), Some(name)) => PipelineOptions::parse(name, &create.options)?,
            _ => PipelineOptions::default(),
        };
        let mode = options.write_mode(run_id, body_mode)?;
        let shards = options.shards.unwrap_or(record.shards);
        let request = WriteRequest {
            table,
            input,
            mode,
            shards,
            pipeline: record.pipeline.clone(),
            statement: record.statement.clone(),
            retry_of: Some((record.run_id.clone(), record.sequence)),
        };
        self.write(request).await
    }

    /// Settles every run left `staging` or `committing` by a process that is gone: committed
    /// ones are marked succeeded, the others' staged files deleted (DESIGN §4 step 7). Runs
    /// whose catalog or table is gone are left as they are, with a warning. Runs whose lease is
    /// still live are listed as [`Resolution::StillRunning`], untouched. Files that failed runs'
    /// rollbacks deleted are deleted once more, then marked verified.
    pub async fn recover(&self) -> Result<Vec<(RunRecord, Resolution)>> {
        self.require_ledger()?;
        let mut settled = Vec::new();
        for record in self.ledger.abandoned_runs().await? {
            // An export's target is the file's absolute path; a table's is `catalog.schema.table`.
            let table = (!Path::new(&record.target).is_absolute()).then(|| TableName::parse(&record.target)).flatten();
            let coordinator: Arc<dyn Coordinator> = match table {
                None => {
                    let path = PathBuf::from(&record.target);
                    let format = ExportFormat::of_path(&path).unwrap_or(ExportFormat::Csv);
                    Arc::new(FileMerge::new(path, format))
                }
                Some(table) => {
                    let Some(catalog) = self.catalog_of(&table.catalog) else {
                        tracing::warn!(run_id = %record.run_id, "cannot recover: catalog `{}` is not declared", table.catalog);
                        continue;
                    };
                    match catalog.writer(&table).await {
                        Ok(writer) => Arc::new(TableCommit::new(table, writer, vec![], WriteMode::Append)),
                        Err(e) => {
                            tracing::warn!(run_id = %record.run_id, "cannot recover: {e}");
                            continue;
                        }
                    }
                }
            };
            let resolution = self.runner.resolve(coordinator.as_ref(), &record).await?;
            settled.push((record, resolution));
        }
        for record in self.ledger.leased_runs().await? {
            settled.push((record, Resolution::StillRunning));
        }
        self.verify_deletions().await?;
        Ok(settled)
    }

    /// Deletes once more the files that failed runs' rollbacks deleted (confined to each
    /// table's own location): a write that outlived its run, or a file system that reported a
    /// deletion it did not make, cannot leave an unreferenced file for good. Files of a table
    /// dropped since (its folder went with it) and of exports (whose parts each shard writes
    /// itself, with no upload outliving it) are only marked verified.
    async fn verify_deletions(&self) -> Result<()> {
        let mut writers: BTreeMap<String, Verifier> = BTreeMap::new();
        for (run_id, target, path) in self.ledger.unverified_deletions().await? {
            if !writers.contains_key(&target) {
                let verifier = self.verifier(&target).await;
                writers.insert(target.clone(), verifier);
            }
            let writer = match &writers[&target] {
                Verifier::Delete(writer) if crate::catalog::names::is_inside(writer.location(), &path) => writer,
                Verifier::Delete(_) | Verifier::Later => continue,
                Verifier::Nothing => {
                    self.ledger.verified(&path).await?;
                    continue;
                }
            };
            if !self.ledger.claim_verification(&path).await? {
                continue;
            }
            match writer.delete_file(&path).await {
                Ok(()) => self.ledger.verified(&path).await?,
                Err(e) => tracing::warn!(%run_id, "deleting {path} again failed: {e}"),
            }
        }
        Ok(())
    }

    /// How the deleted files of runs into `target` are verified.
    async fn verifier(&self, target: &str) -> Verifier {
        if Path::new(target).is_absolute() {
            return Verifier::Nothing;
        }
        let Some(table) = TableName::parse(target) else { return Verifier::Later };
        let Some(catalog) = self.catalog_of(&table.catalog) else { return Verifier::Later };
        match catalog.writer(&table).await {
            Ok(writer) => Verifier::Delete(writer),
            Err(CatalogError::TableNotFound(_)) => Verifier::Nothing,
            Err(e) => {
                tracing::warn!(%target, "cannot verify the deletions of failed runs yet: {e}");
                Verifier::Later
            }
        }
    }

    /// Runs one parsed statement; errors say on which line it starts.
    pub async fn execute(&self, statement: &Located) -> Result<Output> {
        self.execute_statement(&statement.statement, &statement.sql)
            .await
            .map_err(|e| e.at(statement.line, statement.column))
    }

    async fn execute_statement(&self, statement: &Statement, source: &str) -> Result<Output> {
        let plans_sql = matches!(
            statement,
            Statement::DataFusion(_)
                | Statement::CreatePartitionedTable { .. }
                | Statement::CreatePipeline(_)
                | Statement::RunPipeline { .. }
                | Statement::RetryRun { .. }
        );
        if plans_sql {
            self.refresh_catalogs().await;
        }
        let needs_ledger = matches!(
            statement,
            Statement::CreatePipeline(_)
                | Statement::ShowPipelines
                | Statement::DescribePipeline { .. }
                | Statement::DropPipeline { .. }
                | Statement::ShowRuns { .. }
        );
        if needs_ledger {
            self.require_ledger()?;
        }
        match statement {
            Statement::DataFusion(statement) => self.execute_datafusion(statement.as_ref().clone(), &[], source).await,
            Statement::CreatePartitionedTable { create, partition_by } => {
                self.execute_datafusion(DFStatement::Statement(create.clone()), partition_by, source).await
            }
            Statement::CreatePipeline(create) => self.create_pipeline(create, statement).await,
            Statement::RunPipeline { name } => Ok(Output::run(self.run_pipeline(name).await?)),
            Statement::RetryRun { run_id } => Ok(Output::run(self.retry_run(run_id).await?)),
            Statement::ShowCatalogs => Ok(Output::rows(self.catalogs_batch()?)),
            Statement::ShowPipelines => Ok(Output::rows(pipelines_batch(&self.ledger.pipelines().await?))),
            Statement::DescribePipeline { name } => self.describe_pipeline(name).await,
            Statement::DropPipeline { name, if_exists } => {
                if !self.ledger.drop_pipeline(name).await? && !if_exists {
                    return Err(PipelineError::NotFound(name.clone()).into());
                }
                Ok(Output::empty())
            }
            Statement::ShowRuns { pipeline } => {
                if let Some(name) = pipeline
                    && self.ledger.pipeline(name).await?.is_none()
                    && self.ledger.runs(Some(name)).await?.is_empty()
                {
                    return Err(PipelineError::NotFound(name.clone()).into());
                }
                Ok(Output::rows(runs_batch(&self.ledger.runs(pipeline.as_deref()).await?)))
            }
        }
    }

    /// Re-reads every catalog's schema and table names (other processes may have changed them).
    /// A catalog that cannot be reached keeps its last listing: statements that do not touch it
    /// still run, and those that do get its own error.
    async fn refresh_catalogs(&self) {
        for (name, catalog) in &self.catalogs {
            if let Err(e) = catalog.refresh().await {
                tracing::warn!(catalog = %name, "could not refresh the catalog's listing: {e}");
            }
        }
    }

    async fn plan_sql_statement(&self, statement: SqlStatement) -> Result<LogicalPlan> {
        let statement = DFStatement::Statement(Box::new(statement));
        Ok(self.ctx.state().statement_to_plan(statement).await?)
    }

    /// Plans a DataFusion statement; runs it through a catalog when it touches one. `partition_by`
    /// comes with `CREATE TABLE ... PARTITIONED BY`, which only catalog tables can have.
    /// `source` is the statement as written (kept for external tables: DataFusion's own display
    /// of `CREATE EXTERNAL TABLE` does not read back).
    async fn execute_datafusion(
        &self,
        statement: DFStatement,
        partition_by: &[PartitionField],
        source: &str,
    ) -> Result<Output> {
        if let DFStatement::CopyTo(copy) = &statement {
            self.check_export_target(&copy.target)?;
            if let Some(output) = self.export(copy, source).await? {
                return Ok(output);
            }
        }
        let state = self.ctx.state();
        let text = statement.to_string();
        let plan = state.statement_to_plan(statement).await?;
        if let Some(output) = self.execute_catalog_plan(&plan, partition_by, text.clone()).await? {
            return Ok(output);
        }
        if !partition_by.is_empty() {
            return Err(Error::Unsupported(
                "PARTITIONED BY on a table outside a catalog (name it catalog.schema.table)".to_string(),
            ));
        }
        // External tables live in DataFusion's session; their definitions are kept in the ledger
        // so that later processes (a scheduled RUN PIPELINE) find them too.
        let session_table = match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create)) => Some((self.resolve(&create.name), true)),
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => Some((self.resolve(&drop.name), false)),
            _ => None,
        };
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        match session_table {
            Some((name, true)) => self.ledger.save_session_table(&name.to_string(), source).await?,
            Some((name, false)) => self.ledger.drop_session_table(&name.to_string()).await?,
            None => {}
        }
        Ok(Output { schema, batches, run: None })
    }

    /// Registers again the external tables earlier processes created; one whose files are gone
    /// is skipped with a warning (and stays in the ledger, for when they are back).
    async fn restore_session_tables(&self) -> Result<()> {
        for (name, definition) in self.ledger.session_tables().await? {
            if let Err(e) = self.sql(&definition).await {
                tracing::warn!(table = %name, "could not register the external table again: {e}");
            }
        }
        Ok(())
    }

    /// The catalog an object reference points at, if it is one of ours.
    fn catalog_of(&self, catalog: &str) -> Option<&Arc<dyn LakeCatalog>> {
        self.catalogs.get(catalog)
    }

    fn resolve(&self, reference: &TableReference) -> TableName {
        let state = self.ctx.state();
        let defaults = &state.config_options().catalog;
        let resolved = reference.clone().resolve(&defaults.default_catalog, &defaults.default_schema);
        TableName::new(resolved.catalog.as_ref(), resolved.schema.as_ref(), resolved.table.as_ref())
    }

    /// The target table and input of an `INSERT INTO <catalog table>` plan.
    /// The target table, input and mode of an `INSERT [OVERWRITE] INTO <catalog table>` plan.
    fn insert_target(&self, plan: LogicalPlan) -> Result<Option<(TableName, LogicalPlan, WriteMode)>> {
        let LogicalPlan::Dml(DmlStatement { table_name, op: WriteOp::Insert(op), input, .. }) = plan else {
            return Ok(None);
        };
        let table = self.resolve(&table_name);
        if self.catalog_of(&table.catalog).is_none() {
            return Ok(None);
        }
        let mode = match op {
            InsertOp::Append => WriteMode::Append,
            InsertOp::Overwrite => WriteMode::Overwrite,
            InsertOp::Replace => {
                return Err(Error::Unsupported(format!("REPLACE INTO `{table}` (use INSERT OVERWRITE)")));
            }
        };
        Ok(Some((table, input.as_ref().clone(), mode)))
    }

    /// Handles plans that touch our catalogs; `None` leaves the plan to DataFusion.
    async fn execute_catalog_plan(
        &self,
        plan: &LogicalPlan,
        partition_by: &[PartitionField],
        statement: String,
    ) -> Result<Option<Output>> {
        if let LogicalPlan::Dml(_) = plan
            && let Some((table, input, mode)) = self.insert_target(plan.clone())?
        {
            let request =
                WriteRequest { table, input, mode, shards: self.shards, pipeline: None, statement, retry_of: None };
            return Ok(Some(Output::run(self.write(request).await?)));
        }
        let LogicalPlan::Ddl(ddl) = plan else { return Ok(None) };
        self.require_catalog(ddl)?;
        match ddl {
            DdlStatement::CreateCatalogSchema(create) => {
                let Some((catalog, schema)) = create.schema_name.split_once('.') else { return Ok(None) };
                let Some(catalog) = self.catalog_of(catalog) else { return Ok(None) };
                catalog.create_schema(schema, create.if_not_exists).await?;
            }
            DdlStatement::DropCatalogSchema(drop) => {
                let SchemaReference::Full { catalog, schema } = &drop.name else { return Ok(None) };
                let Some(catalog) = self.catalog_of(catalog) else { return Ok(None) };
                if drop.cascade {
                    return Err(Error::Unsupported("DROP SCHEMA ... CASCADE: drop the tables first".to_string()));
                }
                catalog.drop_schema(schema, drop.if_exists).await?;
            }
            DdlStatement::CreateMemoryTable(create) => {
                let table = self.resolve(&create.name);
                let Some(catalog) = self.catalog_of(&table.catalog) else { return Ok(None) };
                if create.or_replace || create.temporary {
                    return Err(Error::Unsupported(format!("CREATE OR REPLACE / TEMPORARY TABLE `{table}`")));
                }
                let schema = create.input.schema().as_arrow().clone();
                if !catalog.create_table(&table, &schema, partition_by, create.if_not_exists).await? {
                    return Ok(Some(Output::empty()));
                }
                if matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
                    return Ok(Some(Output::empty()));
                }
                // CREATE TABLE ... AS SELECT: the table exists only if its data committed.
                let input = create.input.as_ref().clone();
                let request = WriteRequest {
                    table: table.clone(),
                    input,
                    mode: WriteMode::Append,
                    shards: self.shards,
                    pipeline: None,
                    statement,
                    retry_of: None,
                };
                return match self.write(request).await {
                    Ok(report) => Ok(Some(Output::run(report))),
                    Err(error) => {
                        catalog.drop_table(&table, true).await?;
                        Err(error)
                    }
                };
            }
            DdlStatement::DropTable(drop) => {
                let table = self.resolve(&drop.name);
                let Some(catalog) = self.catalog_of(&table.catalog) else { return Ok(None) };
                catalog.drop_table(&table, drop.if_exists).await?;
            }
            DdlStatement::CreateExternalTable(create) => {
                let table = self.resolve(&create.name);
                if self.catalog_of(&table.catalog).is_some() {
                    return Err(Error::Unsupported(format!(
                        "CREATE EXTERNAL TABLE `{table}`: external tables live in the session catalog, not in an Iceberg catalog"
                    )));
                }
                return Ok(None);
            }
            _ => return Ok(None),
        }
        Ok(Some(Output::empty()))
    }

    /// DataFusion's own message for DDL on a catalog that does not exist does not name it well.
    fn require_catalog(&self, ddl: &DdlStatement) -> Result<()> {
        let catalog = match ddl {
            DdlStatement::CreateCatalogSchema(create) => create.schema_name.split_once('.').map(|(c, _)| c.to_string()),
            DdlStatement::DropCatalogSchema(drop) => match &drop.name {
                SchemaReference::Full { catalog, .. } => Some(catalog.to_string()),
                SchemaReference::Bare { .. } => None,
            },
            DdlStatement::CreateMemoryTable(create) => Some(self.resolve(&create.name).catalog),
            DdlStatement::DropTable(drop) => Some(self.resolve(&drop.name).catalog),
            _ => None,
        };
        let known = self.ctx.catalog_names();
        match catalog {
            Some(catalog) if !known.contains(&catalog) => {
                Err(Error::UnknownCatalog { catalog, known: known.join(", ") })
            }
            _ => Ok(()),
        }
    }

    /// Plans `input` and runs it through the table's commit coordinator: one run, one snapshot.
    async fn write(&self, request: WriteRequest) -> Result<RunReport> {
        let WriteRequest { table, input, mode, shards, pipeline, statement, retry_of } = request;
        let catalog = self.catalog_of(&table.catalog).expect("write targets are catalog tables");
        let writer = catalog.writer(&table).await?;
        let state = self.ctx.state();
        let input = state.create_physical_plan(&input).await?;
        let partition_key = planner::physical_partition_key(&state, writer.partitioning(), &input)?;
        let base = writer.base();
        let target = table.to_string();
        let commit = Arc::new(TableCommit::new(table, writer, partition_key, mode));
        let job =
            RunJob { target, coordinator: self.layered(commit), input, shards, pipeline, statement, base, retry_of };
        Ok(self.runner.run(job, state.task_ctx()).await?)
    }

    /// `COPY (SELECT ...) TO 'file.csv'` (or `.jsonl`, `.json`, `.parquet`, or `STORED AS`): the
    /// shards write part files that the file-merge coordinator merges into the one file.
    /// `None` leaves the statement to DataFusion: a folder, partitioned output, format options,
    /// or a URL.
    async fn export(&self, copy: &CopyToStatement, statement: &str) -> Result<Option<Output>> {
        let path = PathBuf::from(&copy.target);
        let format = match &copy.stored_as {
            Some(name) => ExportFormat::parse(name),
            None => ExportFormat::of_path(&path),
        };
        let is_file = path.extension().is_some() && !copy.target.contains("://") && !copy.target.ends_with('/');
        let (Some(format), true, true, true) =
            (format, is_file, copy.partitioned_by.is_empty(), copy.options.is_empty())
        else {
            return Ok(None);
        };
        let plan = match &copy.source {
            CopyToSource::Query(query) => self.plan_sql_statement(SqlStatement::Query(query.clone())).await?,
            CopyToSource::Relation(name) => self.ctx.table(name.to_string().as_str()).await?.into_unoptimized_plan(),
        };
        let path = std::path::absolute(&path).map_err(|source| Error::Io { path: copy.target.clone(), source })?;
        let state = self.ctx.state();
        let input = state.create_physical_plan(&plan).await?;
        let merge = Arc::new(FileMerge::new(path.clone(), format));
        let job = RunJob {
            target: path.display().to_string(),
            coordinator: self.layered(merge),
            input,
            shards: self.shards,
            pipeline: None,
            statement: statement.to_string(),
            base: None,
            retry_of: None,
        };
        Ok(Some(Output::run(self.runner.run(job, state.task_ctx()).await?)))
    }

    /// Refuses a `COPY` into the home folder (the ledger, the catalog database) or into a
    /// catalog's warehouse or root (tables' data and metadata), or a folder holding either;
    /// symbolic links are followed first. URLs other than `file://` go to their object store.
    fn check_export_target(&self, target: &str) -> Result<()> {
        let refused = |reason: String| Error::ExportRefused { target: target.to_string(), reason };
        let Some(path) = crate::catalog::names::local_path(target) else { return Ok(()) };
        let path = crate::catalog::names::resolve(&path).ok_or_else(|| refused("the path climbs above `/`".into()))?;
        let mut protected = vec![("the Sluice home".to_string(), self.home.clone())];
        for (name, catalog) in &self.catalogs {
            if let Some(root) = catalog.local_root() {
                protected.push((format!("the tables of catalog `{name}`"), root.to_path_buf()));
            }
        }
        for (what, root) in protected {
            let root = crate::catalog::names::resolve(&root).unwrap_or(root);
            if crate::catalog::names::overlaps(&path, &root) {
                return Err(refused(format!("{} would write into {what} at {}", path.display(), root.display())));
            }
        }
        Ok(())
    }

    /// The run's coordinator: the built-in one, wrapped by the layer the engine was built with.
    fn layered(&self, builtin: Arc<dyn Coordinator>) -> Arc<dyn Coordinator> {
        match &self.layer {
            Some(layer) => layer(builtin),
            None => builtin,
        }
    }

    async fn create_pipeline(&self, create: &CreatePipeline, statement: &Statement) -> Result<Output> {
        let options = PipelineOptions::parse(&create.name, &create.options)?;
        // Plan the body now, so that unknown tables or columns are reported at CREATE time.
        let plan = self.plan_sql_statement(create.body.as_ref().clone()).await?;
        let (table, _, body_mode) = self.insert_target(plan)?.ok_or_else(|| not_a_catalog_insert(&create.name))?;
        options.write_mode(&create.name, body_mode)?;
        let record = PipelineRecord {
            name: create.name.clone(),
            definition: statement.to_string(),
            target: table.to_string(),
            shards: options.shards,
            created_at_ms: crate::ledger::now_ms(),
        };
        match self.ledger.save_pipeline(&record, create.or_replace).await {
            Err(crate::ledger::LedgerError::PipelineExists(_)) if create.if_not_exists => Ok(Output::empty()),
            other => other.map(|_| Output::empty()).map_err(Into::into),
        }
    }

    /// Every catalog: ours with type and location, and DataFusion's in-memory session catalog.
    fn catalogs_batch(&self) -> Result<RecordBatch> {
        let mut rows: Vec<(String, &str, String)> =
            self.catalogs.iter().map(|(name, c)| (name.clone(), c.kind(), c.location().to_string())).collect();
        for name in self.ctx.catalog_names() {
            if !self.catalogs.contains_key(&name) {
                rows.push((name, "memory", "session (tables live until the process ends)".to_string()));
            }
        }
        rows.sort();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("location", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.as_str()))),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    async fn describe_pipeline(&self, name: &str) -> Result<Output> {
        let record = self.ledger.pipeline(name).await?.ok_or_else(|| PipelineError::NotFound(name.to_string()))?;
        let runs = self.ledger.runs(Some(name)).await?;
        let last = runs.last();
        let shards = record.shards.map_or_else(|| format!("default ({})", self.shards), |s| s.to_string());
        let properties: Vec<(&str, String)> = vec![
            ("name", record.name.clone()),
            ("target", record.target.clone()),
            ("shards", shards),
            ("definition", record.definition.clone()),
            ("runs", runs.len().to_string()),
            ("last_run_id", last.map(|r| r.run_id.clone()).unwrap_or_default()),
            ("last_status", last.map(|r| r.status.as_str().to_string()).unwrap_or_default()),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("property", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(properties.iter().map(|(k, _)| *k))),
            Arc::new(StringArray::from_iter_values(properties.iter().map(|(_, v)| v.as_str()))),
        ];
        Ok(Output::rows(RecordBatch::try_new(schema, columns)?))
    }
}

/// How recovery verifies the deletions of a target's failed runs.
enum Verifier {
    /// Delete each file again through the table's writer.
    Delete(Arc<dyn crate::sinks::TableWriter>),
    /// Nothing can be left (an export, a dropped table): mark the files verified.
    Nothing,
    /// Not now (an undeclared catalog, an unreadable table): the next recovery tries again.
    Later,
}

/// The report of a run the ledger has settled.
fn report_of(record: &RunRecord, elapsed: Duration) -> RunReport {
    RunReport {
        run_id: record.run_id.clone(),
        pipeline: record.pipeline.clone(),
        target: record.target.clone(),
        shards: record.shards,
        rows: record.rows,
        files: record.files,
        bytes: record.bytes,
        snapshot_id: record.snapshot_id,
        elapsed,
    }
}

fn not_a_catalog_insert(pipeline: &str) -> Error {
    Error::Unsupported(format!(
        "pipeline `{pipeline}`: the body must INSERT INTO a catalog table (catalog.schema.table)"
    ))
}

//! Pipelines, `RETRY RUN` and recovery: runs started from the ledger rather than from a
//! statement, and runs a process that is gone left open.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::write::Insert;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use super::{Engine, Output};
use crate::catalog::CatalogError;
use crate::coordinator::{CommitTarget, Coordinator, ExportFormat, Resolution, RunOrigin, RunReport};
use crate::error::{Error, Result};
use crate::ledger::{RunRecord, RunStatus};
use crate::parser::{self, CreatePipeline, PipelineBody, Statement};
use crate::pipeline::{self, PipelineOptions};
use crate::table::{TableName, WriteMode};

impl Engine {
    /// Runs the pipeline called `name` and returns its run report; for a pipeline with steps,
    /// the report sums its steps and lists each (`RunReport::steps`).
    pub async fn run_pipeline(&self, name: &str) -> Result<RunReport> {
        let (create, options) = self.pipeline_or_error(name).await?;
        let quarantine_table = crate::pipeline::quarantine_table(name, &create.options)?;
        let scope = options.clone();
        // Boxed before it is wrapped: the run's future is large, and debug builds copy it.
        let run = Box::pin(self.run_pipeline_as_defined(name, create, options));
        Self::under_pipeline(quarantine_table, &scope, run).await
    }

    async fn run_pipeline_as_defined(
        &self,
        name: &str,
        create: CreatePipeline,
        options: PipelineOptions,
    ) -> Result<RunReport> {
        match create.body {
            PipelineBody::Insert(body, expectations) => {
                let write = async {
                    let (insert, shards, origin) = self.pipeline_write(name, *body, &options).await?;
                    self.write(insert, shards, origin).await
                };
                Self::expecting(expectations, write).await
            }
            PipelineBody::Steps(steps) => Box::pin(self.run_steps(name, &steps, options)).await,
        }
    }

    /// `EXPLAIN [RUN] PIPELINE name`: the write its run would make; for a pipeline with steps,
    /// its graph and each step's write.
    pub(super) async fn explain_pipeline(&self, name: &str) -> Result<Output> {
        let (create, options) = self.pipeline_or_error(name).await?;
        let quarantine_table = crate::pipeline::quarantine_table(name, &create.options)?;
        let scope = options.clone();
        let explain = Box::pin(self.explain_pipeline_as_defined(name, create, options));
        Self::under_pipeline(quarantine_table, &scope, explain).await
    }

    async fn explain_pipeline_as_defined(
        &self,
        name: &str,
        create: CreatePipeline,
        options: PipelineOptions,
    ) -> Result<Output> {
        match create.body {
            PipelineBody::Insert(body, expectations) => {
                let explain = async {
                    let (insert, shards, _) = self.pipeline_write(name, *body, &options).await?;
                    self.explain_write(insert, shards).await
                };
                Self::expecting(expectations, explain).await
            }
            PipelineBody::Steps(steps) => self.explain_steps(name, &steps, options).await,
        }
    }

    pub(super) async fn pipeline_or_error(&self, name: &str) -> Result<(CreatePipeline, PipelineOptions)> {
        self.require_ledger()?;
        match self.pipeline_definition(name).await? {
            Some(found) => Ok(found),
            None => Err(self.no_pipeline(name).await),
        }
    }

    /// The write a run of the single-statement pipeline `name` makes, with its shard count and
    /// origin.
    async fn pipeline_write(
        &self,
        name: &str,
        body: SqlStatement,
        options: &PipelineOptions,
    ) -> Result<(Insert, usize, RunOrigin)> {
        // What RETRY RUN re-runs: the body, with the expectations the run is under.
        let statement = Self::statement_text(&body);
        let insert = self.insert_under(&format!("pipeline `{name}`"), body, options).await?;
        let (insert, shards) = with_options(options, name, insert, self.shards)?;
        let origin =
            RunOrigin { pipeline: Some(name.to_string()), statement, retry_of: None, run_id: Self::named_run() };
        Ok((insert, shards, origin))
    }

    /// The insert `body` makes under `options` (of a pipeline, or of the INSERT itself; `who`
    /// says which, for errors): evolving the table's schema if they say so.
    pub(super) async fn insert_under(
        &self,
        who: &str,
        body: SqlStatement,
        options: &PipelineOptions,
    ) -> Result<Insert> {
        if options.add_columns || options.widen_types {
            return Box::pin(self.insert_evolving(who, body, options)).await;
        }
        let plan = self.plan_sql_statement(body).await?;
        self.insert_target(plan)?.ok_or_else(|| not_a_catalog_write(who))
    }

    /// `INSERT INTO t ... WITH (...)`: one write under the statement's options, its run keeping
    /// the statement as `statement` says (for `RETRY RUN`), with `retry_of` when it retries one.
    pub(super) async fn insert_with_options(
        &self,
        body: SqlStatement,
        options: &[(String, String)],
        origin: RunOrigin,
    ) -> Result<RunReport> {
        let table = match &body {
            SqlStatement::Insert(insert) => insert.table.to_string(),
            _ => return Err(Error::Unsupported(format!("WITH (...) on a statement that is not an INSERT: {body}"))),
        };
        let parsed = PipelineOptions::for_insert(&table, options)?;
        let quarantine_table = pipeline::quarantine_table(&table, options)?;
        let write = async {
            let insert = self.insert_under(&format!("INSERT INTO `{table}`"), body, &parsed).await?;
            self.write(insert, self.shards, origin).await
        };
        Self::under_pipeline(quarantine_table, &parsed, Box::pin(write)).await
    }

    /// The insert of a write with `schema_evolution`: the query's columns map to the table's
    /// by name; those the table lacks are added to it (nullable, `add_columns`), an `INT` /
    /// `FLOAT` column the query gives as `BIGINT` / `DOUBLE` is widened (`widen_types`), both
    /// published with the run's commit; the table's columns the query lacks get NULL. `who`
    /// names the pipeline or INSERT, for errors.
    async fn insert_evolving(&self, who: &str, body: SqlStatement, options: &PipelineOptions) -> Result<Insert> {
        use datafusion::logical_expr::{ExprSchemable, LogicalPlanBuilder, lit};
        let SqlStatement::Insert(insert) = body else { return Err(not_a_catalog_write(who)) };
        if !insert.columns.is_empty() {
            return Err(Error::Unsupported(format!(
                "{who}: schema_evolution maps the query's columns by name, so the INSERT takes no column list"
            )));
        }
        let (Some(source), datafusion::sql::sqlparser::ast::TableObject::TableName(target)) =
            (insert.source, &insert.table)
        else {
            return Err(not_a_catalog_write(who));
        };
        let table = self.resolve(&datafusion::common::TableReference::parse_str(&target.to_string()));
        let catalog = self.catalog_of(&table.catalog).ok_or_else(|| not_a_catalog_write(who))?;
        let query = self.plan_sql_statement(SqlStatement::Query(source)).await?;
        let current = catalog.writer(&table).await?;
        use datafusion::arrow::datatypes::DataType::{Float32, Float64, Int32, Int64};
        let (added, widened): (Vec<_>, Vec<_>) = query
            .schema()
            .fields()
            .iter()
            .filter_map(|f| match current.schema().field_with_name(f.name()) {
                // Iceberg's own promotions.
                Err(_) if options.add_columns => Some((Some(f.as_ref().clone().with_nullable(true)), None)),
                Ok(have)
                    if options.widen_types
                        && have.data_type() != f.data_type()
                        && crate::runtime::is_widening(have.data_type(), f.data_type())
                        && matches!((have.data_type(), f.data_type()), (Int32, Int64) | (Float32, Float64)) =>
                {
                    Some((None, Some(have.as_ref().clone().with_data_type(f.data_type().clone()))))
                }
                _ => None,
            })
            .unzip();
        let (added, widened): (Vec<_>, Vec<_>) =
            (added.into_iter().flatten().collect(), widened.into_iter().flatten().collect());
        let writer = match added.is_empty() && widened.is_empty() {
            true => current,
            false => catalog.writer_evolving(&table, &added, &widened).await?,
        };
        let query_schema = query.schema().clone();
        let exprs = writer
            .schema()
            .fields()
            .iter()
            .map(|field| {
                let value = match query_schema.fields().iter().position(|f| f.name() == field.name()) {
                    Some(i) => datafusion::logical_expr::Expr::Column(query_schema.qualified_field(i).into()),
                    None => lit(datafusion::common::ScalarValue::Null).cast_to(field.data_type(), &query_schema)?,
                };
                Ok(value.alias(field.name()))
            })
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let input = LogicalPlanBuilder::from(query).project(exprs)?.build()?;
        let mode = if insert.overwrite { WriteMode::Overwrite } else { WriteMode::Append };
        Ok(Insert { table, input, mode, writer: Some(writer) })
    }

    /// The pipeline called `name` as the ledger keeps it: its definition and options.
    /// Fails when the catalog of its target is not loaded in this process.
    pub(super) async fn pipeline_definition(&self, name: &str) -> Result<Option<(CreatePipeline, PipelineOptions)>> {
        let Some(record) = self.ledger.pipeline(name).await? else { return Ok(None) };
        let unloaded = record
            .targets()
            .filter(|t| !Path::new(t).is_absolute() && !t.starts_with("pipeline "))
            .filter_map(TableName::parse)
            .find(|t| self.catalog_of(&t.catalog).is_none());
        if let Some(target) = unloaded {
            return Err(Error::CatalogNotLoaded {
                catalog: target.catalog,
                pipeline: name.to_string(),
                declared_in: record
                    .catalog_file
                    .map_or_else(String::new, |file| format!(" (it was declared in {file})")),
            });
        }
        let create = pipeline::parse_definition(name, &record.definition)?;
        let options = PipelineOptions::parse(name, &create.options)?;
        Ok(Some((create, options)))
    }

    /// Runs a failed (or abandoned) run again under its id and sequence number. A run whose
    /// commit turns out to have landed is only marked succeeded: nothing is written twice.
    pub async fn retry_run(&self, run_id: &str) -> Result<RunReport> {
        self.require_ledger()?;
        let started = std::time::Instant::now();
        let cannot = |reason: String| Error::CannotRetry { run_id: run_id.to_string(), reason };
        let Some(record) = self.ledger.run(run_id).await? else {
            let pipeline_run = self.ledger.pipeline_runs().await?.into_iter().find(|r| r.run_id == run_id);
            return match pipeline_run {
                Some(run) => Box::pin(self.retry_steps(run_id, &run.pipeline)).await,
                None => Err(cannot("there is no such run (SHOW RUNS lists them)".into())),
            };
        };
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
                if record.lease_until_ms.is_some_and(|until| until > self.clock.now_ms()) =>
            {
                return Err(cannot("it is still running (its process holds the lease)".into()));
            }
            RunStatus::Staging | RunStatus::Committing => {
                let commit = catalog.writer(&table).await?.coordinator(table.clone(), vec![], WriteMode::Append);
                match self.runner.resolve(commit.as_ref(), &record).await? {
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
                    // A retry's commit looks for the run in the table's history first, so even a
                    // late commit of the old attempt (files kept) is not applied twice.
                    Resolution::RolledBack | Resolution::KeptFiles => {}
                }
            }
            RunStatus::Failed | RunStatus::Cancelled | RunStatus::Dead => {}
        }
        let mut statements = parser::parse(&record.statement)?;
        // A write with expectations or options is retried with them.
        let (statement, expectations, options) = match statements.pop().map(|s| s.statement) {
            Some(Statement::InsertWith { insert, expectations, options }) => (*insert, expectations, options),
            Some(statement) => (statement, Vec::new(), Vec::new()),
            None => return Err(cannot("its statement is empty".into())),
        };
        let Statement::DataFusion(statement) = statement else {
            return Err(cannot("its statement is not an INSERT".into()));
        };
        let origin = RunOrigin {
            pipeline: record.pipeline.clone(),
            statement: record.statement.clone(),
            retry_of: Some((record.run_id.clone(), record.sequence)),
            run_id: None,
        };
        if !options.is_empty() {
            let datafusion::sql::parser::Statement::Statement(body) = *statement else {
                return Err(cannot("its statement is not an INSERT".into()));
            };
            return Self::expecting(expectations, self.insert_with_options(*body, &options, origin)).await;
        }
        let statement = super::insert::positional_df(*statement);
        let plan = self.ctx.state().statement_to_plan(statement).await?;
        let not_insert = || cannot("it was not an INSERT (run a CREATE TABLE AS again instead)".into());
        let insert = self.insert_target(plan)?.ok_or_else(not_insert)?;
        // A pipeline's current options decide, as they would for a new run.
        let (insert, shards, quarantine_table, options) = match &record.pipeline {
            Some(name) => match self.pipeline_definition(name).await? {
                Some((create, options)) => {
                    let (insert, shards) = with_options(&options, run_id, insert, record.shards)?;
                    (insert, shards, crate::pipeline::quarantine_table(name, &create.options)?, options)
                }
                None => (insert, record.shards, None, PipelineOptions::default()),
            },
            None => (insert, record.shards, None, PipelineOptions::default()),
        };
        let write = Self::expecting(expectations, self.write(insert, shards, origin));
        Self::under_pipeline(quarantine_table, &options, Box::pin(write)).await
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
            // An export's target is the file's absolute path or the object's URL; a table's is
            // `catalog.schema.table`.
            let export = Path::new(&record.target).is_absolute() || crate::storage::is_remote(&record.target);
            let table = (!export).then(|| TableName::parse(&record.target)).flatten();
            let coordinator: Arc<dyn Coordinator> = match table {
                None => {
                    let format = ExportFormat::of_path(Path::new(&record.target)).unwrap_or(ExportFormat::Csv);
                    match self.file_merge(&record.target, format) {
                        Ok((_, merge)) => Arc::new(merge),
                        Err(e) => {
                            tracing::warn!(run_id = %record.run_id, "cannot recover: {e}");
                            continue;
                        }
                    }
                }
                Some(table) => {
                    let Some(catalog) = self.catalog_of(&table.catalog) else {
                        tracing::warn!(run_id = %record.run_id, "cannot recover: catalog `{}` is not declared", table.catalog);
                        continue;
                    };
                    match catalog.writer(&table).await {
                        Ok(writer) => writer.coordinator(table, vec![], WriteMode::Append),
                        Err(e) => {
                            tracing::warn!(run_id = %record.run_id, "cannot recover: {e}");
                            continue;
                        }
                    }
                }
            };
            #[cfg(feature = "cluster")]
            self.stop_cluster_jobs(&record.run_id).await?;
            let resolution = self.runner.resolve(coordinator.as_ref(), &record).await?;
            settled.push((record, resolution));
        }
        for record in self.ledger.leased_runs().await? {
            settled.push((record, Resolution::StillRunning));
        }
        // After the write runs: a pipeline run's steps are settled from theirs.
        let pipelines = self.ledger.settle_abandoned_pipeline_runs().await?;
        if pipelines > 0 {
            tracing::info!(pipelines, "settled runs of pipelines with steps left by a stopped process");
        }
        self.verify_deletions().await?;
        Ok(settled)
    }

    /// Stops the cluster jobs still writing shards of run `run_id` (a run whose files were
    /// written elsewhere, [`crate::runtime::format::files_named`]) on the cluster runs execute on
    /// now, before recovery deletes their files; a cluster that does not answer only costs a
    /// warning (what a job writes later, the second deletion of the run's files removes).
    #[cfg(feature = "cluster")]
    async fn stop_cluster_jobs(&self, run_id: &str) -> Result<()> {
        let Ok(Some(cluster)) = self.cluster() else { return Ok(()) };
        for entry in self.ledger.staged_files(run_id).await? {
            let Some(prefix) = crate::runtime::format::files_named(&entry) else { continue };
            let name = prefix.trim_end_matches('-');
            match crate::cluster::stop_jobs_named(&cluster, name).await {
                Ok(0) => {}
                Ok(stopped) => tracing::info!(%run_id, %cluster, stopped, "stopped the run's job before recovering it"),
                Err(e) => tracing::warn!(%run_id, "the run's job could not be stopped: {e}"),
            }
        }
        Ok(())
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
                Verifier::Delete(writer) if crate::paths::is_inside(writer.location(), &path) => writer,
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
        if Path::new(target).is_absolute() || crate::storage::is_remote(target) {
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
}

/// How recovery verifies the deletions of a target's failed runs.
enum Verifier {
    /// Delete each file again through the table's writer.
    Delete(Arc<dyn CommitTarget>),
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
        executors: Vec::new(),
        steps: Vec::new(),
        quality: None,
    }
}

/// A pipeline's options applied to its insert: the write mode, and the shard count
/// (`default_shards` when the options set none). `who` names the pipeline or run in errors.
fn with_options(
    options: &PipelineOptions,
    who: &str,
    insert: Insert,
    default_shards: usize,
) -> Result<(Insert, usize)> {
    let mode = options.write_mode(who, insert.mode)?;
    Ok((Insert { mode, ..insert }, options.shards.unwrap_or(default_shards)))
}

/// The error for a pipeline whose body is not an insert into a catalog table.
pub(super) fn not_a_catalog_insert(pipeline: &str) -> Error {
    not_a_catalog_write(&format!("pipeline `{pipeline}`"))
}

/// The error for a write (`who`: a pipeline, an INSERT with options) that is not an insert
/// into a catalog table.
fn not_a_catalog_write(who: &str) -> Error {
    Error::Unsupported(format!("{who}: the body must INSERT INTO a catalog table (catalog.schema.table)"))
}

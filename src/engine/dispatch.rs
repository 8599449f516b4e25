//! Each statement to its handler: Sluice's extensions here, DataFusion's statements planned by
//! DataFusion and, where they touch our catalogs, handed to `ddl.rs` and `write.rs`.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::TableReference;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{DescribeAlias, ObjectType, ShowCreateObject, Statement as SqlStatement};

use super::{Engine, Output};
use crate::error::{Error, Result};
use crate::ledger::PipelineRecord;
use crate::parser::{CreatePipeline, PipelineBody, Statement};
use crate::pipeline::{PipelineError, PipelineOptions};
use crate::system::{catalogs_batch, pipelines_batch, properties_batch, runs_batch};
use crate::table::{PartitionField, TableName};

impl Engine {
    pub(super) async fn execute_statement(&self, statement: &Statement, source: &str) -> Result<Output> {
        let plans_sql = matches!(
            statement,
            Statement::DataFusion(_)
                | Statement::CreatePartitionedTable { .. }
                | Statement::CreatePipeline(_)
                | Statement::RunPipeline { .. }
                | Statement::ExplainPipeline { .. }
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
                | Statement::AlterPipeline { .. }
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
            Statement::RunPipeline { name } => {
                let report = self.run_pipeline(name).await?;
                Ok(if report.steps.is_empty() { Output::run(report) } else { Self::steps_output(report) })
            }
            Statement::ExplainPipeline { name } => self.explain_pipeline(name).await,
            Statement::AlterPipeline { name, change } => self.alter_pipeline(name, change).await,
            Statement::AlterTableExpectation { table, change } => self.alter_table_expectation(table, change).await,
            Statement::InsertWith { insert, expectations, options } => {
                let insert = match (options.is_empty(), insert.as_ref()) {
                    (false, Statement::DataFusion(df)) => match df.as_ref() {
                        DFStatement::Statement(body) => body.as_ref().clone(),
                        other => return Err(Error::Unsupported(format!("WITH (...) on {other}"))),
                    },
                    _ => {
                        return Self::expecting(expectations.clone(), Box::pin(self.execute_statement(insert, source)))
                            .await;
                    }
                };
                // The run keeps the statement with its constraints and options, for RETRY RUN.
                let origin = crate::coordinator::RunOrigin {
                    statement: statement.to_string(),
                    run_id: Self::named_run(),
                    ..Default::default()
                };
                let write = self.insert_with_options(insert, options, origin);
                Ok(Output::run(Self::expecting(expectations.clone(), Box::pin(write)).await?))
            }
            Statement::CancelRun { run_id } => self.cancel_run(run_id).await,
            Statement::RetryRun { run_id } => {
                let report = self.retry_run(run_id).await?;
                Ok(if report.steps.is_empty() { Output::run(report) } else { Self::steps_output(report) })
            }
            Statement::ShowCatalogs => Ok(Output::rows(self.catalogs_batch())),
            Statement::ShowCluster => self.show_cluster().await,
            Statement::ShowPipelines => {
                Ok(Output::rows(pipelines_batch(&self.ledger.pipelines().await?, self.clock.now_ms())))
            }
            Statement::DescribePipeline { name } => self.describe_pipeline(name).await,
            Statement::DropPipeline { name, if_exists } => {
                if !self.ledger.drop_pipeline(name).await? && !if_exists {
                    return Err(self.no_pipeline(name).await);
                }
                Ok(Output::empty())
            }
            Statement::ShowRuns { pipeline, filter } => {
                if let Some(name) = pipeline
                    && self.ledger.pipeline(name).await?.is_none()
                    && self.ledger.runs(Some(name)).await?.is_empty()
                {
                    return Err(self.no_pipeline(name).await);
                }
                let Some(filter) = filter else {
                    return Ok(Output::rows(runs_batch(&self.ledger.runs(pipeline.as_deref()).await?)));
                };
                // A filter is a query over `sluice.runs` (the same rows).
                let of_pipeline = match pipeline {
                    Some(name) => {
                        let quoted = name.replace('\'', "''");
                        format!("(pipeline = '{quoted}' OR starts_with(pipeline, '{quoted}/')) AND ")
                    }
                    None => String::new(),
                };
                let sql =
                    format!("SELECT * FROM sluice.runs WHERE {of_pipeline}({filter}) ORDER BY started_at, run_id");
                let statements = crate::parser::parse(&sql)?;
                let statement = statements.into_iter().next().expect("one statement").statement;
                Box::pin(self.execute_statement(&statement, &sql)).await
            }
        }
    }

    /// Re-reads every catalog's schema and table names (other processes may have changed them).
    /// A catalog that cannot be reached keeps its last listing: statements that do not touch it
    /// still run, and those that do get its own error.
    pub(super) async fn refresh_catalogs(&self) {
        for (name, catalog) in &self.catalogs {
            if let Err(e) = catalog.refresh().await {
                tracing::warn!(catalog = %name, "could not refresh the catalog's listing: {e}");
            }
        }
    }

    pub(super) async fn plan_sql_statement(&self, statement: SqlStatement) -> Result<LogicalPlan> {
        let statement = DFStatement::Statement(Box::new(super::insert::positional(statement)));
        match self.ctx.state().statement_to_plan(statement.clone()).await {
            Ok(plan) => Self::bind_params(plan),
            Err(e) => Err(self.diagnose(e, &statement).await),
        }
    }

    /// Plans a DataFusion statement; runs it through a catalog when it touches one. `partition_by`
    /// comes with `CREATE TABLE ... PARTITIONED BY`, which only catalog tables can have.
    /// `source` is the statement as written (kept for external tables: DataFusion's own display
    /// of `CREATE EXTERNAL TABLE` does not read back).
    pub(super) async fn execute_datafusion(
        &self,
        statement: DFStatement,
        partition_by: &[PartitionField],
        source: &str,
    ) -> Result<Output> {
        let original = statement.clone();
        if let DFStatement::Statement(sql) = &statement {
            match sql.as_ref() {
                SqlStatement::ExplainTable {
                    describe_alias: DescribeAlias::Describe | DescribeAlias::Desc,
                    table_name,
                    ..
                } => {
                    return self.describe_table(table_name).await;
                }
                SqlStatement::ShowCreate { obj_type: ShowCreateObject::Table, obj_name } => {
                    return self.show_create_table(obj_name).await;
                }
                _ => {}
            }
        }
        let dropped_pipelines = self.pipelines_of_dropped_tables(&statement).await?;
        let result = match &statement {
            DFStatement::Explain(explain) => match self.explain_catalog_write(&explain.statement).await {
                Ok(Some(_)) if explain.analyze => Err(Error::Unsupported(
                    "EXPLAIN ANALYZE of a write (it would run it): EXPLAIN it, or run it and read its report"
                        .to_string(),
                )),
                Ok(Some(output)) => Ok(output),
                Ok(None) => self.execute_plan(statement, partition_by, source).await,
                Err(e) => Err(e),
            },
            _ => self.execute_plan(statement, partition_by, source).await,
        };
        match result {
            Err(Error::DataFusion(e)) => Err(self.diagnose(e, &original).await),
            Err(e) => Err(e),
            Ok(output) => {
                for pipeline in dropped_pipelines {
                    self.ledger.drop_pipeline(&pipeline).await?;
                }
                Ok(output)
            }
        }
    }

    /// The pipelines writing into the tables a `DROP TABLE ... CASCADE` drops (to drop with
    /// them); without `CASCADE`, an error naming them.
    async fn pipelines_of_dropped_tables(&self, statement: &DFStatement) -> Result<Vec<String>> {
        let DFStatement::Statement(sql) = statement else { return Ok(vec![]) };
        let SqlStatement::Drop { object_type: ObjectType::Table, names, cascade, .. } = sql.as_ref() else {
            return Ok(vec![]);
        };
        if self.ledger_damage.is_some() {
            return Ok(vec![]);
        }
        let tables: Vec<String> =
            names.iter().map(|n| self.resolve(&TableReference::parse_str(&n.to_string())).to_string()).collect();
        let pipelines = self.ledger.pipelines().await?;
        let writers: Vec<&PipelineRecord> =
            pipelines.iter().filter(|p| p.targets().any(|t| tables.iter().any(|table| table == t))).collect();
        if writers.is_empty() || *cascade {
            return Ok(writers.into_iter().map(|p| p.name.clone()).collect());
        }
        let list: Vec<String> = writers.iter().map(|p| format!("`{}` (into {})", p.name, p.target)).collect();
        Err(Error::Plan(format!(
            "pipeline(s) {} write into this table: DROP PIPELINE them first, or DROP TABLE ... CASCADE to drop them with it",
            list.join(", ")
        )))
    }

    async fn execute_plan(
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
            if super::write::is_object_store_file(copy) {
                return Box::pin(self.export_to_object_store(copy.clone(), partition_by, source)).await;
            }
        }
        self.execute_datafusion_plan(statement, partition_by, source).await
    }

    /// A DataFusion statement (not one of Sluice's exports), run by DataFusion unless it writes
    /// into a catalog.
    pub(super) async fn execute_datafusion_plan(
        &self,
        statement: DFStatement,
        partition_by: &[PartitionField],
        source: &str,
    ) -> Result<Output> {
        let state = self.ctx.state();
        let text = match &statement {
            DFStatement::Statement(sql) => Self::statement_text(sql),
            other => other.to_string(),
        };
        let statement = super::insert::positional_df(statement);
        let plan = Self::bind_params(state.statement_to_plan(statement.clone()).await?)?;
        match self.execute_catalog_plan(&plan, partition_by, text.clone()).await {
            Ok(Some(output)) => return Ok(output),
            Ok(None) => {}
            // Planning the write's rows can fail late (a literal folded into a column's type).
            Err(Error::DataFusion(e)) => return Err(self.diagnose(e, &statement).await),
            Err(e) => return Err(e),
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
        let batches = Self::until_cancelled(async { Ok(frame.collect().await?) }).await?;
        match session_table {
            Some((name, true)) => self.ledger.save_session_table(&name.to_string(), source).await?,
            Some((name, false)) => self.ledger.drop_session_table(&name.to_string()).await?,
            None => {}
        }
        Ok(Output { schema, batches, run: None, details: vec![] })
    }

    /// Registers again the external tables earlier processes created; one whose files are gone
    /// is skipped with a warning (and stays in the ledger, for when they are back).
    pub(super) async fn restore_session_tables(&self) -> Result<()> {
        for (name, definition) in self.ledger.session_tables().await? {
            if let Err(e) = self.sql(&definition).await {
                tracing::warn!(table = %name, "could not register the external table again: {e}");
            }
        }
        Ok(())
    }

    pub(super) fn resolve(&self, reference: &TableReference) -> TableName {
        let state = self.ctx.state();
        let defaults = &state.config_options().catalog;
        let resolved = reference.clone().resolve(&defaults.default_catalog, &defaults.default_schema);
        TableName::new(resolved.catalog.as_ref(), resolved.schema.as_ref(), resolved.table.as_ref())
    }

    pub(super) async fn create_pipeline(&self, create: &CreatePipeline, statement: &Statement) -> Result<Output> {
        let body = match &create.body {
            PipelineBody::Insert(body, _) => body,
            PipelineBody::Steps(steps) => return self.create_steps_pipeline(create, steps, statement).await,
        };
        let options = PipelineOptions::parse(&create.name, &create.options)?;
        super::cluster::parse_setting(options.cluster.as_deref().unwrap_or_default())?;
        for option in ["max_parallel_steps", "on_failure", "atomic"] {
            if create.options.iter().any(|(key, _)| key == option) {
                return Err(Error::Unsupported(format!(
                    "option `{option}` on pipeline `{}`: it is for pipelines with steps (AS BEGIN <step>; ... END)",
                    create.name
                )));
            }
        }
        // Plan the body now, so that unknown tables or columns are reported at CREATE time.
        let insert = self.insert_under(&format!("pipeline `{}`", create.name), body.as_ref().clone(), &options).await?;
        options.write_mode(&create.name, insert.mode)?;
        let catalog_file = self.catalog_files.get(&insert.table.catalog).map(|f| f.display().to_string());
        self.save_pipeline(create, statement, insert.table.to_string(), options.shards, catalog_file).await
    }

    /// "pipeline does not exist", with the name of a near one.
    pub(super) async fn no_pipeline(&self, name: &str) -> Error {
        let known = self.ledger.pipelines().await.unwrap_or_default();
        let hint = crate::suggest::did_you_mean(name, known.iter().map(|p| p.name.as_str()));
        PipelineError::NotFound { name: name.to_string(), hint }.into()
    }

    /// Every catalog: ours with type and location, and DataFusion's in-memory session catalog.
    pub(super) fn catalogs_batch(&self) -> RecordBatch {
        let mut rows: Vec<(String, &str, String)> =
            self.catalogs.iter().map(|(name, c)| (name.clone(), c.kind(), c.location().to_string())).collect();
        for name in self.ctx.catalog_names() {
            if !self.catalogs.contains_key(&name) {
                rows.push((name, "memory", "session (tables live until the process ends)".to_string()));
            }
        }
        rows.sort();
        catalogs_batch(&rows)
    }

    pub(super) async fn describe_pipeline(&self, name: &str) -> Result<Output> {
        let Some(record) = self.ledger.pipeline(name).await? else { return Err(self.no_pipeline(name).await) };
        let create = crate::pipeline::parse_definition(name, &record.definition)?;
        let shards = record.shards.map_or_else(|| format!("default ({})", self.shards), |s| s.to_string());
        let mut properties: Vec<(String, String)> = vec![
            ("name".into(), record.name.clone()),
            ("target".into(), record.target.clone()),
            ("shards".into(), shards),
            ("definition".into(), record.definition.clone()),
        ];
        let (runs, last_run_id, last_status) = match &create.body {
            PipelineBody::Insert(..) => {
                let runs = self.ledger.runs(Some(name)).await?;
                let last = runs.last().map(|r| (r.run_id.clone(), r.status.as_str().to_string()));
                (runs.len(), last.clone().map(|l| l.0), last.map(|l| l.1))
            }
            PipelineBody::Steps(steps) => {
                let options = PipelineOptions::parse(name, &create.options)?;
                properties.extend([
                    ("max_parallel_steps".into(), options.max_parallel_steps.to_string()),
                    ("retries".into(), options.retries.to_string()),
                    ("retry_backoff".into(), format!("{:?}", options.retry_backoff)),
                    ("on_failure".into(), format!("{:?}", options.on_failure).to_lowercase()),
                    ("atomic".into(), options.atomic.to_string()),
                ]);
                let dag = self.dag_of(name, steps)?;
                for step in &dag.steps {
                    let after: Vec<&str> = step.depends_on.iter().map(|&j| dag.steps[j].name.as_str()).collect();
                    let after = if after.is_empty() { String::new() } else { format!(" (after {})", after.join(", ")) };
                    properties.push((format!("step {}", step.name), format!("{}{after}", step.step.statement)));
                }
                let runs: Vec<_> =
                    self.ledger.pipeline_runs().await?.into_iter().filter(|r| r.pipeline == name).collect();
                let last = runs.last().map(|r| (r.run_id.clone(), r.status.clone()));
                (runs.len(), last.clone().map(|l| l.0), last.map(|l| l.1))
            }
        };
        properties.extend([
            ("runs".into(), runs.to_string()),
            ("last_run_id".into(), last_run_id.unwrap_or_default()),
            ("last_status".into(), last_status.unwrap_or_default()),
        ]);
        let properties: Vec<(&str, String)> = properties.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Ok(Output::rows(properties_batch(&properties)))
    }
}

//! Writes as runs: `INSERT [OVERWRITE]` and `CREATE TABLE ... AS` into a catalog table through
//! the table's commit coordinator, and `COPY ... TO 'file'` through the file merge.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use datafusion::sql::parser::{CopyToSource, CopyToStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use super::{Engine, Output};
use datafusion::logical_expr::DdlStatement;
use datafusion::object_store::ObjectStoreExt;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, displayable};
use datafusion::sql::parser::Statement as DFStatement;

use crate::coordinator::{Coordinator, ExportFormat, FileMerge, HeldRun, RunError, RunJob, RunOrigin, RunReport};
use crate::error::{Error, Result};
use crate::paths;
use crate::planner;
use crate::system::explain_batch;
use crate::table::{TableName, WriteMode};

/// Whether `copy` writes one file into an object store (`s3://bucket/dir/out.csv`).
pub(super) fn is_object_store_file(copy: &CopyToStatement) -> bool {
    crate::storage::is_remote(&copy.target)
        && !copy.target.ends_with('/')
        && copy.partitioned_by.is_empty()
        && std::path::Path::new(&copy.target).extension().is_some()
}

/// What did not fit, if `error` is a run that failed on a row that did not fit its table.
fn unfit_row(error: &Error) -> Option<String> {
    match error {
        Error::Run(run) => match run.as_ref() {
            RunError::Shard { source: crate::runtime::ShardError::Unfit { source, .. }, .. } => {
                Some(source.to_string())
            }
            _ => None,
        },
        _ => None,
    }
}

/// A write's run, what it writes where, its expectations' tally, and the context to run it in.
pub(super) type PlannedWrite =
    (RunJob, String, Option<Arc<super::expect::Tally>>, Arc<datafusion::execution::TaskContext>);

/// An `INSERT [OVERWRITE] INTO <catalog table>`: the table, the rows, and how they change it.
#[derive(Debug)]
pub(super) struct Insert {
    pub table: TableName,
    pub input: LogicalPlan,
    pub mode: WriteMode,
    /// The writer, when the write changes the table's schema (else the table's as it is).
    pub writer: Option<Arc<dyn crate::coordinator::CommitTarget>>,
}

impl Engine {
    /// The insert a plan makes into a catalog table of ours, if it is one.
    pub(super) fn insert_target(&self, plan: LogicalPlan) -> Result<Option<Insert>> {
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
        let input = super::insert::without_lossy_casts(input.as_ref().clone())?;
        Ok(Some(Insert { table, input, mode, writer: None }))
    }

    /// Plans `input` and runs it through the table's commit coordinator: one run, one snapshot.
    pub(super) async fn write(&self, insert: Insert, shards: usize, origin: RunOrigin) -> Result<RunReport> {
        let (table, input, writer) = (insert.table.clone(), insert.input.clone(), insert.writer.clone());
        let (error, unfit) = match Box::pin(self.write_planned(insert, shards, origin)).await {
            Err(e) => match unfit_row(&e) {
                Some(unfit) => (e, unfit),
                None => return Err(e),
            },
            ok => return ok,
        };
        // A row that does not fit the table: where it is, if the write reads a file row for row.
        let target = match (writer, self.catalog_of(&table.catalog)) {
            (Some(writer), _) => writer.schema().clone(),
            (None, Some(catalog)) => match catalog.writer(&table).await {
                Ok(writer) => writer.schema().clone(),
                Err(_) => return Err(error),
            },
            (None, None) => return Err(error),
        };
        // A failed write must not take as long again to report: the search has a time budget.
        let located = tokio::time::timeout(super::locate::BUDGET, self.locate_unfit_row(&input, &target, &unfit));
        match located.await {
            Ok(Some(location)) => Err(Error::InInput { source: Box::new(error), location }),
            Ok(None) | Err(_) => Err(error),
        }
    }

    /// [`Engine::write`] up to its result.
    async fn write_planned(&self, insert: Insert, shards: usize, origin: RunOrigin) -> Result<RunReport> {
        let table = insert.table.clone();
        let (job, _, tally, task_ctx) = self.plan_write(insert, shards, origin).await?;
        let (target, pipeline) = (job.target.clone(), job.origin.pipeline.clone());
        let result = match &tally {
            Some(tally) if tally.quarantines() => self.write_with_quarantine(&table, job, tally).await,
            _ => self.runner.run(job, task_ctx).await.map_err(Into::into),
        };
        let Some(tally) = tally else { return result };
        // What the expectations found is kept for the run, committed or not.
        let quality = tally.report();
        let run_id = match &result {
            Ok(report) => Some(report.run_id.clone()),
            Err(e) => e.run_id().map(str::to_string),
        };
        if let Some(run_id) = run_id {
            self.ledger.record_expectations(&run_id, pipeline.as_deref(), &target, &quality).await?;
        }
        let mut report = result?;
        report.quality = Some(quality);
        Ok(report)
    }

    /// As [`Engine::write`], up to the commit, which is written and held for a swap together
    /// with other tables' (an atomic pipeline's step): the write's held run, then, if it
    /// quarantined rows, the quarantine table's, to be published in the same swap.
    pub(super) async fn write_held(&self, insert: Insert, shards: usize, origin: RunOrigin) -> Result<Vec<HeldRun>> {
        let table = insert.table.clone();
        let (job, _, tally, task_ctx) = self.plan_write(insert, shards, origin).await?;
        let pipeline = job.origin.pipeline.clone();
        let held = match &tally {
            Some(tally) if tally.quarantines() => self.hold_with_quarantine(&table, job, tally).await,
            _ => self.runner.hold(job, task_ctx).await.map(|run| vec![run]).map_err(Into::into),
        };
        let Some(tally) = tally else { return held };
        // The counts are final once the shards have staged, whether the group publishes or not.
        let run_id = match &held {
            Ok(runs) => runs.first().map(|run| run.run_id().to_string()),
            Err(e) => e.run_id().map(str::to_string),
        };
        if let Some(run_id) = run_id {
            self.ledger.record_expectations(&run_id, pipeline.as_deref(), &table.to_string(), &tally.report()).await?;
        }
        held
    }

    /// The run a write makes, a line saying what it writes where, the tally of its
    /// expectations (the statement's), if it has any, and the context to run it in (a
    /// cluster's, when it runs on one).
    async fn plan_write(&self, insert: Insert, shards: usize, origin: RunOrigin) -> Result<PlannedWrite> {
        let Insert { table, input, mode, writer } = insert;
        let catalog = self.catalog_of(&table.catalog).expect("write targets are catalog tables");
        #[cfg(feature = "cluster")]
        if let Some(url) = self.cluster()? {
            // Executors open the table as it is: a write that changes its schema runs here.
            if writer.is_some() {
                return Err(Error::Unsupported(format!(
                    "schema_evolution in a write into `{table}` on cluster {url}: its executors write with the \
                     table's schema as it is (run it here: SET sluice.cluster = 'local')"
                )));
            }
            let writer = catalog.writer(&table).await?;
            return self.plan_cluster_write(&url, table, writer, input, mode, shards, origin).await;
        }
        let writer = match writer {
            Some(writer) => writer,
            None => catalog.writer(&table).await?,
        };
        let state = self.ctx.state();
        let mut input = state.create_physical_plan(&input).await?;
        // A pipeline's `bad_rows`: its CSV / JSON scans read line by line, bad lines kept out.
        let bad_lines = Self::bad_rows().map(|mode| Arc::new(crate::sources::BadLines::new(mode)));
        if let Some(bad_lines) = &bad_lines {
            input = crate::sources::tolerate(input, bad_lines)?;
        }
        let expectations = self.expectations_for(&table).await?;
        let (input, tally) = match expectations.is_empty() && bad_lines.is_none() {
            true => (input, None),
            false => {
                let (input, tally) = super::expect::apply(&state, input, &expectations, bad_lines)?;
                (input, Some(tally))
            }
        };
        let partition_key = planner::physical_partition_key(&state, writer.partitioning(), &input)?;
        let fields: Vec<String> = writer.partitioning().iter().map(ToString::to_string).collect();
        let partitioning = match fields.is_empty() {
            true => "unpartitioned".to_string(),
            false => format!("partitioned by {}", fields.join(", ")),
        };
        let summary = format!("{} into {table} ({} table, {partitioning})", mode.as_str(), writer.format());
        let base = writer.base();
        let target = table.to_string();
        let coordinator = self.layered(writer.coordinator(table, partition_key, mode));
        let check = tally.clone().map(|t| t as Arc<dyn crate::coordinator::StagedCheck>);
        let job = RunJob { target, coordinator, input, shards, base, origin, cancel: Self::cancel_token(), check };
        Ok((job, summary, tally, state.task_ctx()))
    }

    /// `EXPLAIN` of a write: the target, the mode and the sharded physical plan, without running it.
    pub(super) async fn explain_write(&self, insert: Insert, shards: usize) -> Result<Output> {
        let (job, summary, _, _) = self.plan_write(insert, shards, RunOrigin::default()).await?;
        let RunJob { target, coordinator, input, shards, .. } = job;
        let plan = coordinator.prepare_shards(input, shards).map_err(|source| RunError::Prepare { target, source })?;
        Ok(explain_output(&summary, plan.as_ref()))
    }

    /// `EXPLAIN` of an `INSERT` or `CREATE TABLE ... AS` into a catalog table; `None` for any
    /// other statement (DataFusion explains it).
    pub(super) async fn explain_catalog_write(&self, statement: &DFStatement) -> Result<Option<Output>> {
        let write = matches!(statement, DFStatement::Statement(s)
            if matches!(s.as_ref(), SqlStatement::Insert(_) | SqlStatement::CreateTable(_)));
        if !write {
            return Ok(None);
        }
        let state = self.ctx.state();
        let statement = super::insert::positional_df(statement.clone());
        let plan = Self::bind_params(state.statement_to_plan(statement).await?)?;
        if let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) = &plan {
            let table = self.resolve(&create.name);
            let Some(catalog) = self.catalog_of(&table.catalog) else { return Ok(None) };
            let input = state.create_physical_plan(&create.input).await?;
            let plan = planner::shard_plan(input, self.shards, vec![])?;
            let summary = format!(
                "create {table} (unpartitioned, in {} catalog `{}`), then append into it",
                catalog.kind(),
                table.catalog
            );
            return Ok(Some(explain_output(&summary, plan.as_ref())));
        }
        match self.insert_target(plan)? {
            Some(insert) => Ok(Some(self.explain_write(insert, self.shards).await?)),
            None => Ok(None),
        }
    }

    /// `COPY (SELECT ...) TO 'file.csv'` (or `.jsonl`, `.json`, `.parquet`, or `STORED AS`; also
    /// `'s3://bucket/dir/file.csv'`): the shards write part files that the file-merge
    /// coordinator merges into the one file. `None` leaves the statement to DataFusion: a folder,
    /// partitioned output, format options, or a URL of another kind.
    pub(super) async fn export(&self, copy: &CopyToStatement, statement: &str) -> Result<Option<Output>> {
        let path = PathBuf::from(&copy.target);
        let format = match &copy.stored_as {
            Some(name) => ExportFormat::parse(name),
            None => ExportFormat::of_path(&path),
        };
        let reachable = !copy.target.contains("://") || crate::storage::is_remote(&copy.target);
        let is_file = path.extension().is_some() && reachable && !copy.target.ends_with('/');
        let (Some(format), true, true, true) =
            (format, is_file, copy.partitioned_by.is_empty(), copy.options.is_empty())
        else {
            return Ok(None);
        };
        let plan = match &copy.source {
            CopyToSource::Query(query) => self.plan_sql_statement(SqlStatement::Query(query.clone())).await?,
            CopyToSource::Relation(name) => self.ctx.table(name.to_string().as_str()).await?.into_unoptimized_plan(),
        };
        let (target, merge) = self.file_merge(&copy.target, format)?;
        let state = self.ctx.state();
        let input = state.create_physical_plan(&plan).await?;
        let job = RunJob {
            target,
            coordinator: self.layered(Arc::new(merge)),
            input,
            shards: self.shards,
            base: None,
            origin: RunOrigin { statement: statement.to_string(), ..RunOrigin::default() },
            cancel: Self::cancel_token(),
            check: None,
        };
        Ok(Some(Output::run(self.runner.run(job, state.task_ctx()).await?)))
    }

    /// The export run's target (the file's absolute path, or the object's URL) and its
    /// coordinator. An object's parts are staged in the home's `exports/` folder.
    pub(super) fn file_merge(&self, target: &str, format: ExportFormat) -> Result<(String, FileMerge)> {
        if crate::storage::is_remote(target) {
            let not_a_file = || Error::Plan(format!("COPY TO `{target}`: not a file in an object store"));
            let root = crate::storage::store_root(target).ok_or_else(not_a_file)?;
            let object =
                crate::storage::object_path(target).filter(|p| p.filename().is_some()).ok_or_else(not_a_file)?;
            let url = datafusion::execution::object_store::ObjectStoreUrl::parse(root.as_str())?;
            let store = self.ctx.runtime_env().object_store(&url)?;
            let staging = self.home.join("exports");
            return Ok((target.to_string(), FileMerge::to_object(target, store, object, &staging, format)));
        }
        let path = std::path::absolute(target).map_err(|source| Error::Io { path: target.to_string(), source })?;
        Ok((path.display().to_string(), FileMerge::new(path, format)))
    }

    /// `COPY ... TO 's3://bucket/dir/out.parquet' OPTIONS (...)` (one file in an object store, in a
    /// form only DataFusion's COPY writes): DataFusion writes
    /// a hidden object beside the target (`dir/.out.<uuid>.parquet`), which is copied onto the
    /// target only once complete and then deleted; on failure it is deleted and the old object
    /// stays, as a local export's rename-into-place promises.
    pub(super) async fn export_to_object_store(
        &self,
        copy: CopyToStatement,
        partition_by: &[crate::table::PartitionField],
        source: &str,
    ) -> Result<Output> {
        let not_a_file = || Error::Plan(format!("COPY TO `{}`: not a file in an object store", copy.target));
        let root = crate::storage::store_root(&copy.target).ok_or_else(not_a_file)?;
        let target = crate::storage::object_path(&copy.target).ok_or_else(not_a_file)?;
        let name = target.filename().ok_or_else(not_a_file)?.to_string();
        let (stem, extension) = name.rsplit_once('.').ok_or_else(not_a_file)?;
        let folder = target.as_ref().strip_suffix(&name).unwrap_or_default().trim_end_matches('/');
        let hidden = format!("{folder}/.{stem}.{}.{extension}", uuid::Uuid::now_v7());
        let hidden = datafusion::object_store::path::Path::from(hidden.trim_start_matches('/'));
        let store_url = datafusion::execution::object_store::ObjectStoreUrl::parse(root.as_str())?;
        let store = self.ctx.runtime_env().object_store(&store_url)?;
        let mut temporary = copy.clone();
        temporary.target = format!("{}/{hidden}", root.as_str().trim_end_matches('/'));
        let written = self.execute_datafusion_plan(DFStatement::CopyTo(temporary), partition_by, source).await;
        let placed = match written {
            Ok(output) => store
                .copy(&hidden, &target)
                .await
                .map(|()| output)
                .map_err(|e| Error::Plan(format!("COPY TO `{}`: {e}", copy.target))),
            Err(e) => Err(e),
        };
        if let Err(e) = store.delete(&hidden).await
            && !matches!(e, datafusion::object_store::Error::NotFound { .. })
        {
            tracing::warn!(target = %copy.target, "the export's hidden object {hidden} was left: {e}");
        }
        placed
    }

    /// Refuses a `COPY` into the home folder (the ledger, the catalog database) or into a
    /// catalog's warehouse or root (tables' data and metadata), or a folder holding either;
    /// symbolic links are followed first. An object store URL is refused inside (or above) a
    /// catalog's bucket prefix.
    pub(super) fn check_export_target(&self, target: &str) -> Result<()> {
        let refused = |reason: String| Error::ExportRefused { target: target.to_string(), reason };
        if crate::storage::is_remote(target) {
            for (name, catalog) in &self.catalogs {
                if let Some(root) = catalog.root().filter(|root| root.overlaps(target)) {
                    let reason = format!("it would write into the tables of catalog `{name}` at {}", root.display());
                    return Err(refused(reason));
                }
            }
            return Ok(());
        }
        let Some(path) = paths::local_path(target) else { return Ok(()) };
        let path = paths::resolve(&path).ok_or_else(|| refused("the path climbs above `/`".into()))?;
        let mut protected = vec![("the Sluice home".to_string(), self.home.clone())];
        for (name, catalog) in &self.catalogs {
            if let Some(root) = catalog.root().and_then(crate::storage::Root::local) {
                protected.push((format!("the tables of catalog `{name}`"), root.to_path_buf()));
            }
        }
        for (what, root) in protected {
            let root = paths::resolve(&root).unwrap_or(root);
            if paths::overlaps(&path, &root) {
                return Err(refused(format!("{} would write into {what} at {}", path.display(), root.display())));
            }
        }
        Ok(())
    }

    /// The run's coordinator: the built-in one, wrapped by the layer the engine was built with.
    pub(super) fn layered(&self, builtin: Arc<dyn Coordinator>) -> Arc<dyn Coordinator> {
        match &self.layer {
            Some(layer) => layer(builtin),
            None => builtin,
        }
    }
}

/// `EXPLAIN` rows of a write: what it writes where, then its sharded physical plan.
fn explain_output(summary: &str, plan: &dyn ExecutionPlan) -> Output {
    let shards = plan.output_partitioning().partition_count();
    let write = format!("{summary}\n{shards} shard(s), each writing its own files; one atomic commit");
    let plan = displayable(plan).indent(true).to_string();
    Output::rows(explain_batch(&[("sluice_write", write), ("physical_plan", plan)]))
}

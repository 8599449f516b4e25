//! Expectations on a write's rows (`INSERT INTO t (CONSTRAINT name EXPECT (condition) ON VIOLATION
//! ...) ...`), evaluated by DataFusion once per batch (vectorized), between the query and the
//! shards: every condition is counted (NULL counts as met, as in CHECK); `DROP ROW` removes the
//! rows that break it; `FAIL` lets the shards stage and then stops the run before its commit
//! ([`StagedCheck`]) with the count and up to 10 sample rows; `WARN` only counts.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array,
};
use datafusion::arrow::compute::{and, filter_record_batch, not, or, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{DFSchema, Result as DFResult, exec_err, plan_err};
use datafusion::execution::context::SessionState;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use super::{Engine, Output};
use crate::coordinator::{ConstraintCount, QualityReport, StagedCheck};
use crate::error::{Error, Result};
use crate::parser::{Expectation, TableExpectation, Violation};
use crate::pipeline::BadRows;
use crate::runtime::Kept;
use crate::sources::BadLines;
use crate::table::TableName;

impl Engine {
    /// `ALTER TABLE t ADD CONSTRAINT ... EXPECT ...` / `DROP CONSTRAINT`: the table's own
    /// expectations, kept in the ledger and checked on every write into it (a write's own
    /// constraint of the same name takes its place).
    pub(super) async fn alter_table_expectation(
        &self,
        table: &datafusion::sql::sqlparser::ast::ObjectName,
        change: &TableExpectation,
    ) -> Result<Output> {
        self.require_ledger()?;
        let name = self.resolve(&datafusion::common::TableReference::parse_str(&table.to_string()));
        if self.ctx.table_provider(super::describe::reference(&name)).await.is_err() {
            return Err(Error::Plan(self.no_table(&table.to_string())));
        }
        match change {
            TableExpectation::Add(e) => {
                let kept = (e.name.as_str(), e.condition.as_str(), e.action.as_str());
                if !self.ledger.add_table_expectation(&name.to_string(), kept).await? {
                    return Err(Error::Plan(format!("`{name}` already has a constraint `{}`", e.name)));
                }
            }
            TableExpectation::Drop { name: constraint, if_exists } => {
                if !self.ledger.drop_table_expectation(&name.to_string(), constraint).await? && !if_exists {
                    return Err(Error::Plan(format!("`{name}` has no constraint `{constraint}`")));
                }
            }
        }
        Ok(Output::empty())
    }

    /// A write whose expectations quarantine rows: the quarantined rows (with the run id and the
    /// time) go into `<table>__quarantine` (created on first use). On a catalog that publishes
    /// several tables in one transaction, the good rows' commit and the quarantine's are held
    /// and published together: a reader sees both or neither, and recovery settles a crash alike
    /// (failpoints `before-publish/<table>`, `after-publish/<table>`). Elsewhere the good rows
    /// stage, the quarantine commits, then the good rows commit: a crash between the two leaves
    /// the quarantined rows and rolls the good ones back, so no reader sees good rows whose bad
    /// rows are missing (failpoint `between-publishes/<table>`, a crash there).
    pub(super) async fn write_with_quarantine(
        &self,
        table: &TableName,
        job: crate::coordinator::RunJob,
        tally: &Tally,
    ) -> Result<crate::coordinator::RunReport> {
        let catalog = self.catalog_of(&table.catalog).expect("write targets are catalog tables").clone();
        let target_schema = catalog.writer(table).await?.schema().clone();
        let origin = job.origin.clone();
        let task_ctx = self.ctx.state().task_ctx();
        if catalog.can_publish_together().is_err() {
            let main = self.runner.stage(job, task_ctx).await?;
            let (bad, lines) = (tally.take_quarantined(), tally.take_bad_lines());
            if !bad.is_empty() || !lines.is_empty() {
                let (insert, quarantine_origin) =
                    self.quarantine_insert(table, &target_schema, (bad, lines), main.run_id(), origin).await?;
                let written = Self::unchecked(self.write(insert, 1, quarantine_origin));
                if let Err(e) = Box::pin(written).await {
                    self.runner.release_staged(main, &format!("its quarantine failed: {e}")).await?;
                    return Err(e);
                }
                if let Err(failpoint) = crate::failpoint::check("between-publishes", &table.to_string()) {
                    // As a crash: the good rows stay staged until recovery rolls them back.
                    return Err(Error::Unsupported(format!("stopped by failpoint `{failpoint}`")));
                }
            }
            return Ok(self.runner.commit_staged(main).await?);
        }
        let group = self.hold_with_quarantine(table, job, tally).await?;
        let publish =
            move |commits: Vec<crate::coordinator::HeldCommit>| async move { catalog.publish_together(&commits).await };
        let mut reports = self.runner.publish_together(&table.to_string(), group, publish).await?;
        Ok(reports.swap_remove(0))
    }

    /// A write whose rows are quarantined, up to its commit, held on a catalog that publishes
    /// several tables in one transaction: the good rows' held run, then (if any row was
    /// quarantined) the quarantine's. Either both are held or neither (the first is released).
    pub(super) async fn hold_with_quarantine(
        &self,
        table: &TableName,
        job: crate::coordinator::RunJob,
        tally: &Tally,
    ) -> Result<Vec<crate::coordinator::HeldRun>> {
        let catalog = self.catalog_of(&table.catalog).expect("write targets are catalog tables");
        if let Err(why) = catalog.can_publish_together() {
            return Err(Error::Unsupported(format!("quarantined rows of `{table}` cannot be held: {why}")));
        }
        let target_schema = catalog.writer(table).await?.schema().clone();
        let origin = job.origin.clone();
        let main = self.runner.hold(job, self.ctx.state().task_ctx()).await?;
        let (bad, lines) = (tally.take_quarantined(), tally.take_bad_lines());
        let mut group = vec![main];
        if !bad.is_empty() || !lines.is_empty() {
            let held = async {
                let (insert, origin) =
                    self.quarantine_insert(table, &target_schema, (bad, lines), group[0].run_id(), origin).await?;
                Box::pin(Self::unchecked(self.write_held(insert, 1, origin))).await
            };
            match held.await {
                Ok(mut held) => group.append(&mut held),
                Err(e) => {
                    self.runner.release(group, &e.to_string(), crate::ledger::RunStatus::Failed).await?;
                    return Err(e);
                }
            }
        }
        Ok(group)
    }

    /// The write of run `run_id`'s quarantined rows (rows an expectation quarantined, each with
    /// the constraints it broke, and bad input lines) into the quarantine table (created if
    /// missing), and its origin.
    async fn quarantine_insert(
        &self,
        table: &TableName,
        target: &datafusion::arrow::datatypes::SchemaRef,
        (rows, lines): (Vec<RecordBatch>, Vec<crate::sources::BadLine>),
        run_id: &str,
        origin: crate::coordinator::RunOrigin,
    ) -> Result<(super::write::Insert, crate::coordinator::RunOrigin)> {
        let quarantine = quarantine_name(table, Self::quarantine_table())?;
        let nullable = |fields: &[Arc<Field>]| -> Vec<Field> {
            fields.iter().map(|f| f.as_ref().clone().with_nullable(true)).collect()
        };
        let catalog = self.catalog_of(&table.catalog).expect("checked by the caller");
        let mut fields = nullable(target.fields());
        fields.extend(quarantine_columns());
        catalog.create_table(&quarantine, &Schema::new(fields), &[], true).await?;
        // The table's columns as the quarantined rows have them (the query's types).
        let mut fields = match rows.first() {
            Some(batch) => nullable(&batch.schema().fields()[..batch.num_columns() - 1]),
            None => nullable(target.fields()),
        };
        let values = fields.len();
        fields.extend(quarantine_columns());
        let schema = Arc::new(Schema::new(fields));
        let at = self.clock.now_ms() * 1000;
        let when = |count: usize| -> [ArrayRef; 2] {
            [
                Arc::new(StringArray::from(vec![run_id; count])),
                Arc::new(TimestampMicrosecondArray::from(vec![at; count])),
            ]
        };
        let mut batches = Vec::new();
        for batch in rows {
            let count = batch.num_rows();
            let mut columns = batch.columns().to_vec();
            columns
                .extend(schema.fields()[values + 1..values + 5].iter().map(|f| new_null_array(f.data_type(), count)));
            columns.extend(when(count));
            batches.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        if !lines.is_empty() {
            let count = lines.len();
            let mut columns: Vec<ArrayRef> =
                schema.fields()[..=values].iter().map(|f| new_null_array(f.data_type(), count)).collect();
            columns.push(Arc::new(StringArray::from_iter_values(lines.iter().map(|l| l.file.as_str()))));
            columns.push(Arc::new(Int64Array::from_iter_values(lines.iter().map(|l| l.line as i64))));
            columns.push(Arc::new(StringArray::from_iter_values(lines.iter().map(|l| l.raw.as_str()))));
            columns.push(Arc::new(StringArray::from_iter_values(lines.iter().map(|l| l.error.as_str()))));
            columns.extend(when(count));
            batches.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        let input = self.ctx.read_batches(batches)?.into_unoptimized_plan();
        let mode = crate::table::WriteMode::Append;
        let insert = super::write::Insert { table: quarantine, input, mode, writer: None };
        // A run of its own name: the good rows' run of the same pipeline is still open.
        let origin = crate::coordinator::RunOrigin {
            pipeline: origin.pipeline.map(|p| format!("{p}#quarantine")),
            statement: format!("-- rows of run {run_id} quarantined from `{table}`"),
            retry_of: None,
            run_id: None,
        };
        Ok((insert, origin))
    }

    /// The expectations of a write into `table`: the statement's, then the table's own that the
    /// statement does not name.
    pub(super) async fn expectations_for(&self, table: &TableName) -> Result<Vec<Expectation>> {
        let mut expectations = Self::expectations();
        if self.ledger_damage().is_some() {
            return Ok(expectations);
        }
        for (name, condition, action) in self.ledger.table_expectations(&table.to_string()).await? {
            if expectations.iter().any(|e| e.name == name) {
                continue;
            }
            let action = Violation::parse(&action).unwrap_or(Violation::Warn);
            expectations.push(Expectation { name, condition, action });
        }
        Ok(expectations)
    }
}

/// Where `table`'s quarantined rows go: `named` (`quarantine_table = '...'`, relative to the
/// table's catalog and schema; another catalog is refused, as the two publish together), else
/// `<table>__quarantine`.
fn quarantine_name(table: &TableName, named: Option<String>) -> Result<TableName> {
    let Some(named) = named else {
        return Ok(TableName::new(&table.catalog, &table.schema, format!("{}__quarantine", table.table)));
    };
    let parts: Vec<&str> = named.split('.').collect();
    let name = match parts.as_slice() {
        [t] => TableName::new(&table.catalog, &table.schema, *t),
        [s, t] => TableName::new(&table.catalog, *s, *t),
        [c, s, t] => TableName::new(*c, *s, *t),
        _ => return Err(Error::Plan(format!("quarantine_table = '{named}': not a table name"))),
    };
    if name.catalog != table.catalog || name == *table {
        return Err(Error::Plan(format!(
            "quarantine_table = '{named}': the quarantine of `{table}` must be another table of catalog `{}`",
            table.catalog
        )));
    }
    Ok(name)
}

/// Rows of a `FAIL` expectation kept for its error.
const SAMPLES_MAX: usize = 10;

/// One expectation, planned, with its counts.
#[derive(Debug)]
struct Constraint {
    expectation: Expectation,
    condition: Arc<dyn PhysicalExpr>,
    passed: AtomicU64,
    failed: AtomicU64,
    samples: Mutex<Vec<String>>,
}

/// The counts of a write's expectations, shared by every partition of its rows.
#[derive(Debug)]
pub(crate) struct Tally {
    constraints: Vec<Constraint>,
    rows_in: AtomicU64,
    dropped: AtomicU64,
    /// Rows a `QUARANTINE` expectation took out, each with the names of every constraint it
    /// broke (column [`CONSTRAINTS_COLUMN`]), for the quarantine table.
    quarantined: Kept<RecordBatch>,
    quarantined_rows: AtomicU64,
    /// The bad lines of the write's input files (`bad_rows`), if it reads them line by line.
    bad_lines: Option<Arc<BadLines>>,
}

/// A [`Tally`]'s counts: rows in, dropped and quarantined, and each expectation's passed and
/// failed counts with its sample rows (in the expectations' order).
#[cfg(feature = "cluster")]
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TallyCounts {
    rows_in: u64,
    dropped: u64,
    quarantined: u64,
    constraints: Vec<(u64, u64, Vec<String>)>,
}

/// The quarantine table's column naming the constraints a row broke.
pub(super) const CONSTRAINTS_COLUMN: &str = "_sluice_constraints";

/// The quarantine table's columns after the table's own: the constraints a row broke, or, for a
/// bad input line, its file, line number, text and error; then the run that quarantined it, and
/// when.
fn quarantine_columns() -> [Field; 7] {
    let timestamp = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None);
    [
        Field::new(CONSTRAINTS_COLUMN, DataType::Utf8, true),
        Field::new("_sluice_source_file", DataType::Utf8, true),
        Field::new("_sluice_source_line", DataType::Int64, true),
        Field::new("_sluice_raw_line", DataType::Utf8, true),
        Field::new("_sluice_error", DataType::Utf8, true),
        Field::new("_sluice_run_id", DataType::Utf8, false),
        Field::new("_sluice_quarantined_at", timestamp, false),
    ]
}

impl Tally {
    /// What the run's report and `sluice.expectations` say.
    /// What the run's report and `sluice.expectations` say. Bad input lines count as a
    /// constraint `bad_rows`; quarantined ones are rows in, and quarantined.
    pub(super) fn report(&self) -> QualityReport {
        let lines_quarantined =
            self.bad_lines.as_ref().filter(|b| b.mode() == BadRows::Quarantine).map_or(0, |b| b.count());
        let constraints = self.constraints.iter().map(|c| ConstraintCount {
            name: c.expectation.name.clone(),
            action: c.expectation.action.as_str().to_string(),
            passed: c.passed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        });
        let lines = self.bad_lines.iter().map(|b| ConstraintCount {
            name: "bad_rows".to_string(),
            action: b.mode().as_str().to_string(),
            passed: b.good(),
            failed: b.count(),
        });
        QualityReport {
            rows_in: self.rows_in.load(Ordering::Relaxed) + lines_quarantined,
            rows_dropped: self.dropped.load(Ordering::Relaxed),
            rows_quarantined: self.quarantined_rows.load(Ordering::Relaxed) + lines_quarantined,
            constraints: lines.chain(constraints).collect(),
        }
    }

    /// The counts so far, as they travel from a cluster's executor (one shard's) to the
    /// process that commits ([`Tally::add`]); the quarantined rows travel beside them.
    #[cfg(feature = "cluster")]
    pub(crate) fn counts(&self) -> TallyCounts {
        TallyCounts {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            quarantined: self.quarantined_rows.load(Ordering::Relaxed),
            constraints: self
                .constraints
                .iter()
                .map(|c| {
                    let samples = c.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    (c.passed.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed), samples)
                })
                .collect(),
        }
    }

    /// Adds another tally's counts of the same expectations and the rows it quarantined (a
    /// shard's, from the executor that wrote it), those kept in memory from `pool`.
    #[cfg(feature = "cluster")]
    pub(crate) fn add(
        &self,
        counts: &TallyCounts,
        quarantined: Vec<RecordBatch>,
        pool: &Arc<dyn MemoryPool>,
    ) -> DFResult<()> {
        if counts.constraints.len() != self.constraints.len() {
            return exec_err!(
                "a shard counted {} expectations, not {}",
                counts.constraints.len(),
                self.constraints.len()
            );
        }
        self.rows_in.fetch_add(counts.rows_in, Ordering::Relaxed);
        self.dropped.fetch_add(counts.dropped, Ordering::Relaxed);
        self.quarantined_rows.fetch_add(counts.quarantined, Ordering::Relaxed);
        for batch in quarantined {
            let bytes = batch.get_array_memory_size();
            self.quarantined.keep(batch, bytes, pool)?;
        }
        for (constraint, (passed, failed, samples)) in self.constraints.iter().zip(&counts.constraints) {
            constraint.passed.fetch_add(*passed, Ordering::Relaxed);
            constraint.failed.fetch_add(*failed, Ordering::Relaxed);
            let mut kept = constraint.samples.lock().unwrap_or_else(|p| p.into_inner());
            let room = SAMPLES_MAX.saturating_sub(kept.len());
            kept.extend(samples.iter().take(room).cloned());
        }
        Ok(())
    }

    /// Whether rows are quarantined: by an expectation, or bad input lines.
    pub(super) fn quarantines(&self) -> bool {
        self.constraints.iter().any(|c| c.expectation.action == Violation::Quarantine)
            || self.bad_lines.as_ref().is_some_and(|b| b.mode() == BadRows::Quarantine)
    }

    /// The bad input lines kept so far (taken: a second call has none).
    pub(super) fn take_bad_lines(&self) -> Vec<crate::sources::BadLine> {
        self.bad_lines.as_ref().map(|b| b.take()).unwrap_or_default()
    }

    /// The quarantined rows so far (taken: a second call has none).
    pub(crate) fn take_quarantined(&self) -> Vec<RecordBatch> {
        self.quarantined.take()
    }

    /// Counts one batch; returns the rows to write. Quarantined rows are kept in memory from
    /// `pool`.
    fn apply(&self, batch: RecordBatch, pool: &Arc<dyn MemoryPool>) -> DFResult<RecordBatch> {
        let rows = batch.num_rows();
        self.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
        // Whole-column masks; only the rows quarantined are looked at one by one (for the names
        // of the constraints they broke).
        let mut keep: Option<BooleanArray> = None;
        let mut taken: Option<BooleanArray> = None;
        let mut broken_by: Vec<(&str, BooleanArray)> = Vec::new();
        let merge =
            |mask: Option<BooleanArray>, with: &BooleanArray, op: fn(&BooleanArray, &BooleanArray) -> _| match mask {
                Some(mask) => op(&mask, with),
                None => Ok(with.clone()),
            };
        for constraint in &self.constraints {
            let value = constraint.condition.evaluate(&batch)?.into_array(rows)?;
            let Some(met) = value.as_any().downcast_ref::<BooleanArray>() else {
                return exec_err!("expectation `{}` is not a condition", constraint.expectation.name);
            };
            // Broken: false (NULL counts as met).
            let not_met = not(met)?;
            let broken = match not_met.null_count() {
                0 => not_met,
                _ => prep_null_mask_filter(&not_met),
            };
            let failed = broken.true_count();
            constraint.failed.fetch_add(failed as u64, Ordering::Relaxed);
            constraint.passed.fetch_add((rows - failed) as u64, Ordering::Relaxed);
            if failed == 0 {
                continue;
            }
            match constraint.expectation.action {
                Violation::DropRow => keep = Some(merge(keep, &not(&broken)?, and)?),
                Violation::Quarantine => taken = Some(merge(taken, &broken, or)?),
                Violation::Fail => {
                    let mut samples = constraint.samples.lock().unwrap_or_else(|p| p.into_inner());
                    for row in (0..rows).filter(|i| broken.value(*i)).take(SAMPLES_MAX.saturating_sub(samples.len())) {
                        samples.push(format_row(&batch, row));
                    }
                }
                Violation::Warn => {}
            }
            broken_by.push((&constraint.expectation.name, broken));
        }
        let quarantined = taken.as_ref().map_or(0, BooleanArray::true_count);
        if let Some(taken) = &taken {
            let names = StringArray::from_iter((0..rows).filter(|i| taken.value(*i)).map(|row| {
                let names: Vec<&str> = broken_by.iter().filter(|(_, b)| b.value(row)).map(|(n, _)| *n).collect();
                Some(names.join(", "))
            }));
            let bad = filter_record_batch(&batch, taken)?;
            let mut fields: Vec<Field> =
                bad.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
            fields.push(Field::new(CONSTRAINTS_COLUMN, DataType::Utf8, false));
            let mut columns = bad.columns().to_vec();
            columns.push(Arc::new(names));
            let bad = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            self.quarantined_rows.fetch_add(quarantined as u64, Ordering::Relaxed);
            let bytes = bad.get_array_memory_size();
            self.quarantined.keep(bad, bytes, pool)?;
            keep = Some(merge(keep, &not(taken)?, and)?);
        }
        match keep {
            None => Ok(batch),
            Some(keep) => {
                let kept = filter_record_batch(&batch, &keep)?;
                self.dropped.fetch_add((rows - kept.num_rows() - quarantined) as u64, Ordering::Relaxed);
                Ok(kept)
            }
        }
    }
}

impl StagedCheck for Tally {
    fn check(&self) -> Result<(), String> {
        let broken: Vec<String> = self
            .constraints
            .iter()
            .filter(|c| c.expectation.action == Violation::Fail && c.failed.load(Ordering::Relaxed) > 0)
            .map(|c| {
                let samples = c.samples.lock().unwrap_or_else(|p| p.into_inner());
                format!(
                    "{} row(s) violate expectation `{}` ({}), e.g. {}",
                    c.failed.load(Ordering::Relaxed),
                    c.expectation.name,
                    c.expectation.condition,
                    samples.join(", ")
                )
            })
            .collect();
        match broken.is_empty() {
            true => Ok(()),
            false => Err(broken.join("; ")),
        }
    }
}

/// A row as `(column = value, ...)`.
fn format_row(batch: &RecordBatch, row: usize) -> String {
    let values: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let value = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default().with_null("NULL"))
                .map(|f| f.value(row).to_string())
                .unwrap_or_default();
            format!("{} = {value}", field.name())
        })
        .collect();
    format!("({})", values.join(", "))
}

/// Plans `expectations` over the rows of `input`: the plan that counts them (and drops the
/// rows `DROP ROW` ones reject), and their tally, which also holds the bad lines of `input`'s
/// files (`bad_lines`, if they are read line by line).
pub(crate) fn apply(
    state: &SessionState,
    input: Arc<dyn ExecutionPlan>,
    expectations: &[Expectation],
    bad_lines: Option<Arc<BadLines>>,
) -> Result<(Arc<dyn ExecutionPlan>, Arc<Tally>)> {
    let tally = Arc::new(plan_tally(state, &input.schema(), expectations, bad_lines)?);
    let exec = ExpectationsExec { properties: input.properties().clone(), input, tally: tally.clone() };
    Ok((Arc::new(exec), tally))
}

/// The tally of `expectations` over rows of `input` (each condition planned, and checked to be
/// one).
pub(super) fn plan_tally(
    state: &SessionState,
    input: &Schema,
    expectations: &[Expectation],
    bad_lines: Option<Arc<BadLines>>,
) -> Result<Tally> {
    let schema = DFSchema::try_from(input.clone())?;
    let mut constraints = Vec::new();
    for expectation in expectations {
        let logical = state
            .create_logical_expr(&expectation.condition, &schema)
            .map_err(|e| Error::Plan(format!("expectation `{}` ({}): {e}", expectation.name, expectation.condition)))?;
        let condition = state.create_physical_expr(logical, &schema)?;
        let data_type = condition.data_type(input)?;
        if data_type != DataType::Boolean {
            let message = format!(
                "expectation `{}` ({}) is {data_type}, not a condition",
                expectation.name, expectation.condition
            );
            return Err(Error::Plan(message));
        }
        constraints.push(Constraint {
            expectation: expectation.clone(),
            condition,
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
        });
    }
    Ok(Tally {
        constraints,
        rows_in: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        quarantined: Kept::new("quarantined rows"),
        quarantined_rows: AtomicU64::new(0),
        bad_lines,
    })
}

/// Counts a write's rows against its expectations, dropping those `DROP ROW` rejects.
#[derive(Debug)]
struct ExpectationsExec {
    input: Arc<dyn ExecutionPlan>,
    tally: Arc<Tally>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for ExpectationsExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self
            .tally
            .constraints
            .iter()
            .map(|c| format!("{} ON VIOLATION {}", c.expectation.name, c.expectation.action.as_str()))
            .collect();
        match &self.tally.bad_lines {
            Some(bad) => {
                names.insert(0, format!("bad_rows = '{}'", bad.mode().as_str()));
                write!(f, "ExpectationsExec: {}", names.join(", "))
            }
            None => write!(f, "ExpectationsExec: {}", names.join(", ")),
        }
    }
}

impl ExecutionPlan for ExpectationsExec {
    fn name(&self) -> &str {
        "ExpectationsExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DFResult<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(ExpectationsExec {
                properties: input.properties().clone(),
                input,
                tally: self.tally.clone(),
            })),
            Err(_) => plan_err!("ExpectationsExec takes one input"),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        let (tally, pool) = (self.tally.clone(), context.memory_pool().clone());
        let rows = self.input.execute(partition, context)?.map(move |batch| tally.apply(batch?, &pool));
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.input.schema(), rows)))
    }
}

//! The distributed write: a run's shards written by a cluster's executors, its commit made by
//! the Sluice process that opened it.
//!
//! ```text
//!  Sluice process                       scheduler                     executors
//!  ShardWriteNode(input, spec) ──plan──► ShardWriteExec(input) ──task──► write shard i into the
//!  (logical, our codec)                  (physical, our codec)          table's data location,
//!                                                                       one row per file back
//!  commit: the rows' files, in one snapshot / version ◄──────────── (location, rows, bytes, description)
//! ```
//!
//! The spec ([`WriteSpec`]) names the run, the table and how to reach its catalog (a shared
//! warehouse: a bucket, or a folder every process sees); an executor opens the catalog, writes
//! its shard through the table's own writer (the same files a local run writes, named
//! `<run id>-<token>-t<task id>-<shard>-<n>.parquet`) and hands back each file's description
//! ([`crate::runtime::TableFormat::encode_file`]). The Sluice process records every file in the
//! ledger as it arrives, takes one attempt's files per shard, and commits once, exactly as a
//! local run does.
//!
//! The codecs also carry scans of Iceberg and Delta tables, as the list of their snapshot's
//! files ([`SnapshotFilesTable`]), which executors read with no catalog.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::array::{BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::catalog::TableProvider;
use datafusion::common::{DFSchema, DFSchemaRef, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    AggregateUDF, Expr, Extension, LogicalPlan, ScalarUDF, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
    WindowUDF,
};
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{Distribution, EquivalenceProperties};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PhysicalExpr, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use serde::{Deserialize, Serialize};

use crate::catalog::{DeltaConfig, IcebergRestConfig, IcebergSqlConfig, LakeCatalog};
use crate::coordinator::{CommitTarget, written_files_schema};
use crate::engine::expect::{Tally, TallyCounts};
use crate::formats::files::SnapshotFilesTable;
use crate::parser::Expectation;
use crate::runtime::RunContext;
use crate::table::{RunIdentity, TableName};

/// What marks our nodes in a serialized plan.
const MARK: &[u8] = b"sluice-shard-write:";
/// What marks a scan of a snapshot's files ([`SnapshotFilesTable`]) in a serialized plan.
const FILES: &[u8] = b"sluice-snapshot-files:";

/// How an executor reaches the table's catalog: the Sluice process's own configuration of it
/// (storage credentials come from each process's environment; a PostgreSQL catalog's URI is
/// sent as configured, and never printed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SpecCatalog {
    /// An Iceberg SQL catalog.
    IcebergSql(IcebergSqlConfig),
    /// An Iceberg REST catalog (its token or credential from each process's environment).
    IcebergRest(IcebergRestConfig),
    /// A folder of Delta tables.
    Delta(DeltaConfig),
}

/// One run's write, as every executor needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSpec {
    /// The catalog's name.
    pub catalog: String,
    /// How to reach it.
    pub config: SpecCatalog,
    /// The table, `catalog.schema.table`.
    pub table: String,
    /// The run.
    pub run_id: String,
    /// What the run's files are named after (`<files>-<attempt>-<shard>-<n>.parquet`): the run id and
    /// a token of this attempt, so that a retried run's files never share a name with an
    /// earlier attempt's.
    pub files: String,
    /// The run's pipeline, if any.
    pub pipeline: Option<String>,
    /// The columns the input is hashed on into shards.
    pub keys: Vec<String>,
    /// The write's expectations (`WARN`, `DROP ROW`, `FAIL`), which each task counts its rows
    /// against; the counts travel back with its files.
    pub expectations: Vec<Expectation>,
}

impl WriteSpec {
    fn to_json(&self) -> DFResult<String> {
        serde_json::to_string(self).map_err(|e| DataFusionError::External(e.into()))
    }

    fn from_json(text: &[u8]) -> DFResult<Self> {
        serde_json::from_slice(text).map_err(|e| DataFusionError::External(e.into()))
    }

    /// The spec's catalog, opened once per executor process (its tables are loaded afresh for
    /// each write): a task does not pay for connecting to a catalog database or listing a Delta
    /// root. Each catalog opens on its own (one that hangs holds up only its tasks), and one
    /// that failed to open is tried again by the next task.
    async fn catalog(&self) -> crate::error::Result<Arc<dyn LakeCatalog>> {
        type Opening = Arc<tokio::sync::OnceCell<Arc<dyn LakeCatalog>>>;
        static OPENED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Opening>>> =
            std::sync::LazyLock::new(Default::default);
        let key = serde_json::to_string(&(&self.catalog, &self.config))
            .map_err(|e| crate::error::Error::Plan(e.to_string()))?;
        let opening = OPENED.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone();
        let catalog = opening
            .get_or_try_init::<crate::error::Error, _, _>(|| async {
                let catalog: Arc<dyn LakeCatalog> = match &self.config {
                    SpecCatalog::IcebergSql(config) => {
                        crate::formats::iceberg::IcebergCatalog::open_sql(&self.catalog, config).await?
                    }
                    SpecCatalog::IcebergRest(config) => {
                        crate::formats::iceberg::IcebergCatalog::open_rest(&self.catalog, config).await?
                    }
                    SpecCatalog::Delta(config) => {
                        crate::formats::delta::DeltaCatalog::open(&self.catalog, config).await?
                    }
                };
                Ok(catalog)
            })
            .await?;
        Ok(catalog.clone())
    }

    /// Refuses a spec whose names could reach beyond its table: its files must be named after a
    /// run id and a hex token (what the Sluice process makes), its table must be a table name.
    fn checked_table(&self) -> DFResult<TableName> {
        let refused = |what: &str| DataFusionError::Plan(format!("a shard write with {what}: refused"));
        let (run_id, token) = self.files.split_at_checked(36).ok_or_else(|| refused("no run id"))?;
        let token = token.strip_prefix('-').unwrap_or_default();
        if uuid::Uuid::try_parse(run_id).is_err() || token.is_empty() || !token.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(refused(&format!("files named `{}`", self.files)));
        }
        let table = TableName::parse(&self.table).ok_or_else(|| refused(&format!("table `{}`", self.table)))?;
        table.check().map_err(|e| refused(&e.to_string()))?;
        Ok(table)
    }

    /// Writes shard `shard` of the run from `input`, in this process (an executor), into files
    /// named `<files>-<attempt>-<shard>-<n>.parquet`.
    async fn write_shard(
        &self,
        shard: usize,
        attempt: &str,
        input: SendableRecordBatchStream,
        tally: Option<Arc<Tally>>,
    ) -> DFResult<RecordBatch> {
        let error = |e: crate::error::Error| DataFusionError::External(e.into());
        let table = self.checked_table()?;
        let catalog = self.catalog().await.map_err(error)?;
        let writer: Arc<dyn CommitTarget> = catalog.writer(&table).await.map_err(|e| error(e.into()))?;
        // The shard loop names files after the run id it is given.
        let identity = RunIdentity {
            run_id: format!("{}-{attempt}", self.files),
            pipeline: self.pipeline.clone(),
            sequence: 0,
            base: writer.base(),
            attempt: 1,
        };
        // The files are recorded by the Sluice process as they come back; this ledger only
        // serves the shard loop.
        let ledger = crate::ledger::Ledger::in_memory(crate::clock::system()).await.map_err(|e| error(e.into()))?;
        let run = RunContext::new(identity, table.to_string(), 1, ledger);
        let written = writer.write_elsewhere(&run, &table, shard, (super::this_executor(), attempt), input).await;
        let written = written.map_err(|e| DataFusionError::External(e.into()))?;
        crate::failpoint::check("shard-written", &self.table).map_err(DataFusionError::Execution)?;
        let Some(tally) = tally else { return Ok(written) };
        // The shard's counts and quarantined rows, on its first row.
        let counts = serde_json::to_string(&tally.counts()).map_err(|e| DataFusionError::External(e.into()))?;
        let quarantined = tally.take_quarantined();
        let quarantined = match quarantined.first() {
            None => None,
            Some(first) => {
                let mut writer = StreamWriter::try_new(Vec::new(), &first.schema())?;
                for batch in &quarantined {
                    writer.write(batch)?;
                }
                Some(writer.into_inner()?)
            }
        };
        let rows = written.num_rows();
        let first = |row: usize| row == 0;
        let mut columns = written.columns().to_vec();
        let n = columns.len();
        columns[n - 2] = Arc::new(StringArray::from_iter((0..rows).map(|row| first(row).then_some(counts.as_str()))));
        columns[n - 1] =
            Arc::new(BinaryArray::from_iter((0..rows).map(|row| quarantined.as_deref().filter(|_| first(row)))));
        Ok(RecordBatch::try_new(written.schema(), columns)?)
    }
}

/// The logical write node: `input`'s rows into the spec's table, a shard per partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardWriteNode {
    input: LogicalPlan,
    /// The [`WriteSpec`] as JSON (how it travels).
    spec: String,
    schema: DFSchemaRef,
}

impl ShardWriteNode {
    /// Writes `input` as `spec` says.
    pub fn new(input: LogicalPlan, spec: &WriteSpec) -> DFResult<Self> {
        Self::from_json(input, spec.to_json()?)
    }

    fn from_json(input: LogicalPlan, spec: String) -> DFResult<Self> {
        let schema = Arc::new(DFSchema::try_from(written_files_schema().as_ref().clone())?);
        Ok(Self { input, spec, schema })
    }

    /// As a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension { node: Arc::new(self) })
    }
}

impl PartialOrd for ShardWriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.spec.partial_cmp(&other.spec)
    }
}

impl UserDefinedLogicalNodeCore for ShardWriteNode {
    fn name(&self) -> &str {
        "SluiceShardWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    /// The run and the table only: the spec holds the catalog's address (a database URI may
    /// carry a password), which is never printed.
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match WriteSpec::from_json(self.spec.as_bytes()) {
            Ok(spec) => write!(f, "SluiceShardWrite: run {} into {}", spec.run_id, spec.table),
            Err(_) => write!(f, "SluiceShardWrite"),
        }
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        let input = inputs.pop().ok_or_else(|| DataFusionError::Internal("SluiceShardWrite has one input".into()))?;
        Self::from_json(input, self.spec.clone())
    }
}

/// The physical write node: each partition of `input` is a shard, written where the task runs.
#[derive(Debug)]
pub struct ShardWriteExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    /// The spec's keys over the input.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
}

impl ShardWriteExec {
    fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> DFResult<Self> {
        let schema = input.schema();
        let keys = spec.keys.iter().map(|key| col(key, &schema)).collect::<DFResult<_>>()?;
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_files_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self { input, spec, keys, properties: Arc::new(properties) })
    }
}

impl DisplayAs for ShardWriteExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SluiceShardWriteExec: run {} into {}", self.spec.run_id, self.spec.table)
    }
}

impl ExecutionPlan for ShardWriteExec {
    fn name(&self) -> &str {
        "SluiceShardWriteExec"
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

    /// Hashed on the keys: the planner shuffles the input into that many shards.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::HashPartitioned(self.keys.clone())]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input =
            children.pop().ok_or_else(|| DataFusionError::Internal("SluiceShardWriteExec has one input".into()))?;
        Ok(Arc::new(Self::new(input, self.spec.clone())?))
    }

    /// Writes shard `partition`; with expectations, its rows are counted (and those `DROP ROW`
    /// rejects dropped) on the way, as in a local run.
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        let attempt = attempt_of(context.task_id().as_deref());
        let (input, tally) = match self.spec.expectations.as_slice() {
            [] => (self.input.clone(), None),
            expectations => {
                let state = SessionStateBuilder::new()
                    .with_config(context.session_config().clone())
                    .with_runtime_env(context.runtime_env())
                    .with_default_features()
                    .build();
                let applied = crate::engine::expect::apply(&state, self.input.clone(), expectations, None);
                let (input, tally) = applied.map_err(|e| DataFusionError::External(e.into()))?;
                (input, Some(tally))
            }
        };
        let input = input.execute(partition, context)?;
        let spec = self.spec.clone();
        let written = futures::stream::once(async move { spec.write_shard(partition, &attempt, input, tally).await });
        Ok(Box::pin(RecordBatchStreamAdapter::new(written_files_schema(), written)))
    }
}

/// The attempt of a task, as its files are named: `t<task id>` from the task's identity as a
/// Ballista executor gives it (`TID <task id> <job>/<stage>.<stage attempt>/<partition>.<task
/// attempt>`; the scheduler numbers every task it launches in a job anew, where a task run again
/// after its executor was lost may keep its attempt numbers), so that a task run again never
/// writes over (or beside, under the same name) an earlier attempt's files; a random token where
/// the identity says nothing.
fn attempt_of(task: Option<&str>) -> String {
    let id = task.and_then(|task| task.strip_prefix("TID ")?.split(' ').next()?.parse::<u64>().ok());
    match id {
        Some(id) => format!("t{id}"),
        None => format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    }
}

/// Plans [`ShardWriteNode`] as [`ShardWriteExec`] (the scheduler's planner).
#[derive(Debug, Default)]
pub struct ShardWritePlanner;

#[async_trait]
impl ExtensionPlanner for ShardWritePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _state: &SessionState,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(write) = node.as_any().downcast_ref::<ShardWriteNode>() else { return Ok(None) };
        let spec = WriteSpec::from_json(write.spec.as_bytes())?;
        Ok(Some(Arc::new(ShardWriteExec::new(physical_inputs[0].clone(), spec)?)))
    }
}

/// DataFusion's planner with [`ShardWritePlanner`].
#[derive(Debug, Default)]
pub struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, state: &SessionState) -> DFResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ShardWritePlanner)])
            .create_physical_plan(plan, state)
            .await
    }
}

/// A run's write job on a cluster, named after the run's files (`ballista.job.name`).
#[derive(Debug)]
pub(crate) struct BallistaJob {
    /// The cluster.
    pub(crate) cluster: super::ClusterUrl,
    /// The job's name.
    pub(crate) name: String,
    /// The tally of the write's expectations, which each shard's counts are added to.
    pub(crate) tally: Option<Arc<Tally>>,
    /// What rows the shards quarantined are kept in memory from.
    pub(crate) pool: Arc<dyn MemoryPool>,
}

#[async_trait]
impl crate::coordinator::RemoteJob for BallistaJob {
    async fn stop(&self) -> Result<(), crate::runtime::BoxError> {
        let stopped = super::stop_jobs_named(&self.cluster, &self.name).await?;
        if stopped > 0 {
            tracing::info!(cluster = %self.cluster, job = %self.name, "stopped the run's job");
        }
        Ok(())
    }

    fn counted(&self, shard: usize, counts: &str, quarantined: Option<&[u8]>) -> Result<(), crate::runtime::BoxError> {
        let Some(tally) = &self.tally else {
            return Err(format!("shard {shard} counted expectations the write has not").into());
        };
        let counts: TallyCounts = serde_json::from_str(counts)?;
        let batches = match quarantined {
            None => Vec::new(),
            Some(bytes) => StreamReader::try_new(std::io::Cursor::new(bytes), None)?.collect::<Result<Vec<_>, _>>()?,
        };
        Ok(tally.add(&counts, batches, &self.pool)?)
    }
}

/// The functions' codec methods, left to Ballista's codec (`self.inner`): the same in both of
/// datafusion-proto's codec traits.
macro_rules! functions_of_inner {
    () => {
        fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DFResult<Arc<ScalarUDF>> {
            self.inner.try_decode_udf(name, buf)
        }

        fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DFResult<()> {
            self.inner.try_encode_udf(node, buf)
        }

        fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DFResult<Arc<AggregateUDF>> {
            self.inner.try_decode_udaf(name, buf)
        }

        fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DFResult<()> {
            self.inner.try_encode_udaf(node, buf)
        }

        fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> DFResult<Arc<WindowUDF>> {
            self.inner.try_decode_udwf(name, buf)
        }

        fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> DFResult<()> {
            self.inner.try_encode_udwf(node, buf)
        }
    };
}

/// Ballista's logical codec, plus [`ShardWriteNode`].
#[derive(Debug, Default)]
pub struct SluiceLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for SluiceLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> DFResult<Extension> {
        match (buf.strip_prefix(MARK), inputs) {
            (Some(spec), [input]) => {
                let spec = String::from_utf8(spec.to_vec()).map_err(|e| DataFusionError::External(e.into()))?;
                Ok(Extension { node: Arc::new(ShardWriteNode::from_json(input.clone(), spec)?) })
            }
            _ => self.inner.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DFResult<()> {
        match node.node.as_any().downcast_ref::<ShardWriteNode>() {
            Some(write) => {
                buf.extend_from_slice(MARK);
                buf.extend_from_slice(write.spec.as_bytes());
                Ok(())
            }
            None => self.inner.try_encode(node, buf),
        }
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn TableProvider>> {
        match buf.strip_prefix(FILES) {
            Some(files) => {
                let files = serde_json::from_slice(files).map_err(|e| DataFusionError::External(e.into()))?;
                Ok(Arc::new(SnapshotFilesTable::new(schema, files)?))
            }
            None => self.inner.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DFResult<()> {
        match node.as_any().downcast_ref::<SnapshotFilesTable>() {
            Some(table) => {
                buf.extend_from_slice(FILES);
                serde_json::to_writer(buf, table.files()).map_err(|e| DataFusionError::External(e.into()))
            }
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> DFResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> DFResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    functions_of_inner!();
}

/// Ballista's physical codec, plus [`ShardWriteExec`].
#[derive(Debug, Default)]
pub struct SluicePhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for SluicePhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        match (buf.strip_prefix(MARK), inputs) {
            (Some(spec), [input]) => Ok(Arc::new(ShardWriteExec::new(input.clone(), WriteSpec::from_json(spec)?)?)),
            _ => self.inner.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> DFResult<()> {
        match node.as_any().downcast_ref::<ShardWriteExec>() {
            Some(write) => {
                buf.extend_from_slice(MARK);
                buf.extend_from_slice(write.spec.to_json()?.as_bytes());
                Ok(())
            }
            None => self.inner.try_encode(node, buf),
        }
    }

    functions_of_inner!();

    fn try_decode_expr(&self, buf: &[u8], inputs: &[Arc<dyn PhysicalExpr>]) -> DFResult<Arc<dyn PhysicalExpr>> {
        self.inner.try_decode_expr(buf, inputs)
    }

    fn try_encode_expr(&self, node: &Arc<dyn PhysicalExpr>, buf: &mut Vec<u8>) -> DFResult<()> {
        self.inner.try_encode_expr(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::{SpecCatalog, WriteSpec, attempt_of};

    #[test]
    fn a_spec_whose_names_reach_beyond_its_table_is_refused() {
        let spec = |files: &str, table: &str| WriteSpec {
            catalog: "lake".into(),
            config: SpecCatalog::Delta(Default::default()),
            table: table.into(),
            run_id: "r".into(),
            files: files.into(),
            pipeline: None,
            keys: vec![],
            expectations: vec![],
        };
        let run = "01a2417d-71ba-7678-9d20-9829fc9050e2";
        assert!(spec(&format!("{run}-5c4f1f19"), "lake.s.t").checked_table().is_ok());
        for files in [
            format!("{run}-5c4f/../../x"),
            format!("{run}-"),
            "../../../../etc/x-5c4f1f19".to_string(),
            format!("{run}5c4f1f19"),
            String::new(),
        ] {
            let refused = spec(&files, "lake.s.t").checked_table().unwrap_err().to_string();
            assert!(refused.contains("refused"), "{files}: {refused}");
        }
        for table in ["lake.s", "lake.s.../x", "lake.s..", "lake.s.t/../u"] {
            assert!(spec(&format!("{run}-5c4f1f19"), table).checked_table().is_err(), "{table}");
        }
    }

    #[test]
    fn a_task_attempt_names_its_files() {
        assert_eq!(attempt_of(Some("TID 7 Xy12ab/3.1/4.2")), "t7");
        assert_eq!(attempt_of(Some("TID 0 Xy12ab/1.0/0.0")), "t0");
        for unknown in [None, Some("task 7"), Some("TID x7 Xy12ab/3.1/4.2")] {
            let token = attempt_of(unknown);
            assert!(token.starts_with('r') && token.len() == 9, "{token}");
            assert_ne!(token, attempt_of(unknown), "a random token each time");
        }
    }
}

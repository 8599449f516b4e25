//! Where runs execute: this process, or a DataFusion Ballista cluster, chosen by
//! `EngineBuilder::cluster` (`sluice --cluster`), the home's `config.toml` (`cluster = "..."`),
//! or `SET sluice.cluster = 'df://host:port'` in a session (`''` or `'local'`: this process).

use super::{Engine, Output};
use crate::cluster::{ClusterUrl, Member, SluiceOptions};
use crate::error::{Error, Result};

/// The settings in the home's `config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HomeConfig {
    /// The cluster runs execute on by default.
    pub cluster: Option<String>,
}

impl HomeConfig {
    /// Reads `<home>/config.toml`; none is the defaults.
    pub(super) fn read(home: &std::path::Path) -> Result<Self> {
        let path = home.join("config.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io { path: path.display().to_string(), source }),
        }
    }
}

/// The cluster `setting` names, if any (`''` and `local` name this process).
pub(super) fn parse_setting(setting: &str) -> Result<Option<ClusterUrl>> {
    let setting = setting.trim();
    if setting.is_empty() || setting.eq_ignore_ascii_case("local") {
        return Ok(None);
    }
    Ok(Some(ClusterUrl::parse(setting)?))
}

impl Engine {
    /// The cluster runs execute on now (`None`: this process): the running pipeline's
    /// `cluster` option, else the session's `sluice.cluster`.
    pub fn cluster(&self) -> Result<Option<ClusterUrl>> {
        if let Some(cluster) = Self::pipeline_cluster() {
            return parse_setting(&cluster);
        }
        let state = self.ctx.state();
        let options = state.config_options().extensions.get::<SluiceOptions>();
        parse_setting(options.map(|o| o.cluster.as_str()).unwrap_or_default())
    }

    /// `SHOW CLUSTER`: the scheduler and its executors, or this process.
    pub(super) async fn show_cluster(&self) -> Result<Output> {
        let members = match self.cluster()? {
            None => vec![Member {
                role: "local",
                id: "local".to_string(),
                address: "this process".to_string(),
                slots: Some(self.shards as u64),
                last_seen_ms: None,
                version: None,
            }],
            #[cfg(feature = "cluster")]
            Some(url) => crate::cluster::describe(&url).await?,
            #[cfg(not(feature = "cluster"))]
            Some(url) => {
                return Err(Error::Unsupported(format!(
                    "cluster {url}: this build of Sluice has no cluster support (cargo feature `cluster`)"
                )));
            }
        };
        Ok(Output::rows(crate::system::cluster_batch(&members)))
    }
}

#[cfg(feature = "cluster")]
impl Engine {
    /// The run of a write whose shards run on `cluster`'s executors: the input, planned and
    /// run there with a shard-write node on top, hands back the files the executors wrote,
    /// which the run commits here. The run id is chosen now: it names the files.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn plan_cluster_write(
        &self,
        cluster: &ClusterUrl,
        table: crate::table::TableName,
        writer: std::sync::Arc<dyn crate::coordinator::CommitTarget>,
        input: datafusion::logical_expr::LogicalPlan,
        mode: crate::table::WriteMode,
        shards: usize,
        mut origin: crate::coordinator::RunOrigin,
    ) -> Result<super::write::PlannedWrite> {
        use std::sync::Arc;

        use ballista_core::extension::{SessionConfigExt, SessionStateExt};
        use datafusion::execution::SessionStateBuilder;

        use crate::catalog::CatalogConfig;
        use crate::cluster::write::{
            BallistaJob, ShardWriteNode, SluiceLogicalCodec, SluicePhysicalCodec, SpecCatalog, WriteSpec,
        };

        if Self::bad_rows().is_some() {
            return Err(Error::Unsupported(format!(
                "bad_rows in a write into `{table}` on cluster {cluster}: its executors read files whole \
                 (run it here: SET sluice.cluster = 'local')"
            )));
        }
        let expectations = self.expectations_for(&table).await?;
        // Planned here too, so that a condition that is not one fails before the run opens.
        let tally = match expectations.is_empty() {
            true => None,
            false => Some(Arc::new(super::expect::plan_tally(
                &self.ctx.state(),
                input.schema().as_arrow(),
                &expectations,
                None,
            )?)),
        };
        let input = self.scans_for_executors(input, cluster).await?;
        let config = match self.catalog_configs.get(&table.catalog) {
            Some(CatalogConfig::IcebergSql(config)) => SpecCatalog::IcebergSql(config.clone()),
            Some(CatalogConfig::IcebergRest(config)) => SpecCatalog::IcebergRest(config.clone()),
            Some(CatalogConfig::Delta(config)) => SpecCatalog::Delta(config.clone()),
            _ => {
                return Err(Error::Unsupported(format!(
                    "writing into `{table}` on cluster {cluster}: catalog `{}` ({}) has no configuration its executors can open",
                    table.catalog,
                    self.catalog_of(&table.catalog).map(|c| c.kind()).unwrap_or("unknown")
                )));
            }
        };
        let run_id = match &origin.retry_of {
            Some((run_id, _)) => run_id.clone(),
            None => origin.run_id.get_or_insert_with(|| uuid::Uuid::now_v7().to_string()).clone(),
        };
        // The write asks for its input hashed into `shards` partitions, which makes it a stage
        // of `shards` tasks spread over the executors (Ballista plans no round-robin shuffle): a
        // partitioned table's rows on its partition columns, so that each partition is written
        // by as few shards as can be; others on every column.
        let keys: Vec<String> = match writer.partitioning() {
            [] => input.schema().fields().iter().map(|f| f.name().clone()).collect(),
            fields => fields.iter().map(|f| f.column.clone()).collect(),
        };
        let files = format!("{run_id}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let spec = WriteSpec {
            catalog: table.catalog.clone(),
            config,
            table: table.to_string(),
            run_id,
            files: files.clone(),
            pipeline: origin.pipeline.clone(),
            keys,
            expectations,
        };
        let plan = ShardWriteNode::new(input, &spec)?.into_plan();
        let config = self
            .ctx
            .copied_config()
            .with_target_partitions(shards)
            .with_ballista_job_name(&files)
            .with_ballista_logical_extension_codec(Arc::new(SluiceLogicalCodec::default()))
            .with_ballista_physical_extension_codec(Arc::new(SluicePhysicalCodec::default()));
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .build()
            .upgrade_for_ballista(cluster.endpoint())?;
        let input = state.create_physical_plan(&plan).await?;
        let summary = format!("{} into {table} ({} table) on cluster {cluster}", mode.as_str(), writer.format());
        let base = writer.base();
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let job = Arc::new(BallistaJob { cluster: cluster.clone(), name: files.clone(), tally: tally.clone(), pool });
        let coordinator = self.layered(writer.coordinator_of_written(table.clone(), mode, files, job));
        let job = crate::coordinator::RunJob {
            target: table.to_string(),
            coordinator,
            input,
            shards,
            base,
            origin,
            cancel: Self::cancel_token(),
            check: tally.clone().map(|t| t as Arc<dyn crate::coordinator::StagedCheck>),
        };
        Ok((job, summary, tally, state.task_ctx()))
    }
}

#[cfg(feature = "cluster")]
impl Engine {
    /// `input` with every scan of an Iceberg or Delta table replaced by a Parquet scan of the
    /// files of the snapshot it reads ([`crate::formats::files::SnapshotFilesTable`]): the
    /// executors read them with no catalog. File tables (Parquet, CSV, JSON: DataFusion's listing
    /// tables) travel as they are; anything else (system tables, table functions, a table an
    /// atomic pipeline's earlier step has not published yet) is refused before the run opens,
    /// naming the table.
    async fn scans_for_executors(
        &self,
        input: datafusion::logical_expr::LogicalPlan,
        cluster: &ClusterUrl,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        use std::collections::HashMap;
        use std::sync::Arc;

        use datafusion::common::TableReference;
        use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
        use datafusion::datasource::listing::ListingTable;
        use datafusion::logical_expr::LogicalPlan;

        use crate::formats::files::SnapshotFilesTable;

        let mut scanned: Vec<TableReference> = Vec::new();
        input.apply_with_subqueries(|plan| {
            if let LogicalPlan::TableScan(scan) = plan {
                let provider = datafusion::datasource::source_as_provider(&scan.source)?;
                if provider.as_any().downcast_ref::<ListingTable>().is_none() && !scanned.contains(&scan.table_name) {
                    scanned.push(scan.table_name.clone());
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let state = self.ctx.state();
        let defaults = &state.config_options().catalog;
        let mut files = HashMap::new();
        for reference in scanned {
            let refused = |why: &str| {
                Error::Unsupported(format!(
                    "reading `{reference}` on cluster {cluster}: {why} (run it here: SET sluice.cluster = 'local')"
                ))
            };
            let catalog = reference.catalog().unwrap_or(&defaults.default_catalog);
            let schema = reference.schema().unwrap_or(&defaults.default_schema);
            let table = reference.table();
            let pending = crate::catalog::pending_table(&crate::table::TableName::new(catalog, schema, table));
            if pending.is_some() {
                return Err(refused(
                    "an earlier step of this run writes it, and its executors read published tables only",
                ));
            }
            let listed = match self.catalog_of(catalog) {
                Some(lake) => lake.snapshot_files(schema, table).await?,
                None => None,
            };
            let Some(listed) = listed else {
                return Err(refused(
                    "its executors read Iceberg and Delta tables, file tables (Parquet, CSV, JSON) and VALUES, \
                     not system tables or table functions",
                ));
            };
            files.insert(reference, listed);
        }
        if files.is_empty() {
            return Ok(input);
        }
        let rewritten = input.transform_up_with_subqueries(|plan| match plan {
            LogicalPlan::TableScan(mut scan) if files.contains_key(&scan.table_name) => {
                let table = SnapshotFilesTable::new(scan.source.schema(), files[&scan.table_name].clone())?;
                scan.source = datafusion::datasource::provider_as_source(Arc::new(table));
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            plan => Ok(Transformed::no(plan)),
        })?;
        Ok(rewritten.data)
    }
}

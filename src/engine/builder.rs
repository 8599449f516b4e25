//! [`EngineBuilder`]: opens the home folder, the catalogs and the ledger, and settles runs that
//! a process that is gone left open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::storage::{Root, StoreRegistry};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::{DEFAULT_CATALOG, DEFAULT_RUN_LEASE, Engine};
use crate::catalog::{CatalogConfig, CatalogList, IcebergSqlConfig, LakeCatalog, load_catalogs};
use crate::clock::ClockRef;
use crate::coordinator::{Coordinator, Resolution, Runner};
use crate::error::{Error, Result};
use crate::events::EventLog;
use crate::formats::delta::DeltaCatalog;
use crate::formats::iceberg::IcebergCatalog;
use crate::ledger::{Ledger, LedgerError};
use crate::system::{SYSTEM_SCHEMA, SystemSchema};

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
    clock: Option<ClockRef>,
    cluster: Option<String>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("home", &self.home)
            .field("shards", &self.shards)
            .field("memory_limit", &self.memory_limit)
            .field("run_lease", &self.run_lease)
            .field("catalogs", &self.catalogs)
            .field("cluster", &self.cluster)
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

    /// The clock leases, the ledger's times and commits go by (default: the system clock); tests
    /// pass a [`crate::clock::TestClock`] to let a lease lapse without waiting.
    pub fn clock(mut self, clock: ClockRef) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Runs execute on the Ballista cluster whose scheduler is at `url` (`df://host:port`; `""`
    /// or `"local"`: this process), over the home's `config.toml`. A session changes it with
    /// `SET sluice.cluster = '...'`.
    pub fn cluster(mut self, url: impl Into<String>) -> Self {
        self.cluster = Some(url.into());
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

        let shards = self.shards.unwrap_or_else(crate::runtime::default_shards);
        if !(1..=crate::pipeline::SHARDS_MAX).contains(&shards) {
            return Err(Error::Config(format!(
                "shards must be between 1 and {}, got {shards}",
                crate::pipeline::SHARDS_MAX
            )));
        }
        let mut runtime = RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(StoreRegistry::default()));
        if let Some(limit) = self.memory_limit {
            // When the pool runs out, the error names the operators holding the most.
            let pool =
                TrackConsumersPool::new(FairSpillPool::new(limit), std::num::NonZeroUsize::new(5).expect("5 > 0"));
            runtime = runtime.with_memory_pool(Arc::new(pool));
        }
        // A cluster named here must be usable; a damaged config.toml costs its own setting only
        // (runs stay in this process, with an error in the log), not the whole session.
        let cluster = match self.cluster {
            Some(cluster) => {
                super::cluster::parse_setting(&cluster)?;
                cluster
            }
            None => {
                let configured = super::cluster::HomeConfig::read(&home).and_then(|config| {
                    let cluster = config.cluster.unwrap_or_default();
                    super::cluster::parse_setting(&cluster).map(|_| cluster)
                });
                configured.unwrap_or_else(|e| {
                    tracing::error!("{e}; runs execute in this process");
                    String::new()
                })
            }
        };
        let settings = crate::cluster::SluiceOptions { cluster };
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(shards)
            .with_option_extension(settings);
        // Planning errors then carry the position of what they are about (DataFusion's `Diagnostic`).
        config.options_mut().sql_parser.collect_spans = true;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.build_arc()?)
            .with_default_features()
            .build();
        if let Some(dir) = self.catalog_dirs.iter().find(|dir| !dir.is_dir()) {
            return Err(Error::Config(format!("catalog folder `{}` does not exist", dir.display())));
        }
        let dirs: Vec<PathBuf> = std::iter::once(home.join("catalogs")).chain(self.catalog_dirs).collect();
        let loaded = load_catalogs(&dirs)?;
        let catalog_files = loaded.iter().map(|(name, (file, _))| (name.clone(), file.clone())).collect();
        let mut configs: BTreeMap<String, CatalogConfig> =
            loaded.into_iter().map(|(name, (_, config))| (name, config)).collect();
        configs.extend(self.catalogs);
        configs.entry(DEFAULT_CATALOG.to_string()).or_insert_with(|| {
            CatalogConfig::IcebergSql(IcebergSqlConfig {
                uri: format!("sqlite:{}", home.join("catalog.db").display()),
                warehouse: warehouse.display().to_string(),
                storage: Default::default(),
            })
        });
        let mut catalogs = BTreeMap::new();
        let catalog_configs = configs.clone();
        for (name, config) in configs {
            let catalog: Arc<dyn LakeCatalog> = match &config {
                CatalogConfig::IcebergSql(sql) => IcebergCatalog::open_sql(&name, sql).await?,
                CatalogConfig::IcebergRest(rest) => IcebergCatalog::open_rest(&name, rest).await?,
                CatalogConfig::Delta(delta) => DeltaCatalog::open(&name, delta).await?,
            };
            catalogs.insert(name, catalog);
        }
        // A catalog's bucket is reached as the catalog reaches it (its file's settings).
        for catalog in catalogs.values() {
            if let Some(Root::Remote { url, store }) = catalog.root()
                && let Some(bucket) = crate::storage::store_root(url)
            {
                state.runtime_env().register_object_store(&bucket, store.clone());
            }
        }
        // `SELECT * FROM 'file.parquet'` (or .csv, .json) reads a file, as in DuckDB; our
        // catalogs stay outside the wrapper that does it (see `CatalogList`).
        let ctx = SessionContext::new_with_state(state).enable_url_table();
        ctx.register_catalog_list(Arc::new(CatalogList::new(catalogs.clone(), ctx.state().catalog_list().clone())));
        crate::functions::register(&ctx);
        // A damaged ledger costs the pipelines and the run history, not the tables: this process
        // runs on a ledger in memory, and the commands that need the file say so.
        let clock = self.clock.unwrap_or_else(crate::clock::system);
        let (ledger, ledger_damage) = match Ledger::open(&home.join("ledger.db"), clock.clone()).await {
            Ok(ledger) => (ledger, None),
            Err(e @ LedgerError::Damaged { .. }) => {
                let damage = e.to_string();
                tracing::error!(
                    "{damage}; tables stay readable and writable, pipelines and runs are unavailable (run `sluice doctor`)"
                );
                (Ledger::in_memory(clock.clone()).await?, Some(damage))
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
        let engine = Engine {
            ctx,
            catalogs,
            catalog_configs,
            catalog_files,
            runner,
            layer: self.layer,
            events,
            ledger,
            ledger_damage,
            home,
            shards,
            clock,
        };
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

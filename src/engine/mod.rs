//! The engine: one DataFusion session, the catalogs, the ledger and the runner, behind
//! `sql()` and `run_pipeline()`. The command line is a thin layer over it.
//!
//! - `builder.rs`: [`EngineBuilder`], opening the home, the catalogs and the ledger;
//! - `dispatch.rs`: each statement to its handler, and DataFusion's own statements;
//! - `ddl.rs`: DDL on our catalogs (schemas, tables);
//! - `write.rs`: writes (`INSERT`, `CREATE TABLE ... AS`, `COPY`) as runs;
//! - `runs.rs`: pipelines, `RETRY RUN` and recovery;
//! - `doctor.rs`: `sluice doctor`.

mod builder;
mod ddl;
mod dispatch;
mod doctor;
mod runs;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::prelude::SessionContext;

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
    clock: ClockRef,
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
        let batch = crate::system::run_report_batch(&report);
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

    /// Runs one parsed statement; errors say on which line it starts.
    pub async fn execute(&self, statement: &Located) -> Result<Output> {
        self.execute_statement(&statement.statement, &statement.sql)
            .await
            .map_err(|e| e.at(statement.line, statement.column))
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

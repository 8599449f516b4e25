//! # Sluice
//!
//! An embedded, SQL-fronted dataflow engine. Pipelines are declared in SQL; Apache DataFusion
//! plans them; the output partitions of the physical plan are the **shards**, each writing its
//! part of the result as Parquet files; a **coordinator** publishes every shard's files in one
//! atomic Apache Iceberg snapshot or Delta Lake version, or, on any failure, deletes them so
//! nothing becomes visible.
//!
//! ```text
//!  SQL ─► parser ─► pipeline ─► planner (N shards) ─► runtime (a task per shard, staged files)
//!                                                        │  through a table format
//!            ledger (runs, staged files)  ◄────  coordinator (runner, commit) ◄─┘
//!                                                        │ one snapshot / version
//!                                                        ▼
//!                                   formats (iceberg, delta) behind catalog
//! ```
//!
//! Modules, lowest layer first; each imports only from those above it in this list:
//!
//! | module | role |
//! |---|---|
//! | [`table`], [`clock`], [`paths`], [`suggest`] | shared words (table names, partitioning, write modes, run identity), injected time, location checks, "did you mean" |
//! | [`storage`] | where tables live: local folders and object stores (S3, GCS, Azure), their roots |
//! | [`ledger`] | the SQLite store of pipelines, runs, shard tasks, staged files, events |
//! | [`events`] | run events, to subscribers and the ledger |
//! | [`parser`], [`pipeline`] | SQL with Sluice's extensions; pipeline definitions and options |
//! | [`runtime`] | shards as tasks, [`runtime::RunContext`], the shard loop, the table-format traits |
//! | [`sources`] | CSV / JSON scans that keep bad lines out (`bad_rows`) |
//! | [`planner`] | the shard split of a physical plan |
//! | [`coordinator`] | the [`coordinator::Coordinator`] trait, the runner, the table commit, composites, exports |
//! | [`catalog`] | the catalog trait, catalog files, name checks, the session's catalog list |
//! | [`formats`] | Iceberg and Delta: each format's catalog, writer and commit |
//! | [`cluster`] | DataFusion Ballista: cluster addresses and members, the `sluice cluster` processes, the shard-write node (feature `cluster`) |
//! | [`functions`] | table functions (`generate_series`, `range`) |
//! | [`system`] | `sluice.*` system tables and every result batch |
//! | [`engine`] | the [`Engine`]: builder, statement dispatch, DDL, writes, runs and recovery |
//!
//! The coordinator is a trait ([`coordinator::Coordinator`]): built-ins commit to Iceberg or
//! Delta, merge a `COPY` export into one file, or chain several; a library user adds their own
//! with [`EngineBuilder::wrap_coordinator`].
//!
//! With no configuration the engine keeps everything in a home folder: an Iceberg SQL catalog
//! named `lake` on SQLite (`catalog.db`), a local `warehouse/`, and the run ledger (`ledger.db`).
//!
//! ## Embedding
//!
//! An analytics service opens one engine and sends it SQL:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> sluice::Result<()> {
//! # let home = tempfile::tempdir().unwrap();
//! use datafusion::arrow::util::pretty::pretty_format_batches;
//!
//! let engine = sluice::Engine::builder().home(home.path()).shards(2).build().await?;
//! engine
//!     .sql(
//!         "CREATE SCHEMA lake.sales;
//!          CREATE TABLE lake.sales.orders (id BIGINT NOT NULL, amount DOUBLE);
//!          CREATE PIPELINE load_orders AS
//!            INSERT INTO lake.sales.orders SELECT value, value * 1.5 FROM generate_series(1, 100);",
//!     )
//!     .await?;
//!
//! let report = engine.run_pipeline("load_orders").await?;
//! assert_eq!(report.rows, 100);
//! assert!(report.snapshot_id.is_some());
//!
//! let batches = engine.sql("SELECT count(*) AS n, sum(amount) AS total FROM lake.sales.orders").await?;
//! println!("{}", pretty_format_batches(&batches).unwrap());
//! # Ok(())
//! # }
//! ```

pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod coordinator;
pub mod engine;
pub mod error;
pub mod events;
mod failpoint;
pub mod formats;
pub mod functions;
pub mod ledger;
pub mod parser;
pub mod paths;
pub mod pipeline;
pub mod planner;
pub mod runtime;
pub mod scheduler;
#[cfg(feature = "server")]
pub mod server;
pub mod sources;
pub mod storage;
pub mod suggest;
pub mod system;
pub mod table;

pub use coordinator::RunReport;
pub use engine::{Engine, EngineBuilder, Output};
pub use error::{Error, Result};

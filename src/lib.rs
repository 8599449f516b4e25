//! # Sluice
//!
//! An embedded, SQL-fronted dataflow engine. Pipelines are declared in SQL; Apache DataFusion
//! plans them; the output partitions of the physical plan are the **shards**, each writing its
//! part of the result as Parquet files; a **coordinator** publishes every shard's files in one
//! atomic Apache Iceberg snapshot or Delta Lake version, or, on any failure, deletes them so
//! nothing becomes visible.
//!
//! ```text
//!  SQL ─► parser ─► planner (N shards) ─► runtime (a task per shard) ─► sinks (staged files)
//!                                                                         │
//!            ledger (runs, staged files)  ◄──────────────  coordinator ◄──┘
//!                                                             │ one snapshot
//!                                                             ▼
//!                                                          catalog
//! ```
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
pub mod cli;
pub mod coordinator;
pub mod engine;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod functions;
pub mod ledger;
pub mod parser;
pub mod pipeline;
pub mod planner;
pub mod runtime;
pub mod sinks;

pub use coordinator::RunReport;
pub use engine::{Engine, EngineBuilder, Output};
pub use error::{Error, Result};

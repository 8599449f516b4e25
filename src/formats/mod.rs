//! The table formats, each in one folder with its catalog, its writer and its commit:
//!
//! - [`iceberg`]: Iceberg SQL catalogs (SQLite, PostgreSQL) and REST catalogs; data files
//!   through iceberg-rust's writers; one snapshot per run, built by hand on SQL catalogs.
//! - [`delta`]: a folder of Delta tables; Parquet files with Delta statistics; one log version
//!   per run, with a `txn` action.
//!
//! Each implements [`crate::catalog::LakeCatalog`] (tables for queries, DDL) and
//! [`crate::runtime::TableFormat`] (stage files, commit them, find and fence a run).

pub mod delta;
pub mod files;
pub mod iceberg;

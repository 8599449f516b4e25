//! Apache Iceberg: the catalog ([`IcebergCatalog`]: SQL on SQLite / PostgreSQL, or REST), the
//! writer ([`IcebergTableWriter`]: data files with Iceberg's metrics) and the commit (one
//! snapshot tagged with the run, hand-built and swapped in on SQL catalogs: `snapshot.rs`).

mod catalog;
mod inspect;
mod schema;
mod snapshot;
mod storage;
mod writer;

pub use catalog::{IcebergCatalog, MetadataPointer};
pub use writer::{
    COMMIT_ATTEMPTS_MAX, FENCE_PROPERTY_PREFIX, IcebergTableWriter, PIPELINE_PROPERTY, RUN_ID_PROPERTY, snapshot_of_run,
};

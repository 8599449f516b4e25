//! Delta Lake: the catalog ([`DeltaCatalog`]: a folder of tables), the writer
//! ([`DeltaTableWriter`]: Parquet files with Delta statistics) and the commit (one log version
//! per run with a `txn` action, one conditional put per attempt).

mod catalog;
mod file;
mod stats;
mod writer;

pub use catalog::DeltaCatalog;
pub use writer::{DeltaPartition, DeltaTableWriter, PIPELINE_KEY, RUN_ID_KEY, app_id, fence_app_id};

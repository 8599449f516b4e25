//! Sinks: per-shard writers that stage data files in a table format, without committing them.
//!
//! A sink only stages; making the files visible is the coordinator's job.

pub mod iceberg;

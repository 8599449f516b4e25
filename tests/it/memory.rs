//! A memory limit bounds what DataFusion holds: a sort larger than the limit spills to disk and
//! the run still commits every row.
//!
//! One shard: in DataFusion 53 a sort split over several partitions, or a GROUP BY, under a tight
//! limit can fail in the unspillable merge phase (apache/datafusion#16979, #17334); the limit is
//! then reported, never exceeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice::Engine;

use crate::support::{files_under, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sort_larger_than_the_memory_limit_spills_and_commits() {
    let home = tempfile::tempdir().unwrap();
    let limit = 24 << 20;
    let engine = Engine::builder().home(home.path()).shards(1).memory_limit(limit).build().await.unwrap();
    // ~1 M rows with a 32-character key: well over the limit once sorted in memory.
    let sort = "SELECT value AS id, md5(CAST(value AS VARCHAR)) AS key FROM generate_series(1, 1000000) ORDER BY key";
    engine
        .sql(&format!("CREATE SCHEMA lake.m; CREATE TABLE lake.m.sorted AS {sort}"))
        .await
        .expect("the sort spills instead of failing");
    let summary = "SELECT count(*), count(DISTINCT id), min(key) = (SELECT min(md5(CAST(value AS VARCHAR))) \
         FROM generate_series(1, 1000000)) FROM lake.m.sorted";
    assert_eq!(rows(&engine, summary).await, [["1000000", "1000000", "true"]]);

    // An aggregate that cannot spill (one group holding every key) is refused at the same
    // limit: the limit is enforced, not advisory.
    let error =
        engine.sql("SELECT array_agg(key) FROM lake.m.sorted").await.expect_err("one group of every key does not fit");
    assert!(error.to_string().contains("Failed to allocate"), "{error}");
}

/// Rows waiting to be written count against the memory limit: past it, a shard writes out its
/// largest partition and keeps that file open, and every partition still ends up in one file
/// holding all its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_waiting_for_many_partitions_are_written_out_under_the_memory_limit() {
    let home = tempfile::tempdir().unwrap();
    let engine = Engine::builder().home(home.path()).shards(1).memory_limit(8 << 20).build().await.unwrap();
    // ~400,000 rows of ~80 bytes in 40 partitions: four times the limit.
    let input = "SELECT value AS id, CAST(value % 40 AS BIGINT) AS part, \
                 md5(CAST(value AS VARCHAR)) || md5(CAST(-value AS VARCHAR)) AS payload \
                 FROM generate_series(1, 400000)";
    // The shard-write failpoint is passed after each input batch: count the data files on disk
    // there, to see partitions written out while the input still arrives (with no limit, the
    // ~32 MB would all wait for the input's end).
    let written_early = Arc::new(AtomicUsize::new(0));
    let (seen, warehouse) = (written_early.clone(), home.path().join("warehouse"));
    let failpoint = "shard-write/lake.m.parts";
    fail::cfg_callback(failpoint, move || {
        let files = files_under(&warehouse).iter().filter(|f| f.extension().is_some_and(|e| e == "parquet")).count();
        seen.fetch_max(files, Ordering::Relaxed);
    })
    .unwrap();
    let created =
        engine.sql(&format!("CREATE SCHEMA lake.m; CREATE TABLE lake.m.parts PARTITIONED BY (part) AS {input}")).await;
    fail::remove(failpoint);
    created.expect("the rows are written out as the limit is reached");
    assert!(written_early.load(Ordering::Relaxed) > 0, "no partition was written out before the input ended");
    let report = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!((report.rows, report.files), (400_000, 40), "one file per partition");
    let summary = "SELECT count(*), count(DISTINCT id), count(DISTINCT part), sum(id) FROM lake.m.parts";
    assert_eq!(rows(&engine, summary).await, [["400000", "400000", "40", "80000200000"]]);
}

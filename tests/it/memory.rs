//! A memory limit bounds what DataFusion holds: a sort larger than the limit spills to disk and
//! the run still commits every row.
//!
//! One shard: in DataFusion 53 a sort split over several partitions, or a GROUP BY, under a tight
//! limit can fail in the unspillable merge phase (apache/datafusion#16979, #17334); the limit is
//! then reported, never exceeded.

use sluice::Engine;

use crate::support::rows;

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

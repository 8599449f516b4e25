//! The same pipeline at 1, 2 and 8 shards: identical table contents, and exactly one snapshot
//! per run whatever the shard count (the shard funnel is never optimized away).

use crate::support::{engine, lake, rows, snapshot_count, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shard_count_changes_nothing_but_the_files() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.s").await.unwrap();

    let mut contents = Vec::new();
    for shards in [1usize, 2, 8] {
        let name = format!("t{shards}");
        engine
            .sql(&format!(
                "CREATE TABLE lake.s.{name} (id BIGINT NOT NULL, bucket VARCHAR, x DOUBLE);
                 CREATE PIPELINE p{shards} WITH (shards = {shards}) AS
                   INSERT INTO lake.s.{name}
                   SELECT value, 'b' || (value % 7), value * 0.25 FROM generate_series(1, 100000);"
            ))
            .await
            .unwrap();
        for run in 1..=2 {
            let report = engine.run_pipeline(&format!("p{shards}")).await.unwrap();
            assert_eq!(report.shards, shards);
            assert_eq!(report.rows, 100_000);
            let t = table(&engine, "s", &name).await;
            assert_eq!(snapshot_count(&t), run, "{shards} shards, run {run}: one snapshot per run");
            assert_eq!(t.metadata().current_snapshot().unwrap().snapshot_id(), report.snapshot_id.unwrap());
            // Every shard ran as its own task and reported to the ledger.
            let tasks = engine.ledger().shard_tasks(Some(&report.run_id)).await.unwrap();
            assert_eq!(tasks.len(), shards);
            assert!(tasks.iter().all(|t| t.status == "succeeded"));
            assert_eq!(tasks.iter().map(|t| t.totals.rows).sum::<u64>(), 100_000);
        }
        // 100,000 rows arrive in 13 batches: with more shards the files spread out.
        let report_files = engine.ledger().runs(Some(&format!("p{shards}"))).await.unwrap()[0].files;
        assert!(report_files >= 1 && report_files <= shards as u64, "{shards} shards wrote {report_files} files");
        if shards > 1 {
            assert!(report_files > 1, "{shards} shards should write more than one file");
        }
        contents.push(rows(&engine, &format!("SELECT * FROM lake.s.{name} ORDER BY id, bucket")).await);
        let summary =
            rows(&engine, &format!("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM lake.s.{name}")).await;
        assert_eq!(summary, [["200000", "100000", "1", "100000"]]);
    }
    assert_eq!(contents[0].len(), 200_000);
    assert!(contents[0] == contents[1], "1 and 2 shards wrote different rows");
    assert!(contents[0] == contents[2], "1 and 8 shards wrote different rows");
}

/// A shard rolls to a new file once the current one passes the table's target file size, and
/// every rolled file is committed in the run's one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_rolls_to_a_new_file_at_the_target_size() {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};

    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 1).await;
    engine.sql("CREATE SCHEMA lake.s; CREATE TABLE lake.s.rolled (id BIGINT, label VARCHAR)").await.unwrap();
    let target_bytes = 256 * 1024;
    let t = table(&engine, "s", "rolled").await;
    let transaction = Transaction::new(&t);
    let transaction = transaction
        .update_table_properties()
        .set("write.target-file-size-bytes".to_string(), target_bytes.to_string())
        .apply(transaction)
        .unwrap();
    transaction.commit(lake(&engine).iceberg().as_ref()).await.unwrap();

    engine
        .sql("INSERT INTO lake.s.rolled SELECT value, 'label number ' || value FROM generate_series(1, 300000)")
        .await
        .unwrap();
    let report = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!((report.shards, report.rows), (1, 300_000));
    assert!(report.files >= 3, "one shard wrote {} files at a {target_bytes}-byte target", report.files);
    let t = table(&engine, "s", "rolled").await;
    assert_eq!(snapshot_count(&t), 1, "all rolled files in one snapshot");
    let summary = &t.metadata().current_snapshot().unwrap().summary().additional_properties;
    assert_eq!(summary["added-data-files"], report.files.to_string());
    assert_eq!(rows(&engine, "SELECT count(*), count(DISTINCT id) FROM lake.s.rolled").await, [["300000", "300000"]]);
}

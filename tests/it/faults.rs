//! Fault injection: a failed run leaves the table at its previous snapshot, the run `failed` in
//! the ledger, and none of its staged files on disk.

use std::path::Path;

use sluice::ledger::RunStatus;

use crate::support::{engine, files_under, snapshot_count, table, value};

/// Seeds `lake.f.<name>` with one committed run of 10 rows.
async fn seeded(engine: &sluice::Engine, name: &str) {
    engine
        .sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS lake.f;
             CREATE TABLE lake.f.{name} (id BIGINT NOT NULL, x DOUBLE);
             INSERT INTO lake.f.{name} SELECT value, value * 1.0 FROM generate_series(1, 10);"
        ))
        .await
        .unwrap();
}

fn data_files(home: &Path, name: &str) -> Vec<std::path::PathBuf> {
    files_under(&home.join("warehouse/f").join(name).join("data"))
}

/// Runs the failing write and checks everything a reader and the ledger see afterwards.
async fn assert_rolled_back(engine: &sluice::Engine, home: &Path, name: &str, failpoint: &str) {
    let before = table(engine, "f", name).await;
    let files_before = data_files(home, name);
    let error = engine
        .sql(&format!("INSERT INTO lake.f.{name} SELECT value, value * 2.0 FROM generate_series(1, 100000)"))
        .await
        .expect_err("the injected fault fails the run");
    let message = error.to_string();
    assert!(message.contains("rolled back") && message.contains(failpoint), "{message}");

    let after = table(engine, "f", name).await;
    assert_eq!(snapshot_count(&after), snapshot_count(&before), "no new snapshot");
    assert_eq!(
        after.metadata().current_snapshot().map(|s| s.snapshot_id()),
        before.metadata().current_snapshot().map(|s| s.snapshot_id())
    );
    assert_eq!(value(engine, &format!("SELECT count(*) FROM lake.f.{name}")).await, "10");

    let runs = engine.ledger().runs(None).await.unwrap();
    let failed = runs.last().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(failed.error.as_deref().unwrap().contains(failpoint));
    // The ledger knew which files the run staged, and every one of them is gone.
    assert!(engine.ledger().staged_files(&failed.run_id).await.unwrap().is_empty());
    assert_eq!(data_files(home, name), files_before, "no staged file left on disk");
    assert!(!files_under(home).iter().any(|f| f.to_string_lossy().contains(&failed.run_id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_failing_mid_write_rolls_back_the_run() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 4).await;
    seeded(&engine, "mid_write").await;
    // The first batch any shard writes succeeds (a file is open and partly written); the next fails.
    let failpoint = "shard-write/lake.f.mid_write";
    fail::cfg(failpoint, "1*off->return").unwrap();
    assert_rolled_back(&engine, home.path(), "mid_write", failpoint).await;
    fail::remove(failpoint);

    // The ledger saw that at least one file was opened before the failure.
    let failed = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    let tasks = engine.ledger().shard_tasks(Some(&failed.run_id)).await.unwrap();
    assert!(tasks.iter().any(|t| t.status == "failed"), "{tasks:?}");

    // The table still takes writes afterwards.
    engine.sql("INSERT INTO lake.f.mid_write VALUES (11, 11.0)").await.unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.f.mid_write").await, "11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_between_staging_and_commit_rolls_back_the_run() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 4).await;
    seeded(&engine, "before_commit").await;
    let failpoint = "before-commit/lake.f.before_commit";
    fail::cfg(failpoint, "return").unwrap();
    assert_rolled_back(&engine, home.path(), "before_commit", failpoint).await;
    fail::remove(failpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_error_mid_stream_rolls_back_the_run() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    seeded(&engine, "bad_rows").await;
    let before = data_files(home.path(), "bad_rows");
    // Row 50,000 fails to cast after earlier batches were already written.
    let error = engine
        .sql("INSERT INTO lake.f.bad_rows SELECT CAST(CASE WHEN value = 50000 THEN 'oops' ELSE CAST(value AS VARCHAR) END AS BIGINT), 0.0 FROM generate_series(1, 100000)")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("oops"), "{error}");
    assert_eq!(data_files(home.path(), "bad_rows"), before);
    assert_eq!(snapshot_count(&table(&engine, "f", "bad_rows").await), 1);
}

/// Inside the commit: a request the catalog never took rolls the run back; a commit the catalog
/// took but whose answer was lost is found in the table's history and counts, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inside_the_commit_before_and_after_the_catalog_accepted_it() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 3).await;
    seeded(&engine, "inside").await;
    let insert = "INSERT INTO lake.f.inside SELECT value, 0.5 FROM generate_series(1000, 1999)";

    fail::cfg("commit-refused/lake.f.inside", "return").unwrap();
    let error = engine.sql(insert).await.unwrap_err().to_string();
    fail::remove("commit-refused/lake.f.inside");
    assert!(error.contains("failed to commit and was rolled back") && error.contains("commit-refused"), "{error}");
    assert_eq!(snapshot_count(&table(&engine, "f", "inside").await), 1);
    let failed = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(!files_under(home.path()).iter().any(|f| f.to_string_lossy().contains(&failed.run_id)));

    fail::cfg("commit-response-lost/lake.f.inside", "return").unwrap();
    engine.sql(insert).await.expect("the run's commit is found in the table's history");
    fail::remove("commit-response-lost/lake.f.inside");
    let run = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!((run.status, run.rows), (RunStatus::Succeeded, 1000));
    let t = table(&engine, "f", "inside").await;
    assert_eq!(snapshot_count(&t), 2, "exactly one new snapshot");
    assert_eq!(run.snapshot_id, t.metadata().current_snapshot().map(|s| s.snapshot_id()));
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.f.inside").await, "1010");
}

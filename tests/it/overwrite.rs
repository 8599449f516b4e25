//! An overwrite that loses the race to a concurrent commit fails cleanly: the concurrent commit
//! stands, nothing is replaced, and the overwrite leaves no data or metadata file behind.

use std::path::Path;
use std::sync::Arc;

use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sluice::ledger::RunStatus;

use crate::support::{Stall, files_under, rows};

async fn engine(home: &Path) -> Arc<Engine> {
    let delta = DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() };
    Arc::new(
        Engine::builder().home(home).catalog("delta", CatalogConfig::Delta(delta)).shards(2).build().await.unwrap(),
    )
}

/// Starts `INSERT OVERWRITE` into `table`, holds it just before its commit while an append
/// commits, then lets it try. Returns the overwrite's error.
async fn overwrite_against_an_append(engine: &Arc<Engine>, table: &str) -> String {
    engine.sql(&format!("CREATE TABLE {table} (id BIGINT); INSERT INTO {table} VALUES (1), (2)")).await.unwrap();
    let mut stall = Stall::at(format!("before-commit/{table}"));
    let overwrite = {
        let (engine, sql) =
            (engine.clone(), format!("INSERT OVERWRITE {table} SELECT value FROM generate_series(100, 199)"));
        tokio::spawn(async move { engine.sql(&sql).await })
    };
    stall.reached().await; // the overwrite is staged and held
    engine.sql(&format!("INSERT INTO {table} VALUES (3)")).await.unwrap();
    stall.release();
    let error = overwrite.await.unwrap().expect_err("the overwrite lost the race").to_string();

    assert!(error.contains("conflict") && error.contains("rolled back"), "{error}");
    assert_eq!(rows(engine, &format!("SELECT id FROM {table} ORDER BY id")).await, [["1"], ["2"], ["3"]]);
    let failed = engine.ledger().runs(None).await.unwrap().into_iter().find(|r| r.status == RunStatus::Failed).unwrap();
    assert!(failed.error.as_deref().unwrap().contains("conflict"));
    assert!(engine.ledger().staged_files(&failed.run_id).await.unwrap().is_empty());
    assert!(
        !files_under(engine.home()).iter().any(|f| f.to_string_lossy().contains(&failed.run_id)),
        "a staged file is left"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_overwrite_loses_cleanly_to_a_concurrent_append() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path()).await;
    engine.sql("CREATE SCHEMA lake.o").await.unwrap();
    overwrite_against_an_append(&engine, "lake.o.t").await;
    // No metadata of the failed attempt is left: one metadata file per table version (create +
    // two appends), one manifest list and one manifest per snapshot.
    let metadata = files_under(&home.path().join("warehouse/o/t/metadata"));
    let count = |suffix: &str| metadata.iter().filter(|f| f.to_string_lossy().ends_with(suffix)).count();
    assert_eq!(count(".metadata.json"), 3, "{metadata:?}");
    assert_eq!(count(".avro"), 4, "{metadata:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_overwrite_loses_cleanly_to_a_concurrent_append() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path()).await;
    engine.sql("CREATE SCHEMA delta.o").await.unwrap();
    overwrite_against_an_append(&engine, "delta.o.t").await;
    let log = files_under(&home.path().join("delta/o/t/_delta_log"));
    assert_eq!(log.iter().filter(|f| f.to_string_lossy().ends_with(".json")).count(), 3, "{log:?}");
}

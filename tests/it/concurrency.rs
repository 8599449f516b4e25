//! Concurrent writers: separate `sluice` processes appending to one table at the same time all
//! succeed; every append is one snapshot (Iceberg) or version (Delta), and no row is lost or
//! doubled.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{engine, rows, snapshot_count, table};

const WRITERS: usize = 8;
const APPENDS: usize = 5;
const ROWS_PER_APPEND: usize = 100;

/// Declares the catalog `delta` in the home, so that every process sees it.
fn declare_delta(home: &Path) {
    std::fs::create_dir_all(home.join("catalogs")).unwrap();
    std::fs::write(home.join("catalogs/delta.toml"), "type = \"delta\"\nroot = \"../delta\"\n").unwrap();
}

/// `WRITERS` processes, each running `APPENDS` INSERTs of distinct ids into `table`; all must
/// succeed. Returns the ledger's snapshot ids of the runs.
async fn append_concurrently(home: &Path, table: &str) -> Vec<i64> {
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let statements: Vec<String> = (0..APPENDS)
                .map(|append| {
                    let first = (writer * APPENDS + append) * ROWS_PER_APPEND + 1;
                    let last = first + ROWS_PER_APPEND - 1;
                    format!("INSERT INTO {table} SELECT {writer}, value FROM generate_series({first}, {last});")
                })
                .collect();
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("--home")
                .arg(home)
                .args(["--shards", "2", "-c", &statements.join("\n")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (writer, child) in writers.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "writer {writer} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    let engine = engine(home, 2).await;
    let total = WRITERS * APPENDS * ROWS_PER_APPEND;
    assert_eq!(
        rows(&engine, &format!("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}")).await,
        [[total.to_string(), total.to_string(), "1".to_string(), total.to_string()]]
    );
    assert_eq!(
        rows(&engine, &format!("SELECT count(*) FROM {table} GROUP BY writer")).await,
        vec![vec![(APPENDS * ROWS_PER_APPEND).to_string()]; WRITERS]
    );
    let runs = engine.ledger().runs(None).await.unwrap();
    assert_eq!(runs.len(), WRITERS * APPENDS);
    assert!(runs.iter().all(|r| r.status == sluice::ledger::RunStatus::Succeeded));
    let mut snapshots: Vec<i64> = runs.iter().map(|r| r.snapshot_id.unwrap()).collect();
    snapshots.sort();
    snapshots.dedup();
    assert_eq!(snapshots.len(), WRITERS * APPENDS, "every run committed its own snapshot");
    snapshots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_processes_append_five_times_each_to_one_iceberg_table() {
    let home = tempfile::tempdir().unwrap();
    engine(home.path(), 2)
        .await
        .sql("CREATE SCHEMA lake.c; CREATE TABLE lake.c.t (writer BIGINT, id BIGINT NOT NULL)")
        .await
        .unwrap();
    append_concurrently(home.path(), "lake.c.t").await;
    let engine = engine(home.path(), 2).await;
    assert_eq!(snapshot_count(&table(&engine, "c", "t").await), WRITERS * APPENDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_processes_append_five_times_each_to_one_delta_table() {
    let home = tempfile::tempdir().unwrap();
    declare_delta(home.path());
    engine(home.path(), 2)
        .await
        .sql("CREATE SCHEMA delta.c; CREATE TABLE delta.c.t (writer BIGINT, id BIGINT NOT NULL)")
        .await
        .unwrap();
    let versions = append_concurrently(home.path(), "delta.c.t").await;
    // Version 0 created the table; the 40 appends are exactly versions 1..=40.
    assert_eq!(versions, (1..=(WRITERS * APPENDS) as i64).collect::<Vec<_>>());
    let engine = engine(home.path(), 2).await;
    let latest = (WRITERS * APPENDS) as i64;
    assert!(engine.sql(&format!("SELECT count(*) FROM delta.c.\"t@{}\"", latest + 1)).await.is_err());
}

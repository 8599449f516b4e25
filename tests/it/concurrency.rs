//! Concurrent writers: separate `sluice` processes appending to one table at the same time all
//! succeed; every append is one snapshot and no row is lost or doubled.

use std::process::{Command, Stdio};

use crate::support::{engine, rows, snapshot_count, table};

const WRITERS: usize = 8;
const APPENDS: usize = 5;
const ROWS_PER_APPEND: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_processes_append_five_times_each_to_one_iceberg_table() {
    let home = tempfile::tempdir().unwrap();
    {
        let engine = engine(home.path(), 2).await;
        engine.sql("CREATE SCHEMA lake.c; CREATE TABLE lake.c.t (writer BIGINT, id BIGINT NOT NULL)").await.unwrap();
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let statements: Vec<String> = (0..APPENDS)
                .map(|append| {
                    let first = (writer * APPENDS + append) * ROWS_PER_APPEND + 1;
                    let last = first + ROWS_PER_APPEND - 1;
                    format!("INSERT INTO lake.c.t SELECT {writer}, value FROM generate_series({first}, {last});")
                })
                .collect();
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("--home")
                .arg(home.path())
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

    let engine = engine(home.path(), 2).await;
    let total = WRITERS * APPENDS * ROWS_PER_APPEND;
    assert_eq!(snapshot_count(&table(&engine, "c", "t").await), WRITERS * APPENDS);
    assert_eq!(
        rows(&engine, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM lake.c.t").await,
        [[total.to_string(), total.to_string(), "1".to_string(), total.to_string()]]
    );
    assert_eq!(
        rows(&engine, "SELECT count(*) FROM lake.c.t GROUP BY writer").await,
        vec![vec![(APPENDS * ROWS_PER_APPEND).to_string()]; WRITERS]
    );
    let runs = engine.ledger().runs(None).await.unwrap();
    assert_eq!(runs.len(), WRITERS * APPENDS);
    assert!(runs.iter().all(|r| r.status == sluice::ledger::RunStatus::Succeeded));
}

//! Cancelling statements, and dropping their futures: a query stops; a write rolls back (no
//! staged file left, the run `cancelled`) unless it is already committing, when its commit
//! finishes. Parameters are bound as values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::Engine;
use sluice::engine::{CancellationToken, ScalarValue};
use sluice::error::Error;
use sluice::ledger::RunStatus;

use crate::support::{Stall, engine, files_under, rows, value};

const INSERT: &str = "INSERT INTO lake.c.t SELECT value FROM generate_series(1, 200000)";

async fn setup(home: &std::path::Path, table: &str) -> Arc<Engine> {
    let engine = Arc::new(engine(home, 2).await);
    engine
        .sql(&format!(
            "CREATE SCHEMA lake.c; CREATE TABLE lake.c.{table} (id BIGINT); INSERT INTO lake.c.{table} VALUES (-1)"
        ))
        .await
        .unwrap();
    engine
}

/// The data files under the table's folder.
fn data_files(home: &std::path::Path, table: &str) -> usize {
    files_under(&home.join("warehouse/c").join(table).join("data")).len()
}

/// Waits (at most 30 s) until the last run reaches `status`.
async fn last_run_reaches(engine: &Engine, status: RunStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = engine.ledger().runs(None).await.unwrap().pop().unwrap();
        if last.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "the run stayed {:?}", last.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_write_rolls_back_and_is_recorded_cancelled() {
    let home = tempfile::tempdir().unwrap();
    let engine = setup(home.path(), "t").await;
    let before = data_files(home.path(), "t");
    let mut stall = Stall::at("shard-write/lake.c.t");
    let cancel = CancellationToken::new();
    let run = {
        let (engine, cancel) = (engine.clone(), cancel.clone());
        tokio::spawn(async move {
            let statement = sluice::parser::parse(INSERT).unwrap().remove(0);
            engine.execute_cancellable(&statement, cancel).await
        })
    };
    stall.reached().await; // a shard has written a batch
    cancel.cancel();
    stall.release();
    let error = run.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("was cancelled; nothing was committed"), "{error}");
    // Settled before the call returned: the run is cancelled, its files are gone.
    let last = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(last.status, RunStatus::Cancelled);
    assert_eq!(data_files(home.path(), "t"), before, "no staged file is left");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.c.t").await, "1");
    assert_eq!(value(&engine, "SELECT status FROM sluice.runs ORDER BY started_at DESC LIMIT 1").await, "cancelled");
    // A cancelled run can be retried under its id.
    let retried = engine.retry_run(&last.run_id).await.unwrap();
    assert_eq!(retried.rows, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_a_write_before_its_commit_cancels_it_in_the_background() {
    let home = tempfile::tempdir().unwrap();
    let engine = setup(home.path(), "d").await;
    let before = data_files(home.path(), "d");
    let mut stall = Stall::at("shard-write/lake.c.d");
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.sql(&INSERT.replace("lake.c.t", "lake.c.d")).await })
    };
    stall.reached().await;
    run.abort(); // the caller gives up: its future is dropped
    assert!(run.await.unwrap_err().is_cancelled());
    stall.release();
    last_run_reaches(&engine, RunStatus::Cancelled).await;
    assert_eq!(data_files(home.path(), "d"), before, "the rollback deleted the staged files");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.c.d").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_a_write_while_it_commits_lets_the_commit_finish() {
    let home = tempfile::tempdir().unwrap();
    let engine = setup(home.path(), "m").await;
    let mut stall = Stall::at("commit-stall/lake.c.m");
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.sql(&INSERT.replace("lake.c.t", "lake.c.m")).await })
    };
    stall.reached().await; // inside the commit
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    stall.release();
    last_run_reaches(&engine, RunStatus::Succeeded).await;
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.c.m").await, "200001", "committed whole, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_query_stops() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    let statement = sluice::parser::parse("SELECT count(*) FROM generate_series(1, 100000000000)").unwrap().remove(0);
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let result = engine.execute_cancellable(&statement, cancel).await;
    canceller.await.unwrap();
    assert!(
        matches!(result, Err(Error::Statement { ref source, .. }) if matches!(**source, Error::Cancelled)),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "stopped soon after the cancel: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parameters_are_bound_as_values_never_as_sql() {
    let home = tempfile::tempdir().unwrap();
    let engine = setup(home.path(), "p").await;
    let hostile = "x'); DROP TABLE lake.c.p; --";
    engine
        .sql_with_params(
            "INSERT INTO lake.c.p SELECT $1 + length($2)",
            vec![ScalarValue::from(10_i64), ScalarValue::from(hostile)],
        )
        .await
        .unwrap();
    assert_eq!(rows(&engine, "SELECT id FROM lake.c.p ORDER BY id").await, [["-1"], ["38"]]);
    let found = engine
        .sql_with_params("SELECT count(*) AS n FROM lake.c.p WHERE id > $1", vec![ScalarValue::from(0_i64)])
        .await;
    assert_eq!(crate::support::cells(&found.unwrap()), [[Some("1".to_string())]]);
}

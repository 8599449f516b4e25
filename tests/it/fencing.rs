//! The lease race closed: a run whose lease lapsed while its catalog commit was in flight never
//! publishes a snapshot that references files recovery deleted. Recovery fences a `committing`
//! run off (Iceberg: a table property swapped in like a commit; Delta: a log version of its own)
//! before it deletes anything; the stalled commit, released, is refused; a `RETRY RUN` (the next
//! attempt) commits once. Time is a test clock: no test waits for a lease to lapse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sluice::clock::TestClock;
use sluice::coordinator::Resolution;
use sluice::engine::DEFAULT_RUN_LEASE;
use sluice::ledger::RunStatus;

use crate::support::{Stall, files_under, rows, value};

/// An engine on `home` (with a Delta catalog) whose time is `clock`.
async fn engine(home: &Path, clock: &TestClock) -> Engine {
    let delta = DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() };
    Engine::builder()
        .home(home)
        .catalog("delta", CatalogConfig::Delta(delta))
        .shards(2)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

/// The files under `dir` whose name contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|f| f.to_string_lossy().contains(needle)).collect()
}

/// The table's metadata files in `dir` that a fence adds to: Iceberg's `metadata/*.metadata.json`
/// or Delta's `_delta_log/*.json`.
fn versions(dir: &Path) -> Vec<PathBuf> {
    let mut files = files_under(&dir.join("metadata"));
    files.extend(files_under(&dir.join("_delta_log")));
    files.retain(|f| f.extension().is_some_and(|e| e == "json"));
    files
}

/// Checks that the only metadata file added since `before` is a fence of `run_id` (and that no
/// manifest was added: `avro_before` is the table's count of them).
fn only_the_fence_is_new(dir: &Path, before: &[PathBuf], avro_before: usize, run_id: &str) {
    let new: Vec<_> = versions(dir).into_iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(new.len(), 1, "one new metadata file: {new:?}");
    let fence = std::fs::read_to_string(&new[0]).unwrap();
    let marker = [format!("sluice.fenced-run.{run_id}"), format!("sluice-fence/{run_id}")];
    assert!(marker.iter().any(|m| fence.contains(m)), "{} is the run's fence: {fence}", new[0].display());
    assert_eq!(iceberg_metadata(dir).1, avro_before, "no manifest of the run is left");
}

/// The metadata files of the Iceberg table in `dir`, by kind: (`*.metadata.json`, `*.avro`).
fn iceberg_metadata(dir: &Path) -> (usize, usize) {
    let files = files_under(&dir.join("metadata"));
    let count = |suffix: &str| files.iter().filter(|f| f.to_string_lossy().ends_with(suffix)).count();
    (count(".metadata.json"), count(".avro"))
}

async fn stalled_commit_is_fenced_off(table: &str, table_dir: impl Fn(&Path) -> PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let engine = Arc::new(engine(home.path(), &clock).await);
    let schema = table.rsplit_once('.').unwrap().0;
    engine.sql(&format!("CREATE SCHEMA {schema}; CREATE TABLE {table} (id BIGINT)")).await.unwrap();
    engine.sql(&format!("INSERT INTO {table} VALUES (-1), (-2)")).await.unwrap();
    let (versions_before, avro_before) =
        (versions(&table_dir(home.path())), iceberg_metadata(&table_dir(home.path())).1);

    let mut stall = Stall::at(format!("commit-stall/{table}"));
    let run = {
        let (engine, sql) =
            (engine.clone(), format!("INSERT INTO {table} SELECT value FROM generate_series(1, 50000)"));
        tokio::spawn(async move { engine.sql(&sql).await })
    };
    stall.reached().await;
    let record = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(record.status, RunStatus::Committing, "stalled inside its commit");

    // The lease lapses (the process is only stalled); recovery fences the run off, then deletes.
    clock.advance(DEFAULT_RUN_LEASE * 2);
    let settled = engine.recover().await.unwrap();
    let settled: Vec<_> = settled.into_iter().map(|(run, how)| (run.run_id, how)).collect();
    assert_eq!(settled, [(record.run_id.clone(), Resolution::RolledBack)]);
    assert!(files_named(home.path(), &record.run_id).is_empty(), "recovery deleted the run's files");

    // Released, the commit is refused: nothing of the run is published.
    stall.release();
    let error = run.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("fenced off by recovery"), "{error}");
    assert_eq!(rows(&engine, &format!("SELECT count(*), min(id) FROM {table}")).await, [["2", "-2"]]);
    assert!(files_named(home.path(), &record.run_id).is_empty(), "no file of the run came back");
    only_the_fence_is_new(&table_dir(home.path()), &versions_before, avro_before, &record.run_id);
    assert_eq!(engine.ledger().run(&record.run_id).await.unwrap().unwrap().status, RunStatus::Failed);

    // The next attempt of the run may commit, once.
    let retried = engine.retry_run(&record.run_id).await.unwrap();
    assert_eq!((retried.run_id.as_str(), retried.rows), (record.run_id.as_str(), 50_000));
    assert_eq!(rows(&engine, &format!("SELECT count(*), count(DISTINCT id) FROM {table}")).await, [["50002", "50002"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_commit_stalled_past_its_lease_is_fenced_off_by_recovery() {
    stalled_commit_is_fenced_off("lake.fence.t", |home| home.join("warehouse/fence/t")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_commit_stalled_past_its_lease_is_fenced_off_by_recovery() {
    stalled_commit_is_fenced_off("delta.fence.t", |home| home.join("delta/fence/t")).await;
}

/// A process killed inside the Iceberg commit (its manifests, manifest list and metadata file
/// written, the catalog not yet swapped) leaves no unreferenced file behind after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_inside_the_iceberg_commit_leaves_no_metadata_file_behind() {
    let home = tempfile::tempdir().unwrap();
    let sluice = |failpoints: &str, sql: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--home")
            .arg(home.path())
            .args(["--shards", "2", "-c", sql])
            .env("FAILPOINTS", failpoints)
            .output()
            .unwrap()
    };
    let setup =
        sluice("", "CREATE SCHEMA lake.fk; CREATE TABLE lake.fk.t (id BIGINT); INSERT INTO lake.fk.t VALUES (1)");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let table_dir = home.path().join("warehouse/fk/t");
    let before = iceberg_metadata(&table_dir);
    let crashed = sluice(
        "commit-stall/lake.fk.t=return(abort)",
        "INSERT INTO lake.fk.t SELECT value FROM generate_series(2, 10001)",
    );
    assert!(!crashed.status.success(), "the process was to die inside its commit");
    let (json, avro) = iceberg_metadata(&table_dir);
    assert!(json > before.0 && avro > before.1, "the commit had written its metadata: {before:?} -> {json}, {avro}");

    // Recovery, once the dead process's lease has lapsed (the clock moved on, nobody waits).
    let clock = TestClock::new();
    clock.advance(DEFAULT_RUN_LEASE * 2);
    let engine = engine(home.path(), &clock).await;
    let run = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{:?}", run.error);
    assert_eq!(iceberg_metadata(&table_dir), (before.0 + 1, before.1), "only the fence's metadata file is new");
    assert!(files_named(home.path(), &run.run_id).is_empty(), "no data file of the run is left");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.fk.t").await, "1");
    engine.retry_run(&run.run_id).await.unwrap();
    assert_eq!(rows(&engine, "SELECT count(*), count(DISTINCT id) FROM lake.fk.t").await, [["10001", "10001"]]);
}

/// A commit whose request is lost (the process cannot tell whether the catalog took it) is
/// fenced off at once by its own process, which then rolls back knowing that it never lands; the
/// next attempt commits once.
async fn a_lost_request_is_fenced_off_and_rolled_back(table: &str, table_dir: impl Fn(&Path) -> PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), &TestClock::new()).await;
    let schema = table.rsplit_once('.').unwrap().0;
    engine.sql(&format!("CREATE SCHEMA {schema}; CREATE TABLE {table} (id BIGINT)")).await.unwrap();
    let (versions_before, avro_before) =
        (versions(&table_dir(home.path())), iceberg_metadata(&table_dir(home.path())).1);
    let failpoint = format!("commit-request-lost/{table}");
    fail::cfg(&failpoint, "1*return").unwrap();
    let error = engine.sql(&format!("INSERT INTO {table} SELECT value FROM generate_series(1, 1000)")).await;
    fail::remove(&failpoint);
    let error = error.unwrap_err().to_string();
    assert!(
        error.contains("outcome unknown") && error.contains("fenced off now") && error.contains("rolled back"),
        "{error}"
    );
    let record = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    assert!(files_named(home.path(), &record.run_id).is_empty(), "the run's files are deleted");
    only_the_fence_is_new(&table_dir(home.path()), &versions_before, avro_before, &record.run_id);
    assert_eq!(value(&engine, &format!("SELECT count(*) FROM {table}")).await, "0");
    engine.retry_run(&record.run_id).await.unwrap();
    assert_eq!(rows(&engine, &format!("SELECT count(*), count(DISTINCT id) FROM {table}")).await, [["1000", "1000"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_commit_whose_request_is_lost_is_fenced_off_and_rolled_back() {
    a_lost_request_is_fenced_off_and_rolled_back("lake.lost.t", |home| home.join("warehouse/lost/t")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_commit_whose_request_is_lost_is_fenced_off_and_rolled_back() {
    a_lost_request_is_fenced_off_and_rolled_back("delta.lost.t", |home| home.join("delta/lost/t")).await;
}

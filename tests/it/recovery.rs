//! Exactly-once under crashes: runs left open by a process that died are settled by recovery
//! (from the table's history, never by a blind retry), `RETRY RUN` re-runs a failed run under its
//! id, and runs of one pipeline never overlap.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sluice::clock::TestClock;
use sluice::coordinator::Resolution;
use sluice::ledger::RunStatus;

use crate::support::{Stall, files_under, rows, value};

const LEASE: Duration = Duration::from_millis(300);

async fn engine(home: &Path) -> Engine {
    engine_at(home, &TestClock::new()).await
}

/// [`engine`], its time `clock` (recovery runs on start: move the clock on first to settle runs
/// whose lease has lapsed).
async fn engine_at(home: &Path, clock: &TestClock) -> Engine {
    let delta = DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() };
    Engine::builder()
        .home(home)
        .catalog("delta", CatalogConfig::Delta(delta))
        .shards(2)
        .run_lease(LEASE)
        .clock(std::sync::Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

/// The `sluice` binary on `home` with a Delta catalog file, running `sql` with `failpoints`.
fn sluice(home: &Path, failpoints: &str, sql: &str) -> std::process::Output {
    std::fs::create_dir_all(home.join("catalogs")).unwrap();
    std::fs::write(home.join("catalogs/delta.toml"), "type = \"delta\"\nroot = \"../delta\"\n").unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home)
        .args(["--shards", "2", "-c", sql])
        .env("FAILPOINTS", failpoints)
        .output()
        .unwrap()
}

/// A process killed after staging leaves its run `staging` and its files on disk; recovery
/// deletes them, and `RETRY RUN` writes the rows exactly once under the same run id.
async fn crash_before_commit(table: &str) {
    let home = tempfile::tempdir().unwrap();
    let schema = table.rsplit_once('.').unwrap().0;
    let setup = sluice(home.path(), "", &format!("CREATE SCHEMA {schema}; CREATE TABLE {table} (id BIGINT)"));
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let crashed = sluice(
        home.path(),
        &format!("before-commit/{table}=return(abort)"),
        &format!("INSERT INTO {table} SELECT value FROM generate_series(1, 50000)"),
    );
    assert!(!crashed.status.success(), "the process was to die before its commit");

    let engine = Engine::builder().home(home.path()).shards(2).recover_on_start(false).build().await.unwrap();
    let run = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(run.status, RunStatus::Staging);
    let staged = engine.ledger().staged_files(&run.run_id).await.unwrap();
    assert!(!staged.is_empty());
    let on_disk =
        |home: &Path| files_under(home).into_iter().filter(|f| f.to_string_lossy().contains(&run.run_id)).count();
    assert_eq!(on_disk(home.path()), staged.len(), "the staged files are on disk, unreferenced");
    drop(engine);

    // `sluice recover`, a process of its own, after the lease ran out: the dead process's lease
    // was the default 30 s, so the ledger row is aged here the way time would age it (a test
    // clock reaches only into this process).
    sqlx_age_leases(home.path()).await;
    let recover = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home.path())
        .args(["--format", "csv", "recover"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&recover.stdout);
    assert!(report.contains(&run.run_id) && report.contains("not committed: staged files deleted"), "{report}");
    assert_eq!(on_disk(home.path()), 0, "recovery deleted every staged file");

    let engine = self::engine(home.path()).await;
    assert_eq!(value(&engine, &format!("SELECT count(*) FROM {table}")).await, "0");
    let retried = engine.retry_run(&run.run_id).await.unwrap();
    assert_eq!((retried.run_id.as_str(), retried.rows), (run.run_id.as_str(), 50_000));
    assert_eq!(rows(&engine, &format!("SELECT count(*), count(DISTINCT id) FROM {table}")).await, [["50000", "50000"]]);
    let again = engine.retry_run(&run.run_id).await.unwrap_err().to_string();
    assert!(again.contains("already succeeded"), "{again}");
}

/// Ages every open run's lease, as the passing of its 30 s would (for processes of their own).
async fn sqlx_age_leases(home: &Path) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", home.join("ledger.db").display())).await.unwrap();
    sqlx::query("UPDATE runs SET lease_until_ms = 0 WHERE status IN ('staging', 'committing')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_run_killed_before_its_commit_is_rolled_back_and_retried_once() {
    crash_before_commit("lake.k.t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_run_killed_before_its_commit_is_rolled_back_and_retried_once() {
    crash_before_commit("delta.k.t").await;
}

/// A run whose commit landed but whose process died before the ledger heard of it is settled as
/// succeeded by recovery: its snapshot is found in the table's history, nothing is re-written.
async fn crash_after_commit(table: &str) {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let engine = engine_at(home.path(), &clock).await;
    let schema = table.rsplit_once('.').unwrap().0;
    engine.sql(&format!("CREATE SCHEMA {schema}; CREATE TABLE {table} (id BIGINT)")).await.unwrap();
    let failpoint = format!("after-commit/{table}");
    fail::cfg(&failpoint, "return").unwrap();
    engine.sql(&format!("INSERT INTO {table} SELECT value FROM generate_series(1, 1000)")).await.unwrap_err();
    fail::remove(&failpoint);
    let run = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(run.status, RunStatus::Committing);
    // Its heartbeat stopped with it: once the lease runs out, recovery settles it.
    let live: Vec<_> = engine.recover().await.unwrap().into_iter().map(|(r, how)| (r.run_id, how)).collect();
    assert_eq!(
        live,
        [(run.run_id.clone(), Resolution::StillRunning)],
        "a run within its lease is left alone, and listed"
    );
    assert_eq!(engine.ledger().run(&run.run_id).await.unwrap().unwrap().status, RunStatus::Committing);
    clock.advance(LEASE * 2);
    let settled = engine.recover().await.unwrap();
    assert_eq!(settled.len(), 1);
    let run = engine.ledger().run(&run.run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.rows), (RunStatus::Succeeded, 1000));
    assert!(run.snapshot_id.is_some());
    assert_eq!(rows(&engine, &format!("SELECT count(*), count(DISTINCT id) FROM {table}")).await, [["1000", "1000"]]);
    assert!(engine.retry_run(&run.run_id).await.unwrap_err().to_string().contains("already succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_run_that_died_after_its_commit_is_recovered_as_succeeded() {
    crash_after_commit("lake.c.t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_run_that_died_after_its_commit_is_recovered_as_succeeded() {
    crash_after_commit("delta.c.t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_run_is_retried_under_its_id_and_runs_of_a_pipeline_never_overlap() {
    let home = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(engine(home.path()).await);
    engine
        .sql(
            "CREATE SCHEMA lake.r; CREATE TABLE lake.r.t (id BIGINT);
             CREATE PIPELINE fill WITH (shards = 3) AS INSERT INTO lake.r.t SELECT value FROM generate_series(1, 100000);",
        )
        .await
        .unwrap();
    // A run that failed mid-write, retried: same id, same sequence, rows once.
    fail::cfg("shard-write/lake.r.t", "1*off->return").unwrap();
    engine.run_pipeline("fill").await.unwrap_err();
    fail::remove("shard-write/lake.r.t");
    let failed = engine.ledger().runs(Some("fill")).await.unwrap().pop().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    let retried = engine.sql(&format!("RETRY RUN '{}'", failed.run_id)).await.unwrap();
    assert_eq!(retried[0].num_rows(), 1);
    let run = engine.ledger().run(&failed.run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.sequence, run.rows), (RunStatus::Succeeded, failed.sequence, 100_000));
    assert_eq!(engine.ledger().runs(Some("fill")).await.unwrap().len(), 1, "no new run was opened");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.r.t").await, "100000");

    // While a run of the pipeline holds its lease, another is refused.
    let mut stall = Stall::at("before-commit/lake.r.t");
    let first = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_pipeline("fill").await })
    };
    stall.reached().await;
    let refused = engine.run_pipeline("fill").await.unwrap_err().to_string();
    assert!(refused.contains("pipeline `fill` is already running"), "{refused}");
    stall.release();
    first.await.unwrap().unwrap();
    engine.run_pipeline("fill").await.unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.r.t").await, "300000");
    let unknown = engine.sql("RETRY RUN 'nope'").await.unwrap_err().to_string();
    assert!(unknown.contains("cannot retry run nope: there is no such run"), "{unknown}");
}

/// A run that is alive but let its lease lapse is settled by recovery exactly once, and then may
/// not commit: its files are gone and the table is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_lease_lapsed_is_settled_once_and_cannot_commit_afterwards() {
    let home = tempfile::tempdir().unwrap();
    // A long lease: the heartbeat does not renew it during the test; the clock moves on instead.
    let clock = TestClock::new();
    let engine = std::sync::Arc::new(
        Engine::builder()
            .home(home.path())
            .shards(2)
            .run_lease(Duration::from_secs(30))
            .clock(std::sync::Arc::new(clock.clone()))
            .build()
            .await
            .unwrap(),
    );
    engine.sql("CREATE SCHEMA lake.l; CREATE TABLE lake.l.t (id BIGINT)").await.unwrap();
    let mut stall = Stall::at("before-commit/lake.l.t");
    let run = {
        let engine = engine.clone();
        tokio::spawn(
            async move { engine.sql("INSERT INTO lake.l.t SELECT value FROM generate_series(1, 50000)").await },
        )
    };
    stall.reached().await; // staged, held before its commit
    clock.advance(Duration::from_secs(60));
    let settled = engine.recover().await.unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].1, Resolution::RolledBack);
    assert!(engine.recover().await.unwrap().is_empty(), "settled once");

    stall.release();
    let error = run.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("lost its lease"), "{error}");
    let record = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.l.t").await, "0");
    assert!(
        !files_under(home.path()).iter().any(|f| f.to_string_lossy().contains(&record.run_id)),
        "no staged file left"
    );
}

/// An export killed after its shards wrote their parts leaves them in a hidden folder beside the
/// target; recovery deletes the folder and marks the run failed, and the old file is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_killed_before_its_rename_is_cleaned_up_by_recovery() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("out.csv");
    std::fs::write(&target, "old\n").unwrap();
    let crashed = sluice(
        home.path(),
        &format!("before-commit/{}=return(abort)", target.display()),
        &format!("COPY (SELECT value FROM generate_series(1, 50000)) TO '{}'", target.display()),
    );
    assert!(!crashed.status.success(), "the process was to die before its rename");
    assert!(files_under(out.path()).len() > 1, "the parts are on disk: {:?}", files_under(out.path()));

    let clock = TestClock::new();
    clock.advance(Duration::from_secs(60)); // past the dead process's 30 s lease
    let engine = engine_at(home.path(), &clock).await; // recovery runs on start
    let run = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!((run.status, run.target.as_str()), (RunStatus::Failed, target.to_str().unwrap()));
    assert_eq!(files_under(out.path()), std::slice::from_ref(&target), "only the old file is left");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
    assert!(std::fs::read_dir(out.path()).unwrap().count() == 1, "no parts folder is left");
    let retry = engine.sql(&format!("RETRY RUN '{}'", run.run_id)).await.expect_err("exports are not retried");
    assert!(retry.to_string().contains("run the COPY again"), "{retry}");
}

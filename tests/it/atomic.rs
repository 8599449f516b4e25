//! Atomic pipelines (`atomic = true`) on the Iceberg SQL catalog: no step's output is visible
//! until every step has staged; later steps read what earlier ones staged; every table is
//! published in one catalog transaction, or none is — when the last step fails, when a fault
//! strikes between the metadata writes and the transaction, and when the process dies during the
//! publish (recovery then settles all alike). No outcome leaves a file that no table references.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice::Engine;
use sluice::clock::TestClock;
use sluice::engine::DEFAULT_RUN_LEASE;
use sluice::error::Error;

use crate::support::{Stall, engine, files_under, referenced_files, rows, table, value};

const TABLES: [&str; 4] = ["a", "b", "c", "d"];

/// Schema `lake.<schema>`: `a` holds 10 rows, `b`, `c`, `d` are empty; pipeline `<schema>` is
/// an atomic diamond: a is replaced by 1,000 rows, b and c take its even and odd ids, d counts
/// b and c.
async fn atomic_home(engine: &Engine, schema: &str) {
    let setup = format!(
        "CREATE SCHEMA lake.{schema};
         CREATE TABLE lake.{schema}.a (id BIGINT); CREATE TABLE lake.{schema}.b (id BIGINT);
         CREATE TABLE lake.{schema}.c (id BIGINT); CREATE TABLE lake.{schema}.d (n BIGINT);
         INSERT INTO lake.{schema}.a SELECT value FROM generate_series(1, 10);
         CREATE PIPELINE {schema} WITH (atomic = true) AS BEGIN
           STEP a AS INSERT OVERWRITE lake.{schema}.a SELECT value FROM generate_series(1, 1000);
           STEP b AS INSERT INTO lake.{schema}.b SELECT id FROM lake.{schema}.a WHERE id % 2 = 0;
           STEP c AS INSERT INTO lake.{schema}.c SELECT id FROM lake.{schema}.a WHERE id % 2 = 1;
           STEP d AS INSERT INTO lake.{schema}.d SELECT (SELECT count(*) FROM lake.{schema}.b) + (SELECT count(*) FROM lake.{schema}.c);
         END;"
    );
    engine.sql(&setup).await.unwrap();
}

/// Each table's current snapshot.
async fn snapshots(engine: &Engine, schema: &str) -> Vec<Option<i64>> {
    let mut current = Vec::new();
    for name in TABLES {
        current.push(table(engine, schema, name).await.metadata().current_snapshot().map(|s| s.snapshot_id()));
    }
    current
}

/// Row counts of a, b, c and d.
async fn counts(engine: &Engine, schema: &str) -> Vec<String> {
    let mut counts = Vec::new();
    for name in TABLES {
        counts.push(value(engine, &format!("SELECT count(*) FROM lake.{schema}.{name}")).await);
    }
    counts
}

/// Every file under the schema's folder.
fn files(home: &Path, schema: &str) -> BTreeSet<PathBuf> {
    files_under(&home.join("warehouse").join(schema)).into_iter().collect()
}

/// Checks that every file under each table's folder is one its metadata reaches.
async fn no_orphans(engine: &Engine, home: &Path, schema: &str) {
    for name in TABLES {
        let referenced = referenced_files(&table(engine, schema, name).await).await;
        let on_disk = files_under(&home.join("warehouse").join(schema).join(name));
        let orphans: Vec<_> = on_disk.iter().filter(|f| !referenced.contains(&f.display().to_string())).collect();
        assert!(orphans.is_empty(), "files of `{name}` no metadata reaches: {orphans:#?}");
    }
}

/// The pipeline run's status and its steps' statuses, in step order.
async fn statuses(engine: &Engine) -> (String, Vec<String>) {
    let runs = engine.ledger().pipeline_runs().await.unwrap();
    let run = runs.last().expect("a pipeline run");
    let steps = engine.ledger().steps(Some(&run.run_id)).await.unwrap();
    (run.status.clone(), steps.iter().map(|s| s.status.clone()).collect())
}

/// Statuses of the steps' write runs, in step order.
async fn write_runs(engine: &Engine, pipeline: &str) -> Vec<String> {
    let query = format!(
        "SELECT r.status FROM sluice.steps s JOIN sluice.runs r ON r.run_id = s.step_run_id
         WHERE s.pipeline = '{pipeline}' ORDER BY s.step"
    );
    rows(engine, &query).await.into_iter().map(|r| r[0].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_table_is_published_together_and_later_steps_read_what_earlier_ones_staged() {
    let home = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(home.path(), 2).await);
    atomic_home(&engine, "at").await;
    let before = snapshots(&engine, "at").await;
    // d is held inside its write: a, b and c have staged, and nothing is visible yet.
    let mut stall = Stall::at("shard-write/lake.at.d");
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_pipeline("at").await })
    };
    stall.reached().await;
    assert_eq!(counts(&engine, "at").await, ["10", "0", "0", "0"], "nothing published before the end");
    assert_eq!(snapshots(&engine, "at").await, before);
    stall.release();
    let report = run.await.unwrap().unwrap();

    // b and c read a's staged 1,000 rows, d read b's and c's staged rows.
    assert_eq!(counts(&engine, "at").await, ["1000", "500", "500", "1"]);
    assert_eq!(value(&engine, "SELECT n FROM lake.at.d").await, "1000");
    assert!(report.steps.iter().all(|s| s.status == "succeeded"), "{:?}", report.steps);
    // Each step's snapshot is its table's current one, and carries its write run.
    for (name, snapshot) in TABLES.iter().zip(snapshots(&engine, "at").await) {
        let step = report.steps.iter().find(|s| s.step == *name).unwrap();
        assert_eq!(step.snapshot_id, snapshot, "step {name}");
        let t = table(&engine, "at", name).await;
        let summary = &t.metadata().current_snapshot().unwrap().summary().additional_properties;
        assert_eq!(summary.get("sluice.run-id"), step.step_run_id.as_ref(), "step {name}");
    }
    assert_eq!(statuses(&engine).await.0, "succeeded");
    assert_eq!(write_runs(&engine, "at").await, ["succeeded"; 4]);
    no_orphans(&engine, home.path(), "at").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_last_step_fails_every_table_stays_at_its_previous_snapshot() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    atomic_home(&engine, "af").await;
    let (before, files_before) = (snapshots(&engine, "af").await, files(home.path(), "af"));
    fail::cfg("shard-write/lake.af.d", "return").unwrap();
    let error = engine.run_pipeline("af").await.unwrap_err();
    fail::remove("shard-write/lake.af.d");
    assert!(matches!(&error, Error::PipelineRun { status: "failed", .. }), "{error}");

    assert_eq!(snapshots(&engine, "af").await, before, "every table at its previous snapshot");
    assert_eq!(counts(&engine, "af").await, ["10", "0", "0", "0"]);
    assert_eq!(files(home.path(), "af"), files_before, "nothing staged is left");
    assert_eq!(
        statuses(&engine).await,
        ("failed".into(), vec!["cancelled".into(), "cancelled".into(), "cancelled".into(), "failed".into()])
    );
    assert_eq!(write_runs(&engine, "af").await, ["cancelled", "cancelled", "cancelled", "failed"]);
    let steps = engine.ledger().steps(None).await.unwrap();
    let why = steps[0].error.as_deref().unwrap_or_default();
    assert!(why.contains("the pipeline is atomic, and step(s) d did not succeed"), "{why}");

    // The next run publishes everything once.
    engine.run_pipeline("af").await.unwrap();
    assert_eq!(counts(&engine, "af").await, ["1000", "500", "500", "1"]);
    no_orphans(&engine, home.path(), "af").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_between_the_metadata_writes_and_the_transaction_publishes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    atomic_home(&engine, "ab").await;
    let (before, files_before) = (snapshots(&engine, "ab").await, files(home.path(), "ab"));
    fail::cfg("before-publish/ab", "return").unwrap();
    let error = engine.run_pipeline("ab").await.unwrap_err();
    fail::remove("before-publish/ab");
    let message = error.to_string();
    assert!(message.contains("no table was published, and every run was rolled back"), "{message}");

    assert_eq!(snapshots(&engine, "ab").await, before);
    assert_eq!(files(home.path(), "ab"), files_before, "held metadata, manifests and data deleted");
    assert_eq!(statuses(&engine).await, ("failed".into(), vec!["failed".to_string(); 4]));
    assert_eq!(write_runs(&engine, "ab").await, ["failed"; 4]);
}

/// An engine on `home` whose clock is past every lease the dead process held; it recovers.
async fn recovering(home: &Path) -> Engine {
    let clock = TestClock::new();
    clock.advance(DEFAULT_RUN_LEASE + Duration::from_secs(1));
    let engine = Engine::builder().home(home).shards(2).clock(Arc::new(clock)).build().await.unwrap();
    engine.recover().await.unwrap();
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_the_transaction_is_settled_as_published() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    atomic_home(&engine, "aa").await;
    fail::cfg("after-publish/aa", "return").unwrap();
    let error = engine.run_pipeline("aa").await.unwrap_err();
    fail::remove("after-publish/aa");
    assert!(error.to_string().contains("recovery settles all of them alike"), "{error}");
    // The catalog took the transaction: every table is refreshed, the ledger not yet told.
    assert_eq!(counts(&engine, "aa").await, ["1000", "500", "500", "1"]);
    assert_eq!(statuses(&engine).await, ("publishing".into(), vec!["running".to_string(); 4]));
    assert_eq!(write_runs(&engine, "aa").await, ["committing"; 4]);

    let engine = recovering(home.path()).await;
    assert_eq!(statuses(&engine).await, ("succeeded".into(), vec!["succeeded".to_string(); 4]));
    assert_eq!(write_runs(&engine, "aa").await, ["succeeded"; 4]);
    let steps = engine.ledger().steps(None).await.unwrap();
    assert_eq!(steps.iter().map(|s| s.rows).collect::<Vec<_>>(), [1000, 500, 500, 1]);
    assert_eq!(counts(&engine, "aa").await, ["1000", "500", "500", "1"]);
    no_orphans(&engine, home.path(), "aa").await;
}

/// Runs pipeline `ak` in a `sluice` process that dies at `failpoint`.
fn run_dying_at(home: &Path, failpoint: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home)
        .args(["--shards", "2", "-c", "RUN PIPELINE ak"])
        .env("FAILPOINTS", format!("{failpoint}/ak=return(abort)"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the process died at {failpoint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_during_the_publish_leaves_all_tables_or_none_after_recovery() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    atomic_home(&engine, "ak").await;
    let (before, files_before) = (snapshots(&engine, "ak").await, files(home.path(), "ak"));

    // Killed with every table's metadata written, before the transaction: none.
    run_dying_at(home.path(), "before-publish");
    assert!(files(home.path(), "ak").len() > files_before.len(), "the held commits were written");
    let engine = recovering(home.path()).await;
    assert_eq!(snapshots(&engine, "ak").await, before);
    // Recovery fenced each run off (a metadata file with the fence, swapped in: the group's
    // transaction could no longer land), then deleted everything the runs had written.
    let new: Vec<PathBuf> = files(home.path(), "ak").difference(&files_before).cloned().collect();
    assert_eq!(new.len(), TABLES.len(), "one new file per table: {new:#?}");
    for file in &new {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains("sluice.fenced-run."), "{} is a fence", file.display());
    }
    no_orphans(&engine, home.path(), "ak").await;
    assert_eq!(statuses(&engine).await, ("failed".into(), vec!["failed".to_string(); 4]));
    drop(engine);

    // Killed right after the transaction: all.
    run_dying_at(home.path(), "after-publish");
    let engine = recovering(home.path()).await;
    assert_eq!(counts(&engine, "ak").await, ["1000", "500", "500", "1"]);
    assert_eq!(statuses(&engine).await, ("succeeded".into(), vec!["succeeded".to_string(); 4]));
    no_orphans(&engine, home.path(), "ak").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_that_lands_before_the_transaction_fails_the_whole_group() {
    let home = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(home.path(), 2).await);
    atomic_home(&engine, "ac").await;
    let before = snapshots(&engine, "ac").await;
    let mut stall = Stall::at("before-publish/ac");
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_pipeline("ac").await })
    };
    stall.reached().await;
    // Another writer commits to c while the group waits: c's swap cannot land, so none does.
    engine.sql("INSERT INTO lake.ac.c VALUES (0)").await.unwrap();
    stall.release();
    let error = run.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("`ac.c` changed while the run staged it"), "{error}");

    let after = snapshots(&engine, "ac").await;
    assert_eq!([after[0], after[1], after[3]], [before[0], before[1], before[3]], "a, b and d unchanged");
    assert_eq!(counts(&engine, "ac").await, ["10", "0", "1", "0"], "c holds only the other writer's row");
    assert_eq!(statuses(&engine).await, ("failed".into(), vec!["failed".to_string(); 4]));
    no_orphans(&engine, home.path(), "ac").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_in_two_catalogs_cannot_be_atomic() {
    let home = tempfile::tempdir().unwrap();
    let other = sluice::catalog::IcebergSqlConfig {
        uri: format!("sqlite:{}", home.path().join("other.db").display()),
        warehouse: home.path().join("other").display().to_string(),
        storage: Default::default(),
    };
    let engine = Engine::builder()
        .home(home.path())
        .catalog("other", sluice::catalog::CatalogConfig::IcebergSql(other))
        .build()
        .await
        .unwrap();
    engine
        .sql("CREATE SCHEMA lake.s; CREATE TABLE lake.s.t (id BIGINT); CREATE SCHEMA other.s; CREATE TABLE other.s.t (id BIGINT)")
        .await
        .unwrap();
    let error = engine
        .sql(
            "CREATE PIPELINE both_lakes WITH (atomic = true) AS BEGIN
               STEP here AS INSERT INTO lake.s.t SELECT 1; STEP there AS INSERT INTO other.s.t SELECT 2; END",
        )
        .await
        .unwrap_err()
        .to_string();
    let expected =
        "steps `here` and `there` write into different catalogs: one catalog's transaction cannot publish both";
    assert!(error.contains(expected), "{error}");
}

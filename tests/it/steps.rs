//! Pipelines with steps run as a graph: a diamond's middle steps overlap and its last waits for
//! both; a failing step retried under its run identity writes its rows once; without retries the
//! steps behind it are `upstream_failed` and never run (and `RETRY RUN` of the pipeline run then
//! runs only those, under the same ids); `CANCEL RUN` from another process stops
//! a long step and leaves no staged file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::Engine;
use sluice::error::Error;
use sluice::events::RunEvent;
use sluice::ledger::StepRecord;

use crate::support::{Stall, engine, files_under, value};

/// Schema `lake.<schema>` with a 1,000-row source and empty tables b, c, d.
async fn diamond_home(engine: &Engine, schema: &str, c_options: &str, options: &str) {
    let setup = format!(
        "CREATE SCHEMA lake.{schema};
         CREATE TABLE lake.{schema}.a (id BIGINT); CREATE TABLE lake.{schema}.b (id BIGINT);
         CREATE TABLE lake.{schema}.c (id BIGINT); CREATE TABLE lake.{schema}.d (n BIGINT);
         CREATE PIPELINE {schema} WITH ({options}) AS BEGIN
           STEP a AS INSERT OVERWRITE lake.{schema}.a SELECT value FROM generate_series(1, 1000);
           STEP b AS INSERT INTO lake.{schema}.b SELECT id FROM lake.{schema}.a WHERE id % 2 = 0;
           STEP c WITH ({c_options}) AS INSERT INTO lake.{schema}.c SELECT id FROM lake.{schema}.a WHERE id % 2 = 1;
           STEP d AS INSERT INTO lake.{schema}.d SELECT (SELECT count(*) FROM lake.{schema}.b) + (SELECT count(*) FROM lake.{schema}.c);
         END;"
    );
    engine.sql(&setup).await.unwrap();
}

fn step<'a>(steps: &'a [StepRecord], name: &str) -> &'a StepRecord {
    steps.iter().find(|s| s.step == name).unwrap_or_else(|| panic!("step {name} in {steps:?}"))
}

/// Waits (at most 60 s) until `ready` holds.
async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diamond_runs_its_middle_steps_together_and_its_last_after_both() {
    let home = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(home.path(), 2).await);
    diamond_home(&engine, "dm", "shards = 2", "max_parallel_steps = 4").await;
    // b is held inside its write until c has committed: they must overlap for this to end.
    let mut stall = Stall::at("shard-write/lake.dm.b");
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_pipeline("dm").await })
    };
    stall.reached().await;
    until("c to commit while b runs", async || {
        engine.ledger().steps(None).await.unwrap().iter().any(|s| s.step == "c" && s.status == "succeeded")
    })
    .await;
    stall.release();
    let report = run.await.unwrap().unwrap();
    let steps = &report.steps;
    assert!(steps.iter().all(|s| s.status == "succeeded" && s.attempt == 1), "{steps:?}");
    let (b, c, d) = (step(steps, "b"), step(steps, "c"), step(steps, "d"));
    assert!(
        b.started_at_ms < c.finished_at_ms && c.started_at_ms < b.finished_at_ms,
        "b and c overlapped: {b:?} {c:?}"
    );
    assert!(d.started_at_ms >= b.finished_at_ms.max(c.finished_at_ms), "d started after both: {d:?}");
    assert_eq!(value(&engine, "SELECT n FROM lake.dm.d").await, "1000");
    assert_eq!(report.rows, 1000 + 500 + 500 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_is_retried_under_its_run_identity_and_writes_once() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    // One shard and one batch: one failpoint hit per attempt; the first two attempts fail.
    diamond_home(&engine, "dr", "shards = 1, retries = 2, retry_backoff = '10ms'", "retries = 0").await;
    fail::cfg("shard-write/lake.dr.c", "2*return->off").unwrap();
    let report = engine.run_pipeline("dr").await.unwrap();
    fail::remove("shard-write/lake.dr.c");
    let c = step(&report.steps, "c");
    assert_eq!((c.status.as_str(), c.attempt), ("succeeded", 3), "{c:?}");
    // The three attempts were one run, opened again each time.
    let runs: Vec<_> = engine.ledger().runs(Some("dr/c")).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].attempt, c.step_run_id.as_deref()), (3, Some(runs[0].run_id.as_str())));
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.dr.c").await, "500", "each row once");
    // SHOW RUNS FOR the pipeline lists its steps' runs.
    let of_pipeline: Vec<String> =
        engine.ledger().runs(Some("dr")).await.unwrap().into_iter().map(|r| r.pipeline.unwrap()).collect();
    assert_eq!(of_pipeline, ["dr/a", "dr/b", "dr/c", "dr/d"]);
    assert_eq!(value(&engine, "SELECT count(DISTINCT id) FROM lake.dr.c").await, "500");
    assert_eq!(value(&engine, "SELECT n FROM lake.dr.d").await, "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retries_the_steps_behind_a_failed_one_never_run() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    diamond_home(&engine, "df", "shards = 1", "retries = 0").await;
    fail::cfg("shard-write/lake.df.c", "return").unwrap();
    let error = engine.run_pipeline("df").await.unwrap_err();
    fail::remove("shard-write/lake.df.c");
    let Error::PipelineRun { status, run_id, .. } = &error else { panic!("{error}") };
    assert_eq!(*status, "failed", "{error}");
    assert!(error.to_string().contains("c: failed") && error.to_string().contains("d: upstream_failed"), "{error}");
    let steps = engine.ledger().steps(Some(run_id)).await.unwrap();
    assert_eq!(step(&steps, "b").status, "succeeded", "the independent branch finished");
    let d = step(&steps, "d");
    assert_eq!((d.status.as_str(), d.started_at_ms, d.step_run_id.as_deref()), ("upstream_failed", None, None));
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.df.c").await, "0");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.df.d").await, "0");
    assert_eq!(
        value(&engine, &format!("SELECT status FROM sluice.pipeline_runs WHERE run_id = '{run_id}'")).await,
        "failed"
    );

    // RETRY RUN of the pipeline run: the same run, its succeeded steps kept, c written under its
    // own earlier run id, d run at last; every row once.
    let (a_snapshots, c_run) =
        (value(&engine, "SELECT count(*) FROM lake.df.\"a$snapshots\"").await, step(&steps, "c").step_run_id.clone());
    let retried = engine.sql(&format!("RETRY RUN '{run_id}'")).await.unwrap();
    assert_eq!(retried.iter().map(|b| b.num_rows()).sum::<usize>(), 4, "its steps");
    let steps = engine.ledger().steps(Some(run_id)).await.unwrap();
    assert!(steps.iter().all(|s| s.status == "succeeded"), "{steps:?}");
    assert_eq!(step(&steps, "c").step_run_id, c_run, "c under its earlier write run");
    assert_eq!(engine.ledger().run(c_run.as_deref().unwrap()).await.unwrap().unwrap().attempt, 2);
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.df.\"a$snapshots\"").await, a_snapshots, "a not run again");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.df.b").await, "500");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.df.c").await, "500");
    assert_eq!(value(&engine, "SELECT n FROM lake.df.d").await, "1000");
    let status = format!("SELECT status FROM sluice.pipeline_runs WHERE run_id = '{run_id}'");
    assert_eq!(value(&engine, &status).await, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_failure_stop_cancels_the_running_steps() {
    let home = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(home.path(), 2).await);
    diamond_home(&engine, "ds", "shards = 1", "on_failure = 'stop'").await;
    // b and c are both held inside their writes; then c goes on to fail before its commit
    // while b is still held; b is then cancelled, not left to commit.
    let (mut b, mut c) = (Stall::at("shard-write/lake.ds.b"), Stall::at("shard-write/lake.ds.c"));
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_pipeline("ds").await })
    };
    b.reached().await;
    c.reached().await;
    fail::cfg("before-commit/lake.ds.c", "return").unwrap();
    c.release();
    until("c to fail", async || {
        engine.ledger().steps(None).await.unwrap().iter().any(|s| s.step == "c" && s.status == "failed")
    })
    .await;
    b.release();
    let error = run.await.unwrap().unwrap_err();
    fail::remove("before-commit/lake.ds.c");
    let Error::PipelineRun { run_id, .. } = &error else { panic!("{error}") };
    let steps = engine.ledger().steps(Some(run_id)).await.unwrap();
    let statuses: Vec<(&str, &str)> = steps.iter().map(|s| (s.step.as_str(), s.status.as_str())).collect();
    assert_eq!(statuses, [("a", "succeeded"), ("b", "cancelled"), ("c", "failed"), ("d", "upstream_failed")]);
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.ds.b").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_run_from_another_process_stops_a_long_step() {
    let home = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(home.path(), 2).await);
    engine
        .sql(
            "CREATE SCHEMA lake.cx; CREATE TABLE lake.cx.quick (id BIGINT); CREATE TABLE lake.cx.long (id BIGINT);
             CREATE PIPELINE long_job AS BEGIN
               INSERT INTO lake.cx.quick VALUES (1);
               STEP long DEPENDS ON (quick) AS INSERT INTO lake.cx.long SELECT value FROM generate_series(1, 2000000000);
             END;",
        )
        .await
        .unwrap();
    let data = home.path().join("warehouse/cx/long/data");
    let run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_pipeline("long_job").await })
    };
    until("the long step to stage files", async || !files_under(&data).is_empty()).await;
    let run_id = engine.ledger().pipeline_runs().await.unwrap().pop().unwrap().run_id;
    let cancel = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home.path())
        .args(["-c", &format!("CANCEL RUN '{run_id}'")])
        .output()
        .unwrap();
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    let asked = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stopped").unwrap().unwrap_err();
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped within seconds: {:?}", asked.elapsed());
    let Error::PipelineRun { status, .. } = &error else { panic!("{error}") };
    assert_eq!(*status, "cancelled");
    let steps = engine.ledger().steps(Some(&run_id)).await.unwrap();
    assert_eq!(
        (step(&steps, "quick").status.as_str(), step(&steps, "long").status.as_str()),
        ("succeeded", "cancelled")
    );
    assert!(files_under(&data).is_empty(), "no staged file is left");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.cx.long").await, "0");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.cx.quick").await, "1", "a committed step stays");
    let status = value(&engine, &format!("SELECT status FROM sluice.pipeline_runs WHERE run_id = '{run_id}'")).await;
    assert_eq!(status, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_started_run_has_its_id_at_once_streams_its_events_and_can_be_cancelled() {
    let home = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(home.path(), 2).await);
    diamond_home(&engine, "dh", "shards = 2", "max_parallel_steps = 2").await;
    let mut run = engine.start_pipeline("dh");
    let run_id = run.run_id.clone();
    let mut step_events = Vec::new();
    while step_events.len() < 8 {
        match run.events.recv().await.unwrap() {
            RunEvent::Step { run_id: of, step, status, .. } if of == run_id => step_events.push((step, status)),
            _ => {}
        }
    }
    let report = run.finish().await.unwrap();
    assert_eq!(report.run_id, run_id, "the id the handle had from the start");
    assert_eq!(report.steps.len(), 4);
    for name in ["a", "b", "c", "d"] {
        let seen: Vec<&str> =
            step_events.iter().filter(|(s, _)| s == name).map(|(_, status)| status.as_str()).collect();
        assert_eq!(seen, ["running", "succeeded"], "{name}");
    }

    engine
        .sql(
            "CREATE TABLE lake.dh.long (id BIGINT);
             CREATE PIPELINE long_dh AS BEGIN INSERT INTO lake.dh.long SELECT value FROM generate_series(1, 2000000000); END;",
        )
        .await
        .unwrap();
    let data = home.path().join("warehouse/dh/long/data");
    let run = engine.start_pipeline("long_dh");
    until("the long step to stage files", async || !files_under(&data).is_empty()).await;
    run.cancel();
    let error = run.finish().await.unwrap_err();
    assert!(matches!(&error, Error::PipelineRun { status: "cancelled", .. }), "{error}");
    assert!(files_under(&data).is_empty(), "no staged file is left");
}

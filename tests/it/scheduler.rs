//! The scheduler on a test clock (nothing sleeps): a `*/5 * * * *` pipeline runs 12 times in a
//! simulated hour; after a simulated 3-hour outage `catchup = 'last'` runs once and `'all'` 36
//! times; `'none'` skips the late one; two schedulers on one home over a simulated day never run
//! one due time twice; a paused pipeline does not run; a pipeline failing every time is retried
//! under one run id and ends `dead`, and `RETRY RUN` of the dead run then writes its rows once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::Engine;
use sluice::clock::TestClock;
use sluice::scheduler::Scheduler;

use crate::support::value;

const MINUTE: Duration = Duration::from_secs(60);

/// An engine on `home` whose time is `clock`, with table `lake.s.t` and pipeline `p` on
/// `schedule` with `options`.
async fn scheduled(home: &Path, clock: &TestClock, schedule: &str, options: &str) -> Arc<Engine> {
    scheduled_into(home, clock, "s", schedule, options).await
}

/// As [`scheduled`], into `lake.<schema>.t` (a failpoint on it trips no other test).
async fn scheduled_into(home: &Path, clock: &TestClock, schema: &str, schedule: &str, options: &str) -> Arc<Engine> {
    let engine = Engine::builder().home(home).shards(1).clock(Arc::new(clock.clone())).build().await.unwrap();
    engine
        .sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS lake.{schema}; CREATE TABLE IF NOT EXISTS lake.{schema}.t (id BIGINT);
             CREATE PIPELINE IF NOT EXISTS p WITH ({options}) SCHEDULE '{schedule}' AS INSERT INTO lake.{schema}.t SELECT 1"
        ))
        .await
        .unwrap();
    Arc::new(engine)
}

/// Moves `clock` by `step`, `times` times, ticking `scheduler` after each; returns how many
/// runs the ticks made.
async fn tick_through(clock: &TestClock, scheduler: &Scheduler, step: Duration, times: u32) -> usize {
    let mut ran = 0;
    for _ in 0..times {
        clock.advance(step);
        ran += scheduler.tick().await.unwrap().iter().filter(|r| r.status == "succeeded").count();
    }
    ran
}

/// A test clock half-way between two five-minute marks: the real time that passes while a test
/// runs (the clock is the system's plus an offset) cannot carry a tick over the next mark.
fn clock_between_marks() -> TestClock {
    use sluice::clock::Clock;
    let clock = TestClock::new();
    let into_window = clock.now_ms().rem_euclid(300_000);
    clock.advance(Duration::from_millis((450_000 - into_window).rem_euclid(300_000) as u64));
    clock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_five_minutes_runs_twelve_times_in_an_hour() {
    let home = tempfile::tempdir().unwrap();
    let clock = clock_between_marks();
    let engine = scheduled(home.path(), &clock, "*/5 * * * *", "shards = 1").await;
    let scheduler = Scheduler::new(engine.clone(), 4);
    assert_eq!(tick_through(&clock, &scheduler, 5 * MINUTE, 12).await, 12);
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.s.t").await, "12");
    let due = engine.ledger().scheduled_runs(Some("p")).await.unwrap();
    assert_eq!(due.len(), 12);
    assert!(due.windows(2).all(|w| w[1].due_ms - w[0].due_ms == 300_000), "five minutes apart");
    assert!(due.iter().all(|d| d.due_ms % 300_000 == 0), "on the cron's minutes");
    assert_eq!(value(&engine, "SELECT last_status FROM sluice.pipelines WHERE name = 'p'").await, "succeeded");
}

/// Ticks pipeline `p` with `options` once, then once after a 3-hour outage; returns how many
/// runs the second tick made, and the status of each due time it handled.
async fn after_an_outage(options: &str) -> (usize, Vec<String>) {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let engine = scheduled(home.path(), &clock, "*/5 * * * *", options).await;
    let scheduler = Scheduler::new(engine.clone(), 4);
    // The first due time (up to 5 minutes old: with catchup = 'none', possibly skipped as late).
    clock.advance(5 * MINUTE);
    let first = scheduler.tick().await.unwrap();
    assert_eq!(first.len(), 1);
    // Back 3 hours and 2.5 minutes after that due time: 36 due times missed, the latest 150 s
    // late (the clock follows real time, so the wait is set from the due time, not from now).
    let back_at = first[0].due_ms + (180 * MINUTE + Duration::from_secs(150)).as_millis() as i64;
    clock.advance(Duration::from_millis((back_at - engine.clock().now_ms()) as u64));
    let ran = scheduler.tick().await.unwrap();
    (ran.iter().filter(|r| r.status == "succeeded").count(), ran.iter().map(|r| r.status.clone()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_outage_catchup_decides_what_runs_late() {
    assert_eq!(after_an_outage("catchup = 'last'").await.0, 1, "the latest only");
    assert_eq!(after_an_outage("catchup = 'all'").await.0, 36, "every one of 3 hours");
    assert_eq!(after_an_outage("catchup = 'all', max_catchup_runs = 10").await.0, 10, "bounded");
    let (ran, statuses) = after_an_outage("catchup = 'none'").await;
    assert_eq!((ran, statuses), (0, vec!["skipped".to_string()]), "late: skipped, not owed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_on_one_home_never_run_a_due_time_twice() {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let first = scheduled(home.path(), &clock, "*/30 * * * *", "shards = 1").await;
    let second = scheduled(home.path(), &clock, "*/30 * * * *", "shards = 1").await;
    let (a, b) = (Scheduler::new(first.clone(), 4), Scheduler::new(second, 4));
    let mut ran = 0;
    // A simulated day, ticking both at once every 10 minutes.
    for _ in 0..144 {
        clock.advance(10 * MINUTE);
        let (x, y) = tokio::join!(a.tick(), b.tick());
        ran += x.unwrap().len() + y.unwrap().len();
    }
    assert_eq!(ran, 48, "each half hour of the day once");
    let due = first.ledger().scheduled_runs(Some("p")).await.unwrap();
    assert_eq!(due.len(), 48);
    assert!(due.iter().all(|d| d.status == "succeeded"), "{due:?}");
    assert_eq!(value(&first, "SELECT count(*) FROM lake.s.t").await, "48", "every due time wrote once");
    assert_eq!(value(&first, "SELECT count(*) FROM sluice.runs WHERE pipeline = 'p'").await, "48");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_pipeline_does_not_run_and_resumes_from_now() {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let engine = scheduled(home.path(), &clock, "@hourly", "catchup = 'all'").await;
    let scheduler = Scheduler::new(engine.clone(), 4);
    engine.sql("ALTER PIPELINE p PAUSE").await.unwrap();
    assert_eq!(tick_through(&clock, &scheduler, 60 * MINUTE, 3).await, 0);
    engine.sql("ALTER PIPELINE p RESUME").await.unwrap();
    assert_eq!(tick_through(&clock, &scheduler, 60 * MINUTE, 2).await, 2, "the paused hours are not owed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_failing_every_time_is_retried_under_its_id_then_dead_and_retry_run_lands_it_once() {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let engine = scheduled_into(home.path(), &clock, "dead", "@hourly", "retries = 2, retry_backoff = '1s'").await;
    let scheduler = Scheduler::new(engine.clone(), 4);
    fail::cfg("shard-write/lake.dead.t", "return").unwrap();
    clock.advance(60 * MINUTE);
    let first = scheduler.tick().await.unwrap();
    assert_eq!(first.iter().map(|r| (r.status.as_str(), r.attempt)).collect::<Vec<_>>(), [("retrying", 1)]);
    // Nothing is owed before the backoff (1 s, give or take a fifth) has passed.
    assert!(scheduler.tick().await.unwrap().is_empty());
    clock.advance(Duration::from_secs(2));
    let second = scheduler.tick().await.unwrap();
    assert_eq!(second.iter().map(|r| (r.status.as_str(), r.attempt)).collect::<Vec<_>>(), [("retrying", 2)]);
    clock.advance(Duration::from_secs(3));
    let third = scheduler.tick().await.unwrap();
    fail::remove("shard-write/lake.dead.t");
    assert_eq!(third.iter().map(|r| (r.status.as_str(), r.attempt)).collect::<Vec<_>>(), [("dead", 3)]);
    let run_id = first[0].run_id.clone().unwrap();
    assert_eq!(second[0].run_id.as_ref(), Some(&run_id), "one run identity");
    assert_eq!(third[0].run_id.as_ref(), Some(&run_id), "one run identity");
    let run = async || engine.ledger().run(&run_id).await.unwrap().unwrap();
    assert_eq!((run().await.status.as_str(), run().await.attempt), ("dead", 3));
    let listed = engine.sql("SHOW RUNS FOR p WHERE status = 'dead'").await.unwrap();
    assert_eq!(listed.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "on the dead-letter list");
    // The dead run blocks no later due time, and RETRY RUN lands it once.
    engine.sql(&format!("RETRY RUN '{run_id}'")).await.unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.dead.t").await, "1");
    assert_eq!((run().await.status.as_str(), run().await.attempt), ("succeeded", 4));
    clock.advance(60 * MINUTE);
    assert_eq!(scheduler.tick().await.unwrap().iter().filter(|r| r.status == "succeeded").count(), 1);
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.dead.t").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn due_runs_beyond_max_concurrent_runs_wait_queued() {
    let home = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let engine =
        Arc::new(Engine::builder().home(home.path()).shards(1).clock(Arc::new(clock.clone())).build().await.unwrap());
    engine
        .sql(
            "CREATE SCHEMA lake.q; CREATE TABLE lake.q.a (id BIGINT); CREATE TABLE lake.q.b (id BIGINT);
             CREATE PIPELINE a SCHEDULE '@hourly' AS INSERT INTO lake.q.a SELECT 1;
             CREATE PIPELINE b SCHEDULE '@hourly' AS INSERT INTO lake.q.b SELECT 1;",
        )
        .await
        .unwrap();
    let scheduler = Scheduler::new(engine.clone(), 1);
    // a takes the one run slot (its claim is made first) and is held inside its write.
    let mut stall = crate::support::Stall::at("shard-write/lake.q.a");
    clock.advance(60 * MINUTE);
    let tick = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.tick().await }
    });
    stall.reached().await;
    let due = engine.ledger().scheduled_runs(None).await.unwrap();
    let statuses: Vec<(&str, &str)> = due.iter().map(|d| (d.pipeline.as_str(), d.status.as_str())).collect();
    assert_eq!(statuses, [("a", "running"), ("b", "queued")]);
    assert_eq!(engine.ledger().queued_schedules().await.unwrap(), 1);
    let visible = "SELECT pipeline, status FROM sluice.schedules ORDER BY pipeline";
    assert_eq!(crate::support::rows(&engine, visible).await, [["a", "running"], ["b", "queued"]]);
    stall.release();
    let ran = tick.await.unwrap().unwrap();
    assert!(ran.iter().all(|r| r.status == "succeeded") && ran.len() == 2, "{ran:?}");
}

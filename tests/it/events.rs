//! Runs publish their lifecycle on the engine's event channel, and the ledger records it.

use std::collections::BTreeSet;

use sluice::events::RunEvent;

use crate::support::{engine, rows};

fn drain(receiver: &mut tokio::sync::broadcast::Receiver<RunEvent>) -> Vec<RunEvent> {
    std::iter::from_fn(|| receiver.try_recv().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_publish_opened_shards_committed_or_failed_and_closed() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine
        .sql(
            "CREATE SCHEMA lake.e; CREATE TABLE lake.e.t (id BIGINT);
             CREATE PIPELINE p WITH (shards = 3) AS INSERT INTO lake.e.t SELECT value FROM generate_series(1, 100000);",
        )
        .await
        .unwrap();
    let mut events = engine.subscribe();

    let report = engine.run_pipeline("p").await.unwrap();
    let seen = drain(&mut events);
    let kinds: Vec<&str> = seen.iter().map(RunEvent::kind).collect();
    assert_eq!(kinds, ["opened", "shard_finished", "shard_finished", "shard_finished", "committed", "closed"]);
    assert!(seen.iter().all(|e| e.run_id() == report.run_id));
    let mut shards = BTreeSet::new();
    let mut shard_rows = 0;
    for event in &seen {
        match event {
            RunEvent::Opened { pipeline, target, shards: n, .. } => {
                assert_eq!((pipeline.as_deref(), target.as_str(), *n), (Some("p"), "lake.e.t", 3));
            }
            RunEvent::ShardFinished { shard, rows, error, .. } => {
                assert!(error.is_none());
                shards.insert(*shard);
                shard_rows += rows;
            }
            RunEvent::Committed { snapshot_id, rows, .. } => {
                assert_eq!((*snapshot_id, *rows), (report.snapshot_id, 100_000))
            }
            RunEvent::Closed { status, .. } => assert_eq!(status, "succeeded"),
            RunEvent::Failed { .. } | RunEvent::Step { .. } => panic!("{event:?}"),
        }
    }
    assert_eq!((shards, shard_rows), (BTreeSet::from([0, 1, 2]), 100_000));

    fail::cfg("shard-write/lake.e.t", "return").unwrap();
    engine.run_pipeline("p").await.unwrap_err();
    fail::remove("shard-write/lake.e.t");
    let seen = drain(&mut events);
    let kinds: Vec<&str> = seen.iter().map(RunEvent::kind).collect();
    assert_eq!(kinds.first(), Some(&"opened"));
    assert_eq!(&kinds[kinds.len() - 2..], ["failed", "closed"]);
    assert!(seen.iter().any(|e| matches!(e, RunEvent::ShardFinished { error: Some(_), .. })), "{seen:?}");
    assert!(matches!(seen.last(), Some(RunEvent::Closed { status, .. }) if status == "failed"));

    // The ledger has the same story, queryable.
    let recorded = rows(
        &engine,
        "SELECT kind, count(*) FROM sluice.events WHERE kind <> 'shard_finished' GROUP BY kind ORDER BY kind",
    )
    .await;
    assert_eq!(recorded, [["closed", "2"], ["committed", "1"], ["failed", "1"], ["opened", "2"]]);
    let detail = rows(&engine, "SELECT detail FROM sluice.events WHERE kind = 'committed'").await;
    assert!(detail[0][0].contains(&format!("\"run_id\":\"{}\"", report.run_id)), "{detail:?}");
}

//! Delta commits: what each version holds (`txn`, `commitInfo`), and exactly-once when a run's
//! commit landed but the process died before the ledger heard of it.

use std::path::Path;

use deltalake::DeltaTableBuilder;
use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sluice::formats::delta::{DeltaCatalog, DeltaTableWriter};
use sluice::ledger::RunStatus;
use sluice::runtime::{RunContext, ShardSink, TableFormat, TableWriter};
use sluice::table::{RunIdentity, TableName, WriteMode};

use crate::support::{files_under, rows, value};

async fn delta_engine(home: &Path) -> Engine {
    let delta = DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() };
    Engine::builder().home(home).catalog("delta", CatalogConfig::Delta(delta)).shards(2).build().await.unwrap()
}

/// The actions of one Delta log version, read straight from its JSON file.
fn log_entry(table_dir: &Path, version: u64) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(table_dir.join(format!("_delta_log/{version:020}.json"))).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_run_is_one_version_with_its_txn_and_run_id() {
    let home = tempfile::tempdir().unwrap();
    let engine = delta_engine(home.path()).await;
    engine
        .sql(
            "CREATE SCHEMA delta.s; CREATE TABLE delta.s.t (id BIGINT);
             CREATE PIPELINE fill WITH (shards = 4) AS INSERT INTO delta.s.t SELECT value FROM generate_series(1, 50000);",
        )
        .await
        .unwrap();
    for sequence in 1..=2u64 {
        let report = engine.run_pipeline("fill").await.unwrap();
        assert_eq!(report.snapshot_id, Some(sequence as i64));
        let actions = log_entry(&home.path().join("delta/s/t"), sequence);
        let adds = actions.iter().filter(|a| a.get("add").is_some()).count();
        assert_eq!(adds as u64, report.files, "all of the run's files in its one version");
        let txn = actions.iter().find_map(|a| a.get("txn")).expect("a txn action");
        assert_eq!((txn["appId"].as_str(), txn["version"].as_u64()), (Some("sluice/fill"), Some(sequence)));
        let info = actions.iter().find_map(|a| a.get("commitInfo")).expect("commitInfo");
        assert_eq!(info["sluice.run-id"], report.run_id.as_str());
        assert_eq!(info["sluice.pipeline"], "fill");
        for add in actions.iter().filter_map(|a| a.get("add")) {
            let stats: serde_json::Value = serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
            assert!(stats["numRecords"].as_u64().unwrap() > 0 && stats["minValues"]["id"].is_number(), "{stats}");
        }
    }
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.s.t").await, "100000");
    // `t$history`: every commit, newest first, each run's tagged with its run id.
    let history = rows(&engine, "SELECT version, operation, info IS NOT NULL FROM delta.s.\"t$history\"").await;
    assert_eq!(history.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["2", "1", "0"]);
    assert_eq!(history[2][1], "CREATE TABLE");
    let tagged = value(&engine, "SELECT count(*) FROM delta.s.\"t$history\" WHERE info LIKE '%sluice.run-id%'").await;
    assert_eq!(tagged, "2");
    let error = engine.sql("SELECT * FROM delta.s.\"t$files\"").await.unwrap_err().to_string();
    assert!(error.contains("(Delta) has no `$files` metadata table; it has $history"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_commit_leaves_the_run_committing_with_its_version_landed() {
    let home = tempfile::tempdir().unwrap();
    let engine = delta_engine(home.path()).await;
    engine
        .sql(
            "CREATE SCHEMA delta.s; CREATE TABLE delta.s.crash (id BIGINT);
             CREATE PIPELINE crash AS INSERT INTO delta.s.crash SELECT value FROM generate_series(1, 1000);",
        )
        .await
        .unwrap();
    let failpoint = "after-commit/delta.s.crash";
    fail::cfg(failpoint, "return").unwrap();
    let error = engine.run_pipeline("crash").await.unwrap_err().to_string();
    fail::remove(failpoint);
    assert!(error.contains(failpoint) && !error.contains("rolled back"), "{error}");
    let run = engine.ledger().runs(Some("crash")).await.unwrap().pop().unwrap();
    assert_eq!(run.status, RunStatus::Committing, "the ledger never heard of the commit");
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.s.crash").await, "1000", "the version landed");
    // Its files are part of the table now and must not have been deleted.
    let staged = engine.ledger().staged_files(&run.run_id).await.unwrap();
    assert!(!staged.is_empty());
    let on_disk = files_under(&home.path().join("delta/s/crash"));
    for location in &staged {
        let name = location.rsplit('/').next().unwrap();
        assert!(on_disk.iter().any(|f| f.ends_with(name)), "{name} is missing");
    }
}

/// A retry of a run whose commit landed, from a process that knows only what the ledger knew
/// (the run, its pipeline and sequence, the table version it started from), adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retrying_a_commit_that_already_landed_adds_no_version() {
    let home = tempfile::tempdir().unwrap();
    let engine = delta_engine(home.path()).await;
    engine.sql("CREATE SCHEMA delta.r; CREATE TABLE delta.r.t (id BIGINT NOT NULL)").await.unwrap();
    let name = TableName::new("delta", "r", "t");
    let table_url = deltalake::ensure_table_uri(home.path().join("delta/r/t").display().to_string()).unwrap();
    let catalog = engine.catalog("delta").unwrap().as_any().downcast_ref::<DeltaCatalog>().unwrap();

    // A pipeline run (found again through its txn) and an ad-hoc run (found in the history).
    for (round, pipeline) in [(1u64, Some("p".to_string())), (2, None)] {
        let writer = std::sync::Arc::new(catalog.table_writer(&name).await.unwrap());
        let base = round - 1;
        let run = RunIdentity {
            run_id: uuid::Uuid::now_v7().to_string(),
            pipeline,
            sequence: 1,
            base: Some(base as i64),
            attempt: 1,
        };
        let input = engine.session().sql("SELECT value AS id FROM generate_series(1, 1000)").await.unwrap();
        let stream = input.execute_stream().await.unwrap();
        let context = RunContext::new(run.clone(), name.to_string(), 1, engine.ledger().clone());
        let staged = ShardSink::new(&context, &name, writer.clone()).write_shard(0, stream).await.unwrap();
        let version = writer.commit(staged.clone(), &context, WriteMode::Append).await.unwrap();
        assert_eq!(version as u64, base + 1);

        // The retry: a new writer on the table as of the run's start, the same files, the same run.
        let as_of_start =
            DeltaTableBuilder::from_url(table_url.clone()).unwrap().with_version(base).load().await.unwrap();
        let retry = DeltaTableWriter::new(as_of_start).unwrap();
        assert_eq!(retry.find_run(&run).await.unwrap(), Some(version));
        assert_eq!(
            retry.commit(staged, &context, WriteMode::Append).await.unwrap(),
            version,
            "the same version, not a new one"
        );
        let latest = deltalake::open_table(table_url.clone()).await.unwrap();
        assert_eq!(latest.version(), Some(base + 1), "no second version");
        let counts = rows(&engine, "SELECT count(*), count(DISTINCT id) FROM delta.r.t").await;
        let total = (1000 * round).to_string();
        assert_eq!(counts, [[total.clone(), "1000".to_string()]], "no duplicate rows beyond this round's");
    }
}

/// The writer loads tables without their file lists, so delta-rs's commit cannot checkpoint;
/// the writer does, every `delta.checkpointInterval` versions, and readers start from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_write_a_checkpoint_every_checkpoint_interval_versions() {
    let home = tempfile::tempdir().unwrap();
    let engine = delta_engine(home.path()).await;
    engine.sql("CREATE SCHEMA delta.c; CREATE TABLE delta.c.t (id BIGINT)").await.unwrap();
    let table_dir = home.path().join("delta/c/t");
    let table_url = deltalake::ensure_table_uri(table_dir.display().to_string()).unwrap();
    let table = deltalake::open_table(table_url.clone()).await.unwrap();
    let interval = [("delta.checkpointInterval".to_string(), "3".to_string())].into();
    table.set_tbl_properties().with_properties(interval).await.unwrap(); // version 1
    let checkpoints = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(table_dir.join("_delta_log"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".checkpoint"))
            .collect();
        names.sort();
        names
    };
    for rows in 2..=6 {
        engine.sql(&format!("INSERT INTO delta.c.t SELECT value FROM generate_series(1, {rows})")).await.unwrap();
    }
    assert_eq!(
        checkpoints(),
        ["00000000000000000002.checkpoint.parquet", "00000000000000000005.checkpoint.parquet"],
        "versions 2 and 5 close an interval of 3"
    );
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(table_dir.join("_delta_log/_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 5);
    // delta-rs starts from the checkpoint and sees every file; so does a query.
    let table = deltalake::open_table(table_url).await.unwrap();
    assert_eq!(table.version(), Some(6), "versions 2 to 6 are the five inserts");
    assert_eq!(table.snapshot().unwrap().log_data().num_files(), 5);
    assert_eq!(value(&engine, "SELECT sum(id) FROM delta.c.t").await, (3 + 6 + 10 + 15 + 21).to_string());
}

/// A file abandoned mid-upload (its shard failed or was cancelled) is aborted before the
/// rollback: neither the file nor any uploaded part of it is left, so nothing can appear after
/// the rollback deleted what the ledger lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_file_leaves_nothing_behind() {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    let home = tempfile::tempdir().unwrap();
    let engine = delta_engine(home.path()).await;
    engine.sql("CREATE SCHEMA delta.a; CREATE TABLE delta.a.t (id BIGINT NOT NULL)").await.unwrap();
    let catalog = engine.catalog("delta").unwrap().as_any().downcast_ref::<DeltaCatalog>().unwrap();
    let writer = catalog.table_writer(&TableName::new("delta", "a", "t")).await.unwrap();
    let location = writer.file_location(&Vec::new(), "aborted.parquet");
    let mut file = writer.open_file(&Vec::new(), &location).await.unwrap();
    // Three row groups of scrambled (incompressible) values, about 24 MiB: past the 10 MiB
    // upload buffer, so the multipart upload is under way when the file is abandoned.
    for group in 0..3i64 {
        let ids = (0..1_048_576i64).map(|i| (group << 20 | i).wrapping_mul(6_364_136_223_846_793_005));
        let batch =
            RecordBatch::try_new(writer.schema().clone(), vec![std::sync::Arc::new(Int64Array::from_iter_values(ids))]);
        file.write(batch.unwrap()).await.unwrap();
    }
    assert!(file.written_bytes() > 16 << 20, "{} bytes", file.written_bytes());
    file.abort().await;
    let left: Vec<_> = files_under(&home.path().join("delta/a/t"))
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("_delta_log"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

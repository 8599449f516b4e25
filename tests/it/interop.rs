//! Tables written by Sluice, read by readers nobody here wrote: pyiceberg (through the same SQLite
//! catalog) and DuckDB's `iceberg_scan` for Iceberg; delta-rs (Python) and DuckDB's `delta_scan`
//! for Delta. Values are compared, not just counts.
//!
//! The readers live in a Python venv (`tests/interop/requirements.txt`), which `scripts/test.sh`
//! creates; `SLUICE_PYTHON` points at its interpreter (default: `.venv/bin/python`).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use crate::support::{cells, engine, python, value};

/// Sluice's own view of the table, every value as Arrow displays it, as the JSON the checker reads.
async fn expected_json(engine: &sluice::Engine, query: &str) -> serde_json::Value {
    let batches = engine.sql(query).await.unwrap();
    let columns: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    serde_json::json!({ "columns": columns, "rows": cells(&batches) })
}

/// Runs tests/interop/check_table.py with `args`; returns its output once every reader agreed.
fn check_table(args: &[&OsStr]) -> String {
    let output = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/check_table.py"))
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the readers disagree with Sluice:\n{stdout}\n{stderr}");
    stdout
}

/// Asks the checker whether every reader sees exactly what Sluice sees in `table` now: all
/// rows, and the count of `flag = true` (a partition column in the partitioned tables, so the
/// readers prune with the partition metadata). `reader_args` name the table for the checker.
/// Returns the checker's report, after checking that it read `rows` rows.
pub(crate) async fn readers_agree(engine: &sluice::Engine, table: &str, reader_args: &[&OsStr], rows: usize) -> String {
    let mut expected = expected_json(engine, &format!("SELECT * FROM {table}")).await;
    assert_eq!(expected["rows"].as_array().unwrap().len(), rows, "Sluice itself reads {table}");
    let flagged: u64 = value(engine, &format!("SELECT count(*) FROM {table} WHERE flag = true")).await.parse().unwrap();
    expected["filters"] = serde_json::json!([{ "column": "flag", "value": true, "count": flagged }]);
    let path = engine.home().join(format!("{table}.json"));
    std::fs::write(&path, serde_json::to_vec(&expected).unwrap()).unwrap();
    let mut args = reader_args.to_vec();
    args.push(path.as_os_str());
    let report = check_table(&args);
    let iceberg = reader_args[0].to_string_lossy().starts_with("iceberg");
    let readers: &[&str] = if iceberg { &["pyiceberg", "duckdb"] } else { &["delta-rs", "duckdb"] };
    for reader in readers {
        assert!(report.contains(&format!("{reader}: {rows} rows x 8 columns match")), "{report}");
        assert!(report.contains(&format!("{reader}: {flagged} rows where flag = True, as expected")), "{report}");
    }
    report
}

/// An engine on `home` with `shards` and a Delta catalog `delta` rooted in `home/delta-root`.
async fn delta_engine(home: &std::path::Path, shards: usize) -> (sluice::Engine, PathBuf) {
    let root = home.join("delta-root");
    let delta = sluice::catalog::DeltaConfig { root: root.display().to_string(), ..Default::default() };
    let engine = sluice::Engine::builder()
        .home(home)
        .catalog("delta", sluice::catalog::CatalogConfig::Delta(delta))
        .shards(shards)
        .build()
        .await
        .unwrap();
    (engine, root)
}

/// Columns of every common type, NULLs included, generated for rows 1..=n.
pub(crate) fn typed_rows(n: usize) -> String {
    format!(
        "SELECT value,
                CAST(value % 1000 AS INT),
                CASE WHEN value % 11 = 0 THEN NULL ELSE 'event ' || value END,
                value / 8.0,
                CAST(value % 10000 AS DECIMAL(10, 2)) / 100,
                value % 2 = 0,
                CAST(to_timestamp_seconds(1767225600 + value * 3600) AS DATE),
                to_timestamp_seconds(1767225600 + value * 61)
         FROM generate_series(1, {n})"
    )
}

pub(crate) const TYPED_COLUMNS: &str =
    "id BIGINT NOT NULL, small INT, name VARCHAR, score DOUBLE, price DECIMAL(10, 2),
                             flag BOOLEAN, day DATE, at TIMESTAMP";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_and_duckdb_read_exactly_what_sluice_wrote() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 4).await;
    engine
        .sql(&format!(
            "CREATE SCHEMA lake.interop;
             CREATE TABLE lake.interop.events ({TYPED_COLUMNS});
             CREATE PIPELINE events WITH (shards = 3) AS INSERT INTO lake.interop.events {rows};
             CREATE TABLE lake.interop.partitioned ({TYPED_COLUMNS})
               PARTITIONED BY (flag, day(at), bucket(4, id), truncate(3, name));
             CREATE PIPELINE partitioned WITH (shards = 3) AS INSERT INTO lake.interop.partitioned {rows};
             CREATE PIPELINE fix WITH (shards = 2, mode = 'overwrite_partitions')
               AS INSERT INTO lake.interop.partitioned {fix};",
            rows = typed_rows(30_000),
            fix = typed_rows(2_000),
        ))
        .await
        .unwrap();
    let home_dir = engine.home().as_os_str().to_owned();
    let iceberg = |table: &'static str| -> Vec<&OsStr> {
        vec!["iceberg".as_ref(), home_dir.as_os_str(), "interop".as_ref(), table.as_ref()]
    };

    let first = engine.run_pipeline("events").await.unwrap();
    let second = engine.run_pipeline("events").await.unwrap();
    assert_eq!(first.rows + second.rows, 60_000);
    readers_agree(&engine, "lake.interop.events", &iceberg("events"), 60_000).await;

    let report = engine.run_pipeline("partitioned").await.unwrap();
    assert!(report.files > 3, "{} files for a table partitioned 4 ways", report.files);
    readers_agree(&engine, "lake.interop.partitioned", &iceberg("partitioned"), 30_000).await;

    // The hand-built overwrite snapshots read the same everywhere: dynamic partition overwrite
    // (the partitions of the first 2,000 rows replaced by 2,000 rows) ...
    engine.run_pipeline("fix").await.unwrap();
    let kept: usize = value(&engine, "SELECT count(*) FROM lake.interop.partitioned").await.parse().unwrap();
    assert!(kept > 2_000 && kept < 30_000, "{kept} rows after replacing some partitions");
    readers_agree(&engine, "lake.interop.partitioned", &iceberg("partitioned"), kept).await;
    // ... and INSERT OVERWRITE of the whole table.
    engine.sql(&format!("INSERT OVERWRITE lake.interop.events {}", typed_rows(1_000))).await.unwrap();
    readers_agree(&engine, "lake.interop.events", &iceberg("events"), 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_and_duckdb_read_the_tables_an_atomic_pipeline_published_together() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine
        .sql(&format!(
            "CREATE SCHEMA lake.together;
             CREATE TABLE lake.together.events ({TYPED_COLUMNS});
             CREATE TABLE lake.together.thirds ({TYPED_COLUMNS}) PARTITIONED BY (flag);
             CREATE PIPELINE together WITH (atomic = true) AS BEGIN
               STEP events AS INSERT INTO lake.together.events {rows};
               STEP thirds AS INSERT INTO lake.together.thirds SELECT * FROM lake.together.events WHERE id % 3 = 0;
             END;",
            rows = typed_rows(6_000),
        ))
        .await
        .unwrap();
    let report = engine.run_pipeline("together").await.unwrap();
    assert!(report.steps.iter().all(|s| s.status == "succeeded"), "{:?}", report.steps);
    let home_dir = engine.home().as_os_str().to_owned();
    for (table, rows) in [("events", 6_000), ("thirds", 2_000)] {
        let args: Vec<&OsStr> = vec!["iceberg".as_ref(), home_dir.as_os_str(), "together".as_ref(), table.as_ref()];
        readers_agree(&engine, &format!("lake.together.{table}"), &args, rows).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_and_duckdb_read_a_table_a_pipeline_added_columns_to_and_widened() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine
        .sql(
            "CREATE SCHEMA lake.evolve; CREATE TABLE lake.evolve.t (id BIGINT, name VARCHAR, small INT);
             INSERT INTO lake.evolve.t SELECT value, 'old ' || value, CAST(value AS INT) FROM generate_series(1, 50);
             CREATE PIPELINE grow WITH (schema_evolution = 'add_columns, widen_types') AS INSERT INTO lake.evolve.t
               SELECT 'new ' || value AS name, value + 100 AS id, value / 4.0 AS score, CAST(value AS INT) AS rank,
                      value * 10000000000 AS small
               FROM generate_series(1, 50);",
        )
        .await
        .unwrap();
    engine.run_pipeline("grow").await.unwrap();
    // Sluice reads the old rows with NULL in the new columns, and their INT as a BIGINT ...
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.evolve.t WHERE score IS NULL AND rank IS NULL").await, "50");
    assert_eq!(value(&engine, "SELECT max(small) FROM lake.evolve.t WHERE id <= 50").await, "50");
    assert_eq!(value(&engine, "SELECT max(small) FROM lake.evolve.t").await, "500000000000");
    // ... and so do the independent readers, value by value.
    let expected = expected_json(&engine, "SELECT * FROM lake.evolve.t").await;
    let path = engine.home().join("evolve.json");
    std::fs::write(&path, serde_json::to_vec(&expected).unwrap()).unwrap();
    let home_dir = engine.home().as_os_str().to_owned();
    let report =
        check_table(&["iceberg".as_ref(), home_dir.as_os_str(), "evolve".as_ref(), "t".as_ref(), path.as_os_str()]);
    for reader in ["pyiceberg", "duckdb"] {
        assert!(report.contains(&format!("{reader}: 100 rows x 5 columns match")), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delta_rs_and_duckdb_read_a_delta_table_a_pipeline_added_columns_to() {
    let home = tempfile::tempdir().unwrap();
    let (engine, root) = delta_engine(home.path(), 2).await;
    engine
        .sql(
            "CREATE SCHEMA delta.evolve; CREATE TABLE delta.evolve.t (id BIGINT, name VARCHAR);
             INSERT INTO delta.evolve.t SELECT value, 'old ' || value FROM generate_series(1, 40);
             CREATE PIPELINE grow WITH (schema_evolution = 'add_columns') AS INSERT INTO delta.evolve.t
               SELECT 'new ' || value AS name, value + 100 AS id, value / 4.0 AS score FROM generate_series(1, 40);",
        )
        .await
        .unwrap();
    engine.run_pipeline("grow").await.unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.evolve.t WHERE score IS NULL").await, "40");
    let expected = expected_json(&engine, "SELECT * FROM delta.evolve.t").await;
    let path = engine.home().join("evolve.json");
    std::fs::write(&path, serde_json::to_vec(&expected).unwrap()).unwrap();
    let table_dir = root.join("evolve/t");
    let report = check_table(&["delta".as_ref(), table_dir.as_os_str(), path.as_os_str()]);
    for reader in ["delta-rs", "duckdb"] {
        assert!(report.contains(&format!("{reader}: 80 rows x 3 columns match")), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delta_rs_and_duckdb_read_exactly_what_sluice_wrote() {
    let home = tempfile::tempdir().unwrap();
    let (engine, root) = delta_engine(home.path(), 4).await;
    engine
        .sql(&format!(
            "CREATE SCHEMA delta.interop;
             CREATE TABLE delta.interop.events ({TYPED_COLUMNS});
             CREATE PIPELINE events WITH (shards = 3) AS INSERT INTO delta.interop.events {rows};
             CREATE TABLE delta.interop.partitioned ({TYPED_COLUMNS}) PARTITIONED BY (flag, day);
             CREATE PIPELINE partitioned WITH (shards = 3) AS INSERT INTO delta.interop.partitioned {rows};
             CREATE PIPELINE fix WITH (shards = 2, mode = 'overwrite_partitions')
               AS INSERT INTO delta.interop.partitioned {fix};",
            rows = typed_rows(30_000),
            fix = typed_rows(2_000),
        ))
        .await
        .unwrap();
    let events_dir = root.join("interop/events");
    let partitioned_dir = root.join("interop/partitioned");
    let events: Vec<&OsStr> = vec!["delta".as_ref(), events_dir.as_os_str()];
    let partitioned: Vec<&OsStr> = vec!["delta".as_ref(), partitioned_dir.as_os_str()];

    let first = engine.run_pipeline("events").await.unwrap();
    let second = engine.run_pipeline("events").await.unwrap();
    assert_eq!((first.snapshot_id, second.snapshot_id), (Some(1), Some(2)), "one Delta version per run");
    readers_agree(&engine, "delta.interop.events", &events, 60_000).await;

    engine.run_pipeline("partitioned").await.unwrap();
    readers_agree(&engine, "delta.interop.partitioned", &partitioned, 30_000).await;
    assert!(partitioned_dir.join("flag=true").is_dir() && partitioned_dir.join("flag=false").is_dir());

    engine.run_pipeline("fix").await.unwrap();
    let kept: usize = value(&engine, "SELECT count(*) FROM delta.interop.partitioned").await.parse().unwrap();
    assert!(kept > 2_000 && kept < 30_000, "{kept} rows after replacing some partitions");
    readers_agree(&engine, "delta.interop.partitioned", &partitioned, kept).await;
    engine.sql(&format!("INSERT OVERWRITE delta.interop.events {}", typed_rows(1_000))).await.unwrap();
    readers_agree(&engine, "delta.interop.events", &events, 1_000).await;
}

//! Tables written by Sluice, read by readers nobody here wrote: pyiceberg (through the same SQLite
//! catalog) and DuckDB's `iceberg_scan` for Iceberg; delta-rs (Python) and DuckDB's `delta_scan`
//! for Delta. Values are compared, not just counts.
//!
//! The readers live in a Python venv (`tests/interop/requirements.txt`), which `scripts/test.sh`
//! creates; `SLUICE_PYTHON` points at its interpreter (default: `.venv/bin/python`).

use std::path::PathBuf;
use std::process::Command;

use crate::support::{cells, engine, value};

fn python() -> PathBuf {
    let python = std::env::var_os("SLUICE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "the interop readers are missing: run scripts/test.sh (it creates .venv), or set SLUICE_PYTHON to a Python with tests/interop/requirements.txt installed"
    );
    python
}

/// Sluice's own view of the table, every value as Arrow displays it, as the JSON the checker reads.
async fn expected_json(engine: &sluice::Engine, query: &str) -> serde_json::Value {
    let batches = engine.sql(query).await.unwrap();
    let columns: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    serde_json::json!({ "columns": columns, "rows": cells(&batches) })
}

/// Runs tests/interop/check_table.py with `args`; returns its output once every reader agreed.
fn check_table(args: &[&std::ffi::OsStr]) -> String {
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

/// Writes Sluice's own view of `table` where the checker reads it, with the row count of
/// `flag = true` (a partition column in the partitioned tables) for the readers to match.
async fn write_expected(engine: &sluice::Engine, table: &str, path: &std::path::Path, rows: usize) {
    let mut expected = expected_json(engine, &format!("SELECT * FROM {table}")).await;
    assert_eq!(expected["rows"].as_array().unwrap().len(), rows);
    let flagged = value(engine, &format!("SELECT count(*) FROM {table} WHERE flag = true")).await;
    expected["filters"] =
        serde_json::json!([{ "column": "flag", "value": true, "count": flagged.parse::<u64>().unwrap() }]);
    std::fs::write(path, serde_json::to_vec(&expected).unwrap()).unwrap();
}

/// Columns of every common type, NULLs included, generated for rows 1..=n.
fn typed_rows(n: usize) -> String {
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

const TYPED_COLUMNS: &str = "id BIGINT NOT NULL, small INT, name VARCHAR, score DOUBLE, price DECIMAL(10, 2),
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
             CREATE PIPELINE partitioned WITH (shards = 3) AS INSERT INTO lake.interop.partitioned {rows};",
            rows = typed_rows(30_000)
        ))
        .await
        .unwrap();
    let first = engine.run_pipeline("events").await.unwrap();
    let second = engine.run_pipeline("events").await.unwrap();
    assert_eq!(first.rows + second.rows, 60_000);

    let expected_path = home.path().join("expected.json");
    write_expected(&engine, "lake.interop.events", &expected_path, 60_000).await;

    let stdout = check_table(&[
        "iceberg".as_ref(),
        engine.home().as_os_str(),
        "interop".as_ref(),
        "events".as_ref(),
        expected_path.as_os_str(),
    ]);
    assert!(stdout.contains("pyiceberg: 60000 rows x 8 columns match"), "{stdout}");
    assert!(stdout.contains("duckdb: 60000 rows x 8 columns match"), "{stdout}");

    let report = engine.run_pipeline("partitioned").await.unwrap();
    assert!(report.files > 3, "{} files for a table partitioned 4 ways", report.files);
    let partitioned_path = home.path().join("partitioned.json");
    write_expected(&engine, "lake.interop.partitioned", &partitioned_path, 30_000).await;
    let stdout = check_table(&[
        "iceberg".as_ref(),
        engine.home().as_os_str(),
        "interop".as_ref(),
        "partitioned".as_ref(),
        partitioned_path.as_os_str(),
    ]);
    assert!(stdout.contains("pyiceberg: 30000 rows x 8 columns match"), "{stdout}");
    assert!(stdout.contains("pyiceberg: 15000 rows where flag = True, as expected"), "{stdout}");
    assert!(stdout.contains("duckdb: 15000 rows where flag = True, as expected"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delta_rs_and_duckdb_read_exactly_what_sluice_wrote() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("delta-root");
    let engine = sluice::Engine::builder()
        .home(home.path())
        .catalog(
            "delta",
            sluice::catalog::CatalogConfig::Delta(sluice::catalog::DeltaConfig { root: root.display().to_string() }),
        )
        .shards(4)
        .build()
        .await
        .unwrap();
    engine
        .sql(&format!(
            "CREATE SCHEMA delta.interop;
             CREATE TABLE delta.interop.events ({TYPED_COLUMNS});
             CREATE PIPELINE events WITH (shards = 3) AS INSERT INTO delta.interop.events {rows};
             CREATE TABLE delta.interop.partitioned ({TYPED_COLUMNS}) PARTITIONED BY (flag, day);
             CREATE PIPELINE partitioned WITH (shards = 3) AS INSERT INTO delta.interop.partitioned {rows};",
            rows = typed_rows(30_000)
        ))
        .await
        .unwrap();
    let first = engine.run_pipeline("events").await.unwrap();
    let second = engine.run_pipeline("events").await.unwrap();
    assert_eq!((first.snapshot_id, second.snapshot_id), (Some(1), Some(2)), "one Delta version per run");

    let expected_path = home.path().join("expected.json");
    write_expected(&engine, "delta.interop.events", &expected_path, 60_000).await;
    let table_dir = root.join("interop/events");
    let stdout = check_table(&["delta".as_ref(), table_dir.as_os_str(), expected_path.as_os_str()]);
    assert!(stdout.contains("delta-rs: 60000 rows x 8 columns match"), "{stdout}");
    assert!(stdout.contains("duckdb: 60000 rows x 8 columns match"), "{stdout}");

    engine.run_pipeline("partitioned").await.unwrap();
    let partitioned_path = home.path().join("partitioned.json");
    write_expected(&engine, "delta.interop.partitioned", &partitioned_path, 30_000).await;
    let table_dir = root.join("interop/partitioned");
    let stdout = check_table(&["delta".as_ref(), table_dir.as_os_str(), partitioned_path.as_os_str()]);
    assert!(stdout.contains("delta-rs: 30000 rows x 8 columns match"), "{stdout}");
    assert!(stdout.contains("delta-rs: 15000 rows where flag = True, as expected"), "{stdout}");
    assert!(stdout.contains("duckdb: 15000 rows where flag = True, as expected"), "{stdout}");
    assert!(table_dir.join("flag=true").is_dir() && table_dir.join("flag=false").is_dir());
}

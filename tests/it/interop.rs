//! Tables written by Sluice, read by readers nobody here wrote: pyiceberg (through the same SQLite
//! catalog) and DuckDB's `iceberg_scan`. Values are compared, not just counts.
//!
//! The readers live in a Python venv (`tests/interop/requirements.txt`), which `scripts/test.sh`
//! creates; `SLUICE_PYTHON` points at its interpreter (default: `.venv/bin/python`).

use std::path::PathBuf;
use std::process::Command;

use crate::support::{cells, engine};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_and_duckdb_read_exactly_what_sluice_wrote() {
    let python = python();
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 4).await;
    engine
        .sql(
            "CREATE SCHEMA lake.interop;
             CREATE TABLE lake.interop.events (
                 id BIGINT NOT NULL, small INT, name VARCHAR, score DOUBLE, price DECIMAL(10, 2),
                 flag BOOLEAN, day DATE, at TIMESTAMP);
             CREATE PIPELINE events WITH (shards = 3) AS
             INSERT INTO lake.interop.events
             SELECT value,
                    CAST(value % 1000 AS INT),
                    CASE WHEN value % 11 = 0 THEN NULL ELSE 'event ' || value END,
                    value / 8.0,
                    CAST(value % 10000 AS DECIMAL(10, 2)) / 100,
                    value % 2 = 0,
                    CAST(to_timestamp_seconds(1767225600 + value * 3600) AS DATE),
                    to_timestamp_seconds(1767225600 + value * 61)
             FROM generate_series(1, 30000);",
        )
        .await
        .unwrap();
    let first = engine.run_pipeline("events").await.unwrap();
    let second = engine.run_pipeline("events").await.unwrap();
    assert_eq!(first.rows + second.rows, 60_000);

    let expected = expected_json(&engine, "SELECT * FROM lake.interop.events").await;
    assert_eq!(expected["rows"].as_array().unwrap().len(), 60_000);
    let expected_path = home.path().join("expected.json");
    std::fs::write(&expected_path, serde_json::to_vec(&expected).unwrap()).unwrap();

    let output = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/check_iceberg.py"))
        .arg(engine.home())
        .args(["interop", "events"])
        .arg(&expected_path)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the readers disagree with Sluice:\n{stdout}\n{stderr}");
    assert!(stdout.contains("pyiceberg: 60000 rows x 8 columns match"), "{stdout}");
    assert!(stdout.contains("duckdb: 60000 rows x 8 columns match"), "{stdout}");
}

//! Runs every `sql/*.slt` file (sqllogictest) against a fresh engine home.

use std::path::PathBuf;

use datafusion::arrow::datatypes::DataType;
use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

struct SluiceDb {
    engine: Engine,
}

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SltError {}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    if data_type.is_integer() {
        DefaultColumnType::Integer
    } else if data_type.is_floating() || matches!(data_type, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

#[async_trait::async_trait]
impl AsyncDB for SluiceDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let statements = sluice::parser::parse(sql).map_err(|e| SltError(e.to_string()))?;
        let mut last = None;
        for statement in &statements {
            last = Some(self.engine.execute(statement).await.map_err(|e| SltError(e.to_string()))?);
        }
        let Some(output) = last else { return Ok(DBOutput::StatementComplete(0)) };
        if output.schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: output.schema.fields().iter().map(|f| column_type(f.data_type())).collect(),
            rows: crate::support::cells(&output.batches)
                .into_iter()
                .flat_map(|row| {
                    let row: Vec<String> = row
                        .into_iter()
                        .map(|c| match c.as_deref() {
                            None => "NULL".to_string(),
                            Some("") => "(empty)".to_string(),
                            Some(v) => v.to_string(),
                        })
                        .collect();
                    lines_as_rows(row)
                })
                .collect(),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await
    }
}

/// A row whose cells span lines (an EXPLAIN plan) as one row per line; a cell with fewer lines
/// shows `-` below its last.
fn lines_as_rows(row: Vec<String>) -> Vec<Vec<String>> {
    let height = row.iter().map(|c| c.lines().count()).max().unwrap_or(1).max(1);
    if height == 1 {
        return vec![row];
    }
    let line = |c: &String, i: usize| c.lines().nth(i).map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
    (0..height).map(|i| row.iter().map(|c| line(c, i).unwrap_or_else(|| "-".into())).collect()).collect()
}

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sql/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

/// Each file gets its own home (fixed at 2 shards so plans are stable) with the embedded Iceberg
/// catalog `lake` and a Delta catalog `delta`; all files run, and every failure is reported
/// before the test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqllogictests() {
    let files = slt_files();
    assert!(files.len() >= 4, "expected the .slt suite under sql/, found {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let home = tempfile::tempdir().unwrap();
        let home_path = home.path().to_path_buf();
        let mut runner = Runner::new(move || {
            let home = home_path.clone();
            async move {
                let delta = DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() };
                let engine = Engine::builder()
                    .home(home)
                    .catalog("delta", CatalogConfig::Delta(delta))
                    .shards(2)
                    .build()
                    .await
                    .map_err(|e| SltError(e.to_string()))?;
                Ok(SluiceDb { engine })
            }
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{e}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} .slt files failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

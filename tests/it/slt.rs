//! Runs every `sql/*.slt` file (sqllogictest) against a fresh engine home: once with local catalogs, once with
//! both catalogs in an S3-compatible server.

use std::path::PathBuf;

use datafusion::arrow::datatypes::DataType;
use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig, IcebergSqlConfig};
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

/// Runs `files`, each with its own home (fixed at 2 shards so plans are stable) and catalogs
/// `lake` (Iceberg) and `delta` made by `catalogs` for that home; every failure is reported before
/// the test fails.
async fn run_slt_files(
    files: &[PathBuf],
    catalogs: impl Fn(&std::path::Path, usize) -> (IcebergSqlConfig, DeltaConfig),
) {
    let mut failures = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let home = tempfile::tempdir().unwrap();
        let home_path = home.path().to_path_buf();
        let (lake, delta) = catalogs(&home_path, i);
        let mut runner = Runner::new(move || {
            let (home, lake, delta) = (home_path.clone(), lake.clone(), delta.clone());
            async move {
                let engine = Engine::builder()
                    .home(home)
                    .catalog("lake", CatalogConfig::IcebergSql(lake))
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

/// The embedded default catalog `lake` of `home` and a Delta catalog `delta` in `home/delta`.
fn local_catalogs(home: &std::path::Path, _: usize) -> (IcebergSqlConfig, DeltaConfig) {
    let lake = IcebergSqlConfig {
        uri: format!("sqlite:{}", home.join("catalog.db").display()),
        warehouse: home.join("warehouse").display().to_string(),
        storage: Default::default(),
    };
    (lake, DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqllogictests() {
    let files = slt_files();
    assert!(files.len() >= 4, "expected the .slt suite under sql/, found {files:?}");
    run_slt_files(&files, local_catalogs).await;
}

/// The whole suite again with both catalogs in an S3-compatible server (moto's, on loopback):
/// `lake`'s warehouse and `delta`'s root in a bucket, one prefix per file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqllogictests_on_s3() {
    let server = crate::s3::S3Server::start(&["slt"]).await;
    let files = slt_files();
    let storage = server.settings();
    run_slt_files(&files, |home, i| {
        let lake = IcebergSqlConfig {
            uri: format!("sqlite:{}", home.join("catalog.db").display()),
            warehouse: format!("s3://slt/{i}/warehouse"),
            storage: storage.clone(),
        };
        (lake, DeltaConfig { root: format!("s3://slt/{i}/delta"), storage: storage.clone() })
    })
    .await;
}

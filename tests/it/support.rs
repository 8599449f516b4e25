//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use iceberg::table::Table;
use sluice::Engine;
use sluice::formats::iceberg::IcebergCatalog;
use sluice::table::TableName;

/// An engine on `home` with a fixed shard count.
pub async fn engine(home: &Path, shards: usize) -> Engine {
    Engine::builder().home(home).shards(shards).build().await.expect("engine opens")
}

/// The embedded Iceberg catalog `lake`.
pub fn lake(engine: &Engine) -> &IcebergCatalog {
    let catalog = engine.catalog("lake").expect("the default catalog");
    catalog.as_any().downcast_ref::<IcebergCatalog>().expect("lake is an Iceberg catalog")
}

/// `lake.<schema>.<table>` loaded fresh from the catalog.
pub async fn table(engine: &Engine, schema: &str, name: &str) -> Table {
    lake(engine).load_table(&TableName::new("lake", schema, name)).await.expect("table loads")
}

/// Every file the table's metadata reaches: metadata files, manifest lists, manifests, and the
/// data files of every snapshot (paths without `file://`).
pub async fn referenced_files(table: &Table) -> std::collections::BTreeSet<String> {
    let metadata = table.metadata();
    let mut referenced: std::collections::BTreeSet<String> =
        metadata.metadata_log().iter().map(|m| m.metadata_file.clone()).collect();
    referenced.insert(table.metadata_location().unwrap().to_string());
    for snapshot in metadata.snapshots() {
        referenced.insert(snapshot.manifest_list().to_string());
        let list = table.manifest_list_reader(snapshot).load().await.unwrap();
        for manifest_file in list.entries() {
            referenced.insert(manifest_file.manifest_path.clone());
            let manifest = manifest_file.load_manifest(table.file_io()).await.unwrap();
            referenced.extend(manifest.entries().iter().map(|e| e.data_file().file_path().to_string()));
        }
    }
    referenced.into_iter().map(|l| l.trim_start_matches("file://").to_string()).collect()
}

/// Number of snapshots in the table's history.
pub fn snapshot_count(table: &Table) -> usize {
    table.metadata().snapshots().count()
}

/// Every cell of `batches` as Arrow displays it; `None` for NULL.
pub fn cells(batches: &[RecordBatch]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(column, f)| (!column.is_null(row)).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    rows
}

/// Runs `sql` and returns its rows, NULL shown as `NULL`.
pub async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<String>> {
    let batches = engine.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    cells(&batches).into_iter().map(|r| r.into_iter().map(|c| c.unwrap_or_else(|| "NULL".into())).collect()).collect()
}

/// Runs `sql`, which returns one value.
pub async fn value(engine: &Engine, sql: &str) -> String {
    let rows = rows(engine, sql).await;
    assert!(rows.len() == 1 && rows[0].len() == 1, "{sql} returned {rows:?}");
    rows[0][0].clone()
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    files
}

/// The Python with the pinned independent readers (`tests/interop/requirements.txt`), which
/// `scripts/test.sh` installs into `.venv`; `SLUICE_PYTHON` overrides it.
pub fn python() -> PathBuf {
    let python = std::env::var_os("SLUICE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "the interop readers are missing: run scripts/test.sh (it creates .venv), or set SLUICE_PYTHON to a Python with tests/interop/requirements.txt installed"
    );
    python
}

/// A failpoint that holds the first thread reaching it until released (later ones pass): the
/// test learns when a run got there (no sleeping on a guess) and decides when it goes on.
pub struct Stall {
    failpoint: String,
    reached: Option<std::sync::mpsc::Receiver<()>>,
    release: std::sync::mpsc::Sender<()>,
}

impl Stall {
    /// Stalls at `failpoint` (e.g. `before-commit/lake.s.t`) from now on.
    pub fn at(failpoint: impl Into<String>) -> Self {
        let failpoint = failpoint.into();
        let (reached_tx, reached) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let first = std::sync::atomic::AtomicBool::new(true);
        fail::cfg_callback(failpoint.clone(), move || {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                reached_tx.send(()).ok();
                release_rx.lock().unwrap().recv().ok();
            }
        })
        .unwrap();
        Self { failpoint, reached: Some(reached), release }
    }

    /// Waits until a thread has reached the failpoint (and is held there); fails the test
    /// after a minute rather than hang.
    pub async fn reached(&mut self) {
        let reached = self.reached.take().expect("waited for once");
        let failpoint = self.failpoint.clone();
        let reached = tokio::task::spawn_blocking(move || {
            let waited = reached.recv_timeout(std::time::Duration::from_secs(60));
            waited.unwrap_or_else(|e| panic!("failpoint `{failpoint}` was not reached: {e}"));
            reached
        });
        self.reached = Some(reached.await.unwrap());
    }

    /// Removes the failpoint and lets the held thread go on.
    pub fn release(self) {
        fail::remove(&self.failpoint);
        self.release.send(()).unwrap();
    }
}

/// Ages the leases of every open run in the ledger of `home` as 30 s would (their processes were
/// killed), so that recovery settles them now.
pub async fn expire_leases(home: &Path) {
    let ledger = home.join("ledger.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", ledger.display())).await.unwrap();
    sqlx::query("UPDATE runs SET lease_until_ms = 0 WHERE status IN ('staging', 'committing')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// After killed writers and recovery: each of `batches` (a statement `SELECT <batch> AS batch
/// ...`, `statement(batch)`) that has no succeeded run is retried under its failed run's id, or
/// run again if it never reached the ledger.
pub async fn land_missing_batches(engine: &Engine, batches: u64, statement: impl Fn(u64) -> String) {
    let runs = engine.ledger().runs(None).await.unwrap();
    for batch in 0..batches {
        let of_batch: Vec<_> =
            runs.iter().filter(|r| r.statement.contains(&format!("SELECT {batch} AS batch"))).collect();
        if of_batch.iter().any(|r| r.status == sluice::ledger::RunStatus::Succeeded) {
            continue;
        }
        match of_batch.first() {
            Some(failed) => drop(engine.retry_run(&failed.run_id).await.unwrap()),
            None => drop(engine.sql(&statement(batch)).await.unwrap()),
        }
    }
}

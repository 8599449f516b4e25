//! The coordinator layer as users see it: the file-merge export, the composite's order and
//! error semantics, and a coordinator of one's own plugged into the engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice::coordinator::{Composite, Coordinator, CoordinatorError, RunContext, ShardResult};
use sluice::ledger::RunStatus;
use sluice::{Engine, Error};

use crate::support::{engine, files_under, rows, value};

/// 60,000 rows of mixed types, some NULL and some needing CSV quoting.
const QUERY: &str = "SELECT value AS id, value * 0.5 AS half, \
     CASE WHEN value % 7 = 0 THEN NULL ELSE concat('name, \"', CAST(value AS VARCHAR), '\"') END AS label, \
     value % 3 = 0 AS flag FROM generate_series(1, 60000)";

/// The file's lines: the first as it is (a header), the rest sorted.
fn sorted_lines(path: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first = lines.remove(0);
    lines.sort();
    (first, lines)
}

/// Exports `QUERY` into `dir/<name>` with an engine of `shards` shards; returns the file.
async fn export(home: &Path, dir: &Path, name: &str, shards: usize) -> PathBuf {
    let engine = engine(home, shards).await;
    let path = dir.join(name);
    let report = engine.sql(&format!("COPY ({QUERY}) TO '{}'", path.display())).await.unwrap();
    let report = crate::support::cells(&report);
    assert_eq!(report[0][3].as_deref(), Some(shards.to_string().as_str()), "shards: {report:?}");
    assert_eq!(report[0][4].as_deref(), Some("60000"), "rows: {report:?}");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_merge_writes_the_same_csv_and_jsonl_as_a_single_shard() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for name in ["out.csv", "out.jsonl"] {
        let one = export(home.path(), &out.path().join("one"), name, 1).await;
        let many = export(home.path(), out.path(), name, 4).await;
        let (one_first, one_rows) = sorted_lines(&one);
        let (many_first, many_rows) = sorted_lines(&many);
        assert_eq!(many_first, one_first, "{name}: the same first line");
        // CSV's first line is the header; JSONL's is a row.
        assert_eq!(many_rows.len(), 60000 - usize::from(name.ends_with(".jsonl")), "{name}");
        assert_eq!(many_rows, one_rows, "{name}: the same rows");
    }
    let (header, _) = sorted_lines(&out.path().join("out.csv"));
    assert_eq!(header, "id,half,label,flag");
    // Nothing but the two files: no parts folder, no temporary file.
    let names: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}"); // out.csv, out.jsonl and one/
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_merge_copies_parquet_row_groups_and_keeps_an_ordered_query_in_order() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 4).await;
    let parquet = out.path().join("out.parquet");
    engine.sql(&format!("COPY ({QUERY}) TO '{}'", parquet.display())).await.unwrap();
    let summary = format!(
        "SELECT count(*), count(DISTINCT id), sum(half), count(label), sum(CAST(flag AS INT)) FROM '{}'",
        parquet.display()
    );
    let expected =
        format!("SELECT count(*), count(DISTINCT id), sum(half), count(label), sum(CAST(flag AS INT)) FROM ({QUERY})");
    assert_eq!(rows(&engine, &summary).await, rows(&engine, &expected).await);
    // Several shards wrote it: the merged file holds their row groups.
    let file = std::fs::File::open(&parquet).unwrap();
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    assert!(reader.metadata().num_row_groups() >= 2, "one row group per shard at least");

    // ORDER BY: one shard writes, so the file keeps the order.
    let csv = out.path().join("sorted.csv");
    engine
        .sql(&format!("COPY (SELECT value FROM generate_series(1, 50000) ORDER BY value DESC) TO '{}'", csv.display()))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let values: Vec<i64> = text.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    assert_eq!(values, (1..=50000).rev().collect::<Vec<_>>());

    // `COPY <table> TO`: a catalog table exported whole, read back as a file.
    engine
        .sql("CREATE SCHEMA lake.x; CREATE TABLE lake.x.t AS SELECT value AS v FROM generate_series(1, 1000)")
        .await
        .unwrap();
    let json = out.path().join("table.json");
    engine.sql(&format!("COPY lake.x.t TO '{}'", json.display())).await.unwrap();
    assert_eq!(
        rows(&engine, &format!("SELECT count(*), sum(v) FROM '{}'", json.display())).await,
        [["1000", "500500"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_export_leaves_the_old_file_and_nothing_else() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 4).await;
    let path = out.path().join("out.csv");
    std::fs::write(&path, "the old export\n").unwrap();
    let target = path.display().to_string();
    // (No `fail::FailScenario` here: its setup clears every failpoint, other tests' too.)
    for (failpoint, actions) in [("shard-write", "2*off->return"), ("before-commit", "return")] {
        let name = format!("{failpoint}/{target}");
        fail::cfg(&name, actions).unwrap();
        let error = engine.sql(&format!("COPY ({QUERY}) TO '{target}'")).await.expect_err("the fault fails the run");
        fail::remove(&name);
        assert!(error.to_string().contains("rolled back"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the old export\n", "{failpoint}: the old file stays");
        assert_eq!(
            files_under(out.path()),
            std::slice::from_ref(&path),
            "{failpoint}: no part or temporary file is left"
        );
        let runs = engine.ledger().runs(None).await.unwrap();
        let failed = runs.last().unwrap();
        assert_eq!((failed.status, failed.target.as_str()), (RunStatus::Failed, target.as_str()));
        assert!(engine.ledger().staged_files(&failed.run_id).await.unwrap().is_empty());
    }
    // A folder is not a file to export into; DataFusion's own COPY still writes folders.
    let error = engine.sql(&format!("COPY (SELECT 1) TO '{}.d/x.csv/'", target)).await;
    assert!(error.is_ok(), "a trailing slash is a folder, left to DataFusion: {error:?}");
}

/// Remembers the hooks it saw, and fails the ones it is told to.
#[derive(Debug)]
struct Recorder {
    name: String,
    log: Arc<Mutex<Vec<String>>>,
    fail_on: Option<&'static str>,
}

impl Recorder {
    fn new(name: &str, log: &Arc<Mutex<Vec<String>>>, fail_on: Option<&'static str>) -> Arc<Self> {
        Arc::new(Self { name: name.to_string(), log: log.clone(), fail_on })
    }

    /// Logs `entry` for `hook`, and fails if told to fail `hook`.
    fn saw(&self, hook: &str, entry: String) -> Result<(), CoordinatorError> {
        self.log.lock().unwrap().push(format!("{}.{entry}", self.name));
        match self.fail_on {
            Some(failing) if failing == hook => Err(CoordinatorError::new(&self.name, format!("{hook} refused"))),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Coordinator for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn on_start(&self, _run: &RunContext) -> Result<(), CoordinatorError> {
        self.saw("on_start", "on_start".into())
    }

    async fn on_finish(&self, _run: &RunContext, shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        let rows: u64 = shards.iter().map(|s| s.totals.rows).sum();
        self.saw("on_finish", format!("on_finish({} shards, {rows} rows)", shards.len()))?;
        Ok(None)
    }

    async fn on_error(&self, _run: &RunContext, _error: &str) -> Result<(), CoordinatorError> {
        self.saw("on_error", "on_error".into())
    }
}

/// An engine whose runs go through `Composite[built-in commit, a, b]`.
async fn composite_engine(
    home: &Path,
    log: &Arc<Mutex<Vec<String>>>,
    a: Option<&'static str>,
    b: Option<&'static str>,
) -> Engine {
    let log = log.clone();
    Engine::builder()
        .home(home)
        .shards(3)
        .wrap_coordinator(move |builtin| {
            Arc::new(Composite::new(vec![builtin, Recorder::new("a", &log, a), Recorder::new("b", &log, b)]))
                as Arc<dyn Coordinator>
        })
        .build()
        .await
        .unwrap()
}

const LOAD: &str = "INSERT INTO lake.c.t SELECT value FROM generate_series(1, 1000)";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_composite_calls_its_members_in_order() {
    let home = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(vec![]));
    let engine = composite_engine(home.path(), &log, None, None).await;
    engine.sql("CREATE SCHEMA lake.c; CREATE TABLE lake.c.t (id BIGINT)").await.unwrap();
    engine.sql(LOAD).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["a.on_start", "b.on_start", "a.on_finish(3 shards, 1000 rows)", "b.on_finish(3 shards, 1000 rows)",]
    );
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.c.t").await, "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_failing_before_the_commit_rolls_the_run_back_in_reverse_order() {
    let home = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(vec![]));
    let engine = composite_engine(home.path(), &log, None, Some("on_start")).await;
    engine.sql("CREATE SCHEMA lake.c; CREATE TABLE lake.c.t (id BIGINT)").await.unwrap();
    let error = engine.sql(LOAD).await.expect_err("b refuses to start");
    assert!(error.to_string().contains("failed to start and was rolled back: on_start refused"), "{error}");
    assert_eq!(*log.lock().unwrap(), ["a.on_start", "b.on_start", "b.on_error", "a.on_error"]);
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.c.t").await, "0");
    assert_eq!(engine.ledger().runs(None).await.unwrap().last().unwrap().status, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_failing_after_the_commit_leaves_the_commit_and_says_so() {
    let home = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(vec![]));
    let engine = composite_engine(home.path(), &log, Some("on_finish"), None).await;
    engine.sql("CREATE SCHEMA lake.c; CREATE TABLE lake.c.t (id BIGINT)").await.unwrap();
    let error = engine.sql(LOAD).await.expect_err("a fails after the commit");
    let Error::Statement { source, .. } = &error else { panic!("{error:?}") };
    let Error::Run(run) = source.as_ref() else { panic!("{error:?}") };
    let sluice::coordinator::RunError::AfterCommit { snapshot_id, source, .. } = run.as_ref() else {
        panic!("{error:?}")
    };
    assert_eq!(source.coordinator, "a");
    assert!(error.to_string().contains("but coordinator `a` failed after the commit"), "{error}");
    // b never finished; both are told; the commit's own on_error (deleting files) is not called.
    assert_eq!(
        *log.lock().unwrap(),
        ["a.on_start", "b.on_start", "a.on_finish(3 shards, 1000 rows)", "b.on_error", "a.on_error"]
    );
    // The rows are committed exactly once, and the ledger says so: a retry would add nothing.
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.c.t").await, "1000");
    let run = engine.ledger().runs(None).await.unwrap().pop().unwrap();
    assert_eq!((run.status, run.snapshot_id), (RunStatus::Succeeded, Some(*snapshot_id)));
}

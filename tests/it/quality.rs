//! Quarantined rows publish with the good rows in one catalog transaction: a fault between the
//! held commits and the transaction leaves both tables as they were (and no data file behind); a
//! crash right after it is settled by recovery with both visible; a process killed before or
//! after it leaves, after recovery, neither or both. On Delta the quarantine commits first: a crash
//! before the good rows' commit leaves, after recovery, the quarantined rows and no good ones.
//! Large CSV files with bad lines (`bad_rows = 'quarantine'`) load every good row once and keep
//! every bad line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::Engine;
use sluice::clock::TestClock;
use sluice::engine::DEFAULT_RUN_LEASE;

use crate::support::{engine, files_under, value};

/// Writes 10 rows into `lake.<schema>.t`, quarantining those with `amount <= 0` (3 of them).
const INSERT: &str = "(CONSTRAINT positive EXPECT (amount > 0) ON VIOLATION QUARANTINE)
                      SELECT value, value - 3.0 FROM generate_series(1, 10)";

async fn counts(engine: &Engine, schema: &str) -> (String, String) {
    let good = value(engine, &format!("SELECT count(*) FROM lake.{schema}.t")).await;
    let bad = value(engine, &format!("SELECT count(*) FROM lake.{schema}.t__quarantine")).await;
    (good, bad)
}

fn data_files(home: &Path, schema: &str) -> usize {
    files_under(&home.join("warehouse").join(schema))
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_before_the_transaction_publishes_neither_the_good_nor_the_quarantined_rows() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.qf; CREATE TABLE lake.qf.t (id BIGINT NOT NULL, amount DOUBLE)").await.unwrap();
    engine.sql(&format!("INSERT INTO lake.qf.t {INSERT}")).await.unwrap();
    assert_eq!(counts(&engine, "qf").await, ("7".to_string(), "3".to_string()));
    let files_before = data_files(home.path(), "qf");

    fail::cfg("before-publish/lake.qf.t", "return").unwrap();
    let error = engine.sql(&format!("INSERT INTO lake.qf.t {INSERT}")).await.unwrap_err().to_string();
    fail::remove("before-publish/lake.qf.t");
    assert!(error.contains("no table was published, and every run was rolled back"), "{error}");
    assert_eq!(counts(&engine, "qf").await, ("7".to_string(), "3".to_string()), "neither table changed");
    assert_eq!(data_files(home.path(), "qf"), files_before, "no staged data file left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_the_transaction_is_settled_with_both_visible() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.qa; CREATE TABLE lake.qa.t (id BIGINT NOT NULL, amount DOUBLE)").await.unwrap();
    fail::cfg("after-publish/lake.qa.t", "return").unwrap();
    let error = engine.sql(&format!("INSERT INTO lake.qa.t {INSERT}")).await.unwrap_err().to_string();
    fail::remove("after-publish/lake.qa.t");
    assert!(error.contains("recovery settles all of them alike"), "{error}");
    assert_eq!(counts(&engine, "qa").await, ("7".to_string(), "3".to_string()), "both published");
    drop(engine);

    let clock = TestClock::new();
    clock.advance(DEFAULT_RUN_LEASE + Duration::from_secs(1));
    let engine = Engine::builder().home(home.path()).clock(Arc::new(clock)).build().await.unwrap();
    engine.recover().await.unwrap();
    let statuses = "SELECT status, count(*) FROM sluice.runs GROUP BY status";
    assert_eq!(crate::support::rows(&engine, statuses).await, [["succeeded", "2"]]);
    assert_eq!(counts(&engine, "qa").await, ("7".to_string(), "3".to_string()));
}

/// Runs the quarantining insert into `lake.qk.t` in a `sluice` process that dies at `failpoint`.
fn insert_dying_at(home: &Path, failpoint: &str) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home)
        .args(["-c", &format!("INSERT INTO lake.qk.t {INSERT}")])
        .env("FAILPOINTS", format!("{failpoint}/lake.qk.t=return(abort)"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the process died at {failpoint}");
}

/// An engine on `home` whose clock is past the leases a dead process held; it recovers.
async fn recovering(home: &Path) -> Engine {
    let clock = TestClock::new();
    clock.advance(DEFAULT_RUN_LEASE + Duration::from_secs(1));
    let engine = Engine::builder().home(home).clock(Arc::new(clock)).build().await.unwrap();
    engine.recover().await.unwrap();
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_around_the_transaction_leaves_both_or_neither_after_recovery() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.qk; CREATE TABLE lake.qk.t (id BIGINT NOT NULL, amount DOUBLE)").await.unwrap();
    drop(engine);

    // Killed with both commits written and held: neither, and their data files are gone.
    insert_dying_at(home.path(), "before-publish");
    let engine = recovering(home.path()).await;
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.qk.t").await, "0");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.qk.t__quarantine").await, "0");
    assert_eq!(data_files(home.path(), "qk"), 0, "recovery deleted the held data files");
    drop(engine);

    // Killed right after the transaction: both.
    insert_dying_at(home.path(), "after-publish");
    let engine = recovering(home.path()).await;
    assert_eq!(counts(&engine, "qk").await, ("7".to_string(), "3".to_string()));
    let statuses = "SELECT status, count(*) FROM sluice.runs GROUP BY status ORDER BY status";
    assert_eq!(crate::support::rows(&engine, statuses).await, [["failed", "2"], ["succeeded", "2"]]);
}

/// Both ways rows are quarantined: rows an expectation rejects, and bad lines of a CSV file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_delta_a_crash_between_the_two_commits_leaves_the_quarantine_and_no_good_rows() {
    let home = tempfile::tempdir().unwrap();
    let csv = home.path().join("rows.csv");
    std::fs::write(&csv, "id,amount\n1,1.5\n2,x\n3\n4,4.5\n5,\"5\n").unwrap();
    let delta =
        sluice::catalog::DeltaConfig { root: home.path().join("delta").display().to_string(), ..Default::default() };
    let open = |clock: TestClock| {
        Engine::builder()
            .home(home.path())
            .catalog("delta", sluice::catalog::CatalogConfig::Delta(delta.clone()))
            .clock(Arc::new(clock))
            .build()
    };
    let engine = open(TestClock::new()).await.unwrap();
    engine
        .sql(&format!(
            "CREATE SCHEMA delta.qd;
             CREATE TABLE delta.qd.t (id BIGINT NOT NULL, amount DOUBLE);
             CREATE TABLE delta.qd.lines (id BIGINT NOT NULL, amount DOUBLE);
             CREATE EXTERNAL TABLE rows_csv (id BIGINT, amount DOUBLE) STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');",
            csv.display()
        ))
        .await
        .unwrap();
    for (table, insert) in [
        ("t", format!("INSERT INTO delta.qd.t {INSERT}")),
        ("lines", "INSERT INTO delta.qd.lines WITH (bad_rows = 'quarantine') SELECT * FROM rows_csv".to_string()),
    ] {
        let failpoint = format!("between-publishes/delta.qd.{table}");
        fail::cfg(&failpoint, "return").unwrap();
        let error = engine.sql(&insert).await.unwrap_err().to_string();
        fail::remove(&failpoint);
        assert!(error.contains("between-publishes"), "{error}");
    }
    drop(engine);

    let clock = TestClock::new();
    clock.advance(DEFAULT_RUN_LEASE + Duration::from_secs(1));
    let engine = open(clock).await.unwrap();
    engine.recover().await.unwrap();
    for table in ["t", "lines"] {
        let quarantined = value(&engine, &format!("SELECT count(*) FROM delta.qd.{table}__quarantine")).await;
        assert_eq!(quarantined, "3", "the quarantine of {table} stands");
        let good = value(&engine, &format!("SELECT count(*) FROM delta.qd.{table}")).await;
        assert_eq!(good, "0", "the good rows of {table} were rolled back");
        let data = files_under(&home.path().join("delta/qd").join(table))
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
            .count();
        assert_eq!(data, 0, "no staged data file of the good rows of {table} left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_run_keeps_the_expectations_it_ran_under() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.qr; CREATE TABLE lake.qr.t (id BIGINT NOT NULL, amount DOUBLE)").await.unwrap();
    let insert = "INSERT INTO lake.qr.t (CONSTRAINT small EXPECT (id < 3) ON VIOLATION FAIL) SELECT value, 1.0 FROM generate_series(1, 5)";
    let error = engine.sql(insert).await.unwrap_err();
    let run_id = error.run_id().expect("the run was opened").to_string();
    assert!(error.to_string().contains("3 row(s) violate expectation `small`"), "{error}");
    let statement = engine.ledger().run(&run_id).await.unwrap().unwrap().statement;
    assert!(statement.contains("CONSTRAINT small EXPECT (id < 3) ON VIOLATION FAIL"), "{statement}");
    let retried = engine.sql(&format!("RETRY RUN '{run_id}'")).await.unwrap_err().to_string();
    assert!(retried.contains("3 row(s) violate expectation `small`"), "{retried}");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.qr.t").await, "0", "nothing committed, twice");
}

/// Two CSV files of 12,000 data lines each (more than one 8,192-line batch), each read in two
/// byte ranges, every 97th line bad in one of five ways (some at a batch's edge): every good row
/// lands once, every bad line is in the quarantine with its file and line number, and rows in =
/// written + quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_files_with_bad_lines_load_every_good_row_once_and_keep_every_bad_line() {
    let home = tempfile::tempdir().unwrap();
    let inputs = home.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let (mut bad_lines, mut good_ids) = (Vec::new(), 0u64);
    for file in ["a.csv", "b.csv"] {
        let mut text: Vec<u8> = b"id,amount,day\n".to_vec();
        for n in 1..=12_000u64 {
            let id = if file == "a.csv" { n } else { 100_000 + n };
            let line = n + 1; // after the header
            let row: Vec<u8> = match (n % 97 == 0 || n == 8_192, n % 5) {
                (false, _) => format!("{id},{n}.5,2024-01-{:02}", n % 28 + 1).into_bytes(),
                (true, 0) => format!("{id},{n}.5").into_bytes(),
                (true, 1) => format!("{id},{n}x5,2024-01-01").into_bytes(),
                (true, 2) => format!("{id},{n}.5,2024-02-30").into_bytes(),
                (true, 3) => [format!("{id},").into_bytes(), vec![0xff], b",2024-01-01".to_vec()].concat(),
                (true, _) => format!("{id},\"{n}.5,2024-01-01").into_bytes(),
            };
            if n % 97 == 0 || n == 8_192 {
                bad_lines.push(format!("{file}:{line}"));
            } else {
                good_ids += id;
            }
            text.extend(row);
            text.push(b'\n');
        }
        std::fs::write(inputs.join(file), text).unwrap();
    }
    let engine = engine(home.path(), 3).await;
    let location = format!("{}/", inputs.display());
    // DataFusion splits each file into byte ranges (read in parallel; a line belongs to the
    // range it starts in; bad lines are numbered from the file's start all the same).
    engine
        .sql(&format!(
            "SET datafusion.optimizer.repartition_file_min_size = 1000;
             SET datafusion.execution.target_partitions = 3;
             CREATE EXTERNAL TABLE src (id BIGINT, amount DOUBLE, day DATE) STORED AS CSV LOCATION '{location}' OPTIONS ('format.has_header' 'true');
             CREATE SCHEMA lake.big;
             CREATE TABLE lake.big.t (id BIGINT, amount DOUBLE, day DATE);
             CREATE PIPELINE load WITH (bad_rows = 'quarantine') AS INSERT INTO lake.big.t SELECT * FROM src;"
        ))
        .await
        .unwrap();
    let plan = crate::support::rows(&engine, "EXPLAIN PIPELINE load").await;
    let scan = plan.iter().flatten().find(|cell| cell.contains("LineScanExec")).expect("a line scan");
    assert!(scan.contains("LineScanExec: csv, 2 file(s) in 4 ranges"), "{scan}");
    let report = engine.run_pipeline("load").await.unwrap();
    let quality = report.quality.expect("a report with counts");
    let bad = bad_lines.len() as u64;
    assert_eq!(bad, 2 * (12_000 / 97 + 1));
    assert_eq!((report.rows, quality.rows_quarantined, quality.rows_in), (24_000 - bad, bad, 24_000));
    let rows = value(&engine, "SELECT count(*) || ' ' || sum(id) || ' ' || count(DISTINCT id) FROM lake.big.t").await;
    assert_eq!(rows, format!("{} {good_ids} {}", 24_000 - bad, 24_000 - bad));
    let mut found: Vec<String> = crate::support::rows(
        &engine,
        "SELECT regexp_replace(_sluice_source_file, '.*/', '') || ':' || _sluice_source_line FROM lake.big.t__quarantine",
    )
    .await
    .into_iter()
    .map(|row| row[0].clone())
    .collect();
    found.sort();
    bad_lines.sort();
    assert_eq!(found, bad_lines);
    let errors = crate::support::rows(
        &engine,
        "SELECT regexp_replace(split_part(_sluice_error, ':', 1), '[0-9]+', 'N', 'g') AS kind, count(*)
         FROM lake.big.t__quarantine GROUP BY 1 ORDER BY 1",
    )
    .await;
    let expected = [
        ["column `amount` is FloatN", "50"],
        ["column `day` is DateN", "52"],
        ["expected N columns, found N", "48"],
        ["invalid UTF-N at byte N of the line", "48"],
        ["unterminated quoted field", "50"],
    ];
    assert_eq!(errors, expected.map(|row| row.map(String::from).to_vec()).to_vec());
}

/// A JSON array is not newline-delimited JSON: refused, naming the file, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_rows_refuses_a_json_array_naming_the_file() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("rows.json");
    std::fs::write(&file, "[\n{\"id\": 1}\n]\n").unwrap();
    let engine = engine(home.path(), 2).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE src (id BIGINT) STORED AS JSON LOCATION '{}';
             CREATE SCHEMA lake.j;
             CREATE TABLE lake.j.t (id BIGINT);",
            file.display()
        ))
        .await
        .unwrap();
    let err = engine.sql("INSERT INTO lake.j.t WITH (bad_rows = 'quarantine') SELECT * FROM src").await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("bad_rows reads newline-delimited JSON") && message.contains("rows.json"), "{message}");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.j.t").await, "0");
}

/// Quarantined rows are held in memory from the session's pool until the run's shards end: over
/// the memory limit the run fails, naming them, and nothing is committed or left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantined_rows_over_the_memory_limit_fail_the_run_and_leave_nothing() {
    let home = tempfile::tempdir().unwrap();
    let engine = Engine::builder().home(home.path()).shards(2).memory_limit(8 << 20).build().await.unwrap();
    engine.sql("CREATE SCHEMA lake.m; CREATE TABLE lake.m.t (id BIGINT, pad VARCHAR)").await.unwrap();
    let insert = "INSERT INTO lake.m.t (CONSTRAINT negative EXPECT (id < 0) ON VIOLATION QUARANTINE)
                  SELECT value, repeat('x', 200) FROM generate_series(1, 200000)";
    let err = engine.sql(insert).await.unwrap_err().to_string();
    assert!(err.contains("quarantined rows") && err.contains("failed and was rolled back"), "{err}");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.m.t").await, "0");
    assert_eq!(data_files(home.path(), "m"), 0);
    assert!(engine.sql("SELECT count(*) FROM lake.m.t__quarantine").await.is_err(), "no quarantine table was made");
}

/// A checked write's report: rows in = rows written + dropped + quarantined, and each
/// constraint's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_of_a_checked_write_adds_its_counts() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.rep; CREATE TABLE lake.rep.t (id BIGINT)").await.unwrap();
    let report = engine
        .sql(
            "INSERT INTO lake.rep.t (
               CONSTRAINT big EXPECT (id > 2) ON VIOLATION DROP ROW,
               CONSTRAINT small EXPECT (id < 5) ON VIOLATION QUARANTINE
             ) SELECT value FROM generate_series(1, 6)",
        )
        .await
        .unwrap();
    let names: Vec<String> = report[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    let cells = crate::support::cells(&report).remove(0);
    let column = |name: &str| cells[names.iter().position(|n| n == name).unwrap()].clone().unwrap();
    let counts = ["rows_in", "rows_written", "rows_dropped", "rows_quarantined"].map(column);
    assert_eq!(counts, ["6", "2", "2", "2"].map(String::from));
    assert_eq!(column("expectations"), "big: 4 passed, 2 failed (DROP ROW); small: 4 passed, 2 failed (QUARANTINE)");
}

/// A file whose "line" runs on past 64 MiB (binary, damaged) is not buffered whole: the run
/// fails naming the file and where the line starts, and nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_line_without_end_fails_the_run_instead_of_filling_memory() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("damaged.csv");
    let mut text = b"id,v\n1,a\n".to_vec();
    text.resize(text.len() + (65 << 20), b'x');
    text.extend_from_slice(b"\n2,b\n");
    std::fs::write(&file, text).unwrap();
    let engine = engine(home.path(), 2).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE src (id INT, v VARCHAR) STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');
             CREATE SCHEMA lake.long; CREATE TABLE lake.long.t (id INT, v VARCHAR);",
            file.display()
        ))
        .await
        .unwrap();
    let err = engine.sql("INSERT INTO lake.long.t WITH (bad_rows = 'quarantine') SELECT * FROM src").await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("damaged.csv: the line at byte 9 is longer than 64 MiB"), "{message}");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.long.t").await, "0");
    assert_eq!(data_files(home.path(), "long"), 0);
}

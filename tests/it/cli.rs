//! The `sluice` binary as a black box: the quickstart, output formats, exit codes and error
//! positions.

use std::path::Path;
use std::process::{Command, Output};

fn sluice(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("sluice runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn quickstart_runs_on_a_fresh_home_and_again() {
    let home = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = sluice(home.path(), &["-f", "sql/examples/quickstart.sql"]);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
        // The run report of the pipeline, then the table's rows.
        assert!(stdout.contains("| customer_totals | lake.shop.customer_totals | 4      | 5    |"), "{stdout}");
        assert!(stdout.contains("| customer-0 | 2000   | 119956.25 |"), "{stdout}");
        assert!(stdout.contains("| customer-4 | 2000   | 119881.25 |"), "{stdout}");
    }
    let runs = sluice(
        home.path(),
        &["--format", "csv", "-c", "SELECT pipeline, status, rows FROM sluice.runs WHERE pipeline IS NOT NULL"],
    );
    assert_eq!(text(&runs.stdout), "pipeline,status,rows\ncustomer_totals,succeeded,5\ncustomer_totals,succeeded,5\n");
}

#[test]
fn formats() {
    let home = tempfile::tempdir().unwrap();
    let json = sluice(home.path(), &["--format", "json", "-c", "SELECT 1 AS a, 'x' AS b"]);
    assert_eq!(text(&json.stdout).trim(), r#"[{"a":1,"b":"x"}]"#);
    let csv = sluice(home.path(), &["--format", "csv", "-c", "VALUES (1, 'a'), (2, NULL)"]);
    assert_eq!(text(&csv.stdout), "column1,column2\n1,a\n2,\n");
}

#[test]
fn a_syntax_error_reports_line_and_column_and_runs_nothing() {
    let home = tempfile::tempdir().unwrap();
    let output = sluice(home.path(), &["-c", "CREATE SCHEMA lake.never;\nSELECT 1;\n  SELEC 2;"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("syntax error at line 3, column 3"), "{stderr}");
    // Nothing ran: the schema from the first statement does not exist.
    let schemas = sluice(
        home.path(),
        &["--format", "csv", "-c", "SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 'lake'"],
    );
    assert_eq!(text(&schemas.stdout), "schema_name\n");
}

#[test]
fn the_first_failing_statement_stops_a_file_and_is_named() {
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("job.sql");
    std::fs::write(&script, "CREATE SCHEMA lake.a;\n\nINSERT INTO lake.a.missing VALUES (1);\nCREATE SCHEMA lake.b;\n")
        .unwrap();
    let output = sluice(home.path(), &["-f", script.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("job.sql: in the statement at line 3, column 1: table 'lake.a.missing' not found"),
        "{stderr}"
    );
    let schemas = sluice(
        home.path(),
        &[
            "--format",
            "csv",
            "-c",
            "SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 'lake' ORDER BY 1",
        ],
    );
    assert_eq!(text(&schemas.stdout), "schema_name\na\n");
}

#[test]
fn pipelines_persist_across_processes() {
    let home = tempfile::tempdir().unwrap();
    let create = sluice(
        home.path(),
        &[
            "-c",
            "CREATE SCHEMA lake.s; CREATE TABLE lake.s.t (id BIGINT); CREATE PIPELINE fill AS INSERT INTO lake.s.t SELECT value FROM generate_series(1, 10)",
        ],
    );
    assert!(create.status.success(), "{}", text(&create.stderr));
    let run = sluice(home.path(), &["--format", "csv", "-c", "RUN PIPELINE fill"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).starts_with("run_id,pipeline,target,shards,rows,files,bytes,snapshot_id,elapsed_ms\n"));
    let count = sluice(home.path(), &["--format", "csv", "-c", "SELECT count(*) AS n FROM lake.s.t"]);
    assert_eq!(text(&count.stdout), "n\n10\n");
}

#[test]
fn the_repl_reads_multi_line_statements_and_backslash_commands() {
    use std::io::Write;
    let home = tempfile::tempdir().unwrap();
    let mut repl = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let session = "CREATE SCHEMA lake.r;\nCREATE TABLE lake.r.t\n  (id BIGINT);\nINSERT INTO lake.r.t\nVALUES (1), (2);\n\\d\n\\?\n\\x\nSELEC 1;\nSELECT sum(id) AS total\nFROM lake.r.t;\n\\q\n";
    repl.stdin.take().unwrap().write_all(session.as_bytes()).unwrap();
    let output = repl.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let listed = stdout
        .lines()
        .any(|l| l.starts_with("| lake ") && l.contains("| r ") && l.contains("| t ") && l.contains("BASE TABLE"));
    assert!(listed, "\\d lists the table:\n{stdout}");
    assert!(stdout.contains("\\q            quit"), "\\? shows the help:\n{stdout}");
    assert!(stdout.contains("| 3     |"), "the multi-line query ran:\n{stdout}");
    assert!(stderr.contains("unknown command `\\x`"), "{stderr}");
    assert!(stderr.contains("syntax error at line 1, column 1"), "errors do not end the session:\n{stderr}");
    let history = std::fs::read_to_string(home.path().join("history.txt")).unwrap();
    assert!(history.contains("SELECT sum(id) AS total"), "{history}");
}

#[test]
fn external_tables_persist_so_pipelines_reading_them_run_in_later_processes() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let csv = data.path().join("orders.csv");
    let setup = format!(
        "COPY (SELECT value AS id, value * 2 AS amount FROM generate_series(1, 100)) TO '{csv}' STORED AS CSV;
         CREATE EXTERNAL TABLE raw_orders STORED AS CSV LOCATION '{csv}' OPTIONS ('format.has_header' 'true');
         CREATE SCHEMA lake.s; CREATE TABLE lake.s.orders (id BIGINT, amount BIGINT);
         CREATE PIPELINE load AS INSERT INTO lake.s.orders SELECT id, amount FROM raw_orders;",
        csv = csv.display()
    );
    let created = sluice(home.path(), &["-c", &setup]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    // A later process: the external table is registered again, so the pipeline runs.
    let run = sluice(
        home.path(),
        &["--format", "csv", "-c", "RUN PIPELINE load; SELECT sum(amount) AS total FROM lake.s.orders"],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).ends_with("total\n10100\n"), "{}", text(&run.stdout));
    // Dropped, it is forgotten.
    let dropped = sluice(home.path(), &["-c", "DROP TABLE raw_orders"]);
    assert!(dropped.status.success(), "{}", text(&dropped.stderr));
    let gone = sluice(home.path(), &["-c", "SELECT * FROM raw_orders"]);
    assert!(text(&gone.stderr).contains("table 'datafusion.public.raw_orders' not found"), "{}", text(&gone.stderr));
    // An external table whose file has gone does not stop later processes from starting.
    let again = sluice(
        home.path(),
        &["-c", &format!("CREATE EXTERNAL TABLE again STORED AS CSV LOCATION '{}'", csv.display())],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    std::fs::remove_file(&csv).unwrap();
    let starts = sluice(home.path(), &["--format", "csv", "-c", "SELECT 1 AS one"]);
    assert_eq!(text(&starts.stdout), "one\n1\n", "{}", text(&starts.stderr));
}

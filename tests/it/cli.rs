//! The `sluice` binary as a black box: the quickstart, output formats, exit codes, scripts from
//! stdin, backslash commands and error messages (as insta snapshots, ids and paths filtered).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sluice(home: &Path, args: &[&str]) -> Output {
    sluice_with_stdin(home, args, "")
}

/// `sluice --home HOME ARGS...` in the repository, with `stdin` piped in (not a terminal).
fn sluice_with_stdin(home: &Path, args: &[&str], stdin: &str) -> Output {
    sluice_in(Path::new(env!("CARGO_MANIFEST_DIR")), home, args, stdin)
}

/// `sluice --home HOME ARGS...` in `dir`, with `stdin` piped in.
fn sluice_in(dir: &Path, home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Exit code, stdout and stderr, for a snapshot.
fn transcript(output: &Output) -> String {
    format!(
        "exit code: {}\n--- stdout\n{}--- stderr\n{}",
        output.status.code().map_or("signal".to_string(), |c| c.to_string()),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Snapshots with run ids, snapshot ids, the home and the working directory filtered out.
fn filtered(home: &Path, check: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_escape(&home.display().to_string()), "[HOME]");
    settings.add_filter(&regex_escape(env!("CARGO_MANIFEST_DIR")), "[REPO]");
    settings.add_filter(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[RUN_ID]");
    settings.add_filter(r"\b\d{15,20}\b", "[SNAPSHOT_ID]");
    // A run report's elapsed time, in CSV.
    settings.add_filter(r"(?m)\[SNAPSHOT_ID\],\d+$", "[SNAPSHOT_ID],[ELAPSED_MS]");
    settings.add_filter(r"Time: \d+\.\d+s", "Time: [ELAPSED]");
    settings.bind(check);
}

fn regex_escape(text: &str) -> String {
    let meta = |c: char| ".*+?()[]{}|^$\\".contains(c);
    text.chars().map(|c| if meta(c) { format!("\\{c}") } else { c.to_string() }).collect()
}

/// A home with the quickstart's tables and pipeline.
fn quickstart_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let output = sluice(home.path(), &["-f", "sql/examples/quickstart.sql"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    home
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
    let two = "SELECT 1 AS a, NULL AS b UNION ALL SELECT 2, 'y' ORDER BY a; SELECT 'x' AS c";
    let json = sluice(home.path(), &["--format", "json", "-c", two]);
    let document: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON document");
    assert_eq!(document, serde_json::json!([{"a": 1, "b": null}, {"a": 2, "b": "y"}, {"c": "x"}]));
    let empty = sluice(home.path(), &["--format", "json", "-c", "CREATE SCHEMA lake.nothing_to_print"]);
    assert_eq!(text(&empty.stdout), "[]\n");
    let jsonl = sluice(home.path(), &["--format", "jsonl", "-c", two]);
    let csv = sluice(home.path(), &["--format", "csv", "-c", "VALUES (1, 'a'), (2, NULL)"]);
    let tsv = sluice(home.path(), &["--format", "tsv", "-c", "VALUES (1, 'a'), (2, NULL)"]);
    insta::assert_snapshot!(
        "formats",
        format!(
            "--- json\n{}--- jsonl\n{}--- csv\n{}--- tsv\n{}",
            text(&json.stdout),
            text(&jsonl.stdout),
            text(&csv.stdout),
            text(&tsv.stdout)
        )
    );
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
        stderr.contains("job.sql: in the statement at line 3, column 1: table `lake.a.missing` does not exist"),
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
    assert!(text(&gone.stderr).contains("table `raw_orders` does not exist"), "{}", text(&gone.stderr));
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

#[test]
fn sql_piped_into_stdin_runs_as_a_script_and_its_first_error_stops_it() {
    let home = tempfile::tempdir().unwrap();
    let syntax = sluice_with_stdin(home.path(), &[], "SELECT 42; SELEC 1;");
    let failing = sluice_with_stdin(home.path(), &[], "SELECT 42 AS answer;\nSELECT * FROM nosuch;\nSELECT 43;\n");
    let dash = sluice_with_stdin(home.path(), &["-f", "-"], "SELECT 'dash' AS via;");
    assert_eq!(syntax.status.code(), Some(1), "a cron job learns that it failed");
    filtered(home.path(), || {
        insta::assert_snapshot!(
            "piped_stdin",
            format!("{}\n{}\n{}", transcript(&syntax), transcript(&failing), transcript(&dash))
        )
    });
}

#[test]
fn backslash_commands_and_script_files_run_from_the_command_line() {
    let home = tempfile::tempdir().unwrap();
    let setup = home.path().join("setup.sql");
    std::fs::write(
        &setup,
        "CREATE SCHEMA lake.i;\nCREATE TABLE lake.i.t (id BIGINT);\nINSERT INTO lake.i.t SELECT value FROM generate_series(1, 100);\n",
    )
    .unwrap();
    let broken = home.path().join("broken.sql");
    std::fs::write(&broken, "SELECT 1 AS one;\n\nSELECT nope FROM lake.i.t;\n").unwrap();
    let count = home.path().join("count.sql");
    std::fs::write(&count, "SELECT count(*) AS n FROM lake.i.t;\n").unwrap();
    let include = sluice(
        home.path(),
        &[
            "--format",
            "csv",
            "-c",
            &format!("\\i {}", setup.display()),
            "-c",
            "\\pset format table",
            "-c",
            "\\d lake.i.t",
        ],
    );
    let maxrows = sluice(
        home.path(),
        &["-c", "\\pset maxrows 3", "-c", "\\timing on", "-c", "SELECT id FROM lake.i.t ORDER BY id"],
    );
    let unlimited = sluice(home.path(), &["--format", "csv", "-c", "SELECT id FROM lake.i.t"]);
    assert_eq!(text(&unlimited.stdout).lines().count(), 101, "no row limit outside the REPL's tables");
    let failing_include = sluice(home.path(), &["-c", &format!("\\i {}", broken.display())]);
    let positional = sluice(home.path(), &["--format", "csv", count.to_str().unwrap()]);
    let unknown = sluice(home.path(), &["-c", "\\x"]);
    let report = [include, maxrows, failing_include, positional, unknown].iter().map(transcript).collect::<Vec<_>>();
    filtered(home.path(), || insta::assert_snapshot!("backslash_commands", report.join("\n")));
}

#[test]
fn error_messages_name_the_problem_and_where_it_is() {
    let home = quickstart_home();
    let created = sluice(home.path(), &["-c", "CREATE TABLE lake.shop.nn (id BIGINT NOT NULL, name VARCHAR)"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let statements = [
        "SELECT 'abc",
        "SELECT 1 /* never closed",
        "SELECT custmer FROM lake.shop.orders",
        "SELECT *\nFROM lake.shop.orders\nWHERE nosuch > 1",
        "SELECT * FROM lake.shop.ordrs",
        "SELECT * FROM ordrs",
        "SELECT * FROM lakee.shop.orders",
        "SELECT * FROM 'nosuch.csv'",
        "RUN PIPELINE customer_total",
        "INSERT INTO lake.shop.nn VALUES (NULL, 'a')",
        "INSERT INTO lake.shop.nn SELECT NULL, 'a'",
        "INSERT INTO lake.shop.nn VALUES (1, 'a', 3)",
        "INSERT INTO lake.shop.nn VALUES (1, 'a'),\n  ('x', 'b')",
        "DROP TABLE lake.shop.customer_totals",
        "EXPLAIN ANALYZE INSERT INTO lake.shop.nn VALUES (1, 'a')",
        "SELECT * FROM lake.shop.\"orders$history\"",
        "\\pset maxrows many",
    ];
    let mut report = String::new();
    for sql in statements {
        let output = sluice(home.path(), &["-c", sql]);
        assert_eq!(output.status.code(), Some(1), "{sql} fails");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one message per failure, no log line: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {stderr}");
        report.push_str(&format!("> {sql}\n{stderr}\n"));
    }
    // Catalogs: a missing folder, a bad key, a pipeline whose catalog is not loaded.
    let missing = sluice(home.path(), &["--catalogs", "nosuchdir", "-c", "SELECT 1"]);
    let extra = home.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("other.toml"), "type = \"delta\"\nroot = 5\n").unwrap();
    let bad_key = sluice(home.path(), &["--catalogs", extra.to_str().unwrap(), "-c", "SELECT 1"]);
    std::fs::write(extra.join("other.toml"), "type = \"delta\"\nroot = \"other\"\n").unwrap();
    let extra_arg = extra.to_str().unwrap();
    let created = sluice(
        home.path(),
        &[
            "--catalogs",
            extra_arg,
            "-c",
            "CREATE SCHEMA other.s; CREATE TABLE other.s.t (id BIGINT); CREATE PIPELINE elsewhere AS INSERT INTO other.s.t VALUES (1)",
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let not_loaded = sluice(home.path(), &["-c", "RUN PIPELINE elsewhere"]);
    for output in [&missing, &bad_key, &not_loaded] {
        assert_eq!(output.status.code(), Some(1));
        report.push_str(&format!("{}\n", text(&output.stderr)));
    }
    filtered(home.path(), || insta::assert_snapshot!("error_messages", report));
}

#[test]
fn describe_show_create_and_explain_say_what_a_table_and_a_write_are() {
    let home = tempfile::tempdir().unwrap();
    let setup = "CREATE SCHEMA lake.d;
        CREATE TABLE lake.d.events (id BIGINT NOT NULL, kind VARCHAR, at TIMESTAMP) PARTITIONED BY (day(at), bucket(4, id));
        INSERT INTO lake.d.events VALUES (1, 'a', TIMESTAMP '2026-01-01 10:00:00'), (2, 'b', TIMESTAMP '2026-01-02 10:00:00');
        CREATE PIPELINE copy_events AS INSERT INTO lake.d.events SELECT id + 10, kind, at FROM lake.d.events;";
    let created = sluice(home.path(), &["-c", setup]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let shown = sluice(
        home.path(),
        &[
            "--shards",
            "2",
            "-c",
            "\\d events",
            "-c",
            "SHOW CREATE TABLE lake.d.events",
            "-c",
            "EXPLAIN RUN PIPELINE copy_events",
            "-c",
            "EXPLAIN INSERT OVERWRITE lake.d.events SELECT * FROM lake.d.events WHERE id > 1",
            "-c",
            "SELECT partition, record_count, file_count FROM lake.d.\"events$partitions\" ORDER BY 1",
            "-c",
            "SELECT count(*) AS files, sum(record_count) AS rows FROM lake.d.\"events$files\"",
            "-c",
            "EXPLAIN CREATE TABLE lake.d.copy AS SELECT id, kind FROM lake.d.events",
            "-c",
            "DROP TABLE lake.d.events CASCADE",
            "-c",
            "SHOW PIPELINES",
        ],
    );
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    // SHOW CREATE TABLE reads back: the statement makes the same table elsewhere.
    let statement = text(&shown.stdout);
    let create = statement.split("CREATE TABLE lake.d.events").nth(1).unwrap();
    assert!(create.contains("PARTITIONED BY (day(at), bucket(4, id))"), "{statement}");
    filtered(home.path(), || insta::assert_snapshot!("describe_and_explain", text(&shown.stdout)));
}

/// The `sql` blocks of the README's tour, in order, and its Delta catalog file.
fn readme_tour() -> (String, String) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## A five-minute tour").expect("the tour");
    let end = start + readme[start..].find("\n### ").expect("the section after the tour");
    let (mut sql, mut toml) = (String::new(), String::new());
    for block in readme[start..end].split("```").skip(1).step_by(2) {
        let (language, body) = block.split_once('\n').unwrap();
        match language {
            "sql" => sql.push_str(body),
            "toml" => toml.push_str(body),
            _ => {}
        }
    }
    (sql, toml)
}

#[test]
fn the_readme_tour_runs_on_a_fresh_home_and_after_the_quickstart() {
    let (sql, toml) = readme_tour();
    assert!(sql.contains("RUN PIPELINE daily") && toml.contains("type = \"delta\""), "the tour was found");
    for home in [tempfile::tempdir().unwrap(), quickstart_home()] {
        std::fs::create_dir_all(home.path().join("catalogs")).unwrap();
        std::fs::write(home.path().join("catalogs/delta.toml"), &toml).unwrap();
        let work = tempfile::tempdir().unwrap(); // where `COPY ... TO 'revenue.csv'` writes
        let output = sluice_in(work.path(), home.path(), &[], &sql);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).contains("delta.shop.daily"), "{}", text(&output.stdout));
    }
}

#[test]
fn a_pipeline_with_steps_prints_one_line_per_step_transition_when_stderr_is_not_a_terminal() {
    let home = tempfile::tempdir().unwrap();
    let setup = "CREATE SCHEMA lake.pg; CREATE TABLE lake.pg.a (id BIGINT); CREATE TABLE lake.pg.b (id BIGINT); CREATE TABLE lake.pg.c (id BIGINT);
        CREATE PIPELINE nightly WITH (max_parallel_steps = 1) AS BEGIN
          INSERT INTO lake.pg.a SELECT value FROM generate_series(1, 10);
          STEP copy AS INSERT INTO lake.pg.b SELECT id * 2 FROM lake.pg.a;
          STEP broken DEPENDS ON (copy) AS INSERT INTO lake.pg.c SELECT CAST('x' || id AS BIGINT) FROM lake.pg.a;
        END;";
    let created = sluice(home.path(), &["-c", setup]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let run = sluice(home.path(), &["--format", "csv", "-c", "RUN PIPELINE nightly"]);
    let quiet = sluice(home.path(), &["--quiet", "-c", "RUN PIPELINE nightly"]);
    assert!(!text(&quiet.stderr).contains("running"), "--quiet shows no progress: {}", text(&quiet.stderr));
    filtered(home.path(), || {
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(r"in \d+\.\d+s", "in [ELAPSED]");
        settings.add_filter(r"shard \d+:", "shard [N]:");
        settings.bind(|| insta::assert_snapshot!("step_progress", text(&run.stderr)));
    });
}

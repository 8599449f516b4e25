//! What an adversarial campaign found, each kept from coming back: names that become paths,
//! deletes that reach other tables, exports over the home's own files, runaway queries, a
//! damaged file that locks users out of everything, and litter left by lost races.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sluice::coordinator::Resolution;
use sluice::ledger::NewRun;

use crate::support::{files_under, lake, rows, table, value};

async fn engine_with_delta(home: &Path, delta_root: &Path) -> Engine {
    let delta = DeltaConfig { root: delta_root.display().to_string(), ..Default::default() };
    Engine::builder().home(home).catalog("delta", CatalogConfig::Delta(delta)).shards(2).build().await.unwrap()
}

/// Schemas `lake.s` and `delta.s`, each with `<table>` holding one row.
async fn one_row_in_each_catalog(engine: &Engine, table: &str) {
    let sql = ["lake", "delta"].map(|c| {
        format!("CREATE SCHEMA {c}.s; CREATE TABLE {c}.s.{table} (id BIGINT); INSERT INTO {c}.s.{table} VALUES (1);")
    });
    engine.sql(&sql.concat()).await.unwrap();
}

/// `sql` must fail, with a message containing `expected`.
async fn refused(engine: &Engine, sql: &str, expected: &str) {
    let error = engine.sql(sql).await.expect_err(sql).to_string();
    assert!(error.contains(expected), "{sql}: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_table_names_never_reach_outside_the_warehouse_or_root() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("h");
    let engine = engine_with_delta(&home, &home.join("delta")).await;
    one_row_in_each_catalog(&engine, "sibling").await;
    // A table of another home, two levels up from this one's Delta schema.
    let other = engine_with_delta(&base.path().join("other/h"), &base.path().join("other/h/delta")).await;
    other
        .sql(
            "CREATE SCHEMA delta.o; CREATE TABLE delta.o.precious (id BIGINT); INSERT INTO delta.o.precious VALUES (7)",
        )
        .await
        .unwrap();
    let before = files_under(base.path());

    for catalog in ["lake", "delta"] {
        for name in [".", "..", "../../escaped", "/abs/path", "a/b", " padded", "tab\tname"] {
            let quoted = name.replace('"', "\"\"");
            refused(&engine, &format!("CREATE TABLE {catalog}.s.\"{quoted}\" (id BIGINT)"), "is not allowed").await;
            refused(&engine, &format!("CREATE TABLE {catalog}.s.\"{quoted}\" AS SELECT 1 AS id"), "is not allowed")
                .await;
            refused(&engine, &format!("DROP TABLE {catalog}.s.\"{quoted}\""), "is not allowed").await;
        }
        refused(&engine, &format!("DROP TABLE {catalog}.s.\"../../../other/h/delta/o/precious\""), "is not allowed")
            .await;
        refused(&engine, &format!("SELECT * FROM {catalog}.s.\"../../../other/h/delta/o/precious\""), "is not allowed")
            .await;
    }
    assert_eq!(files_under(base.path()), before, "nothing was created or deleted anywhere");
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.s.sibling").await, "1");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.s.sibling").await, "1");
    assert_eq!(value(&other, "SELECT sum(id) FROM delta.o.precious").await, "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_name_with_a_dot_is_refused_and_never_half_created() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine_with_delta(home.path(), &home.path().join("delta")).await;
    for catalog in ["lake", "delta"] {
        for name in ["a.b", ".", "..", "x/y"] {
            refused(&engine, &format!("CREATE SCHEMA {catalog}.\"{name}\""), "is not allowed").await;
        }
    }
    // Every later command works, and nothing was left behind.
    engine
        .sql("CREATE SCHEMA lake.ok; CREATE TABLE lake.ok.t (id BIGINT); INSERT INTO lake.ok.t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(rows(&engine, "SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 'lake' AND schema_name <> 'information_schema'").await, [["ok"]]);
    assert!(files_under(&home.path().join("delta")).is_empty());

    // A dotted namespace made by an older version (or another tool) costs only itself, and can be dropped.
    let namespace = iceberg::NamespaceIdent::new("a.b".to_string());
    lake(&engine).iceberg().create_namespace(&namespace, Default::default()).await.unwrap();
    let later = crate::support::engine(home.path(), 2).await;
    assert_eq!(value(&later, "SELECT count(*) FROM lake.ok.t").await, "1");
    later.sql("SHOW TABLES").await.unwrap();
    later.sql("DROP SCHEMA lake.\"a.b\"").await.unwrap();
    assert!(!lake(&later).iceberg().namespace_exists(&namespace).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_refuses_to_overwrite_the_ledger_or_any_table() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("h");
    let engine = engine_with_delta(&home, &base.path().join("delta")).await;
    one_row_in_each_catalog(&engine, "t").await;
    engine.close().await.unwrap();
    let link = base.path().join("link-to-home");
    std::os::unix::fs::symlink(&home, &link).unwrap();
    let before: Vec<_> = files_under(base.path()).into_iter().map(|f| (std::fs::read(&f).unwrap(), f)).collect();
    let targets = [
        format!("{}/../h/ledger.db", home.display()),
        format!("{}/ledger.db", link.display()),
        format!("{}/warehouse/s/t/metadata/x.csv", home.display()),
        format!("{}/s/t/_delta_log/x.json", base.path().join("delta").display()),
        format!("{}/warehouse/s/t/", home.display()),
        format!("{}/", base.path().display()),
    ];
    for target in &targets {
        for stored in ["CSV", "PARQUET"] {
            refused(&engine, &format!("COPY (SELECT 42 AS a) TO '{target}' STORED AS {stored}"), "refused").await;
        }
    }
    let after: Vec<_> = files_under(base.path()).into_iter().map(|f| (std::fs::read(&f).unwrap(), f)).collect();
    assert!(after == before, "no file was written or changed");
    assert_eq!(value(&engine, "SELECT count(*) FROM sluice.runs").await, "2", "the ledger is whole");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.s.t").await, "1");
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.s.t").await, "1");
    // Outside the home and the tables, exports work as before.
    let out = base.path().join("exports/out.csv");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    engine.sql(&format!("COPY (SELECT 42 AS a) TO '{}'", out.display())).await.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\n42\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_series_at_the_end_of_the_integer_range_ends_and_a_future_version_fails_at_once() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine_with_delta(home.path(), &home.path().join("delta")).await;
    let bounded = |sql: &'static str| {
        let engine = &engine;
        async move { tokio::time::timeout(Duration::from_secs(20), engine.sql(sql)).await.expect("answers at once") }
    };
    let max = bounded(
        "SELECT count(*), min(value), max(value) FROM generate_series(9223372036854775806, 9223372036854775807)",
    );
    let max = crate::support::cells(&max.await.unwrap());
    assert_eq!(max, [[Some("2".into()), Some("9223372036854775806".into()), Some("9223372036854775807".into())]]);
    let min = bounded("SELECT count(*) FROM generate_series(-9223372036854775807, -9223372036854775808, -1)");
    assert_eq!(crate::support::cells(&min.await.unwrap()), [[Some("2".into())]]);
    let range = bounded("SELECT count(*) FROM range(9223372036854775800, 9223372036854775807, 3)");
    assert_eq!(crate::support::cells(&range.await.unwrap()), [[Some("3".into())]]);

    engine
        .sql("CREATE SCHEMA delta.f; CREATE TABLE delta.f.c (id BIGINT); INSERT INTO delta.f.c VALUES (1)")
        .await
        .unwrap();
    for version in ["9223372036854775807", "100000000", "2"] {
        let sql = format!("SELECT count(*) FROM delta.f.\"c@{version}\"");
        let error = tokio::time::timeout(Duration::from_secs(20), engine.sql(&sql)).await.expect("answers at once");
        let error = error.expect_err("no such version").to_string();
        assert!(error.contains(&format!("has no version {version}: the latest is 1")), "{error}");
    }
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.f.\"c@1\"").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_partition_column_is_refused_and_leaves_no_table() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine_with_delta(home.path(), &home.path().join("delta")).await;
    engine.sql("CREATE SCHEMA lake.s; CREATE SCHEMA delta.s").await.unwrap();
    for catalog in ["lake", "delta"] {
        for _ in 0..3 {
            let sql = format!("CREATE TABLE {catalog}.s.t (id BIGINT) PARTITIONED BY (id, id)");
            refused(&engine, &sql, "cannot partition by `id`: it appears twice in PARTITIONED BY").await;
        }
        refused(&engine, &format!("SELECT * FROM {catalog}.s.t"), "does not exist").await;
        engine.sql(&format!("CREATE TABLE {catalog}.s.t (id BIGINT) PARTITIONED BY (id)")).await.unwrap();
    }
    assert!(files_under(&home.path().join("delta/s")).iter().all(|f| f.starts_with(home.path().join("delta/s/t"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_ledger_leaves_tables_readable_and_writable() {
    let home = tempfile::tempdir().unwrap();
    {
        let engine = crate::support::engine(home.path(), 2).await;
        engine
            .sql(
                "CREATE SCHEMA lake.s; CREATE TABLE lake.s.t (id BIGINT);
                 CREATE PIPELINE fill AS INSERT INTO lake.s.t SELECT value FROM generate_series(1, 1000);",
            )
            .await
            .unwrap();
        for _ in 0..20 {
            engine.run_pipeline("fill").await.unwrap();
        }
        engine.close().await.unwrap();
    }
    let ledger = home.path().join("ledger.db");
    assert!(
        !home.path().join("ledger.db-wal").exists()
            || std::fs::metadata(home.path().join("ledger.db-wal")).unwrap().len() == 0,
        "close checkpoints the ledger"
    );
    let size = std::fs::metadata(&ledger).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&ledger).unwrap().set_len(size / 2).unwrap();

    let engine = crate::support::engine(home.path(), 2).await;
    assert!(
        engine.ledger_damage().is_some_and(|d| d.contains(&ledger.display().to_string())),
        "{:?}",
        engine.ledger_damage()
    );
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.s.t").await, "20000");
    engine.sql("INSERT INTO lake.s.t VALUES (0)").await.unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.s.t").await, "20001");
    for sql in ["RUN PIPELINE fill", "SHOW PIPELINES", "SHOW RUNS", "SELECT * FROM sluice.runs"] {
        let error = engine.sql(sql).await.expect_err(sql).to_string();
        assert!(error.contains(&ledger.display().to_string()) && error.contains("sluice doctor"), "{sql}: {error}");
    }
    let findings = engine.doctor().await;
    let problems: Vec<_> = findings.iter().filter(|f| f.problem.is_some()).map(|f| f.kind).collect();
    assert_eq!(problems, ["ledger"], "{findings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_with_deleted_metadata_breaks_only_itself_and_can_be_dropped() {
    let home = tempfile::tempdir().unwrap();
    let engine = crate::support::engine(home.path(), 2).await;
    engine
        .sql(
            "CREATE SCHEMA lake.s; CREATE TABLE lake.s.broken (id BIGINT); INSERT INTO lake.s.broken VALUES (1);
             CREATE TABLE lake.s.fine (id BIGINT); INSERT INTO lake.s.fine VALUES (2);",
        )
        .await
        .unwrap();
    let broken = table(&engine, "s", "broken").await;
    let metadata = broken.metadata_location().unwrap().strip_prefix("file://").unwrap().to_string();
    std::fs::remove_file(&metadata).unwrap();

    assert_eq!(
        rows(&engine, "SELECT table_name FROM information_schema.tables WHERE table_schema = 's' ORDER BY 1").await,
        [["broken"], ["fine"]]
    );
    engine.sql("SHOW TABLES").await.unwrap();
    assert_eq!(value(&engine, "SELECT sum(id) FROM lake.s.fine").await, "2");
    engine.sql("SELECT * FROM lake.s.broken").await.expect_err("its metadata is gone");
    let findings = engine.doctor().await;
    let problems: Vec<_> = findings.iter().filter(|f| f.problem.is_some()).map(|f| f.object.as_str()).collect();
    assert_eq!(problems, ["lake.s.broken"], "{findings:?}");

    engine.sql("DROP TABLE lake.s.broken").await.unwrap();
    assert!(!home.path().join("warehouse/s/broken").exists(), "its own folder is gone");
    engine.sql("CREATE TABLE lake.s.broken (id BIGINT); INSERT INTO lake.s.broken VALUES (3)").await.unwrap();
    assert_eq!(value(&engine, "SELECT sum(id) FROM lake.s.broken").await, "3");
    assert_eq!(value(&engine, "SELECT sum(id) FROM lake.s.fine").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_that_lose_a_race_leave_no_unreferenced_metadata() {
    let home = tempfile::tempdir().unwrap();
    let engine = crate::support::engine(home.path(), 1).await;
    engine
        .sql("CREATE SCHEMA lake.s; CREATE TABLE lake.s.t (id BIGINT); INSERT INTO lake.s.t VALUES (0)")
        .await
        .unwrap();
    // Separate engines race for the same metadata pointer: appends, and overwrites that lose.
    let mut writers = Vec::new();
    for i in 1..=12 {
        let racer = Engine::builder().home(home.path()).shards(1).recover_on_start(false).build().await.unwrap();
        writers.push(tokio::spawn(async move {
            let (append, sql) = match i % 4 {
                0 => (false, format!("INSERT OVERWRITE lake.s.t SELECT value FROM generate_series(1, {i})")),
                _ => (true, format!("INSERT INTO lake.s.t VALUES ({i})")),
            };
            (append, racer.sql(&sql).await.map_err(|e| e.to_string()))
        }));
    }
    for writer in writers {
        let (append, result) = writer.await.unwrap();
        if append {
            result.expect("every append lands, retried when it loses the race");
        }
    }
    let table = table(&engine, "s", "t").await;
    let on_disk: BTreeSet<String> =
        files_under(&home.path().join("warehouse/s/t/metadata")).into_iter().map(|f| f.display().to_string()).collect();
    let referenced = crate::support::referenced_files(&table).await;
    let unreferenced: Vec<_> = on_disk.difference(&referenced).collect();
    assert!(unreferenced.is_empty(), "unreferenced metadata: {unreferenced:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recover_says_which_runs_are_still_leased_and_until_when() {
    let home = tempfile::tempdir().unwrap();
    let engine = crate::support::engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.s; CREATE TABLE lake.s.t (id BIGINT)").await.unwrap();
    let until = sluice::clock::Clock::now_ms(&sluice::clock::SystemClock) + 3_600_000;
    let run = NewRun {
        run_id: "01900000-0000-7000-8000-000000000001",
        pipeline: None,
        target: "lake.s.t",
        shards: 1,
        statement: "INSERT INTO lake.s.t VALUES (1)",
        base: None,
        lease_until_ms: until,
    };
    engine.ledger().open_run(&run).await.unwrap();
    let settled = engine.recover().await.unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!((settled[0].0.run_id.as_str(), settled[0].1), (run.run_id, Resolution::StillRunning));
    engine.close().await.unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home.path())
        .args(["--format", "csv", "recover"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected_until = datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime(until).unwrap();
    assert!(stdout.contains(run.run_id) && stdout.contains("still running"), "{stdout}");
    assert!(stdout.contains(&expected_until.format("%Y-%m-%d %H:%M:%S").to_string()), "{stdout}");
}

#[test]
fn doctor_exits_non_zero_and_names_what_is_wrong() {
    let home = tempfile::tempdir().unwrap();
    let sluice = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice")).arg("--home").arg(home.path()).args(args).output().unwrap()
    };
    let healthy = sluice(&["--format", "csv", "doctor"]);
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    assert!(
        String::from_utf8_lossy(&healthy.stdout).contains("ledger,"),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    std::fs::write(home.path().join("ledger.db"), b"SQLite format 3\0 and then nothing of use").unwrap();
    let damaged = sluice(&["--format", "csv", "doctor"]);
    assert!(!damaged.status.success());
    let stdout = String::from_utf8_lossy(&damaged.stdout);
    assert!(stdout.contains("ledger.db,problem,"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&damaged.stderr).contains("1 problem"),
        "{}",
        String::from_utf8_lossy(&damaged.stderr)
    );
}

/// A tmpfs of `megabytes` mounted at `dir` while it lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where this machine does not let the tests mount one (not root, no namespace).
    fn mount(dir: &Path, megabytes: u32) -> Option<Self> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        mounted.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_write_that_fills_the_disk_leaves_no_data_file_behind() {
    let home = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(disk.path(), 8) else {
        eprintln!("skipped: this machine cannot mount a tmpfs (the test needs root)");
        return;
    };
    let root = disk.path().join("delta");
    let delta = DeltaConfig { root: root.display().to_string(), ..Default::default() };
    let engine = Engine::builder()
        .home(home.path())
        .catalog("delta", CatalogConfig::Delta(delta))
        .shards(4)
        .build()
        .await
        .unwrap();
    engine.sql("CREATE SCHEMA delta.s; CREATE TABLE delta.s.t (id BIGINT, payload VARCHAR)").await.unwrap();
    let table_dir = root.join("s/t");
    for attempt in 0..4 {
        let error = engine
            .sql(
                "INSERT INTO delta.s.t SELECT value, md5(CAST(value AS VARCHAR)) || md5(CAST(-value AS VARCHAR))
                 FROM generate_series(1, 400000)",
            )
            .await
            .expect_err("the disk is full")
            .to_string();
        assert!(error.contains("No space left on device"), "attempt {attempt}: {error}");
        let left: Vec<_> =
            files_under(&table_dir).into_iter().filter(|f| !f.starts_with(table_dir.join("_delta_log"))).collect();
        assert!(left.is_empty(), "attempt {attempt} left {left:?}");
    }
    assert_eq!(value(&engine, "SELECT count(*) FROM delta.s.t").await, "0");
    let runs = engine.ledger().runs(None).await.unwrap();
    for run in runs.iter().filter(|r| r.status == sluice::ledger::RunStatus::Failed) {
        assert!(engine.ledger().staged_files(&run.run_id).await.unwrap().is_empty(), "every staged file is deleted");
    }
    // Recovery checks the deleted files once more; nothing is left for it either.
    engine.recover().await.unwrap();
    let left: Vec<_> =
        files_under(&table_dir).into_iter().filter(|f| !f.starts_with(table_dir.join("_delta_log"))).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A name as a user might write it: unquoted, or quoted with anything inside.
fn identifier() -> impl proptest::strategy::Strategy<Value = (String, String)> {
    use proptest::prelude::*;
    let unquoted = "[a-z_][a-z0-9_]{0,8}".prop_map(|name| (name.clone(), name));
    let quoted = prop_oneof![
        Just(".".to_string()),
        Just("..".to_string()),
        "[a-zA-Z0-9 ._/\\\\\"'@$%\t-]{0,14}",
        "(\\.\\./){1,4}[a-z]{1,6}",
    ]
    .prop_map(|name| (format!("\"{}\"", name.replace('"', "\"\"")), name));
    prop_oneof![unquoted, quoted]
}

/// Every file under the folders tables live in, with its size.
fn lake_files(dirs: &[&Path]) -> BTreeSet<(PathBuf, u64)> {
    dirs.iter()
        .flat_map(|dir| files_under(dir))
        .map(|f| {
            let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            (f, size)
        })
        .collect()
}

#[test]
fn random_table_names_stay_under_their_root_and_drop_deletes_only_their_table() {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("h");
    let (warehouse, root, outside) = (home.join("warehouse"), base.path().join("delta"), base.path().join("outside"));
    std::fs::create_dir_all(outside.join("x/y")).unwrap();
    std::fs::write(outside.join("x/y/precious.txt"), "keep").unwrap();
    let engine = runtime.block_on(async {
        let engine = engine_with_delta(&home, &root).await;
        one_row_in_each_catalog(&engine, "keep").await;
        engine
    });
    let mut runner = TestRunner::new(Config { cases: 40, failure_persistence: None, ..Config::default() });
    runner
        .run(&(identifier(), proptest::bool::ANY), |((written, name), iceberg)| {
            let (catalog, catalog_root) = if iceberg { ("lake", &warehouse) } else { ("delta", &root) };
            let before = lake_files(&[&warehouse, &root, &outside]);
            let created = runtime.block_on(engine.sql(&format!("CREATE TABLE {catalog}.s.{written} (id BIGINT)")));
            if created.is_err() {
                assert_eq!(
                    lake_files(&[&warehouse, &root, &outside]),
                    before,
                    "a refused CREATE of {written} wrote nothing"
                );
                return Ok(());
            }
            let table_dir = catalog_root.join("s").join(&name);
            assert!(
                sluice::paths::is_inside(
                    &catalog_root.join("s").display().to_string(),
                    &table_dir.display().to_string()
                ),
                "{written}: {}",
                table_dir.display()
            );
            assert!(table_dir.is_dir(), "{written}: the table lives in {}", table_dir.display());
            runtime.block_on(engine.sql(&format!("INSERT INTO {catalog}.s.{written} VALUES (1)"))).unwrap();
            assert!(files_under(&table_dir).iter().all(|f| f.starts_with(&table_dir)));
            runtime.block_on(engine.sql(&format!("DROP TABLE {catalog}.s.{written}"))).unwrap();
            assert!(!table_dir.exists(), "{written}: DROP deletes the table's folder");
            assert_eq!(lake_files(&[&warehouse, &root, &outside]), before, "{written}: DROP deleted only its table");
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        assert_eq!(value(&engine, "SELECT count(*) FROM lake.s.keep").await, "1");
        assert_eq!(value(&engine, "SELECT count(*) FROM delta.s.keep").await, "1");
    });
    assert_eq!(std::fs::read_to_string(outside.join("x/y/precious.txt")).unwrap(), "keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_deletes_again_a_file_that_came_back_after_its_rollback() {
    let home = tempfile::tempdir().unwrap();
    let engine = crate::support::engine(home.path(), 2).await;
    engine
        .sql("CREATE SCHEMA lake.v; CREATE TABLE lake.v.t (id BIGINT); CREATE TABLE lake.v.gone (id BIGINT)")
        .await
        .unwrap();
    for table in ["t", "gone"] {
        let failpoint = format!("before-commit/lake.v.{table}");
        fail::cfg(&failpoint, "return").unwrap();
        let sql = format!("INSERT INTO lake.v.{table} SELECT value FROM generate_series(1, 1000)");
        engine.sql(&sql).await.expect_err("the fault fails the run");
        fail::remove(&failpoint);
    }
    let deleted = engine.ledger().unverified_deletions().await.unwrap();
    assert_eq!(
        deleted.iter().map(|(_, target, _)| target.as_str()).collect::<BTreeSet<_>>(),
        ["lake.v.gone", "lake.v.t"].into()
    );
    // A write that outlived its run puts one of the files back; the other table is dropped.
    let (_, _, came_back) = deleted.iter().find(|(_, target, _)| target == "lake.v.t").unwrap();
    let came_back = PathBuf::from(came_back.strip_prefix("file://").unwrap());
    std::fs::write(&came_back, b"PAR1 late").unwrap();
    engine.sql("DROP TABLE lake.v.gone").await.unwrap();

    engine.recover().await.unwrap();
    assert!(!came_back.exists(), "recovery deleted {} again", came_back.display());
    assert!(
        engine.ledger().unverified_deletions().await.unwrap().is_empty(),
        "every deletion is verified, the dropped table's too"
    );
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.v.t").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_that_cannot_be_opened_but_is_not_damaged_stops_the_engine() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("ledger.db")).unwrap();
    let error = Engine::builder().home(home.path()).build().await.expect_err("no ledger, no engine").to_string();
    assert!(error.contains("cannot open the run ledger") && error.contains("ledger.db"), "{error}");
}

//! Runs on a DataFusion Ballista cluster: a real scheduler and executors, started as
//! `sluice cluster ...` child processes on loopback ports.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A scheduler and its executors, stopped when dropped.
pub struct Cluster {
    scheduler: Child,
    executors: Vec<Child>,
    /// `df://127.0.0.1:<port>`.
    pub url: String,
    /// Each executor's Flight address, `127.0.0.1:<port>`, as it registers.
    pub executor_addresses: Vec<String>,
}

/// A loopback port nobody listens on now (and the one after it, for an executor's gRPC).
fn free_ports() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn wait_for(port: u16, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Starts a scheduler and `executors` executors of `slots` task slots each, and waits until
    /// every executor has registered.
    pub fn start(executors: usize, slots: usize) -> Self {
        Self::start_with(executors, slots, &[])
    }

    /// As [`Cluster::start`], executor `i` of each `(i, variable, value)` with the variable set.
    pub fn start_with(executors: usize, slots: usize, env: &[(usize, &str, &str)]) -> Self {
        let sluice = env!("CARGO_BIN_EXE_sluice");
        let port = free_ports();
        let scheduler = Command::new(sluice)
            .args(["cluster", "scheduler", "--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(port, "the scheduler");
        let mut cluster =
            Cluster { scheduler, executors: vec![], url: format!("df://127.0.0.1:{port}"), executor_addresses: vec![] };
        for i in 0..executors {
            let flight = free_ports();
            let variables = env.iter().filter(|(executor, ..)| *executor == i);
            let child = Command::new(sluice)
                .args(["cluster", "executor", "--scheduler", &cluster.url, "--slots", &slots.to_string()])
                .args(["--bind", &format!("127.0.0.1:{flight}")])
                .envs(variables.map(|(_, variable, value)| (*variable, *value)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            cluster.executors.push(child);
            wait_for(flight, "an executor");
            cluster.executor_addresses.push(format!("127.0.0.1:{flight}"));
        }
        let started = Instant::now();
        while Self::registered(&cluster.url) < executors {
            assert!(started.elapsed() < Duration::from_secs(30), "the executors did not register");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// How many of the scheduler's jobs are queued or running.
    pub async fn live_jobs(&self) -> usize {
        let jobs = format!("{}/api/jobs", self.url.replace("df://", "http://"));
        let listed = reqwest::get(&jobs).await.unwrap().text().await.unwrap();
        let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        listed.iter().filter(|job| job["status"] == "Running" || job["status"] == "Queued").count()
    }

    /// Kills executor `i` (SIGKILL), as a machine lost.
    pub fn kill_executor(&mut self, i: usize) {
        self.executors[i].kill().unwrap();
        self.executors[i].wait().unwrap();
    }

    /// Whether executor `i` has ended.
    pub fn exited(&mut self, i: usize) -> bool {
        self.executors[i].try_wait().unwrap().is_some()
    }

    fn registered(url: &str) -> usize {
        let home = tempfile::tempdir().unwrap();
        let out = sluice(home.path(), &["--cluster", url, "--format", "csv", "-c", "SHOW CLUSTER"]);
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("executor,")).count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain(std::iter::once(&mut self.scheduler)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sluice(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.display().to_string()])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `sluice cluster scheduler` and two `sluice cluster executor`s make a cluster that `SHOW
/// CLUSTER` lists, chosen by `--cluster`, the home's `config.toml` or `SET sluice.cluster`.
#[test]
fn show_cluster_lists_the_scheduler_and_its_executors() {
    let cluster = Cluster::start(2, 3);
    let home = tempfile::tempdir().unwrap();
    let listed = stdout(&sluice(home.path(), &["--cluster", &cluster.url, "--format", "csv", "-c", "SHOW CLUSTER"]));
    let rows: Vec<Vec<&str>> = listed.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert_eq!(rows[0][0], "scheduler");
    assert_eq!(rows[0][2], cluster.url.trim_start_matches("df://"));
    let mut executors: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[2], r[3])).collect();
    executors.sort();
    let mut expected: Vec<(&str, &str)> = cluster.executor_addresses.iter().map(|a| (a.as_str(), "3")).collect();
    expected.sort();
    assert_eq!(executors, expected, "{listed}");

    // Local by default; SET and the home's config.toml choose the cluster too.
    let local = stdout(&sluice(home.path(), &["--format", "csv", "-c", "SHOW CLUSTER"]));
    assert!(local.lines().nth(1).unwrap().starts_with("local,local,this process,"), "{local}");
    let set = format!("SET sluice.cluster = '{}'; SHOW CLUSTER", cluster.url);
    assert_eq!(stdout(&sluice(home.path(), &["--format", "csv", "-c", &set])).lines().count(), 4);
    std::fs::write(home.path().join("config.toml"), format!("cluster = \"{}\"\n", cluster.url)).unwrap();
    assert_eq!(stdout(&sluice(home.path(), &["--format", "csv", "-c", "SHOW CLUSTER"])).lines().count(), 4);

    // A bad address or a scheduler that does not answer: clear errors, quickly.
    let bad = sluice(home.path(), &["-c", "SET sluice.cluster = 'http://x:1'; SHOW CLUSTER"]);
    let bad = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.contains("`http://x:1` is not a cluster address: the scheme is `http`, not `df`"), "{bad}");
    let closed = free_ports();
    let started = Instant::now();
    let gone = sluice(home.path(), &["--cluster", &format!("df://127.0.0.1:{closed}"), "-c", "SHOW CLUSTER"]);
    let gone = String::from_utf8_lossy(&gone.stderr);
    assert!(gone.contains(&format!("the cluster's scheduler at df://127.0.0.1:{closed} did not answer")), "{gone}");
    assert!(gone.contains("Connection refused") && started.elapsed() < Duration::from_secs(10), "{gone}");
}

/// An `INSERT` pipeline (an aggregate) and a partitioned `INSERT OVERWRITE` pipeline, run here
/// and on a cluster of two executors sharing the home's warehouse, write the same rows, one
/// snapshot per run; on the cluster the shards are the executors' tasks.
#[test]
fn pipelines_on_a_cluster_write_what_they_write_here() {
    let cluster = Cluster::start(2, 2);
    let home = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let data = files.path().join("orders.parquet");
    let mut setup = format!(
        "COPY (SELECT value AS id, value % 7 AS customer, DATE '2026-01-01' + CAST(value % 5 AS INT) AS day, \
         value * 1.5 AS amount FROM generate_series(1, 20000)) TO '{data}';
         CREATE EXTERNAL TABLE orders STORED AS PARQUET LOCATION '{data}';
         CREATE SCHEMA lake.s;",
        data = data.display()
    );
    for side in ["here", "there"] {
        setup.push_str(&format!(
            "CREATE TABLE lake.s.totals_{side} (customer BIGINT, n BIGINT, amount DOUBLE);
             CREATE TABLE lake.s.daily_{side} (day DATE, id BIGINT, amount DOUBLE) PARTITIONED BY (day);
             CREATE PIPELINE totals_{side} AS INSERT INTO lake.s.totals_{side}
               SELECT customer, count(*), sum(amount) FROM orders GROUP BY customer;
             CREATE PIPELINE daily_{side} AS INSERT OVERWRITE lake.s.daily_{side}
               SELECT day, id, amount FROM orders WHERE id % 3 = 0;"
        ));
    }
    stdout(&sluice(home.path(), &["-c", &setup]));
    let runs = |side: &str| format!("RUN PIPELINE totals_{side}; RUN PIPELINE daily_{side}; RUN PIPELINE daily_{side}");
    stdout(&sluice(home.path(), &["-c", &runs("here")]));
    let there =
        sluice(home.path(), &["--cluster", &cluster.url, "--shards", "4", "--format", "csv", "-c", &runs("there")]);
    let report = stdout(&there);
    // The report names the executors that ran the shards; a progress line names each shard's.
    let header: Vec<&str> = report.lines().next().unwrap().split(',').collect();
    let executors = header.iter().position(|c| *c == "executors").expect("an executors column");
    let named = report.lines().nth(1).unwrap().split(',').nth(executors).unwrap().to_string();
    assert!(cluster.executor_addresses.iter().any(|a| named.contains(a)), "{report}");
    let progress = String::from_utf8_lossy(&there.stderr);
    assert!(progress.contains("totals_there: shard 0 written on 127.0.0.1:"), "{progress}");

    let csv = |sql: &str| stdout(&sluice(home.path(), &["--format", "csv", "-c", sql]));
    for (table, order) in [("totals", "customer"), ("daily", "day, id")] {
        let here = csv(&format!("SELECT * FROM lake.s.{table}_here ORDER BY {order}"));
        let there = csv(&format!("SELECT * FROM lake.s.{table}_there ORDER BY {order}"));
        assert!(here.lines().count() > 7, "{here}");
        assert_eq!(here, there, "{table}: the cluster's rows differ from this process's");
    }
    let snapshots = csv("SELECT (SELECT count(*) FROM lake.s.\"totals_there$snapshots\") AS totals, \
         (SELECT count(*) FROM lake.s.\"daily_there$snapshots\") AS daily, \
         (SELECT count(*) FROM lake.s.\"daily_there$files\") AS files");
    let counts: Vec<u64> = snapshots.lines().nth(1).unwrap().split(',').map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts[..2], [1, 2], "one snapshot per run: {snapshots}");
    assert_eq!(counts[2], 5, "rows hashed on the partition column: one shard, one file per day: {snapshots}");

    // The ledger says which executor wrote each shard (`local` here).
    let executors = |side: &str| -> std::collections::BTreeSet<String> {
        let sql = format!(
            "SELECT DISTINCT t.executor FROM sluice.shard_tasks t JOIN sluice.runs r ON t.run_id = r.run_id \
             WHERE r.pipeline IN ('totals_{side}', 'daily_{side}')"
        );
        csv(&sql).lines().skip(1).map(str::to_string).collect()
    };
    assert_eq!(executors("here"), ["local".to_string()].into());
    let mut expected = cluster.executor_addresses.clone();
    expected.sort();
    assert_eq!(executors("there").into_iter().collect::<Vec<_>>(), expected, "both executors wrote shards");
    // So do the runs' events.
    let events = csv("SELECT detail FROM sluice.events WHERE kind = 'shard_finished'");
    assert!(events.contains(&format!("executor\"\":\"\"{}", expected[0])), "{events}");
    assert!(events.contains("executor\"\":\"\"local"), "{events}");

    // A pipeline's `cluster` option sends its runs there from a session that names none.
    let url = &cluster.url;
    stdout(&sluice(
        home.path(),
        &[
            "-c",
            &format!(
                "CREATE TABLE lake.s.totals_option (customer BIGINT, n BIGINT, amount DOUBLE);
                 CREATE PIPELINE totals_option WITH (cluster = '{url}') AS INSERT INTO lake.s.totals_option
                   SELECT customer, count(*), sum(amount) FROM orders GROUP BY customer;
                 RUN PIPELINE totals_option;"
            ),
        ],
    ));
    assert_eq!(
        csv("SELECT * FROM lake.s.totals_option ORDER BY customer"),
        csv("SELECT * FROM lake.s.totals_here ORDER BY customer")
    );
    // A cluster run's files carry its attempt's token: <run id (5 parts)>-<token>-<shard>-<n>.
    let names = csv("SELECT file_path FROM lake.s.\"totals_option$files\"");
    assert!(names.lines().skip(1).all(|p| p.rsplit('/').next().unwrap().split('-').count() == 9), "{names}");
    let bad = sluice(
        home.path(),
        &["-c", "CREATE PIPELINE bad WITH (cluster = 'http://x') AS INSERT INTO lake.s.totals_option SELECT 1, 1, 1.0"],
    );
    let bad = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.contains("`http://x` is not a cluster address"), "{bad}");

    // What executors cannot read is refused before the run opens, naming it.
    for source in ["sluice.runs", "generate_series(1, 3)"] {
        let sql = format!("INSERT INTO lake.s.totals_there SELECT 1, 1, 1.0 FROM {source}");
        let refused = sluice(home.path(), &["--cluster", &cluster.url, "-c", &sql]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("not system tables or table functions"), "{stderr}");
    }
    // A write that changes the table's schema is refused: executors write with the schema as it is.
    let evolve = "INSERT INTO lake.s.totals_there WITH (schema_evolution = 'add_columns') \
                  SELECT customer, count(*) AS n, sum(amount) AS amount, 1 AS extra FROM orders GROUP BY customer";
    let refused = sluice(home.path(), &["--cluster", &cluster.url, "-c", evolve]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("schema_evolution in a write into"), "{stderr}");
    assert_eq!(csv("SELECT count(*) FROM lake.s.\"totals_there$snapshots\"").lines().nth(1), Some("1"));
}

/// Iceberg and Delta tables (partitioned, with two snapshots / versions) read on a cluster: its
/// executors scan the files of the snapshot the query names, and the rows written are the rows
/// the same queries give in this process.
#[test]
fn lake_tables_are_read_on_a_cluster() {
    let cluster = Cluster::start(2, 2);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("catalogs")).unwrap();
    std::fs::write(home.path().join("catalogs/delta.toml"), "type = \"delta\"\nroot = \"delta\"\n").unwrap();
    let fill = |table: &str, from: u64| {
        format!(
            "INSERT INTO {table} SELECT DATE '2026-01-01' + CAST(value % 4 AS INT), value, \
             CASE WHEN value % 9 = 0 THEN NULL ELSE value * 0.5 END FROM generate_series({from}, {from} + 9999);"
        )
    };
    let mut setup = String::from("CREATE SCHEMA lake.s; CREATE SCHEMA delta.s;");
    for source in ["lake.s.src", "delta.s.src"] {
        setup.push_str(&format!("CREATE TABLE {source} (day DATE, id BIGINT, amount DOUBLE) PARTITIONED BY (day);"));
        setup.push_str(&fill(source, 1));
        setup.push_str(&fill(source, 5001));
    }
    stdout(&sluice(home.path(), &["-c", &setup]));
    let csv = |sql: &str| stdout(&sluice(home.path(), &["--format", "csv", "-c", sql]));
    let first = csv("SELECT snapshot_id FROM lake.s.\"src$snapshots\" ORDER BY committed_at LIMIT 1");
    let first = first.lines().nth(1).unwrap();
    let queries = [
        ("iceberg", "SELECT day, count(*) AS n, sum(amount) AS amount FROM lake.s.src GROUP BY day".to_string()),
        ("delta", "SELECT day, count(*) AS n, sum(amount) AS amount FROM delta.s.src GROUP BY day".to_string()),
        ("as_of", format!("SELECT day, count(*) AS n, sum(amount) AS amount FROM lake.s.\"src@{first}\" GROUP BY day")),
        (
            "joined",
            "SELECT i.day, count(*) AS n, sum(d.amount) AS amount FROM lake.s.src i \
             JOIN delta.s.\"src@1\" d ON i.id = d.id GROUP BY i.day"
                .to_string(),
        ),
    ];
    let mut create = String::new();
    for (name, query) in &queries {
        create.push_str(&format!(
            "CREATE TABLE lake.s.{name} (day DATE, n BIGINT, amount DOUBLE); INSERT INTO lake.s.{name} {query};"
        ));
    }
    stdout(&sluice(home.path(), &["--cluster", &cluster.url, "--shards", "3", "-c", &create]));
    for (name, query) in &queries {
        let here = csv(&format!("SELECT * FROM ({query}) ORDER BY day"));
        let there = csv(&format!("SELECT * FROM lake.s.{name} ORDER BY day"));
        assert_eq!(here.lines().count(), 5, "{name}: {here}");
        assert_eq!(here, there, "{name}: the cluster's rows differ from this process's");
    }
    let ran = csv("SELECT count(DISTINCT executor) FROM sluice.shard_tasks WHERE executor <> 'local'");
    assert_eq!(ran.lines().nth(1), Some("2"), "both executors ran shards");

    // A partitioned Delta table written on the cluster: one version, every row once.
    let copy = "CREATE TABLE delta.s.copy (day DATE, id BIGINT, amount DOUBLE) PARTITIONED BY (day);
                INSERT INTO delta.s.copy SELECT * FROM lake.s.src";
    stdout(&sluice(home.path(), &["--cluster", &cluster.url, "--shards", "3", "-c", copy]));
    assert_eq!(csv("SELECT * FROM delta.s.copy ORDER BY id, day"), csv("SELECT * FROM lake.s.src ORDER BY id, day"));
    let history = csv("SELECT count(*) FROM delta.s.\"copy$history\"");
    assert_eq!(history.lines().nth(1), Some("2"), "created, then one version: {history}");

    // A column renamed (by pyiceberg) since files were written: executors read columns by name,
    // so the run is refused, naming both names.
    let rename = format!(
        "from pyiceberg.catalog.sql import SqlCatalog\n\
         c = SqlCatalog('lake', uri='sqlite:///{home}/catalog.db', warehouse='file://{home}/warehouse')\n\
         with c.load_table('s.src').update_schema() as u: u.rename_column('amount', 'price')\n",
        home = home.path().display()
    );
    let renamed = Command::new(crate::support::python()).args(["-c", &rename]).output().unwrap();
    assert!(renamed.status.success(), "{}", String::from_utf8_lossy(&renamed.stderr));
    let insert = "INSERT INTO lake.s.iceberg SELECT day, count(*), sum(price) FROM lake.s.src GROUP BY day";
    let refused = sluice(home.path(), &["--cluster", &cluster.url, "-c", insert]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("renamed column `amount` to `price`"), "{stderr}");
}

/// A write's expectations on a cluster: each task counts its rows (and drops those `DROP ROW`
/// rejects) on its executor, the counts travel back with its files, and the report,
/// `sluice.expectations` and the table say what they say for the same write run here; a `FAIL`
/// stops the run before its commit, naming the count and sample rows, and leaves no file; rows a
/// `QUARANTINE` takes out land in the quarantine table as here.
#[test]
fn expectations_are_checked_on_the_executors() {
    let cluster = Cluster::start(2, 2);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = dir.path().join("orders.parquet");
    let setup = format!(
        "COPY (SELECT value AS id, CASE WHEN value % 5 = 0 THEN -1.0 WHEN value = 7 THEN NULL ELSE value * 1.5 END \
         AS amount FROM generate_series(1, 5000)) TO '{data}';
         CREATE EXTERNAL TABLE orders STORED AS PARQUET LOCATION '{data}';
         CREATE SCHEMA lake.q; CREATE TABLE lake.q.here (id BIGINT, amount DOUBLE);
         CREATE TABLE lake.q.there (id BIGINT, amount DOUBLE);",
        data = data.display()
    );
    stdout(&sluice(home.path(), &["-c", &setup]));
    let insert = |table: &str| {
        format!(
            "INSERT INTO lake.q.{table} (CONSTRAINT positive EXPECT (amount > 0) ON VIOLATION DROP ROW, \
             CONSTRAINT even EXPECT (id % 2 = 0) ON VIOLATION WARN) SELECT id, amount FROM orders"
        )
    };
    let report = |output: &Output| -> std::collections::BTreeMap<String, String> {
        let text = stdout(output);
        let mut lines = text.lines();
        let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
        let values: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
        header.into_iter().zip(values).filter(|(column, _)| column.starts_with("rows")).collect()
    };
    let here = report(&sluice(home.path(), &["--format", "csv", "-c", &insert("here")]));
    let there = report(&sluice(home.path(), &["--cluster", &cluster.url, "--format", "csv", "-c", &insert("there")]));
    assert_eq!(here["rows_in"], "5000");
    assert_eq!(here, there, "the cluster's counts differ from this process's");
    let csv = |sql: &str| stdout(&sluice(home.path(), &["--format", "csv", "-c", sql]));
    assert_eq!(csv("SELECT * FROM lake.q.here ORDER BY id"), csv("SELECT * FROM lake.q.there ORDER BY id"));
    let counted = |table: &str| {
        csv(&format!(
            "SELECT \"constraint\", passed, failed FROM sluice.expectations \
             WHERE \"table\" = 'lake.q.{table}' ORDER BY \"constraint\""
        ))
    };
    assert_eq!(counted("here"), counted("there"));

    // FAIL: the run is rolled back on the cluster as here, with the count and sample rows.
    let fail = "INSERT INTO lake.q.there (CONSTRAINT below_4000 EXPECT (id < 4000) ON VIOLATION FAIL) \
                SELECT id, amount FROM orders";
    let failed = sluice(home.path(), &["--cluster", &cluster.url, "-c", fail]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("1001 row(s) violate expectation `below_4000` (id < 4000), e.g. (id = "), "{stderr}");
    assert_eq!(csv("SELECT count(*) FROM lake.q.there").lines().nth(1), Some("4000"));
    let (stored, referenced) = files_of_table(home.path(), "q", "there");
    assert_eq!(stored, referenced, "the failed run's files are gone");

    // QUARANTINE: the executors hand the rows back with their counts; this process writes them
    // into the quarantine table, as for a write here.
    let quarantine = |table: &str| {
        format!(
            "INSERT INTO lake.q.{table} (CONSTRAINT positive EXPECT (amount > 0) ON VIOLATION QUARANTINE) \
             SELECT id, amount FROM orders"
        )
    };
    let here = report(&sluice(home.path(), &["--format", "csv", "-c", &quarantine("here")]));
    let there =
        report(&sluice(home.path(), &["--cluster", &cluster.url, "--format", "csv", "-c", &quarantine("there")]));
    assert_eq!(here["rows_quarantined"], "1000");
    assert_eq!(here, there, "the cluster's counts differ from this process's");
    let kept = |table: &str| {
        csv(&format!("SELECT id, amount, _sluice_constraints FROM lake.q.{table}__quarantine ORDER BY id"))
    };
    assert_eq!(kept("here"), kept("there"));
    assert_eq!(csv("SELECT * FROM lake.q.here ORDER BY id"), csv("SELECT * FROM lake.q.there ORDER BY id"));

    // bad_rows is refused on a cluster, before the run opens.
    let bad_rows =
        "CREATE PIPELINE tolerant WITH (bad_rows = 'quarantine') AS INSERT INTO lake.q.there SELECT id, amount FROM orders;
                    RUN PIPELINE tolerant";
    let refused = sluice(home.path(), &["--cluster", &cluster.url, "-c", bad_rows]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("bad_rows in a write into `lake.q.there`"), "{stderr}");
}

/// A table of an Iceberg REST catalog written and read on a cluster: its executors open the
/// catalog with the token from their own environment and write into the folder its server
/// placed the table in; one snapshot per run; a failed run leaves no file there.
#[test]
fn a_rest_catalog_table_is_written_and_read_on_a_cluster() {
    use crate::rest::{RestCatalog, TOKEN, TOKEN_VARIABLE};
    let server_dir = tempfile::tempdir().unwrap();
    let server = RestCatalog::start(server_dir.path());
    let cluster = Cluster::start_with(2, 2, &[(0, TOKEN_VARIABLE, TOKEN), (1, TOKEN_VARIABLE, TOKEN)]);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::create_dir_all(home.path().join("catalogs")).unwrap();
    let catalog = format!(
        "type = \"iceberg-rest\"\nuri = \"http://127.0.0.1:{}\"\ntoken_env = \"{TOKEN_VARIABLE}\"\n",
        server.port
    );
    std::fs::write(home.path().join("catalogs/rest.toml"), catalog).unwrap();
    let run = |args: &[&str]| {
        let home = home.path().display().to_string();
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--home", &home])
            .args(args)
            .env(TOKEN_VARIABLE, TOKEN)
            .output()
            .unwrap()
    };
    const ROWS: u64 = 100_000;
    let data = dir.path().join("big.parquet");
    let setup = format!(
        "COPY (SELECT value AS id, value * 2 AS v FROM generate_series(1, {ROWS})) TO '{data}';
         CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '{data}';
         CREATE SCHEMA rest.s; CREATE TABLE rest.s.t (id BIGINT, v BIGINT);
         CREATE SCHEMA lake.k; CREATE TABLE lake.k.t (id BIGINT, v BIGINT);",
        data = data.display()
    );
    stdout(&run(&["-c", &setup]));
    let on_cluster = ["--cluster", cluster.url.as_str(), "--shards", "4", "-c"];
    stdout(&run(&[&on_cluster[..], &["INSERT INTO rest.s.t SELECT id, v FROM big"]].concat()));
    // Read back on the cluster too: the executors scan the REST table's snapshot files.
    stdout(&run(&[&on_cluster[..], &["INSERT INTO lake.k.t SELECT id, v FROM rest.s.t"]].concat()));
    let csv = |sql: &str| stdout(&run(&["--format", "csv", "-c", sql]));
    for table in ["rest.s.t", "lake.k.t"] {
        let counts = csv(&format!("SELECT count(*), count(DISTINCT id), sum(v) FROM {table}"));
        assert_eq!(counts.lines().nth(1).unwrap(), format!("{ROWS},{ROWS},{}", ROWS * (ROWS + 1)), "{table}");
    }
    assert_eq!(csv("SELECT count(*) FROM rest.s.\"t$snapshots\"").lines().nth(1), Some("1"));

    // A failed run's files are deleted from the folder the server placed the table in.
    let fail = "INSERT INTO rest.s.t (CONSTRAINT negative EXPECT (id < 0) ON VIOLATION FAIL) SELECT id, v FROM big";
    let failed = run(&[&on_cluster[..], &[fail]].concat());
    assert!(!failed.status.success(), "{}", String::from_utf8_lossy(&failed.stdout));
    let stored: std::collections::BTreeSet<String> = crate::support::files_under(&server_dir.path().join("warehouse"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .map(|f| f.display().to_string())
        .collect();
    let listed = csv("SELECT file_path FROM rest.s.\"t$files\"");
    let referenced = listed.lines().skip(1).map(|l| l.trim_start_matches("file://").to_string()).collect();
    assert_eq!(stored, referenced, "orphan files of the failed run");
}

/// A warehouse in a bucket, shared by the Sluice process and the executors (every process has
/// the standard AWS variables; the server is moto's): an Iceberg table written on the cluster
/// into `s3://lake/warehouse`, then read there into a Delta table under `s3://deltas/root`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_in_a_bucket_is_shared_by_the_cluster() {
    let server = crate::s3::S3Server::start(&["lake", "deltas"]).await;
    let variables = server.env();
    let env: Vec<(usize, &str, &str)> =
        (0..2).flat_map(|i| variables.iter().map(move |(name, value)| (i, *name, value.as_str()))).collect();
    let cluster = Cluster::start_with(2, 2, &env);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let catalogs = home.path().join("catalogs");
    std::fs::create_dir_all(&catalogs).unwrap();
    let iceberg = "type = \"iceberg-sql\"\nuri = \"sqlite:s3lake.db\"\nwarehouse = \"s3://lake/warehouse\"\n";
    std::fs::write(catalogs.join("s3lake.toml"), iceberg).unwrap();
    std::fs::write(catalogs.join("s3delta.toml"), "type = \"delta\"\nroot = \"s3://deltas/root\"\n").unwrap();
    let run = |args: &[&str]| {
        let home = home.path().display().to_string();
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--home", &home])
            .args(args)
            .envs(server.env())
            .output()
            .unwrap()
    };
    const ROWS: u64 = 50_000;
    let data = dir.path().join("big.parquet");
    let setup = format!(
        "COPY (SELECT DATE '2026-01-01' + CAST(value % 3 AS INT) AS day, value AS id, value * 2 AS v \
         FROM generate_series(1, {ROWS})) TO '{data}';
         CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '{data}';
         CREATE SCHEMA s3lake.s; CREATE TABLE s3lake.s.t (day DATE, id BIGINT, v BIGINT) PARTITIONED BY (day);
         CREATE SCHEMA s3delta.s; CREATE TABLE s3delta.s.copy (day DATE, id BIGINT, v BIGINT) PARTITIONED BY (day);",
        data = data.display()
    );
    stdout(&run(&["-c", &setup]));
    let on_cluster = ["--cluster", cluster.url.as_str(), "--shards", "4", "-c"];
    let writes =
        "INSERT INTO s3lake.s.t SELECT day, id, v FROM big; INSERT INTO s3delta.s.copy SELECT * FROM s3lake.s.t";
    let report = stdout(&run(&[&on_cluster[..], &[writes]].concat()));
    assert!(cluster.executor_addresses.iter().any(|a| report.contains(a)), "{report}");
    let csv = |sql: &str| stdout(&run(&["--format", "csv", "-c", sql]));
    for table in ["s3lake.s.t", "s3delta.s.copy"] {
        let counts = csv(&format!("SELECT count(*), count(DISTINCT id), count(DISTINCT day), sum(v) FROM {table}"));
        assert_eq!(counts.lines().nth(1).unwrap(), format!("{ROWS},{ROWS},3,{}", ROWS * (ROWS + 1)), "{table}");
    }
    let files = csv("SELECT file_path FROM s3lake.s.\"t$files\"");
    assert!(files.lines().skip(1).all(|f| f.starts_with("s3://lake/warehouse/s/t/data/day=")), "{files}");
}

/// What a cluster wrote (Iceberg partitioned four ways, Delta partitioned) reads the same, value
/// by value, in pyiceberg and DuckDB, and in delta-rs and DuckDB: the executors' file
/// descriptions (statistics, partition values) survive their trip to the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_readers_read_what_a_cluster_wrote() {
    use crate::interop::{TYPED_COLUMNS, readers_agree, typed_rows};
    let cluster = Cluster::start(2, 2);
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("delta-root");
    let delta = sluice::catalog::DeltaConfig { root: root.display().to_string(), ..Default::default() };
    let engine = sluice::Engine::builder()
        .home(home.path())
        .catalog("delta", sluice::catalog::CatalogConfig::Delta(delta))
        .shards(3)
        .build()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("typed.parquet");
    engine
        .sql(&format!(
            "COPY ({rows}) TO '{data}'; CREATE EXTERNAL TABLE typed STORED AS PARQUET LOCATION '{data}';
             CREATE SCHEMA lake.interop; CREATE TABLE lake.interop.partitioned ({TYPED_COLUMNS})
               PARTITIONED BY (flag, day(at), bucket(4, id), truncate(3, name));
             CREATE SCHEMA delta.interop; CREATE TABLE delta.interop.events ({TYPED_COLUMNS}) PARTITIONED BY (flag);
             SET sluice.cluster = '{url}';
             INSERT INTO lake.interop.partitioned SELECT * FROM typed;
             INSERT INTO delta.interop.events SELECT * FROM typed;
             SET sluice.cluster = 'local';",
            rows = typed_rows(30_000),
            data = data.display(),
            url = cluster.url,
        ))
        .await
        .unwrap();
    let ran = crate::support::rows(
        &engine,
        "SELECT count(DISTINCT executor) FROM sluice.shard_tasks WHERE executor <> 'local'",
    )
    .await;
    assert_eq!(ran, [["2"]], "the executors wrote both tables");
    let home_dir = engine.home().as_os_str().to_owned();
    let iceberg: Vec<&std::ffi::OsStr> =
        vec!["iceberg".as_ref(), home_dir.as_os_str(), "interop".as_ref(), "partitioned".as_ref()];
    readers_agree(&engine, "lake.interop.partitioned", &iceberg, 30_000).await;
    let table_dir = root.join("interop/events");
    readers_agree(&engine, "delta.interop.events", &["delta".as_ref(), table_dir.as_os_str()], 30_000).await;
}

/// A source of `rows` rows (`id`, `v`) in a Parquet file under `dir`, declared in `home`.
fn big_source(home: &Path, dir: &Path, rows: u64) {
    let data = dir.join("big.parquet");
    stdout(&sluice(
        home,
        &[
            "-c",
            &format!(
                "COPY (SELECT value AS id, value * 2 AS v FROM generate_series(1, {rows})) TO '{data}';
                 CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '{data}';
                 CREATE SCHEMA lake.k; CREATE TABLE lake.k.t (id BIGINT, v BIGINT);",
                data = data.display()
            ),
        ],
    ));
}

/// The data files in the table's folder, and those its snapshot references.
fn files_of(home: &Path) -> (std::collections::BTreeSet<String>, std::collections::BTreeSet<String>) {
    files_of_table(home, "k", "t")
}

/// The data files in the folder of table `lake.<schema>.<table>`, and those its snapshot references.
fn files_of_table(
    home: &Path,
    schema: &str,
    table: &str,
) -> (std::collections::BTreeSet<String>, std::collections::BTreeSet<String>) {
    let folder = home.join(format!("warehouse/{schema}/{table}/data"));
    let stored = std::fs::read_dir(&folder)
        .map(|entries| entries.map(|e| e.unwrap().path().display().to_string()).collect())
        .unwrap_or_default();
    let files = format!("SELECT file_path FROM lake.{schema}.\"{table}$files\"");
    let listed = stdout(&sluice(home, &["--format", "csv", "-c", &files]));
    let referenced = listed.lines().skip(1).map(|l| l.trim_start_matches("file://").to_string()).collect();
    (stored, referenced)
}

fn seed() -> u64 {
    let seed = std::env::var("SLUICE_KILL_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("SLUICE_KILL_SEED={seed}");
    seed
}

/// An executor SIGKILLed while a run's shards are being written: the run either succeeds with
/// every row exactly once (Ballista ran the lost tasks again on the other executor) or fails
/// leaving the table as it was; after recovery no file is left that the table does not
/// reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_during_a_run_loses_nothing_and_leaves_nothing() {
    const ROWS: u64 = 2_000_000;
    let seed = seed();
    let mut cluster = Cluster::start(2, 2);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(home.path(), dir.path(), ROWS);
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.path().display().to_string(), "--cluster", &cluster.url, "--shards", "4"])
        .args(["-c", "INSERT INTO lake.k.t SELECT id, v FROM big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500 + seed % 2500));
    cluster.kill_executor((seed % 2) as usize);
    let out = run.wait_with_output().unwrap();
    match out.status.success() {
        true => println!("the run succeeded"),
        false => println!("the run failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
    let counts =
        stdout(&sluice(home.path(), &["--format", "csv", "-c", "SELECT count(*), count(DISTINCT id) FROM lake.k.t"]));
    let expected = if out.status.success() { format!("{ROWS},{ROWS}") } else { "0,0".to_string() };
    assert_eq!(counts.lines().nth(1).unwrap(), expected, "{} (seed {seed})", String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        // The lost tasks' attempts wrote files the commit did not take: the run deleted them.
        let (stored, referenced) = files_of(home.path());
        assert_eq!(stored, referenced, "files of attempts that lost (seed {seed})");
    }
    crate::support::expire_leases(home.path()).await;
    stdout(&sluice(home.path(), &["recover"]));
    let (stored, referenced) = files_of(home.path());
    assert_eq!(stored, referenced, "orphan or missing data files (seed {seed})");
}

/// An executor that dies right after writing a shard's files, before handing them back: the
/// scheduler runs its tasks again on the other executor, under new file names (the attempt's),
/// and the run commits the winning attempts' files only; the dead attempts' files are deleted
/// before the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_again_commits_the_winning_attempt_only() {
    const ROWS: u64 = 200_000;
    let mut cluster = Cluster::start_with(2, 2, &[(1, "FAILPOINTS", "shard-written/lake.k.t=return(abort)")]);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(home.path(), dir.path(), ROWS);
    let out = sluice(
        home.path(),
        &["--cluster", &cluster.url, "--shards", "4", "-c", "INSERT INTO lake.k.t SELECT id, v FROM big"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let csv = |sql: &str| stdout(&sluice(home.path(), &["--format", "csv", "-c", sql]));
    let ran = csv("SELECT executor, count(*) FROM sluice.shard_tasks WHERE executor <> 'local' GROUP BY executor");
    assert!(out.status.success(), "{stderr}\n{ran}");
    assert!(cluster.exited(1), "executor 1 wrote a shard and died");
    assert_eq!(ran.lines().skip(1).collect::<Vec<_>>(), [format!("{},4", cluster.executor_addresses[0])]);
    let counts = csv("SELECT count(*), count(DISTINCT id) FROM lake.k.t");
    assert_eq!(counts.lines().nth(1).unwrap(), format!("{ROWS},{ROWS}"));
    let (stored, referenced) = files_of(home.path());
    assert_eq!(stored, referenced, "files of attempts that lost");
    let attempts: std::collections::BTreeSet<&str> =
        stored.iter().map(|file| file.rsplit('/').next().unwrap().split('-').nth(6).unwrap()).collect();
    // One attempt per shard, named after the task that ran it.
    assert!(attempts.len() == 4 && attempts.iter().all(|a| a.starts_with('t')), "{attempts:?}");
}

/// A cluster run cancelled (Ctrl-C, an embedding program's cancel): its rollback stops the job
/// on the cluster before deleting what it wrote, and the table stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_cluster_run_stops_its_job() {
    let cluster = Cluster::start(2, 2);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(home.path(), dir.path(), 2_000_000);
    let engine = std::sync::Arc::new(
        sluice::Engine::builder().home(home.path()).cluster(cluster.url.clone()).shards(4).build().await.unwrap(),
    );
    engine.sql("CREATE PIPELINE fill AS INSERT INTO lake.k.t SELECT id, v FROM big").await.unwrap();
    let mut run = engine.start_pipeline("fill");
    while !matches!(run.events.recv().await.unwrap(), sluice::events::RunEvent::Opened { .. }) {}
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.live_jobs().await, 1, "the run's job is running");
    run.cancel();
    let ended = run.finish().await;
    assert!(ended.as_ref().is_err_and(|e| e.to_string().contains("cancelled")), "{ended:?}");
    assert_eq!(cluster.live_jobs().await, 0, "the rollback stopped the job");
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.recover().await.unwrap();
    let (stored, referenced) = files_of(home.path());
    assert!(stored.is_empty() && referenced.is_empty(), "{stored:?} {referenced:?}");
}

/// The Sluice process killed while the executors write its run's shards: the ledger held an
/// entry for every file so named before they started, so recovery deletes what they wrote,
/// and a retry lands every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_during_a_cluster_run_leaves_nothing_after_recovery() {
    const ROWS: u64 = 2_000_000;
    let seed = seed();
    let cluster = Cluster::start(2, 2);
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(home.path(), dir.path(), ROWS);
    let insert = ["--cluster", &cluster.url, "--shards", "4", "-c", "INSERT INTO lake.k.t SELECT id, v FROM big"];
    let mut run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.path().display().to_string()])
        .args(insert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000 + seed % 2000));
    let killed = run.try_wait().unwrap().is_none();
    run.kill().unwrap();
    run.wait().unwrap();
    // Recovery, on the same cluster, stops the job the dead process left running before it
    // deletes the run's files; the next recovery deletes them again (what a task still wrote).
    crate::support::expire_leases(home.path()).await;
    stdout(&sluice(home.path(), &["--cluster", &cluster.url, "recover"]));
    assert_eq!(cluster.live_jobs().await, 0, "the dead process's job was stopped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stdout(&sluice(home.path(), &["recover"]));
    let (stored, referenced) = files_of(home.path());
    assert_eq!(stored, referenced, "orphan or missing data files (seed {seed}, killed: {killed})");
    let landed = stdout(&sluice(home.path(), &["--format", "csv", "-c", "SELECT count(*) FROM lake.k.t"]));
    if landed.lines().nth(1) == Some("0") {
        stdout(&sluice(home.path(), &insert));
    }
    let counts =
        stdout(&sluice(home.path(), &["--format", "csv", "-c", "SELECT count(*), count(DISTINCT id) FROM lake.k.t"]));
    assert_eq!(counts.lines().nth(1).unwrap(), format!("{ROWS},{ROWS}"), "seed {seed}");
    let (stored, referenced) = files_of(home.path());
    assert_eq!(stored, referenced, "seed {seed}");
}

/// A job that is never running, for a commit driven by hand.
#[derive(Debug)]
struct NoJob;

#[async_trait::async_trait]
impl sluice::coordinator::RemoteJob for NoJob {
    async fn stop(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }

    fn counted(&self, _: usize, _: &str, _: Option<&[u8]>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

/// The commit of a run written elsewhere takes only that run's own files: files another run
/// wrote into the table, handed back by an executor as if they were this run's, are refused,
/// and nothing of them is recorded for a rollback to delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_takes_only_its_runs_own_files_whatever_an_executor_says() {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use sluice::catalog::LakeCatalog;
    use sluice::coordinator::RunContext;
    use sluice::table::{RunIdentity, TableName, WriteMode};

    let home = tempfile::tempdir().unwrap();
    let engine = crate::support::engine(home.path(), 1).await;
    engine.sql("CREATE SCHEMA lake.k; CREATE TABLE lake.k.t (id BIGINT)").await.unwrap();
    let table = TableName::new("lake", "k", "t");
    let writer = crate::support::lake(&engine).writer(&table).await.unwrap();
    let ledger = sluice::ledger::Ledger::in_memory(sluice::clock::system()).await.unwrap();
    let run = |run_id: &str| {
        let identity = RunIdentity { run_id: run_id.into(), pipeline: None, sequence: 0, base: None, attempt: 1 };
        RunContext::new(identity, "lake.k.t", 1, ledger.clone())
    };
    let stream = |batch: RecordBatch| -> datafusion::execution::SendableRecordBatchStream {
        let schema = batch.schema();
        Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)])))
    };
    // An executor writes a shard of one run ...
    let rows = RecordBatch::try_from_iter([("id", std::sync::Arc::new(Int64Array::from(vec![1, 2, 3])) as _)]).unwrap();
    let other = "01a2417d-71ba-7678-9d20-9829fc9050e2-5c4f1f19";
    let written = writer
        .clone()
        .write_elsewhere(&run(&format!("{other}-t1")), &table, 0, ("127.0.0.1:1", "t1"), stream(rows))
        .await
        .unwrap();
    // ... and its files are handed to the commit of another.
    let ours = "01a2417d-71ba-7678-9d20-000000000001-0badc0de";
    let commit =
        writer.coordinator_of_written(table.clone(), WriteMode::Append, ours.into(), std::sync::Arc::new(NoJob));
    let refused = commit.write_shard(&run(ours), 0, stream(written)).await.unwrap_err().to_string();
    assert!(refused.contains("is not a file of this run in the table"), "{refused}");
    assert!(ledger.staged_files(ours).await.unwrap().is_empty(), "nothing of it for a rollback to delete");
}

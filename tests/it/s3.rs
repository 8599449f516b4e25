//! Warehouses on object storage, against a real S3-compatible server on loopback (moto's
//! server, from the pinned test venv): an Iceberg SQL catalog whose warehouse is
//! `s3://bucket/prefix`, configured by the standard AWS variables alone (or in code): the table
//! lifecycle, independent readers, clear errors, and writers killed and recovered.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use futures::TryStreamExt;

use crate::support::python;

const KEY_ID: &str = "sluice-test-key";
const SECRET: &str = "sluice-test-secret";

/// A moto S3 server on a free loopback port, stopped when dropped.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server and creates `buckets`.
    pub async fn start(buckets: &[&str]) -> Self {
        Self::start_checking(buckets, None).await
    }

    /// Starts the server and creates `buckets`; with `checked`, every request after those
    /// `checked` unsigned ones must be signed with a key the server knows (it knows none).
    pub async fn start_checking(buckets: &[&str], checked: Option<usize>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(python());
        if let Some(free) = checked {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string());
        }
        let child = command
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto's server (tests/interop/requirements.txt)");
        let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "moto's server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for bucket in buckets {
            let created = client.put(format!("{}/{bucket}", server.endpoint)).send().await.unwrap();
            assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
        }
        server
    }

    /// The standard AWS variables that point every tool at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// How to reach this server from code (an embedding program's way: no variable touched).
    pub fn settings(&self) -> sluice::storage::StoreSettings {
        let credentials = sluice::storage::Credentials { key_id: KEY_ID.into(), secret: SECRET.into(), token: None };
        sluice::storage::StoreSettings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            path_style: Some(true),
            credentials: Some(credentials),
            ..Default::default()
        }
    }

    /// A client of `bucket`, to look at what landed there.
    pub fn bucket(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_allow_http(true)
            .build()
            .unwrap();
        Arc::new(store)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Declares catalog `name` in `home` with the file `text`.
fn catalog_file(home: &Path, name: &str, text: &str) {
    let catalogs = home.join("catalogs");
    std::fs::create_dir_all(&catalogs).unwrap();
    std::fs::write(catalogs.join(format!("{name}.toml")), text).unwrap();
}

/// `sluice --home <home> -c <sql>` with the server's variables.
fn sluice(home: &Path, server: &S3Server, sql: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.display().to_string(), "-c", sql])
        .envs(server.env())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn keys(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let listed: Vec<_> = store.list(Some(&ObjectPath::from(prefix))).try_collect().await.unwrap();
    listed.into_iter().map(|meta| meta.location.to_string()).collect()
}

/// The standard variables alone are enough: a catalog file naming only `s3://bucket/prefix`.
/// Tables are created, written, overwritten, read back and dropped, all in the bucket; nothing of
/// the warehouse lands on the local disk, and the drop deletes only the dropped table's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_warehouse_on_s3_takes_the_whole_table_lifecycle() {
    let server = S3Server::start(&["lake"]).await;
    let home = tempfile::tempdir().unwrap();
    catalog_file(
        home.path(),
        "s3lake",
        "type = \"iceberg-sql\"\nuri = \"sqlite:s3lake.db\"\nwarehouse = \"s3://lake/warehouse\"\n",
    );
    let out = sluice(
        home.path(),
        &server,
        "CREATE SCHEMA s3lake.sales;
         CREATE TABLE s3lake.sales.orders (id BIGINT NOT NULL, amount DOUBLE, day DATE) PARTITIONED BY (day(day));
         CREATE TABLE s3lake.sales.orders2 (id BIGINT);
         INSERT INTO s3lake.sales.orders2 VALUES (1), (2);
         INSERT INTO s3lake.sales.orders SELECT value, value * 1.5, DATE '2026-01-01' + CAST(value % 3 AS INT) FROM generate_series(1, 3000);
         INSERT OVERWRITE s3lake.sales.orders SELECT value, value * 2.0, DATE '2026-02-01' FROM generate_series(1, 1000);
         SELECT count(*) AS n, sum(amount) AS total, min(day) AS first FROM s3lake.sales.orders;",
    );
    let text = stdout(&out);
    assert!(text.contains("| 1000 | 1001000.0 | 2026-02-01 |"), "{text}");
    let store = server.bucket("lake");
    let objects = keys(store.as_ref(), "warehouse/sales/orders").await;
    let data = objects.iter().filter(|k| k.contains("/data/") && k.ends_with(".parquet")).count();
    let metadata = objects.iter().filter(|k| k.ends_with(".metadata.json")).count();
    assert!(data >= 4 && metadata >= 3, "{objects:#?}");
    assert!(!home.path().join("warehouse/sales").exists(), "nothing of the S3 warehouse is local");

    // Exports to the bucket and reads of its files, outside the warehouse; into it is refused.
    let exported = stdout(&sluice(
        home.path(),
        &server,
        "COPY (SELECT id, amount FROM s3lake.sales.orders) TO 's3://lake/exports/orders.parquet';
         SELECT count(*) AS n, sum(amount) AS total FROM 's3://lake/exports/orders.parquet';",
    ));
    assert!(exported.contains("| 1000 | 1001000.0 |"), "{exported}");
    // An export is a run (its parts staged in the home, merged, then uploaded): a failing one, or
    // one killed before its upload completes, leaves the old object as it was; recovery deletes
    // the killed one's staged parts.
    let failed = sluice(
        home.path(),
        &server,
        "COPY (SELECT id, 10 / (id - 999) AS amount FROM s3lake.sales.orders) TO 's3://lake/exports/orders.parquet'",
    );
    assert!(!failed.status.success(), "the export fails");
    let killed = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.path().display().to_string(), "-c"])
        .arg("COPY (SELECT id, 0.0 AS amount FROM s3lake.sales.orders) TO 's3://lake/exports/orders.parquet'")
        .envs(server.env())
        .env("FAILPOINTS", "export-upload/s3://lake/exports/orders.parquet=return(abort)")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the export is killed");
    crate::support::expire_leases(home.path()).await;
    let recovered = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.path().display().to_string(), "recover"])
        .envs(server.env())
        .output()
        .unwrap();
    stdout(&recovered);
    let kept = stdout(&sluice(
        home.path(),
        &server,
        "SELECT count(*) AS n, sum(amount) AS total FROM 's3://lake/exports/orders.parquet';
         SELECT status, count(*) AS runs FROM sluice.runs WHERE target = 's3://lake/exports/orders.parquet' GROUP BY status ORDER BY status;",
    ));
    assert!(kept.contains("| 1000 | 1001000.0 |"), "{kept}");
    assert!(kept.contains("| failed    | 2    |") && kept.contains("| succeeded | 1    |"), "{kept}");
    assert_eq!(keys(server.bucket("lake").as_ref(), "exports").await, ["exports/orders.parquet"], "nothing else");
    let staged: Vec<_> = std::fs::read_dir(home.path().join("exports")).unwrap().collect();
    assert!(staged.is_empty(), "staged parts left: {staged:?}");
    // With format options, DataFusion's COPY writes it, through a hidden object: the same promise.
    let options = "OPTIONS (format.delimiter '|')";
    stdout(&sluice(
        home.path(),
        &server,
        &format!("COPY (SELECT id, id AS twice FROM s3lake.sales.orders2) TO 's3://lake/exports/ids.csv' {options}"),
    ));
    let failed = sluice(
        home.path(),
        &server,
        &format!("COPY (SELECT 10 / (id - 2) AS x FROM s3lake.sales.orders2) TO 's3://lake/exports/ids.csv' {options}"),
    );
    assert!(!failed.status.success(), "the export fails");
    let store = server.bucket("lake");
    let ids = store.get(&ObjectPath::from("exports/ids.csv")).await.unwrap().bytes().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ids), "id|twice\n1|1\n2|2\n");
    assert_eq!(keys(store.as_ref(), "exports").await.len(), 2, "no hidden object left");
    let refused = sluice(home.path(), &server, "COPY (SELECT 1 AS x) TO 's3://lake/warehouse/sales/x.parquet'");
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.contains("would write into the tables of catalog `s3lake` at s3://lake/warehouse"), "{refused}");

    // Time travel reads an earlier snapshot from the bucket.
    let snapshots =
        stdout(&sluice(home.path(), &server, "SELECT count(*) AS n FROM s3lake.sales.\"orders$snapshots\""));
    assert!(snapshots.contains("| 2 "), "{snapshots}");

    // Dropping one table deletes its objects, and none of the other's (`orders2` shares a prefix).
    stdout(&sluice(home.path(), &server, "DROP TABLE s3lake.sales.orders"));
    assert!(keys(store.as_ref(), "warehouse/sales/orders").await.is_empty());
    assert!(!keys(store.as_ref(), "warehouse/sales/orders2").await.is_empty());
    let left = stdout(&sluice(home.path(), &server, "SELECT sum(id) AS s FROM s3lake.sales.orders2"));
    assert!(left.contains("| 3 "), "{left}");
}

/// An engine with the Iceberg SQL catalog `s3lake` (its warehouse `s3://<bucket>/warehouse`) and
/// the Delta catalog `s3delta` (its root `s3://<bucket>/delta`) on `server`: everything given in
/// code, as an embedding program would (no variable of this process is touched).
async fn s3_engine(home: &Path, server: &S3Server, bucket: &str) -> sluice::Engine {
    let storage = server.settings();
    let iceberg = sluice::catalog::IcebergSqlConfig {
        uri: format!("sqlite:{}", home.join("s3lake.db").display()),
        warehouse: format!("s3://{bucket}/warehouse"),
        storage: storage.clone(),
    };
    let delta = sluice::catalog::DeltaConfig { root: format!("s3://{bucket}/delta"), storage };
    sluice::Engine::builder()
        .home(home)
        .catalog("s3lake", sluice::catalog::CatalogConfig::IcebergSql(iceberg))
        .catalog("s3delta", sluice::catalog::CatalogConfig::Delta(delta))
        .shards(3)
        .build()
        .await
        .unwrap()
}

/// delta-rs and DuckDB (httpfs) read, value by value, a plain and a partitioned Delta table
/// Sluice wrote into the bucket, after appends and a partition overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delta_rs_and_duckdb_read_the_delta_tables_sluice_wrote_to_s3() {
    use crate::interop::{TYPED_COLUMNS, readers_agree, typed_rows};
    let server = S3Server::start(&["dinterop"]).await;
    let home = tempfile::tempdir().unwrap();
    let engine = s3_engine(home.path(), &server, "dinterop").await;
    engine
        .sql(&format!(
            "CREATE SCHEMA s3delta.interop;
             CREATE TABLE s3delta.interop.events ({TYPED_COLUMNS});
             CREATE TABLE s3delta.interop.partitioned ({TYPED_COLUMNS}) PARTITIONED BY (flag);
             INSERT INTO s3delta.interop.events {rows};
             INSERT INTO s3delta.interop.events {rows};
             INSERT INTO s3delta.interop.partitioned {rows};
             CREATE PIPELINE fix WITH (mode = 'overwrite_partitions') AS INSERT INTO s3delta.interop.partitioned {fix};
             RUN PIPELINE fix;",
            rows = typed_rows(5_000),
            fix = typed_rows(500).replace("value % 2 = 0", "true"),
        ))
        .await
        .unwrap();
    for table in ["events", "partitioned"] {
        let name = format!("s3delta.interop.{table}");
        let rows = crate::support::value(&engine, &format!("SELECT count(*) FROM {name}")).await.parse().unwrap();
        let url = format!("s3://dinterop/delta/interop/{table}");
        let args: Vec<&std::ffi::OsStr> = vec!["delta-s3".as_ref(), server.endpoint.as_ref(), url.as_ref()];
        readers_agree(&engine, &name, &args, rows).await;
    }
}

/// pyiceberg (pyarrow's S3 file system) and DuckDB (httpfs) read, value by value, a plain and a
/// partitioned table Sluice wrote into the bucket, after appends and a partition overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_and_duckdb_read_the_tables_sluice_wrote_to_s3() {
    use crate::interop::{TYPED_COLUMNS, readers_agree, typed_rows};
    let server = S3Server::start(&["interop"]).await;
    let home = tempfile::tempdir().unwrap();
    let engine = s3_engine(home.path(), &server, "interop").await;
    engine
        .sql(&format!(
            "CREATE SCHEMA s3lake.interop;
             CREATE TABLE s3lake.interop.events ({TYPED_COLUMNS});
             CREATE TABLE s3lake.interop.partitioned ({TYPED_COLUMNS}) PARTITIONED BY (flag, day(at));
             INSERT INTO s3lake.interop.events {rows};
             INSERT INTO s3lake.interop.events {rows};
             INSERT INTO s3lake.interop.partitioned {rows};
             CREATE PIPELINE fix WITH (mode = 'overwrite_partitions') AS INSERT INTO s3lake.interop.partitioned {fix};
             RUN PIPELINE fix;",
            rows = typed_rows(5_000),
            fix = typed_rows(500),
        ))
        .await
        .unwrap();
    let db = home.path().join("s3lake.db");
    for (table, rows) in [("events", 10_000), ("partitioned", 0)] {
        let args: Vec<std::ffi::OsString> = vec![
            "iceberg-s3".into(),
            server.endpoint.clone().into(),
            db.clone().into(),
            "s3lake".into(),
            "s3://interop/warehouse".into(),
            "interop".into(),
            table.into(),
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let name = format!("s3lake.interop.{table}");
        let rows = match rows {
            0 => crate::support::value(&engine, &format!("SELECT count(*) FROM {name}")).await.parse().unwrap(),
            n => n,
        };
        readers_agree(&engine, &name, &args, rows).await;
    }
}

/// A missing bucket and a wrong endpoint fail in seconds, naming the catalog, the location and
/// the cause; the secret is never shown; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_bucket_or_a_wrong_endpoint_fails_fast_and_clearly() {
    let server = S3Server::start(&["present"]).await;
    let home = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    catalog_file(
        home.path(),
        "gone",
        "type = \"iceberg-sql\"\nuri = \"sqlite:gone.db\"\nwarehouse = \"s3://absent/warehouse\"\n",
    );
    catalog_file(
        home.path(),
        "off",
        &format!(
            "type = \"iceberg-sql\"\nuri = \"sqlite:off.db\"\nwarehouse = \"s3://present/warehouse\"\n[storage]\nendpoint = \"http://127.0.0.1:{closed}\"\n"
        ),
    );
    for (catalog, cause) in [("gone", "NoSuchBucket"), ("off", "error sending request")] {
        let started = Instant::now();
        let out =
            sluice(home.path(), &server, &format!("CREATE SCHEMA {catalog}.s; CREATE TABLE {catalog}.s.t (id BIGINT)"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(started.elapsed() < Duration::from_secs(30), "{catalog}: took {:?}", started.elapsed());
        let location = if catalog == "gone" { "s3://absent/warehouse/s/t" } else { "s3://present/warehouse/s/t" };
        assert!(stderr.contains(&format!("catalog `{catalog}`")) && stderr.contains(location), "{stderr}");
        assert!(stderr.contains(cause), "{stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
    assert!(keys(server.bucket("present").as_ref(), "").await.is_empty(), "nothing was written");

    // A Delta root in a missing bucket costs only its own catalog: the others work, and a
    // statement on one of its tables fails saying why.
    catalog_file(home.path(), "dgone", "type = \"delta\"\nroot = \"s3://absent/root\"\n");
    let others = sluice(home.path(), &server, "CREATE SCHEMA lake.s; CREATE TABLE lake.s.t AS SELECT 1 AS x");
    stdout(&others);
    let warned = String::from_utf8_lossy(&others.stderr);
    assert!(warned.contains("catalog `dgone`") && warned.contains("NoSuchBucket"), "{warned}");
    let out = sluice(home.path(), &server, "SELECT * FROM dgone.s.t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("dgone.s.t") && stderr.contains("s3://absent/root") && stderr.contains("NoSuchBucket"),
        "{stderr}"
    );
}

/// Credentials the server does not know are refused at once, by the server's own reason, with
/// the key id at most in the error (never the secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_fail_fast_naming_the_cause_not_the_secret() {
    let server = S3Server::start_checking(&["guarded"], Some(1)).await;
    let home = tempfile::tempdir().unwrap();
    catalog_file(
        home.path(),
        "guarded",
        "type = \"iceberg-sql\"\nuri = \"sqlite:g.db\"\nwarehouse = \"s3://guarded/wh\"\n",
    );
    let started = Instant::now();
    let out = sluice(home.path(), &server, "CREATE SCHEMA guarded.s; CREATE TABLE guarded.s.t (id BIGINT)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(stderr.contains("catalog `guarded`") && stderr.contains("s3://guarded/wh/s/t"), "{stderr}");
    assert!(stderr.contains("InvalidAccessKeyId"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

/// `sluice` processes writing into the S3 warehouse, SIGKILLed at moments from a seeded clock
/// (`SLUICE_KILL_SEED`, printed): after `sluice recover` and retries every batch is in the table
/// exactly once, and the table's data prefix holds exactly the objects the table references.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_writers_on_s3_land_every_row_once_and_leave_no_object_behind() {
    const RUNS: u64 = 8;
    let seed = std::env::var("SLUICE_KILL_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("SLUICE_KILL_SEED={seed}");
    let server = S3Server::start(&["killed"]).await;
    let home = tempfile::tempdir().unwrap();
    // The same catalog database as `s3_engine` below opens (a relative path would be the file's).
    let file = format!(
        "type = \"iceberg-sql\"\nuri = \"sqlite:{}\"\nwarehouse = \"s3://killed/warehouse\"\n",
        home.path().join("s3lake.db").display()
    );
    catalog_file(home.path(), "s3lake", &file);
    stdout(&sluice(home.path(), &server, "CREATE SCHEMA s3lake.k; CREATE TABLE s3lake.k.t (batch BIGINT, id BIGINT)"));
    let insert =
        |batch: u64| format!("INSERT INTO s3lake.k.t SELECT {batch} AS batch, value FROM generate_series(1, 20000)");
    let mut killed = 0;
    for batch in 0..RUNS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--home", &home.path().display().to_string(), "--shards", "3", "-c", &insert(batch)])
            .envs(server.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(seed.wrapping_mul(batch + 1).rotate_left(batch as u32) % 900));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    println!("{killed} of {RUNS} runs killed");

    // Leases of dead processes are 30 s: age them as time would, then recover and retry.
    crate::support::expire_leases(home.path()).await;
    let recovered = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--home", &home.path().display().to_string(), "recover"])
        .envs(server.env())
        .output()
        .unwrap();
    stdout(&recovered);
    let engine = s3_engine(home.path(), &server, "killed").await;
    crate::support::land_missing_batches(&engine, RUNS, insert).await;
    let per_batch = crate::support::rows(
        &engine,
        "SELECT batch, count(*), count(DISTINCT id) FROM s3lake.k.t GROUP BY batch ORDER BY batch",
    )
    .await;
    let expected: Vec<Vec<String>> = (0..RUNS).map(|b| vec![b.to_string(), "20000".into(), "20000".into()]).collect();
    assert_eq!(per_batch, expected, "every batch exactly once (seed {seed})");
    let referenced: std::collections::BTreeSet<String> =
        crate::support::rows(&engine, "SELECT file_path FROM s3lake.k.\"t$files\"")
            .await
            .into_iter()
            .map(|row| row[0].trim_start_matches("s3://killed/").to_string())
            .collect();
    let stored: std::collections::BTreeSet<String> =
        keys(server.bucket("killed").as_ref(), "warehouse/k/t/data").await.into_iter().collect();
    assert_eq!(stored, referenced, "orphan or missing data objects (seed {seed})");
}

/// A folder of Delta tables at `s3://bucket/prefix`, configured by the standard variables alone:
/// schemas, a partitioned table, appends, an overwrite, history, time travel and drops, all in the
/// bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delta_root_on_s3_takes_the_whole_table_lifecycle() {
    let server = S3Server::start(&["deltas"]).await;
    let home = tempfile::tempdir().unwrap();
    catalog_file(home.path(), "s3delta", "type = \"delta\"\nroot = \"s3://deltas/root\"\n");
    let out = sluice(
        home.path(),
        &server,
        "CREATE SCHEMA s3delta.web;
         CREATE SCHEMA s3delta.empty;
         CREATE TABLE s3delta.web.hits (id BIGINT NOT NULL, page VARCHAR, day DATE) PARTITIONED BY (day);
         CREATE TABLE s3delta.web.hits2 (id BIGINT);
         INSERT INTO s3delta.web.hits2 VALUES (1), (2);
         INSERT INTO s3delta.web.hits SELECT value, 'p' || (value % 7), DATE '2026-01-01' + CAST(value % 3 AS INT) FROM generate_series(1, 3000);
         INSERT OVERWRITE s3delta.web.hits SELECT value, 'q', DATE '2026-02-01' FROM generate_series(1, 1000);
         SELECT count(*) AS n, min(day) AS first FROM s3delta.web.hits;
         SELECT count(*) AS v FROM s3delta.web.\"hits$history\";
         SELECT count(*) AS before FROM s3delta.web.\"hits@1\";
         SELECT table_name FROM information_schema.tables WHERE table_catalog = 's3delta' ORDER BY 1;",
    );
    let text = stdout(&out);
    for expected in ["| 1000 | 2026-02-01 |", "| 3 ", "| 3000 ", "hits2"] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let store = server.bucket("deltas");
    let objects = keys(store.as_ref(), "root/web/hits/").await;
    assert!(objects.iter().any(|k| k.contains("_delta_log/00000000000000000002.json")), "{objects:#?}");
    assert!(objects.iter().any(|k| k.contains("day=2026-02-01/") && k.ends_with(".parquet")), "{objects:#?}");
    assert!(!home.path().join("root").exists());

    // An empty schema survives (a marker keeps its prefix); dropping a table keeps its neighbour.
    let schemas = stdout(&sluice(
        home.path(),
        &server,
        "DROP TABLE s3delta.web.hits; SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 's3delta'",
    ));
    assert!(schemas.contains("empty") && schemas.contains("web"), "{schemas}");
    assert!(keys(store.as_ref(), "root/web/hits/").await.is_empty());
    let left = stdout(&sluice(home.path(), &server, "SELECT sum(id) AS s FROM s3delta.web.hits2"));
    assert!(left.contains("| 3 "), "{left}");
    let refused = sluice(home.path(), &server, "DROP SCHEMA s3delta.web");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"), "{refused:?}");
    stdout(&sluice(home.path(), &server, "DROP SCHEMA s3delta.empty"));
    assert!(keys(store.as_ref(), "root/empty/").await.is_empty());

    // A store that does not enforce conditional puts (here: the client told not to send them)
    // could lose a commit: creating or writing a table is refused, saying why; reads still work.
    let unsafe_store = |sql: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--home", &home.path().display().to_string(), "-c", sql])
            .envs(server.env())
            .env("AWS_CONDITIONAL_PUT", "disabled")
            .output()
            .unwrap()
    };
    for sql in ["CREATE TABLE s3delta.web.hits3 (id BIGINT)", "INSERT INTO s3delta.web.hits2 VALUES (3)"] {
        let refused = unsafe_store(sql);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{sql}");
        assert!(
            stderr.contains("catalog `s3delta` at s3://deltas/root")
                && stderr.contains("does not enforce conditional writes (If-None-Match)"),
            "{stderr}"
        );
    }
    let read = unsafe_store("SELECT sum(id) AS s FROM s3delta.web.hits2");
    assert!(stdout(&read).contains("| 3 "));
    let mut objects = keys(store.as_ref(), "root/").await;
    objects.retain(|k| !k.starts_with("root/web/hits2/"));
    assert_eq!(objects, ["root/web/.sluice-schema"], "nothing else written");
}

/// Two `sluice` processes append to one Delta table on S3 at once, many times: each commit takes
/// its version with a conditional put, a loser retries on the new version; every row lands
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_to_one_delta_table_on_s3_both_land_once() {
    let server = S3Server::start(&["shared"]).await;
    let home = tempfile::tempdir().unwrap();
    catalog_file(home.path(), "s3delta", "type = \"delta\"\nroot = \"s3://shared/root\"\n");
    stdout(&sluice(
        home.path(),
        &server,
        "CREATE SCHEMA s3delta.s; CREATE TABLE s3delta.s.t (writer BIGINT, id BIGINT)",
    ));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let statements: Vec<String> = (0..5)
                .map(|round| {
                    format!(
                        "INSERT INTO s3delta.s.t SELECT {writer}, {round} * 1000 + value FROM generate_series(1, 1000);"
                    )
                })
                .collect();
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["--home", &home.path().display().to_string(), "-c", &statements.join("\n")])
                .envs(server.env())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for writer in writers {
        let out = writer.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let counts = stdout(&sluice(
        home.path(),
        &server,
        "SELECT writer, count(*) AS n, count(DISTINCT id) AS d FROM s3delta.s.t GROUP BY writer ORDER BY writer;
         SELECT count(*) AS versions FROM s3delta.s.\"t$history\";",
    ));
    for expected in ["| 0      | 5000 | 5000 |", "| 1      | 5000 | 5000 |", "| 11 "] {
        assert!(counts.contains(expected), "{expected} in {counts}");
    }
}

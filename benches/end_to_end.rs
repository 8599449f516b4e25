//! End to end on TPC-H `lineitem`, in one run:
//!
//!   (a) DataFusion writing the job's result to Parquet files with `COPY ... TO` and no table
//!       commit: the floor;
//!   (b) the same query as a Sluice pipeline into an Iceberg table;
//!   (c) into a Delta table;
//!   (d) (b) and (c) with 1, 2 and all-cores shards;
//!   (e) loading CSV: the `filter` rows as a CSV file (written by DataFusion) loaded into Iceberg
//!       with DataFusion's CSV reader (the baseline), then with `bad_rows = 'quarantine'` (read
//!       line by line by `LineScanExec`) from the same file and from a copy with one bad line in
//!       a thousand (quarantined);
//!   (f) the `filter` job into an Iceberg warehouse in an S3-compatible server on loopback (moto's,
//!       from `SLUICE_BENCH_PYTHON`, default `benches/.venv/bin/python`; skipped without it)
//!       against the same job into the local warehouse;
//!   (g) the `orders` job run here against the same job on a loopback Ballista cluster of one
//!       scheduler and two executors (`sluice cluster ...`, this build's binary) sharing the
//!       home's warehouse: the overhead of distributing a run on one machine; then a rollup of
//!       the `orders` table (an Iceberg source, which the executors read as the snapshot's
//!       Parquet files) here and there.
//!
//! Two jobs: `filter` (a projection and filter, ≈4.34 M rows at SF1, unpartitioned target) and
//! `orders` (a GROUP BY over every line, 1.5 M rows at SF1, into a table partitioned by the month
//! of the ship date: Iceberg `month(l_shipdate)`, Delta the column `ship_month`; the floor writes
//! Hive-partitioned by `ship_month`). Everything writes zstd(1) Parquet. Prints the median of
//! each over the repetitions and its ratio to (a).
//!
//! The data comes from `tpchgen-cli` (benches/peers/requirements.txt; `benches/run.sh` installs
//! it), generated once into `target/tpch/sf<SF>/` and never committed.
//!
//! `cargo bench --bench end_to_end`; `SLUICE_TPCH_SF` (default 1), `SLUICE_BENCH_REPEAT` (5),
//! `SLUICE_TPCHGEN` (the generator; default `benches/.venv/bin/tpchgen-cli`),
//! `SLUICE_BENCH_SECTIONS` (the sections to run, default `abcdefg`; (a) to (d) run together).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};

const FILTER: &str = "SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, \
     l_extendedprice * (1 - l_discount) AS net_price, l_shipdate, l_returnflag \
     FROM lineitem WHERE l_shipdate >= DATE '1994-01-01'";

const ORDERS: &str = "SELECT l_orderkey, max(l_shipdate) AS l_shipdate, \
     CAST(date_trunc('month', max(l_shipdate)) AS DATE) AS ship_month, count(*) AS lines, \
     sum(l_quantity) AS quantity, sum(l_extendedprice * (1 - l_discount)) AS revenue \
     FROM lineitem GROUP BY l_orderkey";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `lineitem` at scale factor `sf`, generated on first use.
fn lineitem(sf: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target.join("tpch").join(format!("sf{sf}"));
    let file = dir.join("lineitem.parquet");
    if !file.exists() {
        let generator = std::env::var_os("SLUICE_TPCHGEN")
            .map_or_else(|| root.join("benches/.venv/bin/tpchgen-cli"), PathBuf::from);
        println!("generating TPC-H lineitem at SF{sf} with {} ...", generator.display());
        let status = std::process::Command::new(&generator)
            .args(["parquet", "-s", sf, "--tables", "lineitem", "--output-dir"])
            .arg(&dir)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e} (run benches/run.sh, or set SLUICE_TPCHGEN)", generator.display()));
        assert!(status.success(), "tpchgen-cli failed");
    }
    file
}

async fn time(repeat: usize, engine: &Engine, sql: impl Fn(usize) -> String) -> Duration {
    let mut samples = Vec::with_capacity(repeat);
    for i in 0..repeat {
        let sql = sql(i);
        let started = Instant::now();
        engine.sql(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        samples.push(started.elapsed());
    }
    median(samples)
}

/// A measurement against a baseline measured in the same run.
fn versus(label: &str, took: Duration, baseline: Duration) {
    println!(
        "  {label:<42} {:>8.3} s   {:>5.2}x the baseline",
        took.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64()
    );
}

fn line(label: &str, took: Duration, floor: Option<Duration>) {
    match floor {
        None => println!("  {label:<42} {:>8.3} s", took.as_secs_f64()),
        Some(floor) => println!(
            "  {label:<42} {:>8.3} s   {:>5.2}x the floor",
            took.as_secs_f64(),
            took.as_secs_f64() / floor.as_secs_f64()
        ),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sf: String = env_or("SLUICE_TPCH_SF", "1".to_string());
    let repeat = env_or("SLUICE_BENCH_REPEAT", 5usize);
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let lineitem = lineitem(&sf);
    let home = tempfile::tempdir().expect("temp dir");
    // The floor's COPY writes outside the home: Sluice refuses exports into its own files.
    let exports = tempfile::tempdir().expect("temp dir");
    let delta = DeltaConfig { root: home.path().join("delta").display().to_string(), ..Default::default() };
    let engine =
        Engine::builder().home(home.path()).catalog("delta", CatalogConfig::Delta(delta)).shards(cores).build().await?;
    engine
        .sql(&format!(
            "SET datafusion.execution.parquet.compression = 'zstd(1)';
             CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '{}';
             CREATE SCHEMA lake.tpch; CREATE SCHEMA delta.tpch;",
            lineitem.display()
        ))
        .await?;
    let rows = |sql: &str| format!("SELECT count(*) FROM ({sql})");
    println!("TPC-H SF{sf}, {repeat} repetitions (median), {cores} cores, zstd(1) Parquet everywhere");
    let sections: String = env_or("SLUICE_BENCH_SECTIONS", "abcdefg".to_string());
    let tables = if sections.contains(['a', 'b', 'c', 'd']) { 2 } else { 0 };

    for (job, query, floor_partitioning, iceberg_partitioning, delta_partitioning) in [
        ("filter", FILTER, "", "", ""),
        (
            "orders",
            ORDERS,
            " PARTITIONED BY (ship_month)",
            " PARTITIONED BY (month(l_shipdate))",
            " PARTITIONED BY (ship_month)",
        ),
    ]
    .into_iter()
    .take(tables)
    {
        let count = engine.sql(&rows(query)).await?;
        let count = datafusion::arrow::util::display::array_value_to_string(count[0].column(0), 0).unwrap();
        println!("\njob `{job}`: {count} rows");
        let out = exports.path().join(format!("copy-{job}"));
        let floor = time(repeat, &engine, |i| {
            format!("COPY ({query}) TO '{}/{i}/' STORED AS PARQUET{floor_partitioning}", out.display())
        })
        .await;
        line("(a) DataFusion COPY TO Parquet (floor)", floor, None);

        let mut shard_counts = vec![1, 2, cores];
        shard_counts.sort();
        shard_counts.dedup();
        for (format, catalog, partitioning) in
            [("Iceberg", "lake", iceberg_partitioning), ("Delta", "delta", delta_partitioning)]
        {
            for &shards in &shard_counts {
                let table = format!("{catalog}.tpch.{job}_{shards}");
                let pipeline = format!("{job}_{catalog}_{shards}");
                engine
                    .sql(&format!(
                        "CREATE TABLE {table}{partitioning} AS {query} LIMIT 0;
                         CREATE PIPELINE {pipeline} WITH (shards = {shards}) AS INSERT INTO {table} {query};"
                    ))
                    .await?;
                let took = time(repeat, &engine, |_| format!("RUN PIPELINE {pipeline}")).await;
                let label =
                    format!("({}) Sluice -> {format}, {shards} shard(s)", if catalog == "lake" { 'b' } else { 'c' });
                line(&label, took, Some(floor));
            }
        }
    }

    if sections.contains('e') {
        csv_loads(&engine, exports.path(), repeat).await?;
    }
    if sections.contains('f') {
        s3_warehouse(&lineitem, repeat).await?;
    }
    if sections.contains('g') {
        on_a_cluster(&lineitem, repeat, cores).await?;
    }
    Ok(())
}

/// (f): see the module docs.
async fn s3_warehouse(lineitem: &std::path::Path, repeat: usize) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python =
        std::env::var_os("SLUICE_BENCH_PYTHON").map_or_else(|| root.join("benches/.venv/bin/python"), PathBuf::from);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let Ok(mut server) = std::process::Command::new(&python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        println!("\n(f) skipped: no moto server from {}", python.display());
        return Ok(());
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // moto takes any credentials; a bucket is created with a plain PUT.
    let mut create = std::net::TcpStream::connect(("127.0.0.1", port))?;
    std::io::Write::write_all(
        &mut create,
        b"PUT /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    std::io::Read::read_to_end(&mut create, &mut Vec::new())?;
    let home = tempfile::tempdir()?;
    let credentials = sluice::storage::Credentials { key_id: "bench".into(), secret: "bench".into(), token: None };
    let storage = sluice::storage::StoreSettings {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        path_style: Some(true),
        credentials: Some(credentials),
        ..Default::default()
    };
    let s3 = sluice::catalog::IcebergSqlConfig {
        uri: format!("sqlite:{}", home.path().join("s3.db").display()),
        warehouse: "s3://bench/warehouse".into(),
        storage,
    };
    let engine = Engine::builder().home(home.path()).catalog("s3", CatalogConfig::IcebergSql(s3)).build().await?;
    engine
        .sql(&format!(
            "SET datafusion.execution.parquet.compression = 'zstd(1)';
             CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '{}';
             CREATE SCHEMA lake.tpch; CREATE SCHEMA s3.tpch;
             CREATE TABLE lake.tpch.filter AS {FILTER} LIMIT 0;
             CREATE TABLE s3.tpch.filter AS {FILTER} LIMIT 0;",
            lineitem.display()
        ))
        .await?;
    println!("\nthe `filter` job into an Iceberg warehouse on a loopback S3 server (moto):");
    let local = time(repeat, &engine, |_| format!("INSERT INTO lake.tpch.filter {FILTER}")).await;
    line("(f) local warehouse (baseline)", local, None);
    let remote = time(repeat, &engine, |_| format!("INSERT INTO s3.tpch.filter {FILTER}")).await;
    versus("s3://bench/warehouse on moto", remote, local);
    server.kill()?;
    Ok(())
}

/// (g): see the module docs.
async fn on_a_cluster(
    lineitem: &std::path::Path,
    repeat: usize,
    cores: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let scheduler = port(0)?;
    let spawn = |args: &[String]| {
        std::process::Command::new(sluice)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    };
    let mut processes =
        vec![spawn(&["cluster".into(), "scheduler".into(), "--bind".into(), format!("127.0.0.1:{scheduler}")])?];
    let url = format!("df://127.0.0.1:{scheduler}");
    for _ in 0..2 {
        let flight = port(0)?;
        let slots = cores.div_ceil(2).to_string();
        let args =
            ["cluster", "executor", "--scheduler", &url, "--slots", &slots, "--bind", &format!("127.0.0.1:{flight}")];
        processes.push(spawn(&args.map(String::from))?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let home = tempfile::tempdir()?;
    let engine = Engine::builder().home(home.path()).shards(cores).build().await?;
    engine
        .sql(&format!(
            "SET datafusion.execution.parquet.compression = 'zstd(1)';
             CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '{}';
             CREATE SCHEMA lake.tpch;
             CREATE TABLE lake.tpch.here PARTITIONED BY (month(l_shipdate)) AS {ORDERS} LIMIT 0;
             CREATE TABLE lake.tpch.there PARTITIONED BY (month(l_shipdate)) AS {ORDERS} LIMIT 0;",
            lineitem.display()
        ))
        .await?;
    println!("\nthe `orders` job here and on a loopback Ballista cluster (1 scheduler, 2 executors):");
    let here = time(repeat, &engine, |_| format!("INSERT OVERWRITE lake.tpch.here {ORDERS}")).await;
    line("(g) this process (baseline)", here, None);
    engine.sql(&format!("SET sluice.cluster = '{url}'")).await?;
    let there = time(repeat, &engine, |_| format!("INSERT OVERWRITE lake.tpch.there {ORDERS}")).await;
    versus(&format!("{url}, 2 executors"), there, here);
    // The rollup reads the table the job wrote here (an Iceberg source).
    let rollup = "SELECT ship_month, count(*) AS orders, sum(lines) AS lines, sum(revenue) AS revenue \
                  FROM lake.tpch.here GROUP BY ship_month";
    engine.sql(&format!("SET sluice.cluster = 'local'; CREATE TABLE lake.tpch.rollup AS {rollup} LIMIT 0")).await?;
    let rollup_here = time(repeat, &engine, |_| format!("INSERT OVERWRITE lake.tpch.rollup {rollup}")).await;
    line("(g) rollup of the Iceberg table, here", rollup_here, None);
    engine.sql(&format!("SET sluice.cluster = '{url}'")).await?;
    let rollup_there = time(repeat, &engine, |_| format!("INSERT OVERWRITE lake.tpch.rollup {rollup}")).await;
    versus("rollup on the cluster", rollup_there, rollup_here);
    for mut process in processes {
        process.kill()?;
    }
    Ok(())
}

/// The `filter` rows' columns as a CSV file's declared types.
const CSV_COLUMNS: &str = "l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber BIGINT,      l_quantity DOUBLE, net_price DOUBLE, l_shipdate DATE, l_returnflag VARCHAR";

/// (e): see the module docs.
async fn csv_loads(
    engine: &Engine,
    exports: &std::path::Path,
    repeat: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let clean = exports.join("filter.csv");
    let columns = "l_orderkey, l_partkey, l_suppkey, CAST(l_linenumber AS BIGINT) AS l_linenumber,                    CAST(l_quantity AS DOUBLE) AS l_quantity, CAST(net_price AS DOUBLE) AS net_price, l_shipdate, l_returnflag";
    engine.sql(&format!("COPY (SELECT {columns} FROM ({FILTER})) TO '{}'", clean.display())).await?;
    // Every thousandth data line bad: a wrong column count or a number that is not one.
    let text = std::fs::read_to_string(&clean)?;
    let mut dirty = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        match (i > 0 && i % 1000 == 0, i % 2000 == 0) {
            (true, true) => dirty.push_str("1,2,3\n"),
            (true, false) => dirty.push_str(&line.replacen(',', ",x", 1)),
            (false, _) => dirty.push_str(line),
        }
        if !(i > 0 && i % 2000 == 0) {
            dirty.push('\n');
        }
    }
    let dirty_file = exports.join("filter-dirty.csv");
    std::fs::write(&dirty_file, dirty)?;
    let megabytes = std::fs::metadata(&clean)?.len() as f64 / 1e6;
    for (name, file) in [("clean_csv", &clean), ("dirty_csv", &dirty_file)] {
        engine
            .sql(&format!(
                "CREATE EXTERNAL TABLE {name} ({CSV_COLUMNS}) STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
                file.display()
            ))
            .await?;
    }
    engine.sql(&format!("CREATE TABLE lake.tpch.csv_load ({CSV_COLUMNS})")).await?;
    println!("\nloading CSV ({megabytes:.0} MB, {} lines) into Iceberg:", text.lines().count());
    let insert = |options: &str, table: &str| format!("INSERT INTO lake.tpch.csv_load{options} SELECT * FROM {table}");
    let baseline = time(repeat, engine, |_| insert("", "clean_csv")).await;
    line("(e) DataFusion's CSV reader (baseline)", baseline, None);
    let quarantine = " WITH (bad_rows = 'quarantine')";
    let clean_lines = time(repeat, engine, |_| insert(quarantine, "clean_csv")).await;
    let dirty_lines = time(repeat, engine, |_| insert(quarantine, "dirty_csv")).await;
    for (label, took) in
        [("bad_rows = 'quarantine', clean file", clean_lines), ("... one bad line in 1,000", dirty_lines)]
    {
        versus(label, took, baseline);
    }
    Ok(())
}

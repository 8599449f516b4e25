//! Shard scaling and the cost of the commit, in one run:
//!
//!   (a) DataFusion writing the query's result to Parquet with `COPY ... TO` (no table commit);
//!       the floor;
//!   (b) the same query as a Sluice pipeline into an Iceberg table, at 1, 2 and all-cores shards.
//!
//! Both use zstd(1) Parquet. Prints the median of each over the repetitions and the ratio to (a).
//! Run with `cargo bench --bench shards` (`SLUICE_BENCH_ROWS`, `SLUICE_BENCH_REPEAT` to resize).

use std::time::{Duration, Instant};

use sluice::Engine;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn time<F: std::future::Future<Output = sluice::Result<()>>>(
    repeat: usize,
    mut run: impl FnMut(usize) -> F,
) -> Duration {
    let mut samples = Vec::with_capacity(repeat);
    for i in 0..repeat {
        let started = Instant::now();
        run(i).await.expect("benchmark run succeeds");
        samples.push(started.elapsed());
    }
    median(samples)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> sluice::Result<()> {
    let rows = env_or("SLUICE_BENCH_ROWS", 5_000_000);
    let repeat = env_or("SLUICE_BENCH_REPEAT", 5);
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let query = format!(
        "SELECT value AS id, value % 1000 AS bucket, 'customer-' || (value % 50000) AS customer, \
         value * 0.25 AS amount FROM generate_series(1, {rows})"
    );
    let home = tempfile::tempdir().expect("temp dir");
    let engine = Engine::builder().home(home.path()).shards(cores).build().await?;
    engine.sql("SET datafusion.execution.parquet.compression = 'zstd(1)'").await?;
    engine.sql("CREATE SCHEMA lake.bench").await?;

    println!("rows: {rows}, repetitions: {repeat}, cores: {cores}");
    let out = home.path().join("copy");
    let floor = time(repeat, |i| {
        let sql = format!("COPY ({query}) TO '{}/{i}/' STORED AS PARQUET", out.display());
        let engine = &engine;
        async move { engine.sql(&sql).await.map(|_| ()) }
    })
    .await;
    println!("{:<44} {:>9.3} s", "(a) DataFusion COPY TO parquet (floor)", floor.as_secs_f64());

    let mut shard_counts = vec![1, 2, cores];
    shard_counts.dedup();
    for shards in shard_counts {
        engine
            .sql(&format!(
                "CREATE TABLE lake.bench.t{shards} AS {query} LIMIT 0;
                 CREATE PIPELINE p{shards} WITH (shards = {shards}) AS INSERT INTO lake.bench.t{shards} {query};"
            ))
            .await?;
        let pipeline = format!("p{shards}");
        let sluice = time(repeat, |_| {
            let (engine, pipeline) = (&engine, pipeline.clone());
            async move { engine.run_pipeline(&pipeline).await.map(|_| ()) }
        })
        .await;
        println!(
            "{:<44} {:>9.3} s   {:>5.2}x the floor",
            format!("(b) Sluice pipeline -> Iceberg, {shards} shard(s)"),
            sluice.as_secs_f64(),
            sluice.as_secs_f64() / floor.as_secs_f64()
        );
    }
    Ok(())
}

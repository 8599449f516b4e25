//! The commit path alone: 10, 1,000 and 10,000 staged files published in ONE Iceberg snapshot
//! and ONE Delta version, through the same `TableWriter::commit` a run uses.
//!
//! One real file is staged through the table's writer (so each file carries the metrics a shard
//! produces: column sizes, counts, bounds); the N files of a commit are that description under N
//! names. Each measured commit goes into a fresh, empty table (created untimed). Besides
//! criterion's report, it prints the median time per file at each N, and the growth of the
//! per-file cost from 1,000 to 10,000 files (≤ 1.0 means at most linear).
//!
//! `cargo bench --bench commit`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use iceberg::spec::DataFileBuilder;
use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig, TableName};
use sluice::coordinator::{RunContext, RunIdentity, StagedFile, TableWriter, WriteMode};
use sluice::sinks::{Partition, ShardSink};

const FILE_COUNTS: [usize; 3] = [10, 1_000, 10_000];

/// Every measured commit's time, by (format, files).
type Samples = Arc<Mutex<BTreeMap<(&'static str, usize), Vec<Duration>>>>;

struct Bench {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
    tables: std::sync::atomic::AtomicUsize,
}

impl Bench {
    fn new(home: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let delta = DeltaConfig { root: home.join("delta").display().to_string() };
        let engine = runtime.block_on(async {
            let engine = Engine::builder()
                .home(home)
                .catalog("delta", CatalogConfig::Delta(delta))
                .build()
                .await
                .expect("engine opens");
            engine.sql("CREATE SCHEMA lake.b; CREATE SCHEMA delta.b").await.expect("schemas");
            engine
        });
        Self { engine, runtime, tables: Default::default() }
    }

    /// A new, empty `<catalog>.b.t<n>` and its writer.
    async fn fresh_table(&self, catalog: &str) -> (TableName, Arc<dyn TableWriter>) {
        let n = self.tables.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = TableName::new(catalog, "b", format!("t{n}"));
        let sql = format!("CREATE TABLE {name} (id BIGINT NOT NULL, amount DOUBLE, customer VARCHAR, day DATE)");
        self.engine.sql(&sql).await.expect("table");
        let writer = self.engine.catalog(catalog).expect("catalog").writer(&name).await.expect("writer");
        (name, writer)
    }

    /// One file staged for real through `writer`: the description every copy starts from.
    async fn template(&self, name: &TableName, writer: &Arc<dyn TableWriter>) -> StagedFile {
        let rows = self
            .engine
            .session()
            .sql(
                "SELECT value AS id, value * 0.5 AS amount, concat('c', CAST(value % 97 AS VARCHAR)) AS customer, \
                 CAST(DATE '2024-01-01' + CAST(value % 365 AS INT) AS DATE) AS day FROM generate_series(1, 10000)",
            )
            .await
            .expect("query");
        let run = RunContext::new(identity(), name.to_string(), 1, self.engine.ledger().clone());
        let stream = rows.execute_stream().await.expect("stream");
        let mut files = ShardSink::new(&run, name, writer.clone()).write_shard(0, stream).await.expect("staged");
        files.pop().expect("one file")
    }
}

fn identity() -> RunIdentity {
    RunIdentity { run_id: uuid::Uuid::now_v7().to_string(), pipeline: None, sequence: 1, base: None }
}

/// `count` copies of `template` under new names in `writer`'s table.
fn copies(template: &StagedFile, writer: &dyn TableWriter, count: usize) -> Vec<StagedFile> {
    (0..count)
        .map(|i| {
            let location = writer.file_location(&Partition::Unpartitioned, &format!("bench-{i:06}.parquet"));
            match template {
                StagedFile::Iceberg(file) => StagedFile::Iceberg(Box::new(
                    DataFileBuilder::default()
                        .content(file.content_type())
                        .file_path(location)
                        .file_format(file.file_format())
                        .partition(file.partition().clone())
                        .record_count(file.record_count())
                        .file_size_in_bytes(file.file_size_in_bytes())
                        .column_sizes(file.column_sizes().clone())
                        .value_counts(file.value_counts().clone())
                        .null_value_counts(file.null_value_counts().clone())
                        .nan_value_counts(file.nan_value_counts().clone())
                        .lower_bounds(file.lower_bounds().clone())
                        .upper_bounds(file.upper_bounds().clone())
                        .partition_spec_id(0)
                        .build()
                        .expect("a data file"),
                )),
                StagedFile::Delta(add) => {
                    let mut add = add.clone();
                    add.path = location.rsplit('/').next().expect("a file name").to_string();
                    StagedFile::Delta(add)
                }
                StagedFile::Part { .. } => unreachable!("tables stage table files"),
            }
        })
        .collect()
}

fn commits(c: &mut Criterion) {
    let home = tempfile::tempdir().expect("temp dir");
    let bench = Bench::new(home.path());
    let samples: Samples = Arc::default();
    let mut group = c.benchmark_group("commit");
    // Flat: every sample runs the same number of commits, so a 10,000-file commit is measured
    // about ten times, not the 55 a linear ramp would need.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for (format, catalog) in [("iceberg", "lake"), ("delta", "delta")] {
        let template = bench.runtime.block_on(async {
            let (name, writer) = bench.fresh_table(catalog).await;
            bench.template(&name, &writer).await
        });
        for files in FILE_COUNTS {
            group.throughput(Throughput::Elements(files as u64));
            group.bench_with_input(BenchmarkId::new(format, files), &files, |b, &files| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let elapsed = bench.runtime.block_on(async {
                            let (_, writer) = bench.fresh_table(catalog).await;
                            let staged = copies(&template, writer.as_ref(), files);
                            let started = Instant::now();
                            writer.commit(staged, &identity(), WriteMode::Append).await.expect("commit");
                            started.elapsed()
                        });
                        samples.lock().unwrap().entry((format, files)).or_default().push(elapsed);
                        total += elapsed;
                    }
                    total
                });
            });
        }
    }
    group.finish();
    report(&samples.lock().unwrap());
}

/// Median time per file at each N, and how the per-file cost grows from 1,000 to 10,000 files
/// (for the sizes measured: a criterion filter may leave some out).
fn report(samples: &BTreeMap<(&'static str, usize), Vec<Duration>>) {
    let median_per_file = |format: &'static str, files: usize| {
        let mut times = samples.get(&(format, files))?.clone();
        times.sort();
        Some(times[times.len() / 2].as_secs_f64() / files as f64)
    };
    println!("\ncommit path: median time per staged file (one snapshot / version per commit)");
    for format in ["iceberg", "delta"] {
        for files in FILE_COUNTS {
            let Some(per_file) = median_per_file(format, files) else { continue };
            println!(
                "  {format:<8} {files:>6} files: {:>9.1} µs per file, {:>8.3} s per commit",
                per_file * 1e6,
                per_file * files as f64
            );
        }
        if let (Some(large), Some(small)) = (median_per_file(format, 10_000), median_per_file(format, 1_000)) {
            println!(
                "  {format:<8} per-file cost at 10,000 / at 1,000 files: {:.2} (≤ 1.0: at most linear)",
                large / small
            );
        }
    }
}

criterion::criterion_group!(benches, commits);
criterion::criterion_main!(benches);

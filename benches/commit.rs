//! The commit path alone: 10, 1,000 and 10,000 staged files published in ONE Iceberg snapshot
//! and ONE Delta version, through the same `TableFormat::commit` a run uses.
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
use deltalake::kernel::Add;
use iceberg::spec::{DataFile, DataFileBuilder};
use sluice::Engine;
use sluice::catalog::{CatalogConfig, DeltaConfig};
use sluice::formats::delta::{DeltaCatalog, DeltaTableWriter};
use sluice::formats::iceberg::{IcebergCatalog, IcebergTableWriter};
use sluice::runtime::{RunContext, ShardSink, TableFormat};
use sluice::table::{RunIdentity, TableName, WriteMode};

const FILE_COUNTS: [usize; 3] = [10, 1_000, 10_000];

/// Every measured commit's time, by (format, files).
type Samples = Arc<Mutex<BTreeMap<(&'static str, usize), Vec<Duration>>>>;

struct Bench {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
    tables: std::sync::atomic::AtomicUsize,
}

/// A format as the bench drives it: a fresh table's writer, and a staged file's description
/// under another name.
trait Format: TableFormat + Sized {
    /// The catalog its tables are made in.
    const CATALOG: &'static str;
    /// The typed writer of table `name`.
    async fn writer(engine: &Engine, name: &TableName) -> Self;
    /// `template` renamed to `location`.
    fn renamed(template: &Self::File, location: String) -> Self::File;
    /// A new file's location in the (unpartitioned) table.
    fn new_location(&self, name: &str) -> String;
}

impl Format for IcebergTableWriter {
    const CATALOG: &'static str = "lake";

    async fn writer(engine: &Engine, name: &TableName) -> Self {
        let catalog = engine.catalog("lake").expect("lake").as_any().downcast_ref::<IcebergCatalog>().expect("iceberg");
        catalog.table_writer(name).await.expect("writer")
    }

    fn renamed(file: &DataFile, location: String) -> DataFile {
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
            .expect("a data file")
    }

    fn new_location(&self, name: &str) -> String {
        self.file_location(&None, name)
    }
}

impl Format for DeltaTableWriter {
    const CATALOG: &'static str = "delta";

    async fn writer(engine: &Engine, name: &TableName) -> Self {
        let catalog = engine.catalog("delta").expect("delta").as_any().downcast_ref::<DeltaCatalog>().expect("delta");
        catalog.table_writer(name).await.expect("writer")
    }

    fn renamed(add: &Add, location: String) -> Add {
        Add { path: location.rsplit('/').next().expect("a file name").to_string(), ..add.clone() }
    }

    fn new_location(&self, name: &str) -> String {
        self.file_location(&Vec::new(), name)
    }
}

impl Bench {
    fn new(home: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let delta = DeltaConfig { root: home.join("delta").display().to_string(), ..Default::default() };
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
    async fn fresh_table<W: Format>(&self) -> (TableName, Arc<W>) {
        let n = self.tables.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = TableName::new(W::CATALOG, "b", format!("t{n}"));
        let sql = format!("CREATE TABLE {name} (id BIGINT NOT NULL, amount DOUBLE, customer VARCHAR, day DATE)");
        self.engine.sql(&sql).await.expect("table");
        let writer = Arc::new(W::writer(&self.engine, &name).await);
        (name, writer)
    }

    /// The context of a run into `name` (a commit records its own files there).
    fn run(&self, name: &TableName) -> RunContext {
        let identity = RunIdentity {
            run_id: uuid::Uuid::now_v7().to_string(),
            pipeline: None,
            sequence: 1,
            base: None,
            attempt: 1,
        };
        RunContext::new(identity, name.to_string(), 1, self.engine.ledger().clone())
    }

    /// One file staged for real through `writer`: the description every copy starts from.
    async fn template<W: Format>(&self, name: &TableName, writer: &Arc<W>) -> W::File {
        let rows = self
            .engine
            .session()
            .sql(
                "SELECT value AS id, value * 0.5 AS amount, concat('c', CAST(value % 97 AS VARCHAR)) AS customer, \
                 CAST(DATE '2024-01-01' + CAST(value % 365 AS INT) AS DATE) AS day FROM generate_series(1, 10000)",
            )
            .await
            .expect("query");
        let run = self.run(name);
        let stream = rows.execute_stream().await.expect("stream");
        let mut files = ShardSink::new(&run, name, writer.clone()).write_shard(0, stream).await.expect("staged");
        files.pop().expect("one file")
    }

    /// Measures commits of 10, 1,000 and 10,000 files into fresh tables of format `W`.
    fn measure<W: Format>(
        &self,
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        samples: &Samples,
    ) {
        let format = W::CATALOG;
        let format = if format == "lake" { "iceberg" } else { format };
        let template = self.runtime.block_on(async {
            let (name, writer) = self.fresh_table::<W>().await;
            self.template(&name, &writer).await
        });
        for files in FILE_COUNTS {
            group.throughput(Throughput::Elements(files as u64));
            group.bench_with_input(BenchmarkId::new(format, files), &files, |b, &files| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let elapsed = self.runtime.block_on(async {
                            let (name, writer) = self.fresh_table::<W>().await;
                            let staged = (0..files)
                                .map(|i| W::renamed(&template, writer.new_location(&format!("bench-{i:06}.parquet"))))
                                .collect();
                            let run = self.run(&name);
                            let started = Instant::now();
                            writer.commit(staged, &run, WriteMode::Append).await.expect("commit");
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
    bench.measure::<IcebergTableWriter>(&mut group, &samples);
    bench.measure::<DeltaTableWriter>(&mut group, &samples);
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

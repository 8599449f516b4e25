//! The `sluice` binary killed with SIGKILL at random moments (seeded: `SLUICE_KILL_SEED`, printed)
//! during 32 runs; after `sluice recover` and retries the table holds every row exactly once and
//! its data folder no file that the table does not reference.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use sluice::ledger::RunStatus;

use crate::support::{engine, files_under, rows, table};

const RUNS: u64 = 32;
const ROWS_PER_RUN: u64 = 100_000;

/// xorshift64*: enough randomness for kill delays, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

fn statement(batch: u64) -> String {
    format!("INSERT INTO lake.k.t SELECT {batch} AS batch, value FROM generate_series(1, {ROWS_PER_RUN})")
}

fn sluice(home: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home)
        .args(["--shards", "3"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_moments_every_row_lands_exactly_once() {
    let seed = std::env::var("SLUICE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    println!("SLUICE_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let home = tempfile::tempdir().unwrap();
    engine(home.path(), 3)
        .await
        .sql("CREATE SCHEMA lake.k; CREATE TABLE lake.k.t (batch BIGINT, id BIGINT)")
        .await
        .unwrap();

    let mut killed = 0;
    for batch in 0..RUNS {
        let mut child = sluice(home.path(), &["-c", &statement(batch)]);
        std::thread::sleep(Duration::from_millis(rng.below(450)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    println!("{killed} of {RUNS} runs killed");

    // Recover (leases of dead processes are 30 s: age them as time would), then retry.
    crate::support::expire_leases(home.path()).await;
    assert!(sluice(home.path(), &["recover"]).wait().unwrap().success());

    let engine = engine(home.path(), 3).await;
    let runs = engine.ledger().runs(None).await.unwrap();
    assert!(
        runs.iter().all(|r| matches!(r.status, RunStatus::Succeeded | RunStatus::Failed)),
        "recovery settled every run"
    );
    crate::support::land_missing_batches(&engine, RUNS, statement).await;

    let per_batch =
        rows(&engine, "SELECT batch, count(*), count(DISTINCT id) FROM lake.k.t GROUP BY batch ORDER BY batch").await;
    let expected: Vec<Vec<String>> =
        (0..RUNS).map(|b| vec![b.to_string(), ROWS_PER_RUN.to_string(), ROWS_PER_RUN.to_string()]).collect();
    assert_eq!(per_batch, expected, "every batch exactly once (seed {seed})");

    // No orphan data file: the data folder holds exactly the files the table references.
    let t = table(&engine, "k", "t").await;
    let referenced: BTreeSet<String> = t
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .map_ok(|task| task.data_file_path().trim_start_matches("file://").to_string())
        .try_collect()
        .await
        .unwrap();
    let on_disk: BTreeSet<String> =
        files_under(&home.path().join("warehouse/k/t/data")).iter().map(|f| f.display().to_string()).collect();
    assert_eq!(on_disk, referenced, "orphan or missing data files (seed {seed})");
}

//! An Iceberg REST catalog, with its bearer token taken from the environment: the server is
//! tests/interop/rest_catalog.py, the REST protocol over pyiceberg's SqlCatalog (so every create
//! and commit is checked and applied by pyiceberg).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sluice::Engine;

use crate::support::{python, rows};

pub const TOKEN: &str = "s3cr3t-token-for-tests";
pub const TOKEN_VARIABLE: &str = "SLUICE_TEST_REST_TOKEN";

/// The REST server for one test, killed on drop.
pub struct RestCatalog {
    child: Child,
    /// Where it listens, on loopback.
    pub port: u16,
}

impl RestCatalog {
    /// Starts the server with its catalog database and warehouse in `dir`.
    pub fn start(dir: &Path) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/rest_catalog.py");
        std::fs::create_dir_all(dir.join("warehouse")).unwrap();
        let mut child = Command::new(python())
            .arg(script)
            .arg(dir.join("rest.db"))
            .arg(dir.join("warehouse"))
            .env("SLUICE_REST_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the REST catalog did not start: {line:?}"));
        Self { child, port }
    }
}

impl Drop for RestCatalog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn engine(home: &Path, port: u16) -> sluice::Result<Engine> {
    std::fs::create_dir_all(home.join("catalogs")).unwrap();
    let file =
        format!("type = \"iceberg-rest\"\nuri = \"http://127.0.0.1:{port}\"\ntoken_env = \"{TOKEN_VARIABLE}\"\n");
    std::fs::write(home.join("catalogs/rest.toml"), file).unwrap();
    Engine::builder().home(home).shards(2).build().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_rest_catalog_with_a_token_from_the_environment() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = RestCatalog::start(server_dir.path());
    let home = tempfile::tempdir().unwrap();

    // Without the variable, the error names it.
    let missing = engine(home.path(), server.port).await.unwrap_err().to_string();
    assert!(missing.contains(&format!("environment variable `{TOKEN_VARIABLE}` (token) is not set")), "{missing}");
    // SAFETY: no other thread reads this variable, which only this test uses.
    unsafe { std::env::set_var(TOKEN_VARIABLE, TOKEN) };
    let engine = engine(home.path(), server.port).await.unwrap();

    let catalogs = rows(&engine, "SHOW CATALOGS").await;
    assert!(catalogs.iter().any(|c| c[0] == "rest" && c[1] == "iceberg-rest"), "{catalogs:?}");
    assert!(!format!("{catalogs:?}").contains(TOKEN), "the token is never shown");

    engine
        .sql(
            "CREATE SCHEMA rest.s;
             CREATE TABLE rest.s.t (id BIGINT NOT NULL, region VARCHAR) PARTITIONED BY (region);
             CREATE PIPELINE fill WITH (shards = 3) AS
               INSERT INTO rest.s.t SELECT value, 'r' || (value % 3) FROM generate_series(1, 3000);
             RUN PIPELINE fill;
             RUN PIPELINE fill;",
        )
        .await
        .unwrap();
    assert_eq!(rows(&engine, "SELECT count(*), count(DISTINCT region) FROM rest.s.t").await, [["6000", "3"]]);
    assert_eq!(
        rows(&engine, "SELECT count(*) FROM rest.s.\"t$snapshots\" WHERE summary['sluice.pipeline'] = 'fill'").await,
        [["2"]],
        "one snapshot per run, committed through the REST catalog"
    );

    // iceberg-rust cannot send an overwrite to a REST catalog: the run fails cleanly.
    let error = engine.sql("INSERT OVERWRITE rest.s.t SELECT 1, 'r0'").await.unwrap_err().to_string();
    assert!(error.contains("needs an Iceberg SQL catalog") && error.contains("rolled back"), "{error}");
    assert_eq!(rows(&engine, "SELECT count(*) FROM rest.s.t").await, [["6000"]]);

    // A wrong token is refused, and not echoed.
    unsafe { std::env::set_var(TOKEN_VARIABLE, "wrong-token") };
    let other_home = tempfile::tempdir().unwrap();
    let refused = self::engine(other_home.path(), server.port).await.unwrap_err().to_string();
    assert!(refused.contains("cannot open catalog `rest`") && !refused.contains("wrong-token"), "{refused}");

    // With the catalog gone, statements that do not touch it still run; those that do fail.
    drop(server);
    assert_eq!(rows(&engine, "SELECT 1 + 1").await, [["2"]]);
    assert!(engine.sql("SELECT count(*) FROM rest.s.t").await.is_err());
}

//! Catalogs declared in TOML files: the shipped examples work, broken files are named.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::Engine;

use crate::support::rows;

/// The repository's catalogs/*.toml, copied into `dir` so that running them writes nothing into
/// the checkout.
fn copy_examples(dir: &Path) {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalogs");
    for entry in std::fs::read_dir(examples).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_catalog_files_declare_working_catalogs() {
    let home = tempfile::tempdir().unwrap();
    let declared = tempfile::tempdir().unwrap();
    copy_examples(declared.path());
    let engine = Engine::builder().home(home.path()).catalogs_dir(declared.path()).shards(2).build().await.unwrap();

    let catalogs = rows(&engine, "SHOW CATALOGS").await;
    let kinds: Vec<(&str, &str)> = catalogs.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    assert_eq!(
        kinds,
        [("analytics", "iceberg-sql"), ("datafusion", "memory"), ("delta", "delta"), ("lake", "iceberg-sql")]
    );
    let analytics_db = declared.path().join("analytics/catalog.db");
    assert!(catalogs[0][2].contains(&analytics_db.display().to_string()), "{catalogs:?}");

    engine
        .sql(
            "CREATE SCHEMA analytics.web;
             CREATE TABLE analytics.web.hits (id BIGINT NOT NULL, path VARCHAR);
             CREATE PIPELINE hits WITH (shards = 2) AS
               INSERT INTO analytics.web.hits SELECT value, '/page/' || (value % 3) FROM generate_series(1, 1000);
             RUN PIPELINE hits;",
        )
        .await
        .unwrap();
    assert_eq!(rows(&engine, "SELECT count(*) FROM analytics.web.hits").await, [["1000"]]);
    assert!(analytics_db.exists());
    assert!(declared.path().join("analytics/warehouse/web/hits/data").is_dir());
    engine
        .sql("CREATE SCHEMA delta.web; CREATE TABLE delta.web.hits AS SELECT * FROM analytics.web.hits")
        .await
        .unwrap();
    assert_eq!(rows(&engine, "SELECT count(*) FROM delta.web.hits").await, [["1000"]]);
    assert!(declared.path().join("delta/web/hits/_delta_log").is_dir());
    // A declared catalog is a separate catalog: `lake` has no such schema.
    assert!(engine.sql("SELECT * FROM lake.web.hits").await.is_err());
}

#[test]
fn the_s3_example_declares_a_warehouse_in_a_bucket_with_no_secret_in_the_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalogs/s3/lakehouse.toml");
    let config = sluice::catalog::parse_catalog(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    let sluice::catalog::CatalogConfig::IcebergSql(sql) = config else { panic!("{config:?}") };
    assert_eq!(sql.warehouse, "s3://analytics-lake/warehouse");
    assert_eq!(sql.storage.region.as_deref(), Some("eu-west-1"));
}

#[test]
fn the_rest_example_declares_a_rest_catalog_with_its_token_from_the_environment() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalogs/rest/shared.toml");
    let config = sluice::catalog::parse_catalog(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    let sluice::catalog::CatalogConfig::IcebergRest(rest) = config else { panic!("{config:?}") };
    assert_eq!(rest.token_env.as_deref(), Some("SHARED_CATALOG_TOKEN"));
    assert!(rest.uri.starts_with("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_catalog_file_is_named_with_its_bad_key() {
    let home = tempfile::tempdir().unwrap();
    let catalogs = home.path().join("catalogs");
    std::fs::create_dir_all(&catalogs).unwrap();
    let file = catalogs.join("sales.toml");
    std::fs::write(&file, "type = \"iceberg-sql\"\nuri = \"sqlite:sales.db\"\nwarehous = \"wh\"\n").unwrap();
    let error = Engine::builder().home(home.path()).build().await.unwrap_err().to_string();
    assert!(error.contains(&format!("catalog file {}", file.display())), "{error}");
    assert!(error.contains("unknown field `warehous`"), "{error}");

    std::fs::write(&file, "type = \"hive\"\n").unwrap();
    let error = Engine::builder().home(home.path()).build().await.unwrap_err().to_string();
    assert!(error.contains("unknown variant `hive`"), "{error}");

    std::fs::write(&file, "type = \"iceberg-sql\"\nuri = \"sqlite:s.db\"\nwarehouse = \"ftp://host/wh\"\n").unwrap();
    let error = Engine::builder().home(home.path()).build().await.unwrap_err().to_string();
    assert!(
        error.contains(
            "`ftp://host/wh`: not a location Sluice can reach (a local folder, s3://, gs://, az:// or abfss://)"
        ),
        "{error}"
    );
    std::fs::write(
        &file,
        "type = \"iceberg-sql\"\nuri = \"sqlite:s.db\"\nwarehouse = \"s3://b/wh\"\n[storage]\nendpont = \"x\"\n",
    )
    .unwrap();
    let error = Engine::builder().home(home.path()).build().await.unwrap_err().to_string();
    assert!(error.contains("unknown field `endpont`"), "{error}");
    std::fs::write(&file, "type = \"delta\"\nroot = \"hdfs://host/delta\"\n").unwrap();
    let error = Engine::builder().home(home.path()).build().await.unwrap_err().to_string();
    assert!(error.contains("`hdfs://host/delta`: not a location Sluice can reach"), "{error}");
    std::fs::remove_file(&file).unwrap();
    std::fs::write(
        catalogs.join("Bad-Name.toml"),
        "type = \"iceberg-sql\"\nuri = \"sqlite:x.db\"\nwarehouse = \"w\"\n",
    )
    .unwrap();
    let error = Engine::builder().home(home.path()).build().await.unwrap_err().to_string();
    assert!(error.contains("`Bad-Name` is not a valid catalog name"), "{error}");
}

#[test]
fn the_cli_takes_catalog_folders() {
    let home = tempfile::tempdir().unwrap();
    let declared = tempfile::tempdir().unwrap();
    copy_examples(declared.path());
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home.path())
        .arg("--catalogs")
        .arg(declared.path())
        .args(["--format", "csv", "-c", "SHOW CATALOGS"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("name,type,location\nanalytics,iceberg-sql,"), "{stdout}");
}

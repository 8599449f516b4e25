//! Reading a table as of an earlier snapshot, and listing its snapshots.

use crate::support::{engine, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn select_as_of_a_snapshot() {
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), 2).await;
    engine.sql("CREATE SCHEMA lake.tt; CREATE TABLE lake.tt.t (id BIGINT)").await.unwrap();
    engine.sql("INSERT INTO lake.tt.t VALUES (1), (2)").await.unwrap();
    let first = engine.ledger().runs(None).await.unwrap()[0].snapshot_id.unwrap();
    engine.sql("INSERT INTO lake.tt.t VALUES (3)").await.unwrap();

    assert_eq!(value(&engine, "SELECT count(*) FROM lake.tt.t").await, "3");
    assert_eq!(value(&engine, &format!("SELECT count(*) FROM lake.tt.\"t@{first}\"")).await, "2");
    assert_eq!(value(&engine, "SELECT count(*) FROM lake.tt.\"t$snapshots\"").await, "2");

    let error = engine.sql("SELECT * FROM lake.tt.\"t@42\"").await.unwrap_err().to_string();
    assert!(error.contains("table `lake.tt.t` has no snapshot 42"), "{error}");
}

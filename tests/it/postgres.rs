//! An Iceberg SQL catalog on PostgreSQL: a throwaway server in a temp folder, started with the
//! machine's PostgreSQL binaries (`scripts/test.sh` installs them where missing).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::Engine;
use sqlx::Row;

use crate::support::rows;

/// A PostgreSQL server for one test, stopped on drop.
struct Postgres {
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn binary(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.exists());
    let packaged = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|version| version.path().join("bin").join(name))
            .filter(|path| path.exists())
            .collect();
        found.sort();
        found.pop()
    };
    on_path.or_else(packaged).unwrap_or_else(|| {
        panic!(
            "`{name}` not found: the PostgreSQL server is needed (apt-get install postgresql; scripts/test.sh does it)"
        )
    })
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb refuses root).
fn run(name: &str, args: &[&str]) {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let program = binary(name);
    let mut command = if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    let output = command.args(args).output().unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(output.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl Postgres {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (data_arg, socket) = (data.display().to_string(), dir.path().display().to_string());
        run("initdb", &["-D", &data_arg, "-A", "trust", "-U", "postgres", "--no-sync"]);
        let options = format!("-p {port} -k {socket} -c listen_addresses=127.0.0.1 -c fsync=off");
        let log = dir.path().join("server.log").display().to_string();
        run("pg_ctl", &["-D", &data_arg, "-l", &log, "-o", &options, "-w", "start"]);
        Self { data, port, _dir: dir }
    }

    fn uri(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        run("pg_ctl", &["-D", &self.data.display().to_string(), "-m", "immediate", "stop"]);
    }
}

async fn engine(home: &Path, uri: &str) -> Engine {
    std::fs::create_dir_all(home.join("catalogs")).unwrap();
    let file = format!("type = \"iceberg-sql\"\nuri = \"{uri}\"\nwarehouse = \"../pg-warehouse\"\n");
    std::fs::write(home.join("catalogs/pg.toml"), file).unwrap();
    Engine::builder().home(home).shards(2).build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iceberg_sql_catalog_on_postgresql() {
    let postgres = Postgres::start();
    let home = tempfile::tempdir().unwrap();
    let engine = engine(home.path(), &postgres.uri()).await;
    let catalogs = rows(&engine, "SHOW CATALOGS").await;
    assert!(
        catalogs.iter().any(|c| c[0] == "pg" && c[1] == "iceberg-sql" && c[2].contains(&postgres.uri())),
        "{catalogs:?}"
    );

    engine
        .sql(
            "CREATE SCHEMA pg.s;
             CREATE TABLE pg.s.t (id BIGINT NOT NULL, region VARCHAR) PARTITIONED BY (region);
             INSERT INTO pg.s.t SELECT value, 'r' || (value % 3) FROM generate_series(1, 300);
             CREATE PIPELINE fix WITH (mode = 'overwrite_partitions') AS
               INSERT INTO pg.s.t SELECT value, 'r1' FROM generate_series(1000, 1009);
             RUN PIPELINE fix;",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&engine, "SELECT region, count(*) FROM pg.s.t GROUP BY region ORDER BY region").await,
        [["r0", "100"], ["r1", "10"], ["r2", "100"]]
    );
    // Another engine (as another process would) sees the same table through PostgreSQL.
    drop(engine);
    let engine = self::engine(home.path(), &postgres.uri()).await;
    assert_eq!(rows(&engine, "SELECT count(*) FROM pg.s.t").await, [["210"]]);

    // The catalog really lives in PostgreSQL: the JDBC layout's iceberg_tables row points at the
    // metadata file of the overwrite snapshot.
    let pool = sqlx::PgPool::connect(&postgres.uri()).await.unwrap();
    let row = sqlx::query(
        "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables WHERE catalog_name = 'pg'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((row.get::<String, _>(0), row.get::<String, _>(1)), ("s".to_string(), "t".to_string()));
    assert!(row.get::<String, _>(2).ends_with(".metadata.json"));
    assert_eq!(
        rows(&engine, "SELECT operation FROM pg.s.\"t$snapshots\" ORDER BY committed_at").await,
        [["append"], ["overwrite"]]
    );
}

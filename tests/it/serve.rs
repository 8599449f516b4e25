//! The real `sluice serve` process on a loopback port, driven over HTTP: trigger and poll to
//! success, list, events, cancel a long run (no staged file left), a run that fails once is
//! `dead` and its retry lands it; bad input gets 4xx; `/metrics` read by a Prometheus text
//! parser shows the runs; with a token every route but `/health` needs it (never logged);
//! a non-loopback bind without a token refuses to start; SIGTERM during a run exits 0 with the
//! run cancelled cleanly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{engine, files_under};

/// A `sluice serve` child process and what it printed on stderr.
struct Server {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Server {
    /// Starts `sluice serve` on `home` (a free loopback port) with `env`.
    fn start(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--home")
            .arg(home)
            .args(["--shards", "2", "serve", "--listen", "127.0.0.1:0", "--tick", "100ms"])
            .args(args)
            .env_remove("SLUICE_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("sluice serve: listening on ") {
                    address_tx.send(address.to_string()).ok();
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let base = address_rx.recv_timeout(Duration::from_secs(60)).expect("sluice serve listens");
        Self { child, base, stderr, http: reqwest::Client::new() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base))).await
    }

    /// Polls `GET /runs/{id}` until its status is `status` (at most a minute).
    async fn until_status(&self, run_id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, run) = self.get(&format!("/runs/{run_id}")).await;
            if run["status"] == status {
                return run;
            }
            assert!(Instant::now() < deadline, "run {run_id} never became {status}: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    fn terminate(mut self) -> (bool, String) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        (status.success(), self.stderr.lock().unwrap().clone())
    }
}

/// A home with pipelines `quick` (one row), `long` (2 billion rows), and `flaky` (fails when
/// the server's failpoint says so).
async fn home_with_pipelines(home: &Path) {
    engine(home, 2)
        .await
        .sql(
            "CREATE SCHEMA lake.s; CREATE TABLE lake.s.t (id BIGINT); CREATE TABLE lake.s.big (id BIGINT);
             CREATE TABLE lake.s.flaky (id BIGINT);
             CREATE PIPELINE quick AS INSERT INTO lake.s.t SELECT 1;
             CREATE PIPELINE long AS INSERT INTO lake.s.big SELECT value FROM generate_series(1, 2000000000);
             CREATE PIPELINE flaky AS INSERT INTO lake.s.flaky SELECT value FROM generate_series(1, 10);",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_runs_pipelines_over_http() {
    let home = tempfile::tempdir().unwrap();
    home_with_pipelines(home.path()).await;
    // The first write into `flaky` fails; its retry succeeds.
    let server = Server::start(home.path(), &[], &[("FAILPOINTS", "shard-write/lake.s.flaky=1*return->off")]);

    let (status, health) = server.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")), "{health}");

    // Trigger, poll to success, list, events.
    let (status, started) = server.post("/pipelines/quick/runs").await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let run = server.until_status(&run_id, "succeeded").await;
    assert_eq!(run["rows"], 1);
    let (_, pipelines) = server.get("/pipelines").await;
    let quick = pipelines.as_array().unwrap().iter().find(|p| p["name"] == "quick").unwrap();
    assert_eq!(quick["last_status"], "succeeded");
    let (_, runs) = server.get("/runs?pipeline=quick&status=succeeded&limit=5").await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    let (_, events) = server.get(&format!("/runs/{run_id}/events")).await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"opened"));
    assert!(kinds.ends_with(&["committed", "closed"]), "{kinds:?}");

    // Cancel a long run: rolled back, nothing staged left; a second trigger meanwhile is a conflict.
    let (_, long) = server.post("/pipelines/long/runs").await;
    let long_id = long["run_id"].as_str().unwrap().to_string();
    server.until_status(&long_id, "staging").await;
    let (status, busy) = server.post("/pipelines/long/runs").await;
    assert_eq!(status, 409, "{busy}");
    // Its events, followed as server-sent events until the run ends.
    let follow = server.http.get(format!("{}/runs/{long_id}/events?follow=true", server.base));
    let mut stream = follow.send().await.unwrap();
    let (status, cancelling) = server.post(&format!("/runs/{long_id}/cancel")).await;
    assert_eq!(status, 202, "{cancelling}");
    let mut followed = String::new();
    let read = async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            followed.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the stream ends with the run");
    assert!(followed.contains("event: opened") && followed.contains("event: closed"), "{followed}");
    assert!(followed.contains(r#""status":"cancelled""#), "{followed}");
    server.until_status(&long_id, "cancelled").await;
    assert!(files_under(&home.path().join("warehouse/s/big/data")).is_empty(), "no staged file left");

    // A run failing once is dead (no retries); its retry runs under its id and lands once.
    let (_, flaky) = server.post("/pipelines/flaky/runs").await;
    let flaky_id = flaky["run_id"].as_str().unwrap().to_string();
    server.until_status(&flaky_id, "dead").await;
    let (_, dead) = server.get("/runs?status=dead").await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    let (status, retried) = server.post(&format!("/runs/{flaky_id}/retry")).await;
    assert_eq!((status, retried["run_id"].as_str()), (202, Some(flaky_id.as_str())), "{retried}");
    let landed = server.until_status(&flaky_id, "succeeded").await;
    assert_eq!((landed["rows"].as_u64(), landed["attempt"].as_u64()), (Some(10), Some(2)), "{landed}");

    // Bad input: 4xx with a JSON error, never 500.
    for (path, post, expected) in [
        ("/pipelines/nope/runs", true, 404),
        ("/pipelines/nope", false, 404),
        ("/runs/nope", false, 404),
        ("/runs?limit=x", false, 400),
        ("/runs?limit=0", false, 400),
        ("/no/such/route", false, 404),
        (&format!("/runs/{run_id}/cancel"), true, 409),
        (&format!("/runs/{run_id}/retry"), true, 409),
    ] {
        let (status, body) = if post { server.post(path).await } else { server.get(path).await };
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let bad_json = server.http.post(format!("{}/pipelines/quick/runs", server.base)).body("[1");
    let (status, body) = server.send(bad_json).await;
    assert_eq!(status, 400, "{body}");
    let huge = server.http.post(format!("{}/pipelines/quick/runs", server.base)).body(vec![b' '; 100_000]);
    assert_eq!(server.send(huge).await.0, 413, "the body limit");

    // /metrics as Prometheus reads it.
    let metrics = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let lines = metrics.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
            |s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            },
        )
    };
    assert_eq!(sample("sluice_runs_total", &[("pipeline", "quick"), ("status", "succeeded")]), Some(1.0), "{metrics}");
    assert_eq!(sample("sluice_runs_total", &[("pipeline", "long"), ("status", "cancelled")]), Some(1.0), "{metrics}");
    assert_eq!(sample("sluice_rows_committed_total", &[("pipeline", "flaky")]), Some(10.0), "{metrics}");
    assert_eq!(sample("sluice_dead_runs", &[]), Some(0.0), "{metrics}");
    assert_eq!(sample("sluice_queue_depth", &[]), Some(0.0), "{metrics}");
    assert!(metrics.contains("sluice_run_duration_seconds_bucket"), "{metrics}");

    let (exited_0, _) = server.terminate();
    assert!(exited_0, "SIGTERM: exit code 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_guards_every_route_but_health_and_is_never_logged() {
    let home = tempfile::tempdir().unwrap();
    home_with_pipelines(home.path()).await;
    let secret = "s3cr3t-token-value";
    let server = Server::start(home.path(), &[], &[("SLUICE_TOKEN", secret), ("SLUICE_LOG", "debug")]);
    assert_eq!(server.get("/health").await.0, 200);
    assert_eq!(server.get("/pipelines").await.0, 401);
    let wrong = server.http.get(format!("{}/pipelines", server.base)).bearer_auth("s3cr3t-token-valuX");
    assert_eq!(server.send(wrong).await.0, 401);
    let right = server.http.get(format!("{}/pipelines", server.base)).bearer_auth(secret);
    assert_eq!(server.send(right).await.0, 200);
    let trigger = server.http.post(format!("{}/pipelines/quick/runs", server.base)).bearer_auth(secret);
    assert_eq!(server.send(trigger).await.0, 202);
    let (_, logs) = server.terminate();
    assert!(!logs.contains(secret), "the token is never logged");
}

#[test]
fn a_non_loopback_bind_without_a_token_refuses_to_start() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--home")
        .arg(home.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without SLUICE_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_run_cancels_it_cleanly_and_exits_0() {
    let home = tempfile::tempdir().unwrap();
    home_with_pipelines(home.path()).await;
    let server = Server::start(home.path(), &["--grace", "1s"], &[]);
    let (_, long) = server.post("/pipelines/long/runs").await;
    let long_id = long["run_id"].as_str().unwrap().to_string();
    server.until_status(&long_id, "staging").await;
    let (exited_0, logs) = server.terminate();
    assert!(exited_0, "exit code 0: {logs}");
    let engine = engine(home.path(), 2).await;
    let run = engine.ledger().run(&long_id).await.unwrap().unwrap();
    assert_eq!(run.status.as_str(), "cancelled", "{logs}");
    assert!(files_under(&home.path().join("warehouse/s/big/data")).is_empty(), "no staged file left");
    let due = engine.ledger().scheduled_runs(Some("long")).await.unwrap();
    assert_eq!(due.iter().map(|d| d.status.as_str()).collect::<Vec<_>>(), ["cancelled"]);
}

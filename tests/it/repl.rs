//! The REPL driven through a pseudo-terminal, as a person types at it: the continuation prompt,
//! Tab completion, Ctrl-C at the prompt, Ctrl-C during a long write (the table unchanged, no
//! staged file left, the run `cancelled`, the REPL answering the next statement) and during a
//! long query, `quit`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use expectrl::{Eof, Expect, Session};
use sluice::ledger::RunStatus;

use crate::support::files_under;

const PROMPT: &str = "sluice> ";

/// The status of the newest run in `home`'s ledger, read by a second engine (the REPL's process
/// holds the home too; SQLite's write-ahead log lets both in).
fn newest_run(home: &Path) -> Option<RunStatus> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let engine = sluice::Engine::builder().home(home).recover_on_start(false).build().await.unwrap();
        engine.ledger().runs(None).await.unwrap().pop().map(|r| r.status)
    })
}

/// Waits (at most 60 s) until `ready` holds.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_repl_completes_names_cancels_a_write_with_ctrl_c_and_goes_on() {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.arg("--home").arg(home.path()).arg("--shards").arg("2").env("NO_COLOR", "1");
    let mut repl = Session::spawn(command).expect("the REPL starts in a pseudo-terminal");
    repl.set_expect_timeout(Some(Duration::from_secs(60)));
    repl.expect(PROMPT).unwrap();

    // A statement over several lines: the continuation prompt says it goes on.
    repl.send_line("CREATE SCHEMA lake.r;").unwrap();
    repl.expect(PROMPT).unwrap();
    repl.send_line("CREATE TABLE lake.r.orders_by_day").unwrap();
    repl.expect("-> ").unwrap();
    repl.send_line("  (id BIGINT);").unwrap();
    repl.expect(PROMPT).unwrap();
    repl.send_line("INSERT INTO lake.r.orders_by_day VALUES (1), (2), (3);").unwrap();
    repl.expect(PROMPT).unwrap();

    // Tab completes the table's name from the catalog.
    repl.send("SELECT sum(id) AS total_of_ids FROM lake.r.orders_b").unwrap();
    repl.send("\t").unwrap();
    repl.send_line(";").unwrap();
    repl.expect("total_of_ids").unwrap();
    repl.expect("| 6 ").unwrap();
    repl.expect(PROMPT).unwrap();

    // Ctrl-C at the prompt drops what was typed.
    repl.send("SELECT this would fail").unwrap();
    repl.send("\x03").unwrap();
    repl.expect(PROMPT).unwrap(); // (what is typed before the new prompt is dropped too)
    repl.send_line("SELECT 7 AS seven;").unwrap();
    repl.expect("| 7 ").unwrap();
    repl.expect(PROMPT).unwrap();

    // Ctrl-C during a long write: the run stops, rolls back, and the REPL goes on.
    let data = home.path().join("warehouse/r/orders_by_day/data");
    let files_before = files_under(&data).len();
    repl.send_line("INSERT INTO lake.r.orders_by_day SELECT value FROM generate_series(1, 2000000000);").unwrap();
    wait_for("the write to stage files", || {
        newest_run(home.path()) == Some(RunStatus::Staging) && files_under(&data).len() > files_before
    });
    repl.send("\x03").unwrap();
    repl.expect("was cancelled; nothing was committed").unwrap();
    repl.expect(PROMPT).unwrap();
    assert_eq!(newest_run(home.path()), Some(RunStatus::Cancelled));
    assert_eq!(files_under(&data).len(), files_before, "no staged file is left");
    repl.send_line("SELECT count(*) AS rows_after_cancel FROM lake.r.orders_by_day;").unwrap();
    repl.expect("rows_after_cancel").unwrap();
    repl.expect("| 3 ").unwrap();
    repl.expect(PROMPT).unwrap();

    // Ctrl-C during a pipeline with steps: the running step stops, the committed one stays.
    repl.send_line("CREATE TABLE lake.r.first (id BIGINT); CREATE TABLE lake.r.endless (id BIGINT);").unwrap();
    repl.expect(PROMPT).unwrap();
    repl.send_line(
        "CREATE PIPELINE two_steps AS BEGIN INSERT INTO lake.r.first VALUES (1); \
         STEP endless DEPENDS ON (first) AS INSERT INTO lake.r.endless SELECT value FROM generate_series(1, 2000000000); END;",
    )
    .unwrap();
    repl.expect(PROMPT).unwrap();
    let endless = home.path().join("warehouse/r/endless/data");
    repl.send_line("RUN PIPELINE two_steps;").unwrap();
    wait_for("the endless step to stage files", || !files_under(&endless).is_empty());
    repl.send("\x03").unwrap();
    repl.expect("pipeline `two_steps` run").unwrap();
    repl.expect("cancelled").unwrap();
    repl.expect(PROMPT).unwrap();
    assert!(files_under(&endless).is_empty(), "the running step's staged files are gone");
    repl.send_line("SELECT step || ':' || status AS step_status FROM sluice.steps ORDER BY step;").unwrap();
    repl.expect("endless:cancelled").unwrap();
    repl.expect("first:succeeded").unwrap();
    repl.expect(PROMPT).unwrap();

    // Ctrl-C during a long query stops it.
    repl.send_line("SELECT count(*) AS never_counted FROM generate_series(1, 100000000000);").unwrap();
    repl.expect("never_counted").unwrap(); // the statement was read (its echo)
    // A Ctrl-C that comes before the statement is running is not its to take: press it again
    // until the query reports it was cancelled.
    repl.set_expect_timeout(Some(Duration::from_secs(1)));
    let cancelled = (0..60).any(|_| {
        repl.send("\x03").unwrap();
        repl.expect("error: in the statement at line 1, column 1: cancelled").is_ok()
    });
    assert!(cancelled, "the query stopped on Ctrl-C");
    repl.set_expect_timeout(Some(Duration::from_secs(60)));
    repl.expect(PROMPT).unwrap();

    // History is on disk while the REPL still runs (written after every statement).
    let history = std::fs::read_to_string(home.path().join("history.txt")).unwrap();
    assert!(history.contains("CREATE TABLE lake.r.orders_by_day") && history.contains("never_counted"), "{history}");
    repl.send_line("quit").unwrap();
    repl.expect(Eof).unwrap();
}

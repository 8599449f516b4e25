//! Test-only failpoints, for proving the commit protocol under faults.
//!
//! Built on the `fail` crate; they are live only when `fail` is compiled with its `failpoints`
//! feature, which the test suite turns on (a dev-dependency) and release builds never do. A
//! failpoint is named `<point>/<table>` so that concurrent tests on different tables do not trip
//! each other's faults, e.g. `fail::cfg("shard-write/lake.faults.t", "1*off->return")`.
//!
//! The `sluice` binary reads them from `FAILPOINTS` (e.g.
//! `FAILPOINTS='before-commit/lake.s.t=return(abort)'` kills it after staging). Not part of the
//! library's API.
//!
//! Points: `shard-write` (after a shard wrote a batch), `before-commit` (all shards staged, the
//! catalog not yet called), `commit-refused` (the commit request fails before the catalog has
//! it), `commit-request-lost` (the same, but reported as an unknown outcome),
//! `commit-response-lost` (the catalog took the commit, the answer is lost), `after-commit`
//! (committed, the ledger not yet told: a crash there), `commit-stall` (inside a commit attempt,
//! just before the catalog call: on Iceberg SQL catalogs with the attempt's manifests and
//! metadata written; `pause` stalls it, `return(abort)` kills the process there),
//! `shard-written` (a cluster's executor wrote a shard's files, not yet handed back),
//! `export-upload` (an export's whole file sent to its object store, the upload not yet
//! completed; scoped by the object's URL).

/// Fails with the failpoint's full name when `<point>/<scope>` is configured to fire now; with
/// `return(abort)` the process dies on the spot instead, as in a crash.
pub(crate) fn check(point: &str, scope: &str) -> Result<(), String> {
    if !fail::has_failpoints() {
        return Ok(());
    }
    let name = format!("{point}/{scope}");
    match fail::eval(&name, |argument| argument) {
        Some(Some(argument)) if argument == "abort" => std::process::abort(),
        Some(_) => Err(name),
        None => Ok(()),
    }
}

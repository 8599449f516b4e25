//! The result tables of statements and commands that are not queries.

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime;

use super::ResultBatch;
use crate::coordinator::{Resolution, RunReport};
use crate::ledger::RunRecord;

/// A run report as a one-row batch: the result of `RUN PIPELINE`, `INSERT` and `COPY`; a run on
/// a cluster adds the executors that ran its shards; a write with expectations (or bad input lines) adds rows_in, rows_written, rows_dropped,
/// rows_quarantined (rows in = written + dropped + quarantined) and each constraint's counts.
pub fn run_report_batch(report: &RunReport) -> RecordBatch {
    let batch = ResultBatch::default()
        .column("run_id", false, StringArray::from(vec![report.run_id.as_str()]))
        .column("pipeline", true, StringArray::from(vec![report.pipeline.as_deref()]))
        .column("target", false, StringArray::from(vec![report.target.as_str()]))
        .column("shards", false, UInt64Array::from(vec![report.shards as u64]))
        .column("rows", false, UInt64Array::from(vec![report.rows]))
        .column("files", false, UInt64Array::from(vec![report.files]))
        .column("bytes", false, UInt64Array::from(vec![report.bytes]))
        .column("snapshot_id", true, Int64Array::from(vec![report.snapshot_id]))
        .column("elapsed_ms", false, UInt64Array::from(vec![report.elapsed.as_millis() as u64]));
    let batch = match report.executors.as_slice() {
        [] => batch,
        executors => batch.column("executors", false, StringArray::from(vec![executors.join(", ")])),
    };
    let Some(quality) = &report.quality else { return batch.build() };
    let constraints: Vec<String> = quality
        .constraints
        .iter()
        .map(|c| format!("{}: {} passed, {} failed ({})", c.name, c.passed, c.failed, c.action))
        .collect();
    batch
        .column("rows_in", false, UInt64Array::from(vec![quality.rows_in]))
        .column("rows_written", false, UInt64Array::from(vec![report.rows]))
        .column("rows_dropped", false, UInt64Array::from(vec![quality.rows_dropped]))
        .column("rows_quarantined", false, UInt64Array::from(vec![quality.rows_quarantined]))
        .column("expectations", false, StringArray::from(vec![constraints.join("; ")]))
        .build()
}

/// `SHOW CATALOGS`: each catalog's name, type and location.
pub fn catalogs_batch(catalogs: &[(String, &str, String)]) -> RecordBatch {
    ResultBatch::default()
        .column("name", false, StringArray::from_iter_values(catalogs.iter().map(|c| c.0.as_str())))
        .column("type", false, StringArray::from_iter_values(catalogs.iter().map(|c| c.1)))
        .column("location", false, StringArray::from_iter_values(catalogs.iter().map(|c| c.2.as_str())))
        .build()
}

/// `SHOW CLUSTER`: the scheduler and its executors (or this process alone, when runs execute
/// locally): role, id, address, task slots, last heartbeat, version.
pub fn cluster_batch(members: &[crate::cluster::Member]) -> RecordBatch {
    let heartbeats = members.iter().map(|m| m.last_seen_ms.and_then(|ms| i64::try_from(ms).ok()));
    ResultBatch::default()
        .column("role", false, StringArray::from_iter_values(members.iter().map(|m| m.role)))
        .column("id", false, StringArray::from_iter_values(members.iter().map(|m| m.id.as_str())))
        .column("address", false, StringArray::from_iter_values(members.iter().map(|m| m.address.as_str())))
        .column("slots", true, UInt64Array::from_iter(members.iter().map(|m| m.slots)))
        .column(
            "last_heartbeat",
            true,
            datafusion::arrow::array::TimestampMillisecondArray::from_iter(heartbeats).with_timezone("UTC"),
        )
        .column("version", true, StringArray::from_iter(members.iter().map(|m| m.version.as_deref())))
        .build()
}

/// Property / value rows (`DESCRIBE PIPELINE`).
pub fn properties_batch(properties: &[(&str, String)]) -> RecordBatch {
    ResultBatch::default()
        .column("property", false, StringArray::from_iter_values(properties.iter().map(|(k, _)| *k)))
        .column("value", false, StringArray::from_iter_values(properties.iter().map(|(_, v)| v.as_str())))
        .build()
}

/// `EXPLAIN` rows as DataFusion prints them: (plan_type, plan).
pub fn explain_batch(rows: &[(&str, String)]) -> RecordBatch {
    ResultBatch::default()
        .column("plan_type", false, StringArray::from_iter_values(rows.iter().map(|(k, _)| *k)))
        .column("plan", false, StringArray::from_iter_values(rows.iter().map(|(_, v)| v.as_str())))
        .build()
}

/// The plan text of `EXPLAIN` rows, each row's type and plan on lines of their own.
pub fn explain_text(batches: &[RecordBatch]) -> String {
    let mut text = Vec::new();
    for batch in batches {
        let (Some(kinds), Some(plans)) = (
            batch.column(0).as_any().downcast_ref::<StringArray>(),
            batch.column(1).as_any().downcast_ref::<StringArray>(),
        ) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            text.push(format!("{}:\n{}", kinds.value(row), plans.value(row).trim_end()));
        }
    }
    text.join("\n")
}

/// What `sluice recover` settled: each abandoned run and its outcome (a run left alone shows
/// until when its process holds it).
pub fn settled_batch(settled: &[(RunRecord, Resolution)]) -> RecordBatch {
    let outcome = |r: &Resolution| match r {
        Resolution::Committed(id) => format!("committed (snapshot {id}): marked succeeded"),
        Resolution::RolledBack => "not committed: staged files deleted, marked failed".to_string(),
        Resolution::StillRunning => "still running: a live process holds its lease; left alone".to_string(),
        Resolution::KeptFiles => {
            "not committed, but the catalog cannot fence a late commit: marked failed, staged files kept".to_string()
        }
    };
    let lease = |run: &RunRecord| {
        run.lease_until_ms
            .and_then(timestamp_ms_to_datetime)
            .map(|until| format!("{} UTC", until.format("%Y-%m-%d %H:%M:%S")))
    };
    let leases = settled.iter().map(|(run, r)| (*r == Resolution::StillRunning).then(|| lease(run)).flatten());
    ResultBatch::default()
        .column("run_id", false, StringArray::from_iter_values(settled.iter().map(|(run, _)| run.run_id.as_str())))
        .column("target", false, StringArray::from_iter_values(settled.iter().map(|(run, _)| run.target.as_str())))
        .column("outcome", false, StringArray::from_iter_values(settled.iter().map(|(_, r)| outcome(r))))
        .column("leased_until", true, StringArray::from_iter(leases))
        .build()
}

/// One object `sluice doctor` looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of object: `ledger`, `catalog`, `table`.
    pub kind: &'static str,
    /// The object: the ledger file, a catalog or a table name.
    pub object: String,
    /// The problem, or `None` when it is sound.
    pub problem: Option<String>,
}

impl Finding {
    /// A finding about `object`.
    pub fn new(kind: &'static str, object: impl Into<String>, problem: Option<String>) -> Self {
        Self { kind, object: object.into(), problem }
    }
}

/// Findings as rows: `kind`, `object`, `status` (`ok` or `problem`), `detail`.
pub fn findings_batch(findings: &[Finding]) -> RecordBatch {
    let status = findings.iter().map(|f| if f.problem.is_some() { "problem" } else { "ok" });
    ResultBatch::default()
        .column("kind", false, StringArray::from_iter_values(findings.iter().map(|f| f.kind)))
        .column("object", false, StringArray::from_iter_values(findings.iter().map(|f| f.object.as_str())))
        .column("status", false, StringArray::from_iter_values(status))
        .column("detail", true, StringArray::from_iter(findings.iter().map(|f| f.problem.as_deref())))
        .build()
}

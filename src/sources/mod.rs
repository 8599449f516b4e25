//! Input files whose bad lines are kept out of a pipeline's rows (`bad_rows = 'fail' |
//! 'quarantine'`): every CSV or newline-delimited JSON scan of the pipeline's query is read by a
//! [`LineScanExec`] instead of DataFusion's own reader. It decodes lines in batches with the same
//! arrow decoders (so a good line reads exactly as it would without the option); only a batch
//! that fails is read again one line at a time, to find its bad lines. A bad line fails the run
//! naming its file and line (`fail`), or is kept with its file, line number, raw text and error
//! ([`BadLines`]) for the quarantine table while the rest of the file loads (`quarantine`).
//!
//! The columns are those the scan was planned with: declare them (`CREATE EXTERNAL TABLE src (id
//! INT, day DATE) STORED AS CSV LOCATION ...`) to have a bad number or date caught as a bad line.

mod scan;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DFResult, exec_err, plan_err};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::physical_plan::{CsvSource, FileScanConfig, JsonSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::path::Path;
use datafusion::physical_plan::ExecutionPlan;

pub use scan::LineScanExec;
use scan::{CsvFormat, FileLines, LineFormat};

use crate::pipeline::BadRows;
use crate::runtime::Kept;

/// An unparseable line of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The file, as a path (local) or URL.
    pub file: String,
    /// Its line number, from 1 (the header, if any, is line 1).
    pub line: u64,
    /// The line as it is in the file, without its line break (invalid UTF-8 replaced by U+FFFD).
    pub raw: String,
    /// What is wrong with it.
    pub error: String,
}

/// The bad lines a write's scans found, and how many lines they read well; shared by every
/// partition of the write.
#[derive(Debug)]
pub struct BadLines {
    mode: BadRows,
    lines: Kept<BadLine>,
    count: AtomicU64,
    good: AtomicU64,
}

impl BadLines {
    /// An empty tally for `mode`.
    pub fn new(mode: BadRows) -> Self {
        let lines = Kept::new("bad input lines");
        BadLines { mode, lines, count: AtomicU64::new(0), good: AtomicU64::new(0) }
    }

    /// What bad lines do.
    pub fn mode(&self) -> BadRows {
        self.mode
    }

    /// The lines read well so far.
    pub fn good(&self) -> u64 {
        self.good.load(Ordering::Relaxed)
    }

    /// The bad lines found so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The bad lines kept so far (taken: a second call has none).
    pub fn take(&self) -> Vec<BadLine> {
        self.lines.take()
    }

    fn read_well(&self, lines: usize) {
        self.good.fetch_add(lines as u64, Ordering::Relaxed);
    }

    /// Keeps `line` (in memory from `pool`), or, in `fail` mode, the error that stops the run.
    fn keep(&self, line: BadLine, pool: &Arc<dyn MemoryPool>) -> DFResult<()> {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.mode == BadRows::Fail {
            const SHOWN: usize = 200;
            let raw: String = line.raw.chars().take(SHOWN).collect();
            let more = if line.raw.chars().count() > SHOWN { "..." } else { "" };
            return exec_err!(
                "bad_rows = 'fail': {} line {}: {} (the line: {raw}{more})",
                line.file,
                line.line,
                line.error
            );
        }
        let bytes = std::mem::size_of::<BadLine>() + line.file.len() + line.raw.len() + line.error.len();
        self.lines.keep(line, bytes, pool)
    }
}

/// `plan` with each of its CSV and newline-delimited JSON scans read by a [`LineScanExec`]
/// that hands bad lines to `bad`. A scan it cannot read line by line (compressed files, a
/// custom line terminator, values with line breaks, partition columns) is refused, naming it.
pub fn tolerate(plan: Arc<dyn ExecutionPlan>, bad: &Arc<BadLines>) -> DFResult<Arc<dyn ExecutionPlan>> {
    let rewritten = plan.transform_up(|node| {
        let Some(exec) = node.as_any().downcast_ref::<DataSourceExec>() else { return Ok(Transformed::no(node)) };
        let Some(config) = exec.data_source().as_any().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let source = config.file_source().as_any();
        let format = if let Some(csv) = source.downcast_ref::<CsvSource>() {
            if csv.newlines_in_values() {
                return plan_err!("bad_rows reads one record per line: values with line breaks (newlines_in_values) are not supported with it");
            }
            if csv.terminator().is_some_and(|t| t != b'\n') {
                return plan_err!("bad_rows reads lines ending in a line break: a custom terminator is not supported with it");
            }
            LineFormat::Csv(CsvFormat {
                has_header: csv.has_header(),
                delimiter: csv.delimiter(),
                quote: csv.quote(),
                escape: csv.escape(),
                comment: csv.comment(),
                truncated_rows: csv.truncate_rows(),
            })
        } else if source.downcast_ref::<JsonSource>().is_some() {
            LineFormat::Json
        } else {
            return Ok(Transformed::no(node));
        };
        if config.file_compression_type.is_compressed() {
            return plan_err!("bad_rows reads uncompressed files: a compressed CSV or JSON source is not supported with it");
        }
        if !config.table_partition_cols().is_empty() {
            return plan_err!("bad_rows does not read partition columns from file paths (PARTITIONED BY of an external table)");
        }
        let scan = LineScanExec::try_new(exec, config, format, bad.clone())?;
        Ok(Transformed::yes(Arc::new(scan) as Arc<dyn ExecutionPlan>))
    })?;
    Ok(rewritten.data)
}

/// A file as users name it: a local path, else its URL.
pub fn file_name(store: &ObjectStoreUrl, path: &Path) -> String {
    match store.as_str() {
        "file:///" => format!("/{path}"),
        store => format!("{store}{path}"),
    }
}

/// The line number (from 1) of record `record` (from 0) of the CSV or newline-delimited JSON
/// file `path` of `store` as DataFusion reads it with `format` (after the header, past empty
/// lines and comments); `None` for another format, a record past the end, or CSV values that
/// may span lines.
pub async fn line_of_record(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    format: &dyn FileFormat,
    record: usize,
) -> DFResult<Option<u64>> {
    let format =
        if let Some(csv) = format.as_any().downcast_ref::<datafusion::datasource::file_format::csv::CsvFormat>() {
            let options = csv.options();
            if options.newlines_in_values == Some(true) {
                return Ok(None);
            }
            LineFormat::Csv(CsvFormat {
                has_header: options.has_header.unwrap_or(true),
                delimiter: options.delimiter,
                quote: options.quote,
                escape: options.escape,
                comment: options.comment,
                truncated_rows: options.truncated_rows.unwrap_or(false),
            })
        } else if format.as_any().downcast_ref::<datafusion::datasource::file_format::json::JsonFormat>().is_some() {
            LineFormat::Json
        } else {
            return Ok(None);
        };
    let mut lines = FileLines::open(store, path, path.to_string(), None).await?;
    let mut seen = 0;
    while let Some(batch) = lines.next_lines(8192, &format).await? {
        if let Some((line, _)) = batch.lines.get(record - seen) {
            return Ok(Some(*line));
        }
        seen += batch.lines.len();
    }
    Ok(None)
}

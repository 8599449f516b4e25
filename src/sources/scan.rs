//! [`LineScanExec`]: reads CSV / newline-delimited JSON files line by line, decodes batches of
//! lines with arrow's decoders, and takes bad lines out (see the module above).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{DataFusionError, Result as DFResult, exec_err, plan_err};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::physical_expr::projection::{ProjectionExprs, Projector};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::{BadLine, BadLines};

/// How a file's lines are decoded.
#[derive(Debug, Clone)]
pub(super) enum LineFormat {
    Csv(CsvFormat),
    /// Newline-delimited JSON: one object per line.
    Json,
}

/// The CSV options of the scan (DataFusion's `CsvOptions`, as its reader would use them).
#[derive(Debug, Clone)]
pub(super) struct CsvFormat {
    /// The first line of each file names the columns.
    pub has_header: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    pub comment: Option<u8>,
    pub truncated_rows: bool,
}

impl CsvFormat {
    /// The fields of one line, unquoted; `None` if a quoted field does not end on it.
    fn fields(&self, line: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut reader = csv_core::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .quote(self.quote)
            .escape(self.escape)
            .double_quote(true)
            .build();
        let mut input = line.to_vec();
        input.push(b'\n');
        let mut out = vec![0; input.len()];
        let mut ends = vec![0; input.len() + 1];
        let (result, _, _, count) = reader.read_record(&input, &mut out, &mut ends);
        if result != csv_core::ReadRecordResult::Record {
            return None;
        }
        let mut start = 0;
        Some(
            ends[..count]
                .iter()
                .map(|&end| {
                    let field = out[start..end].to_vec();
                    start = end;
                    field
                })
                .collect(),
        )
    }
}

/// Reads the files of a CSV or JSON scan line by line (see [`super::tolerate`]).
#[derive(Debug)]
pub struct LineScanExec {
    scan: Arc<Scan>,
    /// Each output partition's files, whole (a file DataFusion split into ranges is read once,
    /// by the partition of its first range).
    groups: Vec<Vec<Path>>,
    properties: Arc<PlanProperties>,
}

/// What every partition of a [`LineScanExec`] shares.
#[derive(Debug)]
struct Scan {
    format: LineFormat,
    store: ObjectStoreUrl,
    /// The columns of the files (every line is decoded to these).
    file_schema: SchemaRef,
    /// The columns the scan gives, from them.
    projection: Option<ProjectionExprs>,
    schema: SchemaRef,
    limit: Option<usize>,
    batch_size: Option<usize>,
    bad: Arc<BadLines>,
}

impl LineScanExec {
    /// The line-by-line reader of `exec`'s files (`config`, in `format`), its bad lines to `bad`.
    pub(super) fn try_new(
        exec: &DataSourceExec,
        config: &FileScanConfig,
        format: LineFormat,
        bad: Arc<BadLines>,
    ) -> DFResult<Self> {
        let groups = config
            .file_groups
            .iter()
            .map(|group| {
                group
                    .files()
                    .iter()
                    .filter(|file| file.range.as_ref().is_none_or(|range| range.start == 0))
                    .map(|file| file.object_meta.location.clone())
                    .collect()
            })
            .collect();
        let scan = Scan {
            format,
            store: config.object_store_url.clone(),
            file_schema: config.file_schema().clone(),
            projection: config.file_source().projection().cloned(),
            schema: exec.schema(),
            limit: config.limit,
            batch_size: config.batch_size,
            bad,
        };
        Ok(LineScanExec { scan: Arc::new(scan), groups, properties: exec.properties().clone() })
    }
}

impl DisplayAs for LineScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.scan.format {
            LineFormat::Csv(_) => "csv",
            LineFormat::Json => "json",
        };
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(f, "LineScanExec: {format}, {files} file(s), bad_rows = '{}'", self.scan.bad.mode().as_str())
    }
}

impl ExecutionPlan for LineScanExec {
    fn name(&self) -> &str {
        "LineScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DFResult<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => plan_err!("LineScanExec has no inputs"),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        let Some(files) = self.groups.get(partition) else {
            return exec_err!("LineScanExec has no partition {partition}");
        };
        let scan = self.scan.clone();
        let reader = PartitionReader {
            store: context.runtime_env().object_store(&scan.store)?,
            projector: scan.projection.as_ref().map(|p| p.make_projector(&scan.file_schema)).transpose()?,
            batch_size: scan.batch_size.unwrap_or(context.session_config().batch_size()),
            remaining: scan.limit,
            pool: context.memory_pool().clone(),
            files: files.iter().cloned().collect(),
            current: None,
            scan,
        };
        let schema = self.scan.schema.clone();
        let batches = futures::stream::try_unfold(reader, |mut reader| async move {
            Ok(reader.next_batch().await?.map(|batch| (batch, reader)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// One partition's reading: its files in turn.
struct PartitionReader {
    scan: Arc<Scan>,
    store: Arc<dyn ObjectStore>,
    projector: Option<Projector>,
    batch_size: usize,
    /// Rows still to give under the scan's limit.
    remaining: Option<usize>,
    /// Where kept bad lines take their memory from.
    pool: Arc<dyn MemoryPool>,
    files: VecDeque<Path>,
    current: Option<FileLines>,
}

impl PartitionReader {
    async fn next_batch(&mut self) -> DFResult<Option<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            let Some(file) = &mut self.current else {
                let Some(path) = self.files.pop_front() else { return Ok(None) };
                let name = super::file_name(&self.scan.store, &path);
                self.current = Some(FileLines::open(self.store.as_ref(), &path, name).await?);
                continue;
            };
            let Some(lines) = file.next_lines(self.batch_size, &self.scan.format).await? else {
                self.current = None;
                continue;
            };
            let batch = self.scan.read(&file.name, &lines, &self.pool)?;
            let mut batch = match &self.projector {
                Some(projector) => projector.project_batch(&batch)?,
                None => batch,
            };
            if let Some(remaining) = &mut self.remaining {
                batch = batch.slice(0, batch.num_rows().min(*remaining));
                *remaining -= batch.num_rows();
            }
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }
}

/// Lines of a file as its bytes arrive.
pub(super) struct FileLines {
    name: String,
    bytes: BoxStream<'static, DFResult<bytes::Bytes>>,
    buffer: Vec<u8>,
    /// Where the next line starts in `buffer`.
    start: usize,
    /// The number of the last line taken.
    line: u64,
    eof: bool,
}

/// Lines to decode together: each line followed by `\n`, in `text`.
pub(super) struct Lines {
    text: Vec<u8>,
    /// Each line's number and its bytes in `text` (without the `\n`).
    pub lines: Vec<(u64, Range<usize>)>,
}

impl FileLines {
    /// The lines of `path` in `store`, shown as `name`.
    pub(super) async fn open(store: &dyn ObjectStore, path: &Path, name: String) -> DFResult<Self> {
        let bytes = store.get(path).await?.into_stream().map_err(DataFusionError::from).boxed();
        Ok(FileLines { name, bytes, buffer: Vec::new(), start: 0, line: 0, eof: false })
    }

    /// The next up to `max` lines with a record, skipping the header, empty lines and comments;
    /// `None` at the end of the file.
    pub(super) async fn next_lines(&mut self, max: usize, format: &LineFormat) -> DFResult<Option<Lines>> {
        let mut lines = Lines { text: Vec::new(), lines: Vec::new() };
        while lines.lines.len() < max {
            let rest = &self.buffer[self.start..];
            let line = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.start += end + 1;
                    &rest[..end]
                }
                None if self.eof => {
                    if rest.is_empty() {
                        break;
                    }
                    self.start = self.buffer.len();
                    rest
                }
                None => {
                    match self.bytes.next().await.transpose()? {
                        Some(bytes) => {
                            self.buffer.drain(..self.start);
                            self.start = 0;
                            self.buffer.extend_from_slice(&bytes);
                        }
                        None => self.eof = true,
                    }
                    continue;
                }
            };
            self.line += 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let skipped = match format {
                LineFormat::Csv(csv) => {
                    (csv.has_header && self.line == 1) || csv.comment.is_some_and(|c| line.first() == Some(&c))
                }
                LineFormat::Json => {
                    if self.line == 1 && line.trim_ascii_start().first() == Some(&b'[') {
                        return plan_err!(
                            "bad_rows reads newline-delimited JSON (one object per line): {} is a JSON array",
                            self.name
                        );
                    }
                    false
                }
            };
            // As arrow's decoders: CSV skips empty lines, JSON blank ones.
            let blank = match format {
                LineFormat::Csv(_) => line.is_empty(),
                LineFormat::Json => line.trim_ascii().is_empty(),
            };
            if skipped || blank {
                continue;
            }
            let start = lines.text.len();
            lines.text.extend_from_slice(line);
            lines.lines.push((self.line, start..lines.text.len()));
            lines.text.push(b'\n');
        }
        Ok((!lines.lines.is_empty()).then_some(lines))
    }
}

impl Scan {
    /// The rows of `lines` of `file`: decoded together; if that fails, one at a time, the bad
    /// ones handed to the bad-line tally (or failing the run).
    fn read(&self, file: &str, lines: &Lines, pool: &Arc<dyn MemoryPool>) -> DFResult<RecordBatch> {
        let expected = lines.lines.len();
        if let Ok(batch) = self.decode(&lines.text, expected)
            && batch.num_rows() == expected
        {
            self.bad.read_well(expected);
            return Ok(batch);
        }
        let mut good = Vec::new();
        for (number, range) in &lines.lines {
            let text = &lines.text[range.start..range.end + 1];
            match self.decode(text, 1) {
                Ok(batch) if batch.num_rows() == 1 => good.push(batch),
                result => {
                    let line = &lines.text[range.clone()];
                    let bad = BadLine {
                        file: file.to_string(),
                        line: *number,
                        raw: String::from_utf8_lossy(line).into_owned(),
                        error: self.diagnose(line, result.err()),
                    };
                    self.bad.keep(bad, pool)?;
                }
            }
        }
        self.bad.read_well(good.len());
        Ok(concat_batches(&self.file_schema, &good)?)
    }

    /// `text` (whole lines) decoded to the file's columns; fewer or more rows than `rows` when
    /// its lines are not one record each.
    fn decode(&self, text: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
        let schema = self.file_schema.clone();
        // At most `rows + 1` records: one more than the lines shows a line that held two.
        let mut decoder = match &self.format {
            LineFormat::Csv(csv) => {
                let mut builder = datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(false)
                    .with_delimiter(csv.delimiter)
                    .with_quote(csv.quote)
                    .with_truncated_rows(csv.truncated_rows)
                    .with_batch_size(rows + 1);
                if let Some(escape) = csv.escape {
                    builder = builder.with_escape(escape);
                }
                Decoder::Csv(Box::new(builder.build_decoder()))
            }
            LineFormat::Json => Decoder::Json(
                datafusion::arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(rows + 1)
                    .build_decoder()?,
            ),
        };
        let mut read = 0;
        while read < text.len() {
            match decoder.decode(&text[read..])? {
                0 => break,
                n => read += n,
            }
        }
        if read < text.len() {
            return Err(ArrowError::CsvError("more records than lines".to_string()));
        }
        Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema)))
    }

    /// What is wrong with `line`, which did not decode (`error`, if the decoder said).
    fn diagnose(&self, line: &[u8], error: Option<ArrowError>) -> String {
        if let Err(e) = std::str::from_utf8(line) {
            return format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1);
        }
        if let LineFormat::Csv(csv) = &self.format {
            let Some(fields) = csv.fields(line) else { return "unterminated quoted field".to_string() };
            let columns = self.file_schema.fields().len();
            if fields.len() > columns || (fields.len() < columns && !csv.truncated_rows) {
                return format!("expected {columns} columns, found {}", fields.len());
            }
            let strict = CastOptions { safe: false, ..Default::default() };
            for (field, value) in self.file_schema.fields().iter().zip(&fields) {
                if value.is_empty() || matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
                    continue;
                }
                let value = String::from_utf8_lossy(value);
                let parsed = cast_with_options(&StringArray::from(vec![value.as_ref()]), field.data_type(), &strict);
                if parsed.is_err() {
                    return format!("column `{}` is {}: cannot read '{value}'", field.name(), field.data_type());
                }
            }
        }
        match error {
            Some(ArrowError::CsvError(message) | ArrowError::JsonError(message) | ArrowError::ParseError(message)) => {
                message
            }
            Some(error) => error.to_string(),
            None => "the line is not one whole record".to_string(),
        }
    }
}

/// Arrow's decoder of the scan's format.
enum Decoder {
    Csv(Box<datafusion::arrow::csv::reader::Decoder>),
    Json(datafusion::arrow::json::reader::Decoder),
}

impl Decoder {
    /// Reads records from `bytes`; returns how many bytes it took.
    fn decode(&mut self, bytes: &[u8]) -> Result<usize, ArrowError> {
        match self {
            Decoder::Csv(decoder) => decoder.decode(bytes),
            Decoder::Json(decoder) => decoder.decode(bytes),
        }
    }

    /// The records read, as a batch.
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        match self {
            Decoder::Csv(decoder) => decoder.flush(),
            Decoder::Json(decoder) => decoder.flush(),
        }
    }
}

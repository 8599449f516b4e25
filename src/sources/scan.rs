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
use datafusion::object_store::{GetOptions, GetRange, ObjectStore};
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
    /// Each output partition's files, with the byte range of each it reads (as DataFusion split
    /// them: a range reads the lines that start in it).
    groups: Vec<Vec<(Path, Option<Range<u64>>)>>,
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
                    .map(|file| {
                        let range = file.range.as_ref().map(|r| r.start.max(0) as u64..r.end.max(0) as u64);
                        (file.object_meta.location.clone(), range)
                    })
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
        let parts: Vec<&(Path, Option<Range<u64>>)> = self.groups.iter().flatten().collect();
        let files: std::collections::BTreeSet<&Path> = parts.iter().map(|(path, _)| path).collect();
        let mode = self.scan.bad.mode().as_str();
        match parts.len() > files.len() {
            true => write!(
                f,
                "LineScanExec: {format}, {} file(s) in {} ranges, bad_rows = '{mode}'",
                files.len(),
                parts.len()
            ),
            false => write!(f, "LineScanExec: {format}, {} file(s), bad_rows = '{mode}'", files.len()),
        }
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
    files: VecDeque<(Path, Option<Range<u64>>)>,
    current: Option<FileLines>,
}

impl PartitionReader {
    async fn next_batch(&mut self) -> DFResult<Option<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            let Some(file) = &mut self.current else {
                let Some((path, range)) = self.files.pop_front() else { return Ok(None) };
                let name = super::file_name(&self.scan.store, &path);
                self.current = Some(FileLines::open(self.store.clone(), &path, name, range).await?);
                continue;
            };
            let Some(lines) = file.next_lines(self.batch_size, &self.scan.format).await? else {
                self.current = None;
                continue;
            };
            let (batch, bad) = self.scan.read(&file.name, &lines)?;
            if !bad.is_empty() {
                // Numbered from the file's start: the lines before this range are counted once.
                let before = file.lines_before().await?;
                for line in bad {
                    self.scan.bad.keep(BadLine { line: before + line.line, ..line }, &self.pool)?;
                }
            }
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

/// The longest line read, so that a file without line breaks (binary, damaged) is not buffered
/// whole.
const LINE_MAX: usize = 64 << 20;

/// The lines of a file (or of a byte range of it: those that start in the range) as its bytes
/// arrive.
pub(super) struct FileLines {
    name: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    bytes: BoxStream<'static, DFResult<bytes::Bytes>>,
    buffer: Vec<u8>,
    /// The file offset of `buffer[0]`.
    offset: u64,
    /// Where the next line starts in `buffer`.
    start: usize,
    /// How many bytes from `start` are known to hold no line break.
    searched: usize,
    /// Lines that start at or past this offset belong to the next range.
    end: Option<u64>,
    /// Whether the range starts the file (its first line may be the header).
    whole: bool,
    /// The offset of the range's first line, and the number of lines before it, once counted.
    first_line: Option<u64>,
    before: Option<u64>,
    /// The number (in the range, from 1) of the last line taken.
    line: u64,
    eof: bool,
}

/// Lines to decode together: each line followed by `\n`, in `text`.
pub(super) struct Lines {
    text: Vec<u8>,
    /// Each line's number (in its range, from 1) and its bytes in `text` (without the `\n`).
    pub lines: Vec<(u64, Range<usize>)>,
}

impl FileLines {
    /// The lines of `path` in `store` (shown as `name`) that start in `range` (all if `None`).
    pub(super) async fn open(
        store: Arc<dyn ObjectStore>,
        path: &Path,
        name: String,
        range: Option<Range<u64>>,
    ) -> DFResult<Self> {
        let (start, end) = range.map_or((0, None), |r| (r.start, Some(r.end)));
        // A range after the first starts one byte early: the bytes up to the first line break are
        // the end of a line of the range before (none, if that byte is the break).
        let from = start.saturating_sub(1);
        let options = GetOptions { range: Some(GetRange::Offset(from)), ..Default::default() };
        let bytes = store.get_opts(path, options).await?.into_stream().map_err(DataFusionError::from).boxed();
        let mut lines = FileLines {
            name,
            store,
            path: path.clone(),
            bytes,
            buffer: Vec::new(),
            offset: from,
            start: 0,
            searched: 0,
            end,
            whole: start == 0,
            first_line: None,
            before: (start == 0).then_some(0),
            line: 0,
            eof: false,
        };
        if start > 0 {
            lines.next_line().await?;
        }
        Ok(lines)
    }

    /// The next line (without its break) and its file offset; `None` at the end of the file.
    async fn next_line(&mut self) -> DFResult<Option<(Range<usize>, u64)>> {
        loop {
            let rest = &self.buffer[self.start..];
            let at = self.offset + self.start as u64;
            // Bytes already searched for a line break are not searched again.
            let searched = self.searched.min(rest.len());
            if let Some(end) = memchr::memchr(b'\n', &rest[searched..]).map(|end| end + searched) {
                let line = self.start..self.start + end;
                self.start += end + 1;
                self.searched = 0;
                return Ok(Some((line, at)));
            }
            self.searched = rest.len();
            if rest.len() > LINE_MAX {
                return exec_err!(
                    "{}: the line at byte {at} is longer than {} MiB: not a file of lines (bad_rows reads one record per line)",
                    self.name,
                    LINE_MAX >> 20
                );
            }
            if self.eof {
                if rest.is_empty() {
                    return Ok(None);
                }
                let line = self.start..self.buffer.len();
                self.start = self.buffer.len();
                self.searched = 0;
                return Ok(Some((line, at)));
            }
            match self.bytes.next().await.transpose()? {
                Some(bytes) => {
                    self.buffer.drain(..self.start);
                    self.offset += self.start as u64;
                    self.start = 0;
                    self.buffer.extend_from_slice(&bytes);
                }
                None => self.eof = true,
            }
        }
    }

    /// The next up to `max` lines with a record, skipping the header, empty lines and comments;
    /// `None` at the end of the range.
    pub(super) async fn next_lines(&mut self, max: usize, format: &LineFormat) -> DFResult<Option<Lines>> {
        let mut lines = Lines { text: Vec::new(), lines: Vec::new() };
        while lines.lines.len() < max {
            let Some((range, at)) = self.next_line().await? else { break };
            if self.end.is_some_and(|end| at >= end) {
                self.eof = true;
                self.start = self.buffer.len();
                self.searched = 0;
                break;
            }
            self.first_line.get_or_insert(at);
            self.line += 1;
            let line = &self.buffer[range];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let first = self.whole && self.line == 1;
            let skipped = match format {
                LineFormat::Csv(csv) => {
                    (csv.has_header && first) || csv.comment.is_some_and(|c| line.first() == Some(&c))
                }
                LineFormat::Json => {
                    if first && line.trim_ascii_start().first() == Some(&b'[') {
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

    /// The number of lines of the file before the range's first line (counted once, when a
    /// bad line needs its number).
    pub(super) async fn lines_before(&mut self) -> DFResult<u64> {
        if let Some(before) = self.before {
            return Ok(before);
        }
        let end = self.first_line.unwrap_or(self.offset);
        let options = GetOptions { range: Some(GetRange::Bounded(0..end)), ..Default::default() };
        let mut bytes = self.store.get_opts(&self.path, options).await?.into_stream();
        let mut count = 0u64;
        while let Some(chunk) = bytes.next().await.transpose()? {
            count += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        self.before = Some(count);
        Ok(count)
    }
}

impl Scan {
    /// The rows of `lines` of `file`, and its bad lines (numbered in their range): decoded
    /// together; a part that fails is halved until its bad lines stand alone, so a batch with a
    /// few bad lines costs a few decodes of its good parts, not one per line.
    fn read(&self, file: &str, lines: &Lines) -> DFResult<(RecordBatch, Vec<BadLine>)> {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        self.read_part(file, lines, 0..lines.lines.len(), &mut good, &mut bad);
        self.bad.read_well(good.iter().map(RecordBatch::num_rows).sum());
        let batch = match good.len() {
            1 => good.pop().expect("one batch"),
            _ => concat_batches(&self.file_schema, &good)?,
        };
        Ok((batch, bad))
    }

    /// [`Scan::read`] of the lines `part` of `lines`.
    fn read_part(
        &self,
        file: &str,
        lines: &Lines,
        part: Range<usize>,
        good: &mut Vec<RecordBatch>,
        bad: &mut Vec<BadLine>,
    ) {
        let (first, last) = (&lines.lines[part.start], &lines.lines[part.end - 1]);
        // Whole lines, each with its `\n`.
        let text = &lines.text[first.1.start..last.1.end + 1];
        let result = self.decode(text, part.len());
        if let Ok(batch) = &result
            && batch.num_rows() == part.len()
        {
            good.push(batch.clone());
            return;
        }
        if part.len() > 1 {
            let middle = part.start + part.len() / 2;
            self.read_part(file, lines, part.start..middle, good, bad);
            self.read_part(file, lines, middle..part.end, good, bad);
            return;
        }
        let line = &lines.text[first.1.clone()];
        bad.push(BadLine {
            file: file.to_string(),
            line: first.0,
            raw: String::from_utf8_lossy(line).into_owned(),
            error: self.diagnose(line, result.err()),
        });
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

//! Printing results: aligned tables, CSV, TSV, JSON or JSON lines.

use std::io::{self, Write};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::json::{LineDelimitedWriter, WriterBuilder as JsonWriterBuilder};
use datafusion::arrow::util::pretty::pretty_format_batches;

use sluice::engine::Output;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned table with a row count (DDL prints nothing).
    Table,
    /// CSV with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// One JSON array holding every result row of the whole run, nulls written out.
    Json,
    /// One JSON object per result row and line, nulls written out.
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(text, true)
            .map_err(|_| format!("unknown format `{text}` (table, csv, tsv, json, jsonl)"))
    }
}

fn to_io(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// Prints statements' outputs in one format. A JSON document spans every output printed until
/// [`Printer::finish`], so a run of several statements still prints one valid document.
#[derive(Debug)]
pub struct Printer {
    /// The format.
    pub format: Format,
    /// At most this many rows of a table are shown (the count says how many there were).
    pub max_rows: Option<usize>,
    /// JSON rows printed in the open document; `None` when none is open.
    json_rows: Option<usize>,
}

impl Printer {
    /// A printer in `format`, showing at most `max_rows` rows of a table.
    pub fn new(format: Format, max_rows: Option<usize>) -> Self {
        Self { format, max_rows, json_rows: None }
    }

    /// Prints one statement's output; statements without a result schema print nothing (but
    /// the facts of a `DESCRIBE`, under its table).
    pub fn print(&mut self, out: &mut impl Write, output: &Output) -> io::Result<()> {
        if output.schema.fields().is_empty() {
            return Ok(());
        }
        // An empty result still prints its header.
        let empty = [RecordBatch::new_empty(output.schema.clone())];
        let batches = if output.batches.is_empty() { &empty[..] } else { &output.batches[..] };
        match self.format {
            Format::Table => self.print_table(out, batches, output),
            Format::Csv | Format::Tsv => {
                let delimiter = if self.format == Format::Csv { b',' } else { b'\t' };
                let mut writer = CsvWriterBuilder::new().with_header(true).with_delimiter(delimiter).build(&mut *out);
                batches.iter().try_for_each(|batch| writer.write(batch).map_err(to_io))
            }
            Format::Json | Format::Jsonl => {
                let mut lines = Vec::new();
                let mut writer: LineDelimitedWriter<_> =
                    JsonWriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(&mut lines);
                batches.iter().try_for_each(|batch| writer.write(batch).map_err(to_io))?;
                writer.finish().map_err(to_io)?;
                let lines = String::from_utf8(lines).map_err(to_io)?;
                for line in lines.lines() {
                    match (self.format, &mut self.json_rows) {
                        (Format::Jsonl, _) => writeln!(out, "{line}")?,
                        (_, Some(rows)) => {
                            write!(out, "{}{line}", if *rows == 0 { "" } else { ",\n" })?;
                            *rows += 1;
                        }
                        (_, rows @ None) => {
                            write!(out, "[\n{line}")?;
                            *rows = Some(1);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn print_table(&self, out: &mut impl Write, batches: &[RecordBatch], output: &Output) -> io::Result<()> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let shown = self.max_rows.map_or(rows, |max| rows.min(max));
        let mut kept = Vec::new();
        let mut left = shown;
        for batch in batches {
            kept.push(batch.slice(0, left.min(batch.num_rows())));
            left -= left.min(batch.num_rows());
        }
        writeln!(out, "{}", pretty_format_batches(&kept).map_err(to_io)?)?;
        let plural = if rows == 1 { "" } else { "s" };
        match shown < rows {
            true => writeln!(out, "{rows} row{plural} ({shown} shown; \\pset maxrows N to see more)")?,
            false => writeln!(out, "{rows} row{plural}")?,
        }
        for (key, value) in &output.details {
            writeln!(out, "{key}: {value}")?;
        }
        Ok(())
    }

    /// Ends the output of a run: closes the JSON document (an empty one if nothing was printed).
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.format == Format::Json {
            match self.json_rows.take() {
                Some(_) => writeln!(out, "\n]")?,
                None => writeln!(out, "[]")?,
            }
        }
        out.flush()
    }
}

//! Printing results: aligned tables, CSV, or JSON.

use std::io::{self, Write};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::json::ArrayWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;

use sluice::engine::Output;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned table with a row count (DDL prints nothing).
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

fn to_io(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// Prints one statement's output; statements without a result schema print nothing.
pub fn print_output(out: &mut impl Write, output: &Output, format: Format) -> io::Result<()> {
    if output.schema.fields().is_empty() {
        return Ok(());
    }
    let rows: usize = output.batches.iter().map(|b| b.num_rows()).sum();
    // An empty result still prints its header.
    let empty = [RecordBatch::new_empty(output.schema.clone())];
    let batches = if output.batches.is_empty() { &empty[..] } else { &output.batches[..] };
    match format {
        Format::Table => {
            writeln!(out, "{}", pretty_format_batches(batches).map_err(to_io)?)?;
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" })
        }
        Format::Csv => {
            let mut writer = CsvWriterBuilder::new().with_header(true).build(&mut *out);
            for batch in batches {
                writer.write(batch).map_err(to_io)?;
            }
            Ok(())
        }
        Format::Json => {
            let mut writer = ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch).map_err(to_io)?;
            }
            writer.finish().map_err(to_io)?;
            writeln!(out)
        }
    }
}

//! A Delta data file as it is written ([`DeltaFile`]), and how files are named: Hive-style
//! partition folders and object-store paths.

use std::collections::HashMap;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::path::Path;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::arrow::async_writer::ParquetObjectWriter;
use deltalake::kernel::Add;

use super::stats::file_stats;
use crate::runtime::{BoxError, FileWriter};

/// One data file being written, straight into the table's folder.
pub(super) struct DeltaFile {
    path: String,
    schema: SchemaRef,
    partition_values: HashMap<String, Option<String>>,
    writer: AsyncArrowWriter<ParquetObjectWriter>,
}

impl DeltaFile {
    /// A file at the table-relative `path` of a partition with these values.
    pub(super) fn new(
        path: String,
        schema: SchemaRef,
        partition_values: HashMap<String, Option<String>>,
        writer: AsyncArrowWriter<ParquetObjectWriter>,
    ) -> Self {
        Self { path, schema, partition_values, writer }
    }
}

#[async_trait]
impl FileWriter<Add> for DeltaFile {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), BoxError> {
        Ok(self.writer.write(&batch).await?)
    }

    fn written_bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// The `add` action; its modification time is set when the run commits.
    async fn finish(mut self: Box<Self>) -> Result<Add, BoxError> {
        let metadata = self.writer.finish().await?;
        Ok(Add {
            path: self.path.clone(),
            size: self.writer.bytes_written() as i64,
            data_change: true,
            partition_values: std::mem::take(&mut self.partition_values),
            stats: Some(file_stats(&metadata, &self.schema)?),
            ..Default::default()
        })
    }

    /// Aborts the multipart upload, waiting for it: its parts are removed and the file never
    /// appears.
    async fn abort(self: Box<Self>) {
        let mut upload = self.writer.into_inner().into_inner();
        if let Err(e) = upload.abort().await {
            tracing::warn!(path = %self.path, "aborting an unfinished upload: {e}");
        }
    }
}

/// Hive-style folder-name escaping: `%XX` for anything but letters, digits, `-`, `_` and `.`.
pub(super) fn escape_path_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// The object-store path of a file's table-relative path. Partition folders are already escaped
/// (`region=a%2Fb`), so the path is taken as it is: `Path::from` would escape the `%` again and put
/// the file where the log does not point.
pub(super) fn object_path(relative: &str) -> Result<Path, BoxError> {
    Ok(Path::parse(relative)?)
}

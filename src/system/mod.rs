//! What Sluice shows as rows: the `sluice.*` system tables over the ledger ([`SystemSchema`]),
//! and every result table a statement or command returns (run reports, `SHOW CATALOGS`,
//! `DESCRIBE PIPELINE`, `sluice recover`, `sluice doctor`), all built one way: [`ResultBatch`].

mod results;
mod tables;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};

pub use results::{
    Finding, catalogs_batch, cluster_batch, explain_batch, explain_text, findings_batch, properties_batch,
    run_report_batch, settled_batch,
};
pub use tables::{SYSTEM_SCHEMA, SystemSchema, pipelines_batch, runs_batch, steps_batch};

/// Builds a result batch column by column; each column's type is its array's.
///
/// ```
/// use datafusion::arrow::array::{StringArray, UInt64Array};
/// let batch = sluice::system::ResultBatch::default()
///     .column("name", false, StringArray::from(vec!["a", "b"]))
///     .column("rows", true, UInt64Array::from(vec![Some(1), None]))
///     .build();
/// assert_eq!((batch.num_rows(), batch.schema().field(1).is_nullable()), (2, true));
/// ```
#[derive(Debug, Default)]
pub struct ResultBatch {
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl ResultBatch {
    /// Adds the column `name` holding `values`; `nullable` is what the schema says of it,
    /// whatever this batch holds.
    pub fn column(mut self, name: &str, nullable: bool, values: impl Array + 'static) -> Self {
        self.fields.push(Field::new(name, values.data_type().clone(), nullable));
        self.columns.push(Arc::new(values));
        self
    }

    /// The batch.
    ///
    /// # Panics
    /// If the columns differ in length or a non-nullable column holds a NULL: a bug in the
    /// caller, never a matter of the data.
    pub fn build(self) -> RecordBatch {
        RecordBatch::try_new(Arc::new(Schema::new(self.fields)), self.columns)
            .expect("result columns are as long as each other and match their fields")
    }
}

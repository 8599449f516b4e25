//! `sluice doctor`: checks the run ledger and every table of every catalog, and says what is
//! wrong with each, one row per object.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use super::Engine;

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
    fn new(kind: &'static str, object: impl Into<String>, problem: Option<String>) -> Self {
        Self { kind, object: object.into(), problem }
    }
}

impl Engine {
    /// Checks the ledger (SQLite's full integrity check) and loads every table of every
    /// catalog; one finding per object.
    pub async fn doctor(&self) -> Vec<Finding> {
        let ledger_file = self.home.join("ledger.db").display().to_string();
        let ledger_problem = match &self.ledger_damage {
            Some(damage) => Some(format!(
                "{damage}: move the file aside to start a new ledger (its pipelines and run history are then gone)"
            )),
            None => match self.ledger.check(true).await {
                Ok(problems) if problems.is_empty() => None,
                Ok(problems) => Some(problems.join("; ")),
                Err(e) => Some(e.to_string()),
            },
        };
        let mut findings = vec![Finding::new("ledger", ledger_file, ledger_problem)];
        for (name, catalog) in &self.catalogs {
            if let Err(e) = catalog.refresh().await {
                findings.push(Finding::new("catalog", name, Some(e.to_string())));
                continue;
            }
            findings.push(Finding::new("catalog", name, None));
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table in schema.table_names() {
                    let problem = match schema.table(&table).await {
                        Ok(Some(_)) => None,
                        Ok(None) => Some("listed, but it does not load as a table".to_string()),
                        Err(e) => Some(format!("{} (DROP TABLE removes it)", e.message())),
                    };
                    findings.push(Finding::new("table", format!("{name}.{schema_name}.{table}"), problem));
                }
            }
        }
        findings
    }
}

/// Findings as rows: `kind`, `object`, `status` (`ok` or `problem`), `detail`.
pub fn findings_batch(findings: &[Finding]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("object", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(findings.iter().map(|f| f.kind))),
        Arc::new(StringArray::from_iter_values(findings.iter().map(|f| f.object.as_str()))),
        Arc::new(StringArray::from_iter_values(
            findings.iter().map(|f| if f.problem.is_some() { "problem" } else { "ok" }),
        )),
        Arc::new(StringArray::from_iter(findings.iter().map(|f| f.problem.as_deref()))),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match their schema")
}

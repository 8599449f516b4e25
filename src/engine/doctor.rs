//! `sluice doctor`: checks the run ledger and every table of every catalog, and says what is
//! wrong with each, one row per object.

use super::Engine;
use crate::system::Finding;

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

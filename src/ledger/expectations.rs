//! What each write's expectations found (`expectations`): per run and constraint, its action and
//! the rows that met and broke it; `sluice.expectations` shows them, so "how did quality change
//! over the last 30 runs" is plain SQL. A retried run's counts replace its earlier attempt's.

use sqlx::Row;

use super::{Ledger, Result};
use crate::coordinator::QualityReport;

/// One constraint of one run, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectationRecord {
    /// The write run.
    pub run_id: String,
    /// Its pipeline (`<pipeline>/<step>` for a step), if any.
    pub pipeline: Option<String>,
    /// The table written.
    pub target: String,
    /// The constraint.
    pub name: String,
    /// `WARN`, `DROP ROW`, `QUARANTINE` or `FAIL`.
    pub action: String,
    /// Rows that met it.
    pub passed: u64,
    /// Rows that broke it.
    pub failed: u64,
    /// Rows the query gave.
    pub rows_in: u64,
    /// When it was recorded, ms since the epoch.
    pub recorded_at_ms: i64,
}

impl Ledger {
    /// Keeps an expectation of `table` (`ALTER TABLE ... ADD CONSTRAINT`): `(name, condition,
    /// action)`; false when the table has one of that name.
    pub async fn add_table_expectation(&self, table: &str, expectation: (&str, &str, &str)) -> Result<bool> {
        let (name, condition, action) = expectation;
        let query = sqlx::query(
            "INSERT INTO table_expectations (table_name, name, condition, action, created_at_ms) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (table_name, name) DO NOTHING",
        );
        let query = query.bind(table).bind(name).bind(condition).bind(action).bind(self.now_ms());
        Ok(self.execute("adding a table's expectation", query).await? == 1)
    }

    /// Forgets an expectation of `table`; false when it had none of that name.
    pub async fn drop_table_expectation(&self, table: &str, name: &str) -> Result<bool> {
        let query = sqlx::query("DELETE FROM table_expectations WHERE table_name = ? AND name = ?");
        Ok(self.execute("dropping a table's expectation", query.bind(table).bind(name)).await? == 1)
    }

    /// The expectations of `table`, oldest first: `(name, condition, action)`.
    pub async fn table_expectations(&self, table: &str) -> Result<Vec<(String, String, String)>> {
        let query = sqlx::query(
            "SELECT name, condition, action FROM table_expectations WHERE table_name = ? ORDER BY created_at_ms, rowid",
        );
        let rows = self.fetch_all("listing a table's expectations", query.bind(table)).await?;
        Ok(rows.iter().map(|r| (r.get("name"), r.get("condition"), r.get("action"))).collect())
    }

    /// Records what `run_id`'s expectations found.
    pub async fn record_expectations(
        &self,
        run_id: &str,
        pipeline: Option<&str>,
        target: &str,
        quality: &QualityReport,
    ) -> Result<()> {
        for constraint in &quality.constraints {
            let query = sqlx::query(
                "INSERT OR REPLACE INTO expectations
                     (run_id, pipeline, target, name, action, passed, failed, rows_in, recorded_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(pipeline)
            .bind(target)
            .bind(&constraint.name)
            .bind(&constraint.action)
            .bind(constraint.passed as i64)
            .bind(constraint.failed as i64)
            .bind(quality.rows_in as i64)
            .bind(self.now_ms());
            self.execute("recording expectations", query).await?;
        }
        Ok(())
    }

    /// Every recorded expectation, oldest first.
    pub async fn expectations(&self) -> Result<Vec<ExpectationRecord>> {
        let rows = self
            .fetch_all(
                "listing expectations",
                sqlx::query("SELECT * FROM expectations ORDER BY recorded_at_ms, run_id, rowid"),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ExpectationRecord {
                run_id: r.get("run_id"),
                pipeline: r.get("pipeline"),
                target: r.get("target"),
                name: r.get("name"),
                action: r.get("action"),
                passed: r.get::<i64, _>("passed") as u64,
                failed: r.get::<i64, _>("failed") as u64,
                rows_in: r.get::<i64, _>("rows_in") as u64,
                recorded_at_ms: r.get("recorded_at_ms"),
            })
            .collect())
    }
}

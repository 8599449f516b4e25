//! A coordinator of one's own: a notification when a run finishes and when it fails.
//!
//! Every run's built-in coordinator (the Iceberg or Delta commit, the file merge of a `COPY`)
//! is wrapped in a [`Composite`] that commits first, then notifies. The notifier here sends
//! each message into a channel; a real one would post it to a chat or an incident tool.
//!
//! ```text
//! cargo run --example notify
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use sluice::coordinator::{Composite, Coordinator, CoordinatorError, RunContext, ShardResult};
use tokio::sync::mpsc;

/// Sends one line per finished or failed run.
#[derive(Debug)]
struct Notify {
    outbox: mpsc::UnboundedSender<String>,
}

impl Notify {
    fn send(&self, message: String) -> Result<(), CoordinatorError> {
        self.outbox.send(message).map_err(|e| CoordinatorError::new(self.name(), e))
    }
}

#[async_trait]
impl Coordinator for Notify {
    fn name(&self) -> &str {
        "notify"
    }

    /// Called after the commit (the member before it), with every shard's result.
    async fn on_finish(&self, run: &RunContext, shards: &[ShardResult]) -> Result<Option<i64>, CoordinatorError> {
        let rows: u64 = shards.iter().map(|s| s.totals.rows).sum();
        let slowest = shards.iter().map(|s| s.elapsed).max().unwrap_or_default();
        self.send(format!(
            "✔ run {} into {}: {rows} rows from {} shards (slowest {slowest:?})",
            run.run_id(),
            run.target(),
            shards.len()
        ))?;
        Ok(None)
    }

    async fn on_error(&self, run: &RunContext, error: &str) -> Result<(), CoordinatorError> {
        self.send(format!("✘ run {} into {} failed: {error}", run.run_id(), run.target()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    let (outbox, mut inbox) = mpsc::unbounded_channel();
    let engine = sluice::Engine::builder()
        .home(home.path())
        .shards(2)
        .wrap_coordinator(move |builtin| {
            let notify = Arc::new(Notify { outbox: outbox.clone() });
            Arc::new(Composite::new(vec![builtin, notify])) as Arc<dyn Coordinator>
        })
        .build()
        .await?;

    engine
        .sql(
            "CREATE SCHEMA lake.shop;
             CREATE TABLE lake.shop.orders (id BIGINT NOT NULL, amount DOUBLE);
             CREATE PIPELINE load_orders AS
               INSERT INTO lake.shop.orders SELECT value, value * 1.5 FROM generate_series(1, 1000);",
        )
        .await?;
    engine.run_pipeline("load_orders").await?;
    // A NULL id in row 500: a shard fails, nothing is committed, and the notifier hears.
    let failed = engine
        .sql(
            "INSERT INTO lake.shop.orders
             SELECT CASE WHEN value = 500 THEN NULL ELSE value END, 1.0 FROM generate_series(1, 1000)",
        )
        .await;
    assert!(failed.is_err());

    drop(engine);
    while let Ok(message) = inbox.try_recv() {
        println!("{message}");
    }
    Ok(())
}

//! Run events: every run publishes its lifecycle (opened, each shard finished, committed or
//! failed, closed) with timings and counts, on an in-process broadcast channel that library users
//! subscribe to ([`crate::Engine::subscribe`]), and into the ledger (`sluice.events`).
//!
//! ```text
//!  Opened ─► ShardFinished × N ─► Committed ─► Closed(succeeded)
//!                              └─► Failed ────► Closed(failed)
//! ```
//!
//! A run of a pipeline with steps also publishes `Step` for each step's transitions.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::ledger::Ledger;

/// Events a slow subscriber may fall behind by before it misses some (it is then told how many).
pub const EVENTS_BUFFERED_MAX: usize = 4096;

/// One step in a run's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run is open in the ledger and its shards are starting.
    Opened {
        /// The run.
        run_id: String,
        /// The pipeline, `None` for an ad-hoc write.
        pipeline: Option<String>,
        /// The table (`catalog.schema.table`) or file written.
        target: String,
        /// Number of shards.
        shards: usize,
    },
    /// A shard finished, successfully or not.
    ShardFinished {
        /// The run.
        run_id: String,
        /// Shard index.
        shard: usize,
        /// Rows it staged.
        rows: u64,
        /// Files it staged.
        files: u64,
        /// Bytes it staged.
        bytes: u64,
        /// How long it ran.
        elapsed_ms: u64,
        /// Where it ran: a cluster executor's `host:port`, or `local` (this process).
        executor: String,
        /// Why it failed.
        error: Option<String>,
    },
    /// The run's snapshot / version is visible.
    Committed {
        /// The run.
        run_id: String,
        /// The snapshot id / version (`None`: nothing to commit).
        snapshot_id: Option<i64>,
        /// Rows committed.
        rows: u64,
        /// Files committed.
        files: u64,
        /// Bytes committed.
        bytes: u64,
    },
    /// The run failed; nothing of it is visible.
    Failed {
        /// The run.
        run_id: String,
        /// Why.
        error: String,
    },
    /// A step of a pipeline run with steps started an attempt (`running`) or ended
    /// (`succeeded`, `failed`, `upstream_failed`, `cancelled`). `run_id` is the pipeline run's.
    Step {
        /// The pipeline run.
        run_id: String,
        /// The pipeline.
        pipeline: String,
        /// The step.
        step: String,
        /// Its status now.
        status: String,
        /// The attempt starting (1 for the first); `None` when the step ends.
        attempt: Option<i64>,
        /// Rows it committed (when it succeeded).
        rows: u64,
        /// Why it failed.
        error: Option<String>,
    },
    /// The run is over; the ledger has its final status.
    Closed {
        /// The run.
        run_id: String,
        /// `succeeded` or `failed`.
        status: String,
        /// Wall time of the run.
        elapsed_ms: u64,
    },
}

impl RunEvent {
    /// The run the event is about.
    pub fn run_id(&self) -> &str {
        match self {
            RunEvent::Opened { run_id, .. }
            | RunEvent::ShardFinished { run_id, .. }
            | RunEvent::Committed { run_id, .. }
            | RunEvent::Failed { run_id, .. }
            | RunEvent::Step { run_id, .. }
            | RunEvent::Closed { run_id, .. } => run_id,
        }
    }

    /// The event's kind, as the ledger names it.
    pub fn kind(&self) -> &'static str {
        match self {
            RunEvent::Opened { .. } => "opened",
            RunEvent::ShardFinished { .. } => "shard_finished",
            RunEvent::Committed { .. } => "committed",
            RunEvent::Failed { .. } => "failed",
            RunEvent::Step { .. } => "step",
            RunEvent::Closed { .. } => "closed",
        }
    }
}

/// Publishes run events to subscribers and records them in the ledger; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventLog {
    ledger: Ledger,
    sender: broadcast::Sender<RunEvent>,
}

impl EventLog {
    /// An event log recording into `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger, sender: broadcast::channel(EVENTS_BUFFERED_MAX).0 }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.sender.subscribe()
    }

    /// Records `event` in the ledger and sends it to the subscribers. Events are observations:
    /// failing to record one is logged, never allowed to fail the run.
    pub async fn emit(&self, event: RunEvent) {
        let detail = serde_json::to_string(&event).unwrap_or_default();
        if let Err(e) =
            self.ledger.record_event(event.run_id(), event.kind(), self.ledger.clock().now_ms(), &detail).await
        {
            tracing::warn!(run_id = event.run_id(), "could not record a run event: {e}");
        }
        let _ = self.sender.send(event); // no subscriber is fine
    }
}

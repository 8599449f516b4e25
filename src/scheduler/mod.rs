//! Scheduled table refresh: when pipelines are due ([`Schedule`], a leaf the parser and the
//! system tables use too), and the [`Scheduler`] that claims due times in the ledger and runs
//! them on the engine's clock.

mod schedule;
mod service;

pub use schedule::{Schedule, ScheduleError};
pub use service::{AD_HOC, ON_TIME, Ran, Scheduler, StartError};

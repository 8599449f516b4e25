//! Scheduled table refresh: when pipelines are due ([`Schedule`]).

mod schedule;

pub use schedule::{Schedule, ScheduleError};

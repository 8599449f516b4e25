//! Pipelines: named, persisted write statements, or graphs of steps (`dag.rs`), with options.
//!
//! A pipeline is stored in the ledger as its `CREATE PIPELINE` text and re-planned on every run,
//! so it always reads the latest state of its sources.

mod dag;

use std::time::Duration;

pub use dag::{Dag, DagStep};

use crate::parser::{self, CreatePipeline, Statement};
use crate::table::WriteMode;

/// Errors about pipeline definitions.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// No pipeline of that name.
    #[error("pipeline `{name}` does not exist{hint} (SHOW PIPELINES lists them)")]
    NotFound {
        /// The name used.
        name: String,
        /// A "did you mean" for a near name, or empty.
        hint: String,
    },
    /// An option this version does not know.
    #[error(
        "pipeline `{pipeline}`: unknown option `{option}` (known: shards, mode, retries, retry_backoff, catchup, max_catchup_runs, schema_evolution, quarantine_table, bad_rows, cluster; with steps also max_parallel_steps, on_failure, atomic; per step: shards, retries, retry_backoff)"
    )]
    UnknownOption {
        /// The pipeline.
        pipeline: String,
        /// The option.
        option: String,
    },
    /// An option with a value out of range.
    #[error("pipeline `{pipeline}`: option `{option}` = {value}: expected {expected}")]
    BadValue {
        /// The pipeline.
        pipeline: String,
        /// The option.
        option: String,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// An option of an `INSERT ... WITH (...)` that is unknown there or has a bad value.
    #[error("INSERT INTO `{table}` WITH (...): {message}")]
    InsertOption {
        /// The table written.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// A step of a multi-step pipeline that cannot be: an unknown dependency, a second writer of
    /// a table, a cycle.
    #[error("pipeline `{pipeline}`, step `{step}` (line {line}, column {column}): {message}")]
    Step {
        /// The pipeline.
        pipeline: String,
        /// The step.
        step: String,
        /// 1-based line of the step.
        line: u64,
        /// 1-based column of the step.
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// The stored definition no longer parses (written by another version).
    #[error("pipeline `{pipeline}`: stored definition is unreadable: {message}")]
    Corrupt {
        /// The pipeline.
        pipeline: String,
        /// The parse error.
        message: String,
    },
}

/// Most shards a run may ask for.
pub const SHARDS_MAX: usize = 1024;

/// What a failed step does to the rest of its pipeline's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Independent branches finish; every step downstream of the failed one is `upstream_failed`.
    #[default]
    Continue,
    /// Running steps are cancelled and nothing more starts.
    Stop,
}

/// Options from `CREATE PIPELINE ... WITH (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Fixed shard count; `None` means the engine's default.
    pub shards: Option<usize>,
    /// How runs change the table; `None` means what the body says (INSERT INTO or OVERWRITE).
    pub mode: Option<WriteMode>,
    /// Steps: at most this many run at once (default 4).
    pub max_parallel_steps: usize,
    /// Attempts after the first failed one (default 0): of each step, for a pipeline with
    /// steps; of the whole run under its id, by the scheduler, for a single-statement one.
    pub retries: u32,
    /// The wait before the first retry, doubling (capped at 5 minutes, jittered).
    pub retry_backoff: Duration,
    /// Steps: what a failed step does to the others.
    pub on_failure: OnFailure,
    /// Steps: publish every target together or nothing.
    pub atomic: bool,
    /// Scheduled runs missed while no scheduler ran: which to run late.
    pub catchup: Catchup,
    /// With `catchup = 'all'`: at most this many missed runs (the latest ones; default 100).
    pub max_catchup_runs: usize,
    /// `schema_evolution = 'add_columns'`: columns of the query the table lacks are added to it
    /// (nullable) in the run's own commit, and the query's columns map to the table's by name.
    pub add_columns: bool,
    /// `schema_evolution = 'widen_types'`: a column whose values the query gives in a wider type
    /// (int → bigint, float → double) is widened in the run's own commit.
    pub widen_types: bool,
    /// `bad_rows = 'fail' | 'quarantine'`: what an unparseable line of a CSV or JSON file the
    /// pipeline reads does; `None`: DataFusion's reader, which fails on it.
    pub bad_rows: Option<BadRows>,
    /// `cluster = 'df://host:port'` (or `'local'`): where the pipeline's runs execute, over the
    /// session's `sluice.cluster`; checked when the pipeline is created and when it runs.
    pub cluster: Option<String>,
}

/// What an unparseable line of an input file does (`bad_rows = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRows {
    /// The run fails, naming the file and the line.
    Fail,
    /// The line goes to the quarantine table (file, line number, raw text, error); the rest of
    /// the file loads.
    Quarantine,
}

impl BadRows {
    /// The option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            BadRows::Fail => "fail",
            BadRows::Quarantine => "quarantine",
        }
    }
}

/// Which due times a scheduler that was down runs once it is back (`catchup = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// None of the missed ones; the schedule resumes at the next due time.
    None,
    /// The latest missed one only (the default).
    Last,
    /// Every missed one, at most `max_catchup_runs`.
    All,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            shards: None,
            mode: None,
            max_parallel_steps: 4,
            retries: 0,
            retry_backoff: Duration::from_secs(2),
            on_failure: OnFailure::Continue,
            atomic: false,
            catchup: Catchup::Last,
            max_catchup_runs: 100,
            add_columns: false,
            widen_types: false,
            bad_rows: None,
            cluster: None,
        }
    }
}

/// A duration as written in an option: `500ms`, `2s`, `1m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim().to_lowercase();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// One `key = value` option, checked.
struct OptionValue<'a> {
    pipeline: &'a str,
    option: &'a str,
    value: &'a str,
}

impl OptionValue<'_> {
    fn bad(&self, expected: &'static str) -> PipelineError {
        PipelineError::BadValue {
            pipeline: self.pipeline.to_string(),
            option: self.option.to_string(),
            value: self.value.to_string(),
            expected,
        }
    }

    fn shards(&self) -> Result<usize, PipelineError> {
        let shards = self.value.parse::<usize>().ok().filter(|n| (1..=SHARDS_MAX).contains(n));
        shards.ok_or_else(|| self.bad("an integer from 1 to 1024"))
    }

    fn retries(&self) -> Result<u32, PipelineError> {
        self.value.parse::<u32>().ok().filter(|n| *n <= 100).ok_or_else(|| self.bad("an integer from 0 to 100"))
    }

    fn backoff(&self) -> Result<Duration, PipelineError> {
        parse_duration(self.value).ok_or_else(|| self.bad("a duration such as '500ms', '2s' or '1m'"))
    }
}

/// Options of one step (`STEP x WITH (...) AS ...`), over the pipeline's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepOptions {
    /// Shards for this step's run.
    pub shards: Option<usize>,
    /// Retries for this step.
    pub retries: Option<u32>,
    /// Backoff for this step.
    pub retry_backoff: Option<Duration>,
}

impl StepOptions {
    /// Validates the options of step `step` of `pipeline`.
    pub fn parse(pipeline: &str, step: &str, options: &[(String, String)]) -> Result<Self, PipelineError> {
        let label = format!("{pipeline}.{step}");
        let mut parsed = Self::default();
        for (option, value) in options {
            let checked = OptionValue { pipeline: &label, option, value };
            match option.as_str() {
                "shards" => parsed.shards = Some(checked.shards()?),
                "retries" => parsed.retries = Some(checked.retries()?),
                "retry_backoff" => parsed.retry_backoff = Some(checked.backoff()?),
                _ => return Err(PipelineError::UnknownOption { pipeline: label, option: option.clone() }),
            }
        }
        Ok(parsed)
    }
}

impl PipelineOptions {
    /// Validates the options of `pipeline`.
    pub fn parse(pipeline: &str, options: &[(String, String)]) -> Result<Self, PipelineError> {
        let mut parsed = Self::default();
        for (option, value) in options {
            let checked = OptionValue { pipeline, option, value };
            match option.as_str() {
                "shards" => parsed.shards = Some(checked.shards()?),
                "max_parallel_steps" => {
                    let n = value.parse::<usize>().ok().filter(|n| (1..=64).contains(n));
                    parsed.max_parallel_steps = n.ok_or_else(|| checked.bad("an integer from 1 to 64"))?;
                }
                "retries" => parsed.retries = checked.retries()?,
                "retry_backoff" => parsed.retry_backoff = checked.backoff()?,
                "on_failure" => {
                    parsed.on_failure = match value.to_lowercase().as_str() {
                        "continue" => OnFailure::Continue,
                        "stop" => OnFailure::Stop,
                        _ => return Err(checked.bad("'continue' or 'stop'")),
                    }
                }
                "atomic" => {
                    parsed.atomic = match value.to_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(checked.bad("true or false")),
                    }
                }
                "catchup" => {
                    parsed.catchup = match value.to_lowercase().as_str() {
                        "none" => Catchup::None,
                        "last" => Catchup::Last,
                        "all" => Catchup::All,
                        _ => return Err(checked.bad("'none', 'last' or 'all'")),
                    }
                }
                "bad_rows" => {
                    parsed.bad_rows = match value.to_lowercase().as_str() {
                        "fail" => Some(BadRows::Fail),
                        "quarantine" => Some(BadRows::Quarantine),
                        _ => return Err(checked.bad("'fail' or 'quarantine'")),
                    }
                }
                "quarantine_table" => {
                    quarantine_table(pipeline, options)?;
                }
                "cluster" => parsed.cluster = Some(value.to_string()),
                "schema_evolution" => {
                    for part in value.to_lowercase().split(',').map(str::trim) {
                        match part {
                            "add_columns" => parsed.add_columns = true,
                            "widen_types" => parsed.widen_types = true,
                            "none" => {}
                            _ => {
                                return Err(checked
                                    .bad("'add_columns', 'widen_types', both ('add_columns, widen_types') or 'none'"));
                            }
                        }
                    }
                }
                "max_catchup_runs" => {
                    let n = value.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n));
                    parsed.max_catchup_runs = n.ok_or_else(|| checked.bad("an integer from 1 to 10000"))?;
                }
                "mode" => {
                    let mode = match value.to_lowercase().as_str() {
                        "append" => WriteMode::Append,
                        "overwrite" => WriteMode::Overwrite,
                        "overwrite_partitions" => WriteMode::OverwritePartitions,
                        _ => return Err(checked.bad("'append', 'overwrite' or 'overwrite_partitions'")),
                    };
                    parsed.mode = Some(mode);
                }
                _ => {
                    return Err(PipelineError::UnknownOption {
                        pipeline: pipeline.to_string(),
                        option: option.clone(),
                    });
                }
            }
        }
        Ok(parsed)
    }
}

/// The options an `INSERT ... WITH (...)` takes.
const INSERT_OPTIONS: [&str; 3] = ["schema_evolution", "bad_rows", "quarantine_table"];

impl PipelineOptions {
    /// Validates the options of an `INSERT INTO table ... WITH (...)`: those of a pipeline that
    /// are about what one write does: `schema_evolution`, `bad_rows`, `quarantine_table`.
    pub fn for_insert(table: &str, options: &[(String, String)]) -> Result<Self, PipelineError> {
        let error = |message: String| PipelineError::InsertOption { table: table.to_string(), message };
        if let Some((option, _)) = options.iter().find(|(k, _)| !INSERT_OPTIONS.contains(&k.as_str())) {
            return Err(error(format!("unknown option `{option}` (known: {})", INSERT_OPTIONS.join(", "))));
        }
        Self::parse(table, options).map_err(|e| match e {
            PipelineError::BadValue { option, value, expected, .. } => {
                error(format!("option `{option}` = {value}: expected {expected}"))
            }
            other => other,
        })
    }

    /// The mode a run uses: the option, else what the body says. `mode = 'append'` on an
    /// `INSERT OVERWRITE` body is a contradiction.
    pub fn write_mode(&self, pipeline: &str, body: WriteMode) -> Result<WriteMode, PipelineError> {
        match (self.mode, body) {
            (Some(WriteMode::Append), WriteMode::Overwrite) => Err(PipelineError::BadValue {
                pipeline: pipeline.to_string(),
                option: "mode".to_string(),
                value: "append".to_string(),
                expected: "'overwrite' or 'overwrite_partitions' for an INSERT OVERWRITE body",
            }),
            (Some(mode), _) => Ok(mode),
            (None, body) => Ok(body),
        }
    }
}

/// The table `ON VIOLATION QUARANTINE` rows go to (`quarantine_table = '...'`), if one is named:
/// a table name, `schema.table` or `catalog.schema.table`, relative to the written table's own
/// catalog and schema.
pub fn quarantine_table(pipeline: &str, options: &[(String, String)]) -> Result<Option<String>, PipelineError> {
    let Some((option, value)) = options.iter().find(|(k, _)| k == "quarantine_table") else { return Ok(None) };
    let parts: Vec<&str> = value.split('.').collect();
    if value.trim().is_empty() || parts.len() > 3 || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(PipelineError::BadValue {
            pipeline: pipeline.to_string(),
            option: option.clone(),
            value: value.clone(),
            expected: "a table name: 'name', 'schema.name' or 'catalog.schema.name'",
        });
    }
    Ok(Some(value.clone()))
}

/// The longest wait between two attempts.
pub const RETRY_WAIT_MAX: Duration = Duration::from_secs(300);

/// The wait after failed attempt `attempt` (1 for the first): `backoff`, doubling per attempt,
/// capped at [`RETRY_WAIT_MAX`], give or take a fifth (so that retries of many runs do not fall
/// in step).
pub fn retry_wait(backoff: Duration, attempt: i64) -> Duration {
    let wait = backoff.saturating_mul(1 << (attempt - 1).clamp(0, 16)).min(RETRY_WAIT_MAX);
    let nanos = uuid::Uuid::now_v7().as_u128() as u64 % 400;
    wait.mul_f64(0.8 + nanos as f64 / 1000.0)
}

/// Re-reads a stored `CREATE PIPELINE` definition.
pub fn parse_definition(pipeline: &str, definition: &str) -> Result<CreatePipeline, PipelineError> {
    let corrupt = |message: String| PipelineError::Corrupt { pipeline: pipeline.to_string(), message };
    let mut statements = parser::parse(definition).map_err(|e| corrupt(e.to_string()))?;
    match statements.pop().map(|s| s.statement) {
        Some(Statement::CreatePipeline(create)) if statements.is_empty() => Ok(create),
        _ => Err(corrupt("not a single CREATE PIPELINE statement".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_option_is_validated() {
        let opts = |v: &str| PipelineOptions::parse("p", &[("shards".to_string(), v.to_string())]);
        assert_eq!(opts("8").unwrap().shards, Some(8));
        assert!(matches!(opts("0"), Err(PipelineError::BadValue { .. })));
        assert!(matches!(opts("x"), Err(PipelineError::BadValue { .. })));
        let backoff = |v: &str| PipelineOptions::parse("p", &[("retry_backoff".to_string(), v.to_string())]);
        assert_eq!(backoff("250ms").unwrap().retry_backoff, Duration::from_millis(250));
        assert!(matches!(backoff("99999999999999999h"), Err(PipelineError::BadValue { .. })), "no overflow");
        assert!(matches!(backoff("2 days"), Err(PipelineError::BadValue { .. })));
        let unknown = PipelineOptions::parse("p", &[("shard".to_string(), "2".to_string())]);
        assert!(matches!(unknown, Err(PipelineError::UnknownOption { .. })));
    }
}

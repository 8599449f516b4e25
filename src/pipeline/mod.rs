//! Pipelines: named, persisted write statements with options.
//!
//! A pipeline is stored in the ledger as its `CREATE PIPELINE` text and re-planned on every run,
//! so it always reads the latest state of its sources.

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
    #[error("pipeline `{pipeline}`: unknown option `{option}` (known: shards, mode)")]
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

/// Options from `CREATE PIPELINE ... WITH (...)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Fixed shard count; `None` means the engine's default.
    pub shards: Option<usize>,
    /// How runs change the table; `None` means what the body says (INSERT INTO or OVERWRITE).
    pub mode: Option<WriteMode>,
}

impl PipelineOptions {
    /// Validates the options of `pipeline`.
    pub fn parse(pipeline: &str, options: &[(String, String)]) -> Result<Self, PipelineError> {
        let mut parsed = Self::default();
        for (option, value) in options {
            match option.as_str() {
                "shards" => {
                    let shards = value.parse::<usize>().ok().filter(|n| (1..=SHARDS_MAX).contains(n));
                    parsed.shards = Some(shards.ok_or_else(|| PipelineError::BadValue {
                        pipeline: pipeline.to_string(),
                        option: option.clone(),
                        value: value.clone(),
                        expected: "an integer from 1 to 1024",
                    })?);
                }
                "mode" => {
                    let mode = match value.to_lowercase().as_str() {
                        "append" => WriteMode::Append,
                        "overwrite" => WriteMode::Overwrite,
                        "overwrite_partitions" => WriteMode::OverwritePartitions,
                        _ => {
                            return Err(PipelineError::BadValue {
                                pipeline: pipeline.to_string(),
                                option: option.clone(),
                                value: value.clone(),
                                expected: "'append', 'overwrite' or 'overwrite_partitions'",
                            });
                        }
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

impl PipelineOptions {
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
        let unknown = PipelineOptions::parse("p", &[("shard".to_string(), "2".to_string())]);
        assert!(matches!(unknown, Err(PipelineError::UnknownOption { .. })));
    }
}

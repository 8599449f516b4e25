//! The crate's error: one variant per layer, each carrying that layer's typed error.

use crate::catalog::CatalogError;
use crate::coordinator::RunError;
use crate::ledger::LedgerError;
use crate::parser::ParseError;
use crate::pipeline::PipelineError;

/// Any Sluice error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL text does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// DataFusion rejected or failed a statement (planning or execution).
    #[error("{}", .0.message())]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A catalog file is broken.
    #[error(transparent)]
    CatalogConfig(#[from] crate::catalog::CatalogConfigError),
    /// The run ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A write run failed (and was rolled back). Boxed: a run error carries the run, the
    /// target and the cause, and every `Result` of the crate would otherwise be that large.
    #[error(transparent)]
    Run(Box<RunError>),
    /// A pipeline is missing or badly defined.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Building a result batch failed.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A Ballista cluster's error.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `RETRY RUN` of a run that cannot be retried.
    #[error("cannot retry run {run_id}: {reason}")]
    CannotRetry {
        /// The run.
        run_id: String,
        /// Why not.
        reason: String,
    },
    /// A statement names a catalog that does not exist.
    #[error("catalog `{catalog}` does not exist (catalogs: {known})")]
    UnknownCatalog {
        /// The name used.
        catalog: String,
        /// The catalogs there are.
        known: String,
    },
    /// A pipeline writes into a catalog this process has not loaded.
    #[error(
        "pipeline `{pipeline}` writes into catalog `{catalog}`, which is not loaded{declared_in}: pass its folder with --catalogs DIR"
    )]
    CatalogNotLoaded {
        /// The catalog.
        catalog: String,
        /// The pipeline.
        pipeline: String,
        /// Where the catalog was declared when the pipeline was created, if known.
        declared_in: String,
    },
    /// A `COPY` whose target would overwrite the home's own files or a catalog's tables.
    #[error("COPY TO `{target}` refused: {reason}")]
    ExportRefused {
        /// The target as written.
        target: String,
        /// Why.
        reason: String,
    },
    /// The statement needs the run ledger, whose file is damaged.
    #[error(
        "{0}. This needs the run ledger: run `sluice doctor` for details; to start a new ledger, move the file aside (the pipelines and run history in it are then gone from Sluice)"
    )]
    LedgerUnavailable(String),
    /// A run of a multi-step pipeline did not commit every step.
    #[error("pipeline `{pipeline}` run {run_id} {status}: {error} ({steps}); sluice.steps has every step")]
    PipelineRun {
        /// The pipeline run.
        run_id: String,
        /// The pipeline.
        pipeline: String,
        /// `failed` or `cancelled`.
        status: &'static str,
        /// What went wrong.
        error: String,
        /// Each step that did not commit, with its status and error.
        steps: String,
    },
    /// `CANCEL RUN` of a run that is not running.
    #[error("run {run_id} is not running (SHOW RUNS and sluice.pipeline_runs list runs)")]
    CannotCancel {
        /// The run.
        run_id: String,
    },
    /// The statement was cancelled before it finished; it changed nothing.
    #[error("cancelled")]
    Cancelled,
    /// Bad engine configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A statement that cannot be planned, said in the user's terms (the table, column or file).
    #[error("{0}")]
    Plan(String),
    /// An error at this position of the SQL text.
    #[error("at line {line}, column {column}: {source}")]
    At {
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// The error.
        source: Box<Error>,
    },
    /// A write failed on a row that does not fit its table, found in the write's input file.
    #[error("{source} (in {location})")]
    InInput {
        /// The run's error.
        source: Box<Error>,
        /// Where the row is: `/data/orders.csv, line 7`, `/data/orders.parquet, row 12`.
        location: String,
    },
    /// A statement Sluice does not support (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An error in the statement that starts at this line and column.
    #[error("in the statement at line {line}, column {column}: {source}")]
    Statement {
        /// 1-based line where the statement starts.
        line: u64,
        /// 1-based column where the statement starts.
        column: u64,
        /// The error.
        source: Box<Error>,
    },
}

impl Error {
    /// Adds the position of the failing statement, unless the error already has one.
    pub fn at(self, line: u64, column: u64) -> Self {
        match self {
            Error::Parse(_) | Error::Statement { .. } | Error::At { .. } => self,
            other => Error::Statement { line, column, source: Box::new(other) },
        }
    }
}

impl Error {
    /// The write run the error is about, if any.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Error::Run(run) => run.run_id(),
            Error::Statement { source, .. } | Error::At { source, .. } | Error::InInput { source, .. } => {
                source.run_id()
            }
            _ => None,
        }
    }
}

impl From<RunError> for Error {
    fn from(error: RunError) -> Self {
        Error::Run(Box::new(error))
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

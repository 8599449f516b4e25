//! The command line: `sluice` (REPL), `sluice -c SQL`, `sluice -f FILE.sql`, `sluice FILE.sql`,
//! and SQL piped into stdin.
//!
//! A thin layer over `sluice::Engine`: it reads statements, runs them one by one, prints each
//! result, and (but in the REPL) stops at the first error with a non-zero exit.
//!
//! - `shell.rs`: a session: statements and backslash commands, Ctrl-C cancelling a statement;
//! - `commands.rs`: the backslash commands;
//! - `repl.rs`: the interactive prompt, history and completion;
//! - `format.rs`: printing results;
//! - `progress.rs`: the progress of running statements on stderr;
//! - `cluster.rs`: `sluice cluster scheduler|executor`.

mod cluster;
mod commands;
mod format;
mod progress;
mod repl;
mod serve;
mod shell;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use sluice::Engine;
use sluice::engine::Output;
use sluice::error::Error;
use sluice::system::{findings_batch, settled_batch};

pub use format::{Format, Printer};
use shell::{Flow, Shell};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "SQL pipelines committed atomically to Iceberg and Delta tables")]
pub struct Args {
    /// What to do instead of running SQL.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A SQL file to run, as with -f (runs after the -c commands and -f files).
    #[arg(value_name = "SCRIPT")]
    pub script: Option<PathBuf>,
    /// Home folder holding the catalog, warehouse and run ledger.
    #[arg(long, env = "SLUICE_HOME", default_value = ".sluice")]
    pub home: PathBuf,
    /// Also read catalog files (NAME.toml) from this folder, besides HOME/catalogs (repeatable).
    #[arg(long = "catalogs", value_name = "DIR")]
    pub catalog_dirs: Vec<PathBuf>,
    /// Run these statements or backslash commands and exit (repeatable; runs before any -f).
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,
    /// Run the statements in these files (`-` for stdin) and exit (repeatable).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format of query results.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Run writes on this DataFusion Ballista cluster: its scheduler, `df://host:port`
    /// (default: the home's config.toml, else this process).
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "URL")]
    pub cluster: Option<String>,
    /// Default number of shards for writes (default: available cores).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Memory limit for query execution, e.g. 512M or 2G; spilling operators spill beyond it.
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<usize>,
    /// Show no progress of running writes and steps on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Log format on stderr: text, or json (one object per line, for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the run and step spans' fields.
    Json,
}

/// Subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Run scheduled pipelines and serve the HTTP API (health, metrics, pipelines, runs) until
    /// SIGTERM / SIGINT.
    Serve(serve::ServeArgs),
    /// Settle runs left open by a process that stopped (also done on every start), and list them.
    Recover,
    /// Check the run ledger and every table of every catalog, and say what is wrong.
    Doctor,
    /// Run a process of a DataFusion Ballista cluster (runs go to it with --cluster).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The engine's error.
    #[error(transparent)]
    Sluice(#[from] Error),
    /// A backslash command used wrongly, or the terminal failed.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read, or stdout written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An error in a SQL file.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// The error.
        source: Box<CliError>,
    },
    /// `sluice doctor` found problems (listed in its output).
    #[error("sluice doctor found {0} problem(s), listed above")]
    Unhealthy(usize),
    /// Output ended because its reader went away (`sluice ... | head`): not reported.
    #[error("stdout closed")]
    Closed,
}

impl CliError {
    /// A closed pipe ends output quietly, like other Unix tools.
    fn stdout(source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::Closed,
            _ => CliError::Io { path: "<stdout>".to_string(), source },
        }
    }
}

/// Parses a byte size: a number with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}`: expected a size such as 512M or 2G")),
    };
    let value: usize = digits.parse().map_err(|_| format!("`{text}`: expected a size such as 512M or 2G"))?;
    value.checked_shl(shift).filter(|v| *v > 0).ok_or_else(|| format!("`{text}`: size out of range"))
}

/// Logs go to stderr, filtered by `SLUICE_LOG` (default `warn`; delta-kernel's own error logs,
/// e.g. on probing a table that does not exist yet, are off: its errors reach us as results),
/// coloured only when stderr is a terminal.
pub fn init_tracing(args: &Args) {
    let default = match args.command {
        Some(Command::Serve(_) | Command::Cluster(_)) => "info,buoyant_kernel=off",
        _ => "warn,buoyant_kernel=off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(true).init(),
    }
}

/// Runs the command line.
pub async fn run(args: Args) -> Result<(), CliError> {
    let mut builder = Engine::builder().home(&args.home);
    for dir in &args.catalog_dirs {
        builder = builder.catalogs_dir(dir);
    }
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    if let Some(cluster) = &args.cluster {
        builder = builder.cluster(cluster);
    }
    if let Some(limit) = args.memory_limit {
        builder = builder.memory_limit(limit);
    }
    let mut printer = Printer::new(args.format, None);
    let (output, problems) = match &args.command {
        None => return run_sql(builder, &args, printer).await,
        Some(Command::Cluster(command)) => return cluster::run(command).await,
        Some(Command::Serve(serve_args)) => return serve::serve(builder.build().await?, serve_args).await,
        Some(Command::Recover) => {
            let engine = builder.recover_on_start(false).build().await?;
            let settled = engine.recover().await;
            engine.close().await?;
            (Output::rows(settled_batch(&settled?)), 0)
        }
        Some(Command::Doctor) => {
            let engine = builder.recover_on_start(false).build().await?;
            let findings = engine.doctor().await;
            engine.close().await?;
            let problems = findings.iter().filter(|f| f.problem.is_some()).count();
            (Output::rows(findings_batch(&findings)), problems)
        }
    };
    let mut stdout = std::io::stdout().lock();
    printer.print(&mut stdout, &output).and_then(|()| printer.finish(&mut stdout)).map_err(CliError::stdout)?;
    if problems == 0 { Ok(()) } else { Err(CliError::Unhealthy(problems)) }
}

/// SQL from `-c`, `-f`, the script, stdin or the REPL.
async fn run_sql(builder: sluice::engine::EngineBuilder, args: &Args, printer: Printer) -> Result<(), CliError> {
    let engine = builder.build().await?;
    let result = run_statements(&engine, args, printer).await;
    // The ledger is checkpointed on every exit, failed or not.
    let closed = engine.close().await;
    match result {
        Err(CliError::Closed) => Ok(()),
        other => other.and(closed.map_err(CliError::from)),
    }
}

/// A live display on a terminal, lines elsewhere, nothing with `--quiet`.
fn progress_mode(args: &Args) -> progress::Mode {
    match (args.quiet, std::io::stderr().is_terminal()) {
        (true, _) => progress::Mode::Quiet,
        (false, true) => progress::Mode::Live,
        (false, false) => progress::Mode::Lines,
    }
}

/// The `-c` commands, the `-f` files and the script; else stdin when it is not a terminal
/// (as `-f -`); else the REPL, which shows at most 40 rows of a table.
async fn run_statements(engine: &Engine, args: &Args, mut printer: Printer) -> Result<(), CliError> {
    let scripted = !args.commands.is_empty() || !args.files.is_empty() || args.script.is_some();
    if !scripted && std::io::stdin().is_terminal() {
        printer.max_rows = Some(40);
        return repl::run(engine, printer, progress_mode(args)).await;
    }
    let mut shell = Shell::new(engine, printer, progress_mode(args));
    let result = run_script(&mut shell, args, scripted).await;
    // A JSON document is closed even after an error, so what was printed still parses.
    let finished = shell.finish();
    result.and(finished)
}

async fn run_script(shell: &mut Shell<'_>, args: &Args, scripted: bool) -> Result<(), CliError> {
    for input in &args.commands {
        if shell.run_input(input).await? == Flow::Quit {
            return Ok(());
        }
    }
    let stdin = PathBuf::from("-");
    let files = args.files.iter().chain(&args.script).chain((!scripted).then_some(&stdin));
    for file in files {
        shell.run_file(file).await?;
    }
    Ok(())
}

//! The command line: `sluice` (REPL), `sluice -c SQL`, `sluice -f FILE.sql`.
//!
//! A thin layer over `sluice::Engine`: it reads statements, runs them one by one, prints each
//! result, and stops at the first error.

mod format;
mod repl;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use sluice::Engine;
use sluice::engine::Output;
use sluice::error::{Error, Result};
use sluice::system::{findings_batch, settled_batch};

pub use format::{Format, print_output};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "SQL pipelines committed atomically to Iceberg and Delta tables")]
pub struct Args {
    /// What to do instead of running SQL.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Home folder holding the catalog, warehouse and run ledger.
    #[arg(long, env = "SLUICE_HOME", default_value = ".sluice")]
    pub home: PathBuf,
    /// Also read catalog files (NAME.toml) from this folder, besides HOME/catalogs (repeatable).
    #[arg(long = "catalogs", value_name = "DIR")]
    pub catalog_dirs: Vec<PathBuf>,
    /// Run these statements and exit (repeatable; runs before any -f).
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,
    /// Run the statements in these files and exit (repeatable).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format of query results.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    pub format: FormatArg,
    /// Default number of shards for writes (default: available cores).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Memory limit for query execution, e.g. 512M or 2G; spilling operators spill beyond it.
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<usize>,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Settle runs left open by a process that stopped (also done on every start), and list them.
    Recover,
    /// Check the run ledger and every table of every catalog, and say what is wrong.
    Doctor,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Aligned table.
    Table,
    /// CSV with a header row.
    Csv,
    /// JSON array of objects.
    Json,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Table => Format::Table,
            FormatArg::Csv => Format::Csv,
            FormatArg::Json => Format::Json,
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
/// e.g. on probing a table that does not exist yet, are off: its errors reach us as results).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,buoyant_kernel=off"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Runs the command line.
pub async fn run(args: Args) -> Result<()> {
    let mut builder = Engine::builder().home(&args.home);
    for dir in &args.catalog_dirs {
        builder = builder.catalogs_dir(dir);
    }
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    if let Some(limit) = args.memory_limit {
        builder = builder.memory_limit(limit);
    }
    let format = Format::from(args.format);
    match args.command {
        Some(Command::Recover) => {
            let engine = builder.recover_on_start(false).build().await?;
            let settled = engine.recover().await;
            engine.close().await?;
            let output = Output::rows(settled_batch(&settled?));
            return print_output(&mut std::io::stdout(), &output, format).or_else(stdout_error);
        }
        Some(Command::Doctor) => {
            let engine = builder.recover_on_start(false).build().await?;
            let findings = engine.doctor().await;
            engine.close().await?;
            let output = Output::rows(findings_batch(&findings));
            print_output(&mut std::io::stdout(), &output, format).or_else(stdout_error)?;
            let problems = findings.iter().filter(|f| f.problem.is_some()).count();
            return match problems {
                0 => Ok(()),
                n => Err(Error::Unhealthy(n)),
            };
        }
        None => {}
    }
    let engine = builder.build().await?;
    let result = run_statements(&engine, &args, format).await;
    // The ledger is checkpointed on every exit, failed or not.
    let closed = engine.close().await;
    result.and(closed)
}

/// The REPL, or the `-c` commands and then the `-f` files.
async fn run_statements(engine: &Engine, args: &Args, format: Format) -> Result<()> {
    if args.commands.is_empty() && args.files.is_empty() {
        return repl::run(engine, format).await;
    }
    for sql in &args.commands {
        run_script(engine, sql, format).await?;
    }
    for file in &args.files {
        let sql =
            std::fs::read_to_string(file).map_err(|source| Error::Io { path: file.display().to_string(), source })?;
        run_script(engine, &sql, format)
            .await
            .map_err(|source| Error::InFile { path: file.display().to_string(), source: Box::new(source) })?;
    }
    Ok(())
}

/// Parses all of `sql` (a syntax error runs nothing), then runs and prints statement by statement.
async fn run_script(engine: &Engine, sql: &str, format: Format) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    for statement in sluice::parser::parse(sql)? {
        let output = engine.execute(&statement).await?;
        if let Err(e) = print_output(&mut stdout, &output, format) {
            return stdout_error(e);
        }
    }
    stdout.flush().or_else(stdout_error)
}

/// A closed pipe (`sluice ... | head`) ends output quietly, like other Unix tools.
fn stdout_error(e: std::io::Error) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(Error::Io { path: "<stdout>".to_string(), source: e })
}

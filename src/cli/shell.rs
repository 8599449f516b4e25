//! A command-line session: the engine, how results print, and the statements and backslash
//! commands run in it, whether they come from the REPL, `-c`, a file or stdin.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice::Engine;
use sluice::engine::Output;
use sluice::parser::Located;
use tokio_util::sync::CancellationToken;

use super::CliError;
use super::commands::{self, Command, HELP};
use super::format::Printer;
use super::progress::{Mode, Progress};

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next input.
    Continue,
    /// Leave (`\q`).
    Quit,
}

/// A session over one engine.
pub struct Shell<'a> {
    engine: &'a Engine,
    interrupts: Interrupts,
    progress: Mode,
    /// How results print.
    pub printer: Printer,
    /// Print each statement's wall time.
    pub timing: bool,
}

/// Ctrl-C (SIGINT) for the whole process: one handler, on a thread of its own (shards can keep
/// every runtime worker busy), so no press is lost. A press cancels the
/// running statement; one between statements cancels the next as it starts (a script stops
/// there), unless the REPL forgets it at its prompt.
#[derive(Debug, Clone, Default)]
struct Interrupts(Arc<Mutex<InterruptState>>);

#[derive(Debug, Default)]
struct InterruptState {
    running: Option<CancellationToken>,
    pending: bool,
}

impl Interrupts {
    fn listen() -> Self {
        let interrupts = Self::default();
        let state = interrupts.0.clone();
        let handled = ctrlc::set_handler(move || {
            let mut state = state.lock().expect("interrupt state");
            match state.running.take() {
                Some(token) => {
                    eprintln!("cancelling the statement...");
                    token.cancel();
                }
                None => state.pending = true,
            }
        });
        if let Err(e) = handled {
            tracing::warn!("Ctrl-C will stop the process rather than cancel a statement: {e}");
        }
        interrupts
    }

    /// The token of a statement that starts now.
    fn begin(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let mut state = self.0.lock().expect("interrupt state");
        if std::mem::take(&mut state.pending) {
            token.cancel();
        }
        state.running = Some(token.clone());
        token
    }

    fn end(&self) {
        self.0.lock().expect("interrupt state").running = None;
    }
}

const LIST_TABLES: &str = "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables \
     WHERE table_schema <> 'information_schema' ORDER BY 1, 2, 3";

impl<'a> Shell<'a> {
    /// A session printing with `printer`; it handles Ctrl-C from now on (one session per process).
    pub fn new(engine: &'a Engine, printer: Printer, progress: Mode) -> Self {
        Self { engine, interrupts: Interrupts::listen(), progress, printer, timing: false }
    }

    /// Forgets a Ctrl-C pressed while no statement ran (the REPL's prompt starts afresh).
    pub fn forget_interrupt(&self) {
        self.interrupts.0.lock().expect("interrupt state").pending = false;
    }

    /// Runs one input: a backslash command, or SQL statements.
    pub async fn run_input(&mut self, input: &str) -> Result<Flow, CliError> {
        let trimmed = input.trim_start();
        if trimmed.starts_with('\\') || is_dot_command(trimmed) {
            return self.run_command(trimmed).await;
        }
        self.run_sql(input).await.map(|()| Flow::Continue)
    }

    /// Parses all of `sql` (a syntax error runs nothing), then runs and prints statement by
    /// statement; stops at the first error.
    pub async fn run_sql(&mut self, sql: &str) -> Result<(), CliError> {
        for statement in sluice::parser::parse(sql).map_err(sluice::error::Error::from)? {
            let started = Instant::now();
            let output = self.execute(&statement).await?;
            let mut stdout = std::io::stdout().lock();
            self.printer.print(&mut stdout, &output).map_err(CliError::stdout)?;
            if self.timing {
                writeln!(stdout, "Time: {:.3}s", started.elapsed().as_secs_f64()).map_err(CliError::stdout)?;
            }
        }
        Ok(())
    }

    /// Runs a file's statements; errors name the file.
    pub async fn run_file(&mut self, path: &Path) -> Result<(), CliError> {
        let sql = match path.as_os_str() == "-" {
            true => std::io::read_to_string(std::io::stdin()),
            false => std::fs::read_to_string(path),
        };
        let name = if path.as_os_str() == "-" { "<stdin>".to_string() } else { path.display().to_string() };
        let sql = sql.map_err(|source| CliError::Io { path: name.clone(), source })?;
        self.run_sql(&sql).await.map_err(|source| CliError::InFile { path: name, source: Box::new(source) })
    }

    /// Ends a run's output (closes a JSON document).
    pub fn finish(&mut self) -> Result<(), CliError> {
        self.printer.finish(&mut std::io::stdout().lock()).map_err(CliError::stdout)
    }

    /// One statement; Ctrl-C cancels it (a write rolls back before this returns).
    async fn execute(&self, statement: &Located) -> Result<Output, CliError> {
        let cancel = self.interrupts.begin();
        let progress = Progress::start(self.engine, self.progress);
        let result = self.engine.execute_cancellable(statement, cancel).await;
        if let Some(progress) = progress {
            progress.stop().await;
        }
        self.interrupts.end();
        Ok(result?)
    }

    async fn run_command(&mut self, line: &str) -> Result<Flow, CliError> {
        match commands::parse(line).map_err(CliError::Usage)? {
            Command::Quit => return Ok(Flow::Quit),
            Command::Help => println!("{HELP}"),
            Command::ListTables => self.run_sql(LIST_TABLES).await?,
            Command::Describe(name) => self.run_sql(&format!("DESCRIBE {name}")).await?,
            Command::Include(path) => self.run_file(&path).await?,
            Command::Timing(on) => {
                self.timing = on.unwrap_or(!self.timing);
                println!("Timing is {}.", if self.timing { "on" } else { "off" });
            }
            Command::Format(format) => self.printer.format = format,
            Command::MaxRows(max) => self.printer.max_rows = max,
        }
        Ok(Flow::Continue)
    }
}

/// `.tables`, `.exit`, ...: the DuckDB and SQLite shells' commands, answered with a pointer to
/// ours rather than read as the start of a statement.
fn is_dot_command(input: &str) -> bool {
    input.starts_with('.') && input[1..].starts_with(|c: char| c.is_ascii_alphabetic())
}

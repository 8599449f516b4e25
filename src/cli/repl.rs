//! The interactive shell: multi-line statements ended by `;`, history in `<home>/history.txt`,
//! and backslash commands (`\q`, `\d [table]`, `\?`).

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Editor, Helper};

use super::{Format, print_output};
use sluice::Engine;
use sluice::error::{Error, Result};

const HELP: &str = r"Statements end with `;` and may span lines.
  \d            list tables
  \d TABLE      describe a table
  \?            this help
  \q            quit
Extensions: CREATE PIPELINE name [WITH (shards = N)] AS INSERT INTO ... SELECT ...;
            RUN PIPELINE name;  SHOW PIPELINES;  DESCRIBE PIPELINE name;
            DROP PIPELINE name;  SHOW RUNS [FOR name];  SHOW CATALOGS;";

/// Asks the parser whether the buffer holds a finished statement.
struct SqlHelper;

impl Validator for SqlHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        let input = ctx.input();
        if input.trim().is_empty() || input.trim_start().starts_with('\\') || sluice::parser::is_complete(input) {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

impl Completer for SqlHelper {
    type Candidate = String;
}
impl Hinter for SqlHelper {
    type Hint = String;
}
impl Highlighter for SqlHelper {}
impl Helper for SqlHelper {}

/// What a backslash command asks for.
enum Command {
    Quit,
    Help,
    Sql(String),
    Unknown(String),
}

fn backslash_command(line: &str) -> Command {
    let mut words = line.trim().trim_end_matches(';').split_whitespace();
    match (words.next(), words.next()) {
        (Some("\\q"), None) => Command::Quit,
        (Some("\\?"), None) => Command::Help,
        (Some("\\d"), None) => Command::Sql(
            "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables \
             WHERE table_schema <> 'information_schema' ORDER BY 1, 2, 3"
                .to_string(),
        ),
        (Some("\\d"), Some(table)) => Command::Sql(format!("DESCRIBE {table}")),
        _ => Command::Unknown(line.trim().to_string()),
    }
}

/// Runs the shell until `\q` or end of input.
pub async fn run(engine: &Engine, format: Format) -> Result<()> {
    let readline_error = |e: ReadlineError| Error::Config(format!("terminal: {e}"));
    let mut editor: Editor<SqlHelper, FileHistory> = Editor::new().map_err(readline_error)?;
    editor.set_helper(Some(SqlHelper));
    let history = engine.home().join("history.txt");
    let _ = editor.load_history(&history); // absent on first use
    println!("Sluice {} — home {}. \\? for help, \\q to quit.", env!("CARGO_PKG_VERSION"), engine.home().display());
    loop {
        let input = match editor.readline("sluice> ") {
            Ok(input) => input,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(readline_error(e)),
        };
        if input.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(input.as_str());
        let sql = if input.trim_start().starts_with('\\') {
            match backslash_command(&input) {
                Command::Quit => break,
                Command::Help => {
                    println!("{HELP}");
                    continue;
                }
                Command::Unknown(command) => {
                    eprintln!("error: unknown command `{command}` (\\? for help)");
                    continue;
                }
                Command::Sql(sql) => sql,
            }
        } else {
            input
        };
        if let Err(e) = run_statements(engine, &sql, format).await {
            eprintln!("error: {e}");
        }
    }
    editor.save_history(&history).map_err(readline_error)
}

async fn run_statements(engine: &Engine, sql: &str, format: Format) -> Result<()> {
    let mut stdout = std::io::stdout();
    for statement in sluice::parser::parse(sql)? {
        let started = std::time::Instant::now();
        let output = engine.execute(&statement).await?;
        print_output(&mut stdout, &output, format).map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
        if format == Format::Table {
            println!("({:.3}s)", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

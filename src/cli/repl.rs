//! The interactive shell: statements ended by `;` over as many lines as they take (a
//! continuation prompt says the statement goes on), backslash commands, history in
//! `<home>/history.txt` written after every entry, and Tab completion of keywords, backslash
//! commands and the session's catalogs, schemas, tables, columns and pipelines.

use std::borrow::Cow;
use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use super::CliError;
use super::commands;
use super::format::Printer;
use super::progress::Mode;
use super::shell::{Flow, Shell};
use sluice::Engine;

const PROMPT: &str = "sluice> ";
const CONTINUE: &str = "     -> ";
/// Sluice's own statement words, besides SQL's keywords.
const EXTENSION_WORDS: [&str; 6] = ["PIPELINE", "PIPELINES", "RUNS", "CATALOGS", "RETRY", "RUN"];

/// Completes the word before the cursor from keywords, backslash commands and `names`.
#[derive(Default)]
struct SqlHelper {
    /// Catalogs, schemas and tables (bare and qualified), columns and pipelines.
    names: BTreeSet<String>,
}

impl SqlHelper {
    fn candidates(&self, word: &str) -> Vec<String> {
        let lower = word.to_lowercase();
        let matches = |name: &str| name.to_lowercase().starts_with(&lower) && name.len() > word.len();
        if word.starts_with('\\') {
            return commands::NAMES.iter().filter(|n| matches(n)).map(ToString::to_string).collect();
        }
        // Keywords come in the case the word is typed in.
        let upper = word.chars().any(char::is_uppercase);
        let keywords = ALL_KEYWORDS.iter().chain(EXTENSION_WORDS.iter()).filter(|k| matches(k));
        let keywords = keywords.map(|k| if upper { k.to_string() } else { k.to_lowercase() });
        let names = self.names.iter().filter(|n| matches(n)).cloned();
        let found: BTreeSet<String> = names.chain(keywords).collect();
        found.into_iter().collect()
    }
}

impl Completer for SqlHelper {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        let is_name_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | '\\' | '$');
        let before = line[..pos].char_indices().rev().find(|(_, c)| !is_name_char(*c));
        let start = before.map_or(0, |(i, c)| i + c.len_utf8());
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, vec![]));
        }
        Ok((start, self.candidates(word)))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}
impl Highlighter for SqlHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}
impl Validator for SqlHelper {}
impl Helper for SqlHelper {}

/// The names Tab completes: every catalog, schema, table and column the session sees, and the
/// pipelines. What cannot be listed is left out (completion never fails a prompt).
async fn completion_names(engine: &Engine) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let listing = "SELECT table_catalog, table_schema, table_name, column_name FROM information_schema.columns \
                   WHERE table_schema <> 'information_schema'";
    for batch in engine.sql(listing).await.unwrap_or_default() {
        let column = |i: usize| batch.column(i).as_string_opt::<i32>().cloned();
        let (Some(catalogs), Some(schemas), Some(tables), Some(columns)) = (column(0), column(1), column(2), column(3))
        else {
            continue;
        };
        for row in 0..batch.num_rows() {
            if catalogs.is_null(row) || schemas.is_null(row) || tables.is_null(row) || columns.is_null(row) {
                continue;
            }
            let (catalog, schema, table) = (catalogs.value(row), schemas.value(row), tables.value(row));
            names.insert(catalog.to_string());
            names.insert(format!("{catalog}.{schema}"));
            names.insert(format!("{catalog}.{schema}.{table}"));
            names.insert(table.to_string());
            names.insert(columns.value(row).to_string());
        }
    }
    if engine.ledger_damage().is_none()
        && let Ok(pipelines) = engine.ledger().pipelines().await
    {
        names.extend(pipelines.into_iter().map(|p| p.name));
    }
    names
}

/// Whether `input` may create, drop or alter tables or pipelines (or runs a file that may).
fn changes_names(input: &str) -> bool {
    let first = input.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
    matches!(first.as_str(), "CREATE" | "DROP" | "ALTER" | "\\I" | ".READ")
}

/// Whether a line, alone at the prompt, asks to leave (`exit`, `quit`, as psql and DuckDB take them).
fn is_exit(line: &str) -> bool {
    let word = line.trim().trim_end_matches(';').trim();
    word.eq_ignore_ascii_case("exit") || word.eq_ignore_ascii_case("quit")
}

/// Runs the shell until `\q`, `exit`, `quit` or Ctrl-D.
pub async fn run(engine: &Engine, printer: Printer, progress: Mode) -> Result<(), CliError> {
    let terminal = |e: ReadlineError| CliError::Usage(format!("terminal: {e}"));
    let mut editor: Editor<SqlHelper, FileHistory> = Editor::new().map_err(terminal)?;
    editor.set_helper(Some(SqlHelper::default()));
    // After the editor: rustyline takes SIGINT for itself when it opens the terminal, and the
    // shell's Ctrl-C handler must come last to cancel statements (at the prompt, in raw mode,
    // Ctrl-C is a key that rustyline reads, not a signal).
    let shell = &mut Shell::new(engine, printer, progress);
    let history = engine.home().join("history.txt");
    let _ = editor.load_history(&history); // absent on first use
    println!("Sluice {} — home {}. \\? for help, \\q to quit.", env!("CARGO_PKG_VERSION"), engine.home().display());
    let mut buffer = String::new();
    let mut stale_names = true;
    loop {
        if stale_names {
            let names = completion_names(engine).await;
            if let Some(helper) = editor.helper_mut() {
                helper.names = names;
            }
            stale_names = false;
        }
        shell.forget_interrupt();
        let prompt = if buffer.is_empty() { PROMPT } else { CONTINUE };
        let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
            Ok(line) => line,
            // Ctrl-C at the prompt drops what was typed, the lines before included.
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(terminal(e)),
        };
        let trimmed = line.trim_start();
        if buffer.is_empty() && trimmed.is_empty() {
            continue;
        }
        if buffer.is_empty() && is_exit(trimmed) {
            break;
        }
        // A command is one line; SQL runs once its statement is complete.
        let command = buffer.is_empty() && (trimmed.starts_with('\\') || trimmed.starts_with('.'));
        let input = if command {
            line
        } else {
            buffer.push_str(&line);
            buffer.push('\n');
            if !sluice::parser::is_complete(&buffer) {
                continue;
            }
            std::mem::take(&mut buffer)
        };
        let _ = editor.add_history_entry(input.trim_end());
        if let Err(e) = editor.append_history(&history) {
            tracing::debug!("could not write the history to {}: {e}", history.display());
        }
        match shell.run_input(&input).await {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => {}
            Err(e) => eprintln!("error: {e}"),
        }
        shell.finish()?;
        // Listing every column loads every table's metadata: only after what can change them.
        stale_names = changes_names(&input);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_offers_names_keywords_and_commands_by_prefix() {
        let names = ["lake", "lake.shop", "lake.shop.orders", "orders", "order_id"].map(String::from);
        let helper = SqlHelper { names: names.into_iter().collect() };
        assert_eq!(helper.candidates("lake.shop.o"), vec!["lake.shop.orders"]);
        let ord = helper.candidates("ord");
        assert!(ord.contains(&"orders".to_string()) && ord.contains(&"order_id".to_string()), "{ord:?}");
        assert!(ord.contains(&"order".to_string()), "keywords in the typed case: {ord:?}");
        assert!(helper.candidates("SEL").contains(&"SELECT".to_string()));
        assert_eq!(helper.candidates("\\ti"), vec!["\\timing"]);
        assert!(is_exit("quit;") && is_exit(" EXIT ") && !is_exit("exits"));
        assert!(changes_names("create table t (a int);") && changes_names("\\i f.sql") && !changes_names("SELECT 1;"));
        let history = rustyline::history::DefaultHistory::new();
        let context = Context::new(&history);
        let line = "SELECT '—' FROM lake.shop.o";
        assert_eq!(helper.complete(line, line.len(), &context).unwrap(), (18, vec!["lake.shop.orders".to_string()]));
    }
}

//! Backslash commands (`\d`, `\i FILE`, `\timing`, `\pset`, ...), shared by the REPL and `-c`.

use std::path::PathBuf;

use super::format::Format;

/// The help the REPL prints for `\?`.
pub const HELP: &str = r#"Statements end with `;` and may span lines. Ctrl-C cancels the running statement
(a write rolls back); at the prompt it clears the line. Ctrl-D, \q, exit or quit leave.
  \d [NAME]             list tables, or describe a table (format, location, partitioning)
  \i FILE               run the statements in FILE (also .read FILE)
  \timing [on|off]      print how long each statement took
  \pset format FORMAT   table, csv, tsv, json or jsonl
  \pset maxrows N       show at most N rows of a table (0: all)
  \?                    this help
  \q                    quit
Extensions: CREATE PIPELINE name [WITH (shards = N)] AS INSERT INTO ... SELECT ...;
            RUN PIPELINE name;  EXPLAIN RUN PIPELINE name;  SHOW PIPELINES;  DESCRIBE PIPELINE name;
            DROP PIPELINE name;  SHOW RUNS [FOR name];  RETRY RUN 'id';  SHOW CATALOGS;
            SHOW CREATE TABLE t;  SELECT * FROM lake.s."t$snapshots" (also $files, $partitions, $history)"#;

/// The command names Tab completes.
pub const NAMES: [&str; 6] = ["\\d", "\\i", "\\timing", "\\pset", "\\?", "\\q"];

/// What a backslash command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Leave.
    Quit,
    /// Print [`HELP`].
    Help,
    /// List tables.
    ListTables,
    /// Describe a table.
    Describe(String),
    /// Run a file's statements.
    Include(PathBuf),
    /// Timing on or off (`None`: toggle).
    Timing(Option<bool>),
    /// Set the output format.
    Format(Format),
    /// Set the most rows a table shows (`None`: all).
    MaxRows(Option<usize>),
}

/// Parses a line that starts with `\` (or `.read`, as the DuckDB shell writes `\i`).
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim().trim_end_matches(';').trim();
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let args: Vec<&str> = rest.split_whitespace().collect();
    let usage = |usage: &str| Err(format!("usage: {usage}"));
    match (name, args.as_slice()) {
        ("\\q", []) => Ok(Command::Quit),
        ("\\?" | "\\h", []) => Ok(Command::Help),
        ("\\d", []) => Ok(Command::ListTables),
        ("\\d", [_]) => Ok(Command::Describe(rest.to_string())),
        ("\\d", _) => usage("\\d [TABLE]"),
        ("\\i" | ".read", []) => usage("\\i FILE"),
        ("\\i" | ".read", _) => Ok(Command::Include(PathBuf::from(unquote(rest)))),
        ("\\timing", []) => Ok(Command::Timing(None)),
        ("\\timing", ["on"]) => Ok(Command::Timing(Some(true))),
        ("\\timing", ["off"]) => Ok(Command::Timing(Some(false))),
        ("\\timing", _) => usage("\\timing [on|off]"),
        ("\\pset", ["format", format]) => format.parse().map(Command::Format),
        ("\\pset", ["maxrows", n]) => match n.parse::<usize>() {
            Ok(0) => Ok(Command::MaxRows(None)),
            Ok(n) => Ok(Command::MaxRows(Some(n))),
            Err(_) => Err(format!("\\pset maxrows: `{n}` is not a number of rows (0 shows all)")),
        },
        ("\\pset", _) => usage("\\pset format table|csv|tsv|json|jsonl, or \\pset maxrows N"),
        (name, _) if name.starts_with('.') => {
            Err(format!("unknown command `{name}` (Sluice's commands start with a backslash: \\? lists them)"))
        }
        (name, _) => Err(format!("unknown command `{name}` (\\? lists the commands)")),
    }
}

fn unquote(text: &str) -> &str {
    let quoted = text.len() >= 2
        && (text.starts_with('\'') && text.ends_with('\'') || text.starts_with('"') && text.ends_with('"'));
    if quoted { &text[1..text.len() - 1] } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments_and_refuse_the_rest() {
        assert_eq!(parse("\\q"), Ok(Command::Quit));
        assert_eq!(parse("\\d lake.shop.orders;"), Ok(Command::Describe("lake.shop.orders".into())));
        assert_eq!(parse("\\i 'my file.sql'"), Ok(Command::Include("my file.sql".into())));
        assert_eq!(parse(".read f.sql"), Ok(Command::Include("f.sql".into())));
        assert_eq!(parse("\\timing off"), Ok(Command::Timing(Some(false))));
        assert_eq!(parse("\\pset format jsonl"), Ok(Command::Format(Format::Jsonl)));
        assert_eq!(parse("\\pset maxrows 0"), Ok(Command::MaxRows(None)));
        assert!(parse("\\pset maxrows many").unwrap_err().contains("`many`"));
        assert!(parse("\\pset format xml").unwrap_err().contains("unknown format `xml`"));
        assert!(parse(".tables").unwrap_err().contains("backslash"));
        assert!(parse("\\x").unwrap_err().contains("unknown command `\\x`"));
    }
}

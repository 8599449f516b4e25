//! The SQL front end: DataFusion's parser, wrapped, plus Sluice's extension statements.
//!
//! Sluice never forks DataFusion's grammar. [`SluiceParser`] peeks at the first tokens of each
//! statement; when they start an extension (`CREATE PIPELINE`, `RUN PIPELINE`, ...) it parses it
//! here, otherwise it delegates the statement to [`DFParser`]. Every statement keeps the position
//! where it starts, so errors raised later (planning, execution) can still point at a line.
//! Statements round-trip through `Display`, which is how pipeline bodies are persisted.

use std::fmt;

use datafusion::sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{CreateTable, Expr, ObjectName, SqlOption, Statement as SqlStatement, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use crate::table::{PartitionField, Transform};

mod expect;
mod schedule;
mod steps;

pub use expect::{Expectation, TableExpectation, Violation};
pub use schedule::{AlterPipeline, ScheduleClause};
pub use steps::{PipelineBody, PipelineStep};

/// A syntax error, with the line and column (1-based) where the parser gave up.
#[derive(Debug, thiserror::Error)]
#[error("syntax error at line {line}, column {column}: {message}")]
pub struct ParseError {
    /// What the parser expected and what it found.
    pub message: String,
    /// 1-based line of the offending token.
    pub line: u64,
    /// 1-based column of the offending token.
    pub column: u64,
}

impl ParseError {
    fn at(location: Location, message: impl Into<String>) -> Self {
        Self { message: message.into(), line: location.line, column: location.column }
    }

    /// sqlparser puts the position inside the message (`... at Line: 3, Column: 7`);
    /// lift it out so every syntax error has the same shape.
    fn from_parser(err: ParserError, fallback: Location) -> Self {
        let text = match err {
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
            ParserError::RecursionLimitExceeded => "statement nested too deeply".to_string(),
        };
        match text.rsplit_once(" at Line: ") {
            Some((message, position)) => {
                let mut numbers = position.split(", Column: ").map(|n| n.trim().parse::<u64>());
                match (numbers.next(), numbers.next()) {
                    (Some(Ok(line)), Some(Ok(column))) => Self { message: message.to_string(), line, column },
                    _ => Self::at(fallback, text),
                }
            }
            None => Self::at(fallback, text),
        }
    }
}

/// One parsed statement: DataFusion's, or a Sluice extension.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// Anything DataFusion parses: queries, DDL, `INSERT`, `CREATE EXTERNAL TABLE`, `COPY`, ...
    DataFusion(Box<DFStatement>),
    /// Extension: `CREATE [OR REPLACE] PIPELINE [IF NOT EXISTS] name [WITH (key = value, ...)] AS INSERT ...`
    CreatePipeline(CreatePipeline),
    /// Extension: `ALTER PIPELINE name SET SCHEDULE ... | DROP SCHEDULE | PAUSE | RESUME | SET (...)`
    AlterPipeline {
        /// The pipeline.
        name: String,
        /// What changes.
        change: AlterPipeline,
    },
    /// Extension: `INSERT INTO t [(CONSTRAINT name EXPECT (condition) [ON VIOLATION ...], ...)]
    /// [WITH (key = value, ...)] ...`: an insert whose rows are checked against expectations, or
    /// that takes options (`schema_evolution`, `bad_rows`, `quarantine_table`).
    InsertWith {
        /// The insert, constraint list and options removed (a [`Statement::DataFusion`] `INSERT`).
        insert: Box<Statement>,
        /// The expectations, in order.
        expectations: Vec<Expectation>,
        /// `WITH (key = value)` options, keys lower-cased, values as written.
        options: Vec<(String, String)>,
    },
    /// Extension: `ALTER TABLE t ADD CONSTRAINT c EXPECT (...) [ON VIOLATION ...]` and
    /// `ALTER TABLE t DROP CONSTRAINT c`: the table's own expectations, checked on every write.
    AlterTableExpectation {
        /// The table.
        table: ObjectName,
        /// The change.
        change: TableExpectation,
    },
    /// Extension: `RUN PIPELINE name`
    RunPipeline {
        /// The pipeline to run.
        name: String,
    },
    /// Extension: `CANCEL RUN '<run id>'`: asks the process running it to stop.
    CancelRun {
        /// The run (a pipeline run or a write run).
        run_id: String,
    },
    /// Extension: `EXPLAIN [RUN] PIPELINE name`: what a run would do, without running it.
    ExplainPipeline {
        /// The pipeline.
        name: String,
    },
    /// Extension: `CREATE TABLE ... PARTITIONED BY (field, ...)` where a field is a column or an
    /// Iceberg transform of one: `year(c)`, `month(c)`, `day(c)`, `hour(c)`, `bucket(N, c)`,
    /// `truncate(W, c)`. `create` is the statement without the clause.
    CreatePartitionedTable {
        /// The `CREATE TABLE` statement, clause removed.
        create: Box<SqlStatement>,
        /// The partition fields, in order.
        partition_by: Vec<PartitionField>,
    },
    /// Extension: `SHOW CATALOGS`
    ShowCatalogs,
    /// Extension: `SHOW CLUSTER`: where runs execute (a Ballista scheduler and its executors).
    ShowCluster,
    /// Extension: `RETRY RUN '<run id>'`
    RetryRun {
        /// The run to run again under its id.
        run_id: String,
    },
    /// Extension: `SHOW PIPELINES`
    ShowPipelines,
    /// Extension: `DESCRIBE PIPELINE name`
    DescribePipeline {
        /// The pipeline to describe.
        name: String,
    },
    /// Extension: `DROP PIPELINE [IF EXISTS] name`
    DropPipeline {
        /// The pipeline to drop.
        name: String,
        /// Do not fail when it does not exist.
        if_exists: bool,
    },
    /// Extension: `SHOW RUNS [FOR pipeline]`
    ShowRuns {
        /// Only the runs of this pipeline.
        pipeline: Option<String>,
        /// `WHERE <condition>` over `sluice.runs`' columns (`status = 'dead'`: the dead-letter list).
        filter: Option<Box<Expr>>,
    },
}

/// `CREATE PIPELINE`: a named, persisted write statement (or graph of steps) with options.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatePipeline {
    /// Pipeline name (a single identifier).
    pub name: String,
    /// Replace an existing pipeline of that name.
    pub or_replace: bool,
    /// Succeed quietly when the pipeline exists.
    pub if_not_exists: bool,
    /// `WITH (key = value)` options, keys lower-cased, values as written.
    pub options: Vec<(String, String)>,
    /// `SCHEDULE '<cron>' [TIMEZONE '<zone>']`: when `sluice serve` runs it.
    pub schedule: Option<ScheduleClause>,
    /// What a run does.
    pub body: PipelineBody,
}

/// A statement with the position of its first token in the source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The statement.
    pub statement: Statement,
    /// The statement's own text in the source, without its `;`.
    pub sql: String,
    /// 1-based line where the statement starts.
    pub line: u64,
    /// 1-based column where the statement starts.
    pub column: u64,
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::DataFusion(s) => write!(f, "{s}"),
            Statement::CreatePipeline(c) => {
                write!(f, "CREATE ")?;
                if c.or_replace {
                    write!(f, "OR REPLACE ")?;
                }
                write!(f, "PIPELINE ")?;
                if c.if_not_exists {
                    write!(f, "IF NOT EXISTS ")?;
                }
                write!(f, "{}", c.name)?;
                write_options(f, &c.options)?;
                if let Some(schedule) = &c.schedule {
                    write!(f, " {schedule}")?;
                }
                match &c.body {
                    PipelineBody::Insert(body, expectations) if expectations.is_empty() => write!(f, " AS {body}"),
                    PipelineBody::Insert(body, expectations) => {
                        let insert = Statement::DataFusion(Box::new(DFStatement::Statement(body.clone())));
                        write!(f, " AS {}", expect::after_table(&insert, &expect::constraint_list(expectations)))
                    }
                    PipelineBody::Steps(steps) => {
                        write!(f, " AS BEGIN")?;
                        for step in steps {
                            write!(f, " {step};")?;
                        }
                        write!(f, " END")
                    }
                }
            }
            Statement::RunPipeline { name } => write!(f, "RUN PIPELINE {name}"),
            Statement::ExplainPipeline { name } => write!(f, "EXPLAIN PIPELINE {name}"),
            Statement::CancelRun { run_id } => write!(f, "CANCEL RUN '{run_id}'"),
            Statement::CreatePartitionedTable { create, partition_by } => {
                let fields: Vec<String> = partition_by.iter().map(ToString::to_string).collect();
                let clause = format!("PARTITIONED BY ({})", fields.join(", "));
                let statement = create.to_string();
                let query = match create.as_ref() {
                    SqlStatement::CreateTable(CreateTable { query: Some(query), .. }) => format!(" AS {query}"),
                    _ => String::new(),
                };
                match statement.strip_suffix(&query).filter(|_| !query.is_empty()) {
                    Some(head) => write!(f, "{head} {clause}{query}"),
                    None => write!(f, "{statement} {clause}"),
                }
            }
            Statement::ShowCatalogs => write!(f, "SHOW CATALOGS"),
            Statement::ShowCluster => write!(f, "SHOW CLUSTER"),
            Statement::RetryRun { run_id } => write!(f, "RETRY RUN '{run_id}'"),
            Statement::ShowPipelines => write!(f, "SHOW PIPELINES"),
            Statement::DescribePipeline { name } => write!(f, "DESCRIBE PIPELINE {name}"),
            Statement::DropPipeline { name, if_exists } => {
                write!(f, "DROP PIPELINE {}{name}", if *if_exists { "IF EXISTS " } else { "" })
            }
            Statement::AlterPipeline { name, change } => write!(f, "ALTER PIPELINE {name} {change}"),
            Statement::AlterTableExpectation { table, change } => write!(f, "ALTER TABLE {table} {change}"),
            Statement::InsertWith { insert, expectations, options } => {
                let clauses = format!("{}{}", expect::constraint_list(expectations), Options(options));
                write!(f, "{}", expect::after_table(insert, &clauses))
            }
            Statement::ShowRuns { pipeline, filter } => {
                write!(f, "SHOW RUNS")?;
                if let Some(p) = pipeline {
                    write!(f, " FOR {p}")?;
                }
                match filter {
                    Some(filter) => write!(f, " WHERE {filter}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Options as written: ` WITH (k = v, ...)`, or nothing when there are none.
struct Options<'a>(&'a [(String, String)]);

impl fmt::Display for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_options(f, self.0)
    }
}

/// ` WITH (k = v, ...)`, or nothing when there are no options.
fn write_options(f: &mut fmt::Formatter<'_>, options: &[(String, String)]) -> fmt::Result {
    if options.is_empty() {
        return Ok(());
    }
    // Values read back as written: numbers and words bare, anything else quoted.
    let plain = |v: &str| {
        !v.is_empty()
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !v.starts_with(|c: char| c.is_ascii_digit() && v.chars().any(|c| c.is_ascii_alphabetic()))
    };
    let value = |v: &str| if plain(v) { v.to_string() } else { format!("'{}'", v.replace('\'', "''")) };
    let options: Vec<String> = options.iter().map(|(k, v)| format!("{k} = {}", value(v))).collect();
    write!(f, " WITH ({})", options.join(", "))
}

/// Parses SQL text into [`Located`] statements.
pub struct SluiceParser<'a> {
    df: DFParser<'a>,
    sql: &'a str,
    /// Just past the last character: where "found: EOF" errors point.
    end: Location,
}

static DIALECT: GenericDialect = GenericDialect {};

fn is_word(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.keyword == keyword)
}

/// Parses every statement in `sql` (separated by `;`).
pub fn parse(sql: &str) -> Result<Vec<Located>, ParseError> {
    SluiceParser::new(sql)?.parse_statements()
}

/// True when `sql` holds at least one complete statement and nothing after its last `;`
/// but whitespace and comments, and every `BEGIN` (or `CASE`) has its `END`: what the REPL uses
/// to decide whether to read another line.
pub fn is_complete(sql: &str) -> bool {
    use datafusion::sql::sqlparser::tokenizer::{Tokenizer, Whitespace};
    let Ok(tokens) = Tokenizer::new(&DIALECT, sql).tokenize() else {
        // An unterminated string or comment: keep reading.
        return false;
    };
    let significant = tokens.iter().rev().find(|t| {
        !matches!(
            t,
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
                | Token::Whitespace(Whitespace::SingleLineComment { .. })
                | Token::Whitespace(Whitespace::MultiLineComment(_))
        )
    });
    let opened = tokens.iter().filter(|t| is_keyword(t, Keyword::BEGIN) || is_keyword(t, Keyword::CASE)).count();
    let closed = tokens.iter().filter(|t| is_keyword(t, Keyword::END)).count();
    matches!(significant, Some(Token::SemiColon)) && closed >= opened
}

impl<'a> SluiceParser<'a> {
    /// A parser over `sql` with DataFusion's default (generic) dialect.
    pub fn new(sql: &'a str) -> Result<Self, ParseError> {
        let df = DFParserBuilder::new(sql).with_dialect(&DIALECT).build().map_err(|e| match e {
            // A tokenizer error (an unterminated string or comment) names its own position.
            datafusion::error::DataFusionError::SQL(e, _) => {
                ParseError::from_parser(*e, Location { line: 1, column: 1 })
            }
            other => ParseError::at(Location { line: 1, column: 1 }, other.to_string()),
        })?;
        let line = sql.lines().count().max(1);
        let column = if sql.ends_with('\n') { 1 } else { sql.lines().last().map_or(1, |l| l.chars().count() + 1) };
        let end = Location { line: (line + usize::from(sql.ends_with('\n'))) as u64, column: column as u64 };
        Ok(Self { df, sql, end })
    }

    /// Parses all statements; empty statements (`;;`) are skipped.
    pub fn parse_statements(&mut self) -> Result<Vec<Located>, ParseError> {
        self.parse_all().map_err(|mut e| {
            // The end-of-input token has no position of its own.
            if e.line == 0 {
                (e.line, e.column) = (self.end.line, self.end.column);
            }
            e
        })
    }

    fn parse_all(&mut self) -> Result<Vec<Located>, ParseError> {
        let mut statements = Vec::new();
        loop {
            while self.df.parser.consume_token(&Token::SemiColon) {}
            let start = self.df.parser.peek_token_ref().clone();
            if start.token == Token::EOF {
                return Ok(statements);
            }
            let statement = self.parse_statement()?;
            let next = self.df.parser.peek_token_ref().clone();
            let end = if next.token == Token::EOF { self.sql.len() } else { byte_offset(self.sql, next.span.start) };
            let sql = self.sql[byte_offset(self.sql, start.span.start)..end].trim().to_string();
            statements.push(Located { statement, sql, line: start.span.start.line, column: start.span.start.column });
            if next.token != Token::EOF && next.token != Token::SemiColon {
                return Err(ParseError::at(
                    next.span.start,
                    format!("expected end of statement, found: {}", next.token),
                ));
            }
        }
    }

    fn here(&self) -> Location {
        self.df.parser.peek_token_ref().span.start
    }

    fn wrap<T>(&self, result: Result<T, ParserError>) -> Result<T, ParseError> {
        let here = self.here();
        result.map_err(|e| ParseError::from_parser(e, here))
    }

    /// Parses one statement at the current position.
    pub fn parse_statement(&mut self) -> Result<Statement, ParseError> {
        let p = &self.df.parser;
        let t0 = p.peek_nth_token_ref(0).token.clone();
        let t1 = p.peek_nth_token_ref(1).token.clone();
        let t2 = p.peek_nth_token_ref(2).token.clone();
        let t3 = p.peek_nth_token_ref(3).token.clone();

        if is_keyword(&t0, Keyword::CREATE)
            && (is_word(&t1, "PIPELINE")
                || (is_keyword(&t1, Keyword::OR) && is_keyword(&t2, Keyword::REPLACE) && is_word(&t3, "PIPELINE")))
        {
            return self.parse_create_pipeline();
        }
        if is_keyword(&t0, Keyword::CREATE)
            && (is_keyword(&t1, Keyword::TABLE)
                || (is_keyword(&t1, Keyword::OR)
                    && is_keyword(&t2, Keyword::REPLACE)
                    && is_keyword(&t3, Keyword::TABLE)))
            && let Some(statement) = self.parse_partitioned_table()?
        {
            return Ok(statement);
        }
        if is_keyword(&t0, Keyword::INSERT)
            && let Some(statement) = self.parse_insert_with()?
        {
            return Ok(statement);
        }
        if is_keyword(&t0, Keyword::ALTER)
            && is_keyword(&t1, Keyword::TABLE)
            && let Some(statement) = self.parse_alter_table_expectation()?
        {
            return Ok(statement);
        }
        if is_keyword(&t0, Keyword::ALTER) && is_word(&t1, "PIPELINE") {
            return self.parse_alter_pipeline();
        }
        if is_word(&t0, "RUN") && is_word(&t1, "PIPELINE") {
            self.skip(2);
            return Ok(Statement::RunPipeline { name: self.parse_name()? });
        }
        if is_keyword(&t0, Keyword::EXPLAIN) && is_word(&t1, "RUN") && is_word(&t2, "PIPELINE") {
            self.skip(3);
            return Ok(Statement::ExplainPipeline { name: self.parse_name()? });
        }
        if is_keyword(&t0, Keyword::EXPLAIN) && is_word(&t1, "PIPELINE") {
            self.skip(2);
            return Ok(Statement::ExplainPipeline { name: self.parse_name()? });
        }
        if is_word(&t0, "CANCEL") && is_word(&t1, "RUN") {
            self.skip(2);
            let parsed = self.df.parser.parse_literal_string();
            return Ok(Statement::CancelRun { run_id: self.wrap(parsed)? });
        }
        if is_word(&t0, "RETRY") && is_word(&t1, "RUN") {
            self.skip(2);
            let parsed = self.df.parser.parse_literal_string();
            return Ok(Statement::RetryRun { run_id: self.wrap(parsed)? });
        }
        if is_keyword(&t0, Keyword::SHOW) && is_word(&t1, "PIPELINES") {
            self.skip(2);
            return Ok(Statement::ShowPipelines);
        }
        if is_keyword(&t0, Keyword::SHOW) && is_word(&t1, "CATALOGS") {
            self.skip(2);
            return Ok(Statement::ShowCatalogs);
        }
        if is_keyword(&t0, Keyword::SHOW) && is_word(&t1, "CLUSTER") {
            self.skip(2);
            return Ok(Statement::ShowCluster);
        }
        if is_keyword(&t0, Keyword::SHOW) && is_word(&t1, "RUNS") {
            self.skip(2);
            let pipeline = if self.df.parser.parse_keyword(Keyword::FOR) { Some(self.parse_name()?) } else { None };
            let filter = match self.df.parser.parse_keyword(Keyword::WHERE) {
                true => {
                    let parsed = self.df.parser.parse_expr();
                    Some(Box::new(self.wrap(parsed)?))
                }
                false => None,
            };
            return Ok(Statement::ShowRuns { pipeline, filter });
        }
        if (is_keyword(&t0, Keyword::DESCRIBE) || is_keyword(&t0, Keyword::DESC)) && is_word(&t1, "PIPELINE") {
            self.skip(2);
            return Ok(Statement::DescribePipeline { name: self.parse_name()? });
        }
        if is_keyword(&t0, Keyword::DROP) && is_word(&t1, "PIPELINE") {
            self.skip(2);
            let if_exists = self.df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            return Ok(Statement::DropPipeline { name: self.parse_name()?, if_exists });
        }
        let here = self.here();
        let statement = self.df.parse_statement().map_err(|e| match e {
            datafusion::error::DataFusionError::SQL(e, _) => ParseError::from_parser(*e, here),
            other => ParseError::at(here, other.to_string()),
        })?;
        Ok(Statement::DataFusion(Box::new(statement)))
    }

    fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.df.parser.next_token();
        }
    }

    /// A pipeline name: one identifier, case-folded like DataFusion folds unquoted names.
    fn parse_name(&mut self) -> Result<String, ParseError> {
        let here = self.here();
        let parsed = self.df.parser.parse_object_name(false);
        let name: ObjectName = self.wrap(parsed)?;
        match name.0.as_slice() {
            [part] => {
                let ident = part.as_ident().expect("object name parts are identifiers");
                Ok(if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() })
            }
            _ => Err(ParseError::at(here, format!("a pipeline name is a single identifier, found: {name}"))),
        }
    }

    fn parse_create_pipeline(&mut self) -> Result<Statement, ParseError> {
        self.skip(1); // CREATE
        let or_replace = self.df.parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        self.skip(1); // PIPELINE
        let if_not_exists = self.df.parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = self.parse_name()?;
        let options = self.parse_with_options()?;
        let schedule = self.parse_schedule_clause()?;
        let parsed = self.df.parser.expect_keyword(Keyword::AS);
        self.wrap(parsed)?;
        if is_keyword(&self.df.parser.peek_token_ref().token, Keyword::BEGIN) {
            let body = PipelineBody::Steps(self.parse_steps()?);
            return Ok(Statement::CreatePipeline(CreatePipeline {
                name,
                or_replace,
                if_not_exists,
                options,
                schedule,
                body,
            }));
        }
        let body_at = self.here();
        let (body, expectations) = match self.parse_insert_with()? {
            Some(Statement::InsertWith { options, .. }) if !options.is_empty() => {
                return Err(ParseError::at(
                    body_at,
                    "a pipeline's options go in CREATE PIPELINE name WITH (...), not on its INSERT",
                ));
            }
            Some(Statement::InsertWith { insert, expectations, .. }) => match *insert {
                Statement::DataFusion(df) => match *df {
                    DFStatement::Statement(body) => (*body, expectations),
                    other => return Err(ParseError::at(body_at, format!("not an INSERT: {other}"))),
                },
                other => return Err(ParseError::at(body_at, format!("not an INSERT: {other}"))),
            },
            _ => {
                let parsed = self.df.parser.parse_statement();
                (self.wrap(parsed)?, Vec::new())
            }
        };
        if !matches!(body, SqlStatement::Insert(_)) {
            return Err(ParseError::at(
                body_at,
                format!(
                    "the body of a pipeline must be INSERT INTO <table> SELECT ... or BEGIN <step>; ... END, found: {body}"
                ),
            ));
        }
        let body = PipelineBody::Insert(Box::new(body), expectations);
        Ok(Statement::CreatePipeline(CreatePipeline { name, or_replace, if_not_exists, options, schedule, body }))
    }

    /// `[WITH (key = value, ...)]`: keys lower-cased, each given once.
    fn parse_with_options(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        self.parse_keyword_options(Keyword::WITH)
    }

    /// `[<keyword> (key = value, ...)]`: keys lower-cased, each given once.
    fn parse_keyword_options(&mut self, keyword: Keyword) -> Result<Vec<(String, String)>, ParseError> {
        let options_at = self.here();
        let parsed = self.df.parser.parse_options(keyword);
        let options = self.wrap(parsed)?;
        key_values(options, options_at, keyword)
    }
}

impl SluiceParser<'_> {
    /// A `CREATE TABLE` with a `PARTITIONED BY (...)` clause at its top level: the clause is lifted
    /// out of the statement's tokens, the rest parsed by sqlparser. `None` when there is no clause.
    fn parse_partitioned_table(&mut self) -> Result<Option<Statement>, ParseError> {
        let p = &self.df.parser;
        let mut tokens: Vec<TokenWithSpan> = Vec::new();
        let (mut depth, mut clause) = (0usize, None);
        loop {
            let token = p.peek_nth_token_ref(tokens.len()).clone();
            match token.token {
                Token::EOF => break,
                Token::SemiColon if depth == 0 => break,
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth == 0
                && clause.is_none()
                && is_word(&token.token, "PARTITIONED")
                && matches!(&p.peek_nth_token_ref(tokens.len() + 1).token, Token::Word(w) if w.keyword == Keyword::BY)
            {
                clause = Some(tokens.len());
            }
            tokens.push(token);
        }
        let Some(start) = clause else { return Ok(None) };
        // PARTITIONED BY ( fields ): find the closing parenthesis of the field list.
        let open = start + 2;
        if !matches!(tokens.get(open).map(|t| &t.token), Some(Token::LParen)) {
            let at = tokens.get(open).map_or(self.here(), |t| t.span.start);
            return Err(ParseError::at(at, "expected ( after PARTITIONED BY"));
        }
        let close = closing_paren(&tokens, open)
            .ok_or_else(|| ParseError::at(tokens[open].span.start, "unclosed ( after PARTITIONED BY"))?;
        let partition_by = parse_partition_fields(&tokens[open + 1..close], tokens[open].span.start)?;

        let create = self.parse_lifted(&tokens, std::slice::from_ref(&(start..close + 1)))?;
        Ok(Some(Statement::CreatePartitionedTable { create: Box::new(create), partition_by }))
    }

    /// The statement whose `tokens` (the rest of the statement, all peeked) are parsed by
    /// sqlparser without those in `lifted` (a clause of ours); the tokens are consumed.
    fn parse_lifted(
        &mut self,
        tokens: &[TokenWithSpan],
        lifted: &[std::ops::Range<usize>],
    ) -> Result<SqlStatement, ParseError> {
        let eof = TokenWithSpan::wrap(Token::EOF);
        let kept = |i: &usize| !lifted.iter().any(|range| range.contains(i));
        let rest: Vec<TokenWithSpan> =
            (0..tokens.len()).filter(kept).map(|i| tokens[i].clone()).chain(std::iter::once(eof)).collect();
        let here = self.here();
        let statement = Parser::new(&DIALECT)
            .with_tokens_with_locations(rest)
            .parse_statement()
            .map_err(|e| ParseError::from_parser(e, here))?;
        self.skip(tokens.len());
        Ok(statement)
    }
}

/// The index of the `)` that closes the `(` at `tokens[open]`, if there is one.
fn closing_paren(tokens: &[TokenWithSpan], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    (open..tokens.len()).find(|&i| {
        match tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth == 0
    })
}

/// The byte offset of a 1-based line and column (in characters) in `sql`.
fn byte_offset(sql: &str, at: Location) -> usize {
    let line_start: usize = sql.split_inclusive('\n').take(at.line.saturating_sub(1) as usize).map(str::len).sum();
    let column = sql[line_start..]
        .char_indices()
        .nth(at.column.saturating_sub(1) as usize)
        .map_or(sql.len() - line_start, |(i, _)| i);
    line_start + column
}

/// `field, ...` where a field is `column` or `transform(args)`; bucket and truncate take their
/// number before or after the column (`bucket(16, id)` as in Spark, `bucket(id, 16)` as in Trino).
fn parse_partition_fields(tokens: &[TokenWithSpan], at: Location) -> Result<Vec<PartitionField>, ParseError> {
    let mut fields = Vec::new();
    let mut i = 0;
    let word = |t: &TokenWithSpan| match &t.token {
        Token::Word(w) => Some(if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() }),
        _ => None,
    };
    while i < tokens.len() {
        let start = tokens[i].span.start;
        let name = word(&tokens[i]).ok_or_else(|| {
            ParseError::at(start, format!("expected a column or a transform, found: {}", tokens[i].token))
        })?;
        i += 1;
        let mut args: Vec<(Option<String>, Option<u32>)> = Vec::new();
        if matches!(tokens.get(i).map(|t| &t.token), Some(Token::LParen)) {
            i += 1;
            loop {
                let token = tokens.get(i).ok_or_else(|| ParseError::at(start, "unclosed ( in a partition field"))?;
                args.push(match &token.token {
                    Token::Number(n, _) => (
                        None,
                        Some(n.parse().map_err(|_| {
                            ParseError::at(token.span.start, format!("expected a positive integer, found: {n}"))
                        })?),
                    ),
                    _ => (
                        Some(word(token).ok_or_else(|| {
                            ParseError::at(
                                token.span.start,
                                format!("expected a column or a number, found: {}", token.token),
                            )
                        })?),
                        None,
                    ),
                });
                i += 1;
                match tokens.get(i).map(|t| &t.token) {
                    Some(Token::Comma) => i += 1,
                    Some(Token::RParen) => {
                        i += 1;
                        break;
                    }
                    _ => {
                        return Err(ParseError::at(
                            tokens.get(i).map_or(start, |t| t.span.start),
                            "expected , or ) in a partition field",
                        ));
                    }
                }
            }
        }
        let column = args.iter().find_map(|(c, _)| c.clone());
        let number = args.iter().find_map(|(_, n)| *n);
        let field = match (name.as_str(), args.len(), column, number) {
            (_, 0, _, _) => PartitionField { column: name.clone(), transform: Transform::Identity },
            (transform, 1, Some(column), None) if !matches!(transform, "bucket" | "truncate") => {
                let transform = match transform {
                    "identity" => Transform::Identity,
                    "year" | "years" => Transform::Year,
                    "month" | "months" => Transform::Month,
                    "day" | "days" => Transform::Day,
                    "hour" | "hours" => Transform::Hour,
                    other => {
                        return Err(ParseError::at(
                            start,
                            format!(
                                "unknown partition transform `{other}` (identity, year, month, day, hour, bucket, truncate)"
                            ),
                        ));
                    }
                };
                PartitionField { column, transform }
            }
            ("bucket", 2, Some(column), Some(n)) if n > 0 => PartitionField { column, transform: Transform::Bucket(n) },
            ("truncate", 2, Some(column), Some(w)) if w > 0 => {
                PartitionField { column, transform: Transform::Truncate(w) }
            }
            (transform, _, _, _) => {
                return Err(ParseError::at(
                    start,
                    format!(
                        "bad arguments to partition transform `{transform}`: year/month/day/hour take a column, bucket(N, column) and truncate(W, column) a positive number and a column"
                    ),
                ));
            }
        };
        fields.push(field);
        match tokens.get(i).map(|t| &t.token) {
            None => break,
            Some(Token::Comma) => i += 1,
            Some(other) => {
                return Err(ParseError::at(
                    tokens[i].span.start,
                    format!("expected , between partition fields, found: {other}"),
                ));
            }
        }
    }
    if fields.is_empty() {
        return Err(ParseError::at(at, "PARTITIONED BY needs at least one field"));
    }
    Ok(fields)
}

/// `key = value` options (keys lower-cased, each given once) as pairs.
fn key_values(options: Vec<SqlOption>, at: Location, keyword: Keyword) -> Result<Vec<(String, String)>, ParseError> {
    let options = options
        .into_iter()
        .map(|option| match option {
            SqlOption::KeyValue { key, value } => Ok((key.value.to_lowercase(), option_value(&value))),
            other => Err(ParseError::at(at, format!("expected `key = value` in {keyword:?} (...), found: {other}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((key, _)) = options.iter().enumerate().find_map(|(i, o)| options[..i].iter().find(|p| p.0 == o.0)) {
        return Err(ParseError::at(at, format!("option `{key}` is given twice in {keyword:?} (...)")));
    }
    Ok(options)
}

/// An option value as text: string literals unquoted, anything else as written.
fn option_value(value: &Expr) -> String {
    match value {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_round_trip_through_display() {
        for sql in [
            "CREATE PIPELINE p WITH (shards = 4) AS INSERT INTO lake.s.t SELECT 1",
            "CREATE OR REPLACE PIPELINE IF NOT EXISTS p AS INSERT INTO lake.s.t SELECT a FROM b",
            "RUN PIPELINE p",
            "RETRY RUN '01a2-run'",
            "SHOW PIPELINES",
            "SHOW CATALOGS",
            "SHOW CLUSTER",
            "CREATE TABLE lake.s.t (id BIGINT, ts TIMESTAMP) PARTITIONED BY (day(ts), bucket(16, id), id)",
            "CREATE TABLE lake.s.t PARTITIONED BY (truncate(4, name)) AS SELECT 'abcdef' AS name",
            "DESCRIBE PIPELINE p",
            "DROP PIPELINE IF EXISTS p",
            "SHOW RUNS",
            "SHOW RUNS FOR p",
            "INSERT INTO lake.s.t WITH (bad_rows = fail) SELECT a FROM b",
            "INSERT INTO lake.s.t (CONSTRAINT pos EXPECT (a > 0) ON VIOLATION DROP ROW) WITH (schema_evolution = 'add_columns, widen_types') SELECT a FROM b",
            "INSERT INTO lake.s.t WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        ] {
            let parsed = parse(sql).unwrap();
            assert_eq!(parsed.len(), 1, "{sql}");
            let printed = parsed[0].statement.to_string();
            assert_eq!(printed, sql);
            assert_eq!(parse(&printed).unwrap()[0].statement, parsed[0].statement);
        }
    }

    #[test]
    fn a_repeated_pipeline_option_is_refused_not_overridden() {
        let err = parse("CREATE PIPELINE p WITH (shards = 2, SHARDS = 3) AS INSERT INTO t SELECT 1").unwrap_err();
        assert!(err.message.contains("option `shards` is given twice"), "{err}");
        assert_eq!((err.line, err.column), (1, 19), "{err}");
    }

    #[test]
    fn statements_keep_their_start_position_and_text() {
        let parsed = parse("SELECT 1;\n\n  SHOW PIPELINES;\nSELECT 'é', 2").unwrap();
        let positions: Vec<_> = parsed.iter().map(|s| (s.line, s.column)).collect();
        assert_eq!(positions, vec![(1, 1), (3, 3), (4, 1)]);
        let texts: Vec<_> = parsed.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(texts, ["SELECT 1", "SHOW PIPELINES", "SELECT 'é', 2"]);
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = parse("SELECT 1;\nSELEC 2;").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1), "{err}");
        let err = parse("CREATE PIPELINE p AS SELECT 1").unwrap_err();
        assert_eq!((err.line, err.column), (1, 22), "{err}");
        assert!(err.message.contains("INSERT INTO"), "{err}");
        let err = parse("SELECT 1;\nRUN PIPELINE").unwrap_err();
        assert_eq!((err.line, err.column), (2, 13), "{err}");
        let err = parse("RUN PIPELINE a.b").unwrap_err();
        assert!(err.message.contains("single identifier"), "{err}");
    }

    #[test]
    fn partition_clauses() {
        let fields = |sql: &str| match parse(sql).unwrap().remove(0).statement {
            Statement::CreatePartitionedTable { partition_by, .. } => partition_by,
            other => panic!("{other:?}"),
        };
        let parsed = fields("CREATE TABLE t (a INT, b DATE) PARTITIONED BY (a, days(b), bucket(b, 8), truncate(3, a))");
        assert_eq!(
            parsed.iter().map(|f| f.transform).collect::<Vec<_>>(),
            [Transform::Identity, Transform::Day, Transform::Bucket(8), Transform::Truncate(3)]
        );
        assert!(matches!(parse("CREATE TABLE t (a INT)").unwrap()[0].statement, Statement::DataFusion(_)));
        let err = parse("CREATE TABLE t (a INT) PARTITIONED BY (week(a))").unwrap_err();
        assert_eq!((err.line, err.column), (1, 40), "{err}");
        assert!(err.message.contains("unknown partition transform `week`"), "{err}");
        let err = parse("CREATE TABLE t (a INT) PARTITIONED BY (bucket(a))").unwrap_err();
        assert!(err.message.contains("bad arguments to partition transform `bucket`"), "{err}");
    }

    #[test]
    fn completeness_for_the_repl() {
        assert!(is_complete("SELECT 1;"));
        assert!(is_complete("SELECT 1; -- done\n"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete(""));
    }
}

//! The steps of a multi-step pipeline: `BEGIN [STEP name [DEPENDS ON (step, ...)] [WITH (...)] AS]
//! <statement>; ... END`, where a statement is an `INSERT`, a `CREATE TABLE ... AS`, a `COPY ...
//! TO` or a `RUN PIPELINE`.

use std::fmt;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{CreateTable, Statement as SqlStatement};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{ParseError, SluiceParser, Statement, is_keyword, is_word, write_options};

/// The body of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineBody {
    /// One `INSERT INTO <table> <query>` statement, with the expectations on its rows (`INSERT
    /// INTO t (CONSTRAINT ...) ...`).
    Insert(Box<SqlStatement>, Vec<super::Expectation>),
    /// `BEGIN <step>; <step>; ... END`: steps run as a dependency graph.
    Steps(Vec<PipelineStep>),
}

/// One step of a multi-step pipeline: `[STEP name [DEPENDS ON (step, ...)] [WITH (...)] AS]
/// <INSERT | CREATE TABLE ... AS | COPY ... TO | RUN PIPELINE>`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineStep {
    /// The name given with `STEP`; unnamed steps are named after their target.
    pub name: Option<String>,
    /// Steps named in `DEPENDS ON (...)`.
    pub depends_on: Vec<String>,
    /// `WITH (key = value)` options of the step, keys lower-cased.
    pub options: Vec<(String, String)>,
    /// The step's statement.
    pub statement: Box<Statement>,
    /// 1-based line where the step starts.
    pub line: u64,
    /// 1-based column where the step starts.
    pub column: u64,
}

impl fmt::Display for PipelineStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "STEP {name}")?;
            if !self.depends_on.is_empty() {
                write!(f, " DEPENDS ON ({})", self.depends_on.join(", "))?;
            }
            write_options(f, &self.options)?;
            write!(f, " AS ")?;
        }
        write!(f, "{}", self.statement)
    }
}

/// Whether `statement` may be a step: a write, an export, or another pipeline.
fn is_step(statement: &Statement) -> bool {
    match statement {
        Statement::DataFusion(statement) => match statement.as_ref() {
            DFStatement::Statement(s) => matches!(
                s.as_ref(),
                SqlStatement::Insert(_) | SqlStatement::CreateTable(CreateTable { query: Some(_), .. })
            ),
            DFStatement::CopyTo(_) => true,
            _ => false,
        },
        Statement::CreatePartitionedTable { create, .. } => {
            matches!(create.as_ref(), SqlStatement::CreateTable(CreateTable { query: Some(_), .. }))
        }
        Statement::RunPipeline { .. } | Statement::InsertWith { .. } => true,
        _ => false,
    }
}

impl SluiceParser<'_> {
    /// `BEGIN <step>; ... END` (at `BEGIN`).
    pub(super) fn parse_steps(&mut self) -> Result<Vec<PipelineStep>, ParseError> {
        let begin = self.here();
        self.skip(1); // BEGIN
        let mut steps = Vec::new();
        loop {
            while self.df.parser.consume_token(&Token::SemiColon) {}
            let start = self.df.parser.peek_token_ref().clone();
            if is_keyword(&start.token, Keyword::END) {
                self.skip(1);
                break;
            }
            if start.token == Token::EOF {
                return Err(ParseError::at(begin, "this BEGIN has no END: steps end with `; END`"));
            }
            steps.push(self.parse_step()?);
            let next = self.df.parser.peek_token_ref().clone();
            if next.token != Token::SemiColon && !is_keyword(&next.token, Keyword::END) {
                return Err(ParseError::at(
                    next.span.start,
                    format!("expected `;` or END after a step, found: {}", next.token),
                ));
            }
        }
        if steps.is_empty() {
            return Err(ParseError::at(begin, "a pipeline needs at least one step between BEGIN and END"));
        }
        Ok(steps)
    }

    fn parse_step(&mut self) -> Result<PipelineStep, ParseError> {
        let start = self.here();
        let (mut name, mut depends_on, mut options) = (None, Vec::new(), Vec::new());
        if is_word(&self.df.parser.peek_token_ref().token, "STEP") {
            self.skip(1);
            name = Some(self.parse_name()?);
            let p = &self.df.parser;
            if is_word(&p.peek_nth_token_ref(0).token, "DEPENDS")
                && is_keyword(&p.peek_nth_token_ref(1).token, Keyword::ON)
            {
                self.skip(2);
                let parsed = self.df.parser.expect_token(&Token::LParen);
                self.wrap(parsed)?;
                loop {
                    depends_on.push(self.parse_name()?);
                    if !self.df.parser.consume_token(&Token::Comma) {
                        break;
                    }
                }
                let parsed = self.df.parser.expect_token(&Token::RParen);
                self.wrap(parsed)?;
            }
            options = self.parse_with_options()?;
            let parsed = self.df.parser.expect_keyword(Keyword::AS);
            self.wrap(parsed)?;
        }
        let statement_at = self.here();
        let statement = self.parse_statement()?;
        if !is_step(&statement) {
            return Err(ParseError::at(
                statement_at,
                format!(
                    "a step is an INSERT, a CREATE TABLE ... AS, a COPY ... TO or a RUN PIPELINE, found: {statement}"
                ),
            ));
        }
        Ok(PipelineStep {
            name,
            depends_on,
            options,
            statement: Box::new(statement),
            line: start.line,
            column: start.column,
        })
    }
}

//! Expectations, as in Databricks DLT: `INSERT INTO t (CONSTRAINT name EXPECT (condition)
//! [ON VIOLATION {WARN | DROP ROW | QUARANTINE | FAIL}], ...) SELECT ...`. The constraint list is
//! lifted out of the statement's tokens (where a column list would stand) and the rest parsed by
//! sqlparser; each condition is kept as SQL text, planned against the rows when the write runs.

use std::fmt;

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use super::{ParseError, SluiceParser, Statement, closing_paren, is_keyword, is_word};

/// What a row that breaks an expectation does to the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Violation {
    /// Counted only; the row is written (the default).
    Warn,
    /// Counted and not written.
    DropRow,
    /// Counted, not written, and kept in the quarantine table.
    Quarantine,
    /// Fails the run (nothing committed), with the count and sample rows.
    Fail,
}

impl Violation {
    /// As written after `ON VIOLATION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Warn => "WARN",
            Violation::DropRow => "DROP ROW",
            Violation::Quarantine => "QUARANTINE",
            Violation::Fail => "FAIL",
        }
    }

    /// Reads `WARN`, `DROP ROW`, `QUARANTINE` or `FAIL` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_uppercase().split_whitespace().collect::<Vec<_>>().join(" ").as_str() {
            "WARN" => Some(Violation::Warn),
            "DROP ROW" => Some(Violation::DropRow),
            "QUARANTINE" => Some(Violation::Quarantine),
            "FAIL" => Some(Violation::Fail),
            _ => None,
        }
    }
}

/// `CONSTRAINT name EXPECT (condition) [ON VIOLATION action]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expectation {
    /// The constraint's name.
    pub name: String,
    /// The condition, as SQL over the written rows' columns (NULL counts as met, as in CHECK).
    pub condition: String,
    /// What a violating row does.
    pub action: Violation,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CONSTRAINT {} EXPECT ({}) ON VIOLATION {}", self.name, self.condition, self.action.as_str())
    }
}

/// ` (CONSTRAINT ..., ...)`, or nothing when there are no expectations.
pub(super) fn constraint_list(expectations: &[Expectation]) -> String {
    if expectations.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = expectations.iter().map(ToString::to_string).collect();
    format!(" ({})", listed.join(", "))
}

/// `insert` (an `INSERT` statement's SQL) with `clauses` (a constraint list, options) after its
/// table name.
pub(super) fn after_table(insert: &Statement, clauses: &str) -> String {
    let text = insert.to_string();
    let table = match insert {
        Statement::DataFusion(df) => match df.as_ref() {
            datafusion::sql::parser::Statement::Statement(sql) => match sql.as_ref() {
                datafusion::sql::sqlparser::ast::Statement::Insert(insert) => Some(insert.table.to_string()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    match table.and_then(|t| text.find(&t).map(|at| at + t.len())) {
        Some(after) => format!("{}{clauses}{}", &text[..after], &text[after..]),
        None => text,
    }
}

/// What `ALTER TABLE t ... CONSTRAINT` changes of a table's own expectations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableExpectation {
    /// `ADD CONSTRAINT name EXPECT (condition) [ON VIOLATION action]`.
    Add(Expectation),
    /// `DROP CONSTRAINT [IF EXISTS] name`.
    Drop {
        /// The constraint.
        name: String,
        /// Do not fail when there is none.
        if_exists: bool,
    },
}

impl fmt::Display for TableExpectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableExpectation::Add(expectation) => write!(f, "ADD {expectation}"),
            TableExpectation::Drop { name, if_exists } => {
                write!(f, "DROP CONSTRAINT {}{name}", if *if_exists { "IF EXISTS " } else { "" })
            }
        }
    }
}

impl SluiceParser<'_> {
    /// `ALTER TABLE name ADD CONSTRAINT c EXPECT (...) ...` or `ALTER TABLE name DROP CONSTRAINT
    /// c`: `None` for any other `ALTER TABLE` (sqlparser takes it).
    pub(super) fn parse_alter_table_expectation(&mut self) -> Result<Option<Statement>, ParseError> {
        let p = &self.df.parser;
        // ALTER TABLE <name parts> ADD CONSTRAINT <c> EXPECT | DROP CONSTRAINT
        let mut k = 2;
        while matches!(p.peek_nth_token_ref(k).token, Token::Word(_) | Token::Period) {
            if is_keyword(&p.peek_nth_token_ref(k).token, Keyword::ADD)
                || is_keyword(&p.peek_nth_token_ref(k).token, Keyword::DROP)
            {
                break;
            }
            k += 1;
        }
        let verb = p.peek_nth_token_ref(k).token.clone();
        let constraint = is_word(&p.peek_nth_token_ref(k + 1).token, "CONSTRAINT");
        let add =
            is_keyword(&verb, Keyword::ADD) && constraint && is_word(&p.peek_nth_token_ref(k + 3).token, "EXPECT");
        let drop = is_keyword(&verb, Keyword::DROP) && constraint;
        if !add && !drop {
            return Ok(None);
        }
        self.skip(2);
        let parsed = self.df.parser.parse_object_name(false);
        let table = self.wrap(parsed)?;
        self.skip(1); // ADD or DROP
        if drop {
            self.skip(1); // CONSTRAINT
            let if_exists = self.df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let parsed = self.df.parser.parse_identifier();
            let ident = self.wrap(parsed)?;
            let name = if ident.quote_style.is_some() { ident.value } else { ident.value.to_lowercase() };
            return Ok(Some(Statement::AlterTableExpectation {
                table,
                change: TableExpectation::Drop { name, if_exists },
            }));
        }
        let mut tokens: Vec<TokenWithSpan> = Vec::new();
        loop {
            let token = self.df.parser.peek_nth_token_ref(tokens.len()).clone();
            if matches!(token.token, Token::EOF | Token::SemiColon) {
                break;
            }
            tokens.push(token);
        }
        let at = tokens.first().map_or(self.here(), |t| t.span.start);
        let mut expectations = parse_expectations(&tokens, at, self.sql)?;
        self.skip(tokens.len());
        match (expectations.pop(), expectations.is_empty()) {
            (Some(expectation), true) => {
                Ok(Some(Statement::AlterTableExpectation { table, change: TableExpectation::Add(expectation) }))
            }
            _ => Err(ParseError::at(at, "ALTER TABLE ... ADD CONSTRAINT takes one constraint")),
        }
    }

    /// An `INSERT INTO <table> (CONSTRAINT ...) ...` or `INSERT INTO <table> ... WITH (key =
    /// value, ...) <query>`: `None` when the INSERT has neither (sqlparser takes it as it is). A
    /// `WITH (` is never a common table expression, which names itself before its `(`.
    pub(super) fn parse_insert_with(&mut self) -> Result<Option<Statement>, ParseError> {
        let p = &self.df.parser;
        let mut tokens: Vec<TokenWithSpan> = Vec::new();
        let (mut constraints, mut with, mut depth) = (None, None, 0usize);
        loop {
            let token = p.peek_nth_token_ref(tokens.len()).clone();
            if matches!(token.token, Token::EOF | Token::SemiColon) {
                break;
            }
            let next = &p.peek_nth_token_ref(tokens.len() + 1).token;
            if constraints.is_none() && matches!(token.token, Token::LParen) && is_word(next, "CONSTRAINT") {
                constraints = Some(tokens.len());
            }
            if with.is_none() && depth == 0 && is_keyword(&token.token, Keyword::WITH) && matches!(next, Token::LParen)
            {
                with = Some(tokens.len());
            }
            match token.token {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            tokens.push(token);
        }
        if constraints.is_none() && with.is_none() {
            return Ok(None);
        }
        let mut lifted = Vec::new();
        let mut expectations = Vec::new();
        if let Some(open) = constraints {
            let close = closing_paren(&tokens, open)
                .ok_or_else(|| ParseError::at(tokens[open].span.start, "unclosed ( of the constraint list"))?;
            expectations = parse_expectations(&tokens[open + 1..close], tokens[open].span.start, self.sql)?;
            lifted.push(open..close + 1);
        }
        let mut options = Vec::new();
        if let Some(at) = with {
            let close = closing_paren(&tokens, at + 1)
                .ok_or_else(|| ParseError::at(tokens[at + 1].span.start, "unclosed ( of the options"))?;
            let clause = tokens[at..=close].iter().cloned().chain(std::iter::once(TokenWithSpan::wrap(Token::EOF)));
            let parsed = datafusion::sql::sqlparser::parser::Parser::new(&super::DIALECT)
                .with_tokens_with_locations(clause.collect())
                .parse_options(Keyword::WITH)
                .map_err(|e| ParseError::from_parser(e, tokens[at].span.start))?;
            options = super::key_values(parsed, tokens[at].span.start, Keyword::WITH)?;
            lifted.push(at..close + 1);
        }
        let insert = self.parse_lifted(&tokens, &lifted)?;
        let insert = Statement::DataFusion(Box::new(datafusion::sql::parser::Statement::Statement(Box::new(insert))));
        Ok(Some(Statement::InsertWith { insert: Box::new(insert), expectations, options }))
    }
}

/// `CONSTRAINT name EXPECT (condition) [ON VIOLATION action], ...`.
fn parse_expectations(tokens: &[TokenWithSpan], at: Location, sql: &str) -> Result<Vec<Expectation>, ParseError> {
    let mut expectations: Vec<Expectation> = Vec::new();
    let mut i = 0;
    let expected = |i: usize, what: &str| {
        let at = tokens.get(i).map_or(at, |t| t.span.start);
        let found = tokens.get(i).map_or("the end of the list".to_string(), |t| t.token.to_string());
        ParseError::at(at, format!("expected {what} in the constraint list, found: {found}"))
    };
    while i < tokens.len() {
        if !is_word(&tokens[i].token, "CONSTRAINT") {
            return Err(expected(i, "CONSTRAINT name EXPECT (condition)"));
        }
        let name = match tokens.get(i + 1).map(|t| &t.token) {
            Some(Token::Word(w)) => {
                if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_lowercase()
                }
            }
            _ => return Err(expected(i + 1, "a constraint name")),
        };
        if expectations.iter().any(|e| e.name == name) {
            return Err(ParseError::at(tokens[i + 1].span.start, format!("constraint `{name}` is named twice")));
        }
        if !tokens.get(i + 2).is_some_and(|t| is_word(&t.token, "EXPECT")) {
            return Err(expected(i + 2, "EXPECT"));
        }
        if !matches!(tokens.get(i + 3).map(|t| &t.token), Some(Token::LParen)) {
            return Err(expected(i + 3, "( condition )"));
        }
        let open = i + 3;
        let close = closing_paren(tokens, open).ok_or_else(|| expected(tokens.len(), ")"))?;
        if close == open + 1 {
            return Err(expected(close, "a condition"));
        }
        // The condition as the user wrote it.
        let from = super::byte_offset(sql, tokens[open + 1].span.start);
        let to = super::byte_offset(sql, tokens[close].span.start);
        let condition = sql[from..to].trim().to_string();
        i = close + 1;
        let mut action = Violation::Warn;
        if tokens.get(i).is_some_and(|t| is_keyword(&t.token, Keyword::ON)) {
            if !tokens.get(i + 1).is_some_and(|t| is_word(&t.token, "VIOLATION")) {
                return Err(expected(i + 1, "VIOLATION"));
            }
            let words: Vec<String> = tokens[i + 2..]
                .iter()
                .take_while(|t| !matches!(t.token, Token::Comma))
                .map(|t| t.token.to_string())
                .collect();
            action = Violation::parse(&words.join(" "))
                .ok_or_else(|| expected(i + 2, "WARN, DROP ROW, QUARANTINE or FAIL after ON VIOLATION"))?;
            i += 2 + words.len();
        }
        expectations.push(Expectation { name, condition, action });
        match tokens.get(i).map(|t| &t.token) {
            None => break,
            Some(Token::Comma) => i += 1,
            Some(_) => return Err(expected(i, ", or )")),
        }
    }
    Ok(expectations)
}

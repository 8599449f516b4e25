//! Schedules in SQL: `CREATE PIPELINE ... [SCHEDULE '<cron>' [TIMEZONE '<zone>']] AS ...`, and
//! `ALTER PIPELINE name SET SCHEDULE '<cron>' [TIMEZONE '<zone>'] | DROP SCHEDULE | PAUSE |
//! RESUME | SET (key = value, ...)`. The expression and the zone are checked here, so a bad
//! field is refused at its own line and column.

use std::fmt;

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::Location;

use super::{ParseError, SluiceParser, Statement, is_keyword, is_word, write_options};
use crate::scheduler::{Schedule, ScheduleError};

/// `SCHEDULE '<cron>' [TIMEZONE '<zone>']`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleClause {
    /// The cron expression (5 fields, or `@hourly`, `@daily`, ...).
    pub cron: String,
    /// The IANA time zone, when given (default UTC).
    pub timezone: Option<String>,
}

impl ScheduleClause {
    /// The schedule it describes (it was checked when parsed).
    pub fn schedule(&self) -> Result<Schedule, ScheduleError> {
        Schedule::parse(&self.cron, self.timezone.as_deref())
    }
}

impl fmt::Display for ScheduleClause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SCHEDULE '{}'", self.cron.replace('\'', "''"))?;
        match &self.timezone {
            Some(zone) => write!(f, " TIMEZONE '{}'", zone.replace('\'', "''")),
            None => Ok(()),
        }
    }
}

/// What `ALTER PIPELINE` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterPipeline {
    /// `SET SCHEDULE '<cron>' [TIMEZONE '<zone>']`.
    SetSchedule(ScheduleClause),
    /// `DROP SCHEDULE`.
    DropSchedule,
    /// `PAUSE`: the scheduler runs it no more until `RESUME`.
    Pause,
    /// `RESUME`.
    Resume,
    /// `SET (key = value, ...)`: options merged into the pipeline's own.
    SetOptions(Vec<(String, String)>),
}

impl fmt::Display for AlterPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlterPipeline::SetSchedule(clause) => write!(f, "SET {clause}"),
            AlterPipeline::DropSchedule => write!(f, "DROP SCHEDULE"),
            AlterPipeline::Pause => write!(f, "PAUSE"),
            AlterPipeline::Resume => write!(f, "RESUME"),
            AlterPipeline::SetOptions(options) => {
                write!(f, "SET")?;
                write_options(f, options)
            }
        }
    }
}

impl SluiceParser<'_> {
    /// `[SCHEDULE '<cron>' [TIMEZONE '<zone>']]`.
    pub(super) fn parse_schedule_clause(&mut self) -> Result<Option<ScheduleClause>, ParseError> {
        if !is_word(&self.df.parser.peek_token_ref().token, "SCHEDULE") {
            return Ok(None);
        }
        self.skip(1);
        let (cron_at, cron) = self.parse_located_string()?;
        let timezone = match is_word(&self.df.parser.peek_token_ref().token, "TIMEZONE") {
            true => {
                self.skip(1);
                Some(self.parse_located_string()?)
            }
            false => None,
        };
        let clause = ScheduleClause { cron, timezone: timezone.as_ref().map(|(_, zone)| zone.clone()) };
        if let Err(error) = clause.schedule() {
            // The bad field's own column, inside the quotes; the zone's literal for a zone.
            let at = match (&error, &timezone) {
                (ScheduleError::TimeZone { .. }, Some((zone_at, _))) => *zone_at,
                _ => Location { line: cron_at.line, column: cron_at.column + error.position().unwrap_or(0) as u64 },
            };
            return Err(ParseError::at(at, error.to_string()));
        }
        Ok(Some(clause))
    }

    /// `ALTER PIPELINE name <change>` (the two first words already seen).
    pub(super) fn parse_alter_pipeline(&mut self) -> Result<Statement, ParseError> {
        self.skip(2);
        let name = self.parse_name()?;
        let here = self.here();
        let token = self.df.parser.peek_token_ref().token.clone();
        let change = if is_word(&token, "PAUSE") {
            self.skip(1);
            AlterPipeline::Pause
        } else if is_word(&token, "RESUME") {
            self.skip(1);
            AlterPipeline::Resume
        } else if self.df.parser.parse_keywords(&[Keyword::DROP]) {
            if !is_word(&self.df.parser.peek_token_ref().token, "SCHEDULE") {
                return Err(ParseError::at(self.here(), "expected SCHEDULE after ALTER PIPELINE ... DROP"));
            }
            self.skip(1);
            AlterPipeline::DropSchedule
        } else if is_keyword(&token, Keyword::SET) && is_word(&self.df.parser.peek_nth_token_ref(1).token, "SCHEDULE") {
            self.skip(1);
            AlterPipeline::SetSchedule(self.parse_schedule_clause()?.expect("SCHEDULE is next"))
        } else if is_keyword(&token, Keyword::SET) {
            AlterPipeline::SetOptions(self.parse_keyword_options(Keyword::SET)?)
        } else {
            return Err(ParseError::at(
                here,
                format!(
                    "expected SET SCHEDULE '<cron>', DROP SCHEDULE, PAUSE, RESUME or SET (key = value, ...) after ALTER PIPELINE {name}, found: {token}"
                ),
            ));
        };
        Ok(Statement::AlterPipeline { name, change })
    }

    /// A string literal and where it starts.
    fn parse_located_string(&mut self) -> Result<(Location, String), ParseError> {
        let at = self.here();
        let parsed = self.df.parser.parse_literal_string();
        Ok((at, self.wrap(parsed)?))
    }
}

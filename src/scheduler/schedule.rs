//! A pipeline's schedule: a 5-field cron expression (minute hour day-of-month month
//! day-of-week, with lists, ranges, steps and names) or `@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`, evaluated by croner in a named time zone (default UTC). A bad
//! expression is refused naming the field, its value and where it starts in the expression.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not five fields (nor a macro).
    #[error(
        "schedule '{cron}': expected 5 fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly; found {found} field(s)"
    )]
    FieldCount {
        /// The expression.
        cron: String,
        /// How many fields it has.
        found: usize,
    },
    /// One field cannot be read.
    #[error("schedule '{cron}': bad {field} field `{value}` at character {position}: {reason}")]
    BadField {
        /// The expression.
        cron: String,
        /// `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The field as written.
        value: String,
        /// 1-based character where the field starts in the expression.
        position: usize,
        /// croner's reason.
        reason: String,
    },
    /// croner refuses the expression as a whole.
    #[error("schedule '{cron}': {reason}")]
    Invalid {
        /// The expression.
        cron: String,
        /// croner's reason.
        reason: String,
    },
    /// An unknown macro.
    #[error("schedule '{cron}': unknown macro (known: @hourly, @daily, @weekly, @monthly, @yearly)")]
    BadMacro {
        /// The expression.
        cron: String,
    },
    /// An unknown time zone.
    #[error("unknown time zone '{timezone}' (an IANA name such as 'Europe/Paris' or 'UTC'){}", .suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    TimeZone {
        /// The zone as written.
        timezone: String,
        /// The closest known zone.
        suggestion: Option<String>,
    },
}

impl ScheduleError {
    /// 1-based character, in the expression, where the error is (the bad field's start).
    pub fn position(&self) -> Option<usize> {
        match self {
            ScheduleError::BadField { position, .. } => Some(*position),
            _ => None,
        }
    }
}

const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const MACROS: [&str; 6] = ["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually"];

/// A checked schedule: when a pipeline is due.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: String,
    timezone: Tz,
    parsed: Cron,
}

impl Schedule {
    /// Reads `cron` in `timezone` (an IANA name; `None`: UTC).
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let timezone = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| ScheduleError::TimeZone {
                timezone: name.to_string(),
                suggestion: crate::suggest::closest(name, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()))
                    .map(str::to_string),
            })?,
        };
        let text = cron.trim();
        if text.starts_with('@') {
            if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(text)) {
                return Err(ScheduleError::BadMacro { cron: cron.to_string() });
            }
        } else {
            let fields: Vec<(usize, &str)> = fields_with_positions(cron);
            if fields.len() != FIELDS.len() {
                return Err(ScheduleError::FieldCount { cron: cron.to_string(), found: fields.len() });
            }
            // croner says what is wrong, not where: try each field alone.
            for (i, (position, value)) in fields.iter().enumerate() {
                let alone: Vec<&str> = (0..FIELDS.len()).map(|j| if i == j { *value } else { "*" }).collect();
                if let Err(e) = Cron::from_str(&alone.join(" ")) {
                    return Err(ScheduleError::BadField {
                        cron: cron.to_string(),
                        field: FIELDS[i],
                        value: value.to_string(),
                        position: *position,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let parsed = Cron::from_str(text)
            .map_err(|e| ScheduleError::Invalid { cron: cron.to_string(), reason: e.to_string() })?;
        Ok(Self { cron: cron.to_string(), timezone, parsed })
    }

    /// The expression as written.
    pub fn cron(&self) -> &str {
        &self.cron
    }

    /// The time zone's name.
    pub fn timezone(&self) -> &str {
        self.timezone.name()
    }

    /// The first due time strictly after `after_ms` (ms since the epoch), if any: a whole
    /// minute (croner keeps the sub-second part of the time it starts from, so that is cut).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let whole_second = after_ms - after_ms.rem_euclid(1000);
        let after = DateTime::<Utc>::from_timestamp_millis(whole_second)?.naive_utc();
        let after = self.timezone.from_utc_datetime(&after);
        let next = self.parsed.find_next_occurrence(&after, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// Every due time in `(after_ms, until_ms]`, oldest first, at most `limit` (the latest
    /// ones when there are more).
    pub fn due_between(&self, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
        let mut due = std::collections::VecDeque::new();
        let mut at = after_ms;
        while let Some(next) = self.next_after(at).filter(|next| *next <= until_ms) {
            if due.len() == limit {
                due.pop_front();
            }
            due.push_back(next);
            at = next;
        }
        due.into()
    }
}

/// The whitespace-separated fields of `text`, each with its 1-based starting character.
fn fields_with_positions(text: &str) -> Vec<(usize, &str)> {
    let mut fields = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                fields.push((text[..s].chars().count() + 1, &text[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        fields.push((text[..s].chars().count() + 1, &text[s..]));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;
    /// 2026-01-01T00:00:00Z.
    const NEW_YEAR_MS: i64 = 1_767_225_600_000;

    #[test]
    fn every_five_minutes_is_due_twelve_times_an_hour() {
        let schedule = Schedule::parse("*/5 * * * *", None).unwrap();
        let due = schedule.due_between(NEW_YEAR_MS, NEW_YEAR_MS + HOUR_MS, 1000);
        assert_eq!(due.len(), 12);
        assert_eq!(due[0], NEW_YEAR_MS + 5 * 60_000);
        let odd = NEW_YEAR_MS + 123_456;
        assert_eq!(schedule.next_after(odd), Some(NEW_YEAR_MS + 5 * 60_000), "whole minutes from any time");
        assert_eq!(schedule.due_between(NEW_YEAR_MS, NEW_YEAR_MS + 3 * HOUR_MS, 10).len(), 10, "the latest 10");
    }

    #[test]
    fn a_bad_field_is_named_with_its_position() {
        let error = Schedule::parse("*/5 * 32 * *", None).unwrap_err();
        assert!(matches!(&error, ScheduleError::BadField { field: "day-of-month", position: 7, .. }), "{error}");
        let error = Schedule::parse("0 25 * * *", None).unwrap_err();
        assert_eq!(error.position(), Some(3), "{error}");
        assert!(matches!(Schedule::parse("* * *", None), Err(ScheduleError::FieldCount { found: 3, .. })));
        assert!(matches!(Schedule::parse("@often", None), Err(ScheduleError::BadMacro { .. })));
    }

    #[test]
    fn macros_and_time_zones() {
        let daily = Schedule::parse("@daily", Some("Europe/Paris")).unwrap();
        // Midnight in Paris is 23:00 UTC in winter.
        assert_eq!(daily.next_after(NEW_YEAR_MS), Some(NEW_YEAR_MS + 23 * HOUR_MS));
        let error = Schedule::parse("@hourly", Some("Europe/Pari")).unwrap_err().to_string();
        assert!(error.contains("did you mean 'Europe/Paris'"), "{error}");
    }
}

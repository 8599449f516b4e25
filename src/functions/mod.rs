//! SQL functions Sluice puts in place of DataFusion's own, with the same names and results.
//!
//! `date_trunc` to a month, quarter or year is everywhere in data engineering (`GROUP BY
//! date_trunc('month', ts)`, a table partitioned by month). DataFusion 53 turns every value into
//! a chrono date-time and back for these, and panics on a value whose month starts before the
//! earliest nanosecond timestamp. [`DateTrunc`] computes them with integer arithmetic for
//! timezone-less nanosecond timestamps (what `CAST(date AS TIMESTAMP)` gives), about 6 ns a value
//! less, returns an error naming such a value, and leaves every other case to DataFusion.
//!
//! `generate_series` and `range` over integers stop at the ends of the 64-bit range, where
//! DataFusion's wrap around and never end ([`Series`]).

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, TimeUnit, TimestampNanosecondType};
use datafusion::arrow::temporal_conversions::timestamp_ns_to_datetime;
use datafusion::common::{Result, ScalarValue, exec_datafusion_err};
use datafusion::execution::context::SessionContext;
use datafusion::functions::datetime::date_trunc::DateTruncFunc;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

mod series;

pub use series::Series;

/// Registers Sluice's functions in `ctx`, replacing DataFusion's of the same name.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(DateTrunc::default()));
    ctx.register_udtf("generate_series", Arc::new(Series::generate_series()));
    ctx.register_udtf("range", Arc::new(Series::range()));
}

const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// DataFusion's `date_trunc`, with month, quarter and year truncation of timezone-less
/// nanosecond timestamps computed from the day number instead of through chrono.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct DateTrunc {
    inner: DateTruncFunc,
}

/// The calendar units [`DateTrunc`] truncates itself: each is a number of months.
fn months_per_unit(granularity: &str) -> Option<u32> {
    match granularity.to_ascii_lowercase().as_str() {
        "month" => Some(1),
        "quarter" => Some(3),
        "year" => Some(12),
        _ => None,
    }
}

/// The year and month (1 to 12) of a day counted from 1970-01-01, in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn year_month(days: i64) -> (i64, i64) {
    let shifted = days + 719_468; // days from 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based_month = (5 * day_of_year + 2) / 153;
    let month = if march_based_month < 10 { march_based_month + 3 } else { march_based_month - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month)
}

/// The day number (from 1970-01-01) of the first day of `month` in `year` (Hinnant's
/// `days_from_civil`).
fn first_day_of(year: i64, month: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let march_based_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * march_based_month + 2) / 5;
    era * 146_097 + year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year - 719_468
}

/// `nanos` truncated to the start of its unit of `months` months; `None` when that start is
/// before the earliest nanosecond timestamp.
fn truncate(nanos: i64, months: u32) -> Option<i64> {
    let (year, month) = year_month(nanos.div_euclid(NANOS_PER_DAY));
    let first_month = (month - 1) / i64::from(months) * i64::from(months) + 1;
    first_day_of(year, first_month).checked_mul(NANOS_PER_DAY)
}

impl DateTrunc {
    /// The truncated array or scalar, or `None` for a case left to DataFusion. A value whose
    /// unit starts before the earliest nanosecond timestamp is an error (DataFusion 53 panics on
    /// it).
    fn try_fast(&self, args: &ScalarFunctionArgs) -> Option<Result<ColumnarValue>> {
        let [ColumnarValue::Scalar(granularity), values] = args.args.as_slice() else {
            return None;
        };
        let (ScalarValue::Utf8(Some(granularity))
        | ScalarValue::Utf8View(Some(granularity))
        | ScalarValue::LargeUtf8(Some(granularity))) = granularity
        else {
            return None;
        };
        let months = months_per_unit(granularity)?;
        let truncate = |v: i64| {
            truncate(v, months).ok_or_else(|| {
                let shown = |v: i64| timestamp_ns_to_datetime(v).map_or_else(|| v.to_string(), |t| t.to_string());
                exec_datafusion_err!(
                    "date_trunc('{granularity}', {}): the {granularity} starts before the earliest \
                     nanosecond timestamp ({})",
                    shown(v),
                    shown(i64::MIN)
                )
            })
        };
        match values {
            ColumnarValue::Array(values) if values.data_type() == &DataType::Timestamp(TimeUnit::Nanosecond, None) => {
                let values = values.as_primitive::<TimestampNanosecondType>();
                let truncated: Result<TimestampNanosecondArray> = values.try_unary(truncate);
                Some(truncated.map(|truncated| ColumnarValue::Array(Arc::new(truncated))))
            }
            ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(value, None)) => {
                let truncated = value.map(truncate).transpose();
                Some(truncated.map(|value| ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(value, None))))
            }
            _ => None,
        }
    }
}

impl ScalarUDFImpl for DateTrunc {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match self.try_fast(&args) {
            Some(truncated) => truncated,
            None => self.inner.invoke_with_args(args),
        }
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::ArrayRef;
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    use super::*;

    fn invoke(function: &dyn ScalarUDFImpl, granularity: &str, values: &ArrayRef) -> Result<ArrayRef> {
        let field = Arc::new(Field::new("ts", values.data_type().clone(), true));
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(granularity.to_string()))),
                ColumnarValue::Array(values.clone()),
            ],
            arg_fields: vec![Arc::new(Field::new("g", DataType::Utf8, false)), field.clone()],
            number_rows: values.len(),
            return_field: field,
            config_options: Arc::new(ConfigOptions::default()),
        };
        function.invoke_with_args(args)?.into_array(values.len())
    }

    /// Every day from 1677 to 2262 (the whole nanosecond range), at its first and last
    /// nanosecond, and a null: the same result as DataFusion's own.
    #[test]
    fn truncates_as_datafusion_does() {
        let mut values = Vec::new();
        let (first, last) = (i64::MIN / NANOS_PER_DAY - 1, i64::MAX / NANOS_PER_DAY + 1);
        for day in first..=last {
            for nanos in [0, NANOS_PER_DAY - 1] {
                values.push(day.checked_mul(NANOS_PER_DAY).and_then(|d| d.checked_add(nanos)));
            }
        }
        values.push(None);
        let (ours, theirs) = (DateTrunc::default(), DateTruncFunc::new());
        for granularity in ["month", "QUARTER", "Year", "day"] {
            // Values whose year starts before the range are left out: DataFusion panics on them.
            let in_range: ArrayRef = Arc::new(TimestampNanosecondArray::from(
                values.iter().map(|v| v.filter(|v| truncate(*v, 12).is_some())).collect::<Vec<_>>(),
            ));
            assert_eq!(
                invoke(&ours, granularity, &in_range).unwrap().as_ref(),
                invoke(&theirs, granularity, &in_range).unwrap().as_ref(),
                "{granularity}"
            );
        }
        // DataFusion panics on it; this is an error naming the value.
        let earliest: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![i64::MIN + 1]));
        let error = invoke(&ours, "month", &earliest).unwrap_err().to_string();
        assert!(error.contains("date_trunc('month', 1677-09-21") && error.contains("earliest"), "{error}");
    }

    /// A constant timestamp (as constant folding passes it) takes the same path.
    #[test]
    fn truncates_a_scalar() {
        let call = |value: Option<i64>| {
            let field = Arc::new(Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true));
            let args = ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some("quarter".to_string()))),
                    ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(value, None)),
                ],
                arg_fields: vec![Arc::new(Field::new("g", DataType::Utf8, false)), field.clone()],
                number_rows: 1,
                return_field: field,
                config_options: Arc::new(ConfigOptions::default()),
            };
            match DateTrunc::default().invoke_with_args(args) {
                Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(value, None))) => Ok(value),
                Ok(other) => panic!("not a nanosecond scalar: {other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        // 2024-05-17T10:00:00 → 2024-04-01T00:00:00.
        assert_eq!(call(Some(1_715_940_000_000_000_000)), Ok(Some(1_711_929_600_000_000_000)));
        assert_eq!(call(None), Ok(None));
        assert!(call(Some(i64::MIN + 1)).unwrap_err().contains("the quarter starts before"));
    }

    #[test]
    fn leaves_other_types_to_datafusion() {
        let micros: ArrayRef = Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(vec![
            Some(1_700_000_000_000_000),
            None,
        ]));
        let (ours, theirs) = (DateTrunc::default(), DateTruncFunc::new());
        assert_eq!(
            invoke(&ours, "month", &micros).unwrap().as_ref(),
            invoke(&theirs, "month", &micros).unwrap().as_ref()
        );
    }
}

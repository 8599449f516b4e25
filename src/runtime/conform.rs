//! Making a batch fit its table: every column cast to the table's type, but only where the cast
//! keeps every value. A value that overflows, loses digits (1.7 into an INT), cannot be parsed
//! ('abc' into an INT), or a NULL in a NOT NULL column fails the run before anything is
//! committed, with an error naming the column, its type and the first offending value.

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;

/// Whether every value of `from` has an exact value in `to` (a cast that cannot fail or lose
/// anything): the same type, a wider integer or float, an integer into a float that holds it
/// exactly, a decimal with room for its digits, a longer string type.
pub fn is_widening(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_bits = |t: &DataType| match t {
        Int8 => Some((8, true)),
        Int16 => Some((16, true)),
        Int32 => Some((32, true)),
        Int64 => Some((64, true)),
        UInt8 => Some((8, false)),
        UInt16 => Some((16, false)),
        UInt32 => Some((32, false)),
        UInt64 => Some((64, false)),
        _ => None,
    };
    match (from, to) {
        _ if from == to => true,
        (Null, _) => true,
        (Float16, Float32 | Float64) | (Float32, Float64) => true,
        (Utf8, LargeUtf8 | Utf8View) | (Utf8View, Utf8 | LargeUtf8) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => s2 >= s1 && (*p2 as i16 - *s2 as i16) >= (*p1 as i16 - *s1 as i16),
        _ => match (int_bits(from), int_bits(to)) {
            (Some((a, signed_a)), Some((b, signed_b))) => {
                (signed_a == signed_b && b >= a) || (!signed_a && signed_b && b > a)
            }
            (Some((a, _)), None) => matches!((a, to), (..=16, Float32) | (..=32, Float64)),
            _ => false,
        },
    }
}

/// Whether a cast from `from` may change a value without failing (so it is checked by casting
/// back): from numbers and times, but not from strings, whose spelling is not kept ('007' → 7).
fn checked_by_round_trip(from: &DataType) -> bool {
    from.is_numeric() || from.is_temporal()
}

/// Casts a batch to the table's Arrow schema, column by column (see the module docs).
pub fn conform(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch, DataFusionError> {
    if batch.num_columns() != target.fields().len() {
        return Err(DataFusionError::Plan(format!(
            "the input has {} columns but the table has {}",
            batch.num_columns(),
            target.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| cast_exactly(column, field.name(), field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    let null_in_not_null = target.fields().iter().zip(&columns).find(|(f, c)| !f.is_nullable() && c.null_count() > 0);
    if let Some((field, _)) = null_in_not_null {
        return Err(DataFusionError::Execution(format!(
            "column `{}` is NOT NULL, but the query gives it a NULL",
            field.name()
        )));
    }
    RecordBatch::try_new(target.clone(), columns).map_err(|e| DataFusionError::Execution(e.to_string()))
}

/// `column` as `to`, every value kept, or an error naming `name` and the first value that does
/// not fit.
fn cast_exactly(column: &ArrayRef, name: &str, to: &DataType) -> Result<ArrayRef, DataFusionError> {
    let from = column.data_type();
    if from == to {
        return Ok(column.clone());
    }
    let strict = CastOptions { safe: false, format_options: FormatOptions::default() };
    let lenient = CastOptions { safe: true, format_options: FormatOptions::default() };
    let misfit = |row: usize, why: &str| {
        let value = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
            .map(|f| f.value(row).to_string())
            .unwrap_or_default();
        DataFusionError::Execution(format!("column `{name}` is {to}: the value {value} ({from}) {why}"))
    };
    let cast = match cast_with_options(column, to, &strict) {
        Ok(cast) => cast,
        Err(e) => {
            // The first value that does not cast, for the message.
            let lenient = cast_with_options(column, to, &lenient)?;
            let row = (0..column.len()).find(|i| column.is_valid(*i) && lenient.is_null(*i));
            return Err(match row {
                Some(row) => misfit(row, "does not fit it"),
                None => DataFusionError::Execution(format!("column `{name}`: cannot store {from} as {to}: {e}")),
            });
        }
    };
    if !is_widening(from, to) && checked_by_round_trip(from) {
        let back = cast_with_options(&cast, from, &lenient)?;
        let changed = distinct(column, &back)?;
        if let Some(row) = (0..changed.len()).find(|i| changed.is_valid(*i) && changed.value(*i)) {
            let became = ArrayFormatter::try_new(cast.as_ref(), &FormatOptions::default())
                .map(|f| f.value(row).to_string())
                .unwrap_or_default();
            return Err(misfit(row, &format!("cannot be stored exactly (it would become {became})")));
        }
    }
    Ok(cast)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn int_table() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]))
    }

    fn batch(column: ArrayRef) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", column.data_type().clone(), true)])),
            vec![column],
        )
        .unwrap()
    }

    #[test]
    fn exact_values_cast_and_the_rest_are_named() {
        let fits = batch(Arc::new(Int64Array::from(vec![1, 2, -3])));
        assert_eq!(conform(fits, &int_table()).unwrap().column(0).data_type(), &DataType::Int32);
        let overflow = batch(Arc::new(Int64Array::from(vec![1, 3_000_000_000])));
        let error = conform(overflow, &int_table()).unwrap_err().to_string();
        assert!(error.contains("column `id` is Int32: the value 3000000000 (Int64) does not fit it"), "{error}");
        let lossy = batch(Arc::new(Float64Array::from(vec![2.0, 1.7])));
        let error = conform(lossy, &int_table()).unwrap_err().to_string();
        assert!(error.contains("the value 1.7 (Float64) cannot be stored exactly (it would become 1)"), "{error}");
        assert!(conform(batch(Arc::new(Float64Array::from(vec![2.0, 3.0]))), &int_table()).is_ok(), "whole floats fit");
    }

    #[test]
    fn widening_is_told_apart() {
        assert!(is_widening(&DataType::Int32, &DataType::Int64));
        assert!(is_widening(&DataType::Int32, &DataType::Float64));
        assert!(!is_widening(&DataType::Int64, &DataType::Float64));
        assert!(!is_widening(&DataType::Int64, &DataType::Int32));
        assert!(is_widening(&DataType::Decimal128(10, 2), &DataType::Decimal128(12, 3)));
        assert!(!is_widening(&DataType::Decimal128(10, 2), &DataType::Decimal128(10, 3)));
    }
}

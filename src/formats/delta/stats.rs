//! Delta file statistics (record count, per-column min / max / null count) from a Parquet
//! footer, as the `stats` JSON of an `add` action.

use std::cmp::Ordering;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::temporal_conversions::date32_to_datetime;
use datafusion::common::ScalarValue;
use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use datafusion::parquet::file::metadata::ParquetMetaData;
use serde_json::{Map, Value, json};

use crate::runtime::BoxError;

/// Longest string kept as a min / max statistic (longer ones are left out, never truncated wrong).
const STRING_STAT_CHARS_MAX: usize = 32;

/// Delta statistics JSON for one file from its Parquet footer. A column gets its null count, min
/// and max together or not at all: some readers (delta-rs) turn a null count without min / max
/// into a guarantee that no row matches, and would skip the file.
pub(super) fn file_stats(metadata: &ParquetMetaData, schema: &Schema) -> Result<String, BoxError> {
    let (mut min_values, mut max_values, mut null_count) = (Map::new(), Map::new(), Map::new());
    let row_groups = metadata.row_groups();
    for field in schema.fields() {
        if field.data_type().is_nested() {
            continue;
        }
        let converter = StatisticsConverter::try_new(field.name(), schema, metadata.file_metadata().schema_descr())?;
        let nulls = converter.row_group_null_counts(row_groups.iter())?;
        if nulls.null_count() > 0 {
            continue;
        }
        // A row group of nothing but NULLs has no min / max and does not need one.
        let all_null: Vec<bool> =
            row_groups.iter().enumerate().map(|(i, group)| nulls.value(i) == group.num_rows() as u64).collect();
        let mins = converter.row_group_mins(row_groups.iter())?;
        let maxes = converter.row_group_maxes(row_groups.iter())?;
        let extremes = (fold(&mins, &all_null, Ordering::Less)?, fold(&maxes, &all_null, Ordering::Greater)?);
        if let (Some(min), Some(max)) = extremes
            && let (Some(min), Some(max)) = (stat_value(&min), stat_value(&max))
        {
            min_values.insert(field.name().clone(), min);
            max_values.insert(field.name().clone(), max);
            null_count.insert(field.name().clone(), json!(nulls.values().iter().sum::<u64>()));
        }
    }
    let stats = json!({
        "numRecords": metadata.file_metadata().num_rows(),
        "minValues": min_values,
        "maxValues": max_values,
        "nullCount": null_count,
    });
    Ok(stats.to_string())
}

/// The least (or greatest) of the row groups' values, skipping all-NULL row groups; `None`
/// when another row group has no statistic (then nothing can be said about the file).
fn fold(values: &ArrayRef, all_null: &[bool], keep: Ordering) -> Result<Option<ScalarValue>, BoxError> {
    let mut best: Option<ScalarValue> = None;
    for (index, all_null) in all_null.iter().enumerate().take(values.len()) {
        if *all_null {
            continue;
        }
        if values.is_null(index) {
            return Ok(None);
        }
        let value = ScalarValue::try_from_array(values, index)?;
        if best.as_ref().is_none_or(|b| value.partial_cmp(b) == Some(keep)) {
            best = Some(value);
        }
    }
    Ok(best)
}

/// A statistic as Delta writes it in JSON; `None` for types whose statistics Sluice leaves out
/// (timestamps and decimals, whose JSON forms lose precision, and long strings).
fn stat_value(value: &ScalarValue) -> Option<Value> {
    Some(match value {
        ScalarValue::Boolean(Some(v)) => json!(v),
        ScalarValue::Int8(Some(v)) => json!(v),
        ScalarValue::Int16(Some(v)) => json!(v),
        ScalarValue::Int32(Some(v)) => json!(v),
        ScalarValue::Int64(Some(v)) => json!(v),
        ScalarValue::UInt8(Some(v)) => json!(v),
        ScalarValue::UInt16(Some(v)) => json!(v),
        ScalarValue::UInt32(Some(v)) => json!(v),
        ScalarValue::UInt64(Some(v)) => json!(v),
        ScalarValue::Float32(Some(v)) if v.is_finite() => json!(v),
        ScalarValue::Float64(Some(v)) if v.is_finite() => json!(v),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s))
            if s.chars().count() <= STRING_STAT_CHARS_MAX =>
        {
            json!(s)
        }
        ScalarValue::Date32(Some(days)) => json!(date32_to_datetime(*days)?.date().to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    use super::*;

    #[test]
    fn statistics_span_row_groups_and_count_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let properties = WriterProperties::builder().set_max_row_group_row_count(Some(2)).build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties)).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![5, 3, 9, 7])),
                Arc::new(StringArray::from(vec![Some("b"), None, Some("a"), Some(&"z".repeat(40)[..])])),
                Arc::new(Float64Array::from(vec![None, None, Some(1.5), Some(-2.0)])),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        let metadata = writer.close().unwrap();
        let stats: Value = serde_json::from_str(&file_stats(&metadata, &schema).unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 4);
        assert_eq!(stats["minValues"]["id"], 3);
        assert_eq!(stats["maxValues"]["id"], 9);
        assert_eq!(stats["nullCount"], json!({"id": 0, "x": 2}));
        // The 40-character maximum is left out rather than written truncated (and wrong), and
        // with it the column's other statistics.
        assert!(stats["minValues"].get("name").is_none() && stats["nullCount"].get("name").is_none(), "{stats}");
        assert_eq!(stats["minValues"]["x"], -2.0);
    }
}

//! `generate_series` and `range` over integers, bounded at `i64::MAX` and `i64::MIN`.
//!
//! DataFusion 53 advances the series with a plain `+=`: a series that ends within one step of
//! the end of the 64-bit range wraps around and never ends
//! (`generate_series(9223372036854775806, 9223372036854775807)` runs forever). Here the next
//! value is a checked addition: the series stops at its end. Timestamps, dates and NULL
//! arguments are left to DataFusion's own functions.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::functions_table::generate_series::{GenerateSeriesFunc, RangeFunc};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::memory::{LazyBatchGenerator, LazyMemoryExec};
use parking_lot::RwLock;

/// `generate_series(start, end [, step])` (end included) or `range(...)` (end excluded).
#[derive(Debug)]
pub struct Series {
    name: &'static str,
    include_end: bool,
}

impl Series {
    /// `generate_series`: the end is part of the series.
    pub fn generate_series() -> Self {
        Self { name: "generate_series", include_end: true }
    }

    /// `range`: the series stops before the end.
    pub fn range() -> Self {
        Self { name: "range", include_end: false }
    }

    /// The integer arguments as (start, end, step), or `None` when DataFusion's function should
    /// take the call (other types, NULLs, expressions: it reports those).
    fn integers(exprs: &[Expr]) -> Option<(i64, i64, i64)> {
        let values: Option<Vec<i64>> = exprs
            .iter()
            .map(|e| match e {
                Expr::Literal(ScalarValue::Int64(Some(n)), _) => Some(*n),
                _ => None,
            })
            .collect();
        match values?.as_slice() {
            [end] => Some((0, *end, 1)),
            [start, end] => Some((*start, *end, 1)),
            [start, end, step] => Some((*start, *end, *step)),
            _ => None,
        }
    }
}

impl TableFunctionImpl for Series {
    fn call(&self, exprs: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        let Some((start, end, step)) = Self::integers(exprs) else {
            return match self.include_end {
                true => GenerateSeriesFunc {}.call(exprs),
                false => RangeFunc {}.call(exprs),
            };
        };
        if step == 0 {
            return plan_err!("{}: the step cannot be zero", self.name);
        }
        let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Int64, false)]));
        let series = Int64Series { name: self.name, start, end, step, include_end: self.include_end };
        Ok(Arc::new(SeriesTable { schema, series }))
    }
}

/// The parameters of one integer series.
#[derive(Debug, Clone, Copy)]
struct Int64Series {
    name: &'static str,
    start: i64,
    end: i64,
    step: i64,
    include_end: bool,
}

impl Int64Series {
    /// Whether `value` is still part of the series.
    fn contains(&self, value: i64) -> bool {
        match (self.step > 0, self.include_end) {
            (true, true) => value <= self.end,
            (true, false) => value < self.end,
            (false, true) => value >= self.end,
            (false, false) => value > self.end,
        }
    }
}

/// The series as a table of one column, `value`.
#[derive(Debug)]
struct SeriesTable {
    schema: SchemaRef,
    series: Int64Series,
}

#[async_trait]
impl TableProvider for SeriesTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch_size = state.config_options().execution.batch_size;
        let generator = SeriesGenerator {
            schema: self.schema.clone(),
            series: self.series,
            next: Some(self.series.start),
            batch_size,
        };
        let exec = LazyMemoryExec::try_new(self.schema.clone(), vec![Arc::new(RwLock::new(generator))])?;
        Ok(Arc::new(exec.with_projection(projection.cloned())))
    }
}

/// Produces the series a batch at a time; `next` is `None` once past the end.
#[derive(Debug, Clone)]
struct SeriesGenerator {
    schema: SchemaRef,
    series: Int64Series,
    next: Option<i64>,
    batch_size: usize,
}

impl fmt::Display for SeriesGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Int64Series { name, start, end, step, .. } = self.series;
        write!(f, "{name}: start={start}, end={end}, step={step}, batch_size={}", self.batch_size)
    }
}

impl LazyBatchGenerator for SeriesGenerator {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn generate_next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut values = Vec::with_capacity(self.batch_size);
        while values.len() < self.batch_size {
            match self.next.filter(|&value| self.series.contains(value)) {
                Some(value) => {
                    values.push(value);
                    self.next = value.checked_add(self.series.step);
                }
                None => {
                    self.next = None;
                    break;
                }
            }
        }
        if values.is_empty() {
            return Ok(None);
        }
        Ok(Some(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(Int64Array::from(values))])?))
    }

    fn reset_state(&self) -> Arc<RwLock<dyn LazyBatchGenerator>> {
        Arc::new(RwLock::new(Self { next: Some(self.series.start), ..self.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(start: i64, end: i64, step: i64, include_end: bool) -> Vec<i64> {
        let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Int64, false)]));
        let series = Int64Series { name: "t", start, end, step, include_end };
        let mut generator = SeriesGenerator { schema, series, next: Some(start), batch_size: 2 };
        let mut values = Vec::new();
        while let Some(batch) = generator.generate_next_batch().unwrap() {
            values.extend(batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values());
            assert!(values.len() < 100, "the series did not stop: {values:?}");
        }
        values
    }

    #[test]
    fn series_stop_at_the_ends_of_the_64_bit_range() {
        assert_eq!(collect(i64::MAX - 1, i64::MAX, 1, true), vec![i64::MAX - 1, i64::MAX]);
        assert_eq!(collect(i64::MIN + 1, i64::MIN, -1, true), vec![i64::MIN + 1, i64::MIN]);
        assert_eq!(collect(i64::MAX - 5, i64::MAX, 4, true), vec![i64::MAX - 5, i64::MAX - 1]);
        assert_eq!(collect(i64::MAX - 1, i64::MAX, 1, false), vec![i64::MAX - 1]);
    }

    #[test]
    fn series_match_datafusion_in_the_ordinary_range() {
        assert_eq!(collect(1, 5, 1, true), vec![1, 2, 3, 4, 5]);
        assert_eq!(collect(1, 5, 2, false), vec![1, 3]);
        assert_eq!(collect(5, 1, -2, true), vec![5, 3, 1]);
        assert_eq!(collect(5, 1, 1, true), Vec::<i64>::new());
        assert_eq!(collect(0, 0, 1, false), Vec::<i64>::new());
    }
}

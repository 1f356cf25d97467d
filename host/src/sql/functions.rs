//! Spark's common SQL function names that DataFusion lacks, so a Spark user's expressions work
//! as written: `split(str, regex[, limit])`, `size(array)` and `to_json(struct)`. (`explode` is handled by the
//! planner, which rewrites it to DataFusion's `unnest`.) And `now()` / `current_timestamp()` /
//! `current_date()` with Spark's streaming meaning: the timestamp of the running micro-batch
//! (logged in its offsets, so a replay sees the same value), not the time the query was planned.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, LargeStringArray, StringArray, StringViewArray};
use arrow_schema::{DataType, Field, TimeUnit};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers the Spark-compatible functions on `ctx`; the time functions read `clock`.
pub(crate) fn register(ctx: &SessionContext, clock: &BatchClock) {
    ctx.register_udf(ScalarUDF::from(BatchTimeUdf::new(clock.clone(), false)));
    ctx.register_udf(ScalarUDF::from(BatchTimeUdf::new(clock.clone(), true)));
    ctx.register_udf(ScalarUDF::from(SplitUdf::new()));
    ctx.register_udf(ScalarUDF::from(SizeUdf::new()));
    ctx.register_udf(ScalarUDF::from(ToJsonUdf::new()));
}

/// The running batch's timestamp in milliseconds, shared by a step's time functions.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchClock(Arc<AtomicI64>);

impl BatchClock {
    pub(crate) fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::Relaxed);
    }
    fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `now()` / `current_timestamp()` (a UTC timestamp) or `current_date()`: the batch's time.
/// Volatile, so the planner does not fold it into a constant once for the whole run.
#[derive(Debug)]
struct BatchTimeUdf {
    clock: BatchClock,
    date: bool,
    signature: Signature,
    aliases: Vec<String>,
}

impl PartialEq for BatchTimeUdf {
    fn eq(&self, other: &Self) -> bool {
        self.date == other.date && Arc::ptr_eq(&self.clock.0, &other.clock.0)
    }
}
impl Eq for BatchTimeUdf {}
impl std::hash::Hash for BatchTimeUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.date.hash(state);
        Arc::as_ptr(&self.clock.0).hash(state);
    }
}

impl BatchTimeUdf {
    fn new(clock: BatchClock, date: bool) -> Self {
        let aliases = if date { vec!["today".into()] } else { vec!["current_timestamp".into()] };
        BatchTimeUdf { clock, date, signature: Signature::nullary(Volatility::Volatile), aliases }
    }
}

impl ScalarUDFImpl for BatchTimeUdf {
    fn name(&self) -> &str {
        if self.date { "current_date" } else { "now" }
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(if self.date { DataType::Date32 } else { DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())) })
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ms = self.clock.get();
        Ok(ColumnarValue::Scalar(if self.date {
            ScalarValue::Date32(Some(ms.div_euclid(86_400_000) as i32))
        } else {
            ScalarValue::TimestampNanosecond(Some(ms.saturating_mul(1_000_000)), Some("+00:00".into()))
        }))
    }
}

/// `split(str, regex[, limit])`: splits around matches of a regular expression, as Spark does
/// (a trailing empty string is kept, like Java's `split` with limit -1).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SplitUdf {
    signature: Signature,
}

impl SplitUdf {
    fn new() -> Self {
        let s = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut variants = Vec::new();
        for a in &s {
            variants.push(TypeSignature::Exact(vec![a.clone(), DataType::Utf8]));
            variants.push(TypeSignature::Exact(vec![a.clone(), DataType::Utf8, DataType::Int64]));
        }
        SplitUdf { signature: Signature::one_of(variants, Volatility::Immutable) }
    }
}

fn strings(a: &ArrayRef) -> DfResult<Box<dyn Iterator<Item = Option<&str>> + '_>> {
    if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
        return Ok(Box::new(s.iter()));
    }
    if let Some(s) = a.as_any().downcast_ref::<LargeStringArray>() {
        return Ok(Box::new(s.iter()));
    }
    if let Some(s) = a.as_any().downcast_ref::<StringViewArray>() {
        return Ok(Box::new(s.iter()));
    }
    exec_err!("split: expected a string, got {}", a.data_type())
}

impl ScalarUDFImpl for SplitUdf {
    fn name(&self) -> &str {
        "split"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let pattern = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(p))) => p.clone(),
            _ => return exec_err!("split: the pattern must be a constant string"),
        };
        let limit = match args.args.get(2) {
            Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(l)))) => *l,
            None => -1,
            _ => return exec_err!("split: the limit must be a constant integer"),
        };
        let re = regex::Regex::new(&pattern).map_err(|e| {
            datafusion::error::DataFusionError::Execution(format!("split: bad pattern {pattern:?}: {e}"))
        })?;
        let input = args.args[0].to_array(n)?;
        // A pattern without regex metacharacters splits as plain text, which is several times
        // faster than the regex engine and gives the same parts.
        let literal = !pattern.is_empty() && regex::escape(&pattern) == pattern;
        // One character (the usual `' '`) splits fastest as a `char` (a memchr scan).
        let mut chars = pattern.chars();
        let single = match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        };
        let bytes = input.to_data().buffers().get(1).map(|b| b.len()).unwrap_or(0);
        let mut out = ListBuilder::new(StringBuilder::with_capacity(n * 4, bytes));
        for v in strings(&input)? {
            let Some(s) = v else {
                out.append_null();
                continue;
            };
            let values = out.values();
            match (literal, single, limit > 0) {
                (true, Some(c), true) => s.splitn(limit as usize, c).for_each(|p| values.append_value(p)),
                (true, Some(c), false) => s.split(c).for_each(|p| values.append_value(p)),
                (true, None, true) => s.splitn(limit as usize, pattern.as_str()).for_each(|p| values.append_value(p)),
                (true, None, false) => s.split(pattern.as_str()).for_each(|p| values.append_value(p)),
                (false, _, true) => re.splitn(s, limit as usize).for_each(|p| values.append_value(p)),
                (false, _, false) => re.split(s).for_each(|p| values.append_value(p)),
            }
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `size(array)`: the number of elements (Spark's `size`), null for a null array.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SizeUdf {
    signature: Signature,
}

impl SizeUdf {
    fn new() -> Self {
        SizeUdf { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for SizeUdf {
    fn name(&self) -> &str {
        "size"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let sizes: arrow_array::Int32Array = match a.data_type() {
            DataType::List(_) => {
                let l = arrow_array::cast::as_list_array(&a);
                (0..l.len()).map(|i| (!l.is_null(i)).then(|| l.value_length(i))).collect()
            }
            DataType::LargeList(_) => {
                let l = arrow_array::cast::as_large_list_array(&a);
                (0..l.len()).map(|i| (!l.is_null(i)).then(|| l.value_length(i) as i32)).collect()
            }
            other => return exec_err!("size: expected an array, got {other}"),
        };
        Ok(ColumnarValue::Array(Arc::new(sizes)))
    }
}

/// `to_json(struct)`: one JSON object per row, null fields left out (as Spark does); typically
/// `to_json(named_struct('word', word, 'count', count))` to build a Kafka `value`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJsonUdf {
    signature: Signature,
}

impl ToJsonUdf {
    fn new() -> Self {
        ToJsonUdf { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ToJsonUdf {
    fn name(&self) -> &str {
        "to_json"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args.first() {
            Some(DataType::Struct(_)) => Ok(DataType::Utf8),
            other => exec_err!(
                "to_json: expected a struct such as named_struct('a', a, 'b', b), got {}",
                other.map(ToString::to_string).unwrap_or_default()
            ),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use arrow_array::cast::AsArray;
        let a = args.args[0].to_array(args.number_rows)?;
        let DataType::Struct(fields) = a.data_type() else {
            return exec_err!("to_json: expected a struct, got {}", a.data_type());
        };
        let s = a.as_struct();
        let schema = Arc::new(arrow_schema::Schema::new(fields.clone()));
        let batch = arrow_array::RecordBatch::try_new_with_options(
            schema,
            s.columns().to_vec(),
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(s.len())),
        )?;
        let mut buf = Vec::new();
        {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            w.write(&batch)?;
            w.finish()?;
        }
        let text = String::from_utf8(buf)
            .map_err(|e| datafusion::error::DataFusionError::Execution(format!("to_json: {e}")))?;
        let mut out = StringBuilder::with_capacity(s.len(), text.len());
        for (row, line) in text.split_terminator('\n').enumerate() {
            if s.is_null(row) {
                out.append_null();
            } else {
                out.append_value(line);
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;

    use super::*;

    async fn parts(expr: &str) -> Vec<Vec<String>> {
        let ctx = SessionContext::new();
        register(&ctx, &BatchClock::default());
        let batches = ctx.sql(&format!("SELECT {expr}")).await.unwrap().collect().await.unwrap();
        let list = batches[0].column(0).as_list::<i32>().clone();
        (0..list.len())
            .map(|i| list.value(i).as_string::<i32>().iter().map(|s| s.unwrap_or("").to_string()).collect())
            .collect()
    }

    /// A literal pattern (the fast path) splits as the regex would: empty parts kept,
    /// including a trailing one, and `limit` leaves the rest in the last part.
    #[tokio::test]
    async fn split_literal_and_regex_patterns_like_spark() {
        assert_eq!(parts("split('a  b ', ' ')").await, [["a", "", "b", ""]]);
        assert_eq!(parts("split('a  b ', ' ', 2)").await, [["a", " b "]]);
        assert_eq!(parts("split('a, b,c', ', ')").await, [["a", "b,c"]]);
        // Metacharacters make it a regex: '.' matches every character.
        assert_eq!(parts("split('a.b', '.')").await, [["", "", "", ""]]);
        assert_eq!(parts("split('a1b22c', '[0-9]+')").await, [["a", "b", "c"]]);
    }
}

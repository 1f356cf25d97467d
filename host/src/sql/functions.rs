//! Spark's common SQL function names that DataFusion lacks, so a Spark user's expressions work
//! as written: `split(str, regex[, limit])`, `size(array)` and `to_json(struct)`. (`explode` is handled by the
//! planner, which rewrites it to DataFusion's `unnest`.)

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, LargeStringArray, StringArray, StringViewArray};
use arrow_schema::{DataType, Field};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers the Spark-compatible functions on `ctx`.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(SplitUdf::new()));
    ctx.register_udf(ScalarUDF::from(SizeUdf::new()));
    ctx.register_udf(ScalarUDF::from(ToJsonUdf::new()));
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
        let mut out = ListBuilder::new(StringBuilder::new());
        for v in strings(&input)? {
            match v {
                None => out.append_null(),
                Some(s) => {
                    if limit > 0 {
                        for part in re.splitn(s, limit as usize) {
                            out.values().append_value(part);
                        }
                    } else {
                        for part in re.split(s) {
                            out.values().append_value(part);
                        }
                    }
                    out.append(true);
                }
            }
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

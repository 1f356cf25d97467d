//! Spark's common SQL function names that DataFusion lacks, so a Spark user's expressions work
//! as written: `split(str, regex[, limit])` and `size(array)`. (`explode` is handled by the
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

//! Spark's time windows: `window(ts, duration[, slide[, start]])` gives the window struct
//! `{start, end}` a row's event time falls in — tumbling when `slide` is absent or equal to the
//! duration, sliding otherwise (then a row lies in several windows).
//!
//! A tumbling window is one scalar function. A sliding one yields several rows per input row,
//! which a scalar function cannot: [`rewrite`] turns each sliding `window(...)` in a projection
//! or a GROUP BY into a column produced below that node by `__sluice_windows(...)` (the list of
//! windows holding the row) and unnested, as Spark's `TimeWindowing` rule expands rows. Like
//! Spark, rows whose event time is null are dropped wherever `window(...)` is used.
//!
//! Windows are computed in microseconds (Spark's precision) on UTC, with Spark's bounds:
//! a window holds `start <= ts < end`, and windows are aligned to `start` (default 0) from the
//! Unix epoch.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, PrimitiveBuilder, StructBuilder};
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Int64Array, StructArray};
use arrow_schema::{DataType, Field, Fields, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, Projection, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// The name of Spark's window function.
pub(super) const WINDOW: &str = "window";
/// The name of Spark's session window function.
pub(super) const SESSION_WINDOW: &str = "session_window";
const WINDOWS: &str = "__sluice_windows";
/// Columns the rewrite adds for sliding windows start with this.
pub(super) const WINDOW_COLUMN: &str = "__sluice_window_";

pub(super) fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(WindowUdf::new(false)));
    ctx.register_udf(ScalarUDF::from(WindowUdf::new(true)));
    ctx.register_udf(ScalarUDF::from(WindowTimeUdf { signature: Signature::any(1, Volatility::Immutable) }));
    ctx.register_udf(ScalarUDF::from(SessionWindowUdf { signature: Signature::any(2, Volatility::Immutable) }));
}

/// `session_window(ts, gap)`: the session a row opens, `{start: ts, end: ts + gap}`; `gap` is a
/// duration, constant or per row (a string like `'5 minutes'` or an interval). A GROUP BY on it
/// merges a key's sessions that overlap or touch (see `sql::session`). A null, zero or negative
/// gap gives a null session, and such rows are dropped, as in Spark.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionWindowUdf {
    signature: Signature,
}

/// A row's gap in microseconds, `None` when null or not a duration.
fn gap_us(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            crate::options::parse_interval_us(s).ok()
        }
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i64::from(i.days) * 86_400_000_000 + i.nanoseconds / 1_000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some(i64::from(i.days) * 86_400_000_000 + i64::from(i.milliseconds) * 1_000)
        }
        _ => None,
    }
}

impl ScalarUDFImpl for SessionWindowUdf {
    fn name(&self) -> &str {
        SESSION_WINDOW
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        let DataType::Timestamp(..) = &args[0] else {
            return plan_err!("session_window(): the time column must be a TIMESTAMP, not {}", args[0]);
        };
        Ok(DataType::Struct(window_fields(&args[0])))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let ts_type = args.args[0].data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return exec_err!("session_window(): the time column must be a TIMESTAMP, not {ts_type}");
        };
        let (mul, div) = scale(unit);
        let from_us = |v: i64| if div > 1 { v * div } else { v / mul };
        let gaps: Vec<Option<i64>> = match &args.args[1] {
            ColumnarValue::Scalar(v) => {
                let g = gap_us(v);
                if g.is_none() && !v.is_null() {
                    return exec_err!("session_window(): the gap must be a duration like '5 minutes', got {v}");
                }
                vec![g; n]
            }
            ColumnarValue::Array(a) => {
                (0..n).map(|i| ScalarValue::try_from_array(a, i).ok().as_ref().and_then(gap_us)).collect()
            }
        };
        let ts = args.args[0].to_array(n)?;
        let raw = arrow_cast::cast(&ts, &DataType::Int64)?;
        let Some(raw) = raw.as_any().downcast_ref::<Int64Array>() else {
            return exec_err!("session_window(): timestamps as Int64");
        };
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        for (t, g) in raw.iter().zip(gaps) {
            match (t, g) {
                (Some(t), Some(g)) if g > 0 => {
                    starts.push(Some(t));
                    ends.push(Some(t + from_us(g)));
                }
                _ => {
                    starts.push(None);
                    ends.push(None);
                }
            }
        }
        let valid: arrow_buffer::NullBuffer = starts.iter().map(Option::is_some).collect();
        let part =
            |v: Vec<Option<i64>>| -> DfResult<ArrayRef> { Ok(arrow_cast::cast(&Int64Array::from(v), &ts_type)?) };
        let st = StructArray::try_new(window_fields(&ts_type), vec![part(starts)?, part(ends)?], Some(valid))?;
        Ok(ColumnarValue::Array(Arc::new(st)))
    }
}

/// `window_time(window)`: the last instant of a window, `end` minus one microsecond (Spark's
/// event time for a row that came out of a windowed aggregation).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowTimeUdf {
    signature: Signature,
}

impl ScalarUDFImpl for WindowTimeUdf {
    fn name(&self) -> &str {
        "window_time"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match &args[0] {
            DataType::Struct(f) if f.len() == 2 && matches!(f[1].data_type(), DataType::Timestamp(..)) => {
                Ok(f[1].data_type().clone())
            }
            other => plan_err!("window_time(): expects a window column (a struct of start and end), got {other}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let w = args.args[0].to_array(args.number_rows)?;
        let Some(w) = w.as_any().downcast_ref::<StructArray>() else {
            return exec_err!("window_time(): expects a window column");
        };
        let end = w.column(1);
        let DataType::Timestamp(unit, _) = end.data_type() else {
            return exec_err!("window_time(): the window end must be a timestamp");
        };
        let (mul, div) = scale(unit);
        // One microsecond in the column's unit (a millisecond column cannot hold it).
        let tick = if div > 1 {
            div
        } else if mul == 1 {
            1
        } else {
            return exec_err!("window_time(): needs microseconds");
        };
        let raw = arrow_cast::cast(end, &DataType::Int64)?;
        let Some(raw) = raw.as_any().downcast_ref::<Int64Array>() else {
            return exec_err!("window_time(): the window end must be a timestamp");
        };
        let nulls = arrow_buffer::NullBuffer::union(raw.nulls(), w.nulls());
        let out = Int64Array::new(raw.values().iter().map(|v| v - tick).collect(), nulls);
        Ok(ColumnarValue::Array(arrow_cast::cast(&out, end.data_type())?))
    }
}

/// A duration argument: a string or an interval literal.
fn duration_arg(name: &str, v: &ScalarValue) -> DfResult<i64> {
    let us = match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            crate::options::parse_interval_us(s)
                .map_err(|e| datafusion::error::DataFusionError::Plan(format!("window(): {name}: {e}")))?
        }
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i64::from(i.days) * 86_400_000_000 + i.nanoseconds / 1_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => i64::from(i.days) * 86_400_000_000 + i64::from(i.milliseconds) * 1_000,
        other => return plan_err!("window(): {name} must be a constant duration like '10 minutes', got {other}"),
    };
    Ok(us)
}

/// A window specification in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    size: i64,
    slide: i64,
    start: i64,
}

impl Spec {
    fn from_args(args: &[ScalarValue]) -> DfResult<Spec> {
        let size = duration_arg("the window duration", &args[0])?;
        let slide = match args.get(1) {
            Some(v) => duration_arg("the slide duration", v)?,
            None => size,
        };
        let start = match args.get(2) {
            Some(v) => duration_arg("the start time", v)?,
            None => 0,
        };
        if size <= 0 || slide <= 0 {
            return plan_err!("window(): durations must be positive");
        }
        if slide > size {
            return plan_err!("window(): the slide duration must not exceed the window duration");
        }
        if start.abs() >= slide {
            return plan_err!("window(): the start time must be less than the slide duration");
        }
        Ok(Spec { size, slide, start })
    }

    /// The latest window start at or before `ts`.
    fn last_start(&self, ts: i64) -> i64 {
        ts - (ts - self.start).rem_euclid(self.slide)
    }

    /// Starts of the windows holding `ts`, latest first.
    fn starts(&self, ts: i64) -> impl Iterator<Item = i64> + '_ {
        let last = self.last_start(ts);
        let n = (self.size + self.slide - 1) / self.slide;
        (0..n).map(move |i| last - i * self.slide).filter(move |s| ts < s + self.size)
    }
}

/// Microseconds per value of `unit`, as (multiply, divide).
fn scale(unit: &TimeUnit) -> (i64, i64) {
    match unit {
        TimeUnit::Second => (1_000_000, 1),
        TimeUnit::Millisecond => (1_000, 1),
        TimeUnit::Microsecond => (1, 1),
        TimeUnit::Nanosecond => (1, 1_000),
    }
}

fn window_fields(ts: &DataType) -> Fields {
    Fields::from(vec![Field::new("start", ts.clone(), true), Field::new("end", ts.clone(), true)])
}

/// `window(...)` (one window per row; a sliding window is rewritten before it runs) or
/// `__sluice_windows(...)` (every window holding the row, as a list).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowUdf {
    list: bool,
    signature: Signature,
}

impl WindowUdf {
    fn new(list: bool) -> Self {
        WindowUdf { list, signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for WindowUdf {
    fn name(&self) -> &str {
        if self.list { WINDOWS } else { WINDOW }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !(2..=4).contains(&args.len()) {
            return plan_err!(
                "window(timeColumn, windowDuration[, slideDuration[, startTime]]) takes 2 to 4 arguments"
            );
        }
        let DataType::Timestamp(..) = &args[0] else {
            return plan_err!(
                "window(): the time column must be a TIMESTAMP, not {}; convert it first, e.g. to_timestamp(col)",
                args[0]
            );
        };
        let st = DataType::Struct(window_fields(&args[0]));
        Ok(if self.list { DataType::List(Arc::new(Field::new_list_field(st, true))) } else { st })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let mut consts = Vec::new();
        for a in &args.args[1..] {
            match a {
                ColumnarValue::Scalar(s) => consts.push(s.clone()),
                ColumnarValue::Array(_) => return exec_err!("window(): durations must be constants"),
            }
        }
        let spec = Spec::from_args(&consts)?;
        let ts_type = args.args[0].data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return exec_err!("window(): the time column must be a TIMESTAMP, not {ts_type}");
        };
        let (mul, div) = scale(unit);
        let to_us = |v: i64| if div > 1 { v.div_euclid(div) } else { v * mul };
        let from_us = |v: i64| if div > 1 { v * div } else { v / mul };
        let ts = args.args[0].to_array(n)?;
        let raw = arrow_cast::cast(&ts, &DataType::Int64)?;
        let raw = raw
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("timestamps as Int64".into()))?;
        let fields = window_fields(&ts_type);
        let part =
            |v: Vec<Option<i64>>| -> DfResult<ArrayRef> { Ok(arrow_cast::cast(&Int64Array::from(v), &ts_type)?) };
        if !self.list {
            if spec.slide != spec.size {
                return exec_err!(
                    "window(): a sliding window gives a row several windows; use it in GROUP BY or as a column of SELECT"
                );
            }
            let starts: Vec<Option<i64>> = raw.iter().map(|v| v.map(|t| from_us(spec.last_start(to_us(t))))).collect();
            let ends: Vec<Option<i64>> = starts.iter().map(|s| s.map(|s| s + from_us(spec.size))).collect();
            let nulls = ts.logical_nulls();
            let st = StructArray::try_new(fields, vec![part(starts)?, part(ends)?], nulls)?;
            return Ok(ColumnarValue::Array(Arc::new(st)));
        }
        let item = StructBuilder::new(
            window_fields(&DataType::Int64),
            vec![
                Box::new(PrimitiveBuilder::<Int64Type>::new()) as Box<dyn arrow_array::builder::ArrayBuilder>,
                Box::new(PrimitiveBuilder::<Int64Type>::new()),
            ],
        );
        let mut out = ListBuilder::new(item);
        for v in raw.iter() {
            let Some(t) = v else {
                out.append_null();
                continue;
            };
            let t = to_us(t);
            for s in spec.starts(t) {
                let st = out.values();
                append_i64(st, 0, from_us(s));
                append_i64(st, 1, from_us(s + spec.size));
                st.append(true);
            }
            out.append(true);
        }
        // Built as Int64 fields, then given the time column's type.
        let list = out.finish();
        let item = DataType::Struct(fields);
        let target = DataType::List(Arc::new(Field::new_list_field(item, true)));
        Ok(ColumnarValue::Array(arrow_cast::cast(&list, &target)?))
    }
}

fn append_i64(st: &mut StructBuilder, i: usize, v: i64) {
    if let Some(b) = st.field_builder::<PrimitiveBuilder<Int64Type>>(i) {
        b.append_value(v);
    }
}

fn is_window_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == WINDOW || f.func.name() == SESSION_WINDOW)
}

/// The constant arguments of a `window(...)` call.
fn spec_of(f: &ScalarFunction) -> DfResult<Spec> {
    let mut consts = Vec::new();
    for a in &f.args[1..] {
        match a {
            Expr::Literal(v, _) => consts.push(v.clone()),
            other => return plan_err!("window(): durations must be constants, got {other}"),
        }
    }
    Spec::from_args(&consts)
}

/// Rewrites every `window(...)` in projections and GROUP BYs as Spark plans it: rows with a
/// null time column are dropped below the node, and a sliding window becomes a column
/// expanded (unnested) below it. Returns the new plan and, for each column it added, the time
/// column its windows come from.
pub(super) fn rewrite(plan: LogicalPlan) -> DfResult<(LogicalPlan, Vec<(String, Expr)>)> {
    let mut added: Vec<(String, Expr)> = Vec::new();
    let plan = plan
        .transform_up(|node| {
            let exprs: Vec<Expr> = match &node {
                LogicalPlan::Projection(p) => p.expr.clone(),
                LogicalPlan::Aggregate(a) => a.group_expr.clone(),
                _ => return Ok(Transformed::no(node)),
            };
            let mut calls: Vec<Expr> = Vec::new();
            for e in &exprs {
                e.apply(|x| {
                    if is_window_call(x) && !calls.contains(x) {
                        calls.push(x.clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
            if calls.is_empty() {
                return Ok(Transformed::no(node));
            }
            let input = node.inputs()[0].clone();
            let mut times: Vec<Expr> = Vec::new();
            let mut sliding: Vec<(Expr, String)> = Vec::new();
            for c in &calls {
                let Expr::ScalarFunction(f) = c else { continue };
                if !times.contains(&f.args[0]) {
                    times.push(f.args[0].clone());
                }
                if f.func.name() == SESSION_WINDOW {
                    continue;
                }
                let spec = spec_of(f)?;
                if spec.slide != spec.size {
                    let name = format!("{WINDOW_COLUMN}{}", added.len());
                    added.push((name.clone(), f.args[0].clone()));
                    sliding.push((c.clone(), name));
                }
            }
            let not_null = times.into_iter().map(|t| t.is_not_null()).reduce(Expr::and);
            let mut b = LogicalPlanBuilder::from(input);
            if let Some(p) = not_null {
                b = b.filter(p)?;
            }
            for (call, name) in &sliding {
                let Expr::ScalarFunction(f) = call else { continue };
                let mut cols: Vec<Expr> = b.schema().columns().into_iter().map(Expr::Column).collect();
                let windows = ScalarUDF::from(WindowUdf::new(true)).call(f.args.clone());
                cols.push(windows.alias(name));
                b = b.project(cols)?.unnest_column(Column::from_name(name))?;
            }
            let input = Arc::new(b.build()?);
            let replace = |e: Expr| -> DfResult<Expr> {
                let original = e.schema_name().to_string();
                let e = e
                    .transform(|x| {
                        Ok(match sliding.iter().find(|(c, _)| *c == x) {
                            Some((_, name)) => Transformed::yes(Expr::Column(Column::from_name(name))),
                            None => Transformed::no(x),
                        })
                    })?
                    .data;
                e.alias_if_changed(original)
            };
            let node = match node {
                LogicalPlan::Projection(p) => {
                    let exprs = p.expr.into_iter().map(replace).collect::<DfResult<Vec<_>>>()?;
                    LogicalPlan::Projection(Projection::try_new(exprs, input)?)
                }
                LogicalPlan::Aggregate(a) => {
                    let group = a.group_expr.into_iter().map(replace).collect::<DfResult<Vec<_>>>()?;
                    LogicalPlan::Aggregate(Aggregate::try_new(input, group, a.aggr_expr)?)
                }
                other => other,
            };
            Ok(Transformed::yes(node))
        })?
        .data;
    Ok((plan, added))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn tumbling_and_sliding_bounds() {
        let tumbling = Spec { size: 10 * MIN, slide: 10 * MIN, start: 0 };
        // 12:07 lies in [12:00, 12:10); so does 12:00 itself; 12:10 starts the next one.
        let at = |h: i64, m: i64| h * 60 * MIN + m * MIN;
        assert_eq!(tumbling.starts(at(12, 7)).collect::<Vec<_>>(), vec![at(12, 0)]);
        assert_eq!(tumbling.starts(at(12, 0)).collect::<Vec<_>>(), vec![at(12, 0)]);
        assert_eq!(tumbling.starts(at(12, 10)).collect::<Vec<_>>(), vec![at(12, 10)]);
        // Before 1970 windows still align to the epoch.
        assert_eq!(tumbling.last_start(-1), -10 * MIN);
        // Sliding: 10-minute windows every 5 minutes: 12:07 is in [12:05, 12:15) and [12:00, 12:10).
        let sliding = Spec { size: 10 * MIN, slide: 5 * MIN, start: 0 };
        assert_eq!(sliding.starts(at(12, 7)).collect::<Vec<_>>(), vec![at(12, 5), at(12, 0)]);
        // With a start offset of 2 minutes: [12:02, 12:12) and [12:07, 12:17).
        let offset = Spec { size: 10 * MIN, slide: 5 * MIN, start: 2 * MIN };
        assert_eq!(offset.starts(at(12, 7)).collect::<Vec<_>>(), vec![at(12, 7), at(12, 2)]);
        // A slide that does not divide the size: 10-minute windows every 3 minutes.
        let odd = Spec { size: 10 * MIN, slide: 3 * MIN, start: 0 };
        let got: Vec<i64> = odd.starts(at(0, 10)).collect();
        assert!(got.iter().all(|s| *s <= at(0, 10) && at(0, 10) < s + 10 * MIN));
        assert_eq!(got.len(), 3);
    }
}

//! Time functions (and `regexp_replace`) against Apache Spark's own answers on the same rows:
//! `tests/fixtures/spark/time_functions.json`, made once by `time_functions.py` beside it with
//! pyspark 4.3 (session time zone UTC, ANSI on). Every case Spark answered must be answered
//! the same; every case Spark refused (a bad pattern, an unparseable value) must fail here too.

use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};
use serde_json::Value;
use sluice::Trigger;

use crate::*;

/// What Spark answers that Sluice does not do yet, refused with a message (never a different
/// answer): intervals with a `DAY TO SECOND` qualifier.
const NOT_YET: &[&str] = &["DAY TO SECOND"];

fn fixture() -> Value {
    let path = repo().join("tests/fixtures/spark/time_functions.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// Runs the fixture's view and then `sql` over `rows` (JSON objects), once, to the end.
async fn query(f: &Value, rows: &[&Value], sql: &str) -> sluice::Result<Vec<RecordBatch>> {
    let dir = tempdir("spark-fn");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    put_file(&input, "rows.json", &(lines.join("\n") + "\n"));
    let seen: std::sync::Arc<std::sync::Mutex<Vec<RecordBatch>>> = Default::default();
    let s2 = seen.clone();
    let q = session()
        .read_stream()
        .format("json")
        .schema(f["input_ddl"].as_str().expect("ddl"))
        .load_path(&input)
        .sql(f["view_sql"].as_str().expect("view"))
        .sql(sql)
        .write_stream()
        .foreach_batch(move |_: &sluice::BatchInfo, batches: Vec<RecordBatch>| {
            s2.lock().expect("lock").extend(batches);
            Ok(())
        })
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    q.await_termination().await?;
    let out = seen.lock().expect("lock").clone();
    Ok(out)
}

/// A column as the fixture encodes values: strings, integers, doubles, booleans, timestamps in
/// microseconds and dates in days since the epoch; null as null.
fn encode(col: &ArrayRef, ty: &str) -> Vec<Value> {
    let cast = |t: &DataType| arrow_cast::cast(col, t).unwrap_or_else(|e| panic!("{} as {t}: {e}", col.data_type()));
    let n = col.len();
    match ty {
        "string" => {
            let a = cast(&DataType::Utf8);
            let a = a.as_any().downcast_ref::<StringArray>().expect("strings");
            (0..n).map(|i| if a.is_null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
        }
        "double" => {
            let a = cast(&DataType::Float64);
            let a = a.as_any().downcast_ref::<Float64Array>().expect("doubles");
            (0..n).map(|i| if a.is_null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
        }
        "boolean" => {
            let a = cast(&DataType::Boolean);
            let a = a.as_any().downcast_ref::<BooleanArray>().expect("booleans");
            (0..n).map(|i| if a.is_null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
        }
        _ => {
            let ints = match (ty, col.data_type()) {
                ("timestamp", DataType::Timestamp(_, tz)) => {
                    let us = cast(&DataType::Timestamp(TimeUnit::Microsecond, tz.clone()));
                    arrow_cast::cast(&us, &DataType::Int64).expect("micros")
                }
                ("timestamp", other) => panic!("expected a timestamp, got {other}"),
                ("date", DataType::Date32) => arrow_cast::cast(col, &DataType::Int64).expect("days"),
                ("date", other) => panic!("expected a date, got {other}"),
                _ => cast(&DataType::Int64),
            };
            let a = ints.as_any().downcast_ref::<Int64Array>().expect("ints");
            (0..n).map(|i| if a.is_null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
        }
    }
}

fn same(got: &Value, want: &Value) -> bool {
    // `date - date`: Spark's `INTERVAL 'N' DAY` is Sluice's N days.
    if let (Some(g), Some(w)) = (got.as_str(), want.as_str())
        && let Some(days) = w.strip_prefix("INTERVAL '").and_then(|r| r.strip_suffix("' DAY"))
    {
        return g == days;
    }
    match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) if got.is_f64() || want.is_f64() => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
        _ => got == want,
    }
}

/// The input columns that tell rows apart, as the fixture gives them.
const ROW_ID: [(&str, &str); 6] =
    [("s", "string"), ("tsf", "string"), ("df", "string"), ("n", "int"), ("ts_s", "string"), ("d_s", "string")];

fn row_id(values: impl Iterator<Item = Value>) -> String {
    values.map(|v| v.to_string()).collect::<Vec<_>>().join("|")
}

/// Runs each case (`expr`, `type`, `values`, one per row of `rows`) as its own query over
/// `rows` and compares, matching output rows to input rows (a stream keeps no row order).
async fn check_values(f: &Value, rows: &[&Value], cases: &[(&Value, Vec<Value>)], failures: &mut Vec<String>) {
    let ids: Vec<String> = rows.iter().map(|r| row_id(ROW_ID.iter().map(|(c, _)| r[*c].clone()))).collect();
    let id_cols = ROW_ID.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
    for (c, want) in cases {
        let expr = c["expr"].as_str().expect("expr");
        let sql = format!("SELECT {expr} AS c, {id_cols} FROM input");
        let out = match query(f, rows, &sql).await {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{expr}: failed: {e}"));
                continue;
            }
        };
        let mut got: Vec<Option<Value>> = vec![None; rows.len()];
        let mut extra = 0;
        for b in &out {
            let values = encode(b.column(0), c["type"].as_str().expect("type"));
            let id_values: Vec<Vec<Value>> =
                ROW_ID.iter().enumerate().map(|(i, (_, t))| encode(b.column(i + 1), t)).collect();
            for (r, v) in values.into_iter().enumerate() {
                let id = row_id(id_values.iter().map(|col| col[r].clone()));
                match ids.iter().position(|x| *x == id) {
                    Some(at) if got[at].is_none() => got[at] = Some(v),
                    _ => extra += 1,
                }
            }
        }
        let ok = extra == 0 && got.iter().zip(want).all(|(g, w)| g.as_ref().is_some_and(|g| same(g, w)));
        if !ok {
            failures.push(format!("{expr}: Sluice {got:?} (+{extra} unmatched rows), Spark {want:?}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_functions_give_sparks_answers() {
    let f = fixture();
    let input: Vec<&Value> = f["input"].as_array().expect("input").iter().collect();
    let cases = f["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    let (mut plain, mut window_cases) = (Vec::new(), Vec::new());
    let mut checked = 0;
    for c in cases {
        let Some(expr) = c["expr"].as_str() else { continue };
        if NOT_YET.iter().any(|p| expr.contains(p)) {
            // Refused with a message, not answered differently.
            let err = query(&f, &input, &format!("SELECT {expr} AS c FROM input")).await.err();
            assert!(err.is_some(), "{expr}: not supported yet, so it must be refused");
            continue;
        }
        checked += 1;
        if let Some(msg) = c["error"].as_str() {
            let got = query(&f, &input, &format!("SELECT {expr} AS c FROM input")).await;
            if got.is_ok() {
                failures.push(format!("{expr}: Spark refuses it ({msg}); Sluice answered"));
            }
            continue;
        }
        let values: Vec<Value> = c["values"].as_array().expect("values").clone();
        if let Some(errs) = c["row_errors"].as_array() {
            // Rows Spark refuses (ANSI) fail the query here too; the others give its answers.
            let ok: Vec<usize> = (0..input.len()).filter(|i| errs[*i].is_null()).collect();
            let rows: Vec<&Value> = ok.iter().map(|i| input[*i]).collect();
            let want: Vec<Value> = ok.iter().map(|i| values[*i].clone()).collect();
            check_values(&f, &rows, &[(c, want)], &mut failures).await;
            if let Some(bad) = (0..input.len()).find(|i| !errs[*i].is_null())
                && query(&f, &[input[bad]], &format!("SELECT {expr} AS c FROM input")).await.is_ok()
            {
                failures.push(format!("{expr}: Spark refuses row {bad} ({}); Sluice answered", errs[bad]));
            }
            continue;
        }
        match c["rows_not_returned"].as_array() {
            // A window of a null time is no row at all, in Spark and here.
            Some(skip) => {
                let skip: Vec<usize> = skip.iter().filter_map(Value::as_u64).map(|i| i as usize).collect();
                let want = values.iter().enumerate().filter(|(i, _)| !skip.contains(i)).map(|(_, v)| v.clone());
                window_cases.push((c, want.collect::<Vec<_>>()));
            }
            None => plain.push((c, values)),
        }
    }
    check_values(&f, &input, &plain, &mut failures).await;
    let skip: Vec<&Value> = input.iter().copied().filter(|r| !r["ts_s"].is_null()).collect();
    check_values(&f, &skip, &window_cases, &mut failures).await;
    // Whole queries Spark answered with several rows per input row (sliding windows).
    for c in cases.iter().filter(|c| c["expr_rows"].is_string()) {
        checked += 1;
        let sql = c["expr_rows"].as_str().expect("sql").replace("FROM v)", "FROM input)");
        // A stream cannot be sorted: compare sorted.
        let sql = sql.split(" ORDER BY").next().expect("sql").to_string();
        let types: Vec<&str> =
            c["columns"].as_array().expect("columns").iter().map(|t| t["type"].as_str().expect("type")).collect();
        let mut want: Vec<Vec<Value>> =
            c["rows"].as_array().expect("rows").iter().map(|r| r.as_array().expect("row").clone()).collect();
        want.sort_by_key(|r| r.iter().map(Value::to_string).collect::<Vec<_>>());
        match query(&f, &input, &sql).await {
            Err(e) => failures.push(format!("{sql}: failed: {e}")),
            Ok(out) => {
                let mut got: Vec<Vec<Value>> = Vec::new();
                for b in &out {
                    let cols: Vec<Vec<Value>> = types.iter().enumerate().map(|(i, t)| encode(b.column(i), t)).collect();
                    got.extend((0..b.num_rows()).map(|r| cols.iter().map(|c| c[r].clone()).collect()));
                }
                got.sort_by_key(|r| r.iter().map(Value::to_string).collect::<Vec<_>>());
                if got != want {
                    failures.push(format!("{sql}: Sluice {got:?}, Spark {want:?}"));
                }
            }
        }
    }
    assert!(checked > 150, "only {checked} cases checked");
    assert!(failures.is_empty(), "{} of {checked} cases differ from Spark:\n{}", failures.len(), failures.join("\n"));
}

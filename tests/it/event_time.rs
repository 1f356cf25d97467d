//! Event time: watermarks, tumbling and sliding windows, append / update / complete modes with
//! late rows dropped and state evicted, no-data batches, restarts, and Spark's refusals.
//!
//! The expected windows below are worked out by hand from the events (10-minute tumbling
//! windows, a 10-minute watermark, one file per batch). As in Spark (which allows several
//! stateful operators), a batch drops rows whose window ended at or before the *previous*
//! batch's watermark, and closes (emits, evicts) windows that end at or before its own:
//!
//! | batch | watermark (late before) | events (time key value)         | dropped | closes        | max   |
//! |-------|-------------------------|---------------------------------|---------|---------------|-------|
//! | 0     | 0 (0)                   | 12:02 a 1, 12:07 a 2, 12:14 b 3 |         |               | 12:14 |
//! | 1     | 12:04 (0)               | 12:09 a 4, 12:21 b 5, 11:55 a 6 |         | [11:50) a     | 12:21 |
//! | 2     | 12:11 (12:04)           | 12:12 b 7, 12:08 a 8, 12:35 c 9 |         | [12:00) a     | 12:35 |
//! | 3     | 12:25 (12:11)           | 12:26 b 10, 12:50 a 11, 12:01 a 12 | 12:01 a | [12:10) b   | 12:50 |
//! | 4     | 12:40 (12:25)           | (no data: the watermark moved)  |         | [12:20) b, [12:30) c |  |

use std::collections::BTreeMap;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::DataType;
use sluice::{OutputMode, Trigger};

use crate::*;

const SCHEMA: &str = "ts TIMESTAMP, key STRING, value BIGINT";
const COUNT_SUM: &str = "SELECT window(ts, '10 minutes'), key, count(*) AS count, sum(value) AS sum FROM input GROUP BY window(ts, '10 minutes'), key";

fn event(hm: &str, key: &str, value: i64) -> String {
    format!(r#"{{"ts": "2026-01-01T{hm}:00Z", "key": "{key}", "value": {value}}}"#)
}

fn files() -> Vec<Vec<String>> {
    vec![
        vec![event("12:02", "a", 1), event("12:07", "a", 2), event("12:14", "b", 3)],
        vec![event("12:09", "a", 4), event("12:21", "b", 5), event("11:55", "a", 6)],
        vec![event("12:12", "b", 7), event("12:08", "a", 8), event("12:35", "c", 9)],
        vec![event("12:26", "b", 10), event("12:50", "a", 11), event("12:01", "a", 12)],
    ]
}

/// Minutes after midnight, as microseconds since the epoch on 2026-01-01.
fn at(h: i64, m: i64) -> i64 {
    const DAY: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    DAY + (h * 60 + m) * 60_000_000
}

/// (window start, window end, key, count, sum).
type Row = (i64, i64, String, i64, i64);

fn ints(b: &RecordBatch, c: &arrow_array::ArrayRef) -> Vec<i64> {
    let _ = b;
    let v = arrow_cast::cast(c, &DataType::Int64).expect("cast");
    let v = v.as_any().downcast_ref::<Int64Array>().expect("ints");
    (0..v.len()).map(|i| v.value(i)).collect()
}

/// Rows of `window, key, count, sum` batches, sorted.
fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let w = b.column(0).as_any().downcast_ref::<StructArray>().expect("window is a struct");
        assert_eq!(b.schema().field(0).name(), "window", "Spark names the column `window`");
        let (start, end) = (ints(b, w.column(0)), ints(b, w.column(1)));
        let key = b.column(1).as_any().downcast_ref::<StringArray>().expect("key");
        let (count, sum) = (ints(b, b.column(2)), ints(b, b.column(3)));
        for i in 0..b.num_rows() {
            out.push((start[i], end[i], key.value(i).to_string(), count[i], sum[i]));
        }
    }
    out.sort();
    out
}

fn row(from: (i64, i64), key: &str, count: i64, sum: i64) -> Row {
    (at(from.0, from.1), at(from.0, from.1 + 10), key.to_string(), count, sum)
}

type Seen = std::sync::Arc<std::sync::Mutex<BTreeMap<u64, (Option<i64>, Vec<RecordBatch>)>>>;

struct Run {
    /// Rows emitted per batch id.
    emitted: BTreeMap<u64, Vec<Row>>,
    progress: Vec<sluice::StreamingQueryProgress>,
}

/// Runs `sql` after a 10-minute watermark on `ts` over the files in `input` (one per batch)
/// until all available data is processed.
async fn run(
    input: &std::path::Path,
    ckpt: Option<&std::path::Path>,
    sql: &str,
    mode: OutputMode,
) -> sluice::Result<Run> {
    let (batches, progress) =
        run_with(input, SCHEMA, ckpt, mode, |df| df.with_watermark("ts", "10 minutes").sql(sql)).await?;
    let emitted = batches.iter().map(|(b, batches)| (*b, rows(batches))).collect();
    Ok(Run { emitted, progress })
}

/// Runs the steps `steps` adds over the JSON files in `input` (one per batch) to the end:
/// what each batch emitted, and the progress of each.
async fn run_with(
    input: &std::path::Path,
    schema: &str,
    ckpt: Option<&std::path::Path>,
    mode: OutputMode,
    steps: impl FnOnce(sluice::StreamingDataFrame) -> sluice::StreamingDataFrame,
) -> sluice::Result<(BTreeMap<u64, Vec<RecordBatch>>, Vec<sluice::StreamingQueryProgress>)> {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let df = session().read_stream().format("json").schema(schema).option("maxFilesPerTrigger", 1).load_path(input);
    let mut w = steps(df)
        .write_stream()
        .foreach_batch(move |info: &sluice::BatchInfo, batches: Vec<RecordBatch>| {
            s2.lock().expect("lock").insert(info.batch_id, (info.watermark_ms, batches));
            Ok(())
        })
        .output_mode(mode)
        .trigger(Trigger::AvailableNow);
    if let Some(c) = ckpt {
        w = w.option("checkpointLocation", c.display());
    }
    let q = w.start().await?;
    q.await_termination().await?;
    let seen = seen.lock().expect("lock").clone();
    let progress = q.recent_progress();
    // The sink saw each batch's watermark, as progress reports it.
    for p in &progress {
        if let (Some((Some(w), _)), Some(text)) = (seen.get(&p.batch_id), p.event_time.get("watermark")) {
            let ms = chrono_like_ms(text);
            assert_eq!(*w, ms, "batch {}: the sink's watermark is the batch's", p.batch_id);
        }
    }
    let batches = seen.into_iter().map(|(b, (_, batches))| (b, batches)).collect();
    Ok((batches, progress))
}

/// `2026-01-01T12:04:00.000Z` (or the epoch) as milliseconds: the days since 2026-01-01 are
/// not needed here, only times on that day or the epoch itself.
fn chrono_like_ms(text: &str) -> i64 {
    if text.starts_with("1970-01-01T00:00:00.000Z") {
        return 0;
    }
    let (date, time) = text.split_once('T').expect("a timestamp");
    assert_eq!(date, "2026-01-01", "{text}");
    let t: Vec<i64> = time.trim_end_matches('Z').split([':', '.']).map(|p| p.parse().expect("number")).collect();
    at(t[0], t[1]) / 1000 + t[2] * 1000 + t[3]
}

fn write_files(input: &std::path::Path, files: &[Vec<String>], from: usize) {
    std::fs::create_dir_all(input).expect("mkdir");
    for (i, lines) in files.iter().enumerate() {
        put_file(input, &format!("batch-{:02}.json", from + i), &(lines.join("\n") + "\n"));
        // Distinct modification times keep the files in order.
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
}

fn non_empty(emitted: &BTreeMap<u64, Vec<Row>>) -> BTreeMap<u64, Vec<Row>> {
    emitted.iter().filter(|(_, r)| !r.is_empty()).map(|(b, r)| (*b, r.clone())).collect()
}

fn append_expected() -> BTreeMap<u64, Vec<Row>> {
    BTreeMap::from([
        (1, vec![row((11, 50), "a", 1, 6)]),
        (2, vec![row((12, 0), "a", 4, 15)]),
        (3, vec![row((12, 10), "b", 2, 10)]),
        (4, vec![row((12, 20), "b", 2, 15), row((12, 30), "c", 1, 9)]),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_in_append_mode_emit_once_when_the_watermark_passes() {
    let dir = tempdir("et-append");
    let input = dir.join("in");
    write_files(&input, &files(), 0);
    let r = run(&input, None, COUNT_SUM, OutputMode::Append).await.expect("run");
    assert_eq!(non_empty(&r.emitted), append_expected());
    assert_eq!(r.progress.len(), 5, "four data batches and one no-data batch for the last watermark move");
    assert_eq!(r.progress[4].num_input_rows, 0);
    let wm: Vec<&str> = r.progress.iter().map(|p| p.event_time["watermark"].as_str()).collect();
    assert_eq!(
        wm,
        [
            "1970-01-01T00:00:00.000Z",
            "2026-01-01T12:04:00.000Z",
            "2026-01-01T12:11:00.000Z",
            "2026-01-01T12:25:00.000Z",
            "2026-01-01T12:40:00.000Z"
        ]
    );
    assert_eq!(r.progress[1].event_time["max"], "2026-01-01T12:21:00.000Z");
    assert_eq!(r.progress[1].event_time["min"], "2026-01-01T11:55:00.000Z");
    assert!(!r.progress[4].event_time.contains_key("max"), "a no-data batch saw no event time");
    let op = |i: usize| &r.progress[i].state_operators[0];
    let dropped: Vec<u64> = (0..5).map(|i| op(i).num_rows_dropped_by_watermark).collect();
    assert_eq!(dropped, [0, 0, 0, 1, 0]);
    let removed: Vec<u64> = (0..5).map(|i| op(i).num_rows_removed).collect();
    assert_eq!(removed, [0, 1, 1, 1, 2]);
    let total: Vec<u64> = (0..5).map(|i| op(i).num_rows_total).collect();
    assert_eq!(total, [2, 3, 3, 3, 1], "state shrinks as windows close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_emits_changes_and_evicts_closed_windows_and_complete_keeps_all() {
    let dir = tempdir("et-update");
    let input = dir.join("in");
    write_files(&input, &files(), 0);
    let r = run(&input, None, COUNT_SUM, OutputMode::Update).await.expect("update run");
    let want = BTreeMap::from([
        (0, vec![row((12, 0), "a", 2, 3), row((12, 10), "b", 1, 3)]),
        (1, vec![row((11, 50), "a", 1, 6), row((12, 0), "a", 3, 7), row((12, 20), "b", 1, 5)]),
        (2, vec![row((12, 0), "a", 4, 15), row((12, 10), "b", 2, 10), row((12, 30), "c", 1, 9)]),
        (3, vec![row((12, 20), "b", 2, 15), row((12, 50), "a", 1, 11)]),
    ]);
    assert_eq!(non_empty(&r.emitted), want);
    let total: Vec<u64> = r.progress.iter().map(|p| p.state_operators[0].num_rows_total).collect();
    assert_eq!(total, [2, 3, 3, 3, 1], "update mode evicts what the watermark closed");

    // Complete mode keeps every window and takes late rows too (Spark: the watermark does not
    // drop state in complete mode), and needs no batch without data.
    let r = run(&input, None, COUNT_SUM, OutputMode::Complete).await.expect("complete run");
    assert_eq!(r.progress.len(), 4);
    let last = r.emitted.values().last().expect("output").clone();
    assert_eq!(
        last,
        vec![
            row((11, 50), "a", 1, 6),
            row((12, 0), "a", 5, 27),
            row((12, 10), "b", 2, 10),
            row((12, 20), "b", 2, 15),
            row((12, 30), "c", 1, 9),
            row((12, 50), "a", 1, 11),
        ]
    );
}

/// A restart resumes the watermark from the commit log and the open windows from the state
/// store. Files 0–1 arrive first: batches 0 and 1, then a batch without data (the watermark
/// moved to 12:11) closes [11:50) a and [12:00) a (3, 7). The query stops; files 2–3 arrive;
/// the restarted query runs batch 3 with watermark 12:11 — so 12:08 a is now late and dropped,
/// as it would be in a query that never stopped — batch 4, and a batch without data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_watermark_and_open_windows() {
    let dir = tempdir("et-restart");
    let (input, ckpt) = (dir.join("in"), dir.join("ckpt"));
    let all = files();
    write_files(&input, &all[..2], 0);
    let first = run(&input, Some(&ckpt), COUNT_SUM, OutputMode::Append).await.expect("first run");
    assert_eq!(
        non_empty(&first.emitted),
        BTreeMap::from([(1, vec![row((11, 50), "a", 1, 6)]), (2, vec![row((12, 0), "a", 3, 7)])])
    );
    write_files(&input, &all[2..], 2);
    let second = run(&input, Some(&ckpt), COUNT_SUM, OutputMode::Append).await.expect("second run");
    assert_eq!(
        non_empty(&second.emitted),
        BTreeMap::from([
            (4, vec![row((12, 10), "b", 2, 10)]),
            (5, vec![row((12, 20), "b", 2, 15), row((12, 30), "c", 1, 9)]),
        ])
    );
    let wm: Vec<&str> = second.progress.iter().map(|p| p.event_time["watermark"].as_str()).collect();
    assert_eq!(wm, ["2026-01-01T12:11:00.000Z", "2026-01-01T12:25:00.000Z", "2026-01-01T12:40:00.000Z"]);
    let dropped: Vec<u64> =
        second.progress.iter().map(|p| p.state_operators[0].num_rows_dropped_by_watermark).collect();
    assert_eq!(dropped, [1, 1, 0], "12:08 a and 12:01 a are late");
    let last = second.progress.last().expect("progress");
    assert_eq!(last.state_operators[0].num_rows_total, 1);
    let state = sluice::read_state(&ckpt, None, None).await.expect("state");
    assert_eq!(state.num_rows(), 1, "only [12:50, 13:00) a is still open: evicted windows are gone from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_count_a_row_in_every_window_that_holds_it() {
    let dir = tempdir("et-sliding");
    let input = dir.join("in");
    write_files(&input, &files(), 0);
    let sql = "SELECT window(ts, '10 minutes', '5 minutes'), key, count(*) AS count, sum(value) AS sum FROM input GROUP BY window(ts, '10 minutes', '5 minutes'), key";
    let r = run(&input, None, sql, OutputMode::Complete).await.expect("run");
    let last = r.emitted.values().last().expect("output").clone();
    // Each event lies in two windows: e.g. 12:02 in [11:55, 12:05) and [12:00, 12:10).
    let a_at_noon: Vec<&Row> = last.iter().filter(|r| r.2 == "a" && r.0 == at(12, 0)).collect();
    assert_eq!(a_at_noon, vec![&(at(12, 0), at(12, 10), "a".to_string(), 5, 27)]);
    let a_before: Vec<&Row> = last.iter().filter(|r| r.2 == "a" && r.0 == at(11, 55)).collect();
    assert_eq!(a_before, vec![&(at(11, 55), at(12, 5), "a".to_string(), 3, 19)]);
    let total: i64 = last.iter().map(|r| r.3).sum();
    assert_eq!(total, 2 * 12, "12 events, each in two windows");
}

/// Starts `df` into a memory sink, which must be refused; returns the error.
async fn refused(df: sluice::StreamingDataFrame, mode: OutputMode, name: &str) -> String {
    let started = df.write_stream().format("memory").query_name(name).output_mode(mode).start().await;
    started.map(|_| ()).expect_err("refused").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_without_a_usable_watermark_is_refused_with_the_allowed_modes() {
    let dir = tempdir("et-refused");
    let input = dir.join("in");
    write_files(&input, &files()[..1], 0);
    let by_key = "SELECT key, count(*) AS count FROM input GROUP BY key";
    let err = run(&input, None, by_key, OutputMode::Append).await.map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("does not group by the watermark's column `ts`"), "{err}");
    assert!(err.contains("update") && err.contains("complete"), "{err}");
    let source = || session().read_stream().format("json").schema(SCHEMA).load_path(&input);
    let no_watermark = refused(source().sql(COUNT_SUM), OutputMode::Append, "et_refused").await;
    assert!(no_watermark.contains("without a watermark"), "{no_watermark}");
    let bad_column = refused(source().with_watermark("key", "10 minutes"), OutputMode::Append, "et_col").await;
    assert!(bad_column.contains("must be a TIMESTAMP"), "{bad_column}");
    let bad_delay = refused(source().with_watermark("ts", "1 month"), OutputMode::Append, "et_delay").await;
    assert!(bad_delay.contains("no fixed length"), "{bad_delay}");
}

/// A long run on the rate source with a moving watermark: windows keep closing, so the state
/// stays a handful of rows while hundreds of windows pass through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_stops_growing_with_a_moving_watermark() {
    let q = session()
        .read_stream()
        .format("rate")
        .option("rowsPerSecond", 2000)
        .load()
        .with_watermark("timestamp", "100 milliseconds")
        .sql("SELECT window(timestamp, '20 milliseconds'), count(*) AS n FROM input GROUP BY window(timestamp, '20 milliseconds')")
        .write_stream()
        .format("noop")
        .output_mode(OutputMode::Append)
        .trigger(Trigger::ProcessingTime(std::time::Duration::from_millis(20)))
        .start()
        .await
        .expect("start");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    q.stop().await;
    q.await_termination().await.expect("run");
    let progress = q.recent_progress();
    assert!(progress.len() > 20, "{} batches", progress.len());
    let ops: Vec<&sluice::StateOperatorProgress> = progress.iter().map(|p| &p.state_operators[0]).collect();
    let removed: u64 = ops.iter().map(|o| o.num_rows_removed).sum();
    let max_total = ops.iter().map(|o| o.num_rows_total).max().unwrap_or(0);
    let emitted: i64 = progress.iter().map(|p| p.sink.num_output_rows).sum();
    assert!(removed >= 100, "windows closed: {removed}");
    assert_eq!(emitted, removed as i64, "append mode emits each window as it is evicted");
    assert!(max_total <= 40, "state held at most {max_total} windows while {removed} passed through");
}

/// A fixture made once by Apache Spark (`tests/fixtures/spark/*.py`, pyspark 4.3, `local[2]`,
/// UTC, one file per trigger): the same files through Sluice give the same rows in the same
/// batches, the same watermarks, and the same state figures.
async fn matches_spark(fixture: &str, mode: OutputMode) {
    // Spark counts the sessions a merge replaces as removed too; Sluice counts the state rows
    // evicted: the rows, watermarks, totals and late rows must agree.
    let sessions = fixture.starts_with("session");
    let path = repo().join("tests/fixtures/spark").join(fixture);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let dir = tempdir(&format!("et-spark-{fixture}"));
    let input = dir.join("in");
    let files: Vec<Vec<String>> = f["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|pair| pair[1].as_array().expect("lines").iter().map(|l| l.as_str().expect("line").to_string()).collect())
        .collect();
    write_files(&input, &files, 0);
    let window = f["window_expr"].as_str().expect("window_expr");
    let sql = format!(
        "SELECT {window} AS window, key, count(*) AS count, sum(value) AS sum FROM input GROUP BY {window}, key"
    );
    let r = run(&input, None, &sql, mode).await.expect("run");
    let batches = f["batches"].as_array().expect("batches");
    assert_eq!(r.progress.len(), batches.len(), "Spark ran {} batches (with no-data batches)", batches.len());
    for (b, p) in batches.iter().zip(&r.progress) {
        let id = b["batch_id"].as_u64().expect("id");
        let mut want: Vec<Row> = b["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let i = |k: usize| r[k].as_i64().expect("int");
                (i(0), i(1), r[2].as_str().expect("key").to_string(), i(3), i(4))
            })
            .collect();
        want.sort();
        let got = r.emitted.get(&id).cloned().unwrap_or_default();
        assert_eq!(got, want, "{fixture}: batch {id}");
        assert_eq!(p.num_input_rows, b["num_input_rows"].as_u64().expect("n"), "{fixture}: batch {id} input rows");
        assert_eq!(p.event_time["watermark"], b["watermark"].as_str().expect("wm"), "{fixture}: batch {id} watermark");
        let (op, s) = (&p.state_operators[0], &b["state"]);
        let figure = |k: &str| s[k].as_u64().expect("figure");
        assert_eq!(op.num_rows_total, figure("numRowsTotal"), "{fixture}: batch {id} numRowsTotal");
        if !sessions {
            assert_eq!(op.num_rows_removed, figure("numRowsRemoved"), "{fixture}: batch {id} numRowsRemoved");
        }
        assert_eq!(
            op.num_rows_dropped_by_watermark,
            figure("numRowsDroppedByWatermark"),
            "{fixture}: batch {id} numRowsDroppedByWatermark"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_count_and_sum_match_spark_in_append_and_update_mode() {
    matches_spark("windowed_append.json", OutputMode::Append).await;
    matches_spark("windowed_update.json", OutputMode::Update).await;
    matches_spark("windowed_sliding_append.json", OutputMode::Append).await;
}

/// Spark's `dropDuplicates(["id", "ts"])` and `dropDuplicatesWithinWatermark(["id"])` after a
/// 10-minute watermark, on the files of `tests/fixtures/spark/dedup.json` (made by `dedup.py`
/// with pyspark 4.3): the same rows in the same batches, and the same state figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_matches_spark() {
    let path = repo().join("tests/fixtures/spark/dedup.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let files: Vec<Vec<String>> = f["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|pair| pair[1].as_array().expect("lines").iter().map(|l| l.as_str().expect("line").to_string()).collect())
        .collect();
    for variant in f["variants"].as_array().expect("variants") {
        let op = variant["operation"].as_str().expect("operation");
        let dir = tempdir("et-dedup");
        let input = dir.join("in");
        write_files(&input, &files, 0);
        let within = op.starts_with("dropDuplicatesWithinWatermark");
        let schema = f["input_ddl"].as_str().expect("ddl");
        let (batches, progress) = run_with(&input, schema, None, OutputMode::Append, |df| {
            let df = df.with_watermark("ts", "10 minutes");
            if within { df.drop_duplicates_within_watermark(&["id"]) } else { df.drop_duplicates(&["id", "ts"]) }
        })
        .await
        .expect("run");
        let want_batches = variant["batches"].as_array().expect("batches");
        assert_eq!(progress.len(), want_batches.len(), "{op}: Spark ran {} batches", want_batches.len());
        for (b, p) in want_batches.iter().zip(&progress) {
            let id = b["batch_id"].as_u64().expect("id");
            let mut want: Vec<(i64, String, i64)> = b["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    (r[0].as_i64().expect("ts"), r[1].as_str().expect("id").to_string(), r[2].as_i64().expect("v"))
                })
                .collect();
            want.sort();
            let mut got = Vec::new();
            for batch in batches.get(&id).map(Vec::as_slice).unwrap_or_default() {
                let ts = ints(batch, batch.column(0));
                let ids = batch.column(1).as_any().downcast_ref::<StringArray>().expect("id");
                let v = ints(batch, batch.column(2));
                got.extend((0..batch.num_rows()).map(|i| (ts[i], ids.value(i).to_string(), v[i])));
            }
            got.sort();
            assert_eq!(got, want, "{op}: batch {id}");
            assert_eq!(p.event_time["watermark"], b["watermark"].as_str().expect("wm"), "{op}: batch {id} watermark");
            let (o, s) = (&p.state_operators[0], &b["state"]);
            assert_eq!(o.operator_name, s["operatorName"].as_str().expect("name"), "{op}: operator name");
            let figure = |k: &str| s[k].as_u64().expect("figure");
            assert_eq!(o.num_rows_total, figure("numRowsTotal"), "{op}: batch {id} numRowsTotal");
            assert_eq!(o.num_rows_removed, figure("numRowsRemoved"), "{op}: batch {id} numRowsRemoved");
            assert_eq!(o.num_rows_updated, figure("numRowsUpdated"), "{op}: batch {id} numRowsUpdated");
            assert_eq!(
                o.num_rows_dropped_by_watermark,
                figure("numRowsDroppedByWatermark"),
                "{op}: batch {id} numRowsDroppedByWatermark"
            );
        }
    }
}

/// `SELECT DISTINCT` is an aggregation over its columns: update mode emits the rows a batch
/// brings; append mode needs the event time among them and a watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_distinct_is_an_aggregation() {
    let dir = tempdir("et-distinct");
    let input = dir.join("in");
    write_files(&input, &files(), 0);
    let (batches, _) =
        run_with(&input, SCHEMA, None, OutputMode::Update, |df| df.sql("SELECT DISTINCT key FROM input"))
            .await
            .expect("run");
    let keys = |b: u64| -> Vec<String> {
        let mut k: Vec<String> = batches[&b]
            .iter()
            .flat_map(|r| {
                let a = r.column(0).as_any().downcast_ref::<StringArray>().expect("key").clone();
                (0..a.len()).map(move |i| a.value(i).to_string())
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(0), ["a", "b"]);
    assert_eq!(keys(2), ["a", "b", "c"]);
    let err = run_with(&input, SCHEMA, None, OutputMode::Append, |df| df.sql("SELECT DISTINCT key FROM input"))
        .await
        .map(|_| ())
        .expect_err("append without a watermark is refused")
        .to_string();
    assert!(err.contains("without a watermark"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_match_spark_in_append_mode() {
    matches_spark("session_append.json", OutputMode::Append).await;
}

/// Sessions with a per-row gap: a's events 4 minutes apart with a 5-minute gap make one
/// session; b's 8 minutes apart with a 10-minute gap too (with 5 minutes they would be two).
/// Update mode is refused, as in Spark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_with_a_per_row_gap() {
    let dir = tempdir("et-session-gap");
    let input = dir.join("in");
    let events = vec![event("12:00", "a", 1), event("12:04", "a", 2), event("12:00", "b", 3), event("12:08", "b", 4)];
    write_files(&input, &[events], 0);
    let gap = "session_window(ts, CASE WHEN key = 'a' THEN '5 minutes' ELSE '10 minutes' END)";
    let sql =
        format!("SELECT {gap} AS window, key, count(*) AS count, sum(value) AS sum FROM input GROUP BY {gap}, key");
    let r = run(&input, None, &sql, OutputMode::Complete).await.expect("run");
    let last = r.emitted.values().last().expect("output").clone();
    assert_eq!(
        last,
        vec![(at(12, 0), at(12, 9), "a".to_string(), 2, 3), (at(12, 0), at(12, 18), "b".to_string(), 2, 7)]
    );
    let err = run(&input, None, &sql, OutputMode::Update).await.map(|_| ()).expect_err("update is refused").to_string();
    assert!(err.contains("session windows do not support update mode"), "{err}");
}

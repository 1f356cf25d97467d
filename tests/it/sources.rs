//! Sources and plugins beyond the word count: malformed-record modes, CSV, the rate source,
//! JSON parsing in a plugin, the query handle.

use std::time::Duration;

use sluice::{OutputMode, Trigger};

use crate::*;

const EVENTS: &str = r#"{"user":"ann","amount":5,"kind":"buy"}
{"user":"bob","amount":7,"kind":"buy"}
this is not json
{"user":"ann","amount":"lots","kind":"sell"}
{"user":"cy","amount":1,"kind":"sell"}
"#;

async fn json_query(tag: &str, mode: &str, schema: &str) -> (sluice::Session, sluice::StreamingQuery) {
    let dir = tempdir(tag);
    put_file(&dir, "events.json", EVENTS);
    let s = session();
    let q = s
        .read_stream()
        .format("json")
        .schema(schema)
        .option("mode", mode)
        .load_path(&dir)
        .write_stream()
        .format("memory")
        .query_name(tag)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    (s, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_permissive_keeps_malformed_rows_in_the_corrupt_column() {
    let (s, q) =
        json_query("json_perm", "PERMISSIVE", "user STRING, amount BIGINT, kind STRING, _corrupt_record STRING").await;
    q.await_termination().await.expect("ok");
    let (_, rows) = s.memory_table("json_perm").expect("table");
    assert_eq!(total_rows(&rows), 5);
    let corrupt = strings_of(&rows, "_corrupt_record");
    assert_eq!(corrupt.iter().filter(|c| c.is_some()).count(), 2, "{corrupt:?}");
    assert!(corrupt.contains(&Some("this is not json".to_string())));
    let users = strings_of(&rows, "user");
    assert_eq!(users.iter().flatten().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_dropmalformed_drops_and_failfast_fails_naming_the_line() {
    let (s, q) = json_query("json_drop", "DROPMALFORMED", "user STRING, amount BIGINT, kind STRING").await;
    q.await_termination().await.expect("ok");
    let (_, rows) = s.memory_table("json_drop").expect("table");
    assert_eq!(total_rows(&rows), 3);

    let (_, q) = json_query("json_fail", "FAILFAST", "user STRING, amount BIGINT, kind STRING").await;
    let e = q.await_termination().await.expect_err("must fail").to_string();
    assert!(e.contains("events.json line 3") && e.contains("FAILFAST"), "{e}");
}

fn strings_of(rows: &[arrow_array::RecordBatch], col: &str) -> Vec<Option<String>> {
    rows.iter().flat_map(|b| column_strings(b, col)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_source_with_header_and_aggregation() {
    let dir = tempdir("csv");
    put_file(&dir, "a.csv", "user,amount\nann,5\nbob,7\nann,3\n");
    put_file(&dir, "b.csv", "user,amount\ncy,1\nbob,oops\n");
    let s = session();
    let q = s
        .read_stream()
        .format("csv")
        .schema("user STRING, amount BIGINT")
        .option("header", "true")
        .option("mode", "DROPMALFORMED")
        .load_path(&dir)
        .sql("SELECT user, sum(amount) AS total, count(*) AS n FROM input GROUP BY user")
        .write_stream()
        .format("memory")
        .query_name("csv_agg")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("ok");
    let (_, rows) = s.memory_table("csv_agg").expect("table");
    let totals = counts(&rows, "user", "total");
    assert_eq!(totals.get("ann"), Some(&8));
    assert_eq!(totals.get("bob"), Some(&7));
    assert_eq!(totals.get("cy"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_parse_plugin_turns_strings_into_typed_columns() {
    let dir = tempdir("json-plugin");
    put_file(&dir, "e.txt", EVENTS);
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .plugin(
            plugin("json_parse"),
            [("schema", "user STRING, amount BIGINT, kind STRING"), ("mode", "DROPMALFORMED")],
        )
        .sql("SELECT kind, sum(amount) AS total FROM input GROUP BY kind")
        .write_stream()
        .format("memory")
        .query_name("json_plugin")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("ok");
    let (_, rows) = s.memory_table("json_plugin").expect("table");
    let t = counts(&rows, "kind", "total");
    assert_eq!(t.get("buy"), Some(&12));
    assert_eq!(t.get("sell"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_source_is_gapless_and_the_handle_reports_progress() {
    let s = session();
    let q = s
        .read_stream()
        .format("rate")
        .option("rowsPerSecond", 2000)
        .option("numPartitions", 3)
        .load()
        .sql("SELECT value FROM input WHERE value % 2 = 0")
        .write_stream()
        .format("memory")
        .query_name("rate_even")
        .trigger(Trigger::ProcessingTime(Duration::from_millis(100)))
        .start()
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(q.is_active());
    let status = q.status();
    assert!(!status.message.is_empty());
    q.stop().await;
    assert!(!q.is_active());
    assert!(q.exception().is_none());
    let (_, rows) = s.memory_table("rate_even").expect("table");
    let mut values: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_any().downcast_ref::<arrow_array::Int64Array>().expect("i64").clone();
            (0..c.len()).map(move |i| c.value(i)).collect::<Vec<_>>()
        })
        .collect();
    values.sort_unstable();
    assert!(values.len() > 100, "only {} rows", values.len());
    // Every even number from 0, none missing and none twice.
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v, 2 * i as i64);
    }
    let p = q.last_progress().expect("progress");
    let json = serde_json::to_value(&p).expect("json");
    for key in ["id", "runId", "batchId", "numInputRows", "durationMs", "sources", "sink"] {
        assert!(json.get(key).is_some(), "progress lacks {key}: {json}");
    }
    assert!(json["durationMs"].get("triggerExecution").is_some());
    assert_eq!(json["id"].as_str().map(str::to_string), Some(q.id().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_written_by_the_sink_is_read_back_by_the_source_with_its_schema() {
    let dir = tempdir("parquet");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    put_file(&input, "e.json", EVENTS);
    let s = session();
    let q = s
        .read_stream()
        .format("json")
        .schema("user STRING, amount BIGINT, kind STRING")
        .option("mode", "DROPMALFORMED")
        .load_path(&input)
        .write_stream()
        .format("parquet")
        .path(dir.join("pq"))
        .option("checkpointLocation", dir.join("ckpt").display())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("write parquet");
    // No schema given: the parquet source takes it from the files.
    let q = s
        .read_stream()
        .format("parquet")
        .load_path(dir.join("pq"))
        .sql("SELECT kind, sum(amount) AS total FROM input GROUP BY kind")
        .write_stream()
        .format("memory")
        .query_name("pq_back")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("read parquet");
    let (_, rows) = s.memory_table("pq_back").expect("table");
    let t = counts(&rows, "kind", "total");
    assert_eq!(t.get("buy"), Some(&12));
    assert_eq!(t.get("sell"), Some(&1));
}

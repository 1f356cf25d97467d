//! Checkpoints through the Rust API: restart continues where it stopped, a damaged file is
//! reported by name, an incompatible query change is refused, a socket source needs consent,
//! and the checkpoint can be inspected and its state read as a table.

use sluice::{OutputMode, Trigger};

use crate::*;

async fn run_wordcount(
    input: &std::path::Path,
    out: &std::path::Path,
    ckpt: &std::path::Path,
    sql: &str,
) -> sluice::Result<()> {
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .option("maxFilesPerTrigger", 1)
        .load_path(input)
        .plugin(plugin("split_words"), [("column", "value")])
        .sql(sql)
        .write_stream()
        .format("json")
        .path(out)
        .option("checkpointLocation", ckpt.display())
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    q.await_termination().await
}

const COUNT: &str = "SELECT word, count(*) AS count FROM input GROUP BY word";

fn setup(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempdir(tag);
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    put_file(&input, "a.txt", "x y\nx\n");
    put_file(&input, "b.txt", "y z\n");
    (input, dir.join("out"), dir.join("ckpt"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_with_new_files_and_keeps_state_and_id() {
    let (input, out, ckpt) = setup("ckpt-restart");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("first run");
    let report = sluice::inspect_checkpoint(&ckpt).await.expect("inspect");
    assert_eq!(report.batches.len(), 2);
    assert!(report.batches.iter().all(|b| b.committed));
    let id = report.id.clone().expect("id");
    // A new file, a new run: only the new file is read, and counts continue from the state.
    put_file(&input, "c.txt", "x z z\n");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("second run");
    let report = sluice::inspect_checkpoint(&ckpt).await.expect("inspect");
    assert_eq!(report.batches.len(), 3);
    assert_eq!(report.id.as_deref(), Some(id.as_str()), "the query id survives restarts");
    assert_eq!(report.operators.len(), 1);
    assert_eq!(report.operators[0].keys, 3);
    let text = report.to_string();
    assert!(text.contains("committed") && text.contains("logOffset"), "{text}");
    // The state reader gives the state after each batch.
    let state = sluice::read_state(&ckpt, None, None).await.expect("state");
    assert_eq!(state.schema().field(0).name(), "word");
    // The aggregate's state column: DataFusion's name for count(*) and its state field.
    let col = state.schema().field(1).name().clone();
    assert!(col.starts_with("count(") && col.ends_with("[count]"), "{col}");
    let c = counts(std::slice::from_ref(&state), "word", &col);
    assert_eq!(c.get("x"), Some(&3));
    assert_eq!(c.get("z"), Some(&3));
    let after_first = sluice::read_state(&ckpt, None, Some(0)).await.expect("state at 0");
    let c0 = counts(std::slice::from_ref(&after_first), "word", &col);
    assert_eq!(c0.get("x"), Some(&2));
    assert_eq!(c0.get("z"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_corrupt_checkpoint_file_is_reported_by_name() {
    let (input, out, ckpt) = setup("ckpt-corrupt");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("first run");
    let victim = ckpt.join("offsets/1");
    let bytes = std::fs::read(&victim).expect("read");
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).expect("truncate");
    put_file(&input, "c.txt", "q\n");
    let e = run_wordcount(&input, &out, &ckpt, COUNT).await.expect_err("must refuse").to_string();
    assert!(e.contains("offsets/1") && e.contains("corrupt"), "{e}");

    let (input, out, ckpt) = setup("ckpt-corrupt-state");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("first run");
    let delta = ckpt.join("state/1/0/2.delta");
    let bytes = std::fs::read(&delta).expect("read delta");
    std::fs::write(&delta, &bytes[..bytes.len() - 9]).expect("truncate");
    put_file(&input, "c.txt", "q\n");
    let e = run_wordcount(&input, &out, &ckpt, COUNT).await.expect_err("must refuse").to_string();
    assert!(e.contains("2.delta") && e.contains("corrupt"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_query_changes_are_refused_and_compatible_ones_allowed() {
    let (input, out, ckpt) = setup("ckpt-change");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("first run");
    put_file(&input, "c.txt", "x\n");
    // A filter before the aggregation: compatible.
    run_wordcount(&input, &out, &ckpt, "SELECT word, count(*) AS count FROM input WHERE word <> 'nope' GROUP BY word")
        .await
        .expect("a filter is a compatible change");
    put_file(&input, "d.txt", "x\n");
    // A different aggregate function: incompatible.
    let e = run_wordcount(&input, &out, &ckpt, "SELECT word, sum(length(word)) AS count FROM input GROUP BY word")
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(e.contains("changed incompatibly") && e.contains("count") && e.contains("sum"), "{e}");
    // A different grouping key type: incompatible.
    let e = run_wordcount(
        &input,
        &out,
        &ckpt,
        "SELECT length(word) AS word, count(*) AS count FROM input GROUP BY length(word)",
    )
    .await
    .expect_err("must refuse")
    .to_string();
    assert!(e.contains("changed incompatibly"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_source_needs_consent_to_run_with_a_checkpoint() {
    let dir = tempdir("ckpt-socket");
    let s = session();
    let e = s
        .read_stream()
        .format("socket")
        .option("host", "127.0.0.1")
        .option("port", 9)
        .load()
        .write_stream()
        .format("console")
        .option("checkpointLocation", dir.join("c").display())
        .start()
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(e.contains("cannot replay") && e.contains("atMostOnce"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_needs_a_checkpoint_and_its_output_is_readable_by_the_file_source() {
    let (input, out, ckpt) = setup("ckpt-sink-read");
    let s = session();
    let e = s
        .read_stream()
        .format("text")
        .load_path(&input)
        .write_stream()
        .format("parquet")
        .path(&out)
        .start()
        .await
        .expect_err("needs a checkpoint")
        .to_string();
    assert!(e.contains("checkpoint_location"), "{e}");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("run");
    // An uncommitted stray file in the output is not seen through the sink's log.
    std::fs::write(out.join("part-99999-0000.json"), "{\"word\":\"ghost\",\"count\":1}\n").expect("stray");
    let q = s
        .read_stream()
        .format("json")
        .schema("word STRING, count BIGINT")
        .load_path(&out)
        .write_stream()
        .format("memory")
        .query_name("sink_read_back")
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("read back");
    let (_, rows) = s.memory_table("sink_read_back").expect("table");
    let words = strings(&rows, "word");
    assert!(!words.contains(&Some("ghost".to_string())), "{words:?}");
    assert_eq!(total_rows(&rows), 4, "x,y then y,z updates: {words:?}");
}

fn strings(rows: &[arrow_array::RecordBatch], col: &str) -> Vec<Option<String>> {
    rows.iter().flat_map(|b| column_strings(b, col)).collect()
}

/// The S3 bucket the test script's local server provides; fails (not skips) without it.
fn s3_bucket() -> String {
    std::env::var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|_| {
        panic!("SLUICE_TEST_S3_BUCKET is not set: run the tests with scripts/test.sh, which starts a local S3-compatible server (moto) on 127.0.0.1 and sets AWS_ENDPOINT and friends")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_on_s3_recover_state_and_offsets() {
    let bucket = s3_bucket();
    let (input, out, _) = setup("ckpt-s3");
    let ckpt = std::path::PathBuf::from(format!(
        "s3://{bucket}/ckpt-{}",
        std::process::id() as u128 * 1000 + (uuid_like() % 1000)
    ));
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("first run on S3");
    put_file(&input, "c.txt", "x z z\n");
    run_wordcount(&input, &out, &ckpt, COUNT).await.expect("second run on S3");
    let report = sluice::inspect_checkpoint(&ckpt).await.expect("inspect S3 checkpoint");
    assert_eq!(report.batches.len(), 3);
    assert!(report.batches.iter().all(|b| b.committed));
    let state = sluice::read_state(&ckpt, None, None).await.expect("state");
    let col = state.schema().field(1).name().clone();
    let c = counts(&[state], "word", &col);
    assert_eq!(c.get("x"), Some(&3));
    assert_eq!(c.get("y"), Some(&2));
    assert_eq!(c.get("z"), Some(&3));
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(u64, Vec<arrow_array::RecordBatch>)>>>;

/// Word count in update mode over `input` (one file per batch) into a foreachBatch that keeps
/// every batch it gets.
async fn count_into(input: &std::path::Path, ckpt: &std::path::Path, seen: &Seen) {
    let seen = seen.clone();
    let q = session()
        .read_stream()
        .format("text")
        .option("maxFilesPerTrigger", 1)
        .load_path(input)
        .plugin(plugin("split_words"), [("column", "value")])
        .sql(COUNT)
        .write_stream()
        .foreach_batch(move |info: &sluice::BatchInfo, batches: Vec<arrow_array::RecordBatch>| {
            seen.lock().expect("lock").push((info.batch_id, batches));
            Ok(())
        })
        .option("checkpointLocation", ckpt.display())
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("run");
}

/// 25 batches (past two state snapshots, with keys updated again and again and new keys in
/// every batch), a restart, 3 more: the emitted updates, the state read back and the restored
/// state all agree with counts computed the obvious way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_snapshots_and_restarts_with_many_small_updates() {
    let dir = tempdir("ckpt-many-updates");
    let (input, ckpt) = (dir.join("in"), dir.join("ckpt"));
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut all = Vec::new();
    let file = |input: &std::path::Path, i: usize, all: &mut Vec<String>| {
        let mut lines = gen_lines(30, i as u64);
        lines.push((0..200).map(|j| format!("u{i}x{j}")).collect::<Vec<_>>().join(" "));
        put_file(input, &format!("f{i:03}.txt"), &(lines.join("\n") + "\n"));
        all.extend(lines);
    };
    for i in 0..25 {
        file(&input, i, &mut all);
    }
    let seen: Seen = Default::default();
    count_into(&input, &ckpt, &seen).await;
    let report = sluice::inspect_checkpoint(&ckpt).await.expect("inspect");
    assert_eq!(report.batches.len(), 25);
    let files = &report.operators[0].files;
    assert!(
        files.iter().any(|(v, snap)| *snap && *v == 20),
        "snapshots written by the time the query stops: {files:?}"
    );
    for i in 25..28 {
        file(&input, i, &mut all);
    }
    count_into(&input, &ckpt, &seen).await;
    let want = expected_counts(all.iter().map(String::as_str));
    let mut latest = std::collections::HashMap::new();
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort_by_key(|(b, _)| *b);
    assert_eq!(seen.iter().map(|(b, _)| *b).collect::<Vec<_>>(), (0..28).collect::<Vec<_>>());
    for (_, batches) in &seen {
        latest.extend(counts(batches, "word", "count"));
    }
    assert_eq!(latest, want, "the latest update of every word is its count");
    let state = sluice::read_state(&ckpt, None, None).await.expect("state");
    let col = state.schema().field(1).name().clone();
    assert_eq!(counts(&[state], "word", &col), want, "the state read back");
}

/// `current_timestamp()`, `now()` and `current_date()` are each batch's timestamp (the one its
/// offsets log, so a replay sees the same), not the time the query was planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_timestamp_is_the_batch_timestamp() {
    let (input, _, ckpt) = setup("ckpt-now");
    put_file(&input, "c.txt", "w\n");
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let q = session()
        .read_stream()
        .format("text")
        .option("maxFilesPerTrigger", 1)
        .load_path(&input)
        .sql("SELECT value, current_timestamp() AS ts, now() AS n, current_date() AS d FROM input")
        .write_stream()
        .foreach_batch(move |info: &sluice::BatchInfo, batches: Vec<arrow_array::RecordBatch>| {
            s2.lock().expect("lock").push((info.batch_id, batches));
            // Batches at least a few milliseconds apart, so their timestamps differ.
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        })
        .option("checkpointLocation", ckpt.display())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("run");
    let report = sluice::inspect_checkpoint(&ckpt).await.expect("inspect");
    assert_eq!(report.batches.len(), 3);
    let seen = seen.lock().expect("lock").clone();
    let mut stamps = std::collections::BTreeSet::new();
    for (batch, batches) in &seen {
        let logged = report.batches[*batch as usize].batch_timestamp_ms;
        for b in batches {
            let ts = arrow_cast::cast(b.column(1), &arrow_schema::DataType::Int64).expect("cast");
            let n = arrow_cast::cast(b.column(2), &arrow_schema::DataType::Int64).expect("cast");
            let d = arrow_cast::cast(b.column(3), &arrow_schema::DataType::Int32).expect("cast");
            let (ts, n, d) = (
                ts.as_any().downcast_ref::<arrow_array::Int64Array>().expect("i64"),
                n.as_any().downcast_ref::<arrow_array::Int64Array>().expect("i64"),
                d.as_any().downcast_ref::<arrow_array::Int32Array>().expect("i32"),
            );
            for i in 0..b.num_rows() {
                assert_eq!(
                    ts.value(i),
                    logged * 1_000_000,
                    "batch {batch}: current_timestamp() is the logged batch timestamp"
                );
                assert_eq!(n.value(i), ts.value(i), "now() = current_timestamp()");
                assert_eq!(i64::from(d.value(i)), logged.div_euclid(86_400_000), "current_date() is the batch's day");
                stamps.insert(ts.value(i));
            }
        }
    }
    assert_eq!(stamps.len(), 3, "each batch has its own timestamp: {stamps:?}");
}

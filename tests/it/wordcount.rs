//! The seed's word count, end to end: through the Wasm plugin and through pure SQL, over a
//! directory of text files and over a real TCP socket, compared with counts computed here.

use std::io::Write;
use std::time::Duration;

use sluice::{OutputMode, Trigger};

use crate::*;

fn write_input(dir: &std::path::Path, files: usize, lines_per_file: usize) -> Vec<String> {
    let mut all = Vec::new();
    for f in 0..files {
        let lines = gen_lines(lines_per_file, f as u64 + 1);
        put_file(dir, &format!("part-{f:03}.txt"), &(lines.join("\n") + "\n"));
        all.extend(lines);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_wordcount_through_the_wasm_plugin_is_exact() {
    let dir = tempdir("wc-plugin");
    let lines = write_input(&dir, 5, 2000);
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .option("maxFilesPerTrigger", 2)
        .load_path(&dir)
        .plugin(plugin("split_words"), [("column", "value"), ("output", "word")])
        .sql("SELECT word, count(*) AS count FROM input GROUP BY word")
        .write_stream()
        .format("memory")
        .query_name("wc_plugin")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("query succeeds");
    let (_, rows) = s.memory_table("wc_plugin").expect("table");
    assert_eq!(counts(&rows, "word", "count"), expected_counts(lines.iter().map(String::as_str)));
    // maxFilesPerTrigger = 2 over 5 files: 3 batches, and progress says so.
    let progress = q.recent_progress();
    assert_eq!(progress.len(), 3, "batches: {progress:?}");
    assert_eq!(progress.iter().map(|p| p.num_input_rows).sum::<u64>(), lines.len() as u64);
    let last = progress.last().expect("progress");
    assert_eq!(last.plugins.len(), 1);
    assert_eq!(last.plugins[0].name, "split_words");
    assert_eq!(last.state_operators[0].num_rows_total, counts(&rows, "word", "count").len() as u64);
    assert!(!q.is_active());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_wordcount_in_pure_sql_is_exact_in_update_mode() {
    let dir = tempdir("wc-sql");
    let lines = write_input(&dir, 4, 1500);
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .option("maxFilesPerTrigger", 1)
        .load_path(&dir)
        .sql("SELECT explode(split(value, ' ')) AS word FROM input")
        .sql("SELECT word, count(*) AS count FROM input WHERE word <> '' GROUP BY word")
        .write_stream()
        .format("memory")
        .query_name("wc_sql")
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("query succeeds");
    // Update mode appends the rows each batch changed, in order: the last value per word is
    // its count, and a batch emits only the words it saw.
    let (_, rows) = s.memory_table("wc_sql").expect("table");
    let expected = expected_counts(lines.iter().map(String::as_str));
    assert_eq!(counts(&rows, "word", "count"), expected);
    let progress = q.recent_progress();
    assert_eq!(progress.len(), 4);
    assert_eq!(progress.last().expect("p").state_operators[0].num_rows_total, expected.len() as u64);
    for p in &progress {
        assert_eq!(p.sink.num_output_rows as u64, p.state_operators[0].num_rows_updated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_wordcount_complete_mode_matches_plugin() {
    let dir = tempdir("wc-sql-complete");
    let lines = write_input(&dir, 3, 1000);
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .sql("SELECT word, count(*) AS count FROM (SELECT explode(split(value, '\\\\s+')) AS word FROM input) t WHERE word <> '' GROUP BY word ORDER BY count DESC, word")
        .write_stream()
        .format("memory")
        .query_name("wc_sql_complete")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("query succeeds");
    let (_, rows) = s.memory_table("wc_sql_complete").expect("table");
    let got = counts(&rows, "word", "count");
    assert_eq!(got, expected_counts(lines.iter().map(String::as_str)));
    // ORDER BY in complete mode: counts come out descending.
    let all: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            let c = b.column(1).as_any().downcast_ref::<arrow_array::Int64Array>().expect("i64").clone();
            (0..c.len()).map(move |i| c.value(i)).collect::<Vec<_>>()
        })
        .collect();
    assert!(all.windows(2).all(|w| w[0] >= w[1]), "not sorted: {all:?}");
}

/// Serves `lines` on a real TCP socket, runs the word count `via` builds over it, and checks
/// the counts once every word has arrived.
async fn socket_wordcount(
    name: &str,
    seed: u64,
    via: impl FnOnce(sluice::StreamingDataFrame) -> sluice::StreamingDataFrame,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let lines = gen_lines(3000, seed);
    let to_send = lines.clone();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        for chunk in to_send.chunks(500) {
            for l in chunk {
                writeln!(conn, "{l}").expect("send");
            }
            conn.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Keep the connection open a little, like `nc -lk`.
        std::thread::sleep(Duration::from_millis(300));
    });
    let expected = expected_counts(lines.iter().map(String::as_str));
    let expected_total: i64 = expected.values().sum();
    let s = session();
    let df = s.read_stream().format("socket").option("host", "127.0.0.1").option("port", port).load();
    let q = via(df)
        .write_stream()
        .format("memory")
        .query_name(name)
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = s.memory_table(name).map(|(_, r)| counts(&r, "word", "count")).unwrap_or_default();
        if got.values().sum::<i64>() >= expected_total || std::time::Instant::now() > deadline {
            assert_eq!(got, expected, "socket word count {name}");
            break;
        }
        assert!(q.exception().is_none(), "query failed: {:?}", q.exception());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    q.stop().await;
    assert!(!q.is_active());
    server.join().expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_wordcount_through_the_wasm_plugin_is_exact() {
    socket_wordcount("sock_plugin", 42, |df| {
        df.plugin(plugin("split_words"), [("column", "value")])
            .sql("SELECT word, count(*) AS count FROM input GROUP BY word")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_wordcount_in_pure_sql_is_exact() {
    socket_wordcount("sock_sql", 7, |df| {
        df.sql("SELECT word, count(*) AS count FROM (SELECT explode(split(value, ' ')) AS word FROM input) w GROUP BY word")
    })
    .await;
}

//! Hostile plugins: each fails its query with a clear error naming the plugin, and the host
//! (this test process) stays up and runs the next query.

use std::time::Duration;

use sluice::{Error, ErrorKind, Limit, OutputMode, PluginLimits, Trigger};

use crate::*;

async fn run_evil(tag: &str, mode: &str, limits: PluginLimits) -> sluice::Error {
    let dir = tempdir(tag);
    put_file(&dir, "a.txt", "one two\nthree\n");
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .plugin_with_limits(plugin("evil"), [("mode", mode)], limits)
        .write_stream()
        .format("noop")
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    let ended = q.await_termination_timeout(Duration::from_secs(60)).await;
    assert!(ended.is_err(), "the query must fail, got {ended:?}");
    assert!(!q.is_active());
    let e = q.exception().expect("exception");
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(shared) => Error::Failed(shared),
    }
}

use std::sync::Arc;

fn inner(e: &Error) -> &Error {
    match e {
        Error::Failed(inner) => inner,
        other => other,
    }
}

fn limits(memory: u64, timeout_ms: u64) -> PluginLimits {
    let mut l = PluginLimits::default();
    l.memory_bytes = memory;
    l.timeout = Duration::from_millis(timeout_ms);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_fails_the_query_with_its_message() {
    let e = run_evil("evil-panic", "panic", PluginLimits::default()).await;
    let text = e.to_string();
    assert!(matches!(inner(&e), Error::PluginTrap { plugin, .. } if plugin == "evil"), "{e:?}");
    assert!(text.contains("evil") && text.contains("panics on purpose"), "{text}");
    assert_eq!(e.kind(), ErrorKind::Plugin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_is_stopped_by_its_time_limit() {
    let started = std::time::Instant::now();
    let e = run_evil("evil-loop", "loop", limits(256 << 20, 500)).await;
    assert!(matches!(inner(&e), Error::PluginLimit { plugin, limit: Limit::Time, .. } if plugin == "evil"), "{e:?}");
    assert!(e.to_string().contains("time limit"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocating_plugin_is_stopped_by_its_memory_cap() {
    let e = run_evil("evil-alloc", "alloc", limits(64 << 20, 30_000)).await;
    assert!(matches!(inner(&e), Error::PluginLimit { plugin, limit: Limit::Memory, .. } if plugin == "evil"), "{e:?}");
    assert!(e.to_string().contains("memory limit"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_breaking_its_schema_or_returning_an_error_is_reported() {
    let e = run_evil("evil-schema", "wrong_schema", PluginLimits::default()).await;
    assert!(e.to_string().contains("declared output schema"), "{e}");
    let e = run_evil("evil-error", "error", PluginLimits::default()).await;
    assert!(matches!(inner(&e), Error::Plugin { .. }), "{e:?}");
    assert!(e.to_string().contains("refuses this batch"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_survives_and_runs_the_next_query() {
    let _ = run_evil("evil-then", "panic", PluginLimits::default()).await;
    let _ = run_evil("evil-then2", "loop", limits(256 << 20, 300)).await;
    // Same process, a healthy query right after.
    let dir = tempdir("after-evil");
    put_file(&dir, "a.txt", "x y x\n");
    let s = session();
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .plugin(plugin("split_words"), [("column", "value")])
        .sql("SELECT word, count(*) AS n FROM input GROUP BY word")
        .write_stream()
        .format("memory")
        .query_name("after_evil")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("healthy query");
    let (_, rows) = s.memory_table("after_evil").expect("table");
    let c = counts(&rows, "word", "n");
    assert_eq!(c.get("x"), Some(&2));
    assert_eq!(c.get("y"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_plugin_config_fails_at_start_naming_the_key() {
    let dir = tempdir("bad-config");
    let s = session();
    let e = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .plugin(plugin("split_words"), [("colum", "value")])
        .write_stream()
        .format("noop")
        .start()
        .await
        .expect_err("must not start");
    let t = e.to_string();
    assert!(t.contains("split_words") && t.contains("colum") && t.contains("column"), "{t}");
}

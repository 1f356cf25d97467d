//! Exactly-once under SIGKILL: the `sluice` process is killed at random moments (the engine
//! widens the windows after the offsets write, after the sink write and after the commit with
//! `SLUICE_TEST_PAUSE_MS`), restarted each time, and its final output must equal one
//! uninterrupted run: nothing lost, nothing duplicated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

pub(crate) fn sluice_bin() -> PathBuf {
    // tests run from <target>/release/deps/it-*; the binary is <target>/release/sluice.
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("sluice")).expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p sluice` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The committed output of a file sink, batch by batch: for each batch id, its rows (lines).
pub(crate) fn committed_output(out: &Path) -> Vec<(u64, Vec<String>)> {
    let log = out.join("_spark_metadata");
    let mut batches: Vec<u64> =
        std::fs::read_dir(&log).expect("sink log").filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    batches.sort_unstable();
    batches
        .into_iter()
        .map(|b| {
            let text = std::fs::read_to_string(log.join(b.to_string())).expect("log entry");
            let mut rows = Vec::new();
            for l in text.lines().skip(1) {
                let v: serde_json::Value = serde_json::from_str(l).expect("log json");
                let f = out.join(v["path"].as_str().expect("path"));
                rows.extend(std::fs::read_to_string(&f).expect("data file").lines().map(str::to_string));
            }
            rows.sort();
            (b, rows)
        })
        .collect()
}

fn pipeline(dir: &Path, input: &Path, out: &Path, ckpt: &Path, steps: &str, format: &str) -> PathBuf {
    let plugins = repo().join("examples/plugins");
    let text = format!(
        "name = \"crash\"\ncheckpoint_location = \"{}\"\n[source]\nformat = \"text\"\npath = \"{}\"\noptions = {{ maxFilesPerTrigger = \"1\" }}\n{}\n[sink]\nformat = \"{format}\"\npath = \"{}\"\noutput_mode = \"update\"\n[trigger]\navailable_now = true\n",
        ckpt.display(),
        input.display(),
        steps.replace("PLUGINS", &plugins.display().to_string()),
        out.display()
    );
    let p = dir.join(format!("pipeline-{}.toml", out.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    std::fs::write(&p, text).expect("pipeline");
    p
}

/// Runs the pipeline to completion, killing it at random moments first. Returns the kills.
pub(crate) fn run_with_kills(file: &Path, seed: u64, max_kills: usize) -> usize {
    let mut x = seed | 1;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "the pipeline did not finish in time");
        let mut child = Command::new(sluice_bin())
            .arg("run")
            .arg(file)
            .env("SLUICE_TEST_PAUSE_MS", "80")
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wait = Duration::from_millis(60 + x % 400);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                assert!(status.success(), "sluice failed after {kills} kills: {err}");
                return kills;
            }
            if kills < max_kills && started.elapsed() >= wait {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn check_crashes_change_nothing(
    tag: &str,
    steps: &str,
    files: usize,
    lines_per_file: usize,
) -> Vec<(u64, Vec<String>)> {
    let dir = tempdir(tag);
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut all = Vec::new();
    for f in 0..files {
        let lines = gen_lines(lines_per_file, 100 + f as u64);
        put_file(&input, &format!("f{f:03}.txt"), &(lines.join("\n") + "\n"));
        all.extend(lines);
    }
    // One uninterrupted run.
    let clean = pipeline(&dir, &input, &dir.join("out-clean"), &dir.join("ckpt-clean"), steps, "json");
    assert_eq!(run_with_kills(&clean, 1, 0), 0);
    // The same, killed again and again.
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7);
    let crashy = pipeline(&dir, &input, &dir.join("out-crash"), &dir.join("ckpt-crash"), steps, "json");
    let kills = run_with_kills(&crashy, seed, 12);
    assert!(kills >= 6, "only {kills} kills happened (seed {seed})");
    let a = committed_output(&dir.join("out-clean"));
    let b = committed_output(&dir.join("out-crash"));
    assert_eq!(a.len(), files, "one committed sink batch per input file");
    assert_eq!(a, b, "output after {kills} kills (seed {seed}) differs from the uninterrupted run");
    a
}

pub(crate) fn last_counts(batches: &[(u64, Vec<String>)]) -> HashMap<String, i64> {
    let mut m = HashMap::new();
    for (_, rows) in batches {
        for r in rows {
            let v: serde_json::Value = serde_json::from_str(r).expect("row json");
            m.insert(v["word"].as_str().expect("word").to_string(), v["count"].as_i64().expect("count"));
        }
    }
    m
}

#[test]
fn wordcount_with_a_wasm_plugin_survives_sigkill_exactly_once() {
    let steps = "[[transform]]\nplugin = \"PLUGINS/split_words.wasm\"\n[[transform]]\nsql = \"SELECT word, count(*) AS count FROM input GROUP BY word\"\n";
    let out = check_crashes_change_nothing("crash-wc", steps, 12, 400);
    let mut lines = Vec::new();
    for f in 0..12 {
        lines.extend(gen_lines(400, 100 + f as u64));
    }
    assert_eq!(last_counts(&out), expected_counts(lines.iter().map(String::as_str)));
}

#[test]
fn sql_aggregation_to_a_file_sink_survives_sigkill_exactly_once() {
    let steps = "[[transform]]\nsql = \"SELECT explode(split(value, ' ')) AS w FROM input\"\n[[transform]]\nsql = \"SELECT w AS word, count(*) AS count, max(length(w)) AS longest FROM input GROUP BY w\"\n";
    let out = check_crashes_change_nothing("crash-sql", steps, 10, 300);
    let mut lines = Vec::new();
    for f in 0..10 {
        lines.extend(gen_lines(300, 100 + f as u64));
    }
    assert_eq!(last_counts(&out), expected_counts(lines.iter().map(String::as_str)));
}

#[test]
fn a_stateless_plugin_pipeline_loses_and_duplicates_nothing_under_sigkill() {
    let steps = "[[transform]]\nplugin = \"PLUGINS/split_words.wasm\"\n";
    // Append-like (no aggregation): every word of the input exactly once in the output.
    let dir_steps = steps.to_string();
    let out = check_crashes_change_nothing("crash-stateless", &dir_steps, 8, 300);
    let mut got: Vec<String> = out
        .iter()
        .flat_map(|(_, rows)| {
            rows.iter().map(|r| {
                serde_json::from_str::<serde_json::Value>(r).expect("json")["word"].as_str().expect("w").to_string()
            })
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..8)
        .flat_map(|f| gen_lines(300, 100 + f as u64))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// Event time under SIGKILL: a watermark, deduplication within the watermark and a windowed
/// count + sum in append mode (late rows, windows closed by batches without data) to a file
/// sink, killed again and again: the same windows in the same batches as one uninterrupted run.
#[test]
fn windowed_append_with_dedup_survives_sigkill_exactly_once() {
    crash_event_time(
        "crash-event-time",
        "[[transform]]\ndrop_duplicates = { columns = [\"id\"], within_watermark = true }\n[[transform]]\nsql = \"SELECT window(ts, '2 minutes'), key, count(*) AS count, sum(value) AS sum FROM input GROUP BY window(ts, '2 minutes'), key\"\n",
    );
}

/// The same with session windows (sessions merging across batches and restarts).
#[test]
fn session_windows_survive_sigkill_exactly_once() {
    crash_event_time(
        "crash-sessions",
        "[[transform]]\nsql = \"SELECT session_window(ts, '30 seconds'), key, count(*) AS count, sum(value) AS sum FROM input GROUP BY session_window(ts, '30 seconds'), key\"\n",
    );
}

fn crash_event_time(tag: &str, steps: &str) {
    let dir = tempdir(tag);
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let files = 10;
    for f in 0..files {
        let mut lines = Vec::new();
        for j in 0..150u64 {
            let i = f * 150 + j;
            // 4 s apart with up to 3 minutes of disorder; every 40th event 20 minutes late; every
            // 9th a duplicate (same id) of the one before.
            let mut secs = 36_000 + i * 4 - (i * 7919) % 180;
            if i % 40 == 39 {
                secs -= 1200;
            }
            let id = if i % 9 == 8 { i - 1 } else { i };
            let ts = format!("2026-01-01T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60);
            lines.push(format!(r#"{{"ts":"{ts}","id":"e{id}","key":"k{}","value":{}}}"#, i % 5, i % 100));
        }
        put_file(&input, &format!("f{f:03}.json"), &(lines.join("\n") + "\n"));
        std::thread::sleep(Duration::from_millis(15));
    }
    let pipeline = |name: &str| {
        let (out, ckpt) = (dir.join(format!("out-{name}")), dir.join(format!("ckpt-{name}")));
        let text = format!(
            r#"checkpoint_location = "{}"
[source]
format = "json"
path = "{}"
schema = "ts TIMESTAMP, id STRING, key STRING, value BIGINT"
options = {{ maxFilesPerTrigger = "1" }}
[[transform]]
watermark = {{ column = "ts", delay = "5 minutes" }}
{steps}[sink]
format = "json"
path = "{}"
output_mode = "append"
[trigger]
available_now = true
"#,
            ckpt.display(),
            input.display(),
            out.display()
        );
        let p = dir.join(format!("pipeline-{name}.toml"));
        std::fs::write(&p, text).expect("pipeline");
        (p, out)
    };
    let (clean, clean_out) = pipeline("clean");
    assert_eq!(run_with_kills(&clean, 1, 0), 0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7);
    let (crashy, crash_out) = pipeline("crash");
    let kills = run_with_kills(&crashy, seed, 12);
    assert!(kills >= 6, "only {kills} kills happened (seed {seed})");
    let a = committed_output(&clean_out);
    let b = committed_output(&crash_out);
    let windows: usize = a.iter().map(|(_, rows)| rows.len()).sum();
    assert!(windows > 20, "{windows} windows emitted");
    assert!(a.len() > files as usize, "batches without data closed the last windows: {} batches", a.len());
    assert_eq!(a, b, "output after {kills} kills (seed {seed}) differs from the uninterrupted run");
}

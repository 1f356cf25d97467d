//! The hostile-plugin suite: every case a real component (Rust plugins under `plugins/`, WAT
//! fixtures under `tests/fixtures/hostile/` where Rust cannot produce the case). Each ends in a
//! clear typed error naming the plugin, within its limit; the host stays up, a query running
//! beside them keeps running, and a checkpoint survives. Also: the failure policy (retry,
//! dead-letter), the process-wide memory budget, and deterministic replays.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::{Error, Limit, OutputMode, PluginFault, PluginLimits, PluginSpec, RuntimeConfig, Trigger};

use crate::*;

fn fixture(name: &str) -> PathBuf {
    let p = repo().join("tests/fixtures/hostile").join(name);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

fn root(e: &Error) -> &Error {
    match e {
        Error::Failed(inner) => root(inner),
        other => other,
    }
}

/// Runs `plugin` as the transform of a two-line text query; returns its error, if any, and how
/// long the query took to end.
async fn run_hostile(s: &sluice::Session, plugin: PluginSpec) -> (Option<Error>, Duration) {
    let dir = tempdir("hostile");
    put_file(&dir, "a.txt", "one two\nthree\n");
    let started = Instant::now();
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .transform(plugin)
        .write_stream()
        .format("noop")
        .trigger(Trigger::AvailableNow)
        .start()
        .await;
    let q = match q {
        Ok(q) => q,
        Err(e) => return (Some(e), started.elapsed()),
    };
    let ended = q.await_termination_timeout(Duration::from_secs(120)).await;
    assert!(matches!(ended, Ok(true) | Err(_)), "the query did not end in 120 s");
    (q.exception().map(Error::Failed), started.elapsed())
}

enum Expect {
    Limit(Limit),
    Trap(&'static str),
    Fault(PluginFault, &'static str),
    Load(&'static str),
    Runs,
}

fn evil(mode: &str) -> PluginSpec {
    PluginSpec::new(plugin("evil")).config("mode", mode)
}

fn check(name: &str, case: &str, expect: &Expect, got: &Option<Error>) -> String {
    let text = got.as_ref().map(|e| e.to_string()).unwrap_or_default();
    let ok = match (expect, got.as_ref().map(root)) {
        (Expect::Runs, None) => true,
        (Expect::Limit(l), Some(Error::PluginLimit { limit, .. })) => limit == l,
        (Expect::Trap(m), Some(Error::PluginTrap { message, .. })) => message.contains(m),
        (Expect::Fault(f, m), Some(Error::Plugin { fault, message, .. })) => fault == f && message.contains(m),
        (Expect::Load(m), Some(Error::PluginLoad { message, .. })) => message.contains(m),
        _ => false,
    };
    assert!(ok, "{case}: unexpected outcome: {got:?}");
    if let Some(e) = got {
        assert_eq!(e.plugin(), Some(name), "{case}: the error names the plugin: {e}");
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_end_in_typed_errors_within_their_limits_and_the_host_goes_on() {
    let s = session();
    // A healthy query runs beside the whole suite, in the same process.
    let beside = s
        .read_stream()
        .plugin(PluginSpec::new(plugin("sequence")).config("rows_per_batch", 50i64).config("end", 15_000i64))
        .load()
        .transform(PluginSpec::new(plugin("identity")))
        .sql("SELECT count(*) AS n, sum(id) AS total FROM input")
        .write_stream()
        .format("memory")
        .query_name("beside_hostile")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::ProcessingTime(Duration::from_millis(20)))
        .start()
        .await
        .expect("the healthy query starts");

    let random = tempdir("random").join("random.wasm");
    std::fs::write(&random, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>())
        .expect("write");
    let secs = |ms: u64| PluginLimits::default().timeout(Duration::from_millis(ms));
    let cases: Vec<(&str, PluginSpec, Expect)> = vec![
        ("infinite loop", evil("loop").limits(secs(500)), Expect::Limit(Limit::Time)),
        ("sleep in a host call", evil("sleep").limits(secs(500)), Expect::Limit(Limit::Time)),
        ("memory bomb", evil("alloc").limits(PluginLimits::default().memory(64 << 20)), Expect::Limit(Limit::Memory)),
        ("several memories (WAT)", PluginSpec::new(fixture("two_memories.wasm")), Expect::Limit(Limit::Memory)),
        ("table growth (WAT)", PluginSpec::new(fixture("table_growth.wasm")), Expect::Limit(Limit::Table)),
        ("deep recursion", evil("recursion"), Expect::Trap("stack overflow")),
        ("panic", evil("panic"), Expect::Trap("panics on purpose")),
        ("reading /etc/passwd", evil("read_file"), Expect::Fault(PluginFault::Failed, "denied")),
        ("opening a socket", evil("socket"), Expect::Fault(PluginFault::Failed, "denied")),
        ("reading an env var", evil("env").config("var", "PATH"), Expect::Fault(PluginFault::Failed, "denied")),
        ("flooding stdout, then a panic", evil("flood_stdout"), Expect::Trap("panics after flooding stdout")),
        ("flooding the log", evil("flood_log"), Expect::Runs),
        (
            "malformed IPC",
            PluginSpec::new(plugin("evil_raw")).config("mode", "garbage"),
            Expect::Fault(PluginFault::Contract, "not valid Arrow IPC"),
        ),
        (
            "truncated IPC",
            PluginSpec::new(plugin("evil_raw")).config("mode", "truncated"),
            Expect::Fault(PluginFault::Contract, "not valid Arrow IPC"),
        ),
        (
            "a schema where a batch belongs",
            PluginSpec::new(plugin("evil_raw")).config("mode", "schema_in_batch"),
            Expect::Fault(PluginFault::Contract, "not valid Arrow IPC"),
        ),
        (
            "an invalid output schema",
            PluginSpec::new(plugin("evil_raw")).config("mode", "bad_schema"),
            Expect::Fault(PluginFault::Contract, "invalid schema"),
        ),
        ("the wrong schema", evil("wrong_schema"), Expect::Fault(PluginFault::Contract, "declared output schema")),
        ("a huge batch", evil("huge"), Expect::Limit(Limit::Memory)),
        (
            "a component of a foreign world (WAT)",
            PluginSpec::new(fixture("foreign_world.wasm")),
            Expect::Load("exports no Sluice role"),
        ),
        ("a component of another role", PluginSpec::new(plugin("jsonl_dir")), Expect::Load("batch-sink-plugin")),
        ("random bytes as a .wasm", PluginSpec::new(&random), Expect::Load("not a valid Wasm component")),
    ];
    let mut table = vec!["| case | limit | outcome | time to stop |".to_string(), "|---|---|---|---|".to_string()];
    for (case, spec, expect) in cases {
        let name = spec.name.clone();
        let limit = format!("{} MiB, {} ms", spec.limits.memory_bytes >> 20, spec.limits.timeout.as_millis());
        let (got, took) = run_hostile(&s, spec).await;
        let text = check(&name, case, &expect, &got);
        assert!(took < Duration::from_secs(30), "{case}: took {took:?}");
        let outcome = if text.is_empty() { "ran; log capped".to_string() } else { text.chars().take(110).collect() };
        table.push(format!("| {case} | {limit} | {outcome} | {:.2} s |", took.as_secs_f64()));
        assert!(beside.exception().is_none(), "the query beside failed after `{case}`: {:?}", beside.exception());
    }
    eprintln!("{}", table.join("\n"));
    eprintln!("the query beside was still running when the suite ended: {}", beside.is_active());
    // It has a processing-time trigger, so it runs until stopped: wait for all its rows.
    let n = |s: &sluice::Session| {
        s.memory_table("beside_hostile")
            .and_then(|(_, rows)| rows.last().map(|b| column_strings(b, "n")))
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while n(&s) != vec![Some("15000".to_string())] && Instant::now() < deadline {
        assert!(beside.exception().is_none(), "the query beside failed: {:?}", beside.exception());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    beside.stop().await;
    let (_, rows) = s.memory_table("beside_hostile").expect("table");
    let last = rows.last().expect("a result");
    assert_eq!(column_strings(last, "n"), vec![Some("15000".to_string())]);
    assert_eq!(column_strings(last, "total"), vec![Some((14_999i64 * 15_000 / 2).to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_memory_budget_holds_across_instances_and_is_given_back() {
    let mut config = RuntimeConfig::new(&std::env::temp_dir().join("sluice-test-cache"));
    config.memory_budget = 96 << 20;
    let s = sluice::Session::with_config(config).expect("session");
    let (got, _) = run_hostile(&s, evil("alloc").limits(PluginLimits::default().memory(512 << 20))).await;
    assert!(matches!(got.as_ref().map(root), Some(Error::PluginLimit { limit: Limit::ProcessMemory, .. })), "{got:?}");
    // Once the query is gone, its instances' memory is given back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.plugin_memory().0, 0, "memory still held: {:?}", s.plugin_memory());
    let (got, _) = run_hostile(&s, evil("none")).await;
    assert!(got.is_none(), "a normal plugin runs after the budget was hit: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fuel_limit_stops_a_loop_by_instructions_and_needs_metering_on() {
    // Without fuel metering, a fuel limit is refused up front instead of silently ignored.
    let (got, _) = run_hostile(&session(), evil("none").limits(PluginLimits::default().fuel(1_000_000))).await;
    let text = got.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(matches!(got.as_ref().map(root), Some(Error::Config { .. })), "{got:?}");
    assert!(text.contains("fuel metering is off"), "{text}");

    let mut config = RuntimeConfig::new(&std::env::temp_dir().join("sluice-test-cache"));
    config.fuel = true;
    let s = sluice::Session::with_config(config).expect("session");
    let (got, took) = run_hostile(&s, evil("loop").limits(PluginLimits::default().fuel(50_000_000))).await;
    assert!(matches!(got.as_ref().map(root), Some(Error::PluginLimit { limit: Limit::Fuel, .. })), "{got:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    // A plugin within its fuel runs, and its progress counts the fuel burnt.
    let dir = tempdir("fuel");
    put_file(&dir, "a.txt", "one two\nthree\n");
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .transform(PluginSpec::new(plugin("split_words")).limits(PluginLimits::default().fuel(100_000_000)))
        .write_stream()
        .format("noop")
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("starts");
    q.await_termination().await.expect("runs within its fuel");
    let burnt: u64 = q.recent_progress().iter().flat_map(|p| p.plugins.iter()).filter_map(|p| p.fuel).sum();
    assert!(burnt > 0, "no fuel counted: {:?}", q.last_progress());
}

fn dlq_pipeline(dir: &Path, policy: &str, mode: &str) -> String {
    format!(
        r#"checkpoint_location = "{d}/ckpt"
[source]
format = "text"
path = "{d}/in"
[[transform]]
plugin = "{evil}"
config = {{ mode = "{mode}" }}
on_error = {policy}
[sink]
format = "json"
path = "{d}/out"
[trigger]
available_now = true
"#,
        d = dir.display(),
        evil = plugin("evil").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_a_failed_partition_again_on_a_fresh_instance_and_dead_letter_keeps_the_rows() {
    let dir = tempdir("policy");
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    put_file(&dir.join("in"), "a.txt", "x\ny\nz\n");
    // `flaky` fails each batch's first attempt with a retryable error.
    let spec =
        sluice::PipelineSpec::from_toml(&dlq_pipeline(&dir, "{ retry = 2 }", "flaky"), "p.toml", &dir).expect("spec");
    let q = session().start(&spec).await.expect("start");
    q.await_termination().await.expect("retried to success");
    let p = q.last_progress().expect("progress");
    let evil = p.plugins.iter().find(|p| p.name == "evil").expect("plugin progress");
    assert!(evil.retries >= 1, "{p}");
    assert_eq!(p.sink.num_output_rows, 3);
    // A non-retryable error is not retried.
    let d2 = tempdir("policy2");
    std::fs::create_dir_all(d2.join("in")).expect("mkdir");
    put_file(&d2.join("in"), "a.txt", "x\n");
    let spec =
        sluice::PipelineSpec::from_toml(&dlq_pipeline(&d2, "{ retry = 5 }", "error"), "p.toml", &d2).expect("spec");
    let q = session().start(&spec).await.expect("start");
    let e = q.await_termination().await.expect_err("fails");
    assert!(e.to_string().contains("refuses this batch"), "{e}");
    // Dead letter: the rows of the failing partition go to the dead-letter sink with the error.
    let d3 = tempdir("policy3");
    std::fs::create_dir_all(d3.join("in")).expect("mkdir");
    put_file(&d3.join("in"), "a.txt", "x\ny\n");
    let policy = format!("{{ dead_letter = {{ format = \"json\", path = \"{}/dlq\" }} }}", d3.display());
    let spec = sluice::PipelineSpec::from_toml(&dlq_pipeline(&d3, &policy, "error"), "p.toml", &d3).expect("spec");
    let q = session().start(&spec).await.expect("start");
    q.await_termination().await.expect("the query goes on");
    let p = q.last_progress().expect("progress");
    assert_eq!(p.plugins.iter().find(|p| p.name == "evil").map(|p| p.dead_lettered_rows), Some(2), "{p}");
    assert_eq!(p.sink.num_output_rows, 0);
    let mut dead = Vec::new();
    for e in std::fs::read_dir(d3.join("dlq")).expect("dlq dir") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "json") {
            for l in std::fs::read_to_string(&path).expect("read").lines() {
                dead.push(serde_json::from_str::<serde_json::Value>(l).expect("json"));
            }
        }
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .all(|r| r["_error"].as_str().is_some_and(|e| e.contains("refuses this batch")) && r["_plugin"] == "evil")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_mid_query_leaves_a_checkpoint_that_resumes_exactly() {
    let dir = tempdir("hostile-ckpt");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut all = Vec::new();
    for f in 0..5 {
        let lines = gen_lines(100, 40 + f);
        put_file(&input, &format!("f{f}.txt"), &(lines.join("\n") + "\n"));
        all.extend(lines);
    }
    let s = session();
    let run = |mode: &'static str| {
        let (dir, input, s) = (dir.clone(), input.clone(), s.clone());
        async move {
            s.read_stream()
                .format("text")
                .option("maxFilesPerTrigger", 1)
                .load_path(&input)
                .transform(evil(mode).config("after", 2i64))
                .transform(PluginSpec::new(plugin("split_words")))
                .sql("SELECT word, count(*) AS n FROM input GROUP BY word")
                .write_stream()
                .format("memory")
                .query_name(&format!("ckpt_{mode}"))
                .output_mode(OutputMode::Complete)
                .option("checkpointLocation", dir.join("ckpt").display())
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .expect("start")
        }
    };
    // Two batches pass, the third traps.
    let q = run("panic").await;
    assert!(q.await_termination().await.is_err());
    assert_eq!(q.recent_progress().len(), 2);
    // The same checkpoint, the plugin behaving: it resumes at batch 2 and the counts are exact.
    let q = run("none").await;
    q.await_termination().await.expect("resumes");
    assert_eq!(q.recent_progress().first().map(|p| p.batch_id), Some(2));
    let (_, rows) = s.memory_table("ckpt_none").expect("table");
    assert_eq!(counts(&rows, "word", "n"), expected_counts(all.iter().map(String::as_str)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_sees_the_same_clock_and_random_numbers() {
    let dir = tempdir("determinism");
    let (input, out, ckpt) = (dir.join("in"), dir.join("out"), dir.join("ckpt"));
    std::fs::create_dir_all(&input).expect("mkdir");
    put_file(&input, "a.txt", "a\nb\nc\n");
    let text = format!(
        r#"checkpoint_location = "{ckpt}"
[source]
format = "text"
path = "{input}"
[[transform]]
plugin = "{evil}"
config = {{ mode = "clock" }}
[sink]
format = "foreach_batch"
plugin = "{jsonl}"
grants = {{ dirs = [{{ host = "{out}", guest = "/out", read_only = false }}] }}
[trigger]
available_now = true
"#,
        ckpt = ckpt.display(),
        input = input.display(),
        out = out.display(),
        evil = plugin("evil").display(),
        jsonl = plugin("jsonl_dir").display()
    );
    let spec = sluice::PipelineSpec::from_toml(&text, "p.toml", &dir).expect("spec");
    let q = session().start(&spec).await.expect("start");
    q.await_termination().await.expect("runs");
    let first = std::fs::read_to_string(out.join("batch-0.jsonl")).expect("batch file");
    let rows: Vec<serde_json::Value> = first.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let offsets = std::fs::read_to_string(ckpt.join("offsets/0")).expect("offsets");
    let ts: serde_json::Value = serde_json::from_str(offsets.lines().nth(1).expect("entry")).expect("json");
    assert_eq!(rows[0]["clock_ms"], ts["batchTimestampMs"], "the plugin's wall clock is the batch timestamp");
    let random = rows[0]["random"].as_str().expect("random").to_string();
    assert!(!random.starts_with("error"), "{random}");
    // Replay batch 0 (as after a crash before its commit): identical output.
    std::fs::remove_file(ckpt.join("commits/0")).expect("uncommit");
    std::thread::sleep(Duration::from_millis(20));
    let q = session().start(&spec).await.expect("restart");
    q.await_termination().await.expect("re-runs batch 0");
    assert_eq!(std::fs::read_to_string(out.join("batch-0.jsonl")).expect("batch file"), first);
    // Another batch gets other random numbers.
    put_file(&input, "b.txt", "d\n");
    let q = session().start(&spec).await.expect("restart");
    q.await_termination().await.expect("batch 1");
    let second = std::fs::read_to_string(out.join("batch-1.jsonl")).expect("batch file");
    let r1: serde_json::Value = serde_json::from_str(second.lines().next().expect("row")).expect("json");
    assert_ne!(r1["random"].as_str(), Some(random.as_str()));
}

//! Every role a plugin: custom sources, foreachBatch and foreach sinks as sandboxed
//! components, with capability grants; the 0.1.0 contract still loading; native foreach sinks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sluice::{BatchInfo, DirGrant, Grants, OutputMode, PipelineSpec, PluginSpec, RecordBatch, Trigger};

use crate::*;

fn spec(text: &str, base: &Path) -> PipelineSpec {
    PipelineSpec::from_toml(text, "test.toml", base).expect("pipeline parses")
}

/// The ids in `dir/batch-*.jsonl`, by file.
fn jsonl_ids(dir: &Path) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("out dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("batch-") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("batch file");
        let ids = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["id"].as_i64().expect("id"))
            .collect();
        out.insert(name, ids);
    }
    out
}

fn sequence_to_jsonl(dir: &Path, out: &Path, ckpt: &Path, end: u64) -> std::path::PathBuf {
    let plugins = repo().join("examples/plugins");
    let text = format!(
        r#"name = "seq-jsonl"
checkpoint_location = "{ckpt}"
[source]
format = "plugin"
plugin = "{plugins}/sequence.wasm"
config = {{ rows_per_batch = 500, end = {end}, partitions = 3 }}
[[transform]]
sql = "SELECT id, upper(value) AS value, id % 7 AS bucket FROM input WHERE id % 5 <> 4"
[sink]
format = "foreach_batch"
plugin = "{plugins}/jsonl_dir.wasm"
config = {{ dir = "/out" }}
grants = {{ dirs = [{{ host = "{out}", guest = "/out", read_only = false }}] }}
[trigger]
available_now = true
"#,
        ckpt = ckpt.display(),
        plugins = plugins.display(),
        out = out.display(),
    );
    std::fs::create_dir_all(out).expect("out dir");
    let p = dir.join(format!("{}.toml", out.file_name().and_then(|n| n.to_str()).unwrap_or("p")));
    std::fs::write(&p, text).expect("pipeline");
    p
}

#[test]
fn sequence_to_sql_to_jsonl_dir_is_exactly_once_under_sigkill() {
    let dir = tempdir("seq-crash");
    let end = 12_000u64;
    let clean = sequence_to_jsonl(&dir, &dir.join("out-clean"), &dir.join("ckpt-clean"), end);
    assert_eq!(crate::recovery::run_with_kills(&clean, 1, 0), 0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7);
    let crashy = sequence_to_jsonl(&dir, &dir.join("out-crash"), &dir.join("ckpt-crash"), end);
    let kills = crate::recovery::run_with_kills(&crashy, seed, 12);
    assert!(kills >= 6, "only {kills} kills happened (seed {seed})");

    let a = jsonl_ids(&dir.join("out-clean"));
    let b = jsonl_ids(&dir.join("out-crash"));
    assert_eq!(a.len(), (end / 500) as usize, "one file per batch");
    assert_eq!(a, b, "the files after {kills} kills (seed {seed}) differ from the uninterrupted run's");
    let mut ids: Vec<i64> = b.values().flatten().copied().collect();
    ids.sort_unstable();
    let want: Vec<i64> = (0..end as i64).filter(|i| i % 5 != 4).collect();
    assert_eq!(ids, want, "every id exactly once");
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("out-crash"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("batch-") || !n.ends_with(".jsonl"))
        .collect();
    assert!(leftovers.iter().all(|n| n.starts_with(".batch-")), "unexpected files: {leftovers:?}");
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that records request bodies and headers.
/// Requests received: headers and body.
type Requests = Arc<Mutex<Vec<(BTreeMap<String, String>, String)>>>;

struct Receiver {
    port: u16,
    requests: Requests,
}

fn serve(listener: TcpListener, requests: Requests) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let requests = requests.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                requests.lock().expect("lock").push((headers, String::from_utf8_lossy(&body).into_owned()));
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
    }
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || serve(listener, r));
        Receiver { port, requests }
    }

    fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .requests
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(_, body)| {
                body.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["id"].as_i64().expect("id"))
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

fn webhook_pipeline(port: u16, grant: &str) -> String {
    let plugins = repo().join("examples/plugins");
    format!(
        r#"[source]
format = "plugin"
plugin = "{plugins}/sequence.wasm"
config = {{ rows_per_batch = 700, end = 3000, partitions = 2 }}
[sink]
format = "foreach"
plugin = "{plugins}/webhook.wasm"
config = {{ url = "http://127.0.0.1:{port}/ingest" }}
{grant}
[trigger]
available_now = true
"#,
        plugins = plugins.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_posts_every_row_to_a_granted_host() {
    let r = Receiver::start();
    let text = webhook_pipeline(r.port, &format!("grants = {{ http = [\"127.0.0.1:{}\"] }}", r.port));
    let q = session().start(&spec(&text, &repo())).await.expect("start");
    q.await_termination().await.expect("runs to the end");
    assert_eq!(r.ids(), (0..3000).collect::<Vec<i64>>(), "every row arrives once");
    let requests = r.requests.lock().expect("lock");
    let partitions: std::collections::BTreeSet<&str> =
        requests.iter().filter_map(|(h, _)| h.get("x-sluice-partition").map(String::as_str)).collect();
    assert_eq!(partitions.len(), 2, "two logical partitions, each opened per batch: {partitions:?}");
    assert!(requests.iter().all(|(h, _)| h.get("x-sluice-batch").is_some()));
    let last = q.last_progress().expect("progress");
    assert!(last.plugins.iter().any(|p| p.name == "webhook" && p.role == "foreach"), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_declared_host_is_refused_before_the_query_starts() {
    let r = Receiver::start();
    let e = session().start(&spec(&webhook_pipeline(r.port, ""), &repo())).await.expect_err("must be refused");
    let t = e.to_string();
    assert!(t.contains("webhook") && t.contains(&format!("127.0.0.1:{}", r.port)), "{t}");
    assert!(t.contains("grants = { http = [") && t.contains("[sink]"), "the error says which grant to add: {t}");
    // A grant for another port does not cover it either.
    let e = session()
        .start(&spec(&webhook_pipeline(r.port, "grants = { http = [\"127.0.0.1:1\"] }"), &repo()))
        .await
        .expect_err("must be refused");
    assert!(matches!(e, sluice::Error::MissingGrant { .. }), "{e:?}");
    assert!(r.requests.lock().expect("lock").is_empty(), "nothing was sent");
}

/// Runs the evil plugin in `mode` with `extra` config and `grants`; returns the query's error.
async fn evil_error(mode: &str, extra: &[(&str, &str)], grants: Grants) -> String {
    let dir = tempdir(&format!("evil-{mode}"));
    put_file(&dir, "a.txt", "one\n");
    let mut p = PluginSpec::new(plugin("evil")).config("mode", mode).grants(grants);
    for (k, v) in extra {
        p = p.config(k, *v);
    }
    let q = session()
        .read_stream()
        .format("text")
        .load_path(&dir)
        .transform(p)
        .write_stream()
        .format("noop")
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    let e = q.await_termination().await.expect_err("the plugin's error fails the query");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_files_variables_sockets_and_hosts_are_denied_at_run_time() {
    // A real file, a set variable, a listening socket, a live HTTP server: none granted.
    let secret = tempdir("secret");
    std::fs::write(secret.join("s.txt"), "secret").expect("write");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let r = Receiver::start();
    let url = format!("http://127.0.0.1:{}/x", r.port);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("read_file", vec![("path", "/etc/passwd")]),
        ("env", vec![("var", "PATH")]),
        ("socket", vec![("address", addr.as_str())]),
        ("http", vec![("url", url.as_str())]),
    ];
    for (mode, extra) in &cases {
        let e = evil_error(mode, extra, Grants::default()).await;
        assert!(e.contains("denied:") && !e.contains("got it"), "{mode}: {e}");
    }
    // Granting one thing does not open another: a directory is granted, /etc is not.
    let mut g = Grants::default();
    g.dirs.push(DirGrant::new(&secret, "/secret", true));
    let e = evil_error("read_file", &[("path", "/etc/passwd")], g.clone()).await;
    assert!(e.contains("denied:"), "{e}");
    // ... and a read-only grant is read-only but readable.
    let e = evil_error("read_file", &[("path", "/secret/s.txt")], g).await;
    assert!(e.contains("got it"), "a granted directory is readable: {e}");
    // An HTTP grant for another host does not let the plugin reach this one.
    let mut g = Grants::default();
    g.http.push("example.com:80".into());
    let e = evil_error("http", &[("url", url.as_str())], g).await;
    assert!(e.contains("denied:"), "{e}");
    assert!(r.requests.lock().expect("lock").is_empty(), "no request got through");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_0_1_0_still_runs() {
    let dir = tempdir("v010");
    let lines = gen_lines(300, 11);
    put_file(&dir, "a.txt", &(lines.join("\n") + "\n"));
    let fixture = repo().join("tests/fixtures/split_words-0.1.0.wasm");
    assert!(fixture.exists(), "the 0.1.0 fixture {} is missing", fixture.display());
    let s = session();
    let report = s.inspect_plugin(&fixture, Vec::new()).await.expect("inspect");
    assert_eq!(report.contract, "sluice:plugin@0.1.0");
    let q = s
        .read_stream()
        .format("text")
        .load_path(&dir)
        .plugin(&fixture, [("column", "value")])
        .sql("SELECT word, count(*) AS n FROM input GROUP BY word")
        .write_stream()
        .format("memory")
        .query_name("v010")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("runs");
    let (_, rows) = s.memory_table("v010").expect("table");
    assert_eq!(counts(&rows, "word", "n"), expected_counts(lines.iter().map(String::as_str)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_inspect_names_world_exports_imports_and_requirements() {
    let s = session();
    let r = s
        .inspect_plugin(&plugin("jsonl_dir"), vec![("dir".into(), sluice::ConfigValue::Str("/spool".into()))])
        .await
        .expect("inspect");
    assert_eq!(r.contract, "sluice:plugin@0.2.0");
    assert_eq!(r.world.as_deref(), Some("batch-sink-plugin"));
    assert!(r.exports.iter().any(|e| e == "sluice:plugin/batch-sink@0.2.0"), "{:?}", r.exports);
    assert!(r.imports.iter().any(|i| i.starts_with("wasi:filesystem/")), "{:?}", r.imports);
    assert_eq!(r.requirements, vec![sluice::Requirement::Dir { guest: "/spool".into(), writable: true }]);
    let text = r.to_string();
    assert!(text.contains("read-write directory /spool"), "{text}");
    // A component of another role is refused in a step with a message naming both.
    let e = s
        .read_stream()
        .format("rate")
        .load()
        .transform(PluginSpec::new(plugin("jsonl_dir")))
        .write_stream()
        .format("noop")
        .start()
        .await
        .expect_err("a sink is not a transform");
    let t = e.to_string();
    assert!(t.contains("transform-plugin") && t.contains("batch-sink-plugin"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_foreach_batch_and_foreach_get_every_row() {
    let seen: Arc<Mutex<Vec<(u64, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let q = session()
        .read_stream()
        .plugin(PluginSpec::new(plugin("sequence")).config("rows_per_batch", 100i64).config("end", 1000i64))
        .load()
        .write_stream()
        .foreach_batch(move |info: &BatchInfo, batches: Vec<RecordBatch>| {
            s2.lock().expect("lock").push((info.batch_id, batches.iter().map(|b| b.num_rows()).sum()));
            Ok(())
        })
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("runs");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, (0..10).map(|b| (b, 100)).collect::<Vec<_>>());

    /// (partition, epoch, rows, closed without error) per writer.
    type Calls = Arc<Mutex<Vec<(u32, u64, usize, bool)>>>;
    #[derive(Clone)]
    struct Collect(Calls, u32, u64, usize);
    impl sluice::ForeachWriter for Collect {
        fn open(&mut self, partition: u32, epoch: u64) -> sluice::Result<bool> {
            (self.1, self.2) = (partition, epoch);
            Ok(true)
        }
        fn process(&mut self, batch: &RecordBatch) -> sluice::Result<()> {
            self.3 += batch.num_rows();
            Ok(())
        }
        fn close(&mut self, error: Option<&sluice::Error>) -> sluice::Result<()> {
            self.0.lock().expect("lock").push((self.1, self.2, self.3, error.is_none()));
            Ok(())
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let q = session()
        .read_stream()
        .plugin(
            PluginSpec::new(plugin("sequence"))
                .config("rows_per_batch", 300i64)
                .config("end", 900i64)
                .config("partitions", 3i64),
        )
        .load()
        .write_stream()
        .foreach(Collect(log.clone(), 0, 0, 0))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("runs");
    let mut log = log.lock().expect("lock").clone();
    log.sort_unstable();
    let want: Vec<(u32, u64, usize, bool)> =
        (0..3u32).flat_map(|p| (0..3u64).map(move |b| (p, b, 100, true))).collect();
    assert_eq!(log, want, "one writer per (partition, epoch), 100 rows each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_files_are_read_by_a_source_plugin() {
    // tests/fixtures/avro/orders-00{0..3}.avro: 250 orders each, written by Python's fastavro
    // (id = file * 1000 + i, user = "u<id % 7>" or null when id % 50 == 0, amount = id / 4).
    let data = repo().join("tests/fixtures/avro");
    let mut want: BTreeMap<Option<String>, f64> = BTreeMap::new();
    for f in 0..4i64 {
        for i in 0..250i64 {
            let id = f * 1000 + i;
            let user = (id % 50 != 0).then(|| format!("u{}", id % 7));
            *want.entry(user).or_insert(0.0) += id as f64 / 4.0;
        }
    }
    let mut grants = Grants::default();
    grants.dirs.push(DirGrant::new(&data, "/data", true));
    let s = session();
    let q = s
        .read_stream()
        .plugin(PluginSpec::new(plugin("avro_dir")).config("maxFilesPerTrigger", 2i64).grants(grants))
        .load()
        .sql("SELECT user, sum(amount) AS total, count(*) AS n FROM input GROUP BY user")
        .write_stream()
        .format("memory")
        .query_name("avro")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .expect("start");
    q.await_termination().await.expect("runs");
    assert_eq!(q.recent_progress().len(), 2, "4 files at 2 per trigger");
    let (_, rows) = s.memory_table("avro").expect("table");
    let got: BTreeMap<Option<String>, f64> = rows
        .iter()
        .flat_map(|b| {
            let users = column_strings(b, "user");
            let totals = column_strings(b, "total");
            users.into_iter().zip(totals).map(|(u, t)| (u, t.expect("total").parse().expect("f64")))
        })
        .collect();
    assert_eq!(got, want);
    // Without the directory granted, the query is refused before it starts.
    let e = s
        .read_stream()
        .plugin(PluginSpec::new(plugin("avro_dir")))
        .load()
        .write_stream()
        .format("noop")
        .start()
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("directory /data"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_pipeline_with_a_source_and_a_sink_plugin_validates() {
    let spec = PipelineSpec::from_file(&repo().join("examples/plugin_roles.toml")).expect("parses");
    let schema = session().validate(&spec).await.expect("validates");
    assert!(schema.field_with_name("id").is_ok(), "{schema:?}");
}

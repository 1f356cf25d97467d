//! `sluice serve` end to end, as an operator runs it: the real binary, HTTP from outside, a
//! real webhook receiver, the metrics parsed by the official Prometheus client's parser, a
//! server restart that must resume a query from its checkpoint with nothing lost or duplicated.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::recovery::{committed_output, sluice_bin};
use crate::*;

const TOKEN: &str = "s3cret-token";

/// A running `sluice serve` child; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(state: &Path, webhook: &str) -> Server {
    let mut child = Command::new(sluice_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--idle-event-interval",
            "1s",
            "--webhook",
            webhook,
        ])
        .arg("--state-dir")
        .arg(state)
        .env("SLUICE_LOG", "warn,sluice=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("sluice serve: listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
            eprintln!("[serve] {line}");
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("the server did not say where it listens within 60 s");
    Server { child, url }
}

impl Server {
    fn sigterm(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sluice serve did not stop within 30 s of SIGTERM");
    }
}

async fn call(method: reqwest::Method, url: &str, body: Option<reqwest::Body>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.header("content-type", "application/toml").body(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get(url: &str) -> Value {
    let (status, v) = call(reqwest::Method::GET, url, None).await;
    assert_eq!(status, 200, "GET {url}: {v}");
    v
}

/// Polls `f` every 200 ms until it is true, failing with `what` after `secs`.
async fn until<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// A webhook receiver: records every POSTed JSON body, in order.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request at a time on a connection: headers, then content-length bytes.
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        sink.lock().expect("lock").push(v);
                    }
                    if sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

/// Lines `{"value": n}` for n in `range`.
fn numbers(range: std::ops::Range<i64>) -> String {
    range.map(|n| format!("{{\"value\":{n}}}\n")).collect()
}

fn output_values(out: &Path) -> Vec<i64> {
    if !out.join("_spark_metadata").exists() {
        return Vec::new();
    }
    let mut v: Vec<i64> = committed_output(out)
        .into_iter()
        .flat_map(|(_, rows)| rows)
        .map(|l| serde_json::from_str::<Value>(&l).expect("row json")["value"].as_i64().expect("value"))
        .collect();
    v.sort_unstable();
    v
}

async fn metrics_text(url: &str) -> String {
    let resp = reqwest::Client::new().get(format!("{url}/metrics")).bearer_auth(TOKEN).send().await.expect("metrics");
    resp.text().await.expect("text")
}

/// The Prometheus text parsed by the official Python client (`tests/prom_parse.py`).
fn parse_metrics(text: &str) -> serde_json::Map<String, Value> {
    let python = std::env::var("SLUICE_PROM_PYTHON").unwrap_or_else(|_| {
        let venv =
            std::env::var("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/sluice/prom-venv/bin/python");
        venv.display().to_string()
    });
    assert!(
        Path::new(&python).exists(),
        "{python} is missing: the metrics test parses with the Python prometheus_client; scripts/test.sh makes that venv \
         (python3 -m venv ~/.cache/sluice/prom-venv && ~/.cache/sluice/prom-venv/bin/pip install prometheus_client)"
    );
    let mut child = Command::new(&python)
        .arg(repo().join("tests/prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "the Prometheus parser refused /metrics: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).expect("parser json").as_object().expect("object").clone()
}

fn metric(m: &serde_json::Map<String, Value>, key: &str) -> f64 {
    m.get(key).and_then(Value::as_f64).unwrap_or_else(|| {
        let near: Vec<&String> = m.keys().filter(|k| k.starts_with(key.split('{').next().unwrap_or(key))).collect();
        panic!("no sample {key} in /metrics; samples of that name: {near:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_end_to_end() {
    let dir = tempdir("serve");
    let state = dir.join("state");
    let input = dir.join("in");
    let out = dir.join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    let (hook_url, hook) = webhook().await;
    let server = start_server(&state, &hook_url);
    let api = format!("{}/api/queries", server.url);

    // Without the token: refused.
    let resp = reqwest::get(&api).await.expect("get");
    assert_eq!(resp.status().as_u16(), 401);

    // A bad pipeline: a 400 with validate's message and location.
    let (status, v) = call(reqwest::Method::POST, &api, Some("[source]\nformat = \"rate\"\nbogus = 1\n".into())).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("pipeline.toml:3") && e.contains("bogus")), "{v}");

    // Query A: JSON files -> identity plugin (uploaded with the pipeline) -> JSON files, exactly once.
    let a_toml = format!(
        "name = \"a\"\n[source]\nformat = \"json\"\npath = \"{}\"\nschema = \"value BIGINT\"\noptions = {{ maxFilesPerTrigger = \"1\" }}\n\
         [[transform]]\nplugin = \"plugins/identity.wasm\"\n[sink]\nformat = \"json\"\npath = \"{}\"\noutput_mode = \"append\"\n\
         [trigger]\nprocessing_time = \"200ms\"\n",
        input.display(),
        out.display()
    );
    let form = reqwest::multipart::Form::new().percent_encode_noop().text("pipeline", a_toml).part(
        "plugins/identity.wasm",
        reqwest::multipart::Part::bytes(std::fs::read(plugin("identity")).expect("identity.wasm"))
            .file_name("identity.wasm"),
    );
    let resp = reqwest::Client::new().post(&api).bearer_auth(TOKEN).multipart(form).send().await.expect("submit a");
    let status = resp.status().as_u16();
    let a: Value = resp.json().await.expect("json");
    assert_eq!(status, 201, "{a}");
    let a_id = a["id"].as_str().expect("id").to_string();
    assert_eq!(a["state"], "running", "{a}");

    // Query B: rate -> aggregation -> noop.
    let b_toml = "name = \"b\"\n[source]\nformat = \"rate\"\noptions = { rowsPerSecond = \"500\" }\n[[transform]]\n\
                  sql = \"SELECT value % 10 AS k, count(*) AS n FROM input GROUP BY value % 10\"\n[sink]\nformat = \"noop\"\n\
                  output_mode = \"update\"\n[trigger]\nprocessing_time = \"200ms\"\n";
    let (status, b) = call(reqwest::Method::POST, &api, Some(b_toml.into())).await;
    assert_eq!(status, 201, "{b}");
    let b_id = b["id"].as_str().expect("id").to_string();

    // A second query named `b` is refused while b runs.
    let (status, v) = call(reqwest::Method::POST, &api, Some(b_toml.into())).await;
    assert_eq!(status, 409, "{v}");

    // Phase 1: two files through identity.
    put_file(&input, "f1.json", &numbers(0..100));
    put_file(&input, "f2.json", &numbers(100..200));
    until(60, "A to write 200 rows", async || output_values(&out).len() == 200).await;
    let progress = get(&format!("{api}/{a_id}/progress")).await;
    let batches = progress["progress"].as_array().expect("progress");
    assert!(batches.iter().any(|p| p["numInputRows"] == 100), "{progress}");
    let listed = get(&api).await;
    assert_eq!(listed["queries"].as_array().map(Vec::len), Some(2), "{listed}");

    // Replace A's plugin with `filter` (keeps even values): the answer comes once it runs.
    let resp = reqwest::Client::new()
        .put(format!("{api}/{a_id}/plugins/0"))
        .bearer_auth(TOKEN)
        .body(std::fs::read(plugin("filter")).expect("filter.wasm"))
        .send()
        .await
        .expect("replace");
    assert_eq!(resp.status().as_u16(), 200);
    let replaced: Value = resp.json().await.expect("json");
    let version = replaced["version"].as_str().expect("version").to_string();
    put_file(&input, "f3.json", &numbers(200..300));
    until(60, "A to write 250 rows", async || output_values(&out).len() == 250).await;
    let view = get(&format!("{api}/{a_id}")).await;
    assert_eq!(view["plugins"]["transform.0"], version.as_str(), "{view}");

    // Metrics, parsed by the official parser, agree with B's progress.
    until(30, "B to report state", async || {
        get(&format!("{api}/{b_id}")).await["lastProgress"]["stateOperators"][0]["numRowsTotal"] == 10
    })
    .await;
    let m = parse_metrics(&metrics_text(&server.url).await);
    let last = metric(&m, "sluice_query_last_batch_id{query=b}") as u64;
    let bp = get(&format!("{api}/{b_id}/progress")).await;
    let p = bp["progress"].as_array().expect("array").iter().find(|p| p["batchId"] == last).cloned();
    let p = p.unwrap_or_else(|| panic!("batch {last} of /metrics is not in B's recent progress"));
    assert_eq!(metric(&m, "sluice_query_state_rows{query=b}"), 10.0);
    assert_eq!(
        metric(&m, "sluice_query_latency_seconds{query=b}"),
        p["durationMs"]["triggerExecution"].as_f64().expect("ms") / 1000.0
    );
    assert_eq!(metric(&m, "sluice_query_input_rows_total{query=a}"), 300.0, "A read 300 rows");
    assert_eq!(metric(&m, "sluice_query_active{query=a}"), 1.0);

    // Stop B; restart the server.
    let (status, v) = call(reqwest::Method::POST, &format!("{api}/{b_id}/stop"), None).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    server.sigterm();
    put_file(&input, "f4.json", &numbers(300..400));
    let server = start_server(&state, &hook_url);
    let api = format!("{}/api/queries", server.url);
    // A resumes from its checkpoint with the replaced plugin; B stays stopped.
    until(60, "A to write 300 rows after the restart", async || output_values(&out).len() == 300).await;
    let b_after = get(&format!("{api}/{b_id}")).await;
    assert_eq!((b_after["state"].as_str(), b_after["isActive"].as_bool()), (Some("stopped"), Some(false)), "{b_after}");
    let a_after = get(&format!("{api}/{a_id}")).await;
    assert_eq!(a_after["state"], "running", "{a_after}");
    assert_eq!(a_after["plugins"]["transform.0"], version.as_str(), "{a_after}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = output_values(&out);
    let want: Vec<i64> = (0..200).chain((200..400).filter(|n| n % 2 == 0)).collect();
    assert_eq!(
        got, want,
        "A's output must be every row once: 0..200 through identity, evens of 200..400 through filter"
    );

    // The listener events of B's life, in order, at the webhook and in the JSON-lines file.
    let kinds = |events: &[Value], id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["id"] == id || e["progress"]["id"] == id)
            .map(|e| e["event"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let check = |kinds: Vec<String>, whence: &str| {
        assert_eq!(kinds.first().map(String::as_str), Some("QueryStartedEvent"), "{whence}: {kinds:?}");
        assert_eq!(kinds.last().map(String::as_str), Some("QueryTerminatedEvent"), "{whence}: {kinds:?}");
        assert_eq!(kinds.iter().filter(|k| *k == "QueryStartedEvent").count(), 1, "{whence}: {kinds:?}");
        assert!(kinds.iter().any(|k| k == "QueryProgressEvent"), "{whence}: {kinds:?}");
    };
    until(10, "the webhook to get B's terminated event", async || {
        kinds(&hook.lock().expect("lock"), &b_id).last().map(String::as_str) == Some("QueryTerminatedEvent")
    })
    .await;
    check(kinds(&hook.lock().expect("lock"), &b_id), "webhook");
    let file: Vec<Value> = std::fs::read_to_string(state.join("events.jsonl"))
        .expect("events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect();
    check(kinds(&file, &b_id), "events.jsonl");
    // Progress events come in batch order; A's show it went idle (1 s interval) between files.
    let ids: Vec<u64> = file
        .iter()
        .filter(|e| e["event"] == "QueryProgressEvent" && e["progress"]["id"] == b_id.as_str())
        .filter_map(|e| e["progress"]["batchId"].as_u64())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "B's progress events out of order: {ids:?}");
    assert!(kinds(&file, &a_id).iter().any(|k| k == "QueryIdleEvent"), "A never posted an idle event");
    let a_starts = kinds(&file, &a_id).iter().filter(|k| *k == "QueryStartedEvent").count();
    assert_eq!(a_starts, 2, "A started once per server run");
    drop(server);
}

/// Spark's `spark.streams` in the Rust API: active queries, get, unique names, awaiting any
/// termination, and a listener seeing a query's life in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_manager_and_listeners() {
    let session = session();
    let streams = session.streams();
    streams.set_idle_event_interval(Duration::from_millis(300));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let id = streams.add_listener(Arc::new(sluice::FnListener(move |e: &sluice::QueryEvent| {
        let v: Value = serde_json::from_str(&e.json()).expect("event json");
        let batch = v["progress"]["batchId"].as_u64().map(|b| format!(" {b}")).unwrap_or_default();
        s.lock().expect("lock").push(format!("{}{batch}", v["event"].as_str().unwrap_or("?")));
    })));
    let rate = |name: &str| {
        session
            .read_stream()
            .format("rate")
            .option("rowsPerSecond", 100)
            .load()
            .write_stream()
            .format("noop")
            .query_name(name)
            .trigger(sluice::Trigger::ProcessingTime(Duration::from_millis(100)))
            .into_spec()
            .1
    };
    let q1 = session.start(&rate("one")).await.expect("start one");
    let q2 = session.start(&rate("two")).await.expect("start two");
    let again = session.start(&rate("one")).await.expect_err("a second `one` must be refused");
    assert!(again.to_string().contains("already active"), "{again}");
    let mut active: Vec<_> = streams.active().iter().map(|q| q.id()).collect();
    active.sort();
    let mut want = vec![q1.id(), q2.id()];
    want.sort();
    assert_eq!(active, want);
    assert_eq!(streams.get(q2.id()).map(|q| q.name().map(str::to_string)), Some(Some("two".into())));
    assert!(!streams.await_any_termination_timeout(Duration::from_millis(300)).await.expect("none ended"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    q1.stop().await;
    assert!(streams.await_any_termination_timeout(Duration::from_secs(10)).await.expect("one ended"));
    assert!(streams.get(q1.id()).is_none() && streams.get(q2.id()).is_some());
    // The name is free again once `one` has stopped.
    let q3 = session.start(&rate("one")).await.expect("restart one");
    streams.reset_terminated();
    assert!(!streams.await_any_termination_timeout(Duration::from_millis(200)).await.expect("reset"));
    q2.stop().await;
    q3.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(streams.active().is_empty());
    assert!(streams.remove_listener(id));
    let events = seen.lock().expect("lock").clone();
    // Three starts, three ends; each query's progress in batch order between its start and end.
    assert_eq!(events.iter().filter(|e| *e == "QueryStartedEvent").count(), 3, "{events:?}");
    assert_eq!(events.iter().filter(|e| *e == "QueryTerminatedEvent").count(), 3, "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("QueryProgressEvent")), "{events:?}");
    assert_eq!(events.first().map(String::as_str), Some("QueryStartedEvent"), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("QueryTerminatedEvent"), "{events:?}");
}

/// The restart policy: an external error (nothing listening on a socket source's port) is
/// retried with back-off until the port answers; a user error (division by zero in the SQL)
/// stops the query as `failed`, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_restart_policy() {
    let dir = tempdir("serve-policy");
    let (hook_url, _hook) = webhook().await;
    let server = start_server(&dir.join("state"), &hook_url);
    let api = format!("{}/api/queries", server.url);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let sock = format!(
        "name = \"sock\"\n[source]\nformat = \"socket\"\noptions = {{ host = \"127.0.0.1\", port = \"{port}\" }}\n\
         [sink]\nformat = \"memory\"\noutput_mode = \"append\"\n"
    );
    let (status, v) = call(reqwest::Method::POST, &api, Some(sock.into())).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    until(20, "the socket query to be retried", async || {
        let q = get(&format!("{api}/{id}")).await;
        q["state"] == "retrying"
            && q["restarts"].as_u64() >= Some(1)
            && q["exception"].as_str().is_some_and(|e| e.contains("cannot connect"))
    })
    .await;
    // The port answers: the next attempt connects and the query runs.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the port");
    let accept = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        tokio::io::AsyncWriteExt::write_all(&mut s, b"hello\nworld\n").await.expect("write");
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    until(30, "the socket query to run and read two lines", async || {
        let q = get(&format!("{api}/{id}")).await;
        q["state"] == "running"
            && get(&format!("{api}/{id}/progress")).await["progress"]
                .as_array()
                .is_some_and(|p| p.iter().map(|b| b["numInputRows"].as_u64().unwrap_or(0)).sum::<u64>() == 2)
    })
    .await;
    let m = parse_metrics(&metrics_text(&server.url).await);
    assert!(metric(&m, "sluice_query_restarts_total{query=sock}") >= 1.0);
    accept.abort();

    // A user error: failed with its message, never restarted.
    let bad = "name = \"bad\"\n[source]\nformat = \"rate\"\noptions = { rowsPerSecond = \"10\" }\n[[transform]]\n\
               sql = \"SELECT value / (value - value) AS x FROM input\"\n[sink]\nformat = \"noop\"\n";
    let (status, v) = call(reqwest::Method::POST, &api, Some(bad.into())).await;
    assert_eq!(status, 201, "{v}");
    let bad_id = v["id"].as_str().expect("id").to_string();
    until(20, "the bad query to fail", async || get(&format!("{api}/{bad_id}")).await["state"] == "failed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let q = get(&format!("{api}/{bad_id}")).await;
    assert_eq!((q["state"].as_str(), q["restarts"].as_u64()), (Some("failed"), Some(0)), "{q}");
    assert!(q["exception"].as_str().is_some_and(|e| e.to_lowercase().contains("divide by zero")), "{q}");
    drop(server);
}

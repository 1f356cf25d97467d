//! The continuous trigger (`[trigger] continuous = "100ms"`, `Trigger::Continuous`): rows flow
//! through a stateless query as they arrive, and every epoch is checkpointed like a micro-batch
//! (`offsets/N`, the sink's commit, `commits/N`).
//!
//! * Exactly-once from Kafka to Kafka under SIGKILL: the `sluice` process is killed in the pause
//!   between an epoch's offsets log and its Kafka commit, after the Kafka commit but before
//!   `commits/N`, and at a random moment, while records keep arriving; the `read_committed`
//!   output must hold every input record exactly once.
//! * Stateful queries (aggregations, `drop_duplicates`, watermarks) and epochs under 10 ms are
//!   refused; a stateless continuous pipeline validates.
//! * Latency figures (`latency_ms`) from the rate source through a plugin, per epoch.
//!
//! The Kafka test needs a real broker (`SLUICE_KAFKA_BOOTSTRAP`, see `kafka.rs`) and the release
//! `sluice` binary (see `recovery.rs`); it fails, saying so, when either is missing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use arrow_array::{Array, Int64Array};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice::{PipelineSpec, PluginSpec, StreamingQueryProgress, Trigger};

use crate::kafka::{bootstrap, config, create_topic, topic};
use crate::recovery::sluice_bin;
use crate::*;

// ---------------------------------------------------------------------------------------------
// Kafka helpers beyond the shared ones in kafka.rs.

fn producer() -> BaseProducer {
    config().set("linger.ms", "5").set("enable.idempotence", "true").create().expect("producer")
}

/// The value of record `i`.
fn value(i: u64) -> String {
    format!("r-{i}")
}

/// Hands `r-<i>` for `i` in `range` to the producer, record `i` to partition `i % partitions`.
fn send_values(p: &BaseProducer, topic: &str, range: std::ops::Range<u64>, partitions: u64) {
    for i in range {
        let v = value(i);
        let mut rec: BaseRecord<'_, str, str> =
            BaseRecord::to(topic).payload(v.as_str()).partition((i % partitions) as i32);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    assert!(Instant::now() < deadline, "the producer queue stayed full for 30 s");
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing {v} to {topic}: {e}"),
            }
        }
    }
    p.poll(Duration::ZERO);
}

/// Produces `r-<from>`, `r-<from+1>`, … in a background thread, 10 records every 20 ms (500/s),
/// until stopped: input that keeps arriving while `sluice` is killed and restarted.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Trickle {
    fn start(topic: &str, from: u64, partitions: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let topic = topic.to_string();
        let thread = std::thread::spawn(move || {
            let p = producer();
            let mut next = from;
            // A cap, so that a test stuck elsewhere does not fill the broker.
            while !flag.load(Ordering::Relaxed) && next - from < 60_000 {
                send_values(&p, &topic, next..next + 10, partitions);
                next += 10;
                std::thread::sleep(Duration::from_millis(20));
            }
            p.flush(Duration::from_secs(30)).expect("flushing the trickle producer");
            next
        });
        Trickle { stop, thread: Some(thread) }
    }

    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops producing; returns the number of the next record, i.e. how many exist in all.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("the trickle runs").join().expect("the trickle producer panicked")
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `read_committed` consumer assigned every partition of `topic` from the beginning.
fn committed_reader(topic: &str) -> (BaseConsumer, Vec<i32>) {
    let c: BaseConsumer = config()
        .set("group.id", format!("it-continuous-reader-{}", uuid_like()))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    assert!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    (c, parts)
}

fn payload(m: &rdkafka::message::BorrowedMessage<'_>) -> String {
    m.payload().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_else(|| "<null>".to_string())
}

/// Every value of `topic` visible to `read_committed`, up to the end of each partition now.
fn read_all(topic: &str) -> Vec<String> {
    let (c, parts) = committed_reader(topic);
    let mut pending: BTreeSet<i32> = parts.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out; partitions {pending:?} never reached their end");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(payload(&m)),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Asserts `values` are `r-0` … `r-<total-1>`, each exactly once, in any order.
fn check_exactly_once(values: &[String], total: u64, what: &str) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for v in values {
        *count.entry(v.as_str()).or_default() += 1;
    }
    let missing: Vec<u64> = (0..total).filter(|i| !count.contains_key(value(*i).as_str())).collect();
    let mut dups: Vec<(&str, usize)> = count.iter().filter(|(_, n)| **n > 1).map(|(v, n)| (*v, *n)).collect();
    dups.sort_unstable();
    let mut unexpected: Vec<&str> = count
        .keys()
        .filter(|v| v.strip_prefix("r-").and_then(|i| i.parse::<u64>().ok()).is_none_or(|i| i >= total))
        .copied()
        .collect();
    unexpected.sort_unstable();
    assert!(
        missing.is_empty() && dups.is_empty() && unexpected.is_empty() && values.len() as u64 == total,
        "{what}: {} records for {total} values: {} missing (first {:?}), {} duplicated (first {:?}), {} unexpected (first {:?})",
        values.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        dups.len(),
        &dups[..dups.len().min(10)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)],
    );
}

// ---------------------------------------------------------------------------------------------
// The `sluice run` child process.

/// How long the engine sleeps at each crash-test pause (`SLUICE_TEST_PAUSE_MS`).
const PAUSE_MS: u64 = 150;

/// A running `sluice run FILE`, its stderr read line by line (the engine's `test pause` debug
/// lines tell where it is). Killed when dropped, so a failing test leaves no process behind.
struct Proc {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    what: String,
}

impl Proc {
    /// Starts `sluice run file`; with `pause_ms`, the engine pauses at its crash points.
    fn start(file: &Path, pause_ms: Option<u64>, what: &str) -> Self {
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("run")
            .arg(file)
            .env("SLUICE_LOG", "warn,sluice::faults=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match pause_ms {
            Some(ms) => cmd.env("SLUICE_TEST_PAUSE_MS", ms.to_string()),
            None => cmd.env_remove("SLUICE_TEST_PAUSE_MS"),
        };
        let mut child = cmd.spawn().expect("spawn sluice");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        keep.lock().unwrap_or_else(PoisonError::into_inner).push(line.clone());
                        let _ = tx.send(line);
                    }
                }
            }
        });
        Proc { child, lines, log, reader: Some(reader), what: what.to_string() }
    }

    /// The last lines of the process's stderr.
    fn tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let from = log.len().saturating_sub(40);
        log[from..].join("\n")
    }

    /// Fails the test: the process ended by itself (status) while the test expected `expected`.
    fn died(&mut self, status: ExitStatus, expected: &str) -> ! {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        panic!("{}: sluice exited ({status}) before {expected}; its stderr ends with:\n{}", self.what, self.tail())
    }

    /// Panics if the process has ended.
    fn check_alive(&mut self, expected: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.died(status, expected);
        }
    }

    /// Waits for a stderr line `pred` accepts; fails if the process ends or `timeout` passes first.
    fn wait_for(&mut self, expected: &str, timeout: Duration, mut pred: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no {expected} within {timeout:?}; its stderr ends with:\n{}",
                self.what,
                self.tail()
            );
            match self.lines.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if pred(&line) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_alive(expected),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    self.died(status, expected);
                }
            }
        }
    }

    /// SIGKILL, now; the process must still be running.
    fn kill(&mut self, at: &str) {
        self.check_alive(at);
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Ctrl-C (SIGINT, which `sluice run` handles by stopping the query) and waits for the exit;
    /// the signal is repeated every 3 s in case one lands while the run loop re-arms its handler.
    fn interrupt(&mut self) -> ExitStatus {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut next_signal = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: sluice did not stop within 20 s of SIGINT; its stderr ends with:\n{}",
                self.what,
                self.tail()
            );
            if Instant::now() >= next_signal {
                let sent = Command::new("sh")
                    .arg("-c")
                    .arg(format!("kill -INT {pid}"))
                    .status()
                    .expect("run sh to send SIGINT");
                assert!(sent.success(), "sending SIGINT to sluice (pid {pid}) failed");
                next_signal = Instant::now() + Duration::from_secs(3);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `line` is the engine's debug line for the crash-test pause at `point`.
fn is_pause(line: &str, point: &str) -> bool {
    line.contains("test pause") && line.contains(point)
}

/// The batch ids in a checkpoint log (`offsets` or `commits`); empty if it does not exist yet.
fn log_ids(ckpt: &Path, log: &str) -> BTreeSet<u64> {
    match std::fs::read_dir(ckpt.join(log)) {
        Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("reading {}: {e}", ckpt.join(log).display()),
    }
}

/// (offsets ids, commits ids) of the checkpoint.
fn checkpoint_logs(ckpt: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    (log_ids(ckpt, "offsets"), log_ids(ckpt, "commits"))
}

fn eos_pipeline(input: &str, output: &str, ckpt: &Path) -> String {
    format!(
        r#"name = "continuous-eos"
checkpoint_location = "{ckpt}"

[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{input}", startingOffsets = "earliest" }}

[[transform]]
plugin = "{identity}"

[[transform]]
sql = "SELECT value FROM input"

[sink]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", topic = "{output}", deliveryGuarantee = "exactly_once" }}

[trigger]
continuous = "100ms"
"#,
        ckpt = ckpt.display(),
        bs = bootstrap(),
        identity = plugin("identity").display(),
    )
}

#[test]
fn continuous_kafka_exactly_once_survives_kill() {
    const N: u64 = 3000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (input, output) = (topic("cont-in"), topic("cont-out"));
    rt.block_on(create_topic(&input, 2));
    rt.block_on(create_topic(&output, 1));
    {
        let p = producer();
        send_values(&p, &input, 0..N, 2);
        p.flush(Duration::from_secs(30)).expect("flush the first records");
    }
    let dir = tempdir("continuous-eos");
    let ckpt = dir.join("ckpt");
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, eos_pipeline(&input, &output, &ckpt)).expect("write the pipeline file");

    // Records keep arriving all through the killed runs.
    let trickle = Trickle::start(&input, N, 2);

    // Run 1: killed in the pause after epoch k's offsets are logged, its Kafka transaction open
    // and not committed (k >= 1: epoch 0 is committed by then).
    let mut run = Proc::start(&file, Some(PAUSE_MS), "run 1");
    let mut seen = 0;
    run.wait_for("second `after offsets` pause", Duration::from_secs(30), |l| {
        seen += usize::from(is_pause(l, "after offsets"));
        seen == 2
    });
    run.kill("the kill after offsets");
    drop(run);
    let (offsets, commits) = checkpoint_logs(&ckpt);
    let k = *offsets.last().expect("run 1 logged offsets");
    assert!(
        k >= 1 && commits.last() == Some(&(k - 1)) && !commits.contains(&k),
        "run 1 was to die with epoch {k} logged in offsets/ but not committed: offsets {offsets:?}, commits {commits:?}"
    );

    // Run 2: re-runs epoch k (one micro-batch over its logged range), then is killed in the pause
    // after a later epoch m's Kafka transaction committed, before `commits/m` is written.
    let mut run = Proc::start(&file, Some(PAUSE_MS), "run 2");
    let mut committed = false;
    run.wait_for("`after sink` pause of an epoch after the first commit", Duration::from_secs(30), |l| {
        if is_pause(l, "after commit") {
            committed = true;
            false
        } else {
            committed && is_pause(l, "after sink")
        }
    });
    run.kill("the kill after the sink commit");
    drop(run);
    let (offsets, commits) = checkpoint_logs(&ckpt);
    let m = *offsets.last().expect("offsets");
    assert!(
        m > k && commits.contains(&k) && commits.last() == Some(&(m - 1)) && !commits.contains(&m),
        "run 2 was to commit the re-run epoch {k}, then die after the Kafka commit of a later epoch, before its commits/ entry: offsets {offsets:?}, commits {commits:?}"
    );

    // Run 3: killed at a random moment, once it has committed something, while records still
    // arrive.
    let seed = uuid_like() as u64;
    let delay = Duration::from_millis(seed % 1000);
    let mut run = Proc::start(&file, Some(PAUSE_MS), "run 3");
    run.wait_for("first `after commit` pause", Duration::from_secs(30), |l| is_pause(l, "after commit"));
    std::thread::sleep(delay);
    assert!(trickle.running(), "the producer stopped early: the last kill would not be mid-stream");
    run.kill(&format!("the random kill ({delay:?} after the first commit)"));
    drop(run);
    let total = trickle.stop();
    assert!(total >= N + 500, "only {} records arrived while the query was being killed", total - N);

    // The input is r-0 .. r-<total-1>, each once (the test's own producer lost nothing).
    check_exactly_once(&read_all(&input), total, &format!("input topic {input}"));

    // The last run: no pauses, until every value is in the output, then Ctrl-C.
    let mut run = Proc::start(&file, None, "final run");
    let (reader, _) = committed_reader(&output);
    let mut got: HashSet<u64> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while (got.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} values reached {output} (read_committed) within 40 s of the last restart; sluice's stderr ends with:\n{}",
            got.len(),
            run.tail()
        );
        run.check_alive("the output was complete");
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                if let Some(i) = payload(&msg).strip_prefix("r-").and_then(|i| i.parse::<u64>().ok()) {
                    got.insert(i);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("reading {output}: {e}"),
        }
    }
    let status = run.interrupt();
    assert!(status.success(), "sluice stopped with {status} after Ctrl-C; its stderr ends with:\n{}", run.tail());
    drop(run);

    check_exactly_once(
        &read_all(&output),
        total,
        &format!(
            "read_committed output {output} after kills after offsets (epoch {k}), after the sink commit (epoch {m}) and at random ({delay:?} after the first commit, seed {seed})"
        ),
    );
    let (offsets, commits) = checkpoint_logs(&ckpt);
    let (first, last) = match (commits.first(), commits.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => panic!("no commits/ in {}: offsets {offsets:?}", ckpt.display()),
    };
    assert!(last > m, "no epoch committed after the kills: commits {commits:?}");
    assert_eq!(offsets.last(), Some(&last), "a stop by Ctrl-C leaves no epoch logged but uncommitted");
    assert_eq!(commits, (first..=last).collect::<BTreeSet<u64>>(), "commits/ has every epoch id, in order");
    assert!(commits.iter().all(|c| offsets.contains(c)), "every commits/N has its offsets/N: {offsets:?}, {commits:?}");
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// A rate source → identity plugin → `steps` → noop sink pipeline file.
fn rate_pipeline(steps: &str, mode: &str, trigger: &str) -> String {
    format!(
        "name = \"continuous-validate\"\n[source]\nformat = \"rate\"\noptions = {{ rowsPerSecond = \"10\" }}\n[[transform]]\nplugin = \"{}\"\n{steps}[sink]\nformat = \"noop\"\noutput_mode = \"{mode}\"\n[trigger]\n{trigger}\n",
        plugin("identity").display()
    )
}

fn parse(text: &str) -> sluice::Result<PipelineSpec> {
    PipelineSpec::from_toml(text, "continuous.toml", &repo())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_refuses_stateful_queries() {
    let s = session();
    const STATELESS_ONLY: &str = "continuous trigger runs stateless queries only";

    // An aggregation (step 1, after the plugin): refused by validation, naming what it is.
    let agg = rate_pipeline(
        "[[transform]]\nsql = \"SELECT value, count(*) FROM input GROUP BY value\"\n",
        "update",
        "continuous = \"100ms\"",
    );
    let spec = parse(&agg).expect("the file parses: the refusal is validation's");
    assert_eq!(spec.trigger, Trigger::Continuous(Duration::from_millis(100)));
    let err = s.validate(&spec).await.expect_err("an aggregation under the continuous trigger");
    assert!(matches!(err, sluice::Error::Unsupported { step: 1, .. }), "expected Unsupported at step 1: {err:?}");
    let msg = err.to_string();
    assert!(msg.contains(STATELESS_ONLY) && msg.contains("aggregation"), "{msg}");
    // The same query validates under processing_time: the trigger is what is refused.
    let micro = agg.replace("continuous = \"100ms\"", "processing_time = \"100ms\"");
    s.validate(&parse(&micro).expect("parses")).await.expect("the aggregation validates under processing_time");

    // drop_duplicates and a watermark keep state too.
    for (steps, what) in [
        ("[[transform]]\ndrop_duplicates = { columns = [\"value\"] }\n", "drop_duplicates"),
        (
            "[[transform]]\nwatermark = { column = \"timestamp\", delay = \"10 seconds\" }\n[[transform]]\nsql = \"SELECT value FROM input\"\n",
            "watermark",
        ),
    ] {
        let spec = parse(&rate_pipeline(steps, "append", "continuous = \"100ms\"")).expect("parses");
        let msg = s.validate(&spec).await.expect_err(what).to_string();
        assert!(msg.contains(STATELESS_ONLY) && msg.contains(what), "{what}: {msg}");
    }

    // The epoch interval: 1ms is refused, 10ms is the least accepted.
    let stateless = "[[transform]]\nsql = \"SELECT value FROM input\"\n";
    let msg = parse(&rate_pipeline(stateless, "append", "continuous = \"1ms\"")).expect_err("1ms").to_string();
    assert!(msg.contains("at least 10ms") && msg.contains("continuous"), "{msg}");
    let spec = parse(&rate_pipeline(stateless, "append", "continuous = \"10ms\"")).expect("10ms is accepted");
    assert_eq!(spec.trigger, Trigger::Continuous(Duration::from_millis(10)));
    let msg = parse(&rate_pipeline(stateless, "append", "continuous = \"100ms\"\nprocessing_time = \"1s\""))
        .expect_err("two triggers")
        .to_string();
    assert!(msg.contains("continuous"), "the error lists continuous among the triggers: {msg}");

    // A stateless continuous pipeline validates.
    let spec = parse(&rate_pipeline(stateless, "append", "continuous = \"100ms\"")).expect("parses");
    let schema = s.validate(&spec).await.expect("a stateless continuous pipeline validates");
    assert_eq!(schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["value"]);

    // The same through `sluice validate`.
    let dir = tempdir("continuous-validate");
    let agg_file = dir.join("agg.toml");
    std::fs::write(&agg_file, &agg).expect("write");
    let out = Command::new(sluice_bin()).arg("validate").arg(&agg_file).output().expect("run sluice validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sluice validate accepted a continuous aggregation: {stderr}");
    assert!(stderr.contains(STATELESS_ONLY), "sluice validate: {stderr}");
    let ok_file = dir.join("stateless.toml");
    std::fs::write(&ok_file, rate_pipeline(stateless, "append", "continuous = \"100ms\"")).expect("write");
    let out = Command::new(sluice_bin()).arg("validate").arg(&ok_file).output().expect("run sluice validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "sluice validate refused a stateless continuous pipeline: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Latency through the Rust API.

const RATE: u64 = 2000;

async fn rate_query(s: &sluice::Session, sink: &str, name: &str, interval: Duration) -> sluice::StreamingQuery {
    s.read_stream()
        .format("rate")
        .option("rowsPerSecond", RATE)
        .load()
        .transform(PluginSpec::new(plugin("identity")))
        .write_stream()
        .format(sink)
        .query_name(name)
        .trigger(Trigger::Continuous(interval))
        .start()
        .await
        .unwrap_or_else(|e| panic!("the continuous query into {sink} does not start: {e}"))
}

/// Checks a continuous query's progress: epochs 0, 1, 2, … without a gap, about `RATE` rows a
/// second over `elapsed`, and sane latency figures for every epoch with rows. Returns the rows.
fn check_epochs(what: &str, progress: &[StreamingQueryProgress], elapsed: Duration, interval: Duration) -> u64 {
    let ids: Vec<u64> = progress.iter().map(|p| p.batch_id).collect();
    let rows: Vec<u64> = progress.iter().map(|p| p.num_input_rows).collect();
    let expected_epochs = (elapsed.as_millis() / interval.as_millis()) as usize;
    assert!(
        progress.len() >= expected_epochs / 2 && progress.len() >= 4,
        "{what}: {} epochs in {elapsed:?} at a {interval:?} interval (ids {ids:?})",
        progress.len()
    );
    assert_eq!(ids, (0..progress.len() as u64).collect::<Vec<_>>(), "{what}: epoch ids are consecutive from 0");
    let total: u64 = rows.iter().sum();
    let want = RATE as f64 * elapsed.as_secs_f64();
    assert!(
        (total as f64 - want).abs() <= 0.3 * want,
        "{what}: {total} rows in {elapsed:?} at {RATE} rows/s (expected about {want:.0}); rows per epoch {rows:?}"
    );
    let bound = interval.as_millis() as f64 + 1000.0;
    for p in progress.iter().filter(|p| p.num_input_rows > 0) {
        let l = p
            .latency_ms
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: epoch {} has {} rows but no latency_ms", p.batch_id, p.num_input_rows));
        assert_eq!(l.num_rows, p.num_input_rows, "{what}: epoch {}: every input row has a latency: {l:?}", p.batch_id);
        assert!(
            0.0 <= l.p50 && l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max,
            "{what}: epoch {}: percentiles out of order: {l:?}",
            p.batch_id
        );
        assert!(l.p99 < bound, "{what}: epoch {}: p99 {} ms over {bound} ms: {l:?}", p.batch_id, l.p99);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_rate_to_plugin_reports_latency() {
    let interval = Duration::from_millis(200);
    let s = session();
    // A memory sink takes each epoch whole (rows wait for the epoch's end); noop streams chunks
    // (rows are delivered as they flow).
    let (mem_name, noop_name) =
        (format!("continuous_rate_mem_{}", uuid_like()), format!("continuous_rate_noop_{}", uuid_like()));
    let mem = rate_query(&s, "memory", &mem_name, interval).await;
    let mem_started = Instant::now();
    let noop = rate_query(&s, "noop", &noop_name, interval).await;
    let noop_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem_elapsed = mem_started.elapsed();
    mem.stop().await;
    let noop_elapsed = noop_started.elapsed();
    noop.stop().await;
    for (q, what) in [(&mem, "memory"), (&noop, "noop")] {
        assert!(!q.is_active(), "{what}: still active after stop");
        assert!(q.exception().is_none(), "{what}: the query failed: {:?}", q.exception());
    }

    let mem_progress = mem.recent_progress();
    let total = check_epochs("memory sink", &mem_progress, mem_elapsed, interval);
    // Rate values are consecutive from 0: the epochs together hold each exactly once.
    let (_, batches) = s.memory_table(&mem_name).expect("the memory sink's table");
    let mut values: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column(b.schema().index_of("value").expect("value column"));
            c.as_any().downcast_ref::<Int64Array>().expect("value is BIGINT").values().to_vec()
        })
        .collect();
    assert_eq!(values.len() as u64, total, "the memory table has every input row once (numInputRows sum {total})");
    values.sort_unstable();
    let first_bad = values.iter().enumerate().find(|(i, v)| **v != *i as i64);
    assert!(first_bad.is_none(), "memory sink values are not 0..{total}: first mismatch at {first_bad:?}");

    let noop_progress = noop.recent_progress();
    check_epochs("noop sink", &noop_progress, noop_elapsed, interval);
    // A sink that streams chunks makes rows visible as they flow, not at the epoch's end (that
    // would put the median near interval / 2).
    let mut p50s: Vec<f64> = noop_progress.iter().filter_map(|p| p.latency_ms.as_ref().map(|l| l.p50)).collect();
    assert!(!p50s.is_empty(), "noop sink: no epoch has latency_ms");
    p50s.sort_by(f64::total_cmp);
    let median = p50s[p50s.len() / 2];
    let quarter = interval.as_millis() as f64 / 4.0;
    assert!(
        median < quarter,
        "noop sink: median per-epoch p50 latency {median} ms, not under {quarter} ms: rows seem to wait for epoch ends (p50s {p50s:?})"
    );
}

/// The console sink prints each chunk as it comes in continuous mode: with an epoch of an hour,
/// rows (and several tables of the same epoch) must show on `sluice run`'s stdout within seconds.
#[test]
fn continuous_console_prints_rows_as_they_come() {
    let dir = tempdir("continuous-console");
    let file = dir.join("console.toml");
    let stderr = std::fs::File::create(dir.join("stderr.log")).expect("create stderr.log");
    std::fs::write(
        &file,
        "name = \"continuous-console\"\n[source]\nformat = \"rate\"\noptions = { rowsPerSecond = \"20\" }\n\
         [sink]\nformat = \"console\"\noutput_mode = \"append\"\n[trigger]\ncontinuous = \"1h\"\n",
    )
    .expect("write the pipeline file");
    let mut child = Command::new(sluice_bin())
        .arg("run")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn sluice");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut headers, mut rows, mut seen) = (Vec::new(), 0usize, Vec::new());
    while (headers.len() < 3 || rows < 3) && Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(id) = line.strip_prefix("Batch: ") {
                    headers.push(id.trim().to_string());
                } else if line.starts_with("| ") && !line.contains("timestamp") {
                    rows += 1;
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let exited = child.try_wait().ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    let out = seen.join("\n");
    let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert!(
        headers.len() >= 3 && rows >= 3,
        "within 60 s of starting, stdout shows {} tables and {rows} rows, not 3 of each: the console sink \
         seems to wait for the epoch's end (an hour){}. stdout:\n{out}\nstderr:\n{err}",
        headers.len(),
        exited.map(|s| format!(", or sluice exited early ({s})")).unwrap_or_default()
    );
    assert!(headers.iter().all(|h| *h == headers[0]), "the tables are not all of the first epoch: {headers:?}\n{out}");
}

//! `sluice bench latency --kafka HOST:PORT`: end-to-end latency measured from outside Sluice
//! (issue 13).
//!
//! # What is measured, and from where
//!
//! Every case is one pipeline `source → identity plugin (Wasm) → [SQL] → sink`, run by a
//! separate `sluice run` process (this very binary), for each combination of source (`kafka`,
//! `socket`, `rate`), sink (`kafka`, or `console`: Sluice's standard output), trigger (the
//! default micro-batch trigger, or `continuous`), delivery guarantee of the Kafka sink
//! (at-least-once, or exactly-once with one transaction per batch or epoch) and input rate
//! (records per second). Each case gets fresh topics (1 partition each)
//! and a fresh checkpoint, so both guarantees pay the same checkpoint logs. The `baseline`
//! "source" runs no Sluice at all: the harness's producer writes to the output topic and its
//! consumer reads it, which is the floor the other rows stand on (the same broker, clients and
//! clock on the same cores).
//!
//! The harness is independent of Sluice's code paths: its own librdkafka producer
//! (`linger.ms=0`, `acks=1`) or TCP server writes records `"<seq>:<send time in µs>"` at a fixed
//! rate (a 1 ms pacing loop sends every record due so far, stamping each with the wall clock
//! just before it is handed to librdkafka or written to the socket), and its own consumer
//! (`isolation.level=read_committed`, so exactly-once output counts only once its transaction
//! commits) reads the output topic from the beginning and stamps each record with the wall
//! clock when `poll` returns it. With the console sink the harness reads the child's standard
//! output instead, line by line, and stamps each table row `| <seq>:<micros> |` when its line is
//! read: no broker on the way out, so the figure is what Sluice itself adds to the source's
//! hop. Latency = receive time − send time, both from this process's clock. The `rate` source is not fed by the harness: a SQL step writes each row as
//! `"<value>:<timestamp in µs>"`, where the timestamp is the row's due time (`start + i /
//! rowsPerSecond`), so its latency is receive time − due time; both clocks are the same
//! machine's wall clock.
//!
//! Before measuring, warm-up records (negative sequence numbers; for `rate`, simply the first
//! row) must arrive at the output topic: that is the proof Sluice runs (plugin compiled, topics
//! resolved, socket connected). They and everything sent before the measurement are left out.
//! The harness then sends for `--seconds` and waits up to 10 s for the stragglers.
//!
//! # The figures
//!
//! - sent / received / lost / duplicated count the measured sequence numbers (for `rate`: the
//!   rows whose due time lies in the measurement window); lost = not read by the end of the 10 s
//!   wait for stragglers; a duplicate is a sequence number read more than once (latency uses its
//!   first receipt). `sent/s` is the rate the harness achieved.
//! - p50 / p95 / p99 / max latency leave out the **first second of the measurement** (start-up
//!   backlogs, the first batch after warm-up); the `last s` column is the p50 of the records
//!   sent in the last second.
//! - **keeps up** = every record arrived, the harness managed to send at ≥ 95% of the target
//!   rate (a socket the query does not drain pushes back on the sender, which would otherwise
//!   hide the backlog), and latency is not growing: the last second's p50 is at most twice the
//!   overall p50 plus 5 ms.
//! - **sluice CPU %**: the `sluice run` process's user + system CPU time over the sending
//!   window (`/proc/<pid>/stat`), in % of one core: the cost side of a trigger or interval.
//!
//! Everything (broker, Sluice, the harness) shares one machine, so at high rates the harness's
//! own producer and consumer compete with Sluice for CPU. The consumer fetches with
//! `fetch.wait.max.ms=10`, which bounds what the broker's long poll could add.
//! Socket cases run with a checkpoint and `atMostOnce = "true"` (the socket cannot replay), so
//! they pay the same logs; socket × exactly-once and console × exactly-once are impossible and
//! skipped. The Kafka source starts at `earliest` of its fresh input topic, so no warm-up
//! record is skipped by a late offset lookup. After each case Sluice gets SIGINT (which `sluice run` handles as Ctrl-C,
//! stopping its query cleanly), SIGKILL if it has not exited 15 s later, and the topics are
//! deleted; pipeline files and logs stay under `<dir>/latency-<run id>/` (with the console sink,
//! the log holds stderr only).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::error::{Error, ErrorKind, Result};

/// How long Sluice may take to deliver the first warm-up record.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the harness waits for records still in flight after it stopped sending.
const STRAGGLERS: Duration = Duration::from_secs(10);
/// Warm-up records are sent this often until one arrives.
const WARM_UP_EVERY: Duration = Duration::from_millis(200);
/// The start of the measurement left out of the latency percentiles.
const SKIP_US: i64 = 1_000_000;

/// What `sluice bench latency` runs. Empty lists mean every choice; list entries may also be
/// comma-separated (`"kafka,rate"`).
#[derive(Debug, Clone, Default)]
pub struct LatencyArgs {
    /// The broker (`host:port`); required unless every case runs without Kafka (socket or rate
    /// source into the console sink).
    pub kafka: Option<String>,
    /// `kafka`, `socket`, `rate`.
    pub sources: Vec<String>,
    /// Records per second, e.g. `1000` or `10k` (default 1k, 10k, 100k).
    pub rates: Vec<String>,
    /// Measured seconds per case (at least 2: the first is not in the percentiles).
    pub seconds: u64,
    /// `default`, `continuous`.
    pub triggers: Vec<String>,
    /// `at-least-once`, `exactly-once` (underscores accepted).
    pub guarantees: Vec<String>,
    /// `kafka`, `console` (default: kafka).
    pub sinks: Vec<String>,
    /// The continuous trigger's epoch interval, e.g. `100ms`.
    pub continuous_interval: String,
    /// The directory holding `identity.wasm`.
    pub plugins: PathBuf,
    /// Work directory: pipeline files, logs and checkpoints go to `latency-<run>/` under it.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Kafka,
    Socket,
    Rate,
    /// No Sluice: the harness's producer writes straight to the output topic, so the row shows
    /// the floor (producer → broker → read_committed consumer) on this machine.
    Baseline,
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            SourceKind::Kafka => "kafka",
            SourceKind::Socket => "socket",
            SourceKind::Rate => "rate",
            SourceKind::Baseline => "baseline",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TriggerKind {
    Default,
    Continuous,
}

impl TriggerKind {
    fn name(self) -> &'static str {
        match self {
            TriggerKind::Default => "default",
            TriggerKind::Continuous => "continuous",
        }
    }
}

/// Where Sluice writes, and so where the harness reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    /// A Kafka topic, read by the harness's `read_committed` consumer.
    Kafka,
    /// The console sink: Sluice's standard output, read line by line by the harness (no broker
    /// on the way out, so the row shows what Sluice itself adds).
    Console,
}

impl SinkKind {
    fn name(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
            SinkKind::Console => "console",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

impl Guarantee {
    fn name(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce => "exactly-once",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "alo",
            Guarantee::ExactlyOnce => "eos",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    source: SourceKind,
    sink: SinkKind,
    trigger: TriggerKind,
    guarantee: Guarantee,
    rate: u64,
}

impl Case {
    /// Whether the case needs the broker.
    fn uses_kafka(&self) -> bool {
        matches!(self.source, SourceKind::Kafka | SourceKind::Baseline) || self.sink == SinkKind::Kafka
    }
}

/// What every case shares.
#[derive(Debug, Clone)]
struct Env {
    /// Empty when no case uses Kafka.
    bootstrap: String,
    exe: PathBuf,
    identity: PathBuf,
    work: PathBuf,
    seconds: u64,
    interval: String,
    run: String,
}

/// The figures of one case.
#[derive(Debug, Default)]
struct Outcome {
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    /// Records on the output topic that are not `<seq>:<micros>`.
    malformed: u64,
    /// Harness-side produce failures (librdkafka delivery reports).
    send_failures: u64,
    /// Latency percentiles in µs: p50, p95, p99, max (over the measurement after its first second).
    percentiles: Option<[i64; 4]>,
    /// p50 in µs of the records sent in the last second.
    p50_last: Option<i64>,
    send_rate: f64,
    keeps_up: bool,
    /// Sluice's CPU time (user + system) over the sending window, in % of one core.
    cpu_pct: Option<f64>,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A failure outside Sluice's own code (the broker, the child process, the network).
fn external(message: impl Into<String>) -> Error {
    Error::Source { source_name: "bench latency".into(), message: message.into(), kind: ErrorKind::External }
}

fn kafka_err(what: &'static str) -> impl Fn(KafkaError) -> Error {
    move |e| external(format!("{what}: {e}"))
}

fn usage(message: impl Into<String>) -> Error {
    Error::Config { location: None, message: message.into() }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// `["a,b", "c"]` → `["a", "b", "c"]`, trimmed, lower-cased, empties dropped.
fn flat(list: &[String]) -> Vec<String> {
    list.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()
}

fn parse_rate(s: &str) -> Result<u64> {
    let (num, mult) = match s.strip_suffix('k') {
        Some(n) => (n, 1_000),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 1_000_000),
            None => (s, 1),
        },
    };
    match num.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n * mult),
        _ => Err(usage(format!("--rates: `{s}` is not a positive number of records per second (e.g. 1000 or 10k)"))),
    }
}

/// The values `list` names (underscores read as dashes), looked up in `table`; `default` when
/// it names none.
fn choices<T: Copy>(list: &[String], flag: &str, what: &str, table: &[(&str, T)], default: &[T]) -> Result<Vec<T>> {
    let names = flat(list);
    if names.is_empty() {
        return Ok(default.to_vec());
    }
    names
        .iter()
        .map(|n| {
            let key = n.replace('_', "-");
            table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).ok_or_else(|| {
                let known: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
                usage(format!("{flag}: unknown {what} `{n}`; use {}", known.join(", ")))
            })
        })
        .collect()
}

fn parse_cases(args: &LatencyArgs) -> Result<Vec<Case>> {
    let all_sources = [
        ("baseline", SourceKind::Baseline),
        ("kafka", SourceKind::Kafka),
        ("socket", SourceKind::Socket),
        ("rate", SourceKind::Rate),
    ];
    let sources = choices(&args.sources, "--sources", "source", &all_sources, &all_sources.map(|(_, v)| v))?;
    let all_triggers = [("default", TriggerKind::Default), ("continuous", TriggerKind::Continuous)];
    let triggers = choices(&args.triggers, "--triggers", "trigger", &all_triggers, &all_triggers.map(|(_, v)| v))?;
    let all_guarantees = [("at-least-once", Guarantee::AtLeastOnce), ("exactly-once", Guarantee::ExactlyOnce)];
    let guarantees =
        choices(&args.guarantees, "--guarantees", "guarantee", &all_guarantees, &all_guarantees.map(|(_, v)| v))?;
    let all_sinks = [("kafka", SinkKind::Kafka), ("console", SinkKind::Console)];
    let sinks = choices(&args.sinks, "--sinks", "sink", &all_sinks, &[SinkKind::Kafka])?;
    let mut rates = flat(&args.rates).iter().map(|r| parse_rate(r)).collect::<Result<Vec<_>>>()?;
    if rates.is_empty() {
        rates = vec![1_000, 10_000, 100_000];
    }
    let mut cases = Vec::new();
    for &source in &sources {
        if source == SourceKind::Baseline {
            // Neither trigger nor guarantee applies: one case per rate.
            let (sink, trigger, guarantee) = (SinkKind::Kafka, TriggerKind::Default, Guarantee::AtLeastOnce);
            cases.extend(rates.iter().map(|&rate| Case { source, sink, trigger, guarantee, rate }));
            continue;
        }
        for &sink in &sinks {
            for &trigger in &triggers {
                for &guarantee in &guarantees {
                    for &rate in &rates {
                        cases.push(Case { source, sink, trigger, guarantee, rate });
                    }
                }
            }
        }
    }
    Ok(cases)
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The pipeline file of a case.
fn pipeline(env: &Env, case: &Case, name: &str, topics: &Topics, port: u16, checkpoint: &Path) -> String {
    let bs = q(&env.bootstrap);
    let mut t =
        format!("name = {}\ncheckpoint_location = {}\n\n[source]\n", q(name), q(&checkpoint.display().to_string()));
    match case.source {
        SourceKind::Kafka => t.push_str(&format!(
            "format = \"kafka\"\noptions = {{ \"kafka.bootstrap.servers\" = {bs}, subscribe = {}, startingOffsets = \"earliest\" }}\n",
            q(&topics.input)
        )),
        // Not replayable: with a checkpoint it must accept losing uncommitted lines on a crash.
        SourceKind::Socket => t.push_str(&format!(
            "format = \"socket\"\noptions = {{ host = \"127.0.0.1\", port = \"{port}\", atMostOnce = \"true\" }}\n"
        )),
        SourceKind::Rate => {
            t.push_str(&format!("format = \"rate\"\noptions = {{ rowsPerSecond = \"{}\" }}\n", case.rate))
        }
        // Runs no pipeline; a rate source keeps the file valid.
        SourceKind::Baseline => t.push_str("format = \"rate\"\n"),
    }
    t.push_str(&format!("\n[[transform]]\nplugin = {}\n", q(&env.identity.display().to_string())));
    match case.source {
        // Only the value: the source's `partition`/`topic` columns would steer the sink.
        SourceKind::Kafka => t.push_str(match case.sink {
            SinkKind::Kafka => "\n[[transform]]\nsql = \"SELECT value FROM input\"\n",
            // The console prints bytes as hex.
            SinkKind::Console => "\n[[transform]]\nsql = \"SELECT CAST(value AS STRING) AS value FROM input\"\n",
        }),
        SourceKind::Socket | SourceKind::Baseline => {}
        SourceKind::Rate => t.push_str(&format!(
            "\n[[transform]]\nsql = {}\n",
            q("SELECT concat(CAST(value AS STRING), ':', CAST(unix_micros(timestamp) AS STRING)) AS value FROM input")
        )),
    }
    let guarantee = match case.guarantee {
        Guarantee::AtLeastOnce => "",
        Guarantee::ExactlyOnce => ", deliveryGuarantee = \"exactly_once\"",
    };
    match case.sink {
        SinkKind::Kafka => t.push_str(&format!(
            "\n[sink]\nformat = \"kafka\"\noutput_mode = \"append\"\noptions = {{ \"kafka.bootstrap.servers\" = {bs}, topic = {}{guarantee} }}\n",
            q(&topics.output)
        )),
        // Every row, whole: the harness parses them.
        SinkKind::Console => t.push_str(
            "\n[sink]\nformat = \"console\"\noutput_mode = \"append\"\noptions = { numRows = \"1000000000\", truncate = \"false\" }\n",
        ),
    }
    if case.trigger == TriggerKind::Continuous {
        t.push_str(&format!("\n[trigger]\ncontinuous = {}\n", q(&env.interval)));
    }
    t
}

struct Topics {
    /// Only the Kafka source reads it; created only then.
    input: String,
    /// Only the Kafka sink writes it; created only then.
    output: String,
}

impl Topics {
    /// The topics the case creates.
    fn wanted(&self, case: &Case) -> Vec<String> {
        let mut wanted = Vec::new();
        if matches!(case.sink, SinkKind::Kafka) || case.source == SourceKind::Baseline {
            wanted.push(self.output.clone());
        }
        if case.source == SourceKind::Kafka {
            wanted.push(self.input.clone());
        }
        wanted
    }
}

/// Runs every case and prints one Markdown table row per case.
pub async fn run(args: &LatencyArgs) -> Result<()> {
    if args.seconds < 2 {
        return Err(usage("--seconds must be at least 2 (the first second of each case is not measured)"));
    }
    let interval = args.continuous_interval.trim().to_string();
    crate::options::parse_duration(&interval).map_err(|e| usage(format!("--continuous-interval: {e}")))?;
    let cases = parse_cases(args)?;
    let bootstrap = args.kafka.clone().filter(|k| !k.trim().is_empty()).unwrap_or_default();
    if bootstrap.is_empty() && cases.iter().any(Case::uses_kafka) {
        return Err(usage(
            "sluice bench latency needs --kafka HOST:PORT for the Kafka source, the Kafka sink and the baseline \
             (scripts/bench-latency.sh starts a local broker and passes it); only socket or rate into \
             `--sinks console` runs without one",
        ));
    }
    let plugins = std::path::absolute(&args.plugins).map_err(io_err(&args.plugins))?;
    let identity = super::plugin_path(&plugins, "identity")?;
    let exe = std::env::current_exe().map_err(|source| Error::Io { path: "current_exe".into(), source })?;
    let run = uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect::<String>();
    let dir = std::path::absolute(&args.dir).map_err(io_err(&args.dir))?;
    let work = dir.join(format!("latency-{run}"));
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let env =
        Env { bootstrap: bootstrap.clone(), exe, identity, work: work.clone(), seconds: args.seconds, interval, run };
    let admin: Option<AdminClient<DefaultClientContext>> = if bootstrap.is_empty() {
        None
    } else {
        Some(client(&bootstrap).create().map_err(kafka_err("Kafka admin client"))?)
    };

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("bench latency: {} cases, {} s each, work directory {}", cases.len(), env.seconds, work.display());
    println!(
        "\n## End-to-end latency (source → identity plugin → sink: a Kafka topic read by a read_committed consumer, or the console read from Sluice's stdout; 1 partition, local broker, {cores} cores, {} s per case)\n",
        env.seconds
    );
    println!(
        "| source | sink | trigger | guarantee | rate/s | sent/s | sent | received | lost | dup | p50 ms | p95 ms | p99 ms | max ms | p50 last s | sluice CPU % | keeps up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let _ = std::io::stdout().flush();
    let mut failed = 0usize;
    for (n, case) in cases.iter().copied().enumerate() {
        let (trigger, guarantee) = match case.source {
            SourceKind::Baseline => ("—", "no sluice"),
            _ => (case.trigger.name(), case.guarantee.name()),
        };
        let (source, sink) = (case.source.name(), case.sink.name());
        let head = format!("| {source} | {sink} | {trigger} | {guarantee} | {} |", thousands(case.rate));
        let label = format!("case {}/{}: {source} → {sink} {trigger} {guarantee} {}/s", n + 1, cases.len(), case.rate);
        if case.guarantee == Guarantee::ExactlyOnce && case.source != SourceKind::Baseline {
            let why = match (case.source, case.sink) {
                (SourceKind::Socket, _) => Some("the socket source cannot replay, so no exactly-once"),
                (_, SinkKind::Console) => Some("the console sink has no exactly-once"),
                _ => None,
            };
            if let Some(why) = why {
                eprintln!("{label}: skipped ({why})");
                println!("{}", note_row(&head, &format!("skipped: {why}")));
                continue;
            }
        }
        eprintln!("{label}: starting");
        let topics = Topics { input: format!("lat-in-{}-{n}", env.run), output: format!("lat-out-{}-{n}", env.run) };
        let wanted = topics.wanted(&case);
        let created = match (&admin, wanted.is_empty()) {
            (_, true) => Ok(()),
            (Some(admin), false) => create_topics(admin, &wanted).await,
            (None, false) => Err(Error::Internal("bench latency: topics wanted without a broker".into())),
        };
        let result = match created {
            Ok(()) => {
                let (env, label) = (env.clone(), label.clone());
                let (input, output) = (topics.input.clone(), topics.output.clone());
                tokio::task::spawn_blocking(move || run_case(&env, &case, n, &Topics { input, output }, &label))
                    .await
                    .unwrap_or_else(|e| Err(Error::Internal(format!("bench latency: case {} panicked: {e}", n + 1))))
            }
            Err(e) => Err(e),
        };
        if let Some(admin) = admin.as_ref().filter(|_| !wanted.is_empty()) {
            delete_topics(admin, &wanted).await;
        }
        match result {
            Ok(o) => {
                eprintln!(
                    "{label}: {} sent, {} received, {} lost, {} duplicated{}",
                    o.sent,
                    o.received,
                    o.lost,
                    o.duplicated,
                    if o.keeps_up { ", keeps up" } else { ", does not keep up" }
                );
                println!("{head} {}", row(&o));
            }
            Err(e) => {
                failed += 1;
                eprintln!("{label}: FAILED: {e}");
                println!("{}", note_row(&head, &format!("error: {}", summary(&e.to_string()))));
            }
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "\nLatency = receive time at an independent read_committed consumer (console: when the harness reads the \
         row's line from Sluice's stdout) − send time at an independent producer \
         (rate: − the row's due time); percentiles leave out each case's first second. \
         keeps up = nothing lost, ≥ 95% of the rate sent, last second's p50 ≤ 2 × p50 + 5 ms. \
         sluice CPU % = the sluice process's user + system CPU time over the sending window, in % of one core. \
         Socket cases: checkpoint with atMostOnce. Logs and pipeline files: {}",
        work.display()
    );
    if failed > 0 {
        return Err(external(format!(
            "{failed} of {} cases failed (see the table and {})",
            cases.len(),
            work.display()
        )));
    }
    Ok(())
}

/// An error in one table cell: its first line and, when it quotes a log, the log's last line
/// (usually Sluice's own `error: ...`), at most 300 characters, no `|`.
fn summary(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut s = match lines.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first} … {last}"),
    };
    if s.chars().count() > 300 {
        s = s.chars().take(300).chain(['…']).collect();
    }
    s.replace('|', "/")
}

/// A row whose last cell is a note, the figures empty.
fn note_row(head: &str, note: &str) -> String {
    format!("{head}{} {note} |", " |".repeat(11))
}

fn thousands(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn ms(us: i64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The cells after the case's five leading ones.
fn row(o: &Outcome) -> String {
    let (p50, p95, p99, max) = match o.percentiles {
        Some([a, b, c, d]) => (ms(a), ms(b), ms(c), ms(d)),
        None => ("—".into(), "—".into(), "—".into(), "—".into()),
    };
    let last = o.p50_last.map(ms).unwrap_or_else(|| "—".into());
    let cpu = o.cpu_pct.map(|c| format!("{c:.0}")).unwrap_or_else(|| "—".into());
    let mut verdict = if o.keeps_up { "yes".to_string() } else { "no".to_string() };
    if o.malformed > 0 {
        verdict.push_str(&format!(" ({} malformed)", o.malformed));
    }
    if o.send_failures > 0 {
        verdict.push_str(&format!(" ({} produce failures)", o.send_failures));
    }
    format!(
        "{:.0} | {} | {} | {} | {} | {p50} | {p95} | {p99} | {max} | {last} | {cpu} | {verdict} |",
        o.send_rate, o.sent, o.received, o.lost, o.duplicated
    )
}

async fn create_topics(admin: &AdminClient<DefaultClientContext>, names: &[String]) -> Result<()> {
    let new: Vec<NewTopic<'_>> = names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await.map_err(kafka_err("create topics"))?;
    for r in results {
        if let Err((name, code)) = r {
            return Err(external(format!("create topic {name}: {code}")));
        }
    }
    Ok(())
}

async fn delete_topics(admin: &AdminClient<DefaultClientContext>, names: &[String]) {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.delete_topics(&refs, &opts).await {
        Ok(results) => {
            for r in results {
                if let Err((name, code)) = r {
                    eprintln!("warning: delete topic {name}: {code}");
                }
            }
        }
        Err(e) => eprintln!("warning: delete topics {}: {e}", names.join(", ")),
    }
}

/// Waits until the broker's metadata shows every topic with its partitions led.
fn wait_for_topics(c: &BaseConsumer, topics: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in topics {
        loop {
            let ready = match c.fetch_metadata(Some(t.as_str()), Duration::from_secs(5)) {
                Ok(md) => md.topics().iter().any(|mt| {
                    mt.name() == t.as_str()
                        && mt.error().is_none()
                        && !mt.partitions().is_empty()
                        && mt.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
                }),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(external(format!("topic {t} did not appear in the broker's metadata within 30 s")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    seq: i64,
    sent_us: i64,
    recv_us: i64,
}

/// What the consumer thread has read so far.
#[derive(Default)]
struct Inbox {
    /// Every parsed record, in arrival order.
    samples: Vec<Sample>,
    seen: HashSet<i64>,
    /// Distinct warm-up (negative) sequence numbers read.
    warm_up: u64,
    /// Distinct non-negative sequence numbers read.
    measured: u64,
    /// The largest sequence number read.
    max_seq: Option<i64>,
    malformed: u64,
    /// The last consumer error, if any.
    error: Option<String>,
}

impl Inbox {
    fn record(&mut self, seq: i64, sent_us: i64, recv_us: i64) {
        self.samples.push(Sample { seq, sent_us, recv_us });
        if self.seen.insert(seq) {
            if seq < 0 {
                self.warm_up += 1;
            } else {
                self.measured += 1;
            }
        }
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
    }
}

fn parse_record(payload: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (seq, sent) = text.trim().split_once(':')?;
    Some((seq.parse().ok()?, sent.parse().ok()?))
}

/// A console table row `| <seq>:<micros> |` (the header, borders and `Batch: N` lines are not).
fn table_row(line: &[u8]) -> Option<(i64, i64)> {
    let inner = line.trim_ascii().strip_prefix(b"|")?.strip_suffix(b"|")?;
    parse_record(inner)
}

/// What the harness reads Sluice's output with, on its own thread: the read_committed consumer
/// of the output topic, or Sluice's standard output (console sink).
struct Reader {
    inbox: Arc<Mutex<Inbox>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Where the output is read, for messages.
    what: &'static str,
    /// A thread reading a pipe ends only at its end (the child's exit): dropping the reader early
    /// (an error) must not wait for it.
    join_on_drop: bool,
}

impl Reader {
    /// Reads the console sink's table rows from Sluice's standard output as they are printed.
    fn lines(out: ChildStdout) -> Result<Reader> {
        let inbox: Arc<Mutex<Inbox>> = Arc::default();
        let inbox2 = inbox.clone();
        let handle = std::thread::Builder::new()
            .name("latency-stdout".into())
            .spawn(move || read_lines(out, &inbox2))
            .map_err(|source| Error::Io { path: "latency-stdout thread".into(), source })?;
        Ok(Reader {
            inbox,
            stop: Arc::default(),
            handle: Some(handle),
            what: "Sluice's standard output (console sink)",
            join_on_drop: false,
        })
    }

    /// Starts the consumer; returns once the topics exist and the output partition is assigned.
    fn kafka(bootstrap: &str, group: &str, output: &str, topics: Vec<String>) -> Result<Reader> {
        let inbox: Arc<Mutex<Inbox>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (bs, group, out) = (bootstrap.to_string(), group.to_string(), output.to_string());
        let (inbox2, stop2) = (inbox.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("latency-consumer".into())
            .spawn(move || consume(&bs, &group, &out, &topics, &inbox2, &stop2, &ready_tx))
            .map_err(|source| Error::Io { path: "latency-consumer thread".into(), source })?;
        let reader = Reader { inbox, stop, handle: Some(handle), what: "the output topic", join_on_drop: true };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(reader),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(external("the harness's consumer did not start within 60 s")),
        }
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }

    /// Stops the reader and hands over what it read (a stdout reader: once Sluice has exited).
    fn finish(mut self) -> Inbox {
        self.halt(true);
        std::mem::take(&mut *lock(&self.inbox))
    }

    fn halt(&mut self, join: bool) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take()
            && join
        {
            let _ = h.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.halt(self.join_on_drop);
    }
}

/// Reads Sluice's standard output to its end, stamping each table row as its line arrives.
fn read_lines(out: ChildStdout, inbox: &Mutex<Inbox>) {
    let mut r = std::io::BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let recv_us = now_us();
                if let Some((seq, sent_us)) = table_row(&line) {
                    lock(inbox).record(seq, sent_us, recv_us);
                }
            }
            Err(e) => {
                lock(inbox).error = Some(e.to_string());
                return;
            }
        }
    }
}

fn consume(
    bootstrap: &str,
    group: &str,
    output: &str,
    topics: &[String],
    inbox: &Mutex<Inbox>,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<()>>,
) {
    let setup = || -> Result<BaseConsumer> {
        let c: BaseConsumer = client(bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(kafka_err("consumer"))?;
        wait_for_topics(&c, topics)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(output, 0, Offset::Beginning).map_err(kafka_err("consumer assignment"))?;
        c.assign(&tpl).map_err(kafka_err("consumer assignment"))?;
        Ok(c)
    };
    let c = match setup() {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let recv_us = now_us();
                let parsed = m.payload().and_then(parse_record);
                let mut b = lock(inbox);
                match parsed {
                    Some((seq, sent_us)) => b.record(seq, sent_us, recv_us),
                    None => b.malformed += 1,
                }
            }
            Some(Err(e)) => lock(inbox).error = Some(e.to_string()),
            None => {}
        }
    }
}

/// Counts the harness producer's failed deliveries.
#[derive(Default)]
struct Failures {
    failed: AtomicU64,
}

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the harness writes records.
enum Sender {
    Kafka {
        producer: BaseProducer<Failures>,
        topic: String,
    },
    Socket {
        stream: TcpStream,
        buf: String,
    },
    /// The rate source generates its own rows.
    None,
}

impl Sender {
    /// Sends records `seqs`, each stamped with the wall clock as it goes.
    fn send(&mut self, seqs: Range<i64>) -> Result<()> {
        match self {
            Sender::Kafka { producer, topic } => {
                for seq in seqs {
                    let value = format!("{seq}:{}", now_us());
                    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic.as_str()).payload(value.as_bytes());
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                                rec = r;
                                producer.poll(Duration::from_millis(1));
                            }
                            Err((e, _)) => return Err(external(format!("produce: {e}"))),
                        }
                    }
                }
                producer.poll(Duration::ZERO);
                Ok(())
            }
            Sender::Socket { stream, buf } => {
                buf.clear();
                for seq in seqs {
                    buf.push_str(&format!("{seq}:{}\n", now_us()));
                }
                stream.write_all(buf.as_bytes()).and_then(|()| stream.flush()).map_err(|e| {
                    external(format!("writing to the socket source: {e} (a timeout means Sluice stopped reading)"))
                })
            }
            Sender::None => Ok(()),
        }
    }

    /// Serves delivery reports.
    fn poll(&self) {
        if let Sender::Kafka { producer, .. } = self {
            producer.poll(Duration::ZERO);
        }
    }

    fn flush(&self) -> Result<()> {
        match self {
            Sender::Kafka { producer, .. } => {
                producer.flush(Duration::from_secs(10)).map_err(kafka_err("producer flush"))
            }
            _ => Ok(()),
        }
    }

    fn failures(&self) -> u64 {
        match self {
            Sender::Kafka { producer, .. } => producer.context().failed.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// The `sluice run` child; stopped (Ctrl-C, then kill) when dropped.
struct Sluice {
    /// None for the baseline, which runs no Sluice.
    child: Option<Child>,
    log: PathBuf,
    stopped: bool,
}

impl Sluice {
    /// Starts `sluice run`; its standard output goes to the log too, or to a pipe
    /// ([`Sluice::take_stdout`]) when `pipe_stdout`.
    fn spawn(exe: &Path, file: &Path, log: &Path, pipe_stdout: bool) -> Result<Sluice> {
        let err = std::fs::File::create(log).map_err(io_err(log))?;
        let out = if pipe_stdout { Stdio::piped() } else { Stdio::from(err.try_clone().map_err(io_err(log))?) };
        let child = Command::new(exe)
            .arg("run")
            .arg(file)
            // Every progress report in the log, with Sluice's own latency percentiles.
            .arg("--progress")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(exe))?;
        Ok(Sluice { child: Some(child), log: log.to_path_buf(), stopped: false })
    }

    /// The child's CPU time so far (user + system), in seconds; None for the baseline or off
    /// Linux. From `/proc/<pid>/stat`, at 100 clock ticks a second (`USER_HZ` on every common
    /// Linux build).
    fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_cpu_ticks(&stat).map(|t| t as f64 / 100.0)
    }

    fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Stands in for Sluice in the baseline case.
    fn absent(log: &Path) -> Sluice {
        Sluice { child: None, log: log.to_path_buf(), stopped: true }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An error (with the end of the child's log) if the child has exited.
    fn check(&mut self) -> Result<()> {
        let Some(child) = &mut self.child else { return Ok(()) };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(external(format!(
                "sluice run exited ({status}); the end of {}:\n{}",
                self.log.display(),
                self.tail()
            ))),
            Err(e) => Err(Error::Io { path: self.log.clone(), source: e }),
        }
    }

    /// `sluice run` stops its query cleanly on SIGINT (Ctrl-C); SIGKILL after 15 s.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Some(child) = &mut self.child else { return };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    _ => break,
                }
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("warning: sluice (pid {}) did not stop within 15 s of SIGINT; killing it", child.id());
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.stop();
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces, so fields are counted after its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime) = (fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?);
    Some(utime + stime)
}

/// Accepts the socket source's connection, watching the child.
fn accept(listener: &TcpListener, sluice: &mut Sluice) -> Result<TcpStream> {
    listener.set_nonblocking(true).map_err(|e| external(format!("socket listener: {e}")))?;
    let started = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let setup = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_nodelay(true))
                    .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))));
                setup.map_err(|e| external(format!("socket setup: {e}")))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(external(format!("socket accept: {e}"))),
        }
        sluice.check()?;
        if started.elapsed() > WARM_UP_TIMEOUT {
            return Err(external(format!(
                "the socket source did not connect within {} s; the end of {}:\n{}",
                WARM_UP_TIMEOUT.as_secs(),
                sluice.log.display(),
                sluice.tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends warm-up records (negative sequence numbers) until one reaches the output topic; for
/// the rate source, waits for its first row.
fn warm_up(sender: &mut Sender, reader: &Reader, sluice: &mut Sluice) -> Result<Duration> {
    let started = Instant::now();
    let mut k: i64 = 0;
    let mut last: Option<Instant> = None;
    let generated = matches!(*sender, Sender::None);
    loop {
        {
            let b = reader.inbox();
            let arrived = if generated { !b.samples.is_empty() } else { b.warm_up > 0 };
            if arrived {
                return Ok(started.elapsed());
            }
        }
        sluice.check()?;
        if started.elapsed() > WARM_UP_TIMEOUT {
            let consumer = reader.inbox().error.clone().map(|e| format!(" (consumer error: {e})")).unwrap_or_default();
            return Err(external(format!(
                "nothing reached {} within {} s{consumer}; the end of {}:\n{}",
                reader.what,
                WARM_UP_TIMEOUT.as_secs(),
                sluice.log.display(),
                sluice.tail()
            )));
        }
        if !generated && last.is_none_or(|t| t.elapsed() >= WARM_UP_EVERY) {
            k += 1;
            sender.send(-k..-k + 1)?;
            last = Some(Instant::now());
        }
        sender.poll();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `rate × seconds` records at `rate` per second: every 1 ms tick sends the records due
/// by then. Returns the records sent and the time it took.
fn pace(sender: &mut Sender, rate: u64, seconds: u64, sluice: &mut Sluice) -> Result<(u64, Duration)> {
    let total = rate.saturating_mul(seconds);
    let window = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut tick: u64 = 0;
    let mut checked = started;
    loop {
        let elapsed = started.elapsed().min(window);
        let due = ((elapsed.as_micros() * u128::from(rate)) / 1_000_000).min(u128::from(total)) as u64;
        if due > sent {
            sender.send(sent as i64..due as i64)?;
            sent = due;
        } else {
            sender.poll();
        }
        if elapsed >= window {
            break;
        }
        if checked.elapsed() >= Duration::from_millis(100) {
            sluice.check()?;
            checked = Instant::now();
        }
        tick += 1;
        let next = started + Duration::from_millis(tick);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind (a slow send): catch up from now on rather than spin.
            tick = now.duration_since(started).as_millis() as u64;
        }
    }
    Ok((sent, started.elapsed()))
}

/// Sleeps through the rate source's measurement window, watching the child.
fn watch(seconds: u64, sluice: &mut Sluice) -> Result<Duration> {
    let started = Instant::now();
    let window = Duration::from_secs(seconds);
    while started.elapsed() < window {
        sluice.check()?;
        std::thread::sleep(Duration::from_millis(100).min(window.saturating_sub(started.elapsed())));
    }
    Ok(started.elapsed())
}

/// The rate source's row `i` is due at `start + floor(i × 10⁶ / rps)` µs.
struct RateClock {
    start_us: i64,
    rps: u64,
}

impl RateClock {
    /// From any row read: its value and due time.
    fn from_row(value: i64, due_us: i64, rps: u64) -> RateClock {
        RateClock { start_us: due_us - ((i128::from(value) * 1_000_000) / i128::from(rps)) as i64, rps }
    }
    fn due(&self, i: i64) -> i64 {
        self.start_us + ((i128::from(i) * 1_000_000) / i128::from(self.rps)) as i64
    }
    /// The first row due at or after `t_us`.
    fn first_at_or_after(&self, t_us: i64) -> i64 {
        let guess = ((i128::from((t_us - self.start_us).max(0)) * i128::from(self.rps)) / 1_000_000) as i64;
        let mut i = guess.max(0);
        while i > 0 && self.due(i - 1) >= t_us {
            i -= 1;
        }
        while self.due(i) < t_us {
            i += 1;
        }
        i
    }
}

/// Runs one case: topics exist; starts the consumer and Sluice, warms up, measures, stops.
fn run_case(env: &Env, case: &Case, n: usize, topics: &Topics, label: &str) -> Result<Outcome> {
    let work = env.work.join(format!(
        "{:02}-{}-{}-{}-{}-{}",
        n + 1,
        case.source.name(),
        case.sink.name(),
        case.trigger.name(),
        case.guarantee.short(),
        case.rate
    ));
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let checkpoint = work.join("checkpoint");
    let log = work.join("sluice.log");
    let file = work.join("pipeline.toml");

    let listener = match case.source {
        SourceKind::Socket => Some(TcpListener::bind("127.0.0.1:0").map_err(|e| external(format!("bind: {e}")))?),
        _ => None,
    };
    let port = match &listener {
        Some(l) => l.local_addr().map_err(|e| external(format!("socket address: {e}")))?.port(),
        None => 0,
    };
    if case.source != SourceKind::Baseline {
        let name = format!("latency-{}-{}", env.run, n + 1);
        std::fs::write(&file, pipeline(env, case, &name, topics, port, &checkpoint)).map_err(io_err(&file))?;
    }

    let group = format!("sluice-latency-{}-{n}", env.run);
    let consumer = match case.sink {
        SinkKind::Kafka => Some(Reader::kafka(&env.bootstrap, &group, &topics.output, topics.wanted(case))?),
        SinkKind::Console => {
            if case.source == SourceKind::Kafka {
                // The Kafka reader waits for the topics itself; here the input must be led before
                // the harness produces to it.
                let c: BaseConsumer = client(&env.bootstrap).create().map_err(kafka_err("metadata client"))?;
                wait_for_topics(&c, std::slice::from_ref(&topics.input))?;
            }
            None
        }
    };
    let mut sender = match case.source {
        SourceKind::Kafka | SourceKind::Baseline => {
            let producer: BaseProducer<Failures> = client(&env.bootstrap)
                .set("linger.ms", "0")
                .set("acks", "1")
                .set("queue.buffering.max.messages", "1000000")
                .create_with_context(Failures::default())
                .map_err(kafka_err("producer"))?;
            let topic = if case.source == SourceKind::Baseline { &topics.output } else { &topics.input };
            Sender::Kafka { producer, topic: topic.clone() }
        }
        SourceKind::Socket | SourceKind::Rate => Sender::None,
    };

    let mut sluice = if case.source == SourceKind::Baseline {
        eprintln!("{label}: no sluice: the harness writes to the output topic itself");
        Sluice::absent(&log)
    } else {
        eprintln!("{label}: sluice run {} (log {})", file.display(), log.display());
        Sluice::spawn(&env.exe, &file, &log, case.sink == SinkKind::Console)?
    };
    let reader = match consumer {
        Some(r) => r,
        None => Reader::lines(
            sluice
                .take_stdout()
                .ok_or_else(|| Error::Internal("bench latency: sluice's stdout is not piped".into()))?,
        )?,
    };
    if let Some(l) = &listener {
        let stream = accept(l, &mut sluice)?;
        sender = Sender::Socket { stream, buf: String::new() };
    }
    let warm = warm_up(&mut sender, &reader, &mut sluice)?;
    eprintln!("{label}: running (first record through after {:.1} s); measuring {} s", warm.as_secs_f64(), env.seconds);

    let t0 = now_us();
    let cpu0 = sluice.cpu_seconds();
    let (expected, send_time): (Option<Range<i64>>, Duration) = match case.source {
        SourceKind::Rate => (None, watch(env.seconds, &mut sluice)?),
        _ => {
            let (sent, took) = pace(&mut sender, case.rate, env.seconds, &mut sluice)?;
            sender.flush()?;
            (Some(0..sent as i64), took)
        }
    };
    let t_end = t0 + send_time.as_micros() as i64;
    let cpu_pct = match (cpu0, sluice.cpu_seconds()) {
        (Some(a), Some(b)) => Some(100.0 * (b - a) / send_time.as_secs_f64().max(1e-9)),
        _ => None,
    };
    let expected = match expected {
        Some(r) => r,
        None => {
            // The rate rows due in [t0, t_end).
            let first = reader.inbox().samples.first().copied();
            let Some(s) = first else {
                return Err(external("the rate source's first row vanished from the harness's records"));
            };
            let clock = RateClock::from_row(s.seq, s.sent_us, case.rate);
            clock.first_at_or_after(t0)..clock.first_at_or_after(t_end)
        }
    };
    let want = (expected.end - expected.start).max(0) as u64;
    let wait = Instant::now();
    while wait.elapsed() < STRAGGLERS {
        let done = {
            let b = reader.inbox();
            match case.source {
                // One partition, in order: the last due row read means all were (or are lost).
                SourceKind::Rate => b.max_seq.is_some_and(|m| m >= expected.end - 1),
                _ => b.measured >= want,
            }
        };
        if done {
            break;
        }
        sluice.check()?;
        sender.poll();
        std::thread::sleep(Duration::from_millis(20));
    }
    let send_failures = sender.failures();
    sluice.stop();
    drop(sender);
    let inbox = reader.finish();
    let _ = std::fs::remove_dir_all(&checkpoint);

    let mut o = analyze(&inbox.samples, &expected, t0, t_end);
    o.malformed = inbox.malformed;
    o.send_failures = send_failures;
    o.send_rate = want as f64 / send_time.as_secs_f64().max(1e-9);
    o.cpu_pct = cpu_pct;
    o.keeps_up = o.keeps_up && o.send_rate >= 0.95 * case.rate as f64;
    Ok(o)
}

/// The figures from the records read: counts over `expected`, latency percentiles over those
/// sent from `t0 + 1 s`, the last second's p50 over those sent from `t_end - 1 s`.
fn analyze(samples: &[Sample], expected: &Range<i64>, t0: i64, t_end: i64) -> Outcome {
    let mut first: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut total = 0u64;
    for s in samples.iter().filter(|s| expected.contains(&s.seq)) {
        total += 1;
        first.entry(s.seq).or_insert((s.sent_us, s.recv_us));
    }
    let want = (expected.end - expected.start).max(0) as u64;
    let received = first.len() as u64;
    let mut all: Vec<i64> = first.values().filter(|(s, _)| *s >= t0 + SKIP_US).map(|(s, r)| r - s).collect();
    let mut last: Vec<i64> = first.values().filter(|(s, _)| *s >= t_end - 1_000_000).map(|(s, r)| r - s).collect();
    all.sort_unstable();
    last.sort_unstable();
    let percentiles = (!all.is_empty()).then(|| [pct(&all, 50.0), pct(&all, 95.0), pct(&all, 99.0), pct(&all, 100.0)]);
    let p50_last = (!last.is_empty()).then(|| pct(&last, 50.0));
    let lost = want.saturating_sub(received);
    let steady = match (percentiles, p50_last) {
        (Some([p50, ..]), Some(l)) => l <= 2 * p50 + 5_000,
        _ => false,
    };
    Outcome {
        sent: want,
        received,
        lost,
        duplicated: total - received,
        percentiles,
        p50_last,
        keeps_up: lost == 0 && want > 0 && steady,
        ..Outcome::default()
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice.
fn pct(sorted: &[i64], p: f64) -> i64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_clock_finds_rows_by_due_time() {
        let c = RateClock::from_row(3, 1_000_000 + 3_000_000 / 7, 7);
        assert_eq!(c.start_us, 1_000_000);
        let i = c.first_at_or_after(2_000_000);
        assert!(c.due(i) >= 2_000_000 && c.due(i - 1) < 2_000_000);
        assert_eq!(c.first_at_or_after(0), 0);
    }

    #[test]
    fn percentiles_and_counts() {
        let s = |seq, sent_us, recv_us| Sample { seq, sent_us, recv_us };
        let samples =
            vec![s(-1, 0, 5), s(0, 2_000_000, 2_001_000), s(1, 2_500_000, 2_503_000), s(1, 2_500_000, 2_600_000)];
        let o = analyze(&samples, &(0..3), 0, 3_000_000);
        assert_eq!((o.sent, o.received, o.lost, o.duplicated), (3, 2, 1, 1));
        assert_eq!(o.percentiles, Some([1_000, 3_000, 3_000, 3_000]));
        assert!(!o.keeps_up);
        assert_eq!(pct(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(parse_record(b"12:345"), Some((12, 345)));
        assert_eq!(table_row(b"| 12:345      |\n"), Some((12, 345)));
        assert_eq!(table_row(b"| value |\n"), None);
        assert_eq!(table_row(b"+-------+\n"), None);
        let stat = "4242 (sluice run) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 31 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_rate("10k").ok(), Some(10_000));
        let table = [("at-least-once", 1), ("exactly-once", 2)];
        assert_eq!(choices(&["exactly_once,at-least-once".into()], "--g", "g", &table, &[9]).ok(), Some(vec![2, 1]));
        assert_eq!(choices(&[], "--g", "g", &table, &[9]).ok(), Some(vec![9]));
        let err = choices(&["x".into()], "--g", "guarantee", &table, &[9]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--g: unknown guarantee `x`; use at-least-once, exactly-once")));
    }

    #[test]
    fn pipeline_files_parse() {
        let env = Env {
            bootstrap: "127.0.0.1:9092".into(),
            exe: "sluice".into(),
            identity: "/p/identity.wasm".into(),
            work: "/w".into(),
            seconds: 10,
            interval: "100ms".into(),
            run: "r".into(),
        };
        let topics = Topics { input: "in".into(), output: "out".into() };
        for source in [SourceKind::Kafka, SourceKind::Socket, SourceKind::Rate] {
            for sink in [SinkKind::Kafka, SinkKind::Console] {
                for trigger in [TriggerKind::Default, TriggerKind::Continuous] {
                    for guarantee in [Guarantee::AtLeastOnce, Guarantee::ExactlyOnce] {
                        let case = Case { source, sink, trigger, guarantee, rate: 1000 };
                        let text = pipeline(&env, &case, "n", &topics, 9999, Path::new("/w/ck"));
                        let spec = crate::PipelineSpec::from_toml(&text, "p.toml", Path::new("/w"));
                        assert!(spec.is_ok(), "{text}\n{:?}", spec.err());
                    }
                }
            }
        }
    }
}

//! Prometheus metrics of running queries: Spark's Dropwizard gauges (`inputRate-total`,
//! `processingRate-total`, `latency`, `eventTime-watermark`, `states-rowsTotal`,
//! `states-usedBytes`) under Prometheus names, plus batch counters, phase times, Kafka lag,
//! per-plugin time, memory and fuel, the server's restarts, and a few figures of the process.
//!
//! [`Metrics`] is a [`StreamingQueryListener`]: it learns everything from the listener bus and
//! never touches a query. Every query series carries a `query` label, the query's name or, when
//! it has none, its id. [`Metrics::render`] encodes the registry with `prometheus_client`'s
//! OpenMetrics text encoder (served as [`CONTENT_TYPE`]); no exposition text is written by hand.
//! The process figures are read from `/proc` at render time and keep their last value where
//! `/proc` cannot be read.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::listener::{QueryEvent, StreamingQueryListener};
use crate::progress::{PluginProgress, StreamingQueryProgress};

/// The `Content-Type` of [`Metrics::render`]'s text (OpenMetrics 1.0.0).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The page size `/proc/self/statm` counts in. Assumed, not asked of the kernel (that needs
/// `sysconf`, i.e. unsafe code): 4 KiB on x86-64 and on most aarch64 kernels.
const PAGE_SIZE: u64 = 4096;

/// The phases of `durationMs` exported as `sluice_query_phase_seconds` (not `triggerExecution`,
/// which is `sluice_query_latency_seconds`).
const PHASES: [&str; 6] = ["latestOffset", "getBatch", "walCommit", "addBatch", "commitOffsets", "queryPlanning"];

type FloatGauge = Gauge<f64, AtomicU64>;
type UintGauge = Gauge<u64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Labels of a query's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    query: String,
}

/// Labels of a query's time in one phase of its batches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    query: String,
    phase: String,
}

/// Labels of a query's end-to-end latency percentiles.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    query: String,
    quantile: String,
}

/// Labels of a plugin's series: the query it runs in, its name and its role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    query: String,
    plugin: String,
    role: String,
}

/// The `query` label of a query: its name or, when it has none, its id.
pub(crate) fn query_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => id.to_string(),
    }
}

/// The Prometheus metrics of the queries it listens to, plus the process's memory, threads
/// and open files. Add it to a session's listeners and serve [`Metrics::render`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Query id → `query` label, learnt from started and progress events (idle and terminated
    /// events carry only the id).
    labels: Mutex<HashMap<String, String>>,
    query: QueryMetrics,
    plugins: PluginMetrics,
    process: ProcessMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered and no series yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let query = QueryMetrics::register(&mut registry);
        let plugins = PluginMetrics::register(&mut registry);
        let process = ProcessMetrics::register(&mut registry);
        Metrics { registry, labels: Mutex::default(), query, plugins, process }
    }

    /// All metrics as OpenMetrics text, ending with `# EOF` (serve it as [`CONTENT_TYPE`]).
    /// Reads the process figures from `/proc` first (a few small reads of procfs).
    pub fn render(&self) -> String {
        self.process.refresh();
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            tracing::error!("cannot encode the metrics as OpenMetrics text");
        }
        text
    }

    /// Counts a restart of a query by the server's restart policy (`sluice_query_restarts`).
    pub(crate) fn query_restarted(&self, query_label: &str) {
        self.query.restarts.get_or_create(&labels(query_label)).inc();
    }

    /// Whether the server is waiting to restart a query (`sluice_query_retrying`, 0 or 1).
    pub(crate) fn set_retrying(&self, query_label: &str, retrying: bool) {
        self.query.retrying.get_or_create(&labels(query_label)).set(i64::from(retrying));
    }

    /// The labels of a query, remembering its label for events that carry only the id.
    fn remember(&self, id: &str, name: Option<&str>) -> QueryLabels {
        let label = query_label(id, name);
        lock(&self.labels).insert(id.to_string(), label.clone());
        QueryLabels { query: label }
    }

    /// The labels of a query known by its id only (its id if it was never seen with a name).
    fn recall(&self, id: &str) -> QueryLabels {
        let label = lock(&self.labels).get(id).cloned().unwrap_or_else(|| id.to_string());
        QueryLabels { query: label }
    }
}

impl StreamingQueryListener for Metrics {
    fn on_event(&self, event: &QueryEvent) {
        match event {
            QueryEvent::Started(e) => self.query.started(&self.remember(&e.id, e.name.as_deref())),
            QueryEvent::Progress { progress } => {
                let l = self.remember(&progress.id, progress.name.as_deref());
                self.query.progress(&l, progress);
                self.plugins.progress(&l.query, &progress.plugins);
            }
            QueryEvent::Idle(e) => {
                self.query.idle_events.get_or_create(&self.recall(&e.id)).inc();
            }
            QueryEvent::Terminated(e) => self.query.terminated(&self.recall(&e.id), e.exception.is_some()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn labels(query_label: &str) -> QueryLabels {
    QueryLabels { query: query_label.to_string() }
}

fn ms_to_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Registers `metric` under `name` (plus `_unit` when it has a unit, which also writes a
/// `# UNIT` line). The registry appends a full stop to `help`.
fn register(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) {
    match unit {
        Some(unit) => r.register_with_unit(name, help, unit, metric),
        None => r.register(name, help, metric),
    }
}

/// A new family, registered. Families without series are left out of the text altogether.
fn family<L, M>(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<L, M>
where
    L: Clone + Hash + Eq,
    M: Default,
    Family<L, M>: Metric,
{
    let f: Family<L, M> = Family::default();
    register(r, name, help, unit, f.clone());
    f
}

/// Batch durations from 1 ms to about a minute (the last bucket is 65.536 s; `+Inf` above).
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The series of every query, labelled `query`.
#[derive(Debug)]
struct QueryMetrics {
    input_rate: Family<QueryLabels, FloatGauge>,
    processing_rate: Family<QueryLabels, FloatGauge>,
    latency: Family<QueryLabels, FloatGauge>,
    end_to_end: Family<QuantileLabels, FloatGauge>,
    watermark: Family<QueryLabels, FloatGauge>,
    state_rows: Family<QueryLabels, UintGauge>,
    state_used_bytes: Family<QueryLabels, UintGauge>,
    last_batch_id: Family<QueryLabels, UintGauge>,
    input_rows: Family<QueryLabels, Counter>,
    output_rows: Family<QueryLabels, Counter>,
    batches: Family<QueryLabels, Counter>,
    batch_duration: Family<QueryLabels, Histogram>,
    phase: Family<PhaseLabels, FloatGauge>,
    offsets_behind: Family<QueryLabels, FloatGauge>,
    active: Family<QueryLabels, Gauge>,
    idle_events: Family<QueryLabels, Counter>,
    failures: Family<QueryLabels, Counter>,
    restarts: Family<QueryLabels, Counter>,
    retrying: Family<QueryLabels, Gauge>,
}

impl QueryMetrics {
    fn register(r: &mut Registry) -> Self {
        let seconds = || Some(Unit::Seconds);
        let bytes = || Some(Unit::Bytes);
        let ctor: fn() -> Histogram = batch_histogram;
        let batch_duration: Family<QueryLabels, Histogram> = Family::new_with_constructor(ctor);
        register(
            r,
            "sluice_query_batch_duration",
            "Wall time of each batch (triggerExecution)",
            seconds(),
            batch_duration.clone(),
        );
        QueryMetrics {
            input_rate: family(
                r,
                "sluice_query_input_rate",
                "Rows read per second since the previous batch (Spark's inputRate-total)",
                None,
            ),
            processing_rate: family(
                r,
                "sluice_query_processing_rate",
                "Rows processed per second of the last batch's execution (Spark's processingRate-total)",
                None,
            ),
            latency: family(
                r,
                "sluice_query_latency",
                "Wall time of the last batch, triggerExecution (Spark's latency)",
                seconds(),
            ),
            end_to_end: family(
                r,
                "sluice_query_end_to_end_latency",
                "End-to-end latency of the last batch's (or epoch's) rows, from source time to the sink, by quantile (1 = max)",
                seconds(),
            ),
            watermark: family(
                r,
                "sluice_query_event_time_watermark",
                "The event-time watermark after the last batch, Unix time (Spark's eventTime-watermark)",
                seconds(),
            ),
            state_rows: family(
                r,
                "sluice_query_state_rows",
                "Keys held by the query's stateful operators (Spark's states-rowsTotal)",
                None,
            ),
            state_used_bytes: family(
                r,
                "sluice_query_state_used",
                "Estimated memory of the query's state (Spark's states-usedBytes)",
                bytes(),
            ),
            last_batch_id: family(
                r,
                "sluice_query_last_batch_id",
                "Id of the batch the other query gauges come from",
                None,
            ),
            input_rows: family(r, "sluice_query_input_rows", "Rows read from all sources", None),
            output_rows: family(r, "sluice_query_output_rows", "Rows written to the sink", None),
            batches: family(r, "sluice_query_batches", "Batches completed", None),
            batch_duration,
            phase: family(
                r,
                "sluice_query_phase",
                "Time of the last batch in one phase (Spark's durationMs)",
                seconds(),
            ),
            offsets_behind: family(
                r,
                "sluice_source_offsets_behind_latest",
                "Most offsets any Kafka partition is behind its latest, over the sources (maxOffsetsBehindLatest)",
                None,
            ),
            active: family(r, "sluice_query_active", "1 while the query runs, 0 once it has terminated", None),
            idle_events: family(
                r,
                "sluice_query_idle_events",
                "Idle events: no new data for noDataProgressEventInterval",
                None,
            ),
            failures: family(r, "sluice_query_failures", "Runs of the query that ended with an error", None),
            restarts: family(r, "sluice_query_restarts", "Restarts of the query by the server's restart policy", None),
            retrying: family(
                r,
                "sluice_query_retrying",
                "1 while the server waits to restart the query after a failure",
                None,
            ),
        }
    }

    fn started(&self, l: &QueryLabels) {
        self.active.get_or_create(l).set(1);
        // Counters appear at zero, so that the first increment shows in rate().
        for c in [&self.input_rows, &self.output_rows, &self.batches, &self.idle_events, &self.failures] {
            c.get_or_create(l).inc_by(0);
        }
    }

    fn progress(&self, l: &QueryLabels, p: &StreamingQueryProgress) {
        self.input_rate.get_or_create(l).set(p.input_rows_per_second.unwrap_or(0.0));
        self.processing_rate.get_or_create(l).set(p.processed_rows_per_second.unwrap_or(0.0));
        let trigger_ms = p.duration_ms.get("triggerExecution").copied().unwrap_or(p.batch_duration);
        self.latency.get_or_create(l).set(ms_to_secs(trigger_ms));
        self.batch_duration.get_or_create(l).observe(ms_to_secs(trigger_ms));
        if let Some(e) = &p.latency_ms {
            for (q, ms) in [("0.5", e.p50), ("0.95", e.p95), ("0.99", e.p99), ("1", e.max)] {
                let labels = QuantileLabels { query: l.query.clone(), quantile: q.to_string() };
                self.end_to_end.get_or_create(&labels).set(ms / 1000.0);
            }
        }
        if let Some(secs) = p.event_time.get("watermark").and_then(|w| watermark_secs(w.as_str())) {
            self.watermark.get_or_create(l).set(secs);
        }
        let rows = p.state_operators.iter().fold(0u64, |n, s| n.saturating_add(s.num_rows_total));
        let bytes = p.state_operators.iter().fold(0u64, |n, s| n.saturating_add(s.memory_used_bytes));
        self.state_rows.get_or_create(l).set(rows);
        self.state_used_bytes.get_or_create(l).set(bytes);
        self.last_batch_id.get_or_create(l).set(p.batch_id);
        self.input_rows.get_or_create(l).inc_by(p.num_input_rows);
        if let Ok(n) = u64::try_from(p.sink.num_output_rows) {
            self.output_rows.get_or_create(l).inc_by(n);
        }
        self.batches.get_or_create(l).inc();
        self.phases(l, &p.duration_ms);
        if let Some(lag) = max_offsets_behind(p) {
            self.offsets_behind.get_or_create(l).set(lag);
        }
    }

    /// The last batch's time per phase. A phase the batch skipped took no time; one the engine
    /// never reports gets no series.
    fn phases(&self, l: &QueryLabels, durations: &BTreeMap<String, u64>) {
        for phase in PHASES {
            let labels = PhaseLabels { query: l.query.clone(), phase: phase.to_string() };
            if let Some(ms) = durations.get(phase) {
                self.phase.get_or_create(&labels).set(ms_to_secs(*ms));
            } else if let Some(gauge) = self.phase.get(&labels) {
                gauge.set(0.0);
            }
        }
    }

    fn terminated(&self, l: &QueryLabels, failed: bool) {
        self.active.get_or_create(l).set(0);
        if failed {
            self.failures.get_or_create(l).inc();
        }
    }
}

/// A watermark as Spark writes it (`2016-12-14T19:27:14.000Z`) → Unix seconds.
fn watermark_secs(text: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// The largest `maxOffsetsBehindLatest` over the sources that report one (Kafka's).
fn max_offsets_behind(p: &StreamingQueryProgress) -> Option<f64> {
    p.sources
        .iter()
        .filter_map(|s| s.metrics.get("maxOffsetsBehindLatest")?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

/// The series of every plugin, labelled `query`, `plugin` and `role`.
#[derive(Debug)]
struct PluginMetrics {
    busy: Family<PluginLabels, FloatCounter>,
    wall: Family<PluginLabels, FloatCounter>,
    calls: Family<PluginLabels, Counter>,
    input_rows: Family<PluginLabels, Counter>,
    output_rows: Family<PluginLabels, Counter>,
    memory_peak: Family<PluginLabels, UintGauge>,
    fuel: Family<PluginLabels, Counter>,
    retries: Family<PluginLabels, Counter>,
    dead_lettered_rows: Family<PluginLabels, Counter>,
}

impl PluginMetrics {
    fn register(r: &mut Registry) -> Self {
        let seconds = || Some(Unit::Seconds);
        PluginMetrics {
            busy: family(
                r,
                "sluice_plugin_busy",
                "Time inside the plugin, summed over its instances (CPU time)",
                seconds(),
            ),
            wall: family(r, "sluice_plugin_wall", "Wall time of the plugin's part of each batch", seconds()),
            calls: family(r, "sluice_plugin_calls", "Calls into the plugin", None),
            input_rows: family(r, "sluice_plugin_input_rows", "Rows handed to the plugin", None),
            output_rows: family(r, "sluice_plugin_output_rows", "Rows the plugin produced", None),
            memory_peak: family(
                r,
                "sluice_plugin_memory_peak",
                "Peak memory over the plugin's instances in the last batch",
                Some(Unit::Bytes),
            ),
            fuel: family(
                r,
                "sluice_plugin_fuel",
                "Fuel the plugin burnt (about one unit per Wasm instruction), when metered",
                None,
            ),
            retries: family(
                r,
                "sluice_plugin_retries",
                "Calls retried on a fresh instance under the plugin's on_error policy",
                None,
            ),
            dead_lettered_rows: family(
                r,
                "sluice_plugin_dead_lettered_rows",
                "Rows sent to the dead-letter sink under the plugin's on_error policy",
                None,
            ),
        }
    }

    fn progress(&self, query: &str, plugins: &[PluginProgress]) {
        for p in plugins {
            let l = PluginLabels { query: query.to_string(), plugin: p.name.clone(), role: p.role.clone() };
            self.busy.get_or_create(&l).inc_by(ms_to_secs(p.busy_ms));
            self.wall.get_or_create(&l).inc_by(ms_to_secs(p.time_ms));
            self.calls.get_or_create(&l).inc_by(p.calls);
            self.input_rows.get_or_create(&l).inc_by(p.input_rows);
            self.output_rows.get_or_create(&l).inc_by(p.output_rows);
            self.memory_peak.get_or_create(&l).set(p.memory_peak_bytes);
            if let Some(fuel) = p.fuel {
                self.fuel.get_or_create(&l).inc_by(fuel);
            }
            self.retries.get_or_create(&l).inc_by(p.retries);
            self.dead_lettered_rows.get_or_create(&l).inc_by(p.dead_lettered_rows);
        }
    }
}

/// Figures of the whole process, read from `/proc` at render time.
#[derive(Debug)]
struct ProcessMetrics {
    resident_memory: UintGauge,
    threads: UintGauge,
    open_fds: UintGauge,
}

impl ProcessMetrics {
    fn register(r: &mut Registry) -> Self {
        let m =
            ProcessMetrics { resident_memory: Gauge::default(), threads: Gauge::default(), open_fds: Gauge::default() };
        let resident_help = "Resident memory of the process (/proc/self/statm, 4096-byte pages assumed)";
        register(r, "sluice_process_resident_memory", resident_help, Some(Unit::Bytes), m.resident_memory.clone());
        register(r, "sluice_process_threads", "Threads of the process", None, m.threads.clone());
        register(r, "sluice_process_open_fds", "Open file descriptors of the process", None, m.open_fds.clone());
        m
    }

    /// Reads the figures anew; one that cannot be read keeps its last value.
    fn refresh(&self) {
        if let Some(pages) = resident_pages() {
            self.resident_memory.set(pages.saturating_mul(PAGE_SIZE));
        }
        if let Some(n) = threads() {
            self.threads.set(n);
        }
        if let Some(n) = open_fds() {
            self.open_fds.set(n);
        }
    }
}

/// The second field of `/proc/self/statm`: resident pages.
fn resident_pages() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `Threads:` of `/proc/self/status`.
fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.filter_map(Result::ok).count();
    u64::try_from(n.saturating_sub(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::{QueryIdleEvent, QueryStartedEvent, QueryTerminatedEvent};
    use crate::progress::{SinkProgress, SourceProgress, StateOperatorProgress};

    fn progress(name: Option<&str>, batch_id: u64, rows: u64, trigger_ms: u64) -> StreamingQueryProgress {
        let mut plugin = PluginProgress::new("split_words", "transform");
        plugin.time_ms = 400;
        plugin.busy_ms = 250;
        plugin.calls = 2;
        plugin.input_rows = rows;
        plugin.output_rows = rows * 3;
        plugin.memory_peak_bytes = 65_536 * (batch_id + 1);
        plugin.fuel = Some(1000);
        StreamingQueryProgress {
            id: "id-1".to_string(),
            run_id: "run-1".to_string(),
            name: name.map(str::to_string),
            timestamp: "2026-01-01T00:00:00.000Z".to_string(),
            batch_id,
            batch_duration: trigger_ms,
            num_input_rows: rows,
            input_rows_per_second: Some(rows as f64),
            processed_rows_per_second: Some(rows as f64 * 2.0),
            duration_ms: BTreeMap::from([
                ("triggerExecution".to_string(), trigger_ms),
                ("addBatch".to_string(), trigger_ms / 2),
                ("latestOffset".to_string(), 5),
            ]),
            event_time: BTreeMap::new(),
            state_operators: vec![],
            sources: vec![],
            sink: SinkProgress { description: "ConsoleSink".to_string(), num_output_rows: rows as i64 },
            plugins: vec![plugin],
            latency_ms: None,
            events: vec![],
        }
    }

    fn with_state_and_lag(mut p: StreamingQueryProgress, watermark: &str, lag: &str) -> StreamingQueryProgress {
        p.event_time.insert("watermark".to_string(), watermark.to_string());
        p.state_operators.push(StateOperatorProgress {
            operator_name: "stateStoreSave".to_string(),
            num_rows_total: 10 * (p.batch_id + 1),
            num_rows_updated: 1,
            num_rows_removed: 0,
            commit_time_ms: 1,
            memory_used_bytes: 4096,
            num_rows_dropped_by_watermark: 0,
        });
        let source = |lag: Option<&str>| SourceProgress {
            description: "KafkaV2[Subscribe[t]]".to_string(),
            start_offset: None,
            end_offset: None,
            latest_offset: None,
            num_input_rows: 0,
            input_rows_per_second: None,
            processed_rows_per_second: None,
            metrics: lag
                .map(|l| BTreeMap::from([("maxOffsetsBehindLatest".to_string(), l.to_string())]))
                .unwrap_or_default(),
        };
        p.sources = vec![source(Some(lag)), source(None), source(Some("3"))];
        p
    }

    fn started(id: &str, name: Option<&str>) -> QueryEvent {
        QueryEvent::Started(QueryStartedEvent {
            id: id.to_string(),
            run_id: "run-1".to_string(),
            name: name.map(str::to_string),
            timestamp: "2026-01-01T00:00:00.000Z".to_string(),
        })
    }

    fn idle(id: &str) -> QueryEvent {
        QueryEvent::Idle(QueryIdleEvent {
            id: id.to_string(),
            run_id: "run-1".to_string(),
            timestamp: "2026-01-01T00:00:01.000Z".to_string(),
        })
    }

    fn terminated(id: &str, exception: Option<&str>) -> QueryEvent {
        QueryEvent::Terminated(QueryTerminatedEvent {
            id: id.to_string(),
            run_id: "run-1".to_string(),
            exception: exception.map(str::to_string),
            error_class_on_exception: exception.map(|_| "User".to_string()),
        })
    }

    fn progress_event(p: StreamingQueryProgress) -> QueryEvent {
        QueryEvent::Progress { progress: Box::new(p) }
    }

    /// The value of the sample line that starts with `series` (name and labels, as encoded).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn assert_value(text: &str, series: &str, expected: f64) {
        match value(text, series) {
            Some(v) => assert!((v - expected).abs() < 1e-9, "{series} is {v}, not {expected}:\n{text}"),
            None => panic!("no sample {series}:\n{text}"),
        }
    }

    #[test]
    fn a_query_life_in_metrics() {
        let m = Metrics::new();
        m.on_event(&started("id-1", Some("q")));
        let first = with_state_and_lag(progress(Some("q"), 0, 100, 500), "1970-01-01T00:00:10.000Z", "40");
        m.on_event(&progress_event(first));
        let second = with_state_and_lag(progress(Some("q"), 1, 200, 1500), "1970-01-01T00:00:20.000Z", "7");
        m.on_event(&progress_event(second));
        m.on_event(&idle("id-1"));
        m.on_event(&terminated("id-1", Some("boom")));
        let text = m.render();

        assert!(text.ends_with("# EOF\n"), "{text}");
        let q = r#"{query="q"}"#;
        let series = |name: &str| format!("{name}{q}");
        assert_value(&text, &series("sluice_query_input_rows_total"), 300.0);
        assert_value(&text, &series("sluice_query_output_rows_total"), 300.0);
        assert_value(&text, &series("sluice_query_batches_total"), 2.0);
        assert_value(&text, &series("sluice_query_batch_duration_seconds_count"), 2.0);
        assert_value(&text, &series("sluice_query_batch_duration_seconds_sum"), 2.0);
        assert_value(&text, r#"sluice_query_batch_duration_seconds_bucket{le="+Inf",query="q"}"#, 2.0);
        assert_value(&text, &series("sluice_query_last_batch_id"), 1.0);
        assert_value(&text, &series("sluice_query_input_rate"), 200.0);
        assert_value(&text, &series("sluice_query_processing_rate"), 400.0);
        assert_value(&text, &series("sluice_query_latency_seconds"), 1.5);
        assert_value(&text, &series("sluice_query_event_time_watermark_seconds"), 20.0);
        assert_value(&text, &series("sluice_query_state_rows"), 20.0);
        assert_value(&text, &series("sluice_query_state_used_bytes"), 4096.0);
        assert_value(&text, &series("sluice_source_offsets_behind_latest"), 7.0);
        assert_value(&text, r#"sluice_query_phase_seconds{query="q",phase="addBatch"}"#, 0.75);
        assert_value(&text, r#"sluice_query_phase_seconds{query="q",phase="latestOffset"}"#, 0.005);
        assert!(!text.contains(r#"phase="queryPlanning""#), "{text}");
        assert_value(&text, &series("sluice_query_active"), 0.0);
        assert_value(&text, &series("sluice_query_failures_total"), 1.0);
        assert_value(&text, &series("sluice_query_idle_events_total"), 1.0);

        let p = r#"{query="q",plugin="split_words",role="transform"}"#;
        let plugin = |name: &str| format!("{name}{p}");
        assert_value(&text, &plugin("sluice_plugin_busy_seconds_total"), 0.5);
        assert_value(&text, &plugin("sluice_plugin_wall_seconds_total"), 0.8);
        assert_value(&text, &plugin("sluice_plugin_calls_total"), 4.0);
        assert_value(&text, &plugin("sluice_plugin_input_rows_total"), 300.0);
        assert_value(&text, &plugin("sluice_plugin_output_rows_total"), 900.0);
        assert_value(&text, &plugin("sluice_plugin_memory_peak_bytes"), 131_072.0);
        assert_value(&text, &plugin("sluice_plugin_fuel_total"), 2000.0);
    }

    #[test]
    fn batch_durations_fall_in_their_buckets() {
        let m = Metrics::new();
        m.on_event(&progress_event(progress(Some("q"), 0, 1, 500)));
        m.on_event(&progress_event(progress(Some("q"), 1, 1, 1500)));
        let text = m.render();
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(r#"sluice_query_batch_duration_seconds_bucket{le=""#))
            .filter_map(|rest| {
                let (le, rest) = rest.split_once('"')?;
                let count = rest.strip_prefix(r#",query="q"} "#)?;
                Some((le.parse().ok()?, count.parse().ok()?))
            })
            .collect();
        assert_eq!(buckets.len(), 18, "{text}");
        for (le, count) in buckets {
            let expected = [0.5, 1.5].iter().filter(|d| **d <= le).count() as f64;
            assert_eq!(count, expected, "bucket le={le}:\n{text}");
        }
    }

    #[test]
    fn unnamed_queries_are_labelled_by_id_and_server_figures_show() {
        let m = Metrics::new();
        m.on_event(&started("abc", None));
        m.on_event(&idle("abc"));
        m.on_event(&idle("never-started"));
        m.query_restarted("abc");
        m.set_retrying("abc", true);
        let text = m.render();
        assert_value(&text, r#"sluice_query_active{query="abc"}"#, 1.0);
        assert_value(&text, r#"sluice_query_idle_events_total{query="abc"}"#, 1.0);
        assert_value(&text, r#"sluice_query_idle_events_total{query="never-started"}"#, 1.0);
        assert_value(&text, r#"sluice_query_failures_total{query="abc"}"#, 0.0);
        assert_value(&text, r#"sluice_query_restarts_total{query="abc"}"#, 1.0);
        assert_value(&text, r#"sluice_query_retrying{query="abc"}"#, 1.0);
        m.set_retrying("abc", false);
        m.on_event(&terminated("abc", None));
        let text = m.render();
        assert_value(&text, r#"sluice_query_retrying{query="abc"}"#, 0.0);
        assert_value(&text, r#"sluice_query_active{query="abc"}"#, 0.0);
        assert_value(&text, r#"sluice_query_failures_total{query="abc"}"#, 0.0);
    }

    #[test]
    fn absent_figures_get_no_series_and_every_metric_has_help() {
        let m = Metrics::new();
        // A progress without a started event (dropped by a full queue) still names the query.
        m.on_event(&progress_event(progress(Some("late"), 3, 10, 20)));
        m.on_event(&terminated("id-1", None));
        let text = m.render();
        assert_value(&text, r#"sluice_query_active{query="late"}"#, 0.0);
        assert_value(&text, r#"sluice_query_last_batch_id{query="late"}"#, 3.0);
        assert!(!text.contains("sluice_query_event_time_watermark_seconds"), "{text}");
        assert!(!text.contains("sluice_source_offsets_behind_latest"), "{text}");
        assert!(!text.contains("sluice_query_restarts"), "{text}");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(text.contains(&format!("# HELP {name} ")), "no help for {name}:\n{text}");
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_figures_come_from_proc() {
        let text = Metrics::new().render();
        assert!(value(&text, "sluice_process_resident_memory_bytes").unwrap() > 0.0, "{text}");
        assert!(value(&text, "sluice_process_threads").unwrap() >= 1.0, "{text}");
        assert!(value(&text, "sluice_process_open_fds").unwrap() >= 1.0, "{text}");
    }

    #[test]
    fn metrics_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }
}

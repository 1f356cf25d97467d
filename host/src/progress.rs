//! Progress reports with Spark's field names (`StreamingQueryProgress`), so dashboards and
//! parsers written for Spark read them as they are; plus per-plugin figures Spark has no
//! equivalent for.

use std::collections::BTreeMap;

use serde::Serialize;

/// One micro-batch's progress (Spark's `StreamingQueryProgress`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StreamingQueryProgress {
    /// Stable query id (survives restarts once checkpoints exist).
    pub id: String,
    /// Id of this run of the query.
    pub run_id: String,
    /// Query name.
    pub name: Option<String>,
    /// Trigger start, ISO-8601 UTC.
    pub timestamp: String,
    /// The micro-batch id.
    pub batch_id: u64,
    /// Wall time of the whole batch in ms.
    pub batch_duration: u64,
    /// Rows read from all sources.
    pub num_input_rows: u64,
    /// Input rate since the previous trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_rows_per_second: Option<f64>,
    /// Rows processed per second of this batch's execution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_rows_per_second: Option<f64>,
    /// Time per phase: triggerExecution, latestOffset, getBatch, queryPlanning, walCommit,
    /// addBatch, commitOffsets.
    pub duration_ms: BTreeMap<String, u64>,
    /// Event-time statistics (watermark), when the query has event time.
    pub event_time: BTreeMap<String, String>,
    /// Stateful operators.
    pub state_operators: Vec<StateOperatorProgress>,
    /// Per source.
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
    /// Per plugin (a Sluice extension).
    pub plugins: Vec<PluginProgress>,
    /// End-to-end latency of the batch's input rows (a Sluice extension), when the source
    /// gives source times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencyProgress>,
    /// What happened to the query since the previous report (plugin reloads and their
    /// failures, changes that need a restart): a Sluice extension.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// Spark's `StateOperatorProgress`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StateOperatorProgress {
    /// `stateStoreSave` for aggregations.
    pub operator_name: String,
    /// Keys held.
    pub num_rows_total: u64,
    /// Keys updated by this batch.
    pub num_rows_updated: u64,
    /// Keys removed by this batch.
    pub num_rows_removed: u64,
    /// Time to commit state, ms.
    pub commit_time_ms: u64,
    /// Estimated memory of the state.
    pub memory_used_bytes: u64,
    /// Rows dropped for arriving behind the watermark.
    pub num_rows_dropped_by_watermark: u64,
}

/// Spark's `SourceProgress`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SourceProgress {
    /// E.g. `FileStreamSource[data/in]`.
    pub description: String,
    /// Offset the batch started at (null for the first batch).
    pub start_offset: Option<serde_json::Value>,
    /// Offset the batch ended at.
    pub end_offset: Option<serde_json::Value>,
    /// Latest offset the source reported.
    pub latest_offset: Option<serde_json::Value>,
    /// Rows from this source.
    pub num_input_rows: u64,
    /// Input rate since the previous trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_rows_per_second: Option<f64>,
    /// Processing rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_rows_per_second: Option<f64>,
    /// Source metrics, as strings (Kafka: `minOffsetsBehindLatest`, `maxOffsetsBehindLatest`,
    /// `avgOffsetsBehindLatest`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, String>,
}

/// Spark's `SinkProgress`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SinkProgress {
    /// E.g. `ConsoleSink`.
    pub description: String,
    /// Rows written in this batch.
    pub num_output_rows: i64,
}

/// Time, memory and CPU of one plugin (in any role) in one batch.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PluginProgress {
    /// Plugin name.
    pub name: String,
    /// `transform`, `source`, `foreach_batch` or `foreach`.
    pub role: String,
    /// Wall time of the plugin's part of the batch in ms (instances run in parallel).
    pub time_ms: u64,
    /// Time inside the plugin summed over instances, ms.
    pub busy_ms: u64,
    /// Calls into the plugin.
    pub calls: u64,
    /// Rows handed to the plugin.
    pub input_rows: u64,
    /// Rows it produced.
    pub output_rows: u64,
    /// Peak memory over the plugin's instances (all memories and tables), bytes.
    pub memory_peak_bytes: u64,
    /// Fuel burnt (about one unit per Wasm instruction), when fuel metering is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Calls retried on a fresh instance under the plugin's `on_error` policy.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u64,
    /// Rows sent to the dead-letter sink under the plugin's `on_error` policy.
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_lettered_rows: u64,
    /// The plugin's version (a hash of its component and config), as logged in `offsets/N`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PluginProgress {
    pub(crate) fn new(name: &str, role: &str) -> Self {
        PluginProgress {
            name: name.to_string(),
            role: role.to_string(),
            time_ms: 0,
            busy_ms: 0,
            calls: 0,
            input_rows: 0,
            output_rows: 0,
            memory_peak_bytes: 0,
            fuel: None,
            retries: 0,
            dead_lettered_rows: 0,
            version: String::new(),
        }
    }

    /// Adds another call's figures of the same plugin (continuous epochs run it per chunk).
    pub(crate) fn absorb(&mut self, o: PluginProgress) {
        self.time_ms += o.time_ms;
        self.busy_ms += o.busy_ms;
        self.calls += o.calls;
        self.input_rows += o.input_rows;
        self.output_rows += o.output_rows;
        self.memory_peak_bytes = self.memory_peak_bytes.max(o.memory_peak_bytes);
        self.fuel = match (self.fuel, o.fuel) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.retries += o.retries;
        self.dead_lettered_rows += o.dead_lettered_rows;
        if !o.version.is_empty() {
            self.version = o.version;
        }
    }
}

/// Merges per-chunk plugin figures into one entry per plugin and role, in first-seen order.
pub(crate) fn merge_plugins(into: &mut Vec<PluginProgress>, more: Vec<PluginProgress>) {
    for p in more {
        match into.iter_mut().find(|q| q.name == p.name && q.role == p.role) {
            Some(q) => q.absorb(p),
            None => into.push(p),
        }
    }
}

/// End-to-end latency of a batch's (or a continuous epoch's) input rows, in ms: from each row's
/// source time (a Kafka record's timestamp, a socket line's arrival, a rate row's due time, a
/// file's modification time) to when the sink had its output (visible to readers: for a
/// transactional sink, its commit). A row a step filters out counts too: it is done when its
/// batch is. Source times have a resolution of 1 ms.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LatencyProgress {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Rows measured.
    pub num_rows: u64,
}

/// Collects the latencies of rows as they are delivered, for one batch or epoch.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    /// (latency ms, rows).
    samples: Vec<(f64, u64)>,
}

impl Latencies {
    /// Rows with these source times were delivered at `at_ms` (ms since the epoch).
    pub(crate) fn deliver(&mut self, times: &[(i64, u64)], at_ms: f64) {
        self.samples.extend(times.iter().filter(|(_, n)| *n > 0).map(|(t, n)| ((at_ms - *t as f64).max(0.0), *n)));
    }

    /// The percentiles of what was delivered, clearing it; `None` if nothing was.
    pub(crate) fn take(&mut self) -> Option<LatencyProgress> {
        let mut s = std::mem::take(&mut self.samples);
        let total: u64 = s.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (l, n) in &s {
                seen += n;
                if seen >= rank {
                    return round3(*l);
                }
            }
            s.last().map(|(l, _)| round3(*l)).unwrap_or(0.0)
        };
        Some(LatencyProgress {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: s.last().map(|(l, _)| round3(*l)).unwrap_or(0.0),
            num_rows: total,
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Now, in ms since the epoch, with sub-millisecond precision.
pub(crate) fn now_ms_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// Spark's `StreamingQueryStatus`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StreamingQueryStatus {
    /// What the query is doing, e.g. "Waiting for data to arrive".
    pub message: String,
    /// Whether the last check found new data.
    pub is_data_available: bool,
    /// Whether a batch is running.
    pub is_trigger_active: bool,
}

/// Rounds to one decimal, dropping NaN and infinities as Spark does.
pub(crate) fn rate(rows: u64, ms: u64) -> Option<f64> {
    if ms == 0 {
        return None;
    }
    let r = rows as f64 * 1000.0 / ms as f64;
    r.is_finite().then(|| (r * 10.0).round() / 10.0)
}

impl std::fmt::Display for StreamingQueryProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string_pretty(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(std::fmt::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_weigh_rows() {
        let mut l = Latencies::default();
        // 98 rows 10 ms old, 1 row 50 ms old, 1 row 200 ms old, delivered at t = 1000.
        l.deliver(&[(990, 98), (950, 1), (800, 1), (900, 0)], 1000.0);
        let p = l.take().expect("rows were delivered");
        assert_eq!((p.p50, p.p95, p.p99, p.max, p.num_rows), (10.0, 10.0, 50.0, 200.0, 100));
        assert!(l.take().is_none(), "take clears");
    }
}

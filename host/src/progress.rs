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

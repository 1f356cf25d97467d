//! What a pipeline is, validated: the types both front ends (the pipeline file and the Rust API)
//! build and the engine runs.
//!
//! **Architecture Invariant:** this is a leaf module. It names nothing of the engine, the plugin
//! runtime, sources or sinks, so every one of them may import it without a cycle.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::foreach::{ForeachBatchFn, ForeachWriterFactory};
use crate::options::Options;
use crate::trigger::Trigger;

/// A validated pipeline: what `sluice run` runs and what the Rust API builds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PipelineSpec {
    /// The query name (unique among running queries; names the memory sink's table).
    pub name: Option<String>,
    /// Where offsets, commits and state are kept.
    pub checkpoint_location: Option<PathBuf>,
    /// Step 1: the input source.
    pub source: SourceSpec,
    /// Step 2: transformations, in order.
    pub transforms: Vec<TransformSpec>,
    /// Step 3: sink and output mode.
    pub sink: SinkSpec,
    /// Step 4: the trigger.
    pub trigger: Trigger,
}

impl PipelineSpec {
    /// Every plugin of the pipeline: the source's, the transforms', the sink's.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginSpec> {
        let transforms = self.transforms.iter().filter_map(|t| match t {
            TransformSpec::Plugin(p) => Some(p),
            TransformSpec::Sql { .. } | TransformSpec::Watermark { .. } | TransformSpec::DropDuplicates { .. } => None,
        });
        self.source.plugin.iter().chain(transforms).chain(self.sink.plugin.iter())
    }

    /// The plugin at `step`, if that step is a plugin.
    pub fn plugin_at_mut(&mut self, step: StepRef) -> Option<&mut PluginSpec> {
        match step {
            StepRef::Source => self.source.plugin.as_mut(),
            StepRef::Sink => self.sink.plugin.as_mut(),
            StepRef::Transform(i) => match self.transforms.get_mut(i) {
                Some(TransformSpec::Plugin(p)) => Some(p),
                _ => None,
            },
        }
    }
}

/// The input source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceSpec {
    /// `socket`, `rate`, `kafka`, `text`, `json`, `csv`, `parquet` or `plugin`.
    pub format: String,
    /// Spark-style options.
    pub options: Options,
    /// Directory for file sources.
    pub path: Option<PathBuf>,
    /// User schema as a DDL string (`"ts TIMESTAMP, user STRING"`).
    pub schema: Option<String>,
    /// The component, for `format = "plugin"`.
    pub plugin: Option<PluginSpec>,
    pub(crate) location: Option<String>,
}

impl SourceSpec {
    /// A source of `format` with no options.
    pub fn new(format: &str) -> Self {
        SourceSpec {
            format: format.trim().to_ascii_lowercase(),
            options: Options::default(),
            path: None,
            schema: None,
            plugin: None,
            location: None,
        }
    }
}

/// One transformation step.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant, reason = "a handful per pipeline; boxing would complicate the public API")]
pub enum TransformSpec {
    /// A Wasm component of the transform world.
    Plugin(PluginSpec),
    /// A SQL query over the previous step's output, visible as table `input`.
    Sql {
        /// The query.
        query: String,
    },
    /// Spark's `withWatermark(column, delay)`: the event-time watermark is the latest event time
    /// seen in `column` minus `delay`. Rows pass through unchanged; later aggregations by a
    /// window of `column` (or `column` itself) drop rows behind it and close their groups.
    Watermark {
        /// The event-time column (a TIMESTAMP).
        column: String,
        /// How late an event may arrive, a Spark interval (`"10 minutes"`).
        delay: String,
    },
    /// Spark's `dropDuplicates(columns)` (or, with `within_watermark`,
    /// `dropDuplicatesWithinWatermark(columns)`): passes on the first row of each key.
    DropDuplicates {
        /// The key columns (empty: every column).
        columns: Vec<String>,
        /// Keep each key only until the watermark passes its first event time plus the delay.
        within_watermark: bool,
    },
}

/// A watermark delay (`"10 minutes"`, `"1 hour 30 minutes"`) in milliseconds.
pub(crate) fn watermark_delay_ms(delay: &str) -> std::result::Result<i64, String> {
    let us = crate::options::parse_interval_us(delay).map_err(|e| format!("watermark delay: {e}"))?;
    if us < 0 {
        return Err(format!("watermark delay `{delay}` must not be negative"));
    }
    Ok(us / 1000)
}

/// The sink.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SinkSpec {
    /// `console`, `memory`, `noop`, `kafka`, `json`, `csv`, `parquet`, `foreach_batch`, `foreach`.
    pub format: String,
    /// Append, update or complete.
    pub output_mode: OutputMode,
    /// Spark-style options.
    pub options: Options,
    /// Output directory for file sinks.
    pub path: Option<PathBuf>,
    /// The component, for `foreach_batch` / `foreach` sinks written as plugins.
    pub plugin: Option<PluginSpec>,
    /// Trusted Rust code for `foreach_batch` / `foreach` sinks (the Rust API only).
    pub native: Option<NativeSink>,
    pub(crate) location: Option<String>,
}

impl SinkSpec {
    /// A sink of `format` in append mode with no options.
    pub fn new(format: &str) -> Self {
        SinkSpec {
            format: format.trim().to_ascii_lowercase(),
            output_mode: OutputMode::Append,
            options: Options::default(),
            path: None,
            plugin: None,
            native: None,
            location: None,
        }
    }
}

/// A sink written in Rust and run in the host, without a sandbox (Spark's `foreachBatch` and
/// `foreach` with a function).
#[derive(Clone)]
#[non_exhaustive]
pub enum NativeSink {
    /// Called once per micro-batch with all its rows.
    ForeachBatch(Arc<dyn ForeachBatchFn>),
    /// A writer per partition and micro-batch.
    Foreach(Arc<dyn ForeachWriterFactory>),
}

impl std::fmt::Debug for NativeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NativeSink::ForeachBatch(_) => "ForeachBatch(<fn>)",
            NativeSink::Foreach(_) => "Foreach(<writer>)",
        })
    }
}

/// A Wasm component in a pipeline, in any role, with what it is granted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginSpec {
    /// Path of the `.wasm` component.
    pub path: PathBuf,
    /// Name used in logs, errors and progress (defaults to the file stem).
    pub name: String,
    /// The `config` table, typed as written.
    pub config: PluginConfig,
    /// What the plugin may use beyond computing: nothing unless granted.
    pub grants: Grants,
    /// Memory, time and instance limits.
    pub limits: PluginLimits,
    /// What a failing call does to the query.
    pub on_error: OnError,
    pub(crate) location: Option<String>,
}

impl PluginSpec {
    /// A plugin at `path` with no config, no grants, default limits and the fail policy. Its
    /// name is the file stem.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
        PluginSpec {
            path,
            name,
            config: Vec::new(),
            grants: Grants::default(),
            limits: PluginLimits::default(),
            on_error: OnError::Fail,
            location: None,
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Adds a config entry.
    pub fn config(mut self, key: &str, value: impl Into<ConfigValue>) -> Self {
        self.config.push((key.to_string(), value.into()));
        self
    }

    /// Sets the grants.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: PluginLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the failure policy.
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.on_error = policy;
        self
    }
}

/// A plugin's configuration: the `config` table of the pipeline file, in order.
pub type PluginConfig = Vec<(String, ConfigValue)>;

/// A typed configuration value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigValue {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A list of scalars (no nested lists).
    List(Vec<ConfigValue>),
    /// A nested table, or a list holding lists or tables, as JSON text.
    Json(String),
}

impl ConfigValue {
    /// The value as text, as `sluice:plugin@0.1.0` plugins receive it: scalars as written,
    /// lists and tables as JSON.
    pub fn to_text(&self) -> String {
        match self {
            ConfigValue::Str(s) => s.clone(),
            ConfigValue::Bool(b) => b.to_string(),
            ConfigValue::Int(i) => i.to_string(),
            ConfigValue::Float(f) => f.to_string(),
            ConfigValue::List(items) => {
                let v: Vec<serde_json::Value> = items.iter().map(ConfigValue::to_json).collect();
                serde_json::Value::Array(v).to_string()
            }
            ConfigValue::Json(j) => j.clone(),
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ConfigValue::Str(s) => serde_json::Value::from(s.clone()),
            ConfigValue::Bool(b) => serde_json::Value::from(*b),
            ConfigValue::Int(i) => serde_json::Value::from(*i),
            ConfigValue::Float(f) => serde_json::Value::from(*f),
            ConfigValue::List(items) => serde_json::Value::Array(items.iter().map(ConfigValue::to_json).collect()),
            ConfigValue::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| serde_json::Value::from(j.clone())),
        }
    }
}

impl From<&str> for ConfigValue {
    fn from(s: &str) -> Self {
        ConfigValue::Str(s.to_string())
    }
}
impl From<String> for ConfigValue {
    fn from(s: String) -> Self {
        ConfigValue::Str(s)
    }
}
impl From<bool> for ConfigValue {
    fn from(b: bool) -> Self {
        ConfigValue::Bool(b)
    }
}
impl From<i64> for ConfigValue {
    fn from(i: i64) -> Self {
        ConfigValue::Int(i)
    }
}
impl From<i32> for ConfigValue {
    fn from(i: i32) -> Self {
        ConfigValue::Int(i64::from(i))
    }
}
impl From<u32> for ConfigValue {
    fn from(i: u32) -> Self {
        ConfigValue::Int(i64::from(i))
    }
}
impl From<f64> for ConfigValue {
    fn from(f: f64) -> Self {
        ConfigValue::Float(f)
    }
}

/// What a plugin is granted. Nothing by default: no files, network, environment or real clock.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Grants {
    /// Host directories mapped into the sandbox.
    pub dirs: Vec<DirGrant>,
    /// Environment variables passed through, by name (with the host's values).
    pub env: Vec<String>,
    /// Outbound HTTP, as `host:port` (`*.example.com:443` matches subdomains).
    pub http: Vec<String>,
    /// TCP/UDP sockets, as `address:port`.
    pub sockets: Vec<String>,
    /// Which wall clock the plugin reads.
    pub clock: ClockGrant,
}

impl Grants {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        *self == Grants::default()
    }
}

/// A host directory visible to a plugin at a guest path.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DirGrant {
    /// The directory on the host (relative paths are relative to the pipeline file).
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/out`.
    pub guest: String,
    /// Whether the plugin may only read.
    pub read_only: bool,
}

impl DirGrant {
    /// `host` mapped at `guest`.
    pub fn new(host: impl Into<PathBuf>, guest: &str, read_only: bool) -> Self {
        DirGrant { host: host.into(), guest: guest.to_string(), read_only }
    }
}

/// The wall clock a plugin reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClockGrant {
    /// The batch's timestamp (stable on replay): the default, so replays are deterministic.
    #[default]
    Batch,
    /// The host's real clock.
    Real,
}

/// Memory, time and instance limits for a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginLimits {
    /// Memory cap per instance, over all its linear memories and tables. Default 256 MiB.
    pub memory_bytes: u64,
    /// Wall-clock limit per call, including time the plugin waits in host calls. Default 30 s.
    pub timeout: Duration,
    /// The most instances of this plugin a step runs at once. Default: the number of cores.
    pub instances: Option<usize>,
    /// A CPU budget per call in fuel units (about one per Wasm instruction), if set.
    pub fuel: Option<u64>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { memory_bytes: 256 << 20, timeout: Duration::from_secs(30), instances: None, fuel: None }
    }
}

impl PluginLimits {
    /// Sets the memory cap.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }
    /// Sets the per-call time limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets the instance budget.
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = Some(n.max(1));
        self
    }
    /// Sets the per-call fuel budget.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }
}

/// What a failing plugin call does to the query (`on_error` in the pipeline file).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum OnError {
    /// Fail the query (the default).
    #[default]
    Fail,
    /// Retry the batch's calls up to `attempts` more times, each with a fresh instance, when
    /// the error is retryable (a `retryable` plugin error, a trap, a time limit); others fail.
    Retry {
        /// Attempts after the first.
        attempts: u32,
    },
    /// Send the rows of the failing call to this sink with the error, and go on.
    DeadLetter(Box<SinkSpec>),
}

impl ConfigValue {
    /// A JSON value as a config value (the inverse of [`ConfigValue::to_json`] for what
    /// `to_json` produces).
    pub fn from_json(v: &serde_json::Value) -> ConfigValue {
        match v {
            serde_json::Value::String(s) => ConfigValue::Str(s.clone()),
            serde_json::Value::Bool(b) => ConfigValue::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => ConfigValue::Int(i),
                None => ConfigValue::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
                ConfigValue::List(items.iter().map(ConfigValue::from_json).collect())
            }
            other => ConfigValue::Json(other.to_string()),
        }
    }
}

/// A plugin step of a pipeline: what hot reload and the server's API name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepRef {
    /// The source (`format = "plugin"`).
    Source,
    /// Transform step `i` (0-based, counting SQL steps too).
    Transform(usize),
    /// The sink (`foreach_batch` / `foreach`).
    Sink,
}

impl std::fmt::Display for StepRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepRef::Source => f.write_str("source"),
            StepRef::Transform(i) => write!(f, "transform.{i}"),
            StepRef::Sink => f.write_str("sink"),
        }
    }
}

impl FromStr for StepRef {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "source" => Ok(StepRef::Source),
            "sink" => Ok(StepRef::Sink),
            t => t
                .strip_prefix("transform.")
                .unwrap_or(t)
                .parse()
                .map(StepRef::Transform)
                .map_err(|_| format!("unknown step `{s}`; use source, sink, or a transform's index")),
        }
    }
}

impl PluginSpec {
    /// Whether two specs describe the same plugin step (location ignored).
    pub fn same_as(&self, other: &PluginSpec) -> bool {
        self.path == other.path
            && self.name == other.name
            && self.config == other.config
            && self.grants == other.grants
            && self.limits == other.limits
            && self.on_error.same_as(&other.on_error)
    }

    /// The config as canonical JSON text (for version hashes and checkpoint copies).
    pub(crate) fn config_json(&self) -> String {
        let v: Vec<serde_json::Value> = self.config.iter().map(|(k, v)| serde_json::json!([k, v.to_json()])).collect();
        serde_json::Value::Array(v).to_string()
    }
}

impl OnError {
    fn same_as(&self, other: &OnError) -> bool {
        match (self, other) {
            (OnError::Fail, OnError::Fail) => true,
            (OnError::Retry { attempts: a }, OnError::Retry { attempts: b }) => a == b,
            (OnError::DeadLetter(a), OnError::DeadLetter(b)) => {
                a.format == b.format && a.path == b.path && a.options.pairs() == b.options.pairs()
            }
            _ => false,
        }
    }
}

/// What part of the result table reaches the sink after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputMode {
    /// Only new rows that will never change (the default).
    #[default]
    Append,
    /// Only rows that changed since the last batch.
    Update,
    /// The whole result table, every batch.
    Complete,
}

impl FromStr for OutputMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "append" => Ok(OutputMode::Append),
            "update" => Ok(OutputMode::Update),
            "complete" => Ok(OutputMode::Complete),
            other => Err(format!("unknown output_mode `{other}`; valid choices: append, update, complete")),
        }
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        })
    }
}

//! Sources (Spark's `readStream.format(...)`): offsets, admission control and reading.
//!
//! A source hands out data by offset ranges, as Spark's `MicroBatchStream` does: the engine asks
//! for the latest offset (with admission limits applied), logs it, then asks for the data
//! between the previous end and the new end. A replayable source returns the same rows for the
//! same range, so a batch re-run after a failure sees exactly the same input.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plugin::{PluginRuntime, Role};
use crate::progress::PluginProgress;
use crate::spec::SourceSpec;

pub(crate) mod file;
pub(crate) mod kafka;
pub(crate) mod plugin;
pub(crate) mod rate;
pub(crate) mod socket;

/// A source's position: opaque JSON that the source alone interprets (Spark's `Offset.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub serde_json::Value);

impl Offset {
    /// The number under `key` of an object offset (`{"logOffset": 3}`).
    pub(crate) fn field_u64(&self, source: &str, key: &str) -> Result<u64> {
        self.0.get(key).and_then(|v| v.as_u64()).ok_or_else(|| Error::Source {
            source_name: source.to_string(),
            message: format!("offset {} has no number `{key}`", self.0),
            kind: crate::error::ErrorKind::Internal,
        })
    }

    pub(crate) fn from_u64(n: u64) -> Self {
        Offset(serde_json::Value::from(n))
    }

    pub(crate) fn as_u64(&self, source: &str) -> Result<u64> {
        self.0.as_u64().ok_or_else(|| Error::Source {
            source_name: source.to_string(),
            message: format!("offset {} is not a number", self.0),
            kind: crate::error::ErrorKind::Internal,
        })
    }
}

/// How much a batch may take (Spark's `ReadLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadLimit {
    /// The source's own limits (`maxFilesPerTrigger`, ...).
    Default,
    /// Everything available (`Trigger.Once`).
    All,
}

/// One input batch: record batches, each tagged with the input partition it came from.
pub(crate) type Partitioned = Vec<(u32, RecordBatch)>;

/// Source times of rows, as runs of `(time in ms since the epoch, rows)`: when each row entered
/// the system (a Kafka record's timestamp, a socket line's arrival, a rate row's due time, a
/// file's modification time). End-to-end latency is measured from them.
pub(crate) type SourceTimes = Vec<(i64, u64)>;

/// Appends `rows` rows of source time `ms` to `times`, merging with the last run when equal.
pub(crate) fn push_time(times: &mut SourceTimes, ms: i64, rows: u64) {
    match times.last_mut() {
        Some((t, n)) if *t == ms => *n += rows,
        _ => times.push((ms, rows)),
    }
}

/// A streaming source.
#[async_trait::async_trait]
pub(crate) trait Source: Send {
    /// For progress (`sources[].description`).
    fn description(&self) -> String;
    /// The schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// Whether the same offset range always yields the same rows.
    fn replayable(&self) -> bool;
    /// For a source that is not replayable: whether the user accepted at-most-once delivery.
    fn accepts_at_most_once(&self) -> bool {
        false
    }
    /// Connects or opens what the source reads; called once when the query starts.
    async fn start(&mut self) -> Result<()> {
        Ok(())
    }
    /// For `available_now`: fixes the end of the data to process now.
    async fn prepare_available_now(&mut self) -> Result<()> {
        Ok(())
    }
    /// The offset the next batch should end at, starting from `start`; `None` if no data yet.
    async fn latest_offset(&mut self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>>;
    /// Which micro-batch the next `get_batch` reads for, and its timestamp.
    fn begin_batch(&mut self, _batch_id: u64, _timestamp_ms: i64) {}
    /// The rows in `(start, end]`, each batch tagged with its logical input partition.
    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned>;
    /// Data up to `end` is processed and committed: the source may forget it.
    async fn commit(&mut self, _end: &Offset) -> Result<()> {
        Ok(())
    }
    /// What to persist in `sources/<i>/<N>` before batch N's offsets are logged, so that the
    /// range `(start, end]` can be read again after a restart.
    fn log_entry(&self, _start: Option<&Offset>, _end: &Offset) -> Option<serde_json::Value> {
        None
    }
    /// Whether the source has reached a configured end (Kafka's `endingOffsets`): once
    /// `latest_offset` has nothing more, the query finishes instead of waiting.
    fn finished(&self) -> bool {
        false
    }
    /// The latest offset the source knows is available (progress `latestOffset`), if it differs
    /// from the end of the batch.
    fn latest_available(&self) -> Option<Offset> {
        None
    }
    /// Source metrics for progress (`sources[].metrics`), e.g. Kafka's lag behind the latest offsets.
    fn metrics(&self, _end: &Offset) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// Woken when new data may have arrived, so the loop waits on it instead of polling;
    /// `None`: the loop polls (every 10 ms).
    fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// The source times of the rows the last `get_batch` returned (see [`SourceTimes`]), taken
    /// once; empty when the source has none.
    fn take_source_times(&mut self) -> SourceTimes {
        Vec::new()
    }
    /// Figures of the plugin behind the source since the last call, if it is one.
    fn plugin_progress(&mut self) -> Vec<PluginProgress> {
        Vec::new()
    }
    /// The plugin behind the source, if it is one (for its version in `offsets/N`).
    fn plugin(&self) -> Option<&crate::plugin::PluginComponent> {
        None
    }
    /// Restores the source after a restart from its persisted log entries (in batch order) and
    /// the last end offset logged.
    async fn restore(&mut self, _log: Vec<(u64, serde_json::Value)>, _last: Option<&Offset>) -> Result<()> {
        Ok(())
    }
}

/// What a source provider needs to build a source.
pub(crate) struct SourceContext<'a> {
    pub(crate) runtime: &'a PluginRuntime,
    pub(crate) query_id: &'a str,
    pub(crate) parallelism: usize,
}

/// One entry of the source registry: a format (or several sharing one implementation), what
/// it promises, and how to build it.
#[async_trait::async_trait]
pub(crate) trait SourceProvider: Sync {
    /// The `format` names it serves.
    fn names(&self) -> &'static [&'static str];
    /// Whether the same offset range always yields the same rows (needed for exactly-once).
    fn replayable(&self) -> bool;
    /// Builds the source, checking its options.
    async fn create(&self, spec: &SourceSpec, cx: &SourceContext<'_>) -> Result<Box<dyn Source>>;
}

fn no_path(spec: &SourceSpec, what: &str) -> Result<()> {
    if spec.path.is_some() || spec.schema.is_some() || spec.plugin.is_some() {
        return Err(Error::Config {
            location: spec.location.clone(),
            message: format!("the {what} source takes no `path`, `schema` or `plugin`"),
        });
    }
    Ok(())
}

struct SocketProvider;
#[async_trait::async_trait]
impl SourceProvider for SocketProvider {
    fn names(&self) -> &'static [&'static str] {
        &["socket"]
    }
    fn replayable(&self) -> bool {
        false
    }
    async fn create(&self, spec: &SourceSpec, _: &SourceContext<'_>) -> Result<Box<dyn Source>> {
        no_path(spec, "socket")?;
        Ok(Box::new(socket::SocketSource::try_new(&spec.options)?))
    }
}

struct RateProvider;
#[async_trait::async_trait]
impl SourceProvider for RateProvider {
    fn names(&self) -> &'static [&'static str] {
        &["rate"]
    }
    fn replayable(&self) -> bool {
        true
    }
    async fn create(&self, spec: &SourceSpec, _: &SourceContext<'_>) -> Result<Box<dyn Source>> {
        no_path(spec, "rate")?;
        Ok(Box::new(rate::RateSource::try_new(&spec.options)?))
    }
}

struct KafkaProvider;
#[async_trait::async_trait]
impl SourceProvider for KafkaProvider {
    fn names(&self) -> &'static [&'static str] {
        &["kafka"]
    }
    fn replayable(&self) -> bool {
        true
    }
    async fn create(&self, spec: &SourceSpec, _: &SourceContext<'_>) -> Result<Box<dyn Source>> {
        no_path(spec, "kafka")?;
        Ok(Box::new(kafka::KafkaSource::try_new(&spec.options).map_err(|e| e.at(spec.location.clone()))?))
    }
}

struct FileProvider;
#[async_trait::async_trait]
impl SourceProvider for FileProvider {
    fn names(&self) -> &'static [&'static str] {
        &["text", "json", "csv", "parquet"]
    }
    fn replayable(&self) -> bool {
        true
    }
    async fn create(&self, spec: &SourceSpec, _: &SourceContext<'_>) -> Result<Box<dyn Source>> {
        Ok(Box::new(file::FileSource::try_new(spec).map_err(|e| e.at(spec.location.clone()))?))
    }
}

struct PluginProvider;
#[async_trait::async_trait]
impl SourceProvider for PluginProvider {
    fn names(&self) -> &'static [&'static str] {
        &["plugin"]
    }
    fn replayable(&self) -> bool {
        true
    }
    async fn create(&self, spec: &SourceSpec, cx: &SourceContext<'_>) -> Result<Box<dyn Source>> {
        let p = spec.plugin.as_ref().ok_or_else(|| Error::MissingOption {
            component: "plugin source".into(),
            key: "plugin".into(),
            hint: Some("the path of a component of the source-plugin world".into()),
            location: spec.location.clone(),
        })?;
        if spec.path.is_some() || spec.schema.is_some() {
            return Err(Error::Config {
                location: spec.location.clone(),
                message: "a plugin source takes no `path` or `schema`: its config says what to read and it declares its schema".into(),
            });
        }
        let component = cx.runtime.load(p, Role::Source).await?;
        crate::plugin::requirements::check(&p.name, "[source]", &component.requirements().await?, &p.grants)?;
        Ok(Box::new(plugin::PluginSource::try_new(component, &spec.options, cx.query_id, cx.parallelism).await?))
    }
}

/// The source registry: adding a source means adding one provider here.
const SOURCES: &[&dyn SourceProvider] =
    &[&SocketProvider, &RateProvider, &KafkaProvider, &FileProvider, &PluginProvider];

/// Every source format this build knows.
pub(crate) fn formats() -> Vec<&'static str> {
    SOURCES.iter().flat_map(|p| p.names().iter().copied()).collect()
}

/// The provider of `format`, or an error naming the valid formats.
pub(crate) fn provider(spec: &SourceSpec) -> Result<&'static dyn SourceProvider> {
    SOURCES.iter().copied().find(|p| p.names().contains(&spec.format.as_str())).ok_or_else(|| Error::Config {
        location: spec.location.clone(),
        message: format!("unknown source format `{}`; valid formats: {}", spec.format, formats().join(", ")),
    })
}

/// Builds the source a spec names, checking its options.
pub(crate) async fn build(spec: &SourceSpec, cx: &SourceContext<'_>) -> Result<Box<dyn Source>> {
    provider(spec)?.create(spec, cx).await
}

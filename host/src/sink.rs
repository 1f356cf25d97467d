//! Sinks and output modes (Spark's `DataStreamWriter.format(...)` and `outputMode`).
//!
//! A sink gets each micro-batch's output once per batch id: `add_batch(N, ...)` may be called
//! again for the same N after a failure, and a sink that claims exactly-once must make that
//! call idempotent.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::error::{Error, Result};
use crate::plugin::{PluginRuntime, Role};
use crate::progress::PluginProgress;
use crate::source::Partitioned;
use crate::spec::{OutputMode, SinkSpec};

pub(crate) mod console;
pub(crate) mod file;
pub(crate) mod kafka;
pub(crate) mod memory;
pub(crate) mod native;
pub(crate) mod noop;
pub(crate) mod plugin;

pub use memory::MemoryTables;

/// What the sink is told about the micro-batch it writes.
#[derive(Debug, Clone)]
pub(crate) struct BatchMeta {
    pub(crate) query_id: Arc<str>,
    pub(crate) batch_id: u64,
    pub(crate) timestamp_ms: i64,
    pub(crate) watermark_ms: Option<i64>,
    /// The batch may have reached the sink before (re-run after a crash, or a retry).
    pub(crate) rerun: bool,
    pub(crate) attempt: u32,
    /// Logical partitions of the batch (for foreach sinks).
    pub(crate) num_partitions: u32,
    pub(crate) mode: OutputMode,
    pub(crate) schema: SchemaRef,
}

/// The delivery guarantee a sink gives, as Spark's documentation states it per sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Every row arrives; after a failure some may arrive twice.
    AtLeastOnce,
    /// Every row arrives once, also across failures (with a checkpoint).
    ExactlyOnce,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        })
    }
}

/// A destination for each micro-batch's output.
#[async_trait::async_trait]
pub(crate) trait Sink: Send {
    /// For progress (`sink.description`).
    fn description(&self) -> String;
    /// Checks the query's output schema when the query is built.
    fn check_schema(&self, _schema: &SchemaRef) -> Result<()> {
        Ok(())
    }
    /// Connects what the sink writes to; called once when the query starts, with its id and,
    /// after a crash, the batch it re-executes first (which the sink may already hold).
    async fn start(&mut self, _query_id: &str, _rerun: Option<u64>) -> Result<()> {
        Ok(())
    }
    /// Writes batch `batch_id`.
    async fn add_batch(
        &mut self,
        _batch_id: u64,
        _schema: &SchemaRef,
        _data: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        Err(Error::Internal(format!("{} implements write_batch, not add_batch", self.description())))
    }
    /// Writes one micro-batch, its rows tagged with their logical partitions. The default drops
    /// the tags and calls [`Sink::add_batch`].
    async fn write_batch(&mut self, meta: &BatchMeta, data: Partitioned) -> Result<()> {
        let rows = data.into_iter().map(|(_, b)| b).collect();
        self.add_batch(meta.batch_id, &meta.schema, rows, meta.mode).await
    }
    /// Continuous trigger: whether the sink takes an epoch's rows in chunks as they come
    /// ([`Sink::write_chunk`] … [`Sink::commit_epoch`]); otherwise the engine holds the epoch's
    /// output and calls [`Sink::write_batch`] once at its end.
    fn streams_chunks(&self) -> bool {
        false
    }
    /// Writes a chunk of epoch `meta.batch_id`; returns whether its rows are visible to readers
    /// now (else once [`Sink::commit_epoch`] returns).
    async fn write_chunk(&mut self, _meta: &BatchMeta, _data: Partitioned) -> Result<bool> {
        Err(Error::Internal(format!("{} does not stream chunks", self.description())))
    }
    /// Ends epoch `meta.batch_id`: once this returns, every chunk of it is durable and visible.
    async fn commit_epoch(&mut self, _meta: &BatchMeta) -> Result<()> {
        Ok(())
    }
    /// Figures of the plugin behind the sink since the last call, if it is one.
    fn plugin_progress(&mut self) -> Vec<PluginProgress> {
        Vec::new()
    }
    /// The plugin behind the sink, if it is one (for its version in `offsets/N`).
    fn plugin(&self) -> Option<&crate::plugin::PluginComponent> {
        None
    }
}

/// What a sink provider needs to build a sink.
pub(crate) struct SinkContext<'a> {
    pub(crate) runtime: &'a PluginRuntime,
    pub(crate) tables: &'a MemoryTables,
    pub(crate) query_id: &'a str,
    pub(crate) query_name: Option<&'a str>,
    pub(crate) parallelism: usize,
}

/// One entry of the sink registry: a format, the output modes and delivery guarantee it has,
/// and how to build it.
#[async_trait::async_trait]
pub(crate) trait SinkProvider: Sync {
    /// The `format` names it serves.
    fn names(&self) -> &'static [&'static str];
    /// The output modes it takes.
    fn output_modes(&self) -> &'static [OutputMode] {
        &[OutputMode::Append, OutputMode::Update, OutputMode::Complete]
    }
    /// Its delivery guarantee with these options.
    fn delivery(&self, spec: &SinkSpec) -> Delivery;
    /// Whether it needs a checkpoint (it promises exactly-once through it).
    fn needs_checkpoint(&self, _spec: &SinkSpec) -> bool {
        false
    }
    /// Builds the sink, checking its options.
    async fn create(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Result<Box<dyn Sink>>;
}

fn refuse_plugin(spec: &SinkSpec) -> Result<()> {
    if spec.plugin.is_some() || spec.native.is_some() {
        return Err(Error::Config {
            location: spec.location.clone(),
            message: format!(
                "the {} sink takes no `plugin`; plugin sinks are `format = \"foreach_batch\"` or `\"foreach\"`",
                spec.format
            ),
        });
    }
    Ok(())
}

struct ConsoleProvider;
#[async_trait::async_trait]
impl SinkProvider for ConsoleProvider {
    fn names(&self) -> &'static [&'static str] {
        &["console"]
    }
    fn delivery(&self, _: &SinkSpec) -> Delivery {
        Delivery::AtLeastOnce
    }
    async fn create(&self, spec: &SinkSpec, _: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        refuse_plugin(spec)?;
        Ok(Box::new(console::ConsoleSink::try_new(&spec.options)?))
    }
}

struct NoopProvider;
#[async_trait::async_trait]
impl SinkProvider for NoopProvider {
    fn names(&self) -> &'static [&'static str] {
        &["noop"]
    }
    fn delivery(&self, _: &SinkSpec) -> Delivery {
        Delivery::ExactlyOnce
    }
    async fn create(&self, spec: &SinkSpec, _: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        refuse_plugin(spec)?;
        spec.options.check("noop sink", &[])?;
        Ok(Box::new(noop::NoopSink))
    }
}

struct MemoryProvider;
#[async_trait::async_trait]
impl SinkProvider for MemoryProvider {
    fn names(&self) -> &'static [&'static str] {
        &["memory"]
    }
    fn delivery(&self, _: &SinkSpec) -> Delivery {
        Delivery::AtLeastOnce
    }
    async fn create(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        refuse_plugin(spec)?;
        Ok(Box::new(memory::MemorySink::try_new(&spec.options, cx.query_name, cx.tables.clone())?))
    }
}

struct KafkaProvider;
#[async_trait::async_trait]
impl SinkProvider for KafkaProvider {
    fn names(&self) -> &'static [&'static str] {
        &["kafka"]
    }
    fn delivery(&self, spec: &SinkSpec) -> Delivery {
        if kafka::KafkaSink::needs_checkpoint(&spec.options) { Delivery::ExactlyOnce } else { Delivery::AtLeastOnce }
    }
    fn needs_checkpoint(&self, spec: &SinkSpec) -> bool {
        kafka::KafkaSink::needs_checkpoint(&spec.options)
    }
    async fn create(&self, spec: &SinkSpec, _: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        refuse_plugin(spec)?;
        if spec.path.is_some() {
            return Err(Error::Config {
                location: spec.location.clone(),
                message: "the kafka sink takes no `path`; set option `topic` or write a `topic` column".into(),
            });
        }
        Ok(Box::new(kafka::KafkaSink::try_new(&spec.options).map_err(|e| e.at(spec.location.clone()))?))
    }
}

struct FileProvider;
#[async_trait::async_trait]
impl SinkProvider for FileProvider {
    fn names(&self) -> &'static [&'static str] {
        &["json", "csv", "parquet"]
    }
    // Update mode on a file sink appends each batch's changed rows (a change log; the last row
    // per key is current). Spark allows append only.
    fn output_modes(&self) -> &'static [OutputMode] {
        &[OutputMode::Append, OutputMode::Update]
    }
    fn delivery(&self, _: &SinkSpec) -> Delivery {
        Delivery::ExactlyOnce
    }
    fn needs_checkpoint(&self, _: &SinkSpec) -> bool {
        true
    }
    async fn create(&self, spec: &SinkSpec, _: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        refuse_plugin(spec)?;
        Ok(Box::new(file::FileSink::try_new(&spec.format, spec.path.as_deref(), &spec.options)?))
    }
}

/// `foreach_batch` and `foreach`: a plugin of that world, or Rust code given to the API.
struct ForeachProvider {
    names: &'static [&'static str],
    role: Role,
}

#[async_trait::async_trait]
impl SinkProvider for ForeachProvider {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }
    // Spark: "foreachBatch provides only at-least-once write guarantees", exactly-once when
    // the function dedupes by batch id; foreach likewise by (partition, epoch).
    fn delivery(&self, _: &SinkSpec) -> Delivery {
        Delivery::AtLeastOnce
    }
    async fn create(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        if spec.path.is_some() {
            return Err(Error::Config {
                location: spec.location.clone(),
                message: format!("the {} sink takes no `path`; its plugin's config says where to write", spec.format),
            });
        }
        spec.options.check(&format!("{} sink", spec.format), &[])?;
        match (&spec.plugin, &spec.native) {
            (Some(p), None) => {
                let component = cx.runtime.load(p, self.role).await?;
                crate::plugin::requirements::check(&p.name, "[sink]", &component.requirements().await?, &p.grants)?;
                Ok(match self.role {
                    Role::BatchSink => Box::new(plugin::BatchSinkPlugin::new(component, cx.query_id)),
                    _ => Box::new(plugin::ForeachSinkPlugin::new(component, cx.query_id, cx.parallelism)),
                })
            }
            (None, Some(native)) => Ok(native::build(native.clone())),
            _ => Err(Error::MissingOption {
                component: format!("{} sink", spec.format),
                key: "plugin".into(),
                hint: Some(format!("the path of a component of the {} world", self.role.world())),
                location: spec.location.clone(),
            }),
        }
    }
}

/// The sink registry: adding a sink means adding one provider here.
const SINKS: &[&dyn SinkProvider] = &[
    &ConsoleProvider,
    &MemoryProvider,
    &NoopProvider,
    &KafkaProvider,
    &FileProvider,
    &ForeachProvider { names: &["foreach_batch"], role: Role::BatchSink },
    &ForeachProvider { names: &["foreach"], role: Role::ForeachSink },
];

/// Every sink format this build knows.
pub(crate) fn formats() -> Vec<&'static str> {
    SINKS.iter().flat_map(|p| p.names().iter().copied()).collect()
}

/// The provider of a spec's format, or an error naming the valid formats.
pub(crate) fn provider(spec: &SinkSpec) -> Result<&'static dyn SinkProvider> {
    SINKS.iter().copied().find(|p| p.names().contains(&spec.format.as_str())).ok_or_else(|| Error::Config {
        location: spec.location.clone(),
        message: format!("unknown sink format `{}`; valid formats: {}", spec.format, formats().join(", ")),
    })
}

/// Builds the sink a spec names, checking its output mode and options.
pub(crate) async fn build(spec: &SinkSpec, cx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
    let p = provider(spec)?;
    if !p.output_modes().contains(&spec.output_mode) {
        return Err(Error::OutputMode {
            mode: spec.output_mode.to_string(),
            reason: format!("by the {} sink", spec.format),
            allowed: p.output_modes().iter().map(ToString::to_string).collect(),
        });
    }
    p.create(spec, cx).await
}

//! The Rust API, mirroring Spark's: `session.read_stream().format(..).option(..).load()`, then
//! transformations, then `.write_stream().format(..).output_mode(..).start()`.
//!
//! It builds the same [`PipelineSpec`] the pipeline file does, so both front ends run the same
//! code and accept the same options. Plugins in every role take a [`PluginSpec`] (path, config,
//! grants, limits, failure policy); `foreach_batch` / `foreach` also take Rust code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::engine::{Query, StreamingQuery, StreamingQueryManager};
use crate::error::Result;
use crate::foreach::{ForeachBatchFn, ForeachWriterFactory};
use crate::plugin::inspect::PluginReport;
use crate::plugin::{PluginRuntime, RuntimeConfig, default_cache_dir};
use crate::sink::MemoryTables;
use crate::spec::{
    NativeSink, OutputMode, PipelineSpec, PluginConfig, PluginLimits, PluginSpec, SinkSpec, SourceSpec, TransformSpec,
};
use crate::trigger::Trigger;

/// The entry point (Spark's `SparkSession`): owns the plugin runtime and the memory tables.
#[derive(Clone, Debug)]
pub struct Session {
    runtime: PluginRuntime,
    tables: MemoryTables,
    streams: StreamingQueryManager,
}

impl Session {
    /// A session with compiled plugins cached in [`default_cache_dir`]. Needs a tokio runtime.
    pub fn try_new() -> Result<Self> {
        Self::with_cache_dir(&default_cache_dir())
    }

    /// A session caching compiled plugins under `dir`.
    pub fn with_cache_dir(dir: &Path) -> Result<Self> {
        Self::with_config(RuntimeConfig::new(dir))
    }

    /// A session with explicit plugin-runtime settings (cache, process-wide memory budget, fuel).
    pub fn with_config(config: RuntimeConfig) -> Result<Self> {
        Ok(Session {
            runtime: PluginRuntime::try_new(config)?,
            tables: MemoryTables::default(),
            streams: StreamingQueryManager::new(),
        })
    }

    /// The session's queries and listeners (Spark's `spark.streams`).
    pub fn streams(&self) -> &StreamingQueryManager {
        &self.streams
    }

    /// Starts describing a streaming source.
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader { session: self.clone(), source: SourceSpec::new("") }
    }

    /// The rows a `memory` sink has written to table `name` (the query's name).
    pub fn memory_table(&self, name: &str) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        self.tables.get(name)
    }

    /// Builds and starts the query `spec` describes (what `sluice run` does). Refused when a
    /// query with the same name, or the same checkpoint, is active in this session.
    pub async fn start(&self, spec: &PipelineSpec) -> Result<StreamingQuery> {
        let q = Query::build(spec, &self.runtime, &self.tables).await?;
        self.streams.start(q)
    }

    /// Like [`Session::start`]; a query whose checkpoint has no id yet gets `id` (the server's
    /// name for it).
    pub(crate) async fn start_with_id(&self, spec: &PipelineSpec, id: uuid::Uuid) -> Result<StreamingQuery> {
        let q = Query::build_with_id(spec, &self.runtime, &self.tables, Some(id)).await?;
        self.streams.start(q)
    }

    /// Builds the query without running it and returns the schema of what reaches the sink
    /// (what `sluice validate` does): loads plugins and checks their grants, plans SQL, checks
    /// options and modes.
    pub async fn validate(&self, spec: &PipelineSpec) -> Result<SchemaRef> {
        Ok(self.check(spec).await?.schema)
    }

    /// Like [`Session::validate`], also stating the query's end-to-end delivery guarantee.
    pub async fn check(&self, spec: &PipelineSpec) -> Result<Validated> {
        let q = Query::build(spec, &self.runtime, &self.tables).await?;
        Ok(Validated { schema: q.output_schema(), guarantee: q.guarantee.clone() })
    }

    /// What a component is and, for `config`, what it declares it needs (`sluice plugin inspect`).
    pub async fn inspect_plugin(&self, path: &Path, config: PluginConfig) -> Result<PluginReport> {
        self.runtime.inspect(path, config).await
    }

    pub(crate) fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// Bytes of plugin memory all instances of this session's runtime hold now, and the budget.
    pub fn plugin_memory(&self) -> (u64, u64) {
        self.runtime.memory_in_use()
    }
}

/// What validating a pipeline found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Validated {
    /// The schema of what reaches the sink.
    pub schema: SchemaRef,
    /// The end-to-end delivery guarantee, in words.
    pub guarantee: String,
}

/// Describes a source (Spark's `DataStreamReader`).
#[must_use]
pub struct DataStreamReader {
    session: Session,
    source: SourceSpec,
}

impl DataStreamReader {
    /// `socket`, `rate`, `kafka`, `text`, `json`, `csv`, `parquet` (or see [`Self::plugin`]).
    pub fn format(mut self, format: &str) -> Self {
        self.source.format = format.to_ascii_lowercase();
        self
    }
    /// Sets a source option (Spark's names, case-insensitive).
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.source.options.insert(key.to_string(), value.to_string(), None);
        self
    }
    /// The schema, as a DDL string (`"ts TIMESTAMP, user STRING"`).
    pub fn schema(mut self, ddl: &str) -> Self {
        self.source.schema = Some(ddl.to_string());
        self
    }
    /// A source plugin (format `plugin`): a component of the `source-plugin` world.
    pub fn plugin(mut self, plugin: PluginSpec) -> Self {
        self.source.format = "plugin".into();
        self.source.plugin = Some(plugin);
        self
    }
    /// Finishes the source description.
    pub fn load(self) -> StreamingDataFrame {
        StreamingDataFrame { session: self.session, source: self.source, transforms: Vec::new() }
    }
    /// Finishes a file source description with the directory to watch.
    pub fn load_path(mut self, path: impl Into<PathBuf>) -> StreamingDataFrame {
        self.source.path = Some(path.into());
        self.load()
    }
}

/// A streaming query under construction: a source plus transformations.
#[must_use]
pub struct StreamingDataFrame {
    session: Session,
    source: SourceSpec,
    transforms: Vec<TransformSpec>,
}

impl StreamingDataFrame {
    /// Adds a SQL step; the previous step's output is the table `input`.
    pub fn sql(mut self, query: &str) -> Self {
        self.transforms.push(TransformSpec::Sql { query: query.to_string() });
        self
    }

    /// Spark's `withWatermark`: event time is `column` (a TIMESTAMP), and events may arrive up
    /// to `delay` (`"10 minutes"`) late; later aggregations by a window of it close windows and
    /// evict their state as the watermark passes them. A bad delay fails when the query starts.
    pub fn with_watermark(mut self, column: &str, delay: &str) -> Self {
        self.transforms.push(TransformSpec::Watermark { column: column.to_string(), delay: delay.to_string() });
        self
    }

    /// Spark's `dropDuplicates(columns)`: passes on the first row of each key (every column
    /// when `columns` is empty). With a watermark whose column is among the keys, keys are
    /// forgotten once the watermark passes them; otherwise they are kept forever.
    pub fn drop_duplicates(mut self, columns: &[&str]) -> Self {
        let columns = columns.iter().map(|c| c.to_string()).collect();
        self.transforms.push(TransformSpec::DropDuplicates { columns, within_watermark: false });
        self
    }

    /// Spark's `dropDuplicatesWithinWatermark(columns)`: passes on the first row of each key and
    /// drops its duplicates that arrive until the watermark passes its event time plus the
    /// watermark's delay. Needs a watermark.
    pub fn drop_duplicates_within_watermark(mut self, columns: &[&str]) -> Self {
        let columns = columns.iter().map(|c| c.to_string()).collect();
        self.transforms.push(TransformSpec::DropDuplicates { columns, within_watermark: true });
        self
    }

    /// Adds a Wasm plugin step with string config values and default limits.
    pub fn plugin<K: ToString, V: ToString>(
        self,
        path: impl Into<PathBuf>,
        config: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.plugin_with_limits(path, config, PluginLimits::default())
    }

    /// Adds a Wasm plugin step with string config values and explicit limits.
    pub fn plugin_with_limits<K: ToString, V: ToString>(
        self,
        path: impl Into<PathBuf>,
        config: impl IntoIterator<Item = (K, V)>,
        limits: PluginLimits,
    ) -> Self {
        let mut spec = PluginSpec::new(path).limits(limits);
        for (k, v) in config {
            spec = spec.config(&k.to_string(), v.to_string());
        }
        self.transform(spec)
    }

    /// Adds a Wasm plugin step (typed config, grants, limits, failure policy).
    pub fn transform(mut self, plugin: PluginSpec) -> Self {
        self.transforms.push(TransformSpec::Plugin(plugin));
        self
    }

    /// Starts describing the sink.
    pub fn write_stream(self) -> DataStreamWriter {
        DataStreamWriter {
            df: self,
            sink: SinkSpec::new("console"),
            trigger: Trigger::Default,
            name: None,
            checkpoint: None,
        }
    }
}

/// Describes the sink and starts the query (Spark's `DataStreamWriter`).
#[must_use]
pub struct DataStreamWriter {
    df: StreamingDataFrame,
    sink: SinkSpec,
    trigger: Trigger,
    name: Option<String>,
    checkpoint: Option<PathBuf>,
}

impl DataStreamWriter {
    /// `console`, `memory`, `noop`, `kafka`, `json`, `csv`, `parquet`, `foreach_batch`, `foreach`.
    pub fn format(mut self, format: &str) -> Self {
        self.sink.format = format.to_ascii_lowercase();
        self
    }
    /// Append (default), update or complete.
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.sink.output_mode = mode;
        self
    }
    /// Sets a sink option. `checkpointLocation` sets the checkpoint location, as in Spark.
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        if key.eq_ignore_ascii_case("checkpointLocation") {
            self.checkpoint = Some(PathBuf::from(value.to_string()));
        } else {
            self.sink.options.insert(key.to_string(), value.to_string(), None);
        }
        self
    }
    /// The trigger (default: next batch as soon as data is there).
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }
    /// The query name; also names the memory sink's table.
    pub fn query_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// The output directory, for file sinks.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.sink.path = Some(path.into());
        self
    }
    /// A sink plugin: `format` must be `foreach_batch` or `foreach`, and the component of the
    /// matching world.
    pub fn plugin(mut self, format: &str, plugin: PluginSpec) -> Self {
        self.sink.format = format.to_ascii_lowercase();
        self.sink.plugin = Some(plugin);
        self
    }
    /// Spark's `foreachBatch` with Rust code: `f(info, rows)` once per micro-batch.
    pub fn foreach_batch(mut self, f: impl ForeachBatchFn) -> Self {
        self.sink.format = "foreach_batch".into();
        self.sink.native = Some(NativeSink::ForeachBatch(Arc::new(f)));
        self
    }
    /// Spark's `foreach` with a [`ForeachWriter`](crate::ForeachWriter): a clone per partition
    /// and micro-batch.
    pub fn foreach(mut self, writer: impl ForeachWriterFactory) -> Self {
        self.sink.format = "foreach".into();
        self.sink.native = Some(NativeSink::Foreach(Arc::new(writer)));
        self
    }

    /// The pipeline this writer describes.
    pub fn into_spec(self) -> (Session, PipelineSpec) {
        let spec = PipelineSpec {
            name: self.name,
            checkpoint_location: self.checkpoint,
            source: self.df.source,
            transforms: self.df.transforms,
            sink: self.sink,
            trigger: self.trigger,
        };
        (self.df.session, spec)
    }

    /// Builds the query and starts it in the background; returns its handle at once.
    pub async fn start(self) -> Result<StreamingQuery> {
        let (session, spec) = self.into_spec();
        session.start(&spec).await
    }
}

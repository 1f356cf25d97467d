//! The Rust API, mirroring Spark's: `session.read_stream().format(..).option(..).load()`, then
//! transformations, then `.write_stream().format(..).output_mode(..).start()`.
//!
//! It builds the same [`PipelineSpec`] the pipeline file does, so both front ends run the same
//! code and accept the same options.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::config::{PipelineSpec, SinkSpec, SourceSpec, TransformSpec};
use crate::engine::{Query, StreamingQuery};
use crate::error::Result;
use crate::options::Options;
use crate::plugin::{PluginLimits, PluginRuntime, default_cache_dir};
use crate::sink::{MemoryTables, OutputMode};
use crate::trigger::Trigger;

/// The entry point (Spark's `SparkSession`): owns the plugin runtime and the memory tables.
#[derive(Clone, Debug)]
pub struct Session {
    runtime: PluginRuntime,
    tables: MemoryTables,
}

impl Session {
    /// A session with compiled plugins cached in [`default_cache_dir`]. Needs a tokio runtime.
    pub fn try_new() -> Result<Self> {
        Self::with_cache_dir(&default_cache_dir())
    }

    /// A session caching compiled plugins under `dir`.
    pub fn with_cache_dir(dir: &Path) -> Result<Self> {
        Ok(Session { runtime: PluginRuntime::try_new(dir)?, tables: MemoryTables::default() })
    }

    /// Starts describing a streaming source.
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader {
            session: self.clone(),
            format: String::new(),
            options: Options::default(),
            schema: None,
            path: None,
        }
    }

    /// The rows a `memory` sink has written to table `name` (the query's name).
    pub fn memory_table(&self, name: &str) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        self.tables.get(name)
    }

    /// Builds and starts the query `spec` describes (what `sluice run` does).
    pub async fn start(&self, spec: &PipelineSpec) -> Result<StreamingQuery> {
        let q = Query::build(spec, &self.runtime, &self.tables).await?;
        Ok(StreamingQuery::start(q))
    }

    /// Builds the query without running it and returns the schema of what reaches the sink
    /// (what `sluice validate` does): loads plugins, plans SQL, checks options and modes.
    pub async fn validate(&self, spec: &PipelineSpec) -> Result<SchemaRef> {
        Ok(Query::build(spec, &self.runtime, &self.tables).await?.output_schema())
    }
}

/// Describes a source (Spark's `DataStreamReader`).
#[must_use]
pub struct DataStreamReader {
    session: Session,
    format: String,
    options: Options,
    schema: Option<String>,
    path: Option<PathBuf>,
}

impl DataStreamReader {
    /// `socket`, `rate`, `text`, `json`, `csv` or `parquet`.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_ascii_lowercase();
        self
    }
    /// Sets a source option (Spark's names, case-insensitive).
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.insert(key.to_string(), value.to_string(), None);
        self
    }
    /// The schema, as a DDL string (`"ts TIMESTAMP, user STRING"`).
    pub fn schema(mut self, ddl: &str) -> Self {
        self.schema = Some(ddl.to_string());
        self
    }
    /// Finishes the source description.
    pub fn load(self) -> StreamingDataFrame {
        StreamingDataFrame {
            session: self.session,
            source: SourceSpec {
                format: self.format,
                options: self.options,
                path: self.path,
                schema: self.schema,
                location: None,
            },
            transforms: Vec::new(),
        }
    }
    /// Finishes a file source description with the directory to watch.
    pub fn load_path(mut self, path: impl Into<PathBuf>) -> StreamingDataFrame {
        self.path = Some(path.into());
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

    /// Adds a Wasm plugin step with default limits.
    pub fn plugin<K: ToString, V: ToString>(
        self,
        path: impl Into<PathBuf>,
        config: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.plugin_with_limits(path, config, PluginLimits::default())
    }

    /// Adds a Wasm plugin step with explicit limits.
    pub fn plugin_with_limits<K: ToString, V: ToString>(
        mut self,
        path: impl Into<PathBuf>,
        config: impl IntoIterator<Item = (K, V)>,
        limits: PluginLimits,
    ) -> Self {
        let path = path.into();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
        let config = config.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.transforms.push(TransformSpec::Plugin { path, name, config, limits });
        self
    }

    /// Starts describing the sink.
    pub fn write_stream(self) -> DataStreamWriter {
        DataStreamWriter {
            df: self,
            format: "console".into(),
            mode: OutputMode::Append,
            options: Options::default(),
            trigger: Trigger::Default,
            name: None,
            checkpoint: None,
            path: None,
        }
    }
}

/// Describes the sink and starts the query (Spark's `DataStreamWriter`).
#[must_use]
pub struct DataStreamWriter {
    df: StreamingDataFrame,
    format: String,
    mode: OutputMode,
    options: Options,
    trigger: Trigger,
    name: Option<String>,
    checkpoint: Option<PathBuf>,
    path: Option<PathBuf>,
}

impl DataStreamWriter {
    /// `console`, `memory` or `noop`.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_ascii_lowercase();
        self
    }
    /// Append (default), update or complete.
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.mode = mode;
        self
    }
    /// Sets a sink option. `checkpointLocation` sets the checkpoint location, as in Spark.
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        if key.eq_ignore_ascii_case("checkpointLocation") {
            self.checkpoint = Some(PathBuf::from(value.to_string()));
        } else {
            self.options.insert(key.to_string(), value.to_string(), None);
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
        self.path = Some(path.into());
        self
    }

    /// The pipeline this writer describes.
    pub fn into_spec(self) -> (Session, PipelineSpec) {
        let spec = PipelineSpec {
            name: self.name,
            checkpoint_location: self.checkpoint,
            source: self.df.source,
            transforms: self.df.transforms,
            sink: SinkSpec {
                format: self.format,
                output_mode: self.mode,
                options: self.options,
                path: self.path,
                location: None,
            },
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

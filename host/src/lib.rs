//! Sluice: Spark Structured Streaming's model in Rust, with user logic in sandboxed
//! WebAssembly plugins.
//!
//! A query reads an unbounded source, runs SQL steps (DataFusion, incrementalized) and Wasm
//! plugin steps over each micro-batch, and writes the result to a sink in an output mode:
//!
//! ```no_run
//! # async fn demo() -> sluice::Result<()> {
//! use sluice::{OutputMode, Session, Trigger};
//!
//! let session = Session::try_new()?;
//! let query = session
//!     .read_stream().format("text").load_path("data/in")
//!     .plugin("plugins/split_words.wasm", [("column", "value")])
//!     .sql("SELECT word, count(*) AS count FROM input GROUP BY word")
//!     .write_stream().format("console").output_mode(OutputMode::Complete)
//!     .trigger(Trigger::AvailableNow)
//!     .start().await?;
//! query.await_termination().await?;
//! # Ok(()) }
//! ```
//!
//! Main types: [`Session`] (entry point), [`PipelineSpec`] (a validated pipeline, from a file or
//! the API), [`StreamingQuery`] (the running query's handle), [`Error`].
//!
//! Modules: `spec` (what a pipeline is; a leaf), `config` (the pipeline file), `session` (Rust
//! API), `engine` (micro-batch loop), `progress` (Spark's progress JSON), `source` (the source
//! registry: socket, rate, files, Kafka, plugin), `sql` (incremental SQL on DataFusion),
//! `plugin` (the Wasm runtime; the only module that names wasmtime), `sink` (the sink registry:
//! console, memory, noop, files, Kafka, foreach/foreachBatch), `foreach` (native foreach
//! sinks), `checkpoint` (offsets and commits through object_store), `state` (versioned state
//! store), `inspect` (checkpoint inspection and state reader), `faults` (crash-test pauses),
//! `trigger`, `options`, `schema`, `error`.

pub mod bench;
mod checkpoint;
pub mod client;
mod config;
pub mod devkit;
mod engine;
mod error;
mod faults;
mod foreach;
mod inspect;
pub mod kafka;
mod listener;
mod mem;
mod metrics;
mod options;
mod plugin;
mod progress;
mod schema;
pub mod serve;
mod session;
mod sink;
mod source;
mod spec;
mod sql;
mod state;
mod trigger;
pub mod watch;

pub use arrow_array::RecordBatch;
pub use config::parse_config_arg;
pub use engine::{DEFAULT_IDLE_EVENT_INTERVAL, StreamingQuery, StreamingQueryManager};
pub use error::{Error, ErrorKind, Limit, PluginFault, Result};
pub use foreach::{BatchInfo, ForeachBatchFn, ForeachWriter, ForeachWriterFactory};
pub use inspect::{BatchReport, CheckpointReport, OperatorReport, inspect_checkpoint, read_state};
pub use listener::{
    FnListener, JsonLinesListener, ListenerId, QueryEvent, QueryIdleEvent, QueryStartedEvent, QueryTerminatedEvent,
    StreamingQueryListener, WebhookListener,
};
pub use metrics::Metrics;
pub use options::{Options, parse_duration};
pub use plugin::inspect::PluginReport;
pub use plugin::{DEFAULT_MEMORY_BUDGET, Requirement, Role, RuntimeConfig, default_cache_dir};
pub use progress::{
    LatencyProgress, PluginProgress, SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress,
    StreamingQueryStatus,
};
pub use schema::parse_ddl;
pub use session::{DataStreamReader, DataStreamWriter, Session, StreamingDataFrame, Validated};
pub use sink::MemoryTables;
pub use source::Offset;
pub use spec::{
    ClockGrant, ConfigValue, DirGrant, Grants, NativeSink, OnError, OutputMode, PipelineSpec, PluginConfig,
    PluginLimits, PluginSpec, SinkSpec, SourceSpec, StepRef, TransformSpec,
};
pub use trigger::Trigger;

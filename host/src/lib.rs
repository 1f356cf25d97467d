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
//! Modules: `config` (pipeline file), `session` (Rust API), `engine` (micro-batch loop,
//! progress), `source` (socket, rate, files), `sql` (incremental SQL on DataFusion), `plugin`
//! (the Wasm runtime; the only module that names wasmtime), `sink` (console, memory, noop,
//! json/csv/parquet files), `checkpoint` (offsets and commits through object_store), `state`
//! (versioned state store), `inspect` (checkpoint inspection and state reader), `trigger`,
//! `options`, `schema`, `error`.

pub mod bench;
mod checkpoint;
mod config;
mod engine;
mod error;
mod inspect;
pub mod kafka;
mod options;
mod plugin;
mod schema;
mod session;
mod sink;
mod source;
mod sql;
mod state;
mod trigger;

pub use config::{PipelineSpec, SinkSpec, SourceSpec, TransformSpec};
pub use engine::StreamingQuery;
pub use engine::progress::{
    PluginProgress, SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress, StreamingQueryStatus,
};
pub use error::{Error, ErrorKind, Limit, Result};
pub use inspect::{BatchReport, CheckpointReport, OperatorReport, inspect_checkpoint, read_state};
pub use options::Options;
pub use plugin::{PluginLimits, default_cache_dir};
pub use schema::parse_ddl;
pub use session::{DataStreamReader, DataStreamWriter, Session, StreamingDataFrame};
pub use sink::{MemoryTables, OutputMode};
pub use source::Offset;
pub use trigger::Trigger;

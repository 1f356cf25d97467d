//! Sinks and output modes (Spark's `DataStreamWriter.format(...)` and `outputMode`).
//!
//! A sink gets each micro-batch's output once per batch id: `add_batch(N, ...)` may be called
//! again for the same N after a failure, and a sink that claims exactly-once must make that
//! call idempotent.

use std::str::FromStr;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::config::SinkSpec;
use crate::error::{Error, Result};

pub(crate) mod console;
pub(crate) mod file;
pub(crate) mod kafka;
pub(crate) mod memory;
pub(crate) mod noop;

pub use memory::MemoryTables;

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
        batch_id: u64,
        schema: &SchemaRef,
        data: Vec<RecordBatch>,
        mode: OutputMode,
    ) -> Result<()>;
}

/// Sink formats known to this build.
pub(crate) const SINK_FORMATS: &[&str] = &["console", "memory", "noop", "kafka", "json", "csv", "parquet"];

/// Whether the sink needs a checkpoint (it promises exactly-once).
pub(crate) fn needs_checkpoint(spec: &SinkSpec) -> bool {
    match spec.format.as_str() {
        "json" | "csv" | "parquet" => true,
        "kafka" => kafka::KafkaSink::needs_checkpoint(&spec.options),
        _ => false,
    }
}

/// Builds the sink a spec names, checking its options and output mode.
pub(crate) fn build(spec: &SinkSpec, query_name: Option<&str>, tables: &MemoryTables) -> Result<Box<dyn Sink>> {
    let modes: &[OutputMode] = match spec.format.as_str() {
        "console" | "noop" | "memory" | "kafka" => &[OutputMode::Append, OutputMode::Update, OutputMode::Complete],
        // Update mode on a file sink appends each batch's changed rows (a change log; the last
        // row per key is current). Spark allows append only.
        "json" | "csv" | "parquet" => &[OutputMode::Append, OutputMode::Update],
        other => {
            return Err(Error::Config {
                location: spec.location.clone(),
                message: format!("unknown sink format `{other}`; valid formats: {}", SINK_FORMATS.join(", ")),
            });
        }
    };
    if !modes.contains(&spec.output_mode) {
        return Err(Error::OutputMode {
            mode: spec.output_mode.to_string(),
            reason: format!("by the {} sink", spec.format),
            allowed: modes.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(match spec.format.as_str() {
        "console" => Box::new(console::ConsoleSink::try_new(&spec.options)?),
        "noop" => {
            spec.options.check("noop sink", &[])?;
            Box::new(noop::NoopSink)
        }
        "memory" => Box::new(memory::MemorySink::try_new(&spec.options, query_name, tables.clone())?),
        "kafka" => {
            if spec.path.is_some() {
                return Err(Error::Config {
                    location: spec.location.clone(),
                    message: "the kafka sink takes no `path`; set option `topic` or write a `topic` column".into(),
                });
            }
            Box::new(kafka::KafkaSink::try_new(&spec.options).map_err(|e| e.at(spec.location.clone()))?)
        }
        f => Box::new(file::FileSink::try_new(f, spec.path.as_deref(), &spec.options)?),
    })
}

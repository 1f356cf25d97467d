#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::cell::RefCell;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, Schema, SchemaRef};

pub use arrow_array;
pub use arrow_schema;
pub use arrow_select;

/// Generated WIT bindings. Plugin crates never use these directly: implement [`Transform`] and
/// call [`export_transform!`].
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_transform_world",
        default_bindings_module: "sluice_sdk::bindings",
    });
}

use bindings::sluice::plugin::log as wit_log;
use bindings::sluice::plugin::types as wit;

/// Where the batch being processed sits in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchContext {
    /// Micro-batch id (Spark's `batchId`); a replayed batch keeps its id and its input.
    pub batch_id: u64,
    /// The input partition of this call.
    pub partition: u32,
    /// The event-time watermark in effect, in ms since the Unix epoch, if the query has one.
    pub watermark_ms: Option<i64>,
    /// The batch's logical timestamp in ms since the Unix epoch, stable on replay.
    pub batch_timestamp_ms: i64,
}

/// A plugin failure, reported to the host as a typed error that names the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is wrong: say which key and why.
    InvalidConfig(String),
    /// The input lacks what the plugin needs (a column, a type).
    InvalidInput(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        Error::Failed(e.to_string())
    }
}

impl From<Error> for wit::PluginError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => wit::PluginError::InvalidConfig(m),
            Error::InvalidInput(m) => wit::PluginError::InvalidInput(m),
            Error::Failed(m) => wit::PluginError::Failed(m),
        }
    }
}

/// The plugin's configuration: the `config` table of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// A config from key/value pairs (useful in a plugin's own unit tests).
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Config { entries: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`, or an [`Error::InvalidConfig`] saying it is required.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key).ok_or_else(|| Error::InvalidConfig(format!("missing required key `{key}`")))
    }

    /// Fails with an [`Error::InvalidConfig`] naming the first key not in `allowed`, and the
    /// valid choices. Call it first in `init`, so a typo never passes silently.
    pub fn check_keys(&self, allowed: &[&str]) -> Result<(), Error> {
        match self.entries.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(Error::InvalidConfig(format!("unknown key `{k}`; valid keys: {}", allowed.join(", ")))),
        }
    }

    /// All entries, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A stateless batch-to-batch transform (map, flat-map, filter, enrich, parse).
///
/// One instance serves one input partition; the host calls [`Transform::init`] once, then
/// [`Transform::output_schema`] at planning time, then [`Transform::process`] per batch.
pub trait Transform: Sized + 'static {
    /// Builds the instance from its configuration. Validate everything here.
    fn init(config: Config) -> Result<Self, Error>;
    /// The schema of the output for a given input schema. Checked by the host on every batch.
    fn output_schema(&self, input: &Schema) -> Result<SchemaRef, Error>;
    /// Transforms one batch. The output must have the schema [`Transform::output_schema`] gave.
    fn process(&mut self, ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error>;
}

/// Log levels for [`log`].
pub use wit_log::Level;

/// Sends a log line to the host; it appears in the host's logs tagged with the plugin name and
/// the batch id.
pub fn log(level: Level, message: &str) {
    wit_log::log(level, message);
}

/// Decodes an Arrow IPC stream into its schema and batches. The arrays point into `bytes`
/// (no copy) where the data is aligned.
pub fn decode_ipc(bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), Error> {
    let mut buf = arrow_buffer::Buffer::from_vec(bytes);
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf)? {
            Some(b) => batches.push(b),
            None if buf.is_empty() => break,
            None => {}
        }
    }
    decoder.finish()?;
    let schema = decoder.schema().ok_or_else(|| Error::InvalidInput("the IPC stream has no schema message".into()))?;
    Ok((schema, batches))
}

/// Encodes a schema and batches as one Arrow IPC stream.
pub fn encode_ipc(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    // The bytes the batches' rows occupy (not the buffers they may be slices of: batches
    // decoded without copying all point into one big buffer).
    let size: usize =
        batches.iter().flat_map(|b| b.columns()).map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum();
    let mut writer = StreamWriter::try_new(Vec::with_capacity(size + 1024), schema)?;
    for b in batches {
        writer.write(b)?;
    }
    Ok(writer.into_inner()?)
}

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

fn with_instance<T: Transform, R>(f: impl FnOnce(&mut T) -> Result<R, Error>) -> Result<R, Error> {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let instance = slot
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .ok_or_else(|| Error::Failed("plugin called before init".into()))?;
        f(instance)
    })
}

/// The adapter from a [`Transform`] to the WIT world; used by [`export_transform!`].
#[doc(hidden)]
pub struct TransformExport<T>(std::marker::PhantomData<T>);

impl<T: Transform> bindings::Guest for TransformExport<T> {
    fn init(config: wit::Config) -> Result<(), wit::PluginError> {
        let instance = T::init(Config { entries: config })?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(instance)));
        Ok(())
    }

    fn output_schema(input_schema: Vec<u8>) -> Result<Vec<u8>, wit::PluginError> {
        let (schema, _) = decode_ipc(input_schema)?;
        let out = with_instance::<T, _>(|t| t.output_schema(&schema))?;
        Ok(encode_ipc(&out, &[])?)
    }

    fn process(ctx: wit::BatchContext, input: Vec<u8>) -> Result<Vec<u8>, wit::PluginError> {
        let ctx = BatchContext {
            batch_id: ctx.batch_id,
            partition: ctx.partition,
            watermark_ms: ctx.watermark_ms,
            batch_timestamp_ms: ctx.batch_timestamp_ms,
        };
        let (schema, batches) = decode_ipc(input)?;
        let out = with_instance::<T, _>(|t| {
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                out.push(t.process(&ctx, b)?);
            }
            match out.first() {
                Some(first) => Ok((first.schema(), out)),
                None => Ok((t.output_schema(&schema)?, out)),
            }
        })?;
        Ok(encode_ipc(&out.0, &out.1)?)
    }
}

/// Exports a [`Transform`] implementation as the plugin's `transform` world.
///
/// ```ignore
/// struct Upper;
/// impl sluice_sdk::Transform for Upper { /* ... */ }
/// sluice_sdk::export_transform!(Upper);
/// ```
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        type __SluiceTransformExport = $crate::TransformExport<$t>;
        $crate::bindings::__export_transform_world!(__SluiceTransformExport with_types_in $crate::bindings);
    };
}

/// Helpers for building output columns.
pub mod util {
    use super::*;

    /// The index of column `name` in `schema`, or an [`Error::InvalidInput`] naming the columns
    /// that exist.
    pub fn column_index(schema: &Schema, name: &str) -> Result<usize, Error> {
        schema.index_of(name).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::InvalidInput(format!("no column `{name}`; input columns: {}", names.join(", ")))
        })
    }

    /// A schema made of `fields`, shared.
    pub fn schema(fields: Vec<arrow_schema::Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }
}

#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::sync::Arc;

use arrow_schema::{ArrowError, Schema, SchemaRef};

pub use arrow_array;
pub use arrow_buffer;
pub use arrow_schema;
pub use arrow_select;

pub mod filter;
pub mod wire;

#[cfg(feature = "bindings")]
#[doc(hidden)]
pub mod bindings;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "bindings")]
pub mod sink;
#[cfg(feature = "bindings")]
pub mod source;
#[cfg(feature = "bindings")]
pub mod transform;

#[cfg(feature = "bindings")]
pub use sink::{BatchSink, ForeachSink, PartitionWriter};
#[cfg(feature = "bindings")]
pub use source::{PartitionReader, ReadLimit, Source};
#[cfg(feature = "bindings")]
pub use transform::Transform;

/// Where a call sits in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchContext {
    /// The query's id, stable across restarts from the same checkpoint.
    pub query_id: String,
    /// Micro-batch id (Spark's `batchId`); a replayed batch keeps its id and its input.
    pub batch_id: u64,
    /// 0 for the first attempt at this batch in this process; retries count up.
    pub attempt: u32,
    /// The logical partition of the rows in this call: the same on every machine.
    pub partition: u32,
    /// How many logical partitions the batch has at this step.
    pub num_partitions: u32,
    /// The event-time watermark in effect, in ms since the Unix epoch, if the query has one.
    pub watermark_ms: Option<i64>,
    /// The batch's logical timestamp in ms since the Unix epoch, stable on replay. Unless the
    /// real clock is granted, it is also what the wall clock (`SystemTime::now`) reads.
    pub batch_timestamp_ms: i64,
}

impl BatchContext {
    /// A context for batch `batch_id` (for a plugin's own tests).
    pub fn for_batch(batch_id: u64) -> Self {
        BatchContext {
            query_id: "test".into(),
            batch_id,
            attempt: 0,
            partition: 0,
            num_partitions: 1,
            watermark_ms: None,
            batch_timestamp_ms: 0,
        }
    }
}

/// A plugin failure, reported to the host as a typed error that names the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is wrong: say which key and why.
    InvalidConfig(String),
    /// The input lacks what the plugin needs (a column, a type).
    InvalidInput(String),
    /// A transient failure (a service unavailable); the host may retry on a fresh instance if
    /// the pipeline's `on_error` policy says so.
    Retryable(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Retryable(m) => write!(f, "retryable: {m}"),
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

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Failed(e.to_string())
    }
}

/// A configuration value, typed as written in the pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A list of scalars.
    List(Vec<Value>),
    /// A nested table (or a list of lists/tables) as JSON text.
    Json(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::List(_) => "a list",
            Value::Json(_) => "a table",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

/// The plugin's configuration: the `config` table of the pipeline file, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    entries: Vec<(String, Value)>,
}

fn wrong_type(key: &str, want: &str, got: &Value) -> Error {
    Error::InvalidConfig(format!("`{key}` must be {want}, got {} ({got:?})", got.kind()))
}

impl Config {
    /// A config from key/value pairs (useful in a plugin's own unit tests).
    pub fn new<K: Into<String>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Config { entries: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value; an error if `key` holds something else.
    pub fn str(&self, key: &str) -> Result<Option<&str>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    /// A string value, or `default`.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, Error> {
        Ok(self.str(key)?.unwrap_or(default))
    }

    /// A required string value.
    pub fn require_str(&self, key: &str) -> Result<&str, Error> {
        self.str(key)?.ok_or_else(|| Error::InvalidConfig(format!("missing required key `{key}`")))
    }

    /// An integer value (a string holding an integer is accepted too).
    pub fn int(&self, key: &str) -> Result<Option<i64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(Value::Str(s)) => {
                s.trim().parse().map(Some).map_err(|_| wrong_type(key, "an integer", &Value::Str(s.clone())))
            }
            Some(other) => Err(wrong_type(key, "an integer", other)),
        }
    }

    /// An integer value, or `default`.
    pub fn int_or(&self, key: &str, default: i64) -> Result<i64, Error> {
        Ok(self.int(key)?.unwrap_or(default))
    }

    /// A float value (integers and numeric strings are accepted too).
    pub fn float(&self, key: &str) -> Result<Option<f64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Float(f)) => Ok(Some(*f)),
            Some(Value::Int(i)) => Ok(Some(*i as f64)),
            Some(Value::Str(s)) => {
                s.trim().parse().map(Some).map_err(|_| wrong_type(key, "a number", &Value::Str(s.clone())))
            }
            Some(other) => Err(wrong_type(key, "a number", other)),
        }
    }

    /// A boolean value (`"true"`/`"false"` strings are accepted too).
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, Error> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Str(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::Str(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(wrong_type(key, "a boolean", other)),
        }
    }

    /// A list of strings.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::List(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.clone()),
                    other => Err(wrong_type(key, "a list of strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(wrong_type(key, "a list of strings", other)),
        }
    }

    /// Fails with an [`Error::InvalidConfig`] naming the first key not in `allowed`, and the
    /// valid choices. Call it first in `create`, so a typo never passes silently.
    pub fn check_keys(&self, allowed: &[&str]) -> Result<(), Error> {
        match self.entries.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(Error::InvalidConfig(format!("unknown key `{k}`; valid keys: {}", allowed.join(", ")))),
        }
    }

    /// All entries, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Something a plugin needs from the host, declared from its config (see each role trait's
/// `requirements`). The pipeline must grant all of it; anything not granted is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A directory at `guest` (a path inside the sandbox), read-only or read-write.
    Dir {
        /// The path the plugin opens, e.g. `/out`.
        guest: String,
        /// Whether it writes there.
        writable: bool,
    },
    /// Outbound HTTP to `host:port`.
    Http(String),
    /// A socket to `address:port`.
    Socket(String),
    /// An environment variable.
    Env(String),
    /// The real wall clock (otherwise the plugin reads the batch timestamp).
    WallClock,
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Dir { guest, writable: true } => write!(f, "read-write directory {guest}"),
            Requirement::Dir { guest, writable: false } => write!(f, "directory {guest} (read-only)"),
            Requirement::Http(h) => write!(f, "outbound HTTP to {h}"),
            Requirement::Socket(s) => write!(f, "a socket to {s}"),
            Requirement::Env(e) => write!(f, "environment variable {e}"),
            Requirement::WallClock => f.write_str("the real wall clock"),
        }
    }
}

/// Log levels for [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
}

/// Sends a log line to the host; it appears in the host's logs tagged with the plugin and the
/// batch. Off Wasm (a plugin's own `cargo test`), it prints to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(all(target_arch = "wasm32", feature = "bindings"))]
    {
        use bindings::transform_plugin::sluice::plugin::log as l;
        let level = match level {
            Level::Trace => l::Level::Trace,
            Level::Debug => l::Level::Debug,
            Level::Info => l::Level::Info,
            Level::Warn => l::Level::Warn,
            Level::Error => l::Level::Error,
        };
        l::log(level, message);
    }
    #[cfg(not(all(target_arch = "wasm32", feature = "bindings")))]
    eprintln!("[{level:?}] {message}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_config_reads_and_refuses_wrong_types() {
        let c = Config::new([("n", Value::Int(3)), ("s", Value::from("x")), ("b", Value::Bool(true))]);
        assert_eq!(c.int_or("n", 0), Ok(3));
        assert_eq!(c.str_or("s", "y"), Ok("x"));
        assert_eq!(c.bool_or("b", false), Ok(true));
        assert_eq!(c.int_or("missing", 7), Ok(7));
        assert!(c.int("s").is_err());
        assert!(c.str("n").is_err());
        assert!(c.check_keys(&["n", "s"]).is_err());
        assert!(c.check_keys(&["n", "s", "b"]).is_ok());
    }
}

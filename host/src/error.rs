//! The crate's one error type. Every variant carries fields, not preformatted text, and has a
//! [`ErrorKind`] a supervisor can act on (fix the config, retry, drop the plugin, report a bug).

use std::path::PathBuf;

/// What kind of failure an [`Error`] is, for deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The user's pipeline, query or options are wrong; retrying will not help.
    User,
    /// Something outside (a file, a socket) failed; retrying may help.
    External,
    /// A plugin trapped, returned an error or broke a contract.
    Plugin,
    /// A plugin hit its memory or time limit.
    ResourceLimit,
    /// A bug in Sluice.
    Internal,
}

/// The resource limit a plugin hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// The per-call time limit (which also bounds time spent waiting in host calls).
    Time,
    /// The per-instance memory cap, over all its memories and tables.
    Memory,
    /// The process-wide memory budget shared by all plugin instances.
    ProcessMemory,
    /// The cap on table elements.
    Table,
    /// The per-call fuel (CPU) budget.
    Fuel,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Time => "time limit",
            Limit::Memory => "memory limit",
            Limit::ProcessMemory => "process-wide plugin memory budget",
            Limit::Table => "table limit",
            Limit::Fuel => "fuel limit",
        })
    }
}

/// What went wrong in a plugin call that returned (rather than trapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginFault {
    /// The plugin refused its configuration.
    InvalidConfig,
    /// The plugin refused its input.
    InvalidInput,
    /// The plugin reported a transient failure; a retry may succeed.
    Retryable,
    /// The plugin reported a failure.
    Failed,
    /// The plugin broke the contract: invalid Arrow IPC, a batch not matching its declared
    /// schema, an instance used after it trapped.
    Contract,
}

/// Errors from Sluice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline file or API call is wrong. `location` is `file:line:column` when known.
    #[error("{}{message}", location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Config { location: Option<String>, message: String },

    /// An option is not one the source or sink knows.
    #[error("{}unknown option `{key}` for {component}; valid options: {}", location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default(), valid.join(", "))]
    UnknownOption { component: String, key: String, valid: Vec<String>, location: Option<String> },

    /// An option has a value that cannot be used.
    #[error("{}invalid value {value:?} for option `{key}` of {component}: {reason}", location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default())]
    InvalidOption { component: String, key: String, value: String, reason: String, location: Option<String> },

    /// A required option is missing.
    #[error("{}{component} needs option `{key}`{}", location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default(), hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingOption { component: String, key: String, hint: Option<String>, location: Option<String> },

    /// The query cannot run in the requested output mode.
    #[error("output mode `{mode}` is not supported {reason}; allowed: {}", allowed.join(", "))]
    OutputMode { mode: String, reason: String, allowed: Vec<String> },

    /// A SQL step failed to plan or run.
    #[error("SQL step {step}: {source}")]
    Sql {
        step: usize,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    /// A SQL query uses something a stream cannot do.
    #[error("[[transform]] {step}: {message}")]
    Unsupported { step: usize, message: String },

    /// A plugin could not be loaded or compiled.
    #[error("plugin `{plugin}`: cannot load {path}: {message}")]
    PluginLoad { plugin: String, path: PathBuf, message: String },

    /// A plugin returned an error or broke the contract.
    #[error("plugin `{plugin}` failed in `{call}`{}: {message}", batch.map(|b| format!(" (batch {b})")).unwrap_or_default())]
    Plugin { plugin: String, call: &'static str, batch: Option<u64>, fault: PluginFault, message: String },

    /// A plugin needs something its grants do not give it.
    #[error("plugin `{plugin}` needs {requirement}, which is not granted; {hint}")]
    MissingGrant { plugin: String, requirement: String, hint: String },

    /// A plugin trapped (panicked, hit `unreachable`, ...). The instance is discarded.
    #[error("plugin `{plugin}` trapped in `{call}`{}: {message}", batch.map(|b| format!(" (batch {b})")).unwrap_or_default())]
    PluginTrap { plugin: String, call: &'static str, batch: Option<u64>, message: String },

    /// A plugin exceeded a resource limit. The instance is discarded.
    #[error("plugin `{plugin}` exceeded its {limit} ({detail}) in `{call}`{}", batch.map(|b| format!(" (batch {b})")).unwrap_or_default())]
    PluginLimit { plugin: String, call: &'static str, batch: Option<u64>, limit: Limit, detail: String },

    /// A source failed to read.
    #[error("source {source_name}: {message}")]
    Source { source_name: String, message: String, kind: ErrorKind },

    /// An HTTP exchange failed (the CLI talking to `sluice serve`, a webhook).
    #[error("{context}: {message}")]
    Http { context: String, message: String },

    /// A sink failed to write.
    #[error("sink {sink}: {message}")]
    Sink { sink: String, message: String },

    /// A checkpoint file is torn, truncated or not in the expected format. It is never used.
    #[error("corrupt checkpoint file {path}: {reason}")]
    CorruptCheckpoint { path: String, reason: String },

    /// The checkpoint location could not be read or written.
    #[error("checkpoint {location}: {message}")]
    Checkpoint { location: String, message: String },

    /// The query changed since the checkpoint was written in a way its state cannot follow.
    #[error(
        "the query changed incompatibly since checkpoint {checkpoint} was written: {what} was `{before}` and is now `{now}`; use a new checkpoint location to start over"
    )]
    IncompatibleChange { checkpoint: String, what: String, before: String, now: String },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Arrow failed (bad IPC, schema mismatch).
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),

    /// The query ended with this error.
    #[error("query failed: {0}")]
    Failed(std::sync::Arc<Error>),

    /// A bug in Sluice.
    #[error("internal error (a bug in Sluice): {0}")]
    Internal(String),
}

impl Error {
    /// The kind of failure, for deciding what to do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. }
            | Error::UnknownOption { .. }
            | Error::InvalidOption { .. }
            | Error::MissingOption { .. }
            | Error::OutputMode { .. }
            | Error::Unsupported { .. }
            | Error::IncompatibleChange { .. }
            | Error::Sql { .. } => ErrorKind::User,
            Error::CorruptCheckpoint { .. } | Error::Checkpoint { .. } => ErrorKind::External,
            Error::MissingGrant { .. } | Error::Plugin { fault: PluginFault::InvalidConfig, .. } => ErrorKind::User,
            Error::PluginLoad { .. } | Error::Plugin { .. } | Error::PluginTrap { .. } => ErrorKind::Plugin,
            Error::PluginLimit { .. } => ErrorKind::ResourceLimit,
            Error::Source { kind, .. } => *kind,
            Error::Sink { .. } | Error::Io { .. } | Error::Http { .. } => ErrorKind::External,
            Error::Failed(e) => e.kind(),
            Error::Arrow(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether running the failed work again, on a fresh plugin instance, may succeed: a
    /// plugin's `retryable` error, a trap or a time limit. Configuration and contract errors,
    /// memory and fuel limits are not retried.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Plugin { fault, .. } => *fault == PluginFault::Retryable,
            Error::PluginTrap { .. } => true,
            Error::PluginLimit { limit, .. } => *limit == Limit::Time,
            Error::Failed(e) => e.retryable(),
            _ => false,
        }
    }

    /// The plugin an error is about, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Error::PluginLoad { plugin, .. }
            | Error::Plugin { plugin, .. }
            | Error::PluginTrap { plugin, .. }
            | Error::PluginLimit { plugin, .. }
            | Error::MissingGrant { plugin, .. } => Some(plugin),
            Error::Failed(e) => e.plugin(),
            _ => None,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config { location: None, message: message.into() }
    }

    /// Attaches a `file:line:col` location to a config/option error that has none.
    pub(crate) fn at(mut self, loc: Option<String>) -> Self {
        if let Some(l) = loc {
            match &mut self {
                Error::Config { location, .. }
                | Error::UnknownOption { location, .. }
                | Error::InvalidOption { location, .. }
                | Error::MissingOption { location, .. }
                    if location.is_none() =>
                {
                    *location = Some(l);
                }
                _ => {}
            }
        }
        self
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

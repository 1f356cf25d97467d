//! What the Kafka source and sink share: building librdkafka clients from Spark-style options
//! (`kafka.bootstrap.servers` plus any `kafka.*` key passed through to librdkafka), blocking
//! calls moved off the async runtime, and retries with clear "is the broker up?" errors.
//!
//! This module (with its `bench`) and `source::kafka` / `sink::kafka` are the only code that
//! names `rdkafka`.

pub mod bench;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfig;

use crate::error::{Error, ErrorKind, Result};
use crate::options::Options;

/// Keys of librdkafka's that Sluice sets itself; a user setting them would break offsets or
/// exactly-once, so they are refused with the reason (Spark refuses the same ones).
const RESERVED: &[(&str, &str)] = &[
    ("enable.auto.commit", "offsets live in Sluice's checkpoint; use commitOffsets to publish them to a group"),
    ("enable.auto.offset.store", "offsets live in Sluice's checkpoint"),
    ("auto.offset.reset", "use startingOffsets, and failOnDataLoss for offsets that were deleted"),
    ("enable.partition.eof", "the source reads exact offset ranges and needs end-of-partition events"),
    ("key.deserializer", "keys are always read as binary (cast them in SQL)"),
    ("value.deserializer", "values are always read as binary (cast them in SQL)"),
    ("key.serializer", "write a string or binary `key` column"),
    ("value.serializer", "write a string or binary `value` column"),
];

/// A librdkafka configuration from the `kafka.*` options of `component`, with `defaults`
/// applied first so the user's passthrough keys win.
pub(crate) fn client_config(component: &str, options: &Options, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
    let servers = options.require(
        component,
        "kafka.bootstrap.servers",
        Some("a comma-separated host:port list, e.g. 127.0.0.1:9092"),
    )?;
    let mut config = ClientConfig::new();
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    config.set("bootstrap.servers", servers);
    config.set("client.id", "sluice");
    for (key, value) in options.with_prefix("kafka.") {
        if let Some((_, why)) = RESERVED.iter().find(|(r, _)| r.eq_ignore_ascii_case(key)) {
            return Err(options.invalid(component, &format!("kafka.{key}"), why));
        }
        config.set(key, value);
    }
    Ok(config)
}

/// Creates a client, turning librdkafka's configuration errors into an option error that
/// names the `kafka.*` key.
pub(crate) fn create<C: FromClientConfig>(component: &str, options: &Options, config: &ClientConfig) -> Result<C> {
    create_with(component, options, config, C::from_config)
}

/// [`create`] for clients with a custom context.
pub(crate) fn create_with<C>(
    component: &str,
    options: &Options,
    config: &ClientConfig,
    make: impl FnOnce(&ClientConfig) -> rdkafka::error::KafkaResult<C>,
) -> Result<C> {
    make(config).map_err(|e| {
        let text = e.to_string();
        // librdkafka: "Client creation error: No such configuration property: \"foo\""
        let key = config
            .config_map()
            .keys()
            .find(|k| text.contains(&format!("\"{k}\"")) || text.contains(&format!(" {k}")))
            .map(|k| format!("kafka.{k}"));
        match key {
            Some(k) => options.invalid(component, &k, &text),
            None => Error::Config { location: options.location(), message: format!("{component}: {text}") },
        }
    })
}

/// How metadata and offset lookups are retried (Spark's `fetchOffset.*` options).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// Pause between attempts.
    pub(crate) interval: Duration,
    /// Time limit of one attempt.
    pub(crate) timeout: Duration,
}

impl Retry {
    pub(crate) fn from_options(component: &str, options: &Options) -> Result<Self> {
        let retries = options.parse_or(component, "fetchOffset.numRetries", 3u32)?;
        let interval = Duration::from_millis(options.parse_or(component, "fetchOffset.retryIntervalMs", 1000u64)?);
        let timeout = Duration::from_millis(options.parse_or(component, "fetchOffset.timeoutMs", 10_000u64)?);
        if timeout.is_zero() {
            return Err(options.invalid(component, "fetchOffset.timeoutMs", "must be positive"));
        }
        Ok(Retry { retries, interval, timeout })
    }
}

/// Runs a blocking librdkafka call on the blocking pool (never on a runtime worker).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("kafka call panicked: {e}")))
}

/// Runs a blocking librdkafka call on the blocking pool, retrying per `retry`; the final
/// error says what was attempted, against which servers, how often.
pub(crate) async fn blocking_retry<T, F>(component: &str, servers: &str, what: &str, retry: Retry, f: F) -> Result<T>
where
    T: Send + 'static,
    F: Fn(Duration) -> std::result::Result<T, String> + Send + Sync + 'static,
{
    let f = std::sync::Arc::new(f);
    let mut attempt = 0;
    loop {
        let g = f.clone();
        let timeout = retry.timeout;
        let r = blocking(move || g(timeout)).await?;
        match r {
            Ok(v) => return Ok(v),
            Err(e) if attempt < retry.retries => {
                attempt += 1;
                tracing::warn!(component, servers, what, attempt, error = %e, "kafka call failed; retrying");
                tokio::time::sleep(retry.interval).await;
            }
            Err(e) => {
                return Err(Error::Source {
                    source_name: component.to_string(),
                    message: format!(
                        "{what} failed after {} attempt(s) of {} ms against {servers}: {e}; is the broker up and reachable? (fetchOffset.numRetries, fetchOffset.retryIntervalMs and fetchOffset.timeoutMs control this)",
                        attempt + 1,
                        retry.timeout.as_millis()
                    ),
                    kind: ErrorKind::External,
                });
            }
        }
    }
}

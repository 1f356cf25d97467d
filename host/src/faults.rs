//! Fault injection for crash tests, in one place.
//!
//! `SLUICE_TEST_PAUSE_MS=150` makes the engine sleep after logging offsets, after the sink write
//! and after the commit (and the Kafka sink between writing a transaction and committing it),
//! widening exactly the windows a crash test must hit with SIGKILL. Unset (always, outside
//! tests), it costs nothing.

use std::time::Duration;

/// The configured pause, if any.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pauses(Option<Duration>);

impl Pauses {
    pub(crate) fn from_env() -> Self {
        Pauses(std::env::var("SLUICE_TEST_PAUSE_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis))
    }

    /// The pause length, for code that sleeps on its own terms.
    pub(crate) fn duration(self) -> Option<Duration> {
        self.0
    }

    /// Sleeps at `point` if pauses are on.
    pub(crate) async fn at(self, point: &str) {
        if let Some(d) = self.0 {
            tracing::debug!(point, "test pause");
            tokio::time::sleep(d).await;
        }
    }
}

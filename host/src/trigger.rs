//! Triggers: when the next micro-batch runs (Spark's `Trigger`).

use std::time::Duration;

/// The shortest epoch interval of the continuous trigger.
pub(crate) const MIN_EPOCH: Duration = Duration::from_millis(10);

/// When micro-batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Trigger {
    /// The next batch starts as soon as the previous one ends and new data is there.
    #[default]
    Default,
    /// Batches start on interval boundaries; an overrunning batch is followed at once.
    ProcessingTime(Duration),
    /// Process everything available at start, in rate-limited batches, then stop.
    AvailableNow,
    /// Process everything available at start in one batch, then stop (deprecated in Spark).
    Once,
    /// Continuous processing: rows flow through a stateless query as soon as they arrive, in
    /// small chunks; an epoch (offsets, sink commit) is checkpointed every interval.
    Continuous(Duration),
}

impl Trigger {
    /// Whether the query stops by itself once the data available at start is processed.
    pub fn is_bounded(&self) -> bool {
        matches!(self, Trigger::AvailableNow | Trigger::Once)
    }

    /// How long to wait between polls for new data when idle. A source that wakes the loop
    /// when data arrives is still polled, rarely, for what it cannot signal (new partitions,
    /// a failed connection).
    pub(crate) fn idle_poll(&self, source_wakes: bool) -> Duration {
        match self {
            Trigger::ProcessingTime(d) if !d.is_zero() => *d,
            _ if source_wakes => Duration::from_millis(100),
            _ => Duration::from_millis(10),
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Default => f.write_str("default"),
            Trigger::ProcessingTime(d) => write!(f, "processing_time={}ms", d.as_millis()),
            Trigger::AvailableNow => f.write_str("available_now"),
            Trigger::Once => f.write_str("once"),
            Trigger::Continuous(d) => write!(f, "continuous={}ms", d.as_millis()),
        }
    }
}

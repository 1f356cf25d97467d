//! Spark's event-time watermark (`withWatermark(column, delay)`).
//!
//! A watermark step watches its input's event-time column and passes the rows on unchanged.
//! At the end of batch N the watermark becomes `max(previous, max event time seen in N −
//! delay)`; batch N + 1 runs with it (so a batch's watermark is fixed before it runs, logged
//! in `offsets/N` as `batchWatermarkMs`, and a re-run uses the same value). The next batch's
//! watermark is logged in `commits/N` as `nextBatchWatermarkMs`, where a restart reads it.
//! Stateful steps use it to drop late rows and close windows (see `sql`); plugins see it in
//! their batch context; progress reports the batch's event-time statistics.

use std::collections::BTreeMap;

use arrow_array::{Array, Int64Array};
use arrow_schema::{DataType, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::source::Partitioned;

/// A watermark step: the event-time column and the delay.
pub(super) struct WatermarkStep {
    /// The column's name in the step's input, as the schema spells it.
    pub(super) column: String,
    index: usize,
    pub(super) delay_ms: i64,
}

impl WatermarkStep {
    /// Checks `column` against the step's input: it must be one TIMESTAMP column (names match
    /// case-insensitively, as in Spark).
    pub(super) fn try_new(step: usize, column: &str, delay: &str, input: &SchemaRef) -> Result<Self> {
        let unsupported = |message: String| Error::Unsupported { step, message };
        let delay_ms = crate::spec::watermark_delay_ms(delay).map_err(unsupported)?;
        let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
        let index = names
            .iter()
            .position(|n| *n == column)
            .or_else(|| {
                let mut m = names.iter().enumerate().filter(|(_, n)| n.eq_ignore_ascii_case(column));
                match (m.next(), m.next()) {
                    (Some((i, _)), None) => Some(i),
                    _ => None,
                }
            })
            .ok_or_else(|| {
                unsupported(format!(
                    "the watermark column `{column}` is not in the step's input (columns: {})",
                    names.join(", ")
                ))
            })?;
        let field = input.field(index);
        if !matches!(field.data_type(), DataType::Timestamp(..)) {
            return Err(unsupported(format!(
                "the watermark column `{column}` must be a TIMESTAMP, not {}; parse it first (e.g. a SQL step with to_timestamp({column}) AS {column})",
                field.data_type()
            )));
        }
        Ok(WatermarkStep { column: field.name().clone(), index, delay_ms })
    }

    /// Adds the event times of `data` to `stats`.
    pub(super) fn observe(&self, data: &Partitioned, stats: &mut EventTimeStats) -> Result<()> {
        for (_, batch) in data {
            let col = batch.column(self.index);
            let DataType::Timestamp(_, tz) = col.data_type() else { continue };
            let ms = arrow_cast::cast(col, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?;
            let ms = arrow_cast::cast(&ms, &DataType::Int64)?;
            let Some(ms) = ms.as_any().downcast_ref::<Int64Array>() else { continue };
            for v in ms.iter().flatten() {
                stats.add(v);
            }
        }
        Ok(())
    }
}

/// Spark's `EventTimeStats`: the event times a batch saw (ms).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EventTimeStats {
    min: i64,
    max: i64,
    sum: i128,
    count: u64,
}

impl EventTimeStats {
    fn add(&mut self, v: i64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.sum += i128::from(v);
        self.count += 1;
    }

    /// The watermark after a batch with these event times that ran with `current`.
    pub(super) fn next_watermark(&self, current: i64, delay_ms: i64) -> i64 {
        if self.count == 0 { current } else { current.max(self.max.saturating_sub(delay_ms)) }
    }

    /// Progress `eventTime`: `min`, `max`, `avg` (when the batch had event times) and the
    /// batch's `watermark`, in Spark's format.
    pub(super) fn progress(&self, watermark_ms: i64) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if self.count > 0 {
            let avg = (self.sum / i128::from(self.count)) as i64;
            m.insert("min".into(), format_ms(self.min));
            m.insert("max".into(), format_ms(self.max));
            m.insert("avg".into(), format_ms(avg));
        }
        m.insert("watermark".into(), format_ms(watermark_ms));
        m
    }
}

/// `2016-12-14T19:27:14.000Z`, as Spark writes times in progress.
pub(crate) fn format_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_moves_forward_only_and_reports_like_spark() {
        let mut s = EventTimeStats::default();
        assert_eq!(s.next_watermark(5, 10), 5, "no event times: unchanged");
        for v in [1_000_000, 1_600_000, 1_200_000] {
            s.add(v);
        }
        assert_eq!(s.next_watermark(0, 600_000), 1_000_000);
        assert_eq!(s.next_watermark(2_000_000, 600_000), 2_000_000, "never moves back");
        let p = s.progress(0);
        assert_eq!(p["min"], "1970-01-01T00:16:40.000Z");
        assert_eq!(p["max"], "1970-01-01T00:26:40.000Z");
        assert_eq!(p["avg"], "1970-01-01T00:21:06.666Z");
        assert_eq!(p["watermark"], "1970-01-01T00:00:00.000Z");
    }
}

//! The `rate` source: `rowsPerSecond` rows of `(timestamp, value)` a second, deterministic by
//! offset (row `i` has value `i` and timestamp `start + i / rowsPerSecond`), so replayable.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{Offset, Partitioned, ReadLimit, Source};
use crate::error::{Error, Result};
use crate::options::Options;

const C: &str = "rate source";

pub(crate) struct RateSource {
    rows_per_second: u64,
    num_partitions: u32,
    start_ms: Option<u64>,
    /// For available-now: the row count fixed at start.
    bound: Option<u64>,
    schema: SchemaRef,
    /// Source times of the last `get_batch`: each row's due time.
    times: super::SourceTimes,
    /// Woken when rows fall due (every 1/rowsPerSecond, at most every millisecond).
    waker: Arc<tokio::sync::Notify>,
    ticker: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl RateSource {
    pub(crate) fn try_new(options: &Options) -> Result<Self> {
        options.check(C, &["rowsPerSecond", "numPartitions", "rampUpTime"])?;
        let rows_per_second: u64 = options.parse_or(C, "rowsPerSecond", 1)?;
        if rows_per_second == 0 {
            return Err(options.invalid(C, "rowsPerSecond", "must be at least 1"));
        }
        let num_partitions: u32 = options.parse_or(C, "numPartitions", 1)?;
        if num_partitions == 0 {
            return Err(options.invalid(C, "numPartitions", "must be at least 1"));
        }
        if let Some(r) = options.get("rampUpTime") {
            let d = crate::options::parse_duration(r).map_err(|e| options.invalid(C, "rampUpTime", &e))?;
            if !d.is_zero() {
                return Err(options.invalid(C, "rampUpTime", "only 0s is supported so far"));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("value", DataType::Int64, false),
        ]));
        Ok(RateSource {
            rows_per_second,
            num_partitions,
            start_ms: None,
            bound: None,
            schema,
            times: Vec::new(),
            waker: Arc::default(),
            ticker: None,
        })
    }

    fn available(&self) -> u64 {
        let start = self.start_ms.unwrap_or_else(now_ms);
        let elapsed = now_ms().saturating_sub(start);
        let rows = elapsed.saturating_mul(self.rows_per_second) / 1000;
        self.bound.map_or(rows, |b| rows.min(b))
    }
}

/// Rows `[from, to)` of a rate stream, split into `parts` contiguous partitions.
pub(crate) fn generate(
    schema: &SchemaRef,
    start_ms: u64,
    rps: u64,
    from: u64,
    to: u64,
    parts: u32,
) -> Result<Partitioned> {
    let n = to.saturating_sub(from);
    let per = n.div_ceil(u64::from(parts.max(1))).max(1);
    let mut out = Vec::new();
    let mut lo = from;
    let mut p = 0u32;
    while lo < to {
        let hi = (lo + per).min(to);
        let values: Int64Array = (lo..hi).map(|i| i as i64).collect();
        let ts: Vec<i64> =
            (lo..hi).map(|i| (start_ms as i64) * 1000 + ((i as i128 * 1_000_000) / rps as i128) as i64).collect();
        let ts = TimestampMicrosecondArray::from(ts).with_timezone("UTC");
        out.push((p, RecordBatch::try_new(schema.clone(), vec![Arc::new(ts), Arc::new(values)])?));
        lo = hi;
        p += 1;
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Source for RateSource {
    fn description(&self) -> String {
        format!("RateStreamV2[rowsPerSecond={}, numPartitions={}]", self.rows_per_second, self.num_partitions)
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn replayable(&self) -> bool {
        true
    }
    async fn start(&mut self) -> Result<()> {
        self.start_ms.get_or_insert_with(now_ms);
        let period = std::time::Duration::from_micros((1_000_000 / self.rows_per_second).max(1000));
        let waker = self.waker.clone();
        self.ticker = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                waker.notify_one();
            }
        })));
        Ok(())
    }
    fn waker(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.ticker.is_some().then(|| self.waker.clone())
    }
    fn take_source_times(&mut self) -> super::SourceTimes {
        std::mem::take(&mut self.times)
    }
    async fn prepare_available_now(&mut self) -> Result<()> {
        self.bound = Some(self.available());
        self.ticker = None;
        Ok(())
    }
    async fn latest_offset(&mut self, start: Option<&Offset>, _: ReadLimit) -> Result<Option<Offset>> {
        let from = start.map(|o| o.field_u64(C, "rows")).transpose()?.unwrap_or(0);
        let to = self.available();
        let start_ms = self.start_ms.ok_or_else(|| Error::Internal("rate source used before start".into()))?;
        Ok((to > from).then(|| Offset(serde_json::json!({ "rows": to, "startMs": start_ms }))))
    }
    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned> {
        let from = start.map(|o| o.field_u64(C, "rows")).transpose()?.unwrap_or(0);
        let to = end.field_u64(C, "rows")?;
        // The start time travels with the offset, so a replay makes the same timestamps.
        let start_ms = end.field_u64(C, "startMs")?;
        self.times.clear();
        for i in from..to {
            let due = start_ms as i64 + (i as i128 * 1000 / self.rows_per_second as i128) as i64;
            super::push_time(&mut self.times, due, 1);
        }
        generate(&self.schema, start_ms, self.rows_per_second, from, to, self.num_partitions)
    }
    async fn restore(&mut self, _log: Vec<(u64, serde_json::Value)>, last: Option<&Offset>) -> Result<()> {
        if let Some(o) = last {
            self.start_ms = Some(o.field_u64(C, "startMs")?);
        }
        Ok(())
    }
}

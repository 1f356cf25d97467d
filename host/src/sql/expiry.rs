//! Which groups of an aggregation the watermark expires: each group's event-time bound (its
//! window's end, or its event time) indexed in order, so expiring the groups a watermark has
//! passed costs what it expires, never a scan of the state.

use std::collections::BTreeMap;

use arrow_array::{Array, ArrayRef, Int64Array, StructArray};

use arrow_schema::{DataType, TimeUnit};
use datafusion::common::{DataFusionError, Result as DfResult};

/// The group key that carries event time.
#[derive(Debug, Clone, Copy)]
pub(super) struct EventTimeKey {
    /// Its index among the group keys.
    pub(super) key: usize,
    /// A window struct (bounded by its `end`) rather than a timestamp.
    pub(super) window: bool,
}

impl EventTimeKey {
    /// Each key's bound in microseconds: a group expires once the watermark reaches it.
    pub(super) fn bounds(&self, col: &ArrayRef) -> DfResult<Int64Array> {
        let (ts, outer) = if self.window {
            let s = col.as_any().downcast_ref::<StructArray>().ok_or_else(|| {
                DataFusionError::Internal(format!("a window key must be a struct, got {}", col.data_type()))
            })?;
            (s.column(1).clone(), s.nulls().cloned())
        } else {
            (col.clone(), None)
        };
        let DataType::Timestamp(_, tz) = ts.data_type() else {
            return Err(DataFusionError::Plan(format!(
                "an event-time key must be a timestamp, got {}",
                ts.data_type()
            )));
        };
        let us = arrow_cast::cast(&ts, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
        let raw = arrow_cast::cast(&us, &DataType::Int64)?;
        let raw = raw
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("event-time bounds as Int64".into()))?;
        let nulls = arrow_buffer::NullBuffer::union(raw.nulls(), outer.as_ref());
        Ok(Int64Array::new(raw.values().clone(), nulls))
    }
}

/// Group ids by event-time bound.
#[derive(Default)]
pub(super) struct Expiry {
    by_bound: BTreeMap<i64, Vec<u32>>,
    len: usize,
}

impl Expiry {
    pub(super) fn insert(&mut self, bound_us: i64, gid: u32) {
        self.by_bound.entry(bound_us).or_default().push(gid);
        self.len += 1;
    }

    /// Takes the groups whose bound is at or before `watermark_us` (Spark: `end <= watermark`).
    pub(super) fn take_expired(&mut self, watermark_us: i64) -> Vec<u32> {
        let Some(after) = watermark_us.checked_add(1) else { return Vec::new() };
        let keep = self.by_bound.split_off(&after);
        let expired = std::mem::replace(&mut self.by_bound, keep);
        let out: Vec<u32> = expired.into_values().flatten().collect();
        self.len -= out.len();
        out
    }

    /// Forgets group `gid` filed under `bound_us` (a session that grew, so its bound moved).
    pub(super) fn remove(&mut self, bound_us: i64, gid: u32) {
        if let Some(v) = self.by_bound.get_mut(&bound_us) {
            let before = v.len();
            v.retain(|g| *g != gid);
            self.len -= before - v.len();
            if v.is_empty() {
                self.by_bound.remove(&bound_us);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_bound.clear();
        self.len = 0;
    }

    /// Approximate bytes held.
    pub(super) fn memory(&self) -> usize {
        self.by_bound.values().map(|v| v.capacity() * 4 + 48).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_bound_order_and_only_what_the_watermark_passed() {
        let mut e = Expiry::default();
        for (b, g) in [(30, 1), (10, 2), (20, 3), (10, 4), (40, 5)] {
            e.insert(b, g);
        }
        assert!(e.take_expired(9).is_empty());
        let mut got = e.take_expired(20);
        got.sort();
        assert_eq!(got, vec![2, 3, 4]);
        assert_eq!(e.take_expired(20), Vec::<u32>::new());
        assert_eq!(e.take_expired(i64::MAX - 1), vec![1, 5]);
        assert_eq!(e.len, 0);
    }
}

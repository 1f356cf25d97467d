//! Spark's session windows: `GROUP BY session_window(ts, gap), key`.
//!
//! A row opens the session `[ts, ts + gap)`; per key (the other grouping columns), sessions that
//! overlap or touch merge into one (`[10:44, 10:49)` and `[10:49, 10:54)` are `[10:44, 10:54)`),
//! within a batch and with the sessions the state holds. So a session's key (its `{start, end}`)
//! changes as it grows: a batch reads the state rows of the sessions it merges, merges them and
//! its rows into fresh accumulators, removes the old rows (tombstones in the state store) and
//! writes the merged session as a new row — work in proportion to the sessions it touches.
//!
//! With a watermark on `ts`: rows whose own session ends at or before the previous batch's
//! watermark are late and dropped (counted per row, as Spark does for sessions); a session whose
//! end the batch's watermark reaches is closed — emitted in append mode — and evicted. As in
//! Spark, update mode is refused for session windows; complete mode keeps every session.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StructArray, UInt32Array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, TimeUnit};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{EmitTo, Expr};

use super::expiry::EventTimeKey;
use super::{Aggregator, conform, conform_columns, typed_rows, window};
use crate::spec::OutputMode;

/// An open session: its bounds (µs) and its group id in the state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    start: i64,
    end: i64,
    gid: u32,
}

/// The session key and the open sessions of each key.
pub(super) struct Sessions {
    /// Index of `session_window(...)` among the group keys.
    key: usize,
    /// The other group keys.
    others: Vec<usize>,
    other_converter: Option<RowConverter>,
    /// Open sessions by the other keys' bytes, sorted by start.
    open: HashMap<Vec<u8>, Vec<Open>>,
}

/// The group key that is `session_window(...)`, if any.
pub(super) fn session_key(group: &[Expr]) -> Option<usize> {
    group
        .iter()
        .position(|e| matches!(e.clone().unalias(), Expr::ScalarFunction(f) if f.func.name() == window::SESSION_WINDOW))
}

impl Sessions {
    /// `key`: the session key's index; `key_types`: every group key's type.
    pub(super) fn try_new(key: usize, key_types: &[DataType]) -> DfResult<Self> {
        let others: Vec<usize> = (0..key_types.len()).filter(|i| *i != key).collect();
        let other_converter = if others.is_empty() {
            None
        } else {
            Some(RowConverter::new(others.iter().map(|i| SortField::new(key_types[*i].clone())).collect())?)
        };
        Ok(Sessions { key, others, other_converter, open: HashMap::new() })
    }

    /// The other keys of each row, as bytes (empty without other keys).
    fn other_bytes(&self, keys: &[ArrayRef], n: usize) -> DfResult<Vec<Vec<u8>>> {
        let Some(c) = &self.other_converter else { return Ok(vec![Vec::new(); n]) };
        let cols: Vec<ArrayRef> = self.others.iter().map(|i| keys[*i].clone()).collect();
        let rows = c.convert_columns(&cols)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// Rebuilds the open sessions from restored state rows (typed keys) and their group ids.
    pub(super) fn restore(&mut self, rows: &RecordBatch, gids: &[usize]) -> DfResult<()> {
        self.open.clear();
        let (starts, ends) = bounds(rows.column(self.key))?;
        let other = self.other_bytes(rows.columns(), rows.num_rows())?;
        for (i, k) in other.into_iter().enumerate() {
            if starts.is_valid(i) && ends.is_valid(i) {
                let o = Open { start: starts.value(i), end: ends.value(i), gid: gids[i] as u32 };
                self.open.entry(k).or_default().push(o);
            }
        }
        for v in self.open.values_mut() {
            v.sort_by_key(|o| o.start);
        }
        Ok(())
    }

    /// Approximate bytes held by the open-session index.
    pub(super) fn memory(&self) -> usize {
        self.open.iter().map(|(k, v)| k.capacity() + v.capacity() * std::mem::size_of::<Open>() + 48).sum()
    }

    fn forget(&mut self, key: &[u8], gid: u32) {
        if let Some(v) = self.open.get_mut(key) {
            v.retain(|o| o.gid != gid);
            if v.is_empty() {
                self.open.remove(key);
            }
        }
    }

    fn add(&mut self, key: Vec<u8>, o: Open) {
        let v = self.open.entry(key).or_default();
        let at = v.partition_point(|x| x.start < o.start);
        v.insert(at, o);
    }
}

/// A session struct column's start and end, in microseconds.
fn bounds(col: &ArrayRef) -> DfResult<(Int64Array, Int64Array)> {
    let s = col
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| DataFusionError::Internal(format!("a session key must be a struct, got {}", col.data_type())))?;
    let start = EventTimeKey { key: 0, window: false }.bounds(s.column(0))?;
    let end = EventTimeKey { key: 0, window: true }.bounds(col)?;
    let nulls = arrow_buffer::NullBuffer::union(start.nulls(), s.nulls());
    Ok((Int64Array::new(start.values().clone(), nulls), end))
}

/// A session this batch builds: the old sessions it merges, and its new rows.
struct Merged {
    key: Vec<u8>,
    start: i64,
    end: i64,
    old: Vec<Open>,
    rows: Vec<usize>,
}

/// Merges a key's open sessions with its new rows' sessions (sorted by start): every group
/// of sessions that overlap or touch, that has new rows.
fn merge(key: &[u8], open: &[Open], events: &[(i64, i64, usize)]) -> Vec<Merged> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    let mut cur: Option<Merged> = None;
    loop {
        // The next item by start: an open session or a new row.
        let take_open = match (open.get(i), events.get(j)) {
            (Some(o), Some(e)) => o.start <= e.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let (start, end) = if take_open { (open[i].start, open[i].end) } else { (events[j].0, events[j].1) };
        if let Some(c) = &mut cur
            && start <= c.end
        {
            c.end = c.end.max(end);
        } else {
            if let Some(c) = cur.take()
                && !c.rows.is_empty()
            {
                out.push(c);
            }
            cur = Some(Merged { key: key.to_vec(), start, end, old: Vec::new(), rows: Vec::new() });
        }
        if let Some(c) = &mut cur {
            if take_open {
                c.old.push(open[i]);
                i += 1;
            } else {
                c.rows.push(events[j].2);
                j += 1;
            }
        }
    }
    if let Some(c) = cur
        && !c.rows.is_empty()
    {
        out.push(c);
    }
    out
}

type Output = (Vec<RecordBatch>, Option<RecordBatch>, Vec<ArrayRef>);

impl Aggregator {
    /// A batch of a session-window aggregation (see the module docs).
    pub(super) async fn process_sessions(&mut self, mode: OutputMode) -> DfResult<Output> {
        let Some(mut s) = self.sessions.take() else {
            return Err(DataFusionError::Internal("not a session-window aggregation".into()));
        };
        let result = self.sessions_batch(mode, &mut s).await;
        self.sessions = Some(s);
        result
    }

    async fn sessions_batch(&mut self, mode: OutputMode, s: &mut Sessions) -> DfResult<Output> {
        let batches = self.below.run().await?;
        let schema = self.below.plan.schema();
        let batch = arrow_select::concat::concat_batches(&schema, &batches)?;
        let n = batch.num_rows();
        let keys = self.group_exprs.iter().map(|e| e.evaluate(&batch)?.into_array(n)).collect::<DfResult<Vec<_>>>()?;
        let keys = conform_columns(&self.state_schema, keys)?;
        let (starts, ends) = bounds(&keys[s.key])?;
        // Rows without a session (null time, no positive gap) are dropped; late rows too.
        let late = self.late_at_us;
        let keep: BooleanArray = (0..n)
            .map(|i| Some(starts.is_valid(i) && ends.is_valid(i) && late.is_none_or(|w| ends.value(i) > w)))
            .collect();
        let late_rows = (0..n).filter(|i| ends.is_valid(*i) && late.is_some_and(|w| ends.value(*i) <= w)).count();
        let batch = arrow_select::filter::filter_record_batch(&batch, &keep)?;
        let keys = keys.iter().map(|c| arrow_select::filter::filter(c, &keep)).collect::<Result<Vec<_>, _>>()?;
        let (starts, ends) = bounds(&keys[s.key])?;
        let n = batch.num_rows();
        let other = s.other_bytes(&keys, n)?;

        // Each key's rows by start, merged with its open sessions.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| other[*a].cmp(&other[*b]).then(starts.value(*a).cmp(&starts.value(*b))));
        let mut merged: Vec<Merged> = Vec::new();
        for group in order.chunk_by(|a, b| other[*a] == other[*b]) {
            let key = &other[group[0]];
            let events: Vec<(i64, i64, usize)> = group.iter().map(|r| (starts.value(*r), ends.value(*r), *r)).collect();
            let open = s.open.get(key).map(Vec::as_slice).unwrap_or_default();
            merged.extend(merge(key, open, &events));
        }

        // Old state merged into fresh accumulators (one group per merged session), then the rows.
        let k = merged.len();
        let mut accs = self.fresh_accumulators()?;
        let old: Vec<(u32, usize)> =
            merged.iter().enumerate().flat_map(|(l, m)| m.old.iter().map(move |o| (o.gid, l))).collect();
        let old_gids: Vec<u32> = old.iter().map(|(g, _)| *g).collect();
        let old_rows = if old.is_empty() { None } else { Some(self.table.get(&old_gids)?) };
        let mut row_local = vec![0usize; n];
        for (l, m) in merged.iter().enumerate() {
            for r in &m.rows {
                row_local[*r] = l;
            }
        }
        let old_local: Vec<usize> = old.iter().map(|(_, l)| *l).collect();
        for (((agg, filter), acc), (col, width)) in self.aggs.iter().zip(accs.iter_mut()).zip(&self.state_cols) {
            if let Some(rows) = &old_rows {
                acc.merge_batch(&rows.columns()[1 + col..1 + col + width], &old_local, k)?;
            }
            if n > 0 {
                let values = agg
                    .expressions()
                    .iter()
                    .map(|e| e.evaluate(&batch)?.into_array(n))
                    .collect::<DfResult<Vec<_>>>()?;
                let filter = match filter {
                    Some(f) => Some(
                        f.evaluate(&batch)?
                            .into_array(n)?
                            .as_any()
                            .downcast_ref::<BooleanArray>()
                            .cloned()
                            .ok_or_else(|| {
                                DataFusionError::Internal("aggregate FILTER did not evaluate to booleans".into())
                            })?,
                    ),
                    None => None,
                };
                acc.update_batch(&values, &row_local, filter.as_ref(), k)?;
            }
        }

        // The merged sessions' rows: keys (the other keys from a row, the new bounds), states.
        let mut removed: Vec<ArrayRef> = Vec::new();
        let mut delta = None;
        let mut emitted_updates = None;
        if k > 0 {
            let first: Vec<u32> = merged.iter().map(|m| m.rows[0] as u32).collect();
            let first = UInt32Array::from(first);
            let DataType::Struct(fields) = keys[s.key].data_type().clone() else {
                return Err(DataFusionError::Internal("a session key must be a struct".into()));
            };
            let ts_type = fields[0].data_type().clone();
            // Microseconds in the time column's unit and type.
            let to_ts = |v: Vec<i64>| -> DfResult<ArrayRef> {
                let v: Int64Array = match &ts_type {
                    DataType::Timestamp(TimeUnit::Second, _) => {
                        v.into_iter().map(|x| x.div_euclid(1_000_000)).collect()
                    }
                    DataType::Timestamp(TimeUnit::Millisecond, _) => {
                        v.into_iter().map(|x| x.div_euclid(1_000)).collect()
                    }
                    DataType::Timestamp(TimeUnit::Nanosecond, _) => v.into_iter().map(|x| x * 1_000).collect(),
                    _ => Int64Array::from(v),
                };
                Ok(arrow_cast::cast(&v, &ts_type)?)
            };
            let starts_col = to_ts(merged.iter().map(|m| m.start).collect())?;
            let ends_col = to_ts(merged.iter().map(|m| m.end).collect())?;
            let session_col: ArrayRef = Arc::new(StructArray::try_new(fields, vec![starts_col, ends_col], None)?);
            let mut typed: Vec<ArrayRef> = Vec::with_capacity(self.state_schema.fields().len());
            for (i, c) in keys.iter().enumerate() {
                typed.push(if i == s.key { session_col.clone() } else { arrow_select::take::take(c, &first, None)? });
            }
            for acc in accs.iter_mut() {
                typed.extend(acc.state(EmitTo::All)?);
            }
            let rows = conform(&self.state_schema, typed, k)?;
            let converter = self.converter.clone().ok_or_else(|| DataFusionError::Internal("session keys".into()))?;
            let binary = converter.convert_columns(&rows.columns()[..self.group_exprs.len()])?.try_into_binary()?;

            // Old sessions leave (unless one keeps its bounds: it is updated in place).
            let mut gone: Vec<u32> = Vec::new();
            let mut reuse: Vec<Option<u32>> = Vec::with_capacity(k);
            for m in &merged {
                let same = m.old.iter().find(|o| o.start == m.start && o.end == m.end).map(|o| o.gid);
                reuse.push(same);
                for o in &m.old {
                    s.forget(&m.key, o.gid);
                    self.expiry.remove(o.end, o.gid);
                    if Some(o.gid) != same {
                        gone.push(o.gid);
                    }
                }
            }
            if !gone.is_empty() {
                let gone_rows = typed_rows(Some(&converter), &self.state_schema, &self.table.get(&gone)?)?;
                removed = gone_rows.columns()[..self.group_exprs.len()].to_vec();
                self.table.remove(&gone)?;
            }
            let mut fresh = Vec::new();
            self.table.intern(
                binary.iter().zip(&reuse).filter(|(_, r)| r.is_none()).map(|(b, _)| b.unwrap_or_default()),
                &mut fresh,
            );
            let mut fresh = fresh.into_iter();
            let gids: Vec<u32> =
                reuse.iter().map(|r| r.unwrap_or_else(|| fresh.next().unwrap_or_default() as u32)).collect();
            let mut page: Vec<ArrayRef> = vec![Arc::new(binary)];
            page.extend(rows.columns()[self.group_exprs.len()..].iter().cloned());
            let page = conform(&self.table.schema(), page, k)?;
            self.table.append(gids.clone(), page)?;
            for (m, g) in merged.iter().zip(&gids) {
                s.add(m.key.clone(), Open { start: m.start, end: m.end, gid: *g });
                if self.event_time.is_some() {
                    self.expiry.insert(m.end, *g);
                }
            }
            if self.store.is_some() {
                delta = Some(rows.clone());
            }
            emitted_updates = Some(rows);
        }
        self.last_updated = k as u64;
        self.last_dropped = late_rows as u64;

        // Sessions the watermark closed.
        let mut closed = None;
        if let Some(w) = self.evict_at_us {
            let gids: Vec<u32> = self.expiry.take_expired(w).into_iter().filter(|g| self.table.contains(*g)).collect();
            if !gids.is_empty() {
                let converter =
                    self.converter.clone().ok_or_else(|| DataFusionError::Internal("session keys".into()))?;
                let rows = typed_rows(Some(&converter), &self.state_schema, &self.table.get(&gids)?)?;
                let other = s.other_bytes(rows.columns(), rows.num_rows())?;
                for (key, g) in other.iter().zip(&gids) {
                    s.forget(key, *g);
                }
                self.table.remove(&gids)?;
                self.last_removed = gids.len() as u64;
                if removed.is_empty() {
                    removed = rows.columns()[..self.group_exprs.len()].to_vec();
                } else {
                    let mut all = Vec::with_capacity(removed.len());
                    for (a, b) in removed.iter().zip(rows.columns()) {
                        all.push(arrow_select::concat::concat(&[a.as_ref(), b.as_ref()])?);
                    }
                    removed = all;
                }
                closed = Some(rows);
            }
        }
        let emit = match mode {
            OutputMode::Complete if self.table.len() > 0 => {
                Some(typed_rows(self.converter.as_deref(), &self.state_schema, &self.table.all()?)?)
            }
            OutputMode::Complete => None,
            OutputMode::Append => closed,
            OutputMode::Update => emitted_updates,
        };
        let Some(emit) = emit else { return Ok((Vec::new(), delta, removed)) };
        self.out.set(vec![self.finalize(&emit)?]);
        let result = self.above.run().await;
        self.out.set(Vec::new());
        Ok((result?, delta, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_merge_when_they_overlap_or_touch() {
        let open = [Open { start: 0, end: 10, gid: 7 }, Open { start: 30, end: 40, gid: 8 }];
        // 10..15 touches [0, 10); 16..21 is apart; 25..30 touches [30, 40).
        let events = [(10, 15, 0), (16, 21, 1), (25, 30, 2), (50, 55, 3)];
        let m = merge(b"k", &open, &events);
        let got: Vec<(i64, i64, Vec<u32>, Vec<usize>)> =
            m.iter().map(|m| (m.start, m.end, m.old.iter().map(|o| o.gid).collect(), m.rows.clone())).collect();
        assert_eq!(
            got,
            vec![
                (0, 15, vec![7], vec![0]),
                (16, 21, vec![], vec![1]),
                (25, 40, vec![8], vec![2]),
                (50, 55, vec![], vec![3])
            ]
        );
        // An open session no new row touches is left alone.
        assert!(merge(b"k", &open, &[(100, 105, 0)]).iter().all(|m| m.old.is_empty()));
    }
}

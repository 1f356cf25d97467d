//! Spark's streaming deduplication: `dropDuplicates(columns)` and
//! `dropDuplicatesWithinWatermark(columns)`, as a step that passes on the first row of each key
//! and remembers the key.
//!
//! - `dropDuplicates`: a key is remembered until the watermark passes the event time it holds
//!   (when the key includes the watermark's column; without it, forever, as in Spark).
//! - `dropDuplicatesWithinWatermark`: a key is remembered until the watermark passes the
//!   event time of its first row plus the watermark delay, whatever the key holds.
//!
//! Rows whose event time is at or behind the previous batch's watermark are late and dropped
//! (and counted). Keys live in the same
//! paged [`StateTable`] as aggregation state (one state field: the expiry time in
//! microseconds), expire through the same [`Expiry`] index, and are checkpointed through the
//! state store, so a batch costs what it reads and a restart forgets nothing.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::expiry::Expiry;
use super::state_table::{PAGE_ROWS, StateTable};
use super::{BatchWatermark, StateMetrics, typed_rows};
use crate::error::{Error, Result};
use crate::state::StateStore;

/// A deduplication step.
pub(crate) struct DedupStep {
    index: usize,
    /// Input column of each key column.
    key_cols: Vec<usize>,
    converter: Arc<RowConverter>,
    /// Where the event time is: the key column holding the watermark's column (dropDuplicates),
    /// or the input column and the delay (within the watermark).
    event_time: Option<EventTime>,
    /// Key columns, then `expires_us`: the rows the state store keeps.
    state_schema: SchemaRef,
    table: StateTable,
    expiry: Expiry,
    store: Option<StateStore>,
    metrics: StateMetrics,
}

#[derive(Clone, Copy)]
struct EventTime {
    /// The watermark's column in the input.
    column: usize,
    /// Added to a row's event time to make its key's expiry (within-watermark: the delay).
    keep_us: i64,
    /// Whether the key holds the event time (plain dropDuplicates: rows are late by it).
    in_key: bool,
}

impl DedupStep {
    /// `columns` (empty: all); `watermark`: the watermark's column in the input and its delay.
    pub(crate) fn try_new(
        index: usize,
        input: &SchemaRef,
        columns: &[String],
        within_watermark: bool,
        watermark: Option<(&str, i64)>,
    ) -> Result<Self> {
        let unsupported = |message: String| Error::Unsupported { step: index, message };
        let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
        let find = |c: &str| {
            names.iter().position(|n| *n == c).or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(c)))
        };
        let key_cols: Vec<usize> = if columns.is_empty() {
            (0..names.len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    find(c).ok_or_else(|| {
                        unsupported(format!(
                            "drop_duplicates: no column `{c}` in the input (columns: {})",
                            names.join(", ")
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        let wm = watermark.and_then(|(c, delay)| find(c).map(|i| (i, delay)));
        let event_time = match (within_watermark, wm) {
            (true, None) => {
                return Err(unsupported(
                    "drop_duplicates within_watermark needs a watermark on a column of its input (a `watermark` step before it)".into(),
                ));
            }
            (true, Some((column, delay_ms))) => {
                Some(EventTime { column, keep_us: delay_ms.saturating_mul(1000), in_key: false })
            }
            (false, Some((column, _))) if key_cols.contains(&column) => {
                Some(EventTime { column, keep_us: 0, in_key: true })
            }
            (false, _) => None,
        };
        let mut fields: Vec<Field> = key_cols.iter().map(|i| input.field(*i).clone().with_nullable(true)).collect();
        let sort = fields.iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let converter = Arc::new(RowConverter::new(sort).map_err(|e| unsupported(format!("drop_duplicates: {e}")))?);
        fields.push(Field::new("expires_us", DataType::Int64, true));
        let metadata = [(crate::state::KEYS_METADATA.to_string(), key_cols.len().to_string())].into();
        let state_schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        let page = Schema::new(vec![
            Field::new("key", DataType::Binary, false),
            Field::new("expires_us", DataType::Int64, true),
        ]);
        Ok(DedupStep {
            index,
            key_cols,
            converter,
            event_time,
            state_schema,
            table: StateTable::new(Arc::new(page)),
            expiry: Expiry::default(),
            store: None,
            metrics: StateMetrics::default(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Unsupported { step: self.index, message: format!("drop_duplicates: {e}") }
    }

    /// What the state's layout depends on.
    pub(crate) fn fingerprint(&self) -> String {
        let keys: Vec<String> = self.state_schema.fields().iter().map(|f| f.data_type().to_string()).collect();
        format!("dedup keys=[{}] within_watermark={}", keys.join(","), self.event_time.is_some_and(|e| !e.in_key))
    }

    /// Each row's event time in microseconds, if the step has one.
    fn event_times(&self, batch: &RecordBatch) -> Result<Option<Int64Array>> {
        let Some(et) = self.event_time else { return Ok(None) };
        let col = batch.column(et.column);
        let DataType::Timestamp(_, tz) = col.data_type() else {
            return Err(self.err(format!("the watermark column must be a timestamp, got {}", col.data_type())));
        };
        let us = arrow_cast::cast(col, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
        let raw = arrow_cast::cast(&us, &DataType::Int64)?;
        Ok(raw.as_any().downcast_ref::<Int64Array>().cloned())
    }

    /// Passes on the first row of each key not seen before (nor late), remembering its key;
    /// then forgets the keys the watermark has passed. Commits state version `batch_id + 1`.
    pub(crate) async fn process(
        &mut self,
        batch_id: u64,
        watermark: Option<BatchWatermark>,
        input: Vec<(u32, RecordBatch)>,
    ) -> Result<Vec<(u32, RecordBatch)>> {
        let late_at = watermark.filter(|_| self.event_time.is_some()).map(|w| w.late_events_ms.saturating_mul(1000));
        let mut late = 0u64;
        let (mut new_gids, mut new_expiry) = (Vec::new(), Vec::new());
        let mut passed = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(input.len());
        for (part, batch) in input {
            let n = batch.num_rows();
            if n == 0 {
                continue;
            }
            let cols: Vec<ArrayRef> = self.key_cols.iter().map(|i| batch.column(*i).clone()).collect();
            let rows = self.converter.convert_columns(&cols)?;
            let times = self.event_times(&batch)?;
            let time = |i: usize| times.as_ref().filter(|t| t.is_valid(i)).map(|t| t.value(i));
            // Late rows are dropped before their keys are looked at.
            let on_time: Vec<usize> = (0..n)
                .filter(|i| match (late_at, time(*i)) {
                    (Some(w), Some(t)) => t > w,
                    _ => true,
                })
                .collect();
            late += (n - on_time.len()) as u64;
            let mut gids = Vec::with_capacity(on_time.len());
            self.table.intern(on_time.iter().map(|i| rows.row(*i).data()), &mut gids);
            let mut keep = vec![false; n];
            for (i, g) in on_time.iter().zip(&gids) {
                let g = *g as u32;
                // New: not in the state, and not already passed on by this batch.
                if !self.table.contains(g) && passed.insert(g) {
                    new_gids.push(g);
                    new_expiry.push(time(*i).map(|t| t.saturating_add(self.event_time.map_or(0, |e| e.keep_us))));
                    keep[*i] = true;
                }
            }
            let mask = BooleanArray::from(keep);
            if mask.true_count() > 0 {
                out.push((part, arrow_select::filter::filter_record_batch(&batch, &mask)?));
            }
        }
        let updated = new_gids.len();
        let delta = self.remember(&new_gids, &new_expiry)?;
        let (removed_keys, removed) = self.forget(watermark)?;
        self.metrics.num_rows_updated = updated as u64;
        self.metrics.num_rows_removed = removed as u64;
        self.metrics.num_rows_dropped_by_watermark = late;
        self.metrics.num_rows_total = self.table.len() as u64;
        self.metrics.memory_used_bytes = (self.table.memory() + self.expiry.memory()) as u64;
        let started = std::time::Instant::now();
        if let Some(store) = &self.store {
            let full = || super::snapshot(&self.table, Some(self.converter.clone()), self.state_schema.clone());
            store.commit(batch_id + 1, &self.state_schema, &delta, &removed_keys, full).await?;
        }
        self.metrics.commit_time_ms = started.elapsed().as_millis() as u64;
        Ok(out)
    }

    /// Adds the new keys to the state; returns them as state rows (the delta).
    fn remember(&mut self, gids: &[u32], expiry: &[Option<i64>]) -> Result<RecordBatch> {
        if gids.is_empty() {
            return Ok(RecordBatch::new_empty(self.state_schema.clone()));
        }
        let expires = Int64Array::from(expiry.to_vec());
        let page = RecordBatch::try_new(
            self.table.schema(),
            vec![Arc::new(self.table.keys(gids)), Arc::new(expires.clone())],
        )?;
        self.table.append(gids.to_vec(), page.clone())?;
        for (g, e) in gids.iter().zip(expiry) {
            if let Some(e) = e {
                self.expiry.insert(*e, *g);
            }
        }
        Ok(typed_rows(Some(&self.converter), &self.state_schema, &page)?)
    }

    /// Forgets the keys the batch's watermark has passed; returns their key columns and count.
    fn forget(&mut self, watermark: Option<BatchWatermark>) -> Result<(Vec<ArrayRef>, usize)> {
        let Some(w) = watermark.filter(|_| self.event_time.is_some()) else { return Ok((Vec::new(), 0)) };
        let gids: Vec<u32> = self
            .expiry
            .take_expired(w.eviction_ms.saturating_mul(1000))
            .into_iter()
            .filter(|g| self.table.contains(*g))
            .collect();
        if gids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let rows = typed_rows(Some(&self.converter), &self.state_schema, &self.table.get(&gids)?)?;
        self.table.remove(&gids)?;
        Ok((rows.columns()[..self.key_cols.len()].to_vec(), gids.len()))
    }

    /// Attaches durable state and loads version `version`.
    pub(crate) async fn attach_state(&mut self, store: StateStore, version: u64, checkpoint: &str) -> Result<()> {
        let what = format!("the deduplication in step {} (its key columns)", self.index);
        store.check_fingerprint(&self.fingerprint(), checkpoint, what).await?;
        let changes = store.load(version).await?;
        let rows = crate::state::last_per_key(&self.state_schema, &changes, self.key_cols.len())?;
        self.restore(&rows)?;
        self.store = Some(store);
        Ok(())
    }

    fn restore(&mut self, rows: &RecordBatch) -> Result<()> {
        let n = rows.num_rows();
        let nk = self.key_cols.len();
        let keys: BinaryArray = self.converter.convert_columns(&rows.columns()[..nk])?.try_into_binary()?;
        self.table = StateTable::new(self.table.schema());
        self.expiry.clear();
        let mut ids = Vec::with_capacity(n);
        self.table.intern(keys.iter().map(Option::unwrap_or_default), &mut ids);
        let expires = rows.column(nk).clone();
        let page = RecordBatch::try_new(self.table.schema(), vec![Arc::new(keys), expires.clone()])?;
        for (i, gids) in ids.chunks(PAGE_ROWS).enumerate() {
            let rows = page.slice(i * PAGE_ROWS, gids.len());
            self.table.append(gids.iter().map(|g| *g as u32).collect(), rows)?;
        }
        if let Some(e) = expires.as_any().downcast_ref::<Int64Array>() {
            for (i, g) in ids.iter().enumerate() {
                if e.is_valid(i) {
                    self.expiry.insert(e.value(i), *g as u32);
                }
            }
        }
        Ok(())
    }

    /// Waits for a snapshot being written.
    pub(crate) async fn flush_state(&self) -> Result<()> {
        match &self.store {
            Some(s) => s.flush().await,
            None => Ok(()),
        }
    }

    pub(crate) fn state_metrics(&self) -> StateMetrics {
        self.metrics.clone()
    }

    /// Spark's name for the operator in progress.
    pub(crate) fn operator_name(&self) -> &'static str {
        match self.event_time {
            Some(e) if !e.in_key => "dedupeWithinWatermark",
            _ => "dedupe",
        }
    }

    /// Whether the watermark forgets keys (so a batch without data can be worth running).
    pub(crate) fn expires_by_watermark(&self) -> bool {
        self.event_time.is_some()
    }
}

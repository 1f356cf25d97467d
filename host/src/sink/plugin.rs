//! `foreach_batch` and `foreach` sinks written as Wasm components.
//!
//! - foreachBatch (`batch-sink-plugin`): one instance sees each whole micro-batch in order:
//!   `begin-batch(ctx, rerun)`, `write` per chunk of at most 16 k rows, `commit-batch`. The host
//!   logs the batch as committed only after that, so a crash in between makes the next run call
//!   `begin-batch` again for the same id with `rerun = true`: a sink that replaces what it
//!   wrote for a batch id (the `jsonl_dir` example) is exactly-once.
//! - foreach (`foreach-sink-plugin`): Spark's `ForeachWriter` per logical partition of each
//!   batch: `open(partition, epoch)` (none: skip it), `process` per chunk, `close(error)`;
//!   partitions run in parallel on several instances. At-least-once, exactly-once when the
//!   plugin dedupes by (partition, epoch).

use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use tokio::task::JoinSet;

use super::{BatchMeta, Sink};
use crate::error::{Error, Result};
use crate::plugin::sink::{BatchWriter, ForeachWriter};
use crate::plugin::{CallContext, PluginComponent};
use crate::progress::PluginProgress;
use crate::source::Partitioned;

/// The most rows one plugin call receives.
pub(crate) const ROWS_PER_CALL: usize = 16 * 1024;

/// Splits batches into groups of at most [`ROWS_PER_CALL`] rows (slicing, no copy).
pub(crate) fn chunks(batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut rows = 0;
    for b in batches {
        let mut offset = 0;
        while offset < b.num_rows() {
            let take = (ROWS_PER_CALL - rows).min(b.num_rows() - offset);
            current.push(b.slice(offset, take));
            offset += take;
            rows += take;
            if rows == ROWS_PER_CALL {
                groups.push(std::mem::take(&mut current));
                rows = 0;
            }
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn ctx(meta: &BatchMeta, partition: u32, num_partitions: u32) -> CallContext {
    CallContext {
        query_id: meta.query_id.clone(),
        batch_id: meta.batch_id,
        attempt: meta.attempt,
        partition,
        num_partitions,
        watermark_ms: meta.watermark_ms,
        batch_timestamp_ms: meta.timestamp_ms,
    }
}

pub(crate) struct BatchSinkPlugin {
    component: PluginComponent,
    query_id: Arc<str>,
    writer: Option<BatchWriter>,
    progress: PluginProgress,
}

impl BatchSinkPlugin {
    pub(crate) fn new(component: PluginComponent, query_id: &str) -> Self {
        let mut progress = PluginProgress::new(&component.spec.name, "foreach_batch");
        progress.version = component.version.clone();
        BatchSinkPlugin { component, query_id: Arc::from(query_id), writer: None, progress }
    }
}

#[async_trait::async_trait]
impl Sink for BatchSinkPlugin {
    fn description(&self) -> String {
        format!("ForeachBatchSink[{}]", self.component.spec.name)
    }

    async fn write_batch(&mut self, meta: &BatchMeta, data: Partitioned) -> Result<()> {
        let started = Instant::now();
        // A fresh instance when there is none yet or the last one trapped.
        let mut writer = match self.writer.take() {
            Some(w) if !w.is_poisoned() => w,
            _ => self.component.batch_writer(&self.query_id, &meta.schema).await?,
        };
        let before = writer.stats();
        let c = ctx(meta, 0, 1);
        let rows: Vec<RecordBatch> = data.into_iter().map(|(_, b)| b).filter(|b| b.num_rows() > 0).collect();
        let n: u64 = rows.iter().map(|b| b.num_rows() as u64).sum();
        let result = async {
            writer.begin_batch(&c, meta.rerun).await?;
            for chunk in chunks(rows) {
                writer.write(&c, &chunk).await?;
            }
            writer.commit_batch(&c).await
        }
        .await;
        let after = writer.stats();
        self.progress.time_ms += started.elapsed().as_millis() as u64;
        self.progress.busy_ms += (after.busy - before.busy).as_millis() as u64;
        self.progress.calls += after.calls - before.calls;
        self.progress.input_rows += n;
        self.progress.memory_peak_bytes = self.progress.memory_peak_bytes.max(writer.memory_peak());
        if after.fuel > 0 {
            *self.progress.fuel.get_or_insert(0) += after.fuel - before.fuel;
        }
        self.writer = Some(writer);
        result
    }

    fn plugin_progress(&mut self) -> Vec<PluginProgress> {
        let fresh = PluginProgress {
            version: self.progress.version.clone(),
            ..PluginProgress::new(&self.progress.name, "foreach_batch")
        };
        vec![std::mem::replace(&mut self.progress, fresh)]
    }

    fn plugin(&self) -> Option<&PluginComponent> {
        Some(&self.component)
    }
}

pub(crate) struct ForeachSinkPlugin {
    component: PluginComponent,
    query_id: Arc<str>,
    writers: Vec<Option<ForeachWriter>>,
    progress: PluginProgress,
}

impl ForeachSinkPlugin {
    pub(crate) fn new(component: PluginComponent, query_id: &str, parallelism: usize) -> Self {
        let n = component.spec.limits.instances.unwrap_or(parallelism).max(1);
        let mut progress = PluginProgress::new(&component.spec.name, "foreach");
        progress.version = component.version.clone();
        ForeachSinkPlugin {
            component,
            query_id: Arc::from(query_id),
            writers: (0..n).map(|_| None).collect(),
            progress,
        }
    }
}

/// Writes one partition: open, process each chunk, close with the error if one happened.
async fn write_partition(w: &mut ForeachWriter, c: &CallContext, rows: Vec<RecordBatch>) -> Result<()> {
    let Some(pw) = w.open(c).await? else { return Ok(()) };
    let mut result = Ok(());
    for chunk in chunks(rows) {
        if let Err(e) = w.process(c, pw, &chunk).await {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => w.close(c, pw, None).await,
        Err(e) => {
            if !w.is_poisoned() {
                let _ = w.close(c, pw, Some(e.to_string())).await;
            }
            Err(e)
        }
    }
}

#[async_trait::async_trait]
impl Sink for ForeachSinkPlugin {
    fn description(&self) -> String {
        format!("ForeachSink[{}]", self.component.spec.name)
    }

    async fn write_batch(&mut self, meta: &BatchMeta, data: Partitioned) -> Result<()> {
        let started = Instant::now();
        let parts = meta.num_partitions.max(1);
        let n = self.writers.len();
        let mut by_partition: Vec<Vec<RecordBatch>> = vec![Vec::new(); parts as usize];
        let mut rows = 0u64;
        for (p, b) in data {
            rows += b.num_rows() as u64;
            if b.num_rows() > 0 {
                by_partition[(p % parts) as usize].push(b);
            }
        }
        let mut set = JoinSet::new();
        for slot in 0..n.min(parts as usize) {
            let mut w = match self.writers[slot].take() {
                Some(w) if !w.is_poisoned() => w,
                _ => self.component.foreach_writer(&self.query_id, &meta.schema).await?,
            };
            let mine: Vec<(u32, Vec<RecordBatch>)> = (0..parts)
                .filter(|p| *p as usize % n == slot)
                .map(|p| (p, std::mem::take(&mut by_partition[p as usize])))
                .collect();
            let meta = meta.clone();
            set.spawn(async move {
                let before = w.stats();
                let mut result = Ok(());
                for (p, batches) in mine {
                    if let Err(e) = write_partition(&mut w, &ctx(&meta, p, parts), batches).await {
                        result = Err(e);
                        break;
                    }
                }
                let after = w.stats();
                (slot, w, after.calls - before.calls, after.busy - before.busy, after.fuel - before.fuel, result)
            });
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let (slot, w, calls, busy, fuel, result) =
                joined.map_err(|e| Error::Internal(format!("foreach sink task failed: {e}")))?;
            self.progress.calls += calls;
            self.progress.busy_ms += busy.as_millis() as u64;
            if fuel > 0 {
                *self.progress.fuel.get_or_insert(0) += fuel;
            }
            self.progress.memory_peak_bytes = self.progress.memory_peak_bytes.max(w.memory_peak());
            self.writers[slot] = Some(w);
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        self.progress.time_ms += started.elapsed().as_millis() as u64;
        self.progress.input_rows += rows;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn plugin_progress(&mut self) -> Vec<PluginProgress> {
        let fresh = PluginProgress {
            version: self.progress.version.clone(),
            ..PluginProgress::new(&self.progress.name, "foreach")
        };
        vec![std::mem::replace(&mut self.progress, fresh)]
    }

    fn plugin(&self) -> Option<&PluginComponent> {
        Some(&self.component)
    }
}

//! `format = "plugin"`: a source written as a Wasm component of the `source-plugin` world.
//!
//! The plugin plans (initial offset, latest offset under a read limit, input partitions) on one
//! instance and reads the partitions of a batch in parallel on others; offsets are the
//! plugin's JSON, logged in `offsets/N` like any built-in source's, and the initial offset of
//! a new query is logged with batch 0 (`sources/0/0`) so a re-run of batch 0 reads the same
//! range. Reading a range again must give the same rows (the plugin's promise), which makes
//! recovery exactly-once.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use tokio::task::JoinSet;

use super::{Offset, Partitioned, ReadLimit, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::options::Options;
use crate::plugin::source::{PluginReadLimit, SourceStream};
use crate::plugin::{CallContext, PluginComponent};
use crate::progress::PluginProgress;

/// Source options the host interprets for every plugin source.
pub(crate) const OPTIONS: &[&str] = &["maxRowsPerTrigger"];

pub(crate) struct PluginSource {
    component: PluginComponent,
    query_id: Arc<str>,
    planner: SourceStream,
    readers: Vec<Option<SourceStream>>,
    max_rows: Option<u64>,
    /// The offset a new query starts from (logged with batch 0).
    initial: Option<String>,
    batch: (u64, i64),
    reads: ReadStats,
}

#[derive(Default)]
struct ReadStats {
    calls: u64,
    busy_ms: u64,
    rows: u64,
}

fn offset_text(o: &Offset) -> String {
    o.0.to_string()
}

impl PluginSource {
    pub(crate) async fn try_new(
        component: PluginComponent,
        options: &Options,
        query_id: &str,
        parallelism: usize,
    ) -> Result<Self> {
        options.check(&format!("plugin source `{}`", component.spec.name), OPTIONS)?;
        let max_rows = options.parse::<u64>("plugin source", "maxRowsPerTrigger")?;
        if max_rows == Some(0) {
            return Err(options.invalid("plugin source", "maxRowsPerTrigger", "must be at least 1"));
        }
        let planner = component.source_stream(query_id).await?;
        let n = component.spec.limits.instances.unwrap_or(parallelism).max(1);
        let mut readers = Vec::with_capacity(n);
        for _ in 0..n {
            readers.push(Some(component.source_stream(query_id).await?));
        }
        Ok(PluginSource {
            component,
            query_id: Arc::from(query_id),
            planner,
            readers,
            max_rows,
            initial: None,
            batch: (0, 0),
            reads: ReadStats::default(),
        })
    }

    fn parse(&self, call: &str, text: &str) -> Result<Offset> {
        serde_json::from_str(text).map(Offset).map_err(|e| Error::Plugin {
            plugin: self.component.spec.name.clone(),
            call: "latest-offset",
            batch: None,
            fault: crate::error::PluginFault::Contract,
            message: format!("{call} returned an offset that is not JSON ({e}): {text:?}"),
        })
    }

    async fn start_text(&mut self, start: Option<&Offset>) -> Result<String> {
        match start {
            Some(o) => Ok(offset_text(o)),
            None => {
                if self.initial.is_none() {
                    let text = self.planner.initial_offset().await?;
                    // Normalise through JSON so comparisons and logs are stable.
                    self.initial = Some(offset_text(&self.parse("initial-offset", &text)?));
                }
                Ok(self.initial.clone().unwrap_or_default())
            }
        }
    }

    /// A poisoned reader is replaced by a fresh instance.
    async fn reader(&mut self, slot: usize) -> Result<SourceStream> {
        match self.readers[slot].take() {
            Some(r) if !r.is_poisoned() => Ok(r),
            _ => self.component.source_stream(&self.query_id).await,
        }
    }
}

#[async_trait::async_trait]
impl Source for PluginSource {
    fn description(&self) -> String {
        format!("PluginSource[{}]", self.component.spec.name)
    }

    fn schema(&self) -> SchemaRef {
        self.planner.schema()
    }

    fn replayable(&self) -> bool {
        true
    }

    async fn prepare_available_now(&mut self) -> Result<()> {
        self.planner.prepare_available_now().await
    }

    async fn latest_offset(&mut self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        let from = self.start_text(start).await?;
        let limit = match (limit, self.max_rows) {
            (ReadLimit::All, _) => PluginReadLimit::All,
            (ReadLimit::Default, Some(n)) => PluginReadLimit::MaxRows(n),
            (ReadLimit::Default, None) => PluginReadLimit::Default,
        };
        let end = self.planner.latest_offset(&from, limit).await?;
        let end = self.parse("latest-offset", &end)?;
        let from: serde_json::Value = serde_json::from_str(&from).unwrap_or(serde_json::Value::Null);
        Ok(if end.0 == from { None } else { Some(end) })
    }

    fn begin_batch(&mut self, batch_id: u64, timestamp_ms: i64) {
        self.batch = (batch_id, timestamp_ms);
    }

    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned> {
        let from = self.start_text(start).await?;
        let partitions = self.planner.partitions(&from, &offset_text(end)).await?;
        let n = self.readers.len();
        let num_partitions = partitions.len() as u32;
        let mut set = JoinSet::new();
        for slot in 0..n.min(partitions.len()) {
            let mut reader = self.reader(slot).await?;
            let mine: Vec<(u32, String)> = partitions
                .iter()
                .enumerate()
                .filter(|(i, _)| i % n == slot)
                .map(|(i, p)| (i as u32, p.clone()))
                .collect();
            let base = CallContext {
                query_id: self.query_id.clone(),
                batch_id: self.batch.0,
                attempt: 0,
                partition: 0,
                num_partitions,
                watermark_ms: None,
                batch_timestamp_ms: self.batch.1,
            };
            set.spawn(async move {
                let before = reader.stats();
                let mut out: Vec<(u32, RecordBatch)> = Vec::new();
                let mut result = Ok(());
                for (p, desc) in mine {
                    let ctx = CallContext { partition: p, ..base.clone() };
                    match reader.read_partition(&ctx, &desc).await {
                        Ok(batches) => out.extend(batches.into_iter().map(|b| (p, b))),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let after = reader.stats();
                (slot, reader, after.calls - before.calls, (after.busy - before.busy).as_millis() as u64, out, result)
            });
        }
        let mut data: Partitioned = Vec::new();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let (slot, reader, calls, busy, out, result) = joined.map_err(|e| Error::Source {
                source_name: self.description(),
                message: format!("reader task failed: {e}"),
                kind: ErrorKind::Internal,
            })?;
            self.readers[slot] = Some(reader);
            self.reads.calls += calls;
            self.reads.busy_ms += busy;
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
            data.extend(out);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // Every partition is present, empty or not, so the batch has its logical partitions.
        let schema = self.schema();
        for p in 0..num_partitions {
            if !data.iter().any(|(q, _)| *q == p) {
                data.push((p, RecordBatch::new_empty(schema.clone())));
            }
        }
        data.sort_by_key(|(p, _)| *p);
        self.reads.rows += data.iter().map(|(_, b)| b.num_rows() as u64).sum::<u64>();
        Ok(data)
    }

    async fn commit(&mut self, end: &Offset) -> Result<()> {
        self.planner.commit(&offset_text(end)).await
    }

    fn log_entry(&self, start: Option<&Offset>, _end: &Offset) -> Option<serde_json::Value> {
        match (start, &self.initial) {
            (None, Some(initial)) => Some(serde_json::json!({ "initialOffset": initial })),
            _ => None,
        }
    }

    async fn restore(&mut self, log: Vec<(u64, serde_json::Value)>, _last: Option<&Offset>) -> Result<()> {
        if let Some((_, entry)) = log.iter().find(|(b, _)| *b == 0)
            && let Some(initial) = entry.get("initialOffset").and_then(|v| v.as_str())
        {
            self.initial = Some(initial.to_string());
        }
        Ok(())
    }

    fn plugin(&self) -> Option<&PluginComponent> {
        Some(&self.component)
    }

    fn plugin_progress(&mut self) -> Vec<PluginProgress> {
        let planner = self.planner.stats();
        let memory = self
            .readers
            .iter()
            .flatten()
            .map(SourceStream::memory_peak)
            .chain(std::iter::once(self.planner.memory_peak()))
            .max()
            .unwrap_or(0);
        let reads = std::mem::take(&mut self.reads);
        let mut p = PluginProgress::new(&self.component.spec.name, "source");
        p.time_ms = reads.busy_ms;
        p.busy_ms = reads.busy_ms + planner.busy.as_millis() as u64;
        p.calls = reads.calls;
        p.output_rows = reads.rows;
        p.memory_peak_bytes = memory;
        p.version = self.component.version.clone();
        vec![p]
    }
}

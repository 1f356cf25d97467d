//! The steps of a query between source and sink: Wasm transform plugins and SQL.
//!
//! A plugin step keeps one instance per parallel slot (`limits.instances`, default one per
//! core). The rows of a batch arrive tagged with their logical partition; each partition goes
//! to instance `partition % slots`, in calls of at most 16 k rows that never mix partitions,
//! then `finish-batch` once for that partition. A failing partition is handled by the plugin's
//! `on_error` policy: fail the query, run the partition again on a fresh instance (retryable
//! errors only, up to N times), or send its rows with the error to a dead-letter sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::plugin::transform::Transformer;
use crate::plugin::{CallContext, PluginComponent};
use crate::progress::PluginProgress;
use crate::sink::plugin::chunks;
use crate::sink::{BatchMeta, Sink};
use crate::source::Partitioned;
use crate::spec::OutputMode;
use crate::sql::SqlStep;

#[allow(clippy::large_enum_variant, reason = "a handful per query, never in a hot collection")]
pub(super) enum Step {
    Plugin(PluginStep),
    Sql(SqlStep),
    Watermark(super::watermark::WatermarkStep),
    Dedup(crate::sql::DedupStep),
}

/// What a failing partition does.
pub(super) enum Policy {
    Fail,
    Retry(u32),
    DeadLetter { sink: Box<dyn Sink>, schema: SchemaRef },
}

pub(super) struct PluginStep {
    pub(super) component: PluginComponent,
    query_id: Arc<str>,
    instances: Vec<Option<Transformer>>,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    pub(super) policy: Policy,
}

/// The schema of dead-lettered rows: the step's input plus what failed.
pub(super) fn dead_letter_schema(input: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("_error", DataType::Utf8, false));
    fields.push(Field::new("_plugin", DataType::Utf8, false));
    fields.push(Field::new("_batch_id", DataType::Int64, false));
    fields.push(Field::new("_partition", DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

/// What one slot's task did.
struct SlotResult {
    slot: usize,
    instance: Option<Transformer>,
    out: Vec<(u32, Vec<RecordBatch>)>,
    dead: Vec<(u32, Vec<RecordBatch>, String)>,
    retries: u64,
    calls: u64,
    busy: Duration,
    fuel: u64,
    memory: u64,
    error: Option<Error>,
}

impl PluginStep {
    /// Creates the step's instances (each validates its config and plans its output schema).
    pub(super) async fn try_new(
        component: PluginComponent,
        query_id: &str,
        input: SchemaRef,
        parallelism: usize,
        policy: Policy,
    ) -> Result<Self> {
        let n = component.spec.limits.instances.unwrap_or(parallelism).max(1);
        let mut instances = Vec::with_capacity(n);
        let mut output = None;
        for _ in 0..n {
            let t = component.transformer(query_id, &input).await?;
            output = Some(t.output_schema());
            instances.push(Some(t));
        }
        let output_schema = output.ok_or_else(|| Error::Internal("a plugin step without instances".into()))?;
        Ok(PluginStep {
            component,
            query_id: Arc::from(query_id),
            instances,
            input_schema: input,
            output_schema,
            policy,
        })
    }

    /// Starts the dead-letter sink, if the step has one.
    pub(super) async fn start(&mut self, query_id: &str, rerun: Option<u64>) -> Result<()> {
        if let Policy::DeadLetter { sink, .. } = &mut self.policy {
            sink.start(query_id, rerun).await?;
        }
        Ok(())
    }

    pub(super) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    pub(super) fn name(&self) -> &str {
        &self.component.spec.name
    }

    /// Runs one batch through the step. `base` carries the batch's id, timestamp and
    /// watermark; `num_partitions` its logical partition count.
    pub(super) async fn process(
        &mut self,
        base: &CallContext,
        input: Partitioned,
        rerun: bool,
    ) -> Result<(Partitioned, PluginProgress)> {
        let started = Instant::now();
        let slots = self.instances.len();
        let input_rows: u64 = input.iter().map(|(_, b)| b.num_rows() as u64).sum();
        let mut by_partition: BTreeMap<u32, Vec<RecordBatch>> = BTreeMap::new();
        for (p, b) in input {
            if b.num_rows() > 0 {
                by_partition.entry(p).or_default().push(b);
            }
        }
        let mut work: Vec<Vec<(u32, Vec<RecordBatch>)>> = (0..slots).map(|_| Vec::new()).collect();
        for (p, batches) in by_partition {
            work[p as usize % slots].push((p, batches));
        }
        let retries_allowed = match self.policy {
            Policy::Retry(n) => Some(n),
            _ => None,
        };
        let dead_letter = matches!(self.policy, Policy::DeadLetter { .. });
        let mut set = JoinSet::new();
        for (slot, mine) in work.into_iter().enumerate() {
            if mine.is_empty() {
                continue;
            }
            let instance = self.instances[slot].take();
            let component = self.component.clone();
            let (query_id, schema) = (self.query_id.clone(), self.input_schema.clone());
            let base = base.clone();
            set.spawn(async move {
                run_slot(slot, instance, component, query_id, schema, base, mine, retries_allowed, dead_letter).await
            });
        }
        let mut out: Partitioned = Vec::new();
        let mut dead = Vec::new();
        let mut progress = PluginProgress::new(self.name(), "transform");
        progress.version = self.component.version.clone();
        progress.input_rows = input_rows;
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let r = joined.map_err(|e| Error::Internal(format!("plugin task failed: {e}")))?;
            self.instances[r.slot] = r.instance;
            progress.calls += r.calls;
            progress.busy_ms += r.busy.as_millis() as u64;
            progress.retries += r.retries;
            progress.memory_peak_bytes = progress.memory_peak_bytes.max(r.memory);
            if r.fuel > 0 {
                *progress.fuel.get_or_insert(0) += r.fuel;
            }
            if let Some(e) = r.error {
                first_err.get_or_insert(e);
            }
            for (p, batches) in r.out {
                out.extend(batches.into_iter().map(|b| (p, b)));
            }
            dead.extend(r.dead);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        out.sort_by_key(|(p, _)| *p);
        if !dead.is_empty() {
            progress.dead_lettered_rows = self.dead_letter(base, dead, rerun).await?;
        }
        progress.output_rows = out.iter().map(|(_, b)| b.num_rows() as u64).sum();
        progress.time_ms = started.elapsed().as_millis() as u64;
        Ok((out, progress))
    }

    /// Writes the rows of failed partitions, with their errors, to the dead-letter sink.
    async fn dead_letter(
        &mut self,
        base: &CallContext,
        dead: Vec<(u32, Vec<RecordBatch>, String)>,
        rerun: bool,
    ) -> Result<u64> {
        let Policy::DeadLetter { sink, schema } = &mut self.policy else { return Ok(0) };
        let plugin = self.component.spec.name.clone();
        let mut rows = Vec::new();
        let mut n = 0u64;
        for (p, batches, error) in dead {
            tracing::warn!(plugin, batch = base.batch_id, partition = p, "dead-lettering a partition: {error}");
            for b in batches {
                let len = b.num_rows();
                n += len as u64;
                let mut columns = b.columns().to_vec();
                columns.push(Arc::new(StringArray::from(vec![error.as_str(); len])));
                columns.push(Arc::new(StringArray::from(vec![plugin.as_str(); len])));
                columns.push(Arc::new(Int64Array::from(vec![base.batch_id as i64; len])));
                columns.push(Arc::new(Int32Array::from(vec![p as i32; len])));
                rows.push((p, RecordBatch::try_new(schema.clone(), columns)?));
            }
        }
        let meta = BatchMeta {
            query_id: base.query_id.clone(),
            batch_id: base.batch_id,
            timestamp_ms: base.batch_timestamp_ms,
            watermark_ms: base.watermark_ms,
            rerun,
            attempt: base.attempt,
            num_partitions: base.num_partitions,
            mode: OutputMode::Append,
            schema: schema.clone(),
        };
        sink.write_batch(&meta, rows).await?;
        Ok(n)
    }
}

/// Runs one partition's chunks and `finish-batch` on `t`.
async fn run_partition(
    t: &mut Transformer,
    ctx: &CallContext,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for chunk in chunks(batches.to_vec()) {
        out.extend(t.process(ctx, schema, &chunk).await?);
    }
    out.extend(t.finish_batch(ctx).await?);
    Ok(out)
}

#[allow(clippy::too_many_arguments, reason = "one task's inputs, moved in at once")]
async fn run_slot(
    slot: usize,
    mut instance: Option<Transformer>,
    component: PluginComponent,
    query_id: Arc<str>,
    schema: SchemaRef,
    base: CallContext,
    work: Vec<(u32, Vec<RecordBatch>)>,
    retries_allowed: Option<u32>,
    dead_letter: bool,
) -> SlotResult {
    let mut r = SlotResult {
        slot,
        instance: None,
        out: Vec::new(),
        dead: Vec::new(),
        retries: 0,
        calls: 0,
        busy: Duration::ZERO,
        fuel: 0,
        memory: 0,
        error: None,
    };
    for (p, batches) in work {
        let mut attempt = 0u32;
        loop {
            // A fresh instance when there is none or the last one trapped.
            let mut t = match instance.take() {
                Some(t) if !t.is_poisoned() => t,
                _ => match component.transformer(&query_id, &schema).await {
                    Ok(t) => t,
                    Err(e) => {
                        r.error = Some(e);
                        return r;
                    }
                },
            };
            let ctx = CallContext { partition: p, attempt: base.attempt + attempt, ..base.clone() };
            let before = t.stats();
            let result = run_partition(&mut t, &ctx, &schema, &batches).await;
            let after = t.stats();
            r.calls += after.calls - before.calls;
            r.busy += after.busy - before.busy;
            r.fuel += after.fuel - before.fuel;
            r.memory = r.memory.max(t.memory_peak());
            instance = Some(t);
            match result {
                Ok(out) => {
                    r.out.push((p, out));
                    break;
                }
                Err(e) => match retries_allowed {
                    Some(n) if e.retryable() && attempt < n => {
                        tracing::warn!(plugin = %component.spec.name, batch = base.batch_id, partition = p, attempt, "retrying on a fresh instance: {e}");
                        attempt += 1;
                        r.retries += 1;
                        instance = None;
                    }
                    _ if dead_letter => {
                        r.dead.push((p, batches, e.to_string()));
                        break;
                    }
                    _ => {
                        r.error = Some(e);
                        r.instance = instance;
                        return r;
                    }
                },
            }
        }
    }
    r.instance = instance;
    r
}

//! The engine: builds a query from a [`PipelineSpec`] and runs Spark's micro-batch loop.
//!
//! For batch N: (1) ask the source for its latest offset, with admission limits; (2) run only if
//! there is new data; (3) log the offsets (`walCommit`) BEFORE executing; (4) read the data and
//! run the steps; (5) hand the output to the sink for batch N; (6) log the commit, let the
//! source forget data up to the end offset, publish progress. Steps 3 and 6 go through
//! [`BatchLog`]; this build keeps that log in memory (durable checkpoints come next).
//!
//! Threading: the loop is one tokio task per query. Plugin instances of a step run as parallel
//! tasks on the same runtime (one per input partition slot); DataFusion runs its own partitions
//! on the same runtime. Nothing here blocks a runtime worker on I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{PipelineSpec, TransformSpec};
use crate::error::{Error, Result};
use crate::plugin::{CallContext, PluginInstance, PluginRuntime};
use crate::sink::{MemoryTables, OutputMode, Sink};
use crate::source::{Offset, Partitioned, ReadLimit, Source};
use crate::sql::SqlStep;
use crate::trigger::Trigger;

pub(crate) mod progress;
pub(crate) mod query;

use progress::{PluginProgress, SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress};
use query::Shared;
pub use query::StreamingQuery;

/// Where offsets and commits are logged. The in-memory log of this build keeps the protocol's
/// order of writes; the durable checkpoint implements the same two calls.
pub(crate) trait BatchLog: Send {
    /// Records that batch `batch_id` will process up to `end` (before it runs).
    fn write_offsets(&mut self, batch_id: u64, end: &Offset, batch_timestamp_ms: i64) -> Result<()>;
    /// Records that batch `batch_id` reached the sink.
    fn write_commit(&mut self, batch_id: u64) -> Result<()>;
}

#[derive(Default)]
struct MemoryLog {
    offsets: BTreeMap<u64, (Offset, i64)>,
    commits: Vec<u64>,
}

impl BatchLog for MemoryLog {
    fn write_offsets(&mut self, batch_id: u64, end: &Offset, ts: i64) -> Result<()> {
        self.offsets.insert(batch_id, (end.clone(), ts));
        // Keep a bounded window, like minBatchesToRetain.
        while self.offsets.len() > 100 {
            self.offsets.pop_first();
        }
        Ok(())
    }
    fn write_commit(&mut self, batch_id: u64) -> Result<()> {
        self.commits.push(batch_id);
        if self.commits.len() > 100 {
            self.commits.remove(0);
        }
        Ok(())
    }
}

/// A plugin step: one instance per parallel slot.
struct PluginStep {
    name: String,
    instances: Vec<Option<PluginInstance>>,
    input_schema: SchemaRef,
}

enum Step {
    Plugin(PluginStep),
    Sql(SqlStep),
}

/// A query, built and validated, ready to run.
pub(crate) struct Query {
    pub(crate) name: Option<String>,
    trigger: Trigger,
    mode: OutputMode,
    source: Box<dyn Source>,
    steps: Vec<Step>,
    sink: Box<dyn Sink>,
    output_schema: SchemaRef,
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 16)
}

impl Query {
    /// Builds every part of `spec`, loading plugins and planning SQL, and checks the output mode
    /// against the query's shape (Spark's `UnsupportedOperationChecker`).
    pub(crate) async fn build(spec: &PipelineSpec, runtime: &PluginRuntime, tables: &MemoryTables) -> Result<Query> {
        if spec.checkpoint_location.is_some() {
            return Err(Error::config(
                "checkpoint_location: durable checkpoints are not implemented in this build yet; remove it (console, memory and noop sinks need none)",
            ));
        }
        let source = crate::source::build(&spec.source)?;
        let mode = spec.sink.output_mode;
        let mut schema = source.schema();
        let mut steps = Vec::new();
        let mut stateful: Option<usize> = None;
        for (i, t) in spec.transforms.iter().enumerate() {
            match t {
                TransformSpec::Plugin { path, name, config, limits } => {
                    let component = runtime.load(name, path).await?;
                    let mut instances = Vec::new();
                    let mut out = None;
                    for _ in 0..parallelism() {
                        let mut inst = component.instantiate(config, *limits).await?;
                        out = Some(inst.output_schema(&schema).await?);
                        instances.push(Some(inst));
                    }
                    let out = out.ok_or_else(|| Error::Internal("no plugin instance".into()))?;
                    steps.push(Step::Plugin(PluginStep {
                        name: name.clone(),
                        instances,
                        input_schema: schema.clone(),
                    }));
                    schema = out;
                }
                TransformSpec::Sql { query } => {
                    let step = SqlStep::try_new(i, query, schema.clone(), mode).await?;
                    if step.is_stateful() {
                        if let Some(first) = stateful {
                            return Err(Error::Unsupported {
                                step: i,
                                message: format!(
                                    "step {first} already aggregates; chaining aggregations needs append mode with watermarks, which this build does not have yet"
                                ),
                            });
                        }
                        stateful = Some(i);
                    }
                    schema = step.output_schema();
                    steps.push(Step::Sql(step));
                }
            }
        }
        match (stateful, mode) {
            (None, OutputMode::Complete) => {
                return Err(Error::OutputMode {
                    mode: mode.to_string(),
                    reason: "when there are no streaming aggregations (complete mode re-emits a whole result table, which only an aggregation has)".into(),
                    allowed: vec!["append".into(), "update".into()],
                });
            }
            (Some(i), OutputMode::Append) => {
                return Err(Error::OutputMode {
                    mode: mode.to_string(),
                    reason: format!(
                        "for the streaming aggregation in step {i} without a watermark (its rows can change with every batch)"
                    ),
                    allowed: vec!["update".into(), "complete".into()],
                });
            }
            _ => {}
        }
        let sink = crate::sink::build(&spec.sink, spec.name.as_deref(), tables)?;
        Ok(Query { name: spec.name.clone(), trigger: spec.trigger, mode, source, steps, sink, output_schema: schema })
    }

    /// The schema of what reaches the sink.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn rows(data: &Partitioned) -> u64 {
    data.iter().map(|(_, b)| b.num_rows() as u64).sum()
}

impl PluginStep {
    async fn process(&mut self, ctx: CallContext, input: Partitioned) -> Result<(Partitioned, PluginProgress)> {
        let started = Instant::now();
        let n = self.instances.len();
        let input_rows = rows(&input);
        let mut slots: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for (p, b) in input {
            if b.num_rows() > 0 {
                slots[p as usize % n].push(b);
            }
        }
        let mut set = JoinSet::new();
        let mut calls = 0;
        for (slot, batches) in slots.into_iter().enumerate() {
            if batches.is_empty() {
                continue;
            }
            let mut inst = self.instances[slot]
                .take()
                .ok_or_else(|| Error::Internal(format!("plugin `{}` instance {slot} missing", self.name)))?;
            let schema = self.input_schema.clone();
            let ctx = CallContext { partition: slot as u32, ..ctx };
            calls += 1;
            set.spawn(async move {
                let before = inst.busy;
                let r = inst.process(ctx, &batches, &schema).await;
                let busy = inst.busy - before;
                (slot, inst, busy, r)
            });
        }
        let mut out = Vec::new();
        let mut busy = Duration::ZERO;
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let (slot, inst, b, r) = joined.map_err(|e| Error::Internal(format!("plugin task failed: {e}")))?;
            self.instances[slot] = Some(inst);
            busy += b;
            match r {
                Ok(batches) => out.extend(batches.into_iter().map(|b| (slot as u32, b))),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let memory_peak = self.instances.iter().flatten().map(|i| i.memory_peak() as u64).max().unwrap_or(0);
        let progress = PluginProgress {
            name: self.name.clone(),
            time_ms: started.elapsed().as_millis() as u64,
            busy_ms: busy.as_millis() as u64,
            calls,
            input_rows,
            output_rows: rows(&out),
            memory_peak_bytes: memory_peak,
        };
        Ok((out, progress))
    }
}

/// Runs the micro-batch loop until the trigger says stop, the query is stopped, or it fails.
pub(crate) async fn run(mut q: Query, shared: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    let mut log = MemoryLog::default();
    shared.set_status("Initializing sources", false, false);
    if !q.source.replayable() {
        tracing::warn!(source = %q.source.description(), "the source is not replayable: data received but not yet committed is lost if the process dies");
    }
    q.source.start().await?;
    if q.trigger.is_bounded() {
        q.source.prepare_available_now().await?;
    }
    let limit = if q.trigger == Trigger::Once { ReadLimit::All } else { ReadLimit::Default };
    let mut committed: Option<Offset> = None;
    let mut batch_id: u64 = 0;
    let mut last_trigger: Option<Instant> = None;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let trigger_started = Instant::now();
        let wall_start = now_ms();
        let mut durations = BTreeMap::new();

        // 1. latestOffset
        shared.set_status("Getting offsets from source", false, true);
        let t = Instant::now();
        let latest = q.source.latest_offset(committed.as_ref(), limit).await?;
        durations.insert("latestOffset".to_string(), t.elapsed().as_millis() as u64);

        // 2. is there anything to do?
        let Some(end) = latest else {
            shared.note_idle();
            if q.trigger.is_bounded() {
                shared.set_status("Stopped: all available data processed", false, false);
                return Ok(());
            }
            shared.set_status("Waiting for data to arrive", false, false);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(q.trigger.idle_poll()) => {}
            }
            continue;
        };
        shared.set_status("Processing new data", true, true);

        // 3. walCommit: log the offsets before executing.
        let t = Instant::now();
        log.write_offsets(batch_id, &end, wall_start)?;
        durations.insert("walCommit".to_string(), t.elapsed().as_millis() as u64);

        // 4. getBatch + execute
        let t = Instant::now();
        let data = q.source.get_batch(committed.as_ref(), &end).await?;
        durations.insert("getBatch".to_string(), t.elapsed().as_millis() as u64);
        let num_input_rows = rows(&data);

        let t = Instant::now();
        let ctx = CallContext { batch_id, partition: 0, watermark_ms: None, batch_timestamp_ms: wall_start };
        let mut current = data;
        let mut plugins = Vec::new();
        let mut state_ops = Vec::new();
        for step in &mut q.steps {
            current = match step {
                Step::Plugin(p) => {
                    let (out, progress) = p.process(ctx, current).await?;
                    plugins.push(progress);
                    out
                }
                Step::Sql(s) => {
                    let input: Vec<RecordBatch> = current.into_iter().map(|(_, b)| b).collect();
                    let commit_started = Instant::now();
                    let out = s.process(input, q.mode).await?;
                    if let Some(m) = s.state_metrics() {
                        state_ops.push(StateOperatorProgress {
                            operator_name: "stateStoreSave".into(),
                            num_rows_total: m.num_rows_total,
                            num_rows_updated: m.num_rows_updated,
                            num_rows_removed: 0,
                            commit_time_ms: 0,
                            memory_used_bytes: m.memory_used_bytes,
                            num_rows_dropped_by_watermark: 0,
                        });
                        let _ = commit_started;
                    }
                    let p = parallelism() as u32;
                    out.into_iter().enumerate().map(|(i, b)| (i as u32 % p, b)).collect()
                }
            };
        }
        let output: Vec<RecordBatch> = current.into_iter().map(|(_, b)| b).collect();
        let num_output_rows: u64 = output.iter().map(|b| b.num_rows() as u64).sum();
        q.sink.add_batch(batch_id, &q.output_schema, output, q.mode).await?;
        durations.insert("addBatch".to_string(), t.elapsed().as_millis() as u64);

        // 6. commit
        let t = Instant::now();
        log.write_commit(batch_id)?;
        q.source.commit(&end).await?;
        durations.insert("commitOffsets".to_string(), t.elapsed().as_millis() as u64);

        let total = trigger_started.elapsed().as_millis() as u64;
        durations.insert("triggerExecution".to_string(), total);
        let since_last = last_trigger.map(|l| trigger_started.duration_since(l).as_millis() as u64);
        let input_rate = since_last.and_then(|ms| progress::rate(num_input_rows, ms));
        let processed_rate = progress::rate(num_input_rows, total.max(1));
        let source_progress = SourceProgress {
            description: q.source.description(),
            start_offset: committed.as_ref().map(|o| o.0.clone()),
            end_offset: Some(end.0.clone()),
            latest_offset: Some(end.0.clone()),
            num_input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
        };
        let p = StreamingQueryProgress {
            id: shared.id.to_string(),
            run_id: shared.run_id.to_string(),
            name: q.name.clone(),
            timestamp: chrono::DateTime::<chrono::Utc>::from(SystemTime::now() - Duration::from_millis(total))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch_id,
            batch_duration: total,
            num_input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            duration_ms: durations,
            event_time: BTreeMap::new(),
            state_operators: state_ops,
            sources: vec![source_progress],
            sink: SinkProgress { description: q.sink.description(), num_output_rows: num_output_rows as i64 },
            plugins,
        };
        tracing::debug!(batch_id, rows = num_input_rows, ms = total, "batch committed");
        shared.push_progress(p);
        committed = Some(end);
        last_trigger = Some(trigger_started);
        batch_id += 1;

        if q.trigger == Trigger::Once {
            shared.set_status("Stopped: the single batch of trigger once is done", false, false);
            return Ok(());
        }
        // Wait for the next trigger boundary.
        if let Trigger::ProcessingTime(interval) = q.trigger {
            let elapsed = trigger_started.elapsed();
            if elapsed < interval {
                shared.set_status("Waiting for next trigger", false, false);
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(interval - elapsed) => {}
                }
            }
        }
    }
}

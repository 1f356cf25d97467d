//! The engine: builds a query from a [`PipelineSpec`] and runs Spark's micro-batch loop.
//!
//! For batch N: (1) ask the source for its latest offset, with admission limits; (2) run only if
//! there is new data; (3) log the offsets (`walCommit`) BEFORE executing; (4) read the data and
//! run the steps; (5) hand the output to the sink for batch N; (6) log the commit, let the
//! source forget data up to the end offset, publish progress. With a checkpoint location, steps
//! 3 and 6 write `offsets/N` and `commits/N` (see `checkpoint`), and a restart resumes by
//! Spark's rule (`recover`).
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

use crate::checkpoint::{Checkpoint, CommitEntry, OffsetEntry, Recovery, plan_recovery};
use crate::config::{PipelineSpec, TransformSpec};
use crate::error::{Error, Result};
use crate::plugin::{CallContext, PluginInstance, PluginRuntime};
use crate::sink::{MemoryTables, OutputMode, Sink};
use crate::source::{Offset, Partitioned, ReadLimit, Source};
use crate::sql::SqlStep;
use crate::state::StateStore;
use crate::trigger::Trigger;

pub(crate) mod progress;
pub(crate) mod query;

use progress::{PluginProgress, SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress};
use query::Shared;
pub use query::StreamingQuery;

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
    checkpoint: Option<Checkpoint>,
    /// The id recorded in the checkpoint, if the query ran before.
    pub(crate) id: Option<uuid::Uuid>,
    /// Settings state depends on, logged with every batch and checked on restart.
    conf: BTreeMap<String, String>,
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 16)
}

impl Query {
    /// Builds every part of `spec`, loading plugins and planning SQL, and checks the output mode
    /// against the query's shape (Spark's `UnsupportedOperationChecker`).
    pub(crate) async fn build(spec: &PipelineSpec, runtime: &PluginRuntime, tables: &MemoryTables) -> Result<Query> {
        let source = crate::source::build(&spec.source)?;
        let checkpoint = spec.checkpoint_location.as_deref().map(Checkpoint::open).transpose()?;
        if checkpoint.is_none() && crate::sink::needs_checkpoint(&spec.sink) {
            return Err(Error::MissingOption {
                component: format!("{} sink", spec.sink.format),
                key: "checkpoint_location".into(),
                hint: Some(format!(
                    "the {} sink is exactly-once: it needs a checkpoint for its offsets",
                    spec.sink.format
                )),
                location: spec.sink.location.clone(),
            });
        }
        if checkpoint.is_some() && !source.replayable() && !source.accepts_at_most_once() {
            return Err(Error::Config {
                location: spec.source.location.clone(),
                message: format!(
                    "{} cannot replay data, so a checkpoint cannot make it exactly-once; set source option atMostOnce = \"true\" to accept losing uncommitted data on a crash, or drop checkpoint_location",
                    source.description()
                ),
            });
        }
        let id = match &checkpoint {
            Some(c) => match c.metadata().await? {
                Some(m) => Some(uuid::Uuid::parse_str(&m.id).map_err(|e| Error::CorruptCheckpoint {
                    path: c.name("metadata"),
                    reason: format!("bad query id: {e}"),
                })?),
                None => None,
            },
            None => None,
        };
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
        sink.check_schema(&schema)?;
        let mut conf = BTreeMap::new();
        conf.insert("sluice.sources".to_string(), "1".to_string());
        conf.insert("sluice.source.0.format".to_string(), spec.source.format.clone());
        for (i, step) in steps.iter().enumerate() {
            if let Step::Sql(s) = step {
                if let Some(fp) = s.state_fingerprint() {
                    conf.insert(format!("sluice.state.{i}"), fp);
                }
            }
        }
        Ok(Query {
            name: spec.name.clone(),
            trigger: spec.trigger,
            mode,
            source,
            steps,
            sink,
            output_schema: schema,
            checkpoint,
            id,
            conf,
        })
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

/// The most rows one plugin call receives.
const ROWS_PER_CALL: usize = 64 * 1024;

/// Splits a slot's input into groups of at most [`ROWS_PER_CALL`] rows (slicing big batches,
/// which costs no copy), one plugin call each.
fn call_groups(batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
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
                let mut r = Ok(Vec::new());
                // Bounded calls: a large batch (a Kafka backlog, a big file) goes to the plugin in
                // slices of at most ROWS_PER_CALL rows, so its memory stays bounded.
                for group in call_groups(batches) {
                    match inst.process(ctx, &group, &schema).await {
                        Ok(out) => {
                            if let Ok(all) = &mut r {
                                all.extend(out);
                            }
                        }
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
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
/// Fault-injection pauses for crash tests: `SLUICE_TEST_PAUSE_MS=150` makes the loop sleep
/// after logging offsets, after the sink write and after the commit, widening exactly the
/// windows a crash test must hit with SIGKILL. Unset (always, outside tests), it costs nothing.
#[derive(Clone, Copy)]
struct Pauses(Option<Duration>);

impl Pauses {
    fn from_env() -> Self {
        Pauses(std::env::var("SLUICE_TEST_PAUSE_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis))
    }
    async fn at(self, point: &str) {
        if let Some(d) = self.0 {
            tracing::debug!(point, "test pause");
            tokio::time::sleep(d).await;
        }
    }
}

/// The crash-test pause (`SLUICE_TEST_PAUSE_MS`), for sinks that have a window of their own to
/// widen (the Kafka sink pauses between writing a transaction and committing it).
pub(crate) fn test_pause() -> Option<Duration> {
    Pauses::from_env().0
}

/// Where a (re)started query begins.
struct Resume {
    batch_id: u64,
    committed: Option<Offset>,
    /// A logged but uncommitted batch to run again first, exactly as logged.
    rerun: Option<OffsetEntry>,
}

fn check_conf(ckpt: &Checkpoint, before: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Result<()> {
    for key in before.keys().chain(now.keys()) {
        let (b, n) = (before.get(key), now.get(key));
        if b != n {
            let what = match key.as_str() {
                "sluice.sources" => "the number of sources".to_string(),
                "sluice.source.0.format" => "the source format".to_string(),
                k if k.starts_with("sluice.state.") => {
                    format!("the stateful operator of step {}", &k["sluice.state.".len()..])
                }
                k => k.to_string(),
            };
            return Err(Error::IncompatibleChange {
                checkpoint: ckpt.display().to_string(),
                what,
                before: b.cloned().unwrap_or_else(|| "(none)".into()),
                now: n.cloned().unwrap_or_else(|| "(none)".into()),
            });
        }
    }
    Ok(())
}

/// Reads the checkpoint and restores the source and the state (Spark's recovery protocol).
async fn recover(q: &mut Query, ckpt: &Checkpoint, id: &str) -> Result<Resume> {
    ckpt.init_metadata(id).await?;
    let (latest_offsets, latest_commit) = ckpt.latest().await?;
    let plan = plan_recovery(latest_offsets, latest_commit)
        .map_err(|reason| Error::CorruptCheckpoint { path: ckpt.display().to_string(), reason })?;
    let entry = |b: u64| async move {
        ckpt.offsets(b).await?.ok_or_else(|| Error::CorruptCheckpoint {
            path: ckpt.name(&format!("offsets/{b}")),
            reason: "missing".into(),
        })
    };
    let end_of = |e: &OffsetEntry| e.sources.first().cloned().flatten().map(Offset);
    let (resume, log_upto, latest_entry) = match plan {
        Recovery::Fresh => (Resume { batch_id: 0, committed: None, rerun: None }, None, None),
        Recovery::Continue { next } => {
            let last = entry(next - 1).await?;
            (Resume { batch_id: next, committed: end_of(&last), rerun: None }, Some(next - 1), Some(last))
        }
        Recovery::Rerun { batch } => {
            let e = entry(batch).await?;
            let prev = if batch > 0 { end_of(&entry(batch - 1).await?) } else { None };
            (Resume { batch_id: batch, committed: prev, rerun: Some(e.clone()) }, Some(batch), Some(e))
        }
    };
    if let Some(e) = &latest_entry {
        check_conf(ckpt, &e.conf, &q.conf)?;
        tracing::info!(
            checkpoint = ckpt.display(),
            batch = resume.batch_id,
            rerun = resume.rerun.is_some(),
            "resuming from checkpoint"
        );
    }
    let log = match log_upto {
        Some(upto) => ckpt.source_log(0, upto).await?,
        None => Vec::new(),
    };
    let last = latest_entry.as_ref().and_then(end_of);
    q.source.restore(log, last.as_ref()).await?;
    for (i, step) in q.steps.iter_mut().enumerate() {
        if let Step::Sql(s) = step {
            if s.is_stateful() {
                s.attach_state(StateStore::new(ckpt.clone(), i, 0), resume.batch_id, ckpt.display()).await?;
            }
        }
    }
    Ok(resume)
}

pub(crate) async fn run(mut q: Query, shared: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    shared.set_status("Initializing sources", false, false);
    if !q.source.replayable() {
        tracing::warn!(source = %q.source.description(), "the source is not replayable: data received but not yet committed is lost if the process dies");
    }
    q.source.start().await?;
    let ckpt = q.checkpoint.clone();
    let mut resume = match &ckpt {
        Some(c) => recover(&mut q, c, &shared.id.to_string()).await?,
        None => Resume { batch_id: 0, committed: None, rerun: None },
    };
    q.sink.start(&shared.id.to_string(), resume.rerun.as_ref().map(|_| resume.batch_id)).await?;
    if q.trigger.is_bounded() {
        q.source.prepare_available_now().await?;
    }
    let limit = if q.trigger == Trigger::Once { ReadLimit::All } else { ReadLimit::Default };
    let mut committed: Option<Offset> = resume.committed.take();
    let mut batch_id: u64 = resume.batch_id;
    let mut last_trigger: Option<Instant> = None;
    let pauses = Pauses::from_env();
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let trigger_started = Instant::now();
        let mut wall_start = now_ms();
        let mut durations = BTreeMap::new();

        // 1. latestOffset (or, after a crash, exactly what the uncommitted batch had logged)
        shared.set_status("Getting offsets from source", false, true);
        let t = Instant::now();
        let rerun = resume.rerun.take();
        let latest = match &rerun {
            Some(e) => {
                wall_start = e.batch_timestamp_ms;
                Some(e.sources.first().cloned().flatten().map(Offset).ok_or_else(|| Error::CorruptCheckpoint {
                    path: ckpt.as_ref().map(|c| c.name(&format!("offsets/{batch_id}"))).unwrap_or_default(),
                    reason: "no source offset".into(),
                })?)
            }
            None => q.source.latest_offset(committed.as_ref(), limit).await?,
        };
        durations.insert("latestOffset".to_string(), t.elapsed().as_millis() as u64);

        // 2. is there anything to do?
        let Some(end) = latest else {
            shared.note_idle();
            if q.source.finished() {
                shared.set_status("Stopped: the source reached its ending offsets", false, false);
                return Ok(());
            }
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
        if let (Some(c), None) = (&ckpt, &rerun) {
            if let Some(entry) = q.source.log_entry(committed.as_ref(), &end) {
                c.write_source_log(0, batch_id, &entry).await?;
            }
            let entry = OffsetEntry {
                batch_watermark_ms: 0,
                batch_timestamp_ms: wall_start,
                conf: q.conf.clone(),
                sources: vec![Some(end.0.clone())],
            };
            c.write_offsets(batch_id, &entry).await?;
        }
        durations.insert("walCommit".to_string(), t.elapsed().as_millis() as u64);
        pauses.at("after offsets").await;

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
                    let out = s.process(batch_id, input, q.mode).await?;
                    if let Some(m) = s.state_metrics() {
                        state_ops.push(StateOperatorProgress {
                            operator_name: "stateStoreSave".into(),
                            num_rows_total: m.num_rows_total,
                            num_rows_updated: m.num_rows_updated,
                            num_rows_removed: 0,
                            commit_time_ms: m.commit_time_ms,
                            memory_used_bytes: m.memory_used_bytes,
                            num_rows_dropped_by_watermark: 0,
                        });
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
        pauses.at("after sink").await;

        // 6. commit
        let t = Instant::now();
        if let Some(c) = &ckpt {
            c.write_commit(batch_id, &CommitEntry { next_batch_watermark_ms: 0 }).await?;
            if batch_id % 10 == 0 {
                c.purge(batch_id.saturating_sub(crate::state::MIN_BATCHES_TO_RETAIN), 1).await?;
            }
        }
        q.source.commit(&end).await?;
        durations.insert("commitOffsets".to_string(), t.elapsed().as_millis() as u64);
        pauses.at("after commit").await;

        let total = trigger_started.elapsed().as_millis() as u64;
        durations.insert("triggerExecution".to_string(), total);
        let since_last = last_trigger.map(|l| trigger_started.duration_since(l).as_millis() as u64);
        let input_rate = since_last.and_then(|ms| progress::rate(num_input_rows, ms));
        let processed_rate = progress::rate(num_input_rows, total.max(1));
        let source_progress = SourceProgress {
            description: q.source.description(),
            start_offset: committed.as_ref().map(|o| o.0.clone()),
            end_offset: Some(end.0.clone()),
            latest_offset: Some(q.source.latest_available().unwrap_or_else(|| end.clone()).0),
            num_input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            metrics: q.source.metrics(&end),
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

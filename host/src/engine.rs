//! The engine: builds a query from a [`PipelineSpec`](crate::PipelineSpec) and runs Spark's
//! micro-batch loop.
//!
//! For batch N: (1) ask the source for its latest offset, with admission limits; (2) run only if
//! there is new data; (3) log the offsets (`walCommit`) BEFORE executing; (4) read the data and
//! run the steps; (5) hand the output to the sink for batch N; (6) log the commit, let the
//! source forget data up to the end offset, publish progress. With a checkpoint location, steps
//! 3 and 6 write `offsets/N` and `commits/N` (see `checkpoint`), and a restart resumes by
//! Spark's rule (`recover`).
//!
//! Rows travel tagged with their *logical* partition: the source's input partition (a Kafka
//! topic-partition, a rate partition, a file of the batch, a plugin source's partition), the
//! same on every machine. Plugin steps keep the tags; a SQL step spreads its output over the
//! same number of partitions.
//!
//! Threading: the loop is one tokio task per query. Plugin instances of a step run as parallel
//! tasks on the same runtime (one per slot); DataFusion runs its own partitions on the same
//! runtime. Nothing here blocks a runtime worker on I/O.
//!
//! Modules: `build` (spec → [`Query`]), `step` (plugin and SQL steps, failure policies),
//! `recover` (restart), `query` (the [`StreamingQuery`] handle).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_schema::SchemaRef;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CommitEntry, OffsetEntry};
use crate::error::{Error, Result};
use crate::faults::Pauses;
use crate::plugin::CallContext;
use crate::progress::{
    self, Latencies, LatencyProgress, PluginProgress, SinkProgress, SourceProgress, StateOperatorProgress,
    StreamingQueryProgress,
};
use crate::sink::{BatchMeta, Sink};
use crate::source::{Offset, Partitioned, ReadLimit, Source};
use crate::spec::{OutputMode, StepRef};
use crate::sql::BatchWatermark;
use crate::trigger::Trigger;

mod build;
mod continuous;
mod manager;
pub(crate) mod query;
mod recover;
mod reload;
mod step;
mod watermark;

pub use manager::{DEFAULT_IDLE_EVENT_INTERVAL, StreamingQueryManager};
use query::Shared;
pub use query::StreamingQuery;
use recover::{Resume, recover};
use reload::{Prepared, ReloadContext, Swap};
use step::Step;
use watermark::EventTimeStats;

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
    /// The query's id: the checkpoint's, or a new one.
    pub(crate) id: uuid::Uuid,
    /// Settings state depends on, logged with every batch and checked on restart.
    conf: BTreeMap<String, String>,
    /// The end-to-end delivery guarantee, in words.
    pub(crate) guarantee: String,
    /// Hot reload: what preparing a new plugin version needs, and where swaps arrive.
    reload: Arc<ReloadContext>,
    reload_rx: tokio::sync::mpsc::Receiver<Swap>,
}

pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 16)
}

impl Query {
    /// The schema of what reaches the sink.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn reload_context(&self) -> Arc<ReloadContext> {
        self.reload.clone()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn rows(data: &Partitioned) -> u64 {
    data.iter().map(|(_, b)| b.num_rows() as u64).sum()
}

/// Logical partitions of a batch: one more than the highest tag (at least one).
fn num_partitions(data: &Partitioned) -> u32 {
    data.iter().map(|(p, _)| p + 1).max().unwrap_or(1)
}

fn state_progress(name: &str, m: &crate::sql::StateMetrics) -> StateOperatorProgress {
    StateOperatorProgress {
        operator_name: name.into(),
        num_rows_total: m.num_rows_total,
        num_rows_updated: m.num_rows_updated,
        num_rows_removed: m.num_rows_removed,
        commit_time_ms: m.commit_time_ms,
        memory_used_bytes: m.memory_used_bytes,
        num_rows_dropped_by_watermark: m.num_rows_dropped_by_watermark,
    }
}

/// The loop's state between batches.
struct Runner {
    q: Query,
    shared: Arc<Shared>,
    ckpt: Option<Checkpoint>,
    query_id: Arc<str>,
    resume: Resume,
    committed: Option<Offset>,
    batch_id: u64,
    last_trigger: Option<Instant>,
    pauses: Pauses,
    limit: ReadLimit,
    /// Plugin versions already copied into the checkpoint.
    saved: std::collections::HashSet<String>,
    /// Versions displaced for a re-run batch (which runs with the versions it logged), to put
    /// back once it is committed.
    restore_after: Vec<(StepRef, Prepared)>,
    /// The event-time watermark, when the query defines one.
    watermark: Option<Watermark>,
    /// The background deletion of old checkpoint logs, if one ran.
    purging: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

/// The query's watermark between batches.
struct Watermark {
    delay_ms: i64,
    /// The watermark the last batch ran with.
    last_ms: i64,
    /// The watermark the next batch runs with.
    next_ms: i64,
    /// Whether a stateful step closes groups by it (then a move of the watermark alone is
    /// worth a batch without data, as Spark's `noDataMicroBatches.enabled`).
    closes_groups: bool,
}

/// One batch in flight.
struct Batch {
    started: Instant,
    timestamp_ms: i64,
    /// The event-time watermark the batch runs with.
    watermark_ms: Option<i64>,
    /// The previous batch's watermark: rows behind it are late.
    late_events_ms: Option<i64>,
    end: Offset,
    /// A batch without new data, run because the watermark moved.
    no_data: bool,
    rerun: bool,
    /// The plugin versions a re-run batch logged.
    logged_plugins: BTreeMap<String, String>,
    durations: BTreeMap<String, u64>,
}

/// What executing a batch produced, for progress.
struct Executed {
    input_rows: u64,
    output_rows: u64,
    plugins: Vec<PluginProgress>,
    state_ops: Vec<StateOperatorProgress>,
    event_time: EventTimeStats,
    latency: Option<LatencyProgress>,
}

/// What the steps made of one batch (or one chunk of a continuous epoch).
struct Ran {
    output: Partitioned,
    partitions: u32,
    plugins: Vec<PluginProgress>,
    state_ops: Vec<StateOperatorProgress>,
    event_time: EventTimeStats,
}

pub(crate) async fn run(mut q: Query, shared: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    shared.set_status("Initializing sources", false, false);
    if !q.source.replayable() {
        tracing::warn!(source = %q.source.description(), "the source is not replayable: data received but not yet committed is lost if the process dies");
    }
    q.source.start().await?;
    let ckpt = q.checkpoint.clone();
    let query_id: Arc<str> = Arc::from(shared.id.to_string());
    let mut resume = match &ckpt {
        Some(c) => recover(&mut q, c, &query_id).await?,
        None => Resume::fresh(),
    };
    q.sink.start(&query_id, resume.rerun.as_ref().map(|_| resume.batch_id)).await?;
    for step in &mut q.steps {
        if let Step::Plugin(p) = step {
            p.start(&query_id, resume.rerun.as_ref().map(|_| resume.batch_id)).await?;
        }
    }
    if q.trigger.is_bounded() {
        q.source.prepare_available_now().await?;
    }
    let limit = if q.trigger == Trigger::Once { ReadLimit::All } else { ReadLimit::Default };
    let watermark = q.steps.iter().find_map(|s| match s {
        Step::Watermark(w) => Some(Watermark {
            delay_ms: w.delay_ms,
            last_ms: resume.prev_watermark_ms,
            next_ms: resume.watermark_ms,
            closes_groups: q.steps.iter().any(|s| match s {
                Step::Sql(sql) => q.mode != OutputMode::Complete && sql.has_event_time_key(),
                Step::Dedup(d) => d.expires_by_watermark(),
                _ => false,
            }),
        }),
        _ => None,
    });
    let committed = resume.committed.take();
    let batch_id = resume.batch_id;
    let mut r = Runner {
        q,
        shared,
        ckpt,
        query_id,
        resume,
        committed,
        batch_id,
        last_trigger: None,
        pauses: Pauses::from_env(),
        limit,
        saved: std::collections::HashSet::new(),
        restore_after: Vec::new(),
        watermark,
        purging: None,
    };
    let result = drive(&mut r, &cancel).await;
    // State written in the background (snapshots) lands before the query reports it stopped.
    let mut flushed = Ok(());
    for step in &mut r.q.steps {
        match step {
            Step::Sql(s) => flushed = flushed.and(s.flush_state().await),
            Step::Dedup(d) => flushed = flushed.and(d.flush_state().await),
            _ => {}
        }
    }
    result.and(flushed)
}

/// Resolves when the source signals new data (never, for a source that cannot).
async fn wake(waker: &Option<Arc<tokio::sync::Notify>>) {
    match waker {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The trigger loop, until the query stops or fails.
async fn drive(r: &mut Runner, cancel: &CancellationToken) -> Result<()> {
    if let Trigger::Continuous(interval) = r.q.trigger {
        return continuous::drive(r, cancel, interval).await;
    }
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        // A batch boundary: swap in plugin versions that are ready.
        while let Ok(swap) = r.q.reload_rx.try_recv() {
            r.apply(swap).await?;
        }
        let Some(batch) = r.next_batch().await? else {
            r.shared.note_idle();
            if r.q.source.finished() {
                r.shared.set_status("Stopped: the source reached its ending offsets", false, false);
                return Ok(());
            }
            if r.q.trigger.is_bounded() {
                r.shared.set_status("Stopped: all available data processed", false, false);
                return Ok(());
            }
            r.shared.set_status("Waiting for data to arrive", false, false);
            let waker = r.q.source.waker();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(r.q.trigger.idle_poll(waker.is_some())) => {}
                _ = wake(&waker) => {}
                Some(swap) = r.q.reload_rx.recv() => r.apply(swap).await?,
            }
            continue;
        };
        let batch = r.run_batch(batch).await?;
        if r.q.trigger == Trigger::Once {
            r.shared.set_status("Stopped: the single batch of trigger once is done", false, false);
            return Ok(());
        }
        // Wait for the next trigger boundary.
        if let Trigger::ProcessingTime(interval) = r.q.trigger {
            let elapsed = batch.elapsed();
            if elapsed < interval {
                r.shared.set_status("Waiting for next trigger", false, false);
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(interval - elapsed) => {}
                }
            }
        }
    }
}

impl Runner {
    /// Steps 1 and 2: the end offset of the next batch (after a crash, exactly what the
    /// uncommitted batch had logged), or `None` when there is nothing new.
    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        self.shared.set_status("Getting offsets from source", false, true);
        let rerun = self.resume.rerun.take();
        let (latest, timestamp_ms) = match &rerun {
            Some(e) => {
                let end = e.sources.first().cloned().flatten().map(Offset).ok_or_else(|| Error::CorruptCheckpoint {
                    path: self.ckpt.as_ref().map(|c| c.name(&format!("offsets/{}", self.batch_id))).unwrap_or_default(),
                    reason: "no source offset".into(),
                })?;
                (Some(end), e.batch_timestamp_ms)
            }
            None => (self.q.source.latest_offset(self.committed.as_ref(), self.limit).await?, now_ms()),
        };
        // No new data, but the watermark moved past what stateful steps hold: a batch without
        // data lets them close (emit and evict) those groups.
        let latest = match (latest, &self.watermark, &self.committed) {
            (None, Some(w), Some(c)) if w.closes_groups && w.next_ms > w.last_ms && self.q.trigger != Trigger::Once => {
                Some(c.clone())
            }
            (latest, _, _) => latest,
        };
        let mut durations = BTreeMap::new();
        durations.insert("latestOffset".to_string(), started.elapsed().as_millis() as u64);
        let logged_plugins = rerun.as_ref().map(|e| e.plugins.clone()).unwrap_or_default();
        let watermark_ms = match (&rerun, &self.watermark) {
            (_, None) => None,
            (Some(e), Some(_)) => Some(e.batch_watermark_ms),
            (None, Some(w)) => Some(w.next_ms),
        };
        let late_events_ms = self.watermark.as_ref().map(|w| w.last_ms);
        Ok(latest.map(|end| Batch {
            started,
            timestamp_ms,
            watermark_ms,
            late_events_ms,
            no_data: Some(&end) == self.committed.as_ref(),
            end,
            rerun: rerun.is_some(),
            logged_plugins,
            durations,
        }))
    }

    /// Swaps a prepared plugin version in (at a batch boundary).
    async fn apply(&mut self, swap: Swap) -> Result<()> {
        let Swap { at, prepared, version, reply } = swap;
        let old = self.q.reload.version(at).unwrap_or_default();
        self.swap_in(at, prepared).await?;
        self.q.reload.set_version(at, &version);
        self.shared.event(format!("{at} now runs plugin version {version} (was {old}) from batch {}", self.batch_id));
        let _ = reply.send(());
        Ok(())
    }

    /// Puts `prepared` at `at`, returning what ran there.
    async fn swap_in(&mut self, at: StepRef, prepared: Prepared) -> Result<Prepared> {
        Ok(match (at, prepared) {
            (StepRef::Transform(i), Prepared::Transform(mut step)) => {
                step.start(&self.query_id, None).await?;
                match std::mem::replace(&mut self.q.steps[i], Step::Plugin(step)) {
                    Step::Plugin(old) => Prepared::Transform(old),
                    _ => return Err(Error::Internal(format!("step {i} is not a plugin"))),
                }
            }
            (StepRef::Sink, Prepared::Sink(mut sink)) => {
                sink.start(&self.query_id, None).await?;
                Prepared::Sink(std::mem::replace(&mut self.q.sink, sink))
            }
            (at, _) => return Err(Error::Internal(format!("a prepared plugin does not fit {at}"))),
        })
    }

    /// A re-run batch runs with the plugin versions its offsets name: any that differ from
    /// what runs now are loaded from the checkpoint's copies, and put back after the batch.
    async fn use_logged_versions(&mut self, logged: &BTreeMap<String, String>) -> Result<()> {
        let Some(ckpt) = self.ckpt.clone() else { return Ok(()) };
        for (key, version) in logged {
            let Ok(at) = key.parse::<StepRef>() else { continue };
            let current = match at {
                StepRef::Transform(i) => match self.q.steps.get(i) {
                    Some(Step::Plugin(p)) => p.component.clone(),
                    _ => continue,
                },
                StepRef::Sink => match self.q.sink.plugin() {
                    Some(c) => c.clone(),
                    None => continue,
                },
                StepRef::Source => continue,
            };
            if current.version == *version {
                continue;
            }
            let prepared = self.q.reload.prepare_logged(&ckpt, at, &current.spec, version).await?;
            let displaced = self.swap_in(at, prepared).await?;
            self.shared.event(format!(
                "batch {} re-runs with {at} at the version its offsets name, {version}; version {} takes over after it",
                self.batch_id, current.version
            ));
            self.restore_after.push((at, displaced));
        }
        Ok(())
    }

    /// Steps 3 to 6 and progress; returns when the batch started, for the trigger.
    async fn run_batch(&mut self, mut b: Batch) -> Result<Instant> {
        self.shared.set_status("Processing new data", true, true);
        if b.rerun {
            let logged = std::mem::take(&mut b.logged_plugins);
            self.use_logged_versions(&logged).await?;
        }
        let t = Instant::now();
        if !b.rerun {
            self.log_offsets(&b).await?;
        }
        b.durations.insert("walCommit".to_string(), t.elapsed().as_millis() as u64);
        self.pauses.at("after offsets").await;

        let executed = self.execute(&mut b).await?;
        self.pauses.at("after sink").await;

        // The watermark the next batch runs with.
        let next_watermark = match (&mut self.watermark, b.watermark_ms) {
            (Some(w), Some(current)) => {
                w.last_ms = current;
                w.next_ms = executed.event_time.next_watermark(current, w.delay_ms);
                w.next_ms
            }
            _ => 0,
        };
        let started = b.started;
        self.finish_batch(b, executed, next_watermark).await?;
        Ok(started)
    }

    /// Step 6 and progress: `commits/N`, the source may forget the batch's data, progress is
    /// published, and the next batch id is ready.
    async fn finish_batch(&mut self, mut b: Batch, executed: Executed, next_watermark: i64) -> Result<()> {
        let t = Instant::now();
        if let Some(c) = &self.ckpt {
            c.write_commit(self.batch_id, &CommitEntry { next_batch_watermark_ms: next_watermark }).await?;
            if self.batch_id.is_multiple_of(10) {
                self.purge(c.clone());
            }
        }
        self.q.source.commit(&b.end).await?;
        b.durations.insert("commitOffsets".to_string(), t.elapsed().as_millis() as u64);
        self.pauses.at("after commit").await;

        self.report(&mut b, executed);
        self.committed = Some(b.end);
        self.last_trigger = Some(b.started);
        self.batch_id += 1;
        for (at, prepared) in std::mem::take(&mut self.restore_after) {
            self.swap_in(at, prepared).await?;
        }
        Ok(())
    }

    /// Deletes the logs of batches older than the retained ones, in the background (listing
    /// and deleting would otherwise stall the stream every 10 batches). One purge at a time; a
    /// failed one is logged (the next one retries: old logs only take space).
    fn purge(&mut self, c: Checkpoint) {
        if self.purging.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let keep_from = self.batch_id.saturating_sub(crate::state::MIN_BATCHES_TO_RETAIN);
        self.purging = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = c.purge(keep_from, 1).await {
                tracing::warn!(error = %e, "could not delete old checkpoint logs; the next purge retries");
            }
        })));
    }

    /// The plugins the batch runs with, by step.
    fn plugins(&self) -> Vec<(StepRef, &crate::plugin::PluginComponent)> {
        let mut v = Vec::new();
        if let Some(c) = self.q.source.plugin() {
            v.push((StepRef::Source, c));
        }
        for (i, step) in self.q.steps.iter().enumerate() {
            if let Step::Plugin(p) = step {
                v.push((StepRef::Transform(i), &p.component));
            }
        }
        if let Some(c) = self.q.sink.plugin() {
            v.push((StepRef::Sink, c));
        }
        v
    }

    /// Step 3, walCommit: the offsets are logged before the batch runs.
    async fn log_offsets(&mut self, b: &Batch) -> Result<()> {
        let Some(c) = &self.ckpt else { return Ok(()) };
        if let Some(entry) = self.q.source.log_entry(self.committed.as_ref(), &b.end) {
            c.write_source_log(0, self.batch_id, &entry).await?;
        }
        let mut plugins = BTreeMap::new();
        let mut saved = Vec::new();
        for (at, component) in self.plugins() {
            if !self.saved.contains(&component.version) {
                reload::save_version(c, component).await?;
                saved.push(component.version.clone());
            }
            plugins.insert(at.to_string(), component.version.clone());
        }
        self.saved.extend(saved);
        let entry = OffsetEntry {
            batch_watermark_ms: b.watermark_ms.unwrap_or(0),
            batch_timestamp_ms: b.timestamp_ms,
            conf: self.q.conf.clone(),
            plugins,
            sources: vec![Some(b.end.0.clone())],
        };
        c.write_offsets(self.batch_id, &entry).await
    }

    /// Steps 4 and 5: read the data, run the steps, hand the output to the sink.
    async fn execute(&mut self, b: &mut Batch) -> Result<Executed> {
        let t = Instant::now();
        self.q.source.begin_batch(self.batch_id, b.timestamp_ms);
        let data =
            if b.no_data { Vec::new() } else { self.q.source.get_batch(self.committed.as_ref(), &b.end).await? };
        let times = self.q.source.take_source_times();
        b.durations.insert("getBatch".to_string(), t.elapsed().as_millis() as u64);
        let input_rows = rows(&data);

        let t = Instant::now();
        let watermark = match (b.late_events_ms, b.watermark_ms) {
            (Some(late_events_ms), Some(eviction_ms)) => Some(BatchWatermark { late_events_ms, eviction_ms }),
            _ => None,
        };
        let ran = self.run_steps(b.timestamp_ms, b.watermark_ms, watermark, b.rerun, data).await?;
        let output_rows = rows(&ran.output);
        let meta = self.meta(b.timestamp_ms, b.watermark_ms, b.rerun, ran.partitions);
        self.q.sink.write_batch(&meta, ran.output).await?;
        let mut latency = Latencies::default();
        latency.deliver(&times, progress::now_ms_f64());
        let mut plugins = ran.plugins;
        plugins.extend(self.q.sink.plugin_progress());
        b.durations.insert("addBatch".to_string(), t.elapsed().as_millis() as u64);
        Ok(Executed {
            input_rows,
            output_rows,
            plugins,
            state_ops: ran.state_ops,
            event_time: ran.event_time,
            latency: latency.take(),
        })
    }

    /// What the sink is told about the batch (or epoch) `self.batch_id`.
    fn meta(&self, timestamp_ms: i64, watermark_ms: Option<i64>, rerun: bool, num_partitions: u32) -> BatchMeta {
        BatchMeta {
            query_id: self.query_id.clone(),
            batch_id: self.batch_id,
            timestamp_ms,
            watermark_ms,
            rerun,
            attempt: 0,
            num_partitions,
            mode: self.q.mode,
            schema: self.q.output_schema.clone(),
        }
    }

    /// Step 4 without the reading: runs the steps over `data` (the source's partitions).
    async fn run_steps(
        &mut self,
        timestamp_ms: i64,
        watermark_ms: Option<i64>,
        watermark: Option<BatchWatermark>,
        rerun: bool,
        data: Partitioned,
    ) -> Result<Ran> {
        let parts = num_partitions(&data);
        let base = CallContext {
            query_id: self.query_id.clone(),
            batch_id: self.batch_id,
            attempt: 0,
            partition: 0,
            num_partitions: parts,
            watermark_ms,
            batch_timestamp_ms: timestamp_ms,
        };
        let mut event_time = EventTimeStats::default();
        let mut plugins = self.q.source.plugin_progress();
        let mut state_ops = Vec::new();
        let mut current = data;
        for step in &mut self.q.steps {
            current = match step {
                Step::Plugin(p) => {
                    let (out, progress) = p.process(&base, current, rerun).await?;
                    plugins.push(progress);
                    out
                }
                Step::Watermark(w) => {
                    w.observe(&current, &mut event_time)?;
                    current
                }
                Step::Dedup(d) => {
                    let out = d.process(self.batch_id, watermark, current).await?;
                    state_ops.push(state_progress(d.operator_name(), &d.state_metrics()));
                    out
                }
                Step::Sql(s) => {
                    let input = current.into_iter().map(|(_, b)| b).collect();
                    let out = s.process(self.batch_id, timestamp_ms, watermark, input, self.q.mode).await?;
                    if let Some(m) = s.state_metrics() {
                        state_ops.push(state_progress("stateStoreSave", &m));
                    }
                    out.into_iter().enumerate().map(|(i, b)| (i as u32 % parts, b)).collect()
                }
            };
        }
        Ok(Ran { output: current, partitions: parts, plugins, state_ops, event_time })
    }

    /// Publishes the batch's progress (Spark's `StreamingQueryProgress`).
    fn report(&mut self, b: &mut Batch, e: Executed) {
        let total = b.started.elapsed().as_millis() as u64;
        b.durations.insert("triggerExecution".to_string(), total);
        let since_last = self.last_trigger.map(|l| b.started.duration_since(l).as_millis() as u64);
        let input_rate = since_last.and_then(|ms| progress::rate(e.input_rows, ms));
        let processed_rate = progress::rate(e.input_rows, total.max(1));
        let source = SourceProgress {
            description: self.q.source.description(),
            start_offset: self.committed.as_ref().map(|o| o.0.clone()),
            end_offset: Some(b.end.0.clone()),
            latest_offset: Some(self.q.source.latest_available().unwrap_or_else(|| b.end.clone()).0),
            num_input_rows: e.input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            metrics: self.q.source.metrics(&b.end),
        };
        let p = StreamingQueryProgress {
            id: self.shared.id.to_string(),
            run_id: self.shared.run_id.to_string(),
            name: self.q.name.clone(),
            timestamp: chrono::DateTime::<chrono::Utc>::from(SystemTime::now() - Duration::from_millis(total))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch_id: self.batch_id,
            batch_duration: total,
            num_input_rows: e.input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            duration_ms: std::mem::take(&mut b.durations),
            event_time: match b.watermark_ms {
                Some(w) => e.event_time.progress(w),
                None => BTreeMap::new(),
            },
            state_operators: e.state_ops,
            sources: vec![source],
            sink: SinkProgress { description: self.q.sink.description(), num_output_rows: e.output_rows as i64 },
            plugins: e.plugins,
            latency_ms: e.latency,
            events: self.shared.take_events(),
        };
        tracing::debug!(batch_id = self.batch_id, rows = e.input_rows, ms = total, "batch committed");
        self.shared.push_progress(p);
    }
}

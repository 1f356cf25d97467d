//! The continuous trigger: rows flow through a stateless query as soon as the source has them.
//!
//! An *epoch* plays the part of a micro-batch for the checkpoint: it has a batch id, its offsets
//! are logged in `offsets/N`, its sink output is committed, then `commits/N`. Within an epoch
//! the loop reads whatever the source has (woken by it, or polling every 10 ms when it cannot
//! wake the loop), runs the steps on that chunk and hands it to the sink at once. A sink that
//! streams chunks (Kafka, console, noop) delivers them as they come: at-least-once sinks make
//! them visible at once, the exactly-once Kafka sink holds them in one transaction per epoch.
//! Other sinks get the whole epoch as one batch at its end.
//!
//! The epoch's offsets are logged when it ends, after its chunks ran but before the sink
//! commits, so the checkpoint protocol is the micro-batch one: a crash before `offsets/N`
//! leaves nothing of epoch N committed (the transaction is aborted, the file sink never listed
//! its files) and the next run starts a new epoch from `commits/N-1`; a crash after it re-runs
//! epoch N exactly, as one micro-batch over its logged range, which the exactly-once sinks
//! recognise by its batch id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Batch, Executed, Runner, now_ms, rows, wake};
use crate::error::Result;
use crate::progress::{self, Latencies};
use crate::source::{Offset, Partitioned, ReadLimit, SourceTimes};

/// How long the loop waits for a source that cannot wake it.
const POLL: Duration = Duration::from_millis(10);

/// Runs epochs until the query stops or fails.
pub(super) async fn drive(r: &mut Runner, cancel: &CancellationToken, interval: Duration) -> Result<()> {
    // An epoch logged but not committed before a restart runs first, exactly as logged.
    if r.resume.rerun.is_some()
        && let Some(batch) = r.next_batch().await?
    {
        r.run_batch(batch).await?;
    }
    let waker = r.q.source.waker();
    loop {
        // An epoch boundary: swap in plugin versions that are ready.
        while let Ok(swap) = r.q.reload_rx.try_recv() {
            r.apply(swap).await?;
        }
        let stopping = run_epoch(r, cancel, interval, &waker).await?;
        if stopping {
            return Ok(());
        }
    }
}

/// What an epoch gathered so far.
struct Epoch {
    started: Instant,
    timestamp_ms: i64,
    deadline: tokio::time::Instant,
    /// Where the next chunk starts.
    pos: Option<Offset>,
    input_rows: u64,
    output_rows: u64,
    plugins: Vec<crate::progress::PluginProgress>,
    /// Output held for a sink that takes the epoch whole.
    held: Partitioned,
    partitions: u32,
    /// Source times of rows not yet visible at the sink.
    pending: SourceTimes,
    latency: Latencies,
    get_ms: u64,
    add_ms: u64,
}

/// One epoch: chunks until the interval is over (or the query stops), then the commit. Returns
/// whether the query is stopping.
async fn run_epoch(
    r: &mut Runner,
    cancel: &CancellationToken,
    interval: Duration,
    waker: &Option<Arc<tokio::sync::Notify>>,
) -> Result<bool> {
    let mut e = Epoch {
        started: Instant::now(),
        timestamp_ms: now_ms(),
        deadline: tokio::time::Instant::now() + interval,
        pos: r.committed.clone(),
        input_rows: 0,
        output_rows: 0,
        plugins: Vec::new(),
        held: Vec::new(),
        partitions: 1,
        pending: Vec::new(),
        latency: Latencies::default(),
        get_ms: 0,
        add_ms: 0,
    };
    let streams = r.q.sink.streams_chunks();
    let mut stopping = false;
    loop {
        if cancel.is_cancelled() {
            stopping = true;
            break;
        }
        r.shared.set_status("Getting offsets from source", false, true);
        let latest = r.q.source.latest_offset(e.pos.as_ref(), ReadLimit::Default).await?;
        match latest {
            Some(end) => run_chunk(r, &mut e, end, streams).await?,
            None => {
                r.shared.note_idle();
                if r.q.source.finished() {
                    r.shared.set_status("Stopped: the source reached its ending offsets", false, false);
                    stopping = true;
                    break;
                }
                r.shared.set_status("Waiting for data to arrive", false, false);
                let poll = if waker.is_some() { Duration::from_millis(100) } else { POLL };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep_until(e.deadline) => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = wake(waker) => {}
                }
            }
        }
        if tokio::time::Instant::now() >= e.deadline {
            break;
        }
    }
    if e.pos != r.committed {
        commit_epoch(r, e, streams).await?;
    }
    Ok(stopping)
}

/// Reads `(pos, end]`, runs the steps and hands the output to the sink (or holds it).
async fn run_chunk(r: &mut Runner, e: &mut Epoch, end: Offset, streams: bool) -> Result<()> {
    r.shared.set_status("Processing new data", true, true);
    let t = Instant::now();
    r.q.source.begin_batch(r.batch_id, e.timestamp_ms);
    let data = r.q.source.get_batch(e.pos.as_ref(), &end).await?;
    let times = r.q.source.take_source_times();
    e.get_ms += t.elapsed().as_millis() as u64;
    let t = Instant::now();
    e.input_rows += rows(&data);
    let ran = r.run_steps(e.timestamp_ms, None, None, false, data).await?;
    e.output_rows += rows(&ran.output);
    e.partitions = e.partitions.max(ran.partitions);
    progress::merge_plugins(&mut e.plugins, ran.plugins);
    if streams {
        let meta = r.meta(e.timestamp_ms, None, false, ran.partitions);
        if r.q.sink.write_chunk(&meta, ran.output).await? {
            e.latency.deliver(&times, progress::now_ms_f64());
        } else {
            e.pending.extend(times);
        }
    } else {
        e.held.extend(ran.output);
        e.pending.extend(times);
    }
    e.add_ms += t.elapsed().as_millis() as u64;
    e.pos = Some(end);
    Ok(())
}

/// The end of an epoch with data: offsets logged, the sink's commit, `commits/N`, progress.
async fn commit_epoch(r: &mut Runner, mut e: Epoch, streams: bool) -> Result<()> {
    let Some(end) = e.pos.clone() else { return Ok(()) };
    let mut b = Batch {
        started: e.started,
        timestamp_ms: e.timestamp_ms,
        watermark_ms: None,
        late_events_ms: None,
        end,
        no_data: false,
        rerun: false,
        logged_plugins: Default::default(),
        durations: Default::default(),
    };
    b.durations.insert("getBatch".to_string(), e.get_ms);
    let t = Instant::now();
    r.log_offsets(&b).await?;
    b.durations.insert("walCommit".to_string(), t.elapsed().as_millis() as u64);
    r.pauses.at("after offsets").await;
    let t = Instant::now();
    let meta = r.meta(e.timestamp_ms, None, false, e.partitions);
    if streams {
        r.q.sink.commit_epoch(&meta).await?;
    } else {
        r.q.sink.write_batch(&meta, std::mem::take(&mut e.held)).await?;
    }
    e.latency.deliver(&e.pending, progress::now_ms_f64());
    progress::merge_plugins(&mut e.plugins, r.q.sink.plugin_progress());
    b.durations.insert("addBatch".to_string(), e.add_ms + t.elapsed().as_millis() as u64);
    r.pauses.at("after sink").await;
    let executed = Executed {
        input_rows: e.input_rows,
        output_rows: e.output_rows,
        plugins: e.plugins,
        state_ops: Vec::new(),
        event_time: Default::default(),
        latency: e.latency.take(),
    };
    r.finish_batch(b, executed, 0).await
}

//! Benchmarks that show how cost grows with the work:
//! - `state`: the time of a 100-row batch into a `GROUP BY` holding 10 k … 10 M keys, with and
//!   without a checkpoint, and memory per key (peak RSS above the base, and what progress
//!   reports as `memoryUsedBytes`);
//! - `growth`: word count over N and 10×N lines (throughput should stay flat) and a stateless
//!   split → noop over the same (peak memory should not grow).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::builder::StringBuilder;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::spec::OutputMode;
use crate::sql::SqlStep;
use crate::state::StateStore;
use crate::{Session, Trigger};

/// Resident and peak resident set size of this process, in bytes (Linux `/proc/self/status`).
pub(super) fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS to the current RSS (Linux: `5` into `/proc/self/clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A batch of keys `k0000000`…, built as a source builds its arrays: without a `String` per row.
fn key_batch(schema: &SchemaRef, ids: impl Iterator<Item = u64>) -> Result<RecordBatch> {
    use std::fmt::Write as _;
    let mut keys = StringBuilder::new();
    for i in ids {
        write!(keys, "k{i:07}").map_err(|e| Error::Internal(e.to_string()))?;
        keys.append_value("");
    }
    Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(keys.finish())])?)
}

struct StateRun {
    build: Duration,
    median: Duration,
    p95: Duration,
    max: Duration,
    peak_per_key: f64,
    reported_per_key: f64,
    base_mb: f64,
}

/// Fills a `GROUP BY k` / `count(*)` with `keys` keys in 100 k-row batches, then times 60
/// batches of 100 rows (half existing keys, half new).
async fn state_run(keys: u64, ckpt: Option<&Path>) -> Result<StateRun> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
    let mode = OutputMode::Update;
    let mut step =
        SqlStep::try_new(0, "SELECT k, count(*) AS n FROM input GROUP BY k", schema.clone(), mode, None).await?;
    if let Some(dir) = ckpt {
        let _ = std::fs::remove_dir_all(dir);
        let store = StateStore::new(Checkpoint::open(dir)?, 0, 0);
        step.attach_state(store, 0, &dir.display().to_string()).await?;
    }
    // The base: a running query with an empty state, its engine warmed by a first batch.
    step.process(0, 0, None, vec![key_batch(&schema, std::iter::once(u64::MAX))?], mode).await?;
    reset_peak();
    let (base, _) = rss();
    let mut batch_id = 1;
    let started = Instant::now();
    let mut next = 0u64;
    while next < keys {
        let end = (next + 100_000).min(keys);
        step.process(batch_id, 0, None, vec![key_batch(&schema, next..end)?], mode).await?;
        batch_id += 1;
        next = end;
    }
    step.flush_state().await?;
    let build = started.elapsed();
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut times = Vec::new();
    for i in 0..65 {
        let ids = (0..100).map(|j| {
            if j % 2 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % keys
            } else {
                next += 1;
                next
            }
        });
        let b = key_batch(&schema, ids.collect::<Vec<_>>().into_iter())?;
        let t = Instant::now();
        step.process(batch_id, 0, None, vec![b], mode).await?;
        if i >= 5 {
            times.push(t.elapsed());
        }
        batch_id += 1;
    }
    step.flush_state().await?;
    let (_, peak) = rss();
    let reported = step.state_metrics().map(|m| m.memory_used_bytes).unwrap_or(0);
    let total = next as f64;
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    Ok(StateRun {
        build,
        median: at(0.5),
        p95: at(0.95),
        max: at(1.0),
        peak_per_key: peak.saturating_sub(base) as f64 / total,
        reported_per_key: reported as f64 / total,
        base_mb: base as f64 / 1e6,
    })
}

/// One state run, in this process (a child of the `state` section, so that each run's peak
/// memory is its own): prints its figures on one line.
pub async fn state_child(dir: &Path, keys: u64, checkpoint: bool) -> Result<()> {
    let ckpt = dir.join("_state_ckpt");
    let r = state_run(keys, checkpoint.then_some(ckpt.as_path())).await?;
    let _ = std::fs::remove_dir_all(&ckpt);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "STATE {} {} {} {} {} {} {}",
        r.build.as_secs_f64(),
        ms(r.median),
        ms(r.p95),
        ms(r.max),
        r.peak_per_key,
        r.reported_per_key,
        r.base_mb
    );
    Ok(())
}

/// Runs `state_child` in a fresh `sluice` process (off the runtime's threads): fill, median,
/// p95, max, peak RSS / key, `memoryUsedBytes` / key, base RSS.
async fn state_in_child(dir: &Path, keys: u64, checkpoint: bool) -> Result<[f64; 7]> {
    let dir = dir.to_path_buf();
    let r = tokio::task::spawn_blocking(move || state_child_process(&dir, keys, checkpoint))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    r.as_slice().try_into().map_err(|_| Error::Internal(format!("the state benchmark child printed {r:?}")))
}

fn state_child_process(dir: &Path, keys: u64, checkpoint: bool) -> Result<Vec<f64>> {
    let exe = std::env::current_exe().map_err(|source| Error::Io { path: "current_exe".into(), source })?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("bench").arg("--dir").arg(dir).arg("--state-child").arg(keys.to_string());
    if checkpoint {
        cmd.arg("--state-checkpoint");
    }
    let out = cmd.output().map_err(|source| Error::Io { path: exe.clone(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("STATE ")).ok_or_else(|| {
        Error::Internal(format!(
            "the state benchmark child ({keys} keys) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    Ok(line.split_whitespace().filter_map(|v| v.parse().ok()).collect())
}

/// The `state` section.
pub(super) async fn state(dir: &Path, max_keys: u64) -> Result<()> {
    println!("\n## State growth: a 100-row batch into `SELECT k, count(*) … GROUP BY k` (update mode)\n");
    println!("Keys `k0000000`… (8 bytes); the state is filled in 100 k-row batches, then 60 batches of");
    println!("100 rows (50 existing keys, 50 new) are timed around the SQL step (Spark's addBatch share).");
    println!("With a checkpoint every batch writes its delta, and every 10th a snapshot (in the background).\n");
    println!("Each row runs in a fresh process; peak RSS / key = (peak RSS − base RSS) / keys, the base being");
    println!("the process once the step has run a first 1-row batch (engine up, state empty).\n");
    println!(
        "| keys | checkpoint | fill | 100-row batch: median | p95 | max | peak RSS / key | memoryUsedBytes / key | base RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let sizes = [10_000u64, 100_000, 1_000_000, 2_000_000, 10_000_000];
    for keys in sizes.into_iter().filter(|k| *k <= max_keys) {
        for with in [false, true] {
            let [fill, median, p95, max, peak, reported, base] = state_in_child(dir, keys, with).await?;
            println!(
                "| {keys} | {} | {fill:.2} s | {median:.2} ms | {p95:.2} ms | {max:.2} ms | {peak:.0} B | {reported:.0} B | {base:.0} MB |",
                if with { "yes" } else { "no" },
            );
        }
    }
    if max_keys >= INDEX_DOUBLING {
        index_doubling(dir).await?;
    }
    Ok(())
}

/// Keys at which the key index, 2^21 buckets, holds 7/8 of its buckets and doubles.
const INDEX_DOUBLING: u64 = 1_835_008;

/// The 100-row batches that take the state past [`INDEX_DOUBLING`] keys: the worst one pays for
/// growing the index.
async fn index_doubling(dir: &Path) -> Result<()> {
    let keys = INDEX_DOUBLING - 2_000;
    let [_, median, p95, max, ..] = state_in_child(dir, keys, false).await?;
    println!("\nThe same from {keys} keys, so that the timed batches' new keys take the key index past");
    println!("{INDEX_DOUBLING} keys, where a single table of 2^21 buckets doubles (the index is 64 tables that");
    println!("grow one at a time): median {median:.2} ms, p95 {p95:.2} ms, **max {max:.2} ms**.");
    Ok(())
}

/// The fixed cost of a SQL step per batch: a 1-row batch through a projection and filter, run
/// by the step (physical plan made once, re-run per batch) beside DataFusion planning the same
/// query afresh for each batch (what the step did before plans were cached).
pub(super) async fn fixed_cost() -> Result<()> {
    use datafusion::prelude::SessionContext;
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
    let sql = "SELECT k, upper(k) AS u, length(k) AS n FROM input WHERE k <> ''";
    let batch = key_batch(&schema, std::iter::once(7))?;
    let mut step = SqlStep::try_new(0, sql, schema.clone(), OutputMode::Append, None).await?;
    let mut cached = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        step.process(i, 0, None, vec![batch.clone()], OutputMode::Append).await?;
        cached.push(t.elapsed());
    }
    let ctx = SessionContext::new();
    let mut planned = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let table = datafusion::datasource::MemTable::try_new(schema.clone(), vec![vec![batch.clone()]])
            .map_err(|e| Error::Internal(e.to_string()))?;
        let _ = ctx.deregister_table("input");
        ctx.register_table("input", Arc::new(table)).map_err(|e| Error::Internal(e.to_string()))?;
        let df = ctx.sql(sql).await.map_err(|e| Error::Internal(e.to_string()))?;
        df.collect().await.map_err(|e| Error::Internal(e.to_string()))?;
        planned.push(t.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!("\n## Fixed cost of a SQL step per batch (1-row batch, projection + filter, median of 300)\n");
    println!("| plan | per batch |");
    println!("|---|---|");
    println!("| made once, re-run per batch (the SQL step) | {:.3} ms |", median(&mut cached));
    println!("| planned afresh per batch (DataFusion `sql` + `collect`) | {:.3} ms |", median(&mut planned));
    Ok(())
}

/// One query over `dir`: word count (plugin + SQL count, complete mode) or split → noop.
async fn growth_run(session: &Session, dir: &Path, split_words: &Path, count: bool) -> Result<(Duration, u64)> {
    reset_peak();
    let (base, _) = rss();
    let df = session
        .read_stream()
        .format("text")
        .option("maxFilesPerTrigger", 1)
        .load_path(dir)
        .plugin(split_words, [("column", "value"), ("output", "word")]);
    let df = if count { df.sql("SELECT word, count(*) AS count FROM input GROUP BY word") } else { df };
    let mode = if count { OutputMode::Complete } else { OutputMode::Append };
    let t = Instant::now();
    let q = df.write_stream().format("noop").output_mode(mode).trigger(Trigger::AvailableNow).start().await?;
    q.await_termination().await?;
    let elapsed = t.elapsed();
    let (_, peak) = rss();
    Ok((elapsed, peak.saturating_sub(base)))
}

/// The `growth` section: `lines` and 10 × `lines`.
pub(super) async fn growth(dir: &Path, lines: usize, split_words: &Path) -> Result<()> {
    let session = Session::try_new()?;
    println!("\n## Growth: word count and split → noop over N and 10 × N lines (batches of 100 000 lines)\n");
    println!("| lines | query | time | lines/s | peak RSS above start |");
    println!("|---|---|---|---|---|");
    for n in [lines, lines * 10] {
        let data = dir.join(format!("lines-{n}"));
        println!("generating {n} lines in {} ...", data.display());
        // Files of 100 000 lines, one per batch: the batch stays the same size as N grows.
        super::generate(&data, n, n.div_ceil(100_000))?;
        let _ = growth_run(&session, &data, split_words, false).await?;
        for (name, count) in [("split_words → SQL count (complete)", true), ("split_words → noop", false)] {
            let (t, peak) = growth_run(&session, &data, split_words, count).await?;
            let s = t.as_secs_f64();
            println!("| {n} | {name} | {s:.2} s | {:.2} M | {:.0} MB |", n as f64 / s / 1e6, peak as f64 / 1e6);
        }
    }
    Ok(())
}

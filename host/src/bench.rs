//! `sluice bench`: the word-count benchmark and the Wasm boundary costs, printed as Markdown.
//!
//! - Word count over a generated input (20 files): (a) the `split_words` plugin + SQL count,
//!   (b) pure SQL; lines/s and MB/s from query start to end.
//! - Start-up: from `start()` to the first batch committed, with the plugin's compiled form
//!   already cached.
//! - Boundary cost: one `identity` plugin call per batch at 1k, 8k, 64k and 1M rows, beside a
//!   native IPC round trip of the same batch.
//! - A Wasm filter (even values) against the same filter in native Rust over IPC.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::plugin::wire::{decode_batch, decode_stream, encode_batch, encode_stream};
use crate::plugin::{CallContext, PluginRuntime, Role, RuntimeConfig, default_cache_dir};
use crate::spec::{PluginLimits, PluginSpec};
use crate::{OutputMode, Session, Trigger};

const VOCABULARY: usize = 5000;

fn word(i: u64) -> String {
    const SYL: [&str; 16] =
        ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "hu", "ja", "ke", "zu"];
    let mut s = String::new();
    let mut x = i;
    loop {
        s.push_str(SYL[(x % 16) as usize]);
        x /= 16;
        if x == 0 {
            break;
        }
    }
    s
}

/// Writes `lines` lines of text over 20 files in `dir` (once; reused if already there).
fn generate(dir: &Path, lines: usize) -> Result<u64> {
    let marker = dir.join(format!("_lines_{lines}"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    if !marker.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let words: Vec<String> = (0..VOCABULARY as u64).map(word).collect();
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let per_file = lines.div_ceil(20);
        for f in 0..20 {
            let mut text = String::with_capacity(per_file * 48);
            for _ in 0..per_file.min(lines.saturating_sub(f * per_file)) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = 3 + (x % 10) as usize;
                for j in 0..n {
                    // Zipf-like: small ids are far more frequent, as in real text.
                    let r = (x.rotate_left(j as u32 * 7) % 1_000_000) as f64 / 1_000_000.0;
                    let id = ((VOCABULARY as f64).powf(r) as usize).min(VOCABULARY - 1);
                    if j > 0 {
                        text.push(' ');
                    }
                    text.push_str(&words[id]);
                }
                text.push('\n');
            }
            let path = dir.join(format!("part-{f:02}.txt"));
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        std::fs::write(&marker, b"").map_err(io(&marker))?;
    }
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        bytes += e.map_err(io(dir))?.metadata().map_err(io(dir))?.len();
    }
    Ok(bytes)
}

async fn wordcount(session: &Session, dir: &Path, plugin: Option<&Path>) -> Result<(Duration, u64)> {
    let df = session.read_stream().format("text").option("maxFilesPerTrigger", 4).load_path(dir);
    let df = match plugin {
        Some(p) => df.plugin(p, [("column", "value"), ("output", "word")]),
        None => df.sql("SELECT explode(split(value, ' ')) AS word FROM input"),
    };
    let started = Instant::now();
    let q = df
        .sql("SELECT word, count(*) AS count FROM input GROUP BY word")
        .write_stream()
        .format("noop")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    q.await_termination().await?;
    let elapsed = started.elapsed();
    let groups = q.last_progress().and_then(|p| p.state_operators.first().map(|s| s.num_rows_total)).unwrap_or(0);
    Ok((elapsed, groups))
}

fn batch(rows: usize) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("value", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let values: Int64Array = (0..rows as i64).collect();
    let text: StringArray = (0..rows).map(|i| Some(word(i as u64 % 997))).collect();
    Ok(RecordBatch::try_new(schema, vec![Arc::new(values), Arc::new(text)])?)
}

fn native_filter(schema: &SchemaRef, input: &RecordBatch) -> Result<RecordBatch> {
    // The same work the plugin does, natively: IPC in, filter, IPC out.
    let batches = decode_batch(schema, encode_batch(std::slice::from_ref(input))?)?;
    let b = &batches[0];
    let col = b.column(0).as_any().downcast_ref::<Int64Array>().ok_or_else(|| Error::Internal("i64".into()))?;
    let keep: BooleanArray = col.values().iter().map(|v| Some(v % 2 == 0)).collect();
    let out = arrow_select::filter::filter_record_batch(b, &keep)?;
    let out = decode_batch(schema, encode_batch(&[out])?)?;
    Ok(out.into_iter().next().unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

fn best<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

fn plugin_path(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let p = dir.join(format!("{name}.wasm"));
    if !p.exists() {
        return Err(Error::config(format!("{} is missing: run scripts/build-plugins.sh first", p.display())));
    }
    Ok(p)
}

/// Runs the benchmark and prints the results.
pub async fn run(lines: usize, plugins: &Path, dir: &Path) -> Result<()> {
    let split_words = plugin_path(plugins, "split_words")?;
    let identity = plugin_path(plugins, "identity")?;
    let filter = plugin_path(plugins, "filter")?;
    println!("generating {lines} lines over 20 files in {} ...", dir.display());
    let bytes = generate(dir, lines)?;
    let mb = bytes as f64 / (1 << 20) as f64;
    let session = Session::try_new()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    // Warm the compiled-component cache.
    let _ = wordcount(&session, dir, Some(&split_words)).await?;
    println!("\n## Word count ({lines} lines, {mb:.1} MB, 20 files, maxFilesPerTrigger=4, {cores} cores)\n");
    println!("| pipeline | time | lines/s | MB/s | distinct words |");
    println!("|---|---|---|---|---|");
    for (name, plugin) in [("(a) split_words plugin + SQL count", Some(split_words.as_path())), ("(b) pure SQL", None)]
    {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(wordcount(&session, dir, plugin).await?);
        }
        let (t, groups) = runs.iter().min_by_key(|r| r.0).copied().unwrap_or_default();
        let s = t.as_secs_f64();
        println!("| {name} | {:.2} s | {:.2} M | {:.1} | {groups} |", s, lines as f64 / s / 1e6, mb / s);
    }

    // Checkpointing cost: the same word count, 100k-line batches, with and without a checkpoint.
    println!("\n## Checkpointing cost (plugin word count, 1 file = {} lines per batch, 20 batches)\n", lines / 20);
    println!("| checkpoint | time | lines/s | cost |");
    println!("|---|---|---|---|");
    let mut base = None;
    for with in [false, true] {
        let mut best_t = Duration::MAX;
        for run in 0..3 {
            let ckpt = dir.join(format!("_ckpt_{run}"));
            let _ = std::fs::remove_dir_all(&ckpt);
            let df = session.read_stream().format("text").option("maxFilesPerTrigger", 1).load_path(dir);
            let mut w = df
                .plugin(&split_words, [("column", "value")])
                .sql("SELECT word, count(*) AS count FROM input GROUP BY word")
                .write_stream()
                .format("noop")
                .output_mode(OutputMode::Update)
                .trigger(Trigger::AvailableNow);
            if with {
                w = w.option("checkpointLocation", ckpt.display());
            }
            let t = Instant::now();
            let q = w.start().await?;
            q.await_termination().await?;
            best_t = best_t.min(t.elapsed());
            let _ = std::fs::remove_dir_all(&ckpt);
        }
        let s = best_t.as_secs_f64();
        let cost = match base {
            None => {
                base = Some(s);
                "—".to_string()
            }
            Some(b) => format!("{:+.1}%", (s / b - 1.0) * 100.0),
        };
        println!(
            "| {} | {:.2} s | {:.2} M | {cost} |",
            if with { "every batch" } else { "none" },
            s,
            lines as f64 / s / 1e6
        );
    }

    // Start-up with a cached compiled plugin: start() to first batch committed.
    let small = dir.join("_startup");
    std::fs::create_dir_all(&small).map_err(|source| Error::Io { path: small.clone(), source })?;
    let f = small.join("a.txt");
    std::fs::write(&f, "hello world\n").map_err(|source| Error::Io { path: f.clone(), source })?;
    let mut startup = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let q = session
            .read_stream()
            .format("text")
            .load_path(&small)
            .plugin(&split_words, [("column", "value")])
            .sql("SELECT word, count(*) AS n FROM input GROUP BY word")
            .write_stream()
            .format("noop")
            .output_mode(OutputMode::Complete)
            .trigger(Trigger::AvailableNow)
            .start()
            .await?;
        q.await_termination().await?;
        startup = startup.min(t.elapsed());
    }
    println!(
        "\nStart-up, cached plugin: `start()` to first batch committed: **{:.1} ms** (best of 5)",
        startup.as_secs_f64() * 1e3
    );

    boundary(plugins, &identity, &filter).await
}

/// A native IPC round trip of `b` (host encodes, guest decodes, guest encodes, host decodes)
/// in each wire format.
fn round_trips(b: &RecordBatch, reps: usize) -> Result<(Duration, Duration)> {
    let schema = b.schema();
    let stream = best(reps, || {
        let (_, x) = decode_stream(encode_stream(&schema, std::slice::from_ref(b))?)?;
        let (_, _y) = decode_stream(encode_stream(&schema, &x)?)?;
        Ok(())
    })?;
    let messages = best(reps, || {
        let x = decode_batch(&schema, encode_batch(std::slice::from_ref(b))?)?;
        let _y = decode_batch(&schema, encode_batch(&x)?)?;
        Ok(())
    })?;
    Ok((stream, messages))
}

/// The Wasm boundary: wire formats side by side, the identity plugin's call cost in both
/// contract versions, and a Wasm filter against a native one.
async fn boundary(plugins: &Path, identity: &Path, filter: &Path) -> Result<()> {
    let runtime = PluginRuntime::try_new(RuntimeConfig::new(&default_cache_dir()))?;
    let limits = PluginLimits::default().memory(2 << 30);
    let id = runtime.load(&PluginSpec::new(identity).limits(limits), Role::Transform).await?;
    let fixture = plugins.join("../../tests/fixtures/identity-0.1.0.wasm");
    let old = match fixture.exists() {
        true => Some(runtime.load(&PluginSpec::new(&fixture).limits(limits), Role::Transform).await?),
        false => None,
    };
    let fl = runtime.load(&PluginSpec::new(filter).limits(limits), Role::Transform).await?;
    let ctx = CallContext {
        query_id: Arc::from("bench"),
        batch_id: 0,
        attempt: 0,
        partition: 0,
        num_partitions: 1,
        watermark_ms: None,
        batch_timestamp_ms: 0,
    };
    println!("\n## Wasm boundary: one `process` call of the identity plugin, and the wire formats natively\n");
    println!("| rows/batch | wasm call, 0.2.0 (IPC messages) | wasm call, 0.1.0 (IPC stream) | native round trip, IPC stream | native round trip, IPC messages | per row (0.2.0) |");
    println!("|---|---|---|---|---|---|");
    for rows in [1_000usize, 8_192, 65_536, 1_000_000] {
        let b = batch(rows)?;
        let schema = b.schema();
        let reps = if rows >= 1_000_000 { 5 } else { 200 };
        let mut inst = id.transformer("bench", &schema).await?;
        let mut wasm = Duration::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            let out = inst.process(&ctx, &schema, std::slice::from_ref(&b)).await?;
            wasm = wasm.min(t.elapsed());
            debug_assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
        }
        let mut wasm_old = None;
        if let Some(old) = &old {
            let mut inst = old.transformer("bench", &schema).await?;
            let mut best_old = Duration::MAX;
            for _ in 0..reps {
                let t = Instant::now();
                let _ = inst.process(&ctx, &schema, std::slice::from_ref(&b)).await?;
                best_old = best_old.min(t.elapsed());
            }
            wasm_old = Some(best_old);
        }
        let (stream, messages) = round_trips(&b, reps)?;
        println!(
            "| {rows} | {:.1} µs | {} | {:.1} µs | {:.1} µs | {:.1} ns |",
            wasm.as_secs_f64() * 1e6,
            wasm_old.map(|d| format!("{:.1} µs", d.as_secs_f64() * 1e6)).unwrap_or_else(|| "(no fixture)".into()),
            stream.as_secs_f64() * 1e6,
            messages.as_secs_f64() * 1e6,
            wasm.as_secs_f64() * 1e9 / rows as f64
        );
    }

    println!("\n## Filter (keep even values): Wasm plugin vs the same filter in native Rust over IPC\n");
    println!("| rows/batch | wasm | native | wasm / native |");
    println!("|---|---|---|---|");
    for rows in [65_536usize, 1_000_000] {
        let b = batch(rows)?;
        let schema = b.schema();
        let mut inst = fl.transformer("bench", &schema).await?;
        let reps = if rows >= 1_000_000 { 5 } else { 50 };
        let mut wasm = Duration::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            let _ = inst.process(&ctx, &schema, std::slice::from_ref(&b)).await?;
            wasm = wasm.min(t.elapsed());
        }
        let native = best(reps, || native_filter(&schema, &b).map(|_| ()))?;
        println!(
            "| {rows} | {:.2} ms | {:.2} ms | {:.2}x |",
            wasm.as_secs_f64() * 1e3,
            native.as_secs_f64() * 1e3,
            wasm.as_secs_f64() / native.as_secs_f64()
        );
    }
    Ok(())
}

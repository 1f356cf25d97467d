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

mod growth;
pub mod latency;
mod windowed;

pub use growth::state_child;

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

/// Writes `lines` lines of text over `files` files in `dir` (once; reused if already there).
fn generate(dir: &Path, lines: usize, files: usize) -> Result<u64> {
    let marker = dir.join(format!("_lines_{lines}_{files}"));
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
        let per_file = lines.div_ceil(files);
        for f in 0..files {
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
            let path = dir.join(format!("part-{f:04}.txt"));
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

/// The filter plugin's work natively: IPC in, filter, IPC out; with arrow's kernel or the
/// SDK's (`sdk` = true, the one the plugin uses).
fn native_filter(schema: &SchemaRef, input: &RecordBatch, sdk: bool) -> Result<RecordBatch> {
    let batches = decode_batch(schema, encode_batch(std::slice::from_ref(input))?)?;
    let b = &batches[0];
    let col = b.column(0).as_any().downcast_ref::<Int64Array>().ok_or_else(|| Error::Internal("i64".into()))?;
    // The plugin's modulo and remainder come from its config: keep them opaque here too, or
    // the compiler turns `% 2` into a bit test that the plugin's code cannot use.
    let (m, r) = (std::hint::black_box(2i64), std::hint::black_box(0i64));
    let keep = BooleanArray::from_unary(col, |v| v.wrapping_rem(m) == r);
    let out = match sdk {
        true => sluice_sdk::filter::filter_record_batch(b, &keep)?,
        false => arrow_select::filter::filter_record_batch(b, &keep)?,
    };
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

/// Runs the benchmark sections (`wordcount`, `boundary`, `filter`, `roles`, `state`, `growth`, `windowed`; all when
/// `only` is empty) and prints the results. `max_keys` caps the `state` section's sizes.
pub async fn run(lines: usize, plugins: &Path, dir: &Path, only: &[String], max_keys: u64) -> Result<()> {
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    const SECTIONS: [&str; 7] = ["wordcount", "boundary", "filter", "roles", "state", "growth", "windowed"];
    if let Some(bad) = only.iter().find(|o| !SECTIONS.contains(&o.as_str())) {
        let message = format!("unknown bench section {bad:?}; the sections are {}", SECTIONS.join(", "));
        return Err(Error::Config { location: None, message });
    }
    if want("wordcount") {
        wordcount_section(lines, plugins, dir).await?;
    }
    if want("boundary") {
        boundary(plugins, &plugin_path(plugins, "identity")?).await?;
    }
    if want("filter") {
        filter(&plugin_path(plugins, "filter")?).await?;
    }
    if want("roles") {
        roles(plugins, dir).await?;
    }
    if want("state") {
        growth::fixed_cost().await?;
        growth::state(dir, max_keys).await?;
    }
    if want("growth") {
        growth::growth(dir, lines, &plugin_path(plugins, "split_words")?).await?;
    }
    if want("windowed") {
        windowed::windowed(dir, lines).await?;
    }
    Ok(())
}

async fn wordcount_section(lines: usize, plugins: &Path, dir: &Path) -> Result<()> {
    let split_words = plugin_path(plugins, "split_words")?;
    println!("generating {lines} lines over 20 files in {} ...", dir.display());
    let bytes = generate(dir, lines, 20)?;
    let mb = bytes as f64 / (1 << 20) as f64;
    let session = Session::try_new()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    // Warm the compiled-component cache.
    let _ = wordcount(&session, dir, Some(&split_words)).await?;
    println!("\n## Word count ({lines} lines, {mb:.1} MB, 20 files, maxFilesPerTrigger=4, {cores} cores)\n");
    println!("| pipeline | time | lines/s | MB/s | distinct words |");
    println!("|---|---|---|---|---|");
    // Fuel metering (instruction counting, what `limits.fuel` needs) is a runtime-wide switch.
    let mut metered = RuntimeConfig::new(&default_cache_dir());
    metered.fuel = true;
    let fuel_session = Session::with_config(metered)?;
    let _ = wordcount(&fuel_session, dir, Some(&split_words)).await?;
    let rows = [
        ("(a) split_words plugin + SQL count", Some(split_words.as_path()), &session),
        ("(a') the same, fuel metering on", Some(split_words.as_path()), &fuel_session),
        ("(b) pure SQL", None, &session),
    ];
    for (name, plugin, session) in rows {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(wordcount(session, dir, plugin).await?);
        }
        let (t, groups) = runs.iter().min_by_key(|r| r.0).copied().unwrap_or_default();
        let s = t.as_secs_f64();
        println!("| {name} | {:.2} s | {:.2} M | {:.1} | {groups} |", s, lines as f64 / s / 1e6, mb / s);
    }
    println!(
        "\nSpark on the same files: `python bench/spark/wordcount.py {}` (pyspark 4.x, local[2]); \
         the whole process: `time sluice run bench/wordcount.toml`.",
        dir.display()
    );

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

    Ok(())
}

/// A native IPC round trip of `b` (host encodes, guest decodes, guest encodes, host decodes)
/// in each wire format.
/// Arrow buffers in a WIT record instead of IPC: each buffer of each column lowered on its own
/// (a copy each, as a `list<list<u8>>` is), then every array rebuilt and validated on the
/// other side. Flat columns only: WIT types cannot be recursive, so nested types would need a
/// flattened encoding of their own.
fn via_buffers(b: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{ArrayData, make_array};
    let mut columns = Vec::with_capacity(b.num_columns());
    for c in b.columns() {
        let d = c.to_data();
        let nulls = d.nulls().map(|n| n.buffer().as_slice().to_vec());
        let buffers: Vec<Vec<u8>> = d.buffers().iter().map(|x| x.as_slice().to_vec()).collect();
        let mut builder = ArrayData::builder(d.data_type().clone())
            .len(d.len())
            .offset(d.offset())
            .buffers(buffers.into_iter().map(arrow_buffer::Buffer::from_vec).collect());
        if let Some(n) = nulls {
            builder = builder.null_bit_buffer(Some(arrow_buffer::Buffer::from_vec(n)));
        }
        columns.push(make_array(builder.build()?));
    }
    Ok(RecordBatch::try_new(b.schema(), columns)?)
}

fn round_trips(b: &RecordBatch, reps: usize) -> Result<(Duration, Duration, Duration)> {
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
    let buffers = best(reps, || {
        let x = via_buffers(b)?;
        let _y = via_buffers(&x)?;
        Ok(())
    })?;
    Ok((stream, messages, buffers))
}

/// The context of every call the boundary and filter sections make.
fn bench_context() -> CallContext {
    CallContext {
        query_id: Arc::from("bench"),
        batch_id: 0,
        attempt: 0,
        partition: 0,
        num_partitions: 1,
        watermark_ms: None,
        batch_timestamp_ms: 0,
    }
}

/// The Wasm boundary: wire formats side by side and the identity plugin's call cost in both
/// contract versions.
async fn boundary(plugins: &Path, identity: &Path) -> Result<()> {
    let runtime = PluginRuntime::try_new(RuntimeConfig::new(&default_cache_dir()))?;
    let limits = PluginLimits::default().memory(2 << 30);
    let id = runtime.load(&PluginSpec::new(identity).limits(limits), Role::Transform).await?;
    let fixture = plugins.join("../../tests/fixtures/identity-0.1.0.wasm");
    let old = match fixture.exists() {
        true => Some(runtime.load(&PluginSpec::new(&fixture).limits(limits), Role::Transform).await?),
        false => None,
    };
    // evil_raw in an unknown mode hands the input bytes back untouched: the boundary without a
    // guest-side codec.
    let raw = runtime
        .load(
            &PluginSpec::new(plugin_path(plugins, "evil_raw")?).config("mode", "passthrough").limits(limits),
            Role::Transform,
        )
        .await?;
    let ctx = bench_context();
    println!("\n## Wasm boundary: one `process` call of the identity plugin, and the wire formats natively\n");
    println!(
        "| rows/batch | wasm call, 0.2.0 (IPC messages) | wasm call, 0.1.0 (IPC stream) | native round trip: IPC stream | IPC messages | buffers in a record | per row (0.2.0) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut parts = None;
    for rows in [1_000usize, 8_192, 65_536, 1_000_000] {
        let b = batch(rows)?;
        let schema = b.schema();
        let reps = if rows >= 1_000_000 { 5 } else { 200 };
        let mut inst = id.transformer("bench", &schema).await?;
        if parts.is_none() {
            // Where a small call's time goes: the call machinery alone (a `finish-batch` that
            // returns nothing), and the host's half of the codec.
            let mut empty = Duration::MAX;
            for _ in 0..reps * 5 {
                let t = Instant::now();
                let _ = inst.finish_batch(&ctx).await?;
                empty = empty.min(t.elapsed());
            }
            let bytes = encode_batch(std::slice::from_ref(&b))?;
            let enc = best(reps * 5, || Ok(encode_batch(std::slice::from_ref(&b)).map(|_| ())?))?;
            let dec = best(reps * 5, || Ok(decode_batch(&schema, bytes.clone()).map(|_| ())?))?;
            parts = Some((rows, empty, enc, dec));
        }
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
        let (stream, messages, buffers) = round_trips(&b, reps)?;
        let mut pass = raw.transformer("bench", &schema).await?;
        let mut passthrough = Duration::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            let _ = pass.process(&ctx, &schema, std::slice::from_ref(&b)).await?;
            passthrough = passthrough.min(t.elapsed());
        }
        println!(
            "| {rows} | {:.1} µs ({:.1} µs without the guest codec) | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} ns |",
            wasm.as_secs_f64() * 1e6,
            passthrough.as_secs_f64() * 1e6,
            wasm_old.map(|d| format!("{:.1} µs", d.as_secs_f64() * 1e6)).unwrap_or_else(|| "(no fixture)".into()),
            stream.as_secs_f64() * 1e6,
            messages.as_secs_f64() * 1e6,
            buffers.as_secs_f64() * 1e6,
            wasm.as_secs_f64() * 1e9 / rows as f64
        );
    }

    if let Some((rows, empty, enc, dec)) = parts {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "\nAt {rows} rows: the call machinery alone (an empty `finish-batch`) {:.1} µs; the host encodes the batch in {:.1} µs and decodes one in {:.1} µs.",
            us(empty),
            us(enc),
            us(dec)
        );
    }
    Ok(())
}

/// A Wasm filter plugin against the same filter natively, over the same codec.
async fn filter(plugin: &Path) -> Result<()> {
    let runtime = PluginRuntime::try_new(RuntimeConfig::new(&default_cache_dir()))?;
    let limits = PluginLimits::default().memory(2 << 30);
    let fl = runtime.load(&PluginSpec::new(plugin).limits(limits), Role::Transform).await?;
    let ctx = bench_context();
    println!("\n## Filter (keep even values): Wasm plugin vs the same filter in native Rust over IPC\n");
    println!("The plugin filters with the SDK's kernel; natively both arrow's and the SDK's run, and");
    println!("the ratio is against the faster.\n");
    println!("| rows/batch | wasm | native (arrow's kernel) | native (SDK's kernel) | wasm / native |");
    println!("|---|---|---|---|---|");
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
        let arrow = best(reps, || native_filter(&schema, &b, false).map(|_| ()))?;
        let sdk = best(reps, || native_filter(&schema, &b, true).map(|_| ()))?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {rows} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}x |",
            ms(wasm),
            ms(arrow),
            ms(sdk),
            wasm.as_secs_f64() / arrow.min(sdk).as_secs_f64()
        );
    }
    Ok(())
}

/// Runs `text` (a pipeline file) to its end and returns the time from start to end and the
/// rows the source read.
async fn run_pipeline(session: &Session, text: &str, base: &Path) -> Result<(Duration, u64)> {
    let spec = crate::spec::PipelineSpec::from_toml(text, "bench.toml", base)?;
    let t = Instant::now();
    let q = session.start(&spec).await?;
    q.await_termination().await?;
    let rows = q.recent_progress().iter().map(|p| p.num_input_rows).sum();
    Ok((t.elapsed(), rows))
}

/// Plugins in every role against built-in parts doing the same: a source plugin and the rate
/// source, a foreachBatch plugin and the built-in JSON file sink.
async fn roles(plugins: &Path, dir: &Path) -> Result<()> {
    const ROWS: u64 = 2_000_000;
    let session = Session::try_new()?;
    let p = plugins.canonicalize().map_err(|source| Error::Io { path: plugins.to_path_buf(), source })?;
    let work = dir.join("roles");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|source| Error::Io { path: work.clone(), source })?;
    let work = work.canonicalize().map_err(|source| Error::Io { path: work.clone(), source })?;
    let seq = format!(
        "[source]\nformat = \"plugin\"\nplugin = \"{}/sequence.wasm\"\nconfig = {{ rows_per_batch = 200000, end = {ROWS}, partitions = 2 }}\n",
        p.display()
    );
    // The rate source makes rowsPerSecond rows per second of wall time: it runs for 3 s and its
    // figure is the rows it processed over the time its batches took.
    let rate = format!("[source]\nformat = \"rate\"\noptions = {{ rowsPerSecond = {ROWS}, numPartitions = 2 }}\n");
    let identity = format!("[[transform]]\nplugin = \"{}/identity.wasm\"\n", p.display());
    let cases: Vec<(&str, String)> = vec![
        (
            "`sequence` plugin → identity → noop",
            format!("{seq}{identity}[sink]\nformat = \"noop\"\n[trigger]\navailable_now = true\n"),
        ),
        (
            "`sequence` plugin → identity → `jsonl_dir` plugin (foreachBatch)",
            format!(
                "checkpoint_location = \"{w}/ckpt-a\"\n{seq}{identity}[sink]\nformat = \"foreach_batch\"\nplugin = \"{p}/jsonl_dir.wasm\"\ngrants = {{ dirs = [{{ host = \"{w}/out-a\", guest = \"/out\", read_only = false }}] }}\n[trigger]\navailable_now = true\n",
                w = work.display(),
                p = p.display()
            ),
        ),
        (
            "`sequence` plugin → identity → built-in `json` file sink",
            format!(
                "checkpoint_location = \"{w}/ckpt-b\"\n{seq}{identity}[sink]\nformat = \"json\"\npath = \"{w}/out-b\"\n[trigger]\navailable_now = true\n",
                w = work.display()
            ),
        ),
    ];
    println!("\n## Plugins in every role, beside built-in parts ({ROWS} rows, best of 3)\n");
    println!("| pipeline | time | rows/s |");
    println!("|---|---|---|");
    for (name, text) in cases {
        let mut best: Option<(Duration, u64)> = None;
        for _ in 0..3 {
            for d in ["ckpt-a", "ckpt-b", "out-a", "out-b"] {
                let _ = std::fs::remove_dir_all(work.join(d));
            }
            if text.contains("\"rate\"") {
                // Let a second of rows become available, then take them in one batch.
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            let r = run_pipeline(&session, &text, &work).await?;
            if best.is_none_or(|b| r.0 < b.0) {
                best = Some(r);
            }
        }
        let (t, rows) = best.unwrap_or_default();
        println!("| {name} | {:.2} s | {:.2} M |", t.as_secs_f64(), rows as f64 / t.as_secs_f64().max(1e-9) / 1e6);
    }
    // Batches every 250 ms (~500 k rows each): long enough for progress's millisecond
    // durations to add up to the time the batches took.
    let spec = crate::spec::PipelineSpec::from_toml(
        &format!("{rate}{identity}[sink]\nformat = \"noop\"\n[trigger]\nprocessing_time = \"250ms\"\n"),
        "bench.toml",
        &work,
    )?;
    let q = session.start(&spec).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    q.stop().await;
    let progress = q.recent_progress();
    let rows: u64 = progress.iter().map(|p| p.num_input_rows).sum();
    let ms: u64 = progress.iter().map(|p| p.batch_duration).sum();
    println!(
        "| built-in `rate` source (2 M rows/s offered, a batch every 250 ms) → identity → noop, 3 s | {:.2} s busy, {} rows | {:.2} M |",
        ms as f64 / 1e3,
        rows,
        rows as f64 / (ms.max(1) as f64 / 1e3) / 1e6
    );
    Ok(())
}

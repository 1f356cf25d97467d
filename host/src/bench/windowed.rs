//! `sluice bench --only windowed`: event time at scale — a windowed count + sum over 2 M JSON
//! events (20 files, one per batch) with a 10-minute watermark in append mode, the input of
//! `bench/spark/windowed.py` (made the same way as `bench/spark/gen_events.py` makes it), so
//! Spark can run the same query on the same files.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::{OutputMode, Session, Trigger};

/// The query, as Spark's `withWatermark("ts", "10 minutes").groupBy(window("ts", "5 minutes"),
/// "key").agg(count("*"), sum("value"))`.
const QUERY: &str = "SELECT window(ts, '5 minutes'), key, count(*) AS count, sum(value) AS sum FROM input GROUP BY window(ts, '5 minutes'), key";

/// Writes `events` events over 20 files (`events-00.json` ...): event i at 2026-01-01 plus
/// i × 50 ms minus up to a minute of disorder, key `k<i*31 % 1000>`, value `i % 100`.
fn generate(dir: &Path, events: usize) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let per_file = events.div_ceil(20);
    let base = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(1_767_225_600_000).unwrap_or_default();
    for f in 0..20 {
        let path = dir.join(format!("events-{f:02}.json"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
        for i in f * per_file..((f + 1) * per_file).min(events) {
            let i = i as i64;
            let ts = base + chrono::Duration::milliseconds(i * 50 - (i * 7919) % 60_000);
            let ts = ts.format("%Y-%m-%dT%H:%M:%S%.3fZ");
            writeln!(w, r#"{{"ts":"{ts}","key":"k{}","value":{}}}"#, (i * 31) % 1000, i % 100).map_err(io(&path))?;
        }
        w.flush().map_err(io(&path))?;
        // Oldest first is name order.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Generates the events (unless present) and runs the query over them to the end.
pub(super) async fn windowed(dir: &Path, events: usize) -> Result<()> {
    let input = dir.join(format!("events-{events}"));
    if !input.join("events-19.json").exists() {
        println!("generating {events} events over 20 files in {} ...", input.display());
        generate(&input, events)?;
    }
    let session = Session::try_new()?;
    let started = Instant::now();
    let q = session
        .read_stream()
        .format("json")
        .schema("ts TIMESTAMP, key STRING, value BIGINT")
        .option("maxFilesPerTrigger", 1)
        .load_path(&input)
        .with_watermark("ts", "10 minutes")
        .sql(QUERY)
        .write_stream()
        .format("noop")
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    q.await_termination().await?;
    let took = started.elapsed();
    let progress = q.recent_progress();
    let rows: u64 = progress.iter().map(|p| p.num_input_rows).sum();
    let emitted: i64 = progress.iter().map(|p| p.sink.num_output_rows).sum();
    let max_state = progress.iter().filter_map(|p| p.state_operators.first()).map(|o| o.num_rows_total).max();
    let (_, peak) = super::growth::rss();
    println!("\n## Windowed count + sum, 10-minute watermark, append ({rows} events, 20 files, one per batch)\n");
    println!("| engine | time | events/s | windows emitted | state rows (max) | peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| Sluice | {:.2} s | {:.2} M | {emitted} | {} | {:.0} MB |",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64() / 1e6,
        max_state.unwrap_or(0),
        peak as f64 / (1 << 20) as f64
    );
    println!(
        "\nSpark on the same files: `python bench/spark/windowed.py {}` (pyspark 4.x, local[2]).",
        input.display()
    );
    Ok(())
}

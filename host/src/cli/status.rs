//! What `sluice run` shows while a query runs: a status line rewritten in place on a terminal
//! (batch, rates, Kafka lag, watermark; for `available_now`, a bar of how far the source has
//! read towards the offsets available at start), plain lines otherwise; and `sluice logs`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use sluice::{StreamingQuery, StreamingQueryProgress};

/// How often a plain (non-terminal) line is written at most.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct StatusLine {
    enabled: bool,
    /// `available_now`: show a bar of how far the source is towards its end.
    bar: bool,
    /// The sum of the first batch's start offsets (where the bar starts).
    base: Option<f64>,
    tty: bool,
    last_batch: Option<u64>,
    last_plain: Option<Instant>,
    drawn: bool,
}

impl StatusLine {
    pub(crate) fn new(enabled: bool, bar: bool) -> Self {
        StatusLine {
            enabled,
            bar,
            base: None,
            tty: std::io::stderr().is_terminal(),
            last_batch: None,
            last_plain: None,
            drawn: false,
        }
    }

    pub(crate) fn show(&mut self, q: &StreamingQuery) {
        if !self.enabled {
            return;
        }
        let p = q.last_progress();
        let mut text = summary(p.as_ref(), &q.status().message);
        if self.bar
            && let Some(p) = &p
        {
            if self.base.is_none() {
                self.base = q.recent_progress().first().map(|f| offsets_sum(f, |s| s.start_offset.as_ref()));
            }
            if let Some(f) = fraction(p, self.base.unwrap_or(0.0)) {
                text = format!("{} {text}", bar(f));
            }
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
            self.drawn = true;
            return;
        }
        let batch = p.map(|p| p.batch_id);
        let due = self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
        if batch.is_some() && batch != self.last_batch && due {
            let _ = writeln!(err, "{text}");
            self.last_batch = batch;
            self.last_plain = Some(Instant::now());
        }
    }

    /// Ends the line so later output starts on a fresh one.
    pub(crate) fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// The sum of every number in a source offset (file log offsets, Kafka partition offsets, rate
/// rows): a source-neutral measure of how far it has read.
fn offsets_sum(
    p: &StreamingQueryProgress,
    pick: impl Fn(&sluice::SourceProgress) -> Option<&serde_json::Value>,
) -> f64 {
    fn sum(v: &serde_json::Value) -> f64 {
        match v {
            serde_json::Value::Number(n) => n.as_f64().unwrap_or(0.0),
            serde_json::Value::Object(m) => m.values().map(sum).sum(),
            serde_json::Value::Array(a) => a.iter().map(sum).sum(),
            _ => 0.0,
        }
    }
    p.sources.iter().filter_map(pick).map(sum).sum()
}

/// How far the last batch's end is between where the run began and the latest offset.
fn fraction(p: &StreamingQueryProgress, base: f64) -> Option<f64> {
    let end = offsets_sum(p, |s| s.end_offset.as_ref());
    let latest = offsets_sum(p, |s| s.latest_offset.as_ref());
    (latest > base).then(|| ((end - base) / (latest - base)).clamp(0.0, 1.0))
}

fn bar(f: f64) -> String {
    let full = (f * 20.0).round() as usize;
    format!("[{}{}] {:3.0}%", "#".repeat(full), "-".repeat(20 - full.min(20)), f * 100.0)
}

fn summary(p: Option<&StreamingQueryProgress>, status: &str) -> String {
    let Some(p) = p else { return format!("waiting for the first batch | {status}") };
    let rate = |r: Option<f64>| r.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "batch {} | {} rows | in {} rows/s | processed {} rows/s | {} ms",
        p.batch_id,
        p.num_input_rows,
        rate(p.input_rows_per_second),
        rate(p.processed_rows_per_second),
        p.batch_duration
    );
    let lag = p.sources.iter().filter_map(|s| s.metrics.get("maxOffsetsBehindLatest")).next();
    if let Some(lag) = lag {
        s.push_str(&format!(" | lag {lag}"));
    }
    if let Some(w) = p.event_time.get("watermark") {
        s.push_str(&format!(" | watermark {w}"));
    }
    s.push_str(&format!(" | {status}"));
    s
}

/// `sluice logs`: the last `n` events, then (with `follow`) new ones as they come.
pub(crate) async fn print_events(c: &sluice::client::Client, id: &str, n: usize, follow: bool) -> sluice::Result<()> {
    let mut last: Option<serde_json::Value> = None;
    loop {
        let events = c.events(id, if last.is_some() { 1000 } else { n }).await?;
        // Events carry no sequence number: print those after the last one printed.
        let start = match &last {
            Some(l) => events.iter().rposition(|e| e == l).map(|i| i + 1).unwrap_or(0),
            None => 0,
        };
        for e in &events[start..] {
            println!("{e}");
        }
        if let Some(e) = events.last() {
            last = Some(e.clone());
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shows_the_fraction() {
        assert_eq!(bar(0.5), "[##########----------]  50%");
        assert_eq!(bar(1.0), "[####################] 100%");
    }
}

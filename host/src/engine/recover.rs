//! Restart: Spark's recovery rule applied to a checkpoint, and the checks that the query did
//! not change in a way its state cannot follow.

use std::collections::BTreeMap;

use super::Query;
use super::step::Step;
use crate::checkpoint::{Checkpoint, OffsetEntry, Recovery, plan_recovery};
use crate::error::{Error, Result};
use crate::source::Offset;
use crate::state::StateStore;

/// Where a (re)started query begins.
pub(super) struct Resume {
    pub(super) batch_id: u64,
    pub(super) committed: Option<Offset>,
    /// The event-time watermark of the next batch (the re-run batch's, if any).
    pub(super) watermark_ms: i64,
    /// The watermark of the batch before it (late events are judged by it).
    pub(super) prev_watermark_ms: i64,
    /// A logged but uncommitted batch to run again first, exactly as logged.
    pub(super) rerun: Option<OffsetEntry>,
}

impl Resume {
    pub(super) fn fresh() -> Self {
        Resume { batch_id: 0, committed: None, watermark_ms: 0, prev_watermark_ms: 0, rerun: None }
    }
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
pub(super) async fn recover(q: &mut Query, ckpt: &Checkpoint, id: &str) -> Result<Resume> {
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
        Recovery::Fresh => (Resume::fresh(), None, None),
        Recovery::Continue { next } => {
            let last = entry(next - 1).await?;
            // The watermark the last committed batch handed on (Spark's `nextBatchWatermarkMs`).
            let watermark_ms = match ckpt.commit(next - 1).await? {
                Some(c) => c.next_batch_watermark_ms,
                None => last.batch_watermark_ms,
            };
            let resume = Resume {
                batch_id: next,
                committed: end_of(&last),
                watermark_ms,
                prev_watermark_ms: last.batch_watermark_ms,
                rerun: None,
            };
            (resume, Some(next - 1), Some(last))
        }
        Recovery::Rerun { batch } => {
            let e = entry(batch).await?;
            let before = if batch > 0 { Some(entry(batch - 1).await?) } else { None };
            let resume = Resume {
                batch_id: batch,
                committed: before.as_ref().and_then(end_of),
                watermark_ms: e.batch_watermark_ms,
                prev_watermark_ms: before.map_or(0, |b| b.batch_watermark_ms),
                rerun: Some(e.clone()),
            };
            (resume, Some(batch), Some(e))
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
        let store = StateStore::new(ckpt.clone(), i, 0);
        match step {
            Step::Sql(s) if s.is_stateful() => s.attach_state(store, resume.batch_id, ckpt.display()).await?,
            Step::Dedup(d) => d.attach_state(store, resume.batch_id, ckpt.display()).await?,
            _ => {}
        }
    }
    Ok(resume)
}

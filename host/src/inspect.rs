//! Reading a checkpoint from outside a running query: `sluice checkpoint inspect` and the state
//! reader (`sluice checkpoint state`), like Spark's state data source.

use std::path::Path;

use arrow_array::RecordBatch;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::state::StateStore;

/// One batch in a checkpoint.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchReport {
    /// The batch id.
    pub batch_id: u64,
    /// Whether `commits/<id>` exists.
    pub committed: bool,
    /// Logged batch timestamp.
    pub batch_timestamp_ms: i64,
    /// Logged watermark.
    pub watermark_ms: i64,
    /// Logged end offset per source.
    pub offsets: Vec<Option<serde_json::Value>>,
}

/// One stateful operator partition in a checkpoint.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OperatorReport {
    /// Operator id (the step index).
    pub operator: usize,
    /// Partition.
    pub partition: u32,
    /// Latest state version (the state after that many batches).
    pub latest_version: u64,
    /// Versions on disk: (version, is_snapshot).
    pub files: Vec<(u64, bool)>,
    /// Bytes on disk.
    pub bytes: u64,
    /// Keys at the latest version.
    pub keys: u64,
    /// What the state layout depends on.
    pub fingerprint: Option<String>,
}

/// What a checkpoint holds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointReport {
    /// The checkpoint location.
    pub location: String,
    /// The query id.
    pub id: Option<String>,
    /// Logged batches, oldest first (after retention).
    pub batches: Vec<BatchReport>,
    /// Stateful operators.
    pub operators: Vec<OperatorReport>,
}

impl std::fmt::Display for CheckpointReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checkpoint {}", self.location)?;
        writeln!(f, "query id: {}", self.id.as_deref().unwrap_or("(no metadata)"))?;
        let committed = self.batches.iter().filter(|b| b.committed).count();
        writeln!(f, "batches: {} logged, {committed} committed", self.batches.len())?;
        for b in &self.batches {
            let ts = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(b.batch_timestamp_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            let offsets: Vec<String> =
                b.offsets.iter().map(|o| o.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())).collect();
            writeln!(
                f,
                "  batch {:>5}  {}  {ts}  watermark {}  offsets {}",
                b.batch_id,
                if b.committed { "committed  " } else { "UNCOMMITTED" },
                b.watermark_ms,
                offsets.join(" ")
            )?;
        }
        writeln!(f, "state operators: {}", self.operators.len())?;
        for o in &self.operators {
            let snaps = o.files.iter().filter(|(_, s)| *s).count();
            writeln!(
                f,
                "  operator {} partition {}: version {}, {} keys, {} files ({snaps} snapshots), {} bytes; {}",
                o.operator,
                o.partition,
                o.latest_version,
                o.keys,
                o.files.len(),
                o.bytes,
                o.fingerprint.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}

async fn stores(c: &Checkpoint) -> Result<Vec<(usize, u32, StateStore)>> {
    let mut out = Vec::new();
    for op in c.list_dirs("state").await? {
        let Ok(op_id) = op.parse::<usize>() else { continue };
        for part in c.list_dirs(&format!("state/{op}")).await? {
            let Ok(p) = part.parse::<u32>() else { continue };
            out.push((op_id, p, StateStore::new(c.clone(), op_id, p)));
        }
    }
    out.sort_by_key(|(o, p, _)| (*o, *p));
    Ok(out)
}

/// Describes the checkpoint at `location`: batches, offsets, watermark, state sizes.
pub async fn inspect_checkpoint(location: &Path) -> Result<CheckpointReport> {
    let c = Checkpoint::open_existing(location).await?;
    let id = c.metadata().await?.map(|m| m.id);
    let mut batches = Vec::new();
    for b in c.batch_ids("offsets").await? {
        let Some(e) = c.offsets(b).await? else { continue };
        batches.push(BatchReport {
            batch_id: b,
            committed: c.commit(b).await?.is_some(),
            batch_timestamp_ms: e.batch_timestamp_ms,
            watermark_ms: e.batch_watermark_ms,
            offsets: e.sources,
        });
    }
    let mut operators = Vec::new();
    for (op, part, store) in stores(&c).await? {
        let files = store.files().await?;
        let latest = store.latest_version().await?.unwrap_or(0);
        let mut bytes = 0;
        for (v, snap) in &files {
            let ext = if *snap { "snapshot" } else { "delta" };
            bytes += c.size(&format!("state/{op}/{part}/{v}.{ext}")).await?.unwrap_or(0);
        }
        let keys = store.read_table(latest).await?.map(|t| t.num_rows() as u64).unwrap_or(0);
        operators.push(OperatorReport {
            operator: op,
            partition: part,
            latest_version: latest,
            files,
            bytes,
            keys,
            fingerprint: store.schema_fingerprint().await?,
        });
    }
    Ok(CheckpointReport { location: location.display().to_string(), id, batches, operators })
}

/// The state of a stateful operator after batch `batch_id` (default: the latest committed
/// batch), one row per key: the key columns, then each aggregate's state (`a<i>_<field>`).
/// `operator` defaults to the only stateful operator.
pub async fn read_state(location: &Path, operator: Option<usize>, batch_id: Option<u64>) -> Result<RecordBatch> {
    let c = Checkpoint::open_existing(location).await?;
    let all = stores(&c).await?;
    let ops: Vec<usize> = all.iter().map(|(o, _, _)| *o).collect();
    let (op, _, store) = match operator {
        Some(o) => all.into_iter().find(|(x, _, _)| *x == o),
        None if ops.len() == 1 => all.into_iter().next(),
        None => None,
    }
    .ok_or_else(|| Error::config(format!("choose a stateful operator; this checkpoint has operators {ops:?}")))?;
    let batch = match batch_id {
        Some(b) => b,
        None => c
            .batch_ids("commits")
            .await?
            .last()
            .copied()
            .ok_or_else(|| Error::config("no committed batch yet; pass a batch id"))?,
    };
    let version = batch + 1;
    match store.read_table(version).await? {
        Some(t) => Ok(t),
        None => Err(Error::config(format!("operator {op} has no state at batch {batch}"))),
    }
}

//! The state store: versioned keyed state per stateful operator and partition.
//!
//! Version V is the state after batches 0..V-1. Batch N loads version N and writes version N+1
//! as a **delta** (`state/<op>/<part>/<N+1>.delta`: the rows of the keys batch N changed, then
//! one tombstone row per key it removed — the file's schema metadata `sluice.removed` counts
//! them), plus,
//! every `min_deltas_for_snapshot` versions, a **snapshot** (`<V>.snapshot`: every live key's
//! row). Snapshots are encoded and written in the
//! background, streamed as a multipart upload (the whole file is never in memory), so a
//! snapshot batch does not stall the stream; a snapshot that is not there yet
//! (or never landed, after a crash) costs only a longer replay of deltas, which are kept until
//! a later snapshot covers them. Both are Arrow IPC files (a torn file fails to decode and is
//! reported with its path). Loading V
//! reads the latest snapshot at or below V and the deltas after it, in order; for each key the
//! last change wins (a row, or its removal). A re-run of batch N overwrites version N+1, so replays are idempotent.
//! Versions older than the latest snapshot that still covers `min_batches_to_retain` batches
//! are deleted.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Snapshot every this many versions (Spark's `minDeltasForSnapshot`).
pub(crate) const MIN_DELTAS_FOR_SNAPSHOT: u64 = 10;
/// Versions kept for recovery and inspection (Spark's `minBatchesToRetain`).
pub(crate) const MIN_BATCHES_TO_RETAIN: u64 = 100;

/// Schema metadata key of a delta file: how many of its last rows are removals (tombstones).
pub(crate) const REMOVED_METADATA: &str = "sluice.removed";

/// One step of a state's history, as [`StateStore::load`] reads it.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Rows that are their keys' current state.
    Rows(RecordBatch),
    /// Keys removed (their state columns are null).
    Removed(RecordBatch),
}

/// A snapshot's rows, produced batch by batch as they are encoded (off the query loop, on the
/// blocking pool), so only one batch of them exists at a time.
pub(crate) type Snapshot = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// One operator partition's versioned state in a checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct StateStore {
    ckpt: Checkpoint,
    dir: String,
    /// The snapshot being written in the background, if any.
    snapshot: Arc<tokio::sync::Mutex<Option<JoinHandle<Result<()>>>>>,
}

fn encode(schema: &SchemaRef, batches: impl IntoIterator<Item = Result<RecordBatch>>) -> Result<Bytes> {
    let mut w = arrow_ipc::writer::FileWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(&b?)?;
    }
    w.finish()?;
    Ok(Bytes::from(w.into_inner()?))
}

/// Bytes the snapshot encoder hands to the upload at a time.
const PIECE_BYTES: usize = 1 << 20;

/// A `Write` that hands what it is given to an upload in pieces of about [`PIECE_BYTES`]
/// (more if one write is bigger), through a bounded channel: the snapshot encoder (on the
/// blocking pool) holds one piece, the channel another, the upload up to two parts.
struct Pieces {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
}

impl Pieces {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE_BYTES)));
        self.tx.blocking_send(piece).map_err(|_| std::io::Error::other("the snapshot upload stopped"))
    }
}

impl std::io::Write for Pieces {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `batches` as an Arrow IPC file into `rel`, streamed as a multipart upload while it
/// is encoded (on the blocking pool): the whole file is never in memory. The file appears only
/// once complete; a failure on either side leaves nothing.
async fn write_streamed(ckpt: &Checkpoint, rel: &str, schema: SchemaRef, batches: Snapshot) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let encoder = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut pieces = Pieces { buf: Vec::with_capacity(PIECE_BYTES), tx };
        let mut w = arrow_ipc::writer::FileWriter::try_new(&mut pieces, &schema)?;
        for b in batches {
            w.write(&b?)?;
        }
        w.finish()?;
        drop(w);
        if !pieces.buf.is_empty() {
            pieces.send().map_err(|e| Error::Internal(format!("encoding a state snapshot: {e}")))?;
        }
        Ok(())
    });
    let encoded = |r: std::result::Result<Result<()>, tokio::task::JoinError>| {
        r.map_err(|e| Error::Internal(format!("encoding a state snapshot: {e}")))?
    };
    // A file of one piece is one plain write.
    let Some(first) = rx.recv().await else { return encoded(encoder.await) };
    let Some(second) = rx.recv().await else {
        encoded(encoder.await)?;
        return ckpt.put(rel, first).await;
    };
    let mut upload = ckpt.upload(rel).await?;
    let mut failed = None;
    let mut pending = vec![first, second].into_iter();
    while let Some(piece) = match pending.next() {
        Some(p) => Some(p),
        None => rx.recv().await,
    } {
        if let Err(e) = upload.write(piece).await {
            failed = Some(e);
            break;
        }
    }
    drop(rx);
    let result = match failed {
        Some(e) => Err(e),
        None => encoded(encoder.await),
    };
    match result {
        Ok(()) => upload.finish().await,
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

async fn joined(handle: JoinHandle<Result<()>>) -> Result<()> {
    handle.await.map_err(|e| Error::Internal(format!("writing a state snapshot: {e}")))?
}

/// Every block the footer of an Arrow IPC file names must lie inside the file: arrow-ipc
/// allocates a block's stated size before reading it, so a damaged length would abort the
/// process (an allocation failure cannot be caught) instead of failing the read.
fn check_blocks(bytes: &[u8]) -> std::result::Result<(), String> {
    let trailer_at = bytes.len().checked_sub(10).ok_or("too short for an Arrow IPC file")?;
    let mut trailer = [0u8; 10];
    trailer.copy_from_slice(&bytes[trailer_at..]);
    let footer_len = arrow_ipc::reader::read_footer_length(trailer).map_err(|e| e.to_string())?;
    let footer_at = trailer_at.checked_sub(footer_len).ok_or("the footer is longer than the file")?;
    let footer = arrow_ipc::root_as_footer(&bytes[footer_at..trailer_at]).map_err(|e| e.to_string())?;
    let blocks = footer.recordBatches().into_iter().chain(footer.dictionaries()).flat_map(|v| v.iter());
    for b in blocks {
        let (offset, meta, body) = (b.offset(), b.metaDataLength(), b.bodyLength());
        let end = i128::from(offset) + i128::from(meta) + i128::from(body);
        if offset < 0 || meta < 0 || body < 0 || end > footer_at as i128 {
            return Err(format!("a block at {offset} ({meta} + {body} bytes) lies outside the file"));
        }
    }
    Ok(())
}

impl StateStore {
    pub(crate) fn new(ckpt: Checkpoint, operator: usize, partition: u32) -> Self {
        StateStore { ckpt, dir: format!("state/{operator}/{partition}"), snapshot: Default::default() }
    }

    fn decode(&self, rel: &str, bytes: Bytes) -> Result<Vec<RecordBatch>> {
        let corrupt = |reason: String| Error::CorruptCheckpoint { path: self.ckpt.name(rel), reason };
        // arrow-ipc validates what it reads, but some damage trips an assertion inside it
        // instead: a damaged file must be reported, not crash the query.
        check_blocks(&bytes).map_err(corrupt)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let reader = arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
                .map_err(|e| corrupt(e.to_string()))?;
            reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| corrupt(e.to_string()))
        }))
        .unwrap_or_else(|_| Err(corrupt("the file does not decode as Arrow IPC".into())))
    }

    /// Versions present, as (version, is_snapshot), ascending.
    async fn versions(&self) -> Result<Vec<(u64, bool)>> {
        let mut v: Vec<(u64, bool)> = self
            .ckpt
            .list(&self.dir)
            .await?
            .iter()
            .filter_map(|n| {
                let (num, ext) = n.split_once('.')?;
                Some((num.parse().ok()?, ext == "snapshot"))
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// The state at `version`: snapshot rows then each delta's rows and removals, in order (the
    /// last change per key wins).
    pub(crate) async fn load(&self, version: u64) -> Result<Vec<Change>> {
        if version == 0 {
            return Ok(Vec::new());
        }
        let versions = self.versions().await?;
        let base = versions.iter().filter(|(v, snap)| *snap && *v <= version).map(|(v, _)| *v).max().unwrap_or(0);
        let mut out = Vec::new();
        if base > 0 {
            let rel = format!("{}/{base}.snapshot", self.dir);
            let bytes = self.ckpt.read(&rel).await?.ok_or_else(|| Error::Internal(format!("{rel} vanished")))?;
            out.extend(self.decode(&rel, bytes)?.into_iter().map(Change::Rows));
        }
        for v in base + 1..=version {
            let rel = format!("{}/{v}.delta", self.dir);
            let bytes = self.ckpt.read(&rel).await?.ok_or_else(|| Error::CorruptCheckpoint {
                path: self.ckpt.name(&rel),
                reason: format!("missing: state version {version} needs every delta after snapshot {base}"),
            })?;
            let batches = self.decode(&rel, bytes)?;
            let Some(first) = batches.first() else { continue };
            let schema = first.schema();
            let removed: usize = schema.metadata().get(REMOVED_METADATA).and_then(|n| n.parse().ok()).unwrap_or(0);
            let all = arrow_select::concat::concat_batches(&schema, &batches)?;
            let upserts = all.num_rows().checked_sub(removed).ok_or_else(|| Error::CorruptCheckpoint {
                path: self.ckpt.name(&rel),
                reason: format!("{removed} removals in a delta of {} rows", all.num_rows()),
            })?;
            out.push(Change::Rows(all.slice(0, upserts)));
            if removed > 0 {
                out.push(Change::Removed(all.slice(upserts, removed)));
            }
        }
        Ok(out)
    }

    /// Writes `version`: the delta (`delta`'s rows, then a tombstone per key in `removed`, the
    /// key columns of the keys removed) now and, when one is due, a snapshot of `full()` (one
    /// row per live key) in the background. A snapshot still being written when the next is due
    /// makes that one skipped; a failed one fails the next commit.
    pub(crate) async fn commit(
        &self,
        version: u64,
        schema: &SchemaRef,
        delta: &RecordBatch,
        removed: &[arrow_array::ArrayRef],
        full: impl FnOnce() -> Snapshot,
    ) -> Result<()> {
        let n = removed.first().map_or(0, |k| k.len());
        let bytes = if n == 0 {
            encode(schema, [Ok(delta.clone())])?
        } else {
            let mut cols = removed.to_vec();
            cols.extend(
                schema.fields().iter().skip(removed.len()).map(|f| arrow_array::new_null_array(f.data_type(), n)),
            );
            let mut metadata = schema.metadata().clone();
            metadata.insert(REMOVED_METADATA.to_string(), n.to_string());
            let with = Arc::new(arrow_schema::Schema::new_with_metadata(schema.fields().clone(), metadata));
            let tombstones = RecordBatch::try_new(with.clone(), cols)?;
            let delta = RecordBatch::try_new(with.clone(), delta.columns().to_vec())?;
            encode(&with, [Ok(delta), Ok(tombstones)])?
        };
        self.ckpt.put(&format!("{}/{version}.delta", self.dir), bytes).await?;
        let mut slot = self.snapshot.lock().await;
        if slot.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(done) = slot.take()
        {
            joined(done).await?;
        }
        if version.is_multiple_of(MIN_DELTAS_FOR_SNAPSHOT) {
            if slot.is_some() {
                tracing::debug!(dir = %self.dir, version, "the previous state snapshot is still being written; skipping this one");
                return Ok(());
            }
            let (this, schema, snapshot) = (self.clone(), schema.clone(), full());
            *slot = Some(tokio::spawn(async move {
                write_streamed(&this.ckpt, &format!("{}/{version}.snapshot", this.dir), schema, snapshot).await?;
                this.purge(version).await
            }));
        }
        Ok(())
    }

    /// Waits for a snapshot being written and returns its result.
    pub(crate) async fn flush(&self) -> Result<()> {
        let handle = self.snapshot.lock().await.take();
        match handle {
            Some(h) => joined(h).await,
            None => Ok(()),
        }
    }

    async fn purge(&self, current: u64) -> Result<()> {
        let Some(horizon) = current.checked_sub(MIN_BATCHES_TO_RETAIN) else { return Ok(()) };
        let versions = self.versions().await?;
        // The oldest snapshot we must keep: the latest one at or below the horizon.
        let Some(keep_from) = versions.iter().filter(|(v, s)| *s && *v <= horizon).map(|(v, _)| *v).max() else {
            return Ok(());
        };
        for (v, snap) in versions.into_iter().filter(|(v, _)| *v < keep_from) {
            let ext = if snap { "snapshot" } else { "delta" };
            self.ckpt.delete(&format!("{}/{v}.{ext}", self.dir)).await?;
        }
        Ok(())
    }

    /// The schema fingerprint stored with the state, if any.
    pub(crate) async fn schema_fingerprint(&self) -> Result<Option<String>> {
        Ok(self
            .ckpt
            .read(&format!("{}/_metadata/schema", self.dir))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Checks the stored fingerprint against `now` (a restart whose state layout changed cannot
    /// use the state: the error names `what` changed), recording it on first use.
    pub(crate) async fn check_fingerprint(&self, now: &str, checkpoint: &str, what: String) -> Result<()> {
        match self.schema_fingerprint().await? {
            Some(before) if before != now => Err(Error::IncompatibleChange {
                checkpoint: checkpoint.to_string(),
                what,
                before,
                now: now.to_string(),
            }),
            Some(_) => Ok(()),
            None => self.write_schema_fingerprint(now).await,
        }
    }

    /// Records the state's schema fingerprint.
    pub(crate) async fn write_schema_fingerprint(&self, fp: &str) -> Result<()> {
        self.ckpt.put(&format!("{}/_metadata/schema", self.dir), Bytes::from(fp.to_string())).await
    }
}

/// Schema metadata key holding the number of key columns at the front of a state row.
pub(crate) const KEYS_METADATA: &str = "sluice.keys";

/// Keeps the last row of each key (the first `keys` columns) that was not removed after it, in
/// first-seen key order.
pub(crate) fn last_per_key(schema: &SchemaRef, changes: &[Change], keys: usize) -> Result<RecordBatch> {
    // Every change's rows in order, and where the removals are.
    let mut batches = Vec::with_capacity(changes.len());
    let mut removal = Vec::new();
    for c in changes {
        let (Change::Rows(b) | Change::Removed(b)) = c;
        let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())?;
        removal.extend(std::iter::repeat_n(matches!(c, Change::Removed(_)), b.num_rows()));
        batches.push(b);
    }
    let all = arrow_select::concat::concat_batches(schema, &batches)?;
    if keys == 0 {
        let last = (0..all.num_rows()).next_back();
        return Ok(match last {
            Some(i) if !removal[i] => all.slice(i, 1),
            _ => all.slice(0, 0),
        });
    }
    let fields =
        all.schema().fields().iter().take(keys).map(|f| arrow_row::SortField::new(f.data_type().clone())).collect();
    let converter = arrow_row::RowConverter::new(fields)?;
    let converted = converter.convert_columns(&all.columns()[..keys])?;
    let mut index: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    let mut order: Vec<Option<u32>> = Vec::new();
    for (i, row) in converted.iter().enumerate() {
        let now = (!removal[i]).then_some(i as u32);
        match index.get(row.as_ref()) {
            Some(&slot) => order[slot] = now,
            None => {
                index.insert(row.data(), order.len());
                order.push(now);
            }
        }
    }
    let order: arrow_array::UInt32Array = order.into_iter().flatten().collect();
    Ok(arrow_select::take::take_record_batch(&all, &order)?)
}

impl StateStore {
    /// The latest version present.
    pub(crate) async fn latest_version(&self) -> Result<Option<u64>> {
        Ok(self.versions().await?.last().map(|(v, _)| *v))
    }

    /// Total bytes of the files of this store.
    pub(crate) async fn files(&self) -> Result<Vec<(u64, bool)>> {
        self.versions().await
    }

    /// The state at `version` as one table: for each key, its latest row.
    pub(crate) async fn read_table(&self, version: u64) -> Result<Option<RecordBatch>> {
        let rows = self.load(version).await?;
        let Some(Change::Rows(first) | Change::Removed(first)) = rows.first() else { return Ok(None) };
        let mut metadata = first.schema().metadata().clone();
        metadata.remove(REMOVED_METADATA);
        let schema = Arc::new(arrow_schema::Schema::new_with_metadata(first.schema().fields().clone(), metadata));
        let keys: usize = schema.metadata().get(KEYS_METADATA).and_then(|k| k.parse().ok()).unwrap_or(0);
        Ok(Some(last_per_key(&schema, &rows, keys)?))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::checkpoint::UPLOAD_PART_BYTES;

    fn rows(schema: &SchemaRef, keys: &[&str], values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(keys.to_vec())), Arc::new(Int64Array::from(values.to_vec()))],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn deltas_snapshots_last_row_wins_and_retention() {
        let dir = std::env::temp_dir().join(format!("sluice-state-{}", uuid::Uuid::new_v4()));
        let ckpt = Checkpoint::open(&dir).unwrap();
        let store = StateStore::new(ckpt, 3, 0);
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)],
            [(KEYS_METADATA.to_string(), "1".to_string())].into(),
        ));
        // Version v: key "a" = v, key "b" set at v = 1 only, key "c<v>" new each version.
        let total = MIN_BATCHES_TO_RETAIN + 25;
        for v in 1..=total {
            let c = format!("c{v}");
            let mut keys = vec!["a", c.as_str()];
            let mut vals = vec![v as i64, 1];
            if v == 1 {
                keys.push("b");
                vals.push(7);
            }
            let delta = rows(&schema, &keys, &vals);
            let full = || {
                let mut k: Vec<String> = vec!["a".into(), "b".into()];
                let mut n = vec![v as i64, 7];
                for i in 1..=v {
                    k.push(format!("c{i}"));
                    n.push(1);
                }
                let k: Vec<&str> = k.iter().map(String::as_str).collect();
                let snapshot = vec![rows(&schema, &k, &n)];
                Box::new(snapshot.into_iter().map(Ok)) as Snapshot
            };
            store.commit(v, &schema, &delta, &[], full).await.unwrap();
            store.flush().await.unwrap();
        }
        let t = store.read_table(total).await.unwrap().unwrap();
        assert_eq!(t.num_rows(), 2 + total as usize);
        let k = t.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let n = t.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let get = |key: &str| (0..t.num_rows()).find(|&i| k.value(i) == key).map(|i| n.value(i));
        assert_eq!(get("a"), Some(total as i64));
        assert_eq!(get("b"), Some(7));
        // An older version is still readable (within retention).
        let t50 = store.read_table(total - 50).await.unwrap().unwrap();
        assert_eq!(t50.num_rows(), 2 + (total - 50) as usize);
        // Versions older than the snapshot that covers the retention horizon are gone.
        let files = store.files().await.unwrap();
        let oldest = files.first().map(|(v, _)| *v).unwrap();
        assert!(oldest > 1 && oldest <= total - MIN_BATCHES_TO_RETAIN, "oldest kept version {oldest}");
        assert!(files.iter().any(|(v, s)| *s && *v == oldest), "the oldest kept file is a snapshot");
        std::fs::remove_dir_all(dir).ok();
    }

    /// A snapshot bigger than a few upload parts streams in parts and reads back whole; one
    /// whose encoding fails half-way leaves no file.
    #[tokio::test]
    async fn big_snapshots_stream_in_parts_and_failures_leave_nothing() {
        let dir = std::env::temp_dir().join(format!("sluice-state-big-{}", uuid::Uuid::new_v4()));
        let store = StateStore::new(Checkpoint::open(&dir).unwrap(), 0, 0);
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)],
            [(KEYS_METADATA.to_string(), "1".to_string())].into(),
        ));
        let (batches, per) = (24usize, 100_000usize);
        let page = move |schema: &SchemaRef, b: usize| {
            let keys: Vec<String> = (0..per).map(|i| format!("key-{:09}", b * per + i)).collect();
            let k: Vec<&str> = keys.iter().map(String::as_str).collect();
            let n: Vec<i64> = (0..per).map(|i| (b * per + i) as i64).collect();
            rows(schema, &k, &n)
        };
        let delta = rows(&schema, &["x"], &[1]);
        let s2 = schema.clone();
        let full = move || Box::new((0..batches).map(move |b| Ok(page(&s2, b)))) as Snapshot;
        store.commit(MIN_DELTAS_FOR_SNAPSHOT, &schema, &delta, &[], full).await.unwrap();
        store.flush().await.unwrap();
        let file = dir.join(format!("state/0/0/{MIN_DELTAS_FOR_SNAPSHOT}.snapshot"));
        let size = std::fs::metadata(&file).unwrap().len() as usize;
        assert!(size > 3 * UPLOAD_PART_BYTES, "the snapshot ({size} bytes) spans several parts");
        let t = store.read_table(MIN_DELTAS_FOR_SNAPSHOT).await.unwrap().unwrap();
        // Version V's snapshot is the whole state at V (the delta's key is not in `full`).
        assert_eq!(t.num_rows(), batches * per);
        let n = t.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let sum: i64 = n.values().iter().sum();
        let total = (batches * per) as i64;
        assert_eq!(sum, total * (total - 1) / 2);

        // The encoder fails after several parts: the error reaches the next flush, no file.
        let s3 = schema.clone();
        let failing = move || {
            Box::new((0..batches).map(move |b| match b {
                12 => Err(Error::Internal("the state went away".into())),
                b => Ok(page(&s3, b)),
            })) as Snapshot
        };
        let v = 2 * MIN_DELTAS_FOR_SNAPSHOT;
        store.commit(v, &schema, &delta, &[], failing).await.unwrap();
        let e = store.flush().await.expect_err("the snapshot failed");
        assert!(e.to_string().contains("the state went away"), "{e}");
        assert!(!dir.join(format!("state/0/0/{v}.snapshot")).exists());
        let left: Vec<_> = std::fs::read_dir(dir.join("state/0/0")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().contains('#')), "no staging files left: {left:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn removals_are_kept_in_deltas_and_honoured_on_load() {
        let dir = std::env::temp_dir().join(format!("sluice-state-rm-{}", uuid::Uuid::new_v4()));
        let store = StateStore::new(Checkpoint::open(&dir).unwrap(), 0, 0);
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)],
            [(KEYS_METADATA.to_string(), "1".to_string())].into(),
        ));
        let none = || Box::new(std::iter::empty()) as Snapshot;
        let keys = |k: &[&str]| vec![Arc::new(StringArray::from(k.to_vec())) as arrow_array::ArrayRef];
        store.commit(1, &schema, &rows(&schema, &["a", "b"], &[1, 2]), &[], none).await.unwrap();
        store.commit(2, &schema, &rows(&schema, &["c"], &[3]), &keys(&["a"]), none).await.unwrap();
        store.commit(3, &schema, &rows(&schema, &["a"], &[9]), &keys(&["b", "c"]), none).await.unwrap();
        let table = |v| {
            let store = store.clone();
            async move {
                let t = store.read_table(v).await.unwrap().unwrap();
                let k = t.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
                let n = t.column(1).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                let mut out: Vec<(String, i64)> =
                    (0..t.num_rows()).map(|i| (k.value(i).to_string(), n.value(i))).collect();
                out.sort();
                out
            }
        };
        assert_eq!(table(1).await, vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        assert_eq!(table(2).await, vec![("b".to_string(), 2), ("c".to_string(), 3)]);
        assert_eq!(table(3).await, vec![("a".to_string(), 9)]);
        std::fs::remove_dir_all(dir).ok();
    }
}

//! Durable checkpoints, in Spark's layout, through `object_store`.
//!
//! ```text
//! <checkpoint>/metadata              {"id":"<query uuid>","format":1}
//! <checkpoint>/offsets/<N>           written BEFORE batch N runs: end offsets, timestamp, watermark, conf
//! <checkpoint>/commits/<N>           written AFTER the sink has batch N
//! <checkpoint>/sources/<i>/<N>       source-private logs (the file source's files of batch N)
//! <checkpoint>/state/<op>/<part>/<V>.delta | <V>.snapshot    Arrow IPC (see `state`)
//! ```
//!
//! Every JSON file ends with a checksum line, so a torn or corrupt file is detected and
//! reported with its path, never used. Writes are atomic (object_store writes a temporary
//! file and renames it on a local disk; an object PUT is atomic), and `offsets/N` and
//! `commits/N` are created only if absent, so two runs cannot both write batch N.
//! What to do on restart is decided by [`plan_recovery`], a pure function.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Checkpoint format version, written into `metadata`.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// A checkpoint location: an object store and a root path in it.
#[derive(Clone)]
pub(crate) struct Checkpoint {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    /// The location as the user wrote it, for messages.
    display: String,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// `metadata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) id: String,
    pub(crate) format: u32,
}

/// `offsets/N`: what batch N processes, logged before it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OffsetEntry {
    pub(crate) batch_watermark_ms: i64,
    pub(crate) batch_timestamp_ms: i64,
    /// Settings state depends on; checked against the query on restart.
    pub(crate) conf: BTreeMap<String, String>,
    /// The version (blake3 of the component) of each plugin the batch ran with, by step
    /// (`source`, `transform.<i>`, `sink`): a re-run of the batch uses the same versions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) plugins: BTreeMap<String, String>,
    /// End offset of each source (`None`: no new data from it).
    #[serde(skip)]
    pub(crate) sources: Vec<Option<serde_json::Value>>,
}

/// `commits/N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommitEntry {
    pub(crate) next_batch_watermark_ms: i64,
}

/// What a restart must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Recovery {
    /// Nothing logged: start at batch 0.
    Fresh,
    /// Batch `next - 1` committed: plan batch `next`, starting after `last`'s offsets.
    Continue { next: u64 },
    /// Batch `batch` was logged but not committed: run it again with exactly its logged
    /// offsets, timestamp and watermark.
    Rerun { batch: u64 },
}

/// Spark's recovery rule: with latest offsets N and latest commit M, N == M means plan N+1,
/// N == M+1 means re-run N; anything else is a damaged checkpoint.
pub(crate) fn plan_recovery(
    latest_offsets: Option<u64>,
    latest_commit: Option<u64>,
) -> std::result::Result<Recovery, String> {
    match (latest_offsets, latest_commit) {
        (None, None) => Ok(Recovery::Fresh),
        (None, Some(m)) => Err(format!("commits/{m} exists but offsets/ is empty")),
        (Some(0), None) => Ok(Recovery::Rerun { batch: 0 }),
        (Some(n), None) => {
            Err(format!("offsets/{n} exists but commits/ is empty; batches before {n} are missing their commits"))
        }
        (Some(n), Some(m)) if n == m => Ok(Recovery::Continue { next: n + 1 }),
        (Some(n), Some(m)) if n == m + 1 => Ok(Recovery::Rerun { batch: n }),
        (Some(n), Some(m)) => Err(format!("latest offsets are for batch {n} but the latest commit is for batch {m}")),
    }
}

/// Frames JSON lines with a trailing checksum line.
fn frame(lines: &[String]) -> Bytes {
    let body = lines.join("\n");
    let sum = blake3::hash(body.as_bytes()).to_hex();
    Bytes::from(format!("{body}\n#blake3:{sum}\n"))
}

fn unframe(path: &str, bytes: &[u8]) -> Result<Vec<String>> {
    let corrupt = |reason: &str| Error::CorruptCheckpoint { path: path.to_string(), reason: reason.to_string() };
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
    let text = text.strip_suffix('\n').ok_or_else(|| corrupt("truncated (no final newline)"))?;
    let (body, sum_line) = text.rsplit_once('\n').ok_or_else(|| corrupt("truncated (no checksum line)"))?;
    let sum = sum_line.strip_prefix("#blake3:").ok_or_else(|| corrupt("truncated (no checksum line)"))?;
    if blake3::hash(body.as_bytes()).to_hex().as_str() != sum {
        return Err(corrupt("checksum mismatch: the file is torn or was modified"));
    }
    Ok(body.lines().map(str::to_string).collect())
}

fn store_err(location: &str, e: object_store::Error) -> Error {
    Error::Checkpoint { location: location.to_string(), message: e.to_string() }
}

/// Part size of a multipart upload: S3's minimum (but for the last part), to keep the memory
/// an upload holds small.
pub(crate) const UPLOAD_PART_BYTES: usize = 5 << 20;

/// A file being written in parts; see [`Checkpoint::upload`].
pub(crate) struct Upload {
    parts: WriteMultipart,
    name: String,
}

impl Upload {
    /// Adds `bytes`, first waiting for the part in flight, if any (`bytes` itself may start more
    /// than one part: memory is bounded by two parts plus the largest `bytes`).
    pub(crate) async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.parts.wait_for_capacity(1).await.map_err(|e| store_err(&self.name, e))?;
        self.parts.put(bytes);
        Ok(())
    }

    /// Completes the file: it appears whole.
    pub(crate) async fn finish(self) -> Result<()> {
        self.parts.finish().await.map_err(|e| store_err(&self.name, e))?;
        Ok(())
    }

    /// Gives up: the parts written so far are discarded.
    pub(crate) async fn abort(self) {
        if let Err(e) = self.parts.abort().await {
            tracing::warn!(file = %self.name, "aborting an upload: {e}");
        }
    }
}

impl Checkpoint {
    /// Opens the checkpoint at `location`: a local directory (created if missing) or an
    /// `s3://bucket/prefix` URL (credentials, region and endpoint from the usual `AWS_*`
    /// environment variables, e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a local
    /// S3-compatible server).
    pub(crate) fn open(location: &std::path::Path) -> Result<Self> {
        let text = location.to_string_lossy().into_owned();
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| store_err(&text, e))?;
            let root = ObjectPath::from(prefix.trim_end_matches('/'));
            return Ok(Checkpoint { store: Arc::new(store), root, display: text });
        }
        if text.contains("://") {
            return Err(Error::Checkpoint {
                location: text,
                message: "unsupported scheme; use a local path or s3://bucket/prefix".into(),
            });
        }
        std::fs::create_dir_all(location).map_err(|source| Error::Io { path: location.to_path_buf(), source })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(location).map_err(|e| store_err(&text, e))?;
        Ok(Checkpoint { store: Arc::new(store), root: ObjectPath::default(), display: text })
    }

    /// Where the checkpoint is, as the user wrote it.
    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    fn path(&self, rel: &str) -> ObjectPath {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Full name of `rel`, for messages.
    pub(crate) fn name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.display.trim_end_matches('/'))
    }

    /// Reads `rel`, or `None` if it does not exist.
    pub(crate) async fn read(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| store_err(&self.name(rel), e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&self.name(rel), e)),
        }
    }

    /// Writes `rel` atomically, replacing it.
    pub(crate) async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.store.put(&self.path(rel), PutPayload::from(data)).await.map_err(|e| store_err(&self.name(rel), e))?;
        Ok(())
    }

    /// Starts writing `rel` in parts (a multipart upload): nothing is visible until
    /// [`Upload::finish`] succeeds. An aborted upload is cleaned up; one that fails inside
    /// `finish` or is dropped leaves, on S3, an incomplete multipart upload that is invisible but
    /// kept until a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) removes it (a local
    /// directory's staging file is removed either way). S3 allows 10 000 parts: about 48 GiB.
    pub(crate) async fn upload(&self, rel: &str) -> Result<Upload> {
        let name = self.name(rel);
        let up = self.store.put_multipart(&self.path(rel)).await.map_err(|e| store_err(&name, e))?;
        Ok(Upload { parts: WriteMultipart::new_with_chunk_size(up, UPLOAD_PART_BYTES), name })
    }

    /// Writes `rel` atomically if it does not exist; returns false if it did.
    pub(crate) async fn create(&self, rel: &str, data: Bytes) -> Result<bool> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(rel), PutPayload::from(data), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(store_err(&self.name(rel), e)),
        }
    }

    /// Deletes `rel` (no error if it is gone).
    pub(crate) async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&self.name(rel), e)),
        }
    }

    /// File names directly under `dir`.
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = self.path(dir);
        let res = self.store.list_with_delimiter(Some(&prefix)).await;
        let res = match res {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(&self.name(dir), e)),
        };
        Ok(res.objects.into_iter().filter_map(|o| o.location.filename().map(str::to_string)).collect())
    }

    /// Sub-directory names directly under `dir`.
    pub(crate) async fn list_dirs(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = self.path(dir);
        match self.store.list_with_delimiter(Some(&prefix)).await {
            Ok(r) => Ok(r.common_prefixes.into_iter().filter_map(|p| p.filename().map(str::to_string)).collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(store_err(&self.name(dir), e)),
        }
    }

    /// Size in bytes of `rel`, if it exists.
    pub(crate) async fn size(&self, rel: &str) -> Result<Option<u64>> {
        match self.store.head(&self.path(rel)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&self.name(rel), e)),
        }
    }

    /// Opens an existing checkpoint, failing if `location` has none.
    pub(crate) async fn open_existing(location: &std::path::Path) -> Result<Self> {
        let local = !location.to_string_lossy().contains("://");
        if local && !location.exists() {
            return Err(Error::Checkpoint {
                location: location.display().to_string(),
                message: "no such directory".into(),
            });
        }
        let c = Self::open(location)?;
        if c.read("metadata").await?.is_none() && c.batch_ids("offsets").await?.is_empty() {
            return Err(Error::Checkpoint {
                location: c.display.clone(),
                message: "no checkpoint here (no metadata, no offsets/)".into(),
            });
        }
        Ok(c)
    }

    /// Batch ids with a file in `dir` (`offsets`, `commits`, ...), ascending.
    pub(crate) async fn batch_ids(&self, dir: &str) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self.list(dir).await?.iter().filter_map(|n| n.parse().ok()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn read_framed(&self, rel: &str) -> Result<Option<Vec<String>>> {
        match self.read(rel).await? {
            None => Ok(None),
            Some(b) => unframe(&self.name(rel), &b).map(Some),
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, rel: &str, line: Option<&String>) -> Result<T> {
        let line =
            line.ok_or_else(|| Error::CorruptCheckpoint { path: self.name(rel), reason: "missing line".into() })?;
        serde_json::from_str(line).map_err(|e| Error::CorruptCheckpoint { path: self.name(rel), reason: e.to_string() })
    }

    /// Reads `metadata`.
    pub(crate) async fn metadata(&self) -> Result<Option<Metadata>> {
        let Some(lines) = self.read_framed("metadata").await? else { return Ok(None) };
        let m: Metadata = self.parse("metadata", lines.first())?;
        if m.format != FORMAT_VERSION {
            return Err(Error::CorruptCheckpoint {
                path: self.name("metadata"),
                reason: format!("checkpoint format {} is not the format {FORMAT_VERSION} this build reads", m.format),
            });
        }
        Ok(Some(m))
    }

    /// Writes `metadata` if absent; returns the id in force.
    pub(crate) async fn init_metadata(&self, id: &str) -> Result<String> {
        let m = Metadata { id: id.to_string(), format: FORMAT_VERSION };
        let line = serde_json::to_string(&m).map_err(|e| Error::Internal(e.to_string()))?;
        if self.create("metadata", frame(&[line])).await? {
            return Ok(id.to_string());
        }
        Ok(self.metadata().await?.map(|m| m.id).unwrap_or_else(|| id.to_string()))
    }

    /// Reads `offsets/N`.
    pub(crate) async fn offsets(&self, batch: u64) -> Result<Option<OffsetEntry>> {
        let rel = format!("offsets/{batch}");
        let Some(lines) = self.read_framed(&rel).await? else { return Ok(None) };
        if lines.first().map(String::as_str) != Some("v1") {
            return Err(Error::CorruptCheckpoint {
                path: self.name(&rel),
                reason: "unknown version line (expected v1)".into(),
            });
        }
        let mut e: OffsetEntry = self.parse(&rel, lines.get(1))?;
        for l in &lines[2..] {
            e.sources.push(if l == "-" { None } else { Some(self.parse(&rel, Some(l))?) });
        }
        Ok(Some(e))
    }

    /// Writes `offsets/N`; fails if it exists with different content (another run).
    pub(crate) async fn write_offsets(&self, batch: u64, e: &OffsetEntry) -> Result<()> {
        let rel = format!("offsets/{batch}");
        let mut lines = vec!["v1".to_string(), serde_json::to_string(e).map_err(|x| Error::Internal(x.to_string()))?];
        lines.extend(e.sources.iter().map(|s| s.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())));
        if !self.create(&rel, frame(&lines)).await? {
            let existing = self.offsets(batch).await?;
            if existing.as_ref() != Some(e) {
                return Err(Error::Checkpoint {
                    location: self.name(&rel),
                    message: "already written with other offsets: is another run of this query using the checkpoint?"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// Reads `commits/N`.
    pub(crate) async fn commit(&self, batch: u64) -> Result<Option<CommitEntry>> {
        let rel = format!("commits/{batch}");
        let Some(lines) = self.read_framed(&rel).await? else { return Ok(None) };
        Ok(Some(self.parse(&rel, lines.get(1))?))
    }

    /// Writes `commits/N`.
    pub(crate) async fn write_commit(&self, batch: u64, e: &CommitEntry) -> Result<()> {
        let line = serde_json::to_string(e).map_err(|x| Error::Internal(x.to_string()))?;
        self.create(&format!("commits/{batch}"), frame(&["v1".to_string(), line])).await?;
        Ok(())
    }

    /// Writes a source-private log entry `sources/<i>/<N>`.
    pub(crate) async fn write_source_log(&self, source: usize, batch: u64, value: &serde_json::Value) -> Result<()> {
        self.put(&format!("sources/{source}/{batch}"), frame(&[value.to_string()])).await
    }

    /// Reads all of a source's log entries up to and including `upto`, in batch order.
    pub(crate) async fn source_log(&self, source: usize, upto: u64) -> Result<Vec<(u64, serde_json::Value)>> {
        let dir = format!("sources/{source}");
        let mut out = Vec::new();
        for id in self.batch_ids(&dir).await?.into_iter().filter(|b| *b <= upto) {
            let rel = format!("{dir}/{id}");
            if let Some(lines) = self.read_framed(&rel).await? {
                out.push((id, self.parse(&rel, lines.first())?));
            }
        }
        Ok(out)
    }

    /// Latest batch ids in `offsets/` and `commits/`.
    pub(crate) async fn latest(&self) -> Result<(Option<u64>, Option<u64>)> {
        Ok((self.batch_ids("offsets").await?.last().copied(), self.batch_ids("commits").await?.last().copied()))
    }

    /// Deletes log entries older than `keep_from` (Spark's `minBatchesToRetain`).
    pub(crate) async fn purge(&self, keep_from: u64, sources: usize) -> Result<()> {
        let mut dirs = vec!["offsets".to_string(), "commits".to_string()];
        dirs.extend((0..sources).map(|i| format!("sources/{i}")));
        for dir in dirs {
            for id in self.batch_ids(&dir).await?.into_iter().filter(|b| *b < keep_from) {
                // The file source's log is its memory of seen files: keep it whole.
                if dir.starts_with("sources/") {
                    continue;
                }
                self.delete(&format!("{dir}/{id}")).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_follows_sparks_rule() {
        assert_eq!(plan_recovery(None, None), Ok(Recovery::Fresh));
        assert_eq!(plan_recovery(Some(0), None), Ok(Recovery::Rerun { batch: 0 }));
        assert_eq!(plan_recovery(Some(4), Some(4)), Ok(Recovery::Continue { next: 5 }));
        assert_eq!(plan_recovery(Some(5), Some(4)), Ok(Recovery::Rerun { batch: 5 }));
        assert!(plan_recovery(Some(7), Some(4)).is_err());
        assert!(plan_recovery(None, Some(1)).is_err());
    }

    #[test]
    fn frames_detect_truncation_and_tampering() {
        let f = frame(&["v1".into(), "{\"a\":1}".into()]);
        assert_eq!(unframe("x", &f).unwrap(), vec!["v1".to_string(), "{\"a\":1}".to_string()]);
        for cut in 1..f.len() {
            assert!(unframe("x", &f[..cut]).is_err(), "truncated at {cut} was accepted");
        }
        let mut bad = f.to_vec();
        bad[4] = b'X';
        let e = unframe("ckpt/offsets/3", &bad).unwrap_err().to_string();
        assert!(e.contains("ckpt/offsets/3") && e.contains("checksum"), "{e}");
    }

    #[tokio::test]
    async fn offsets_and_commits_round_trip() {
        let dir = std::env::temp_dir().join(format!("sluice-ckpt-{}", uuid::Uuid::new_v4()));
        let c = Checkpoint::open(&dir).unwrap();
        let mut e = OffsetEntry {
            batch_watermark_ms: 0,
            batch_timestamp_ms: 42,
            conf: BTreeMap::new(),
            plugins: BTreeMap::new(),
            sources: vec![],
        };
        e.sources.push(Some(serde_json::json!({"logOffset": 3})));
        c.write_offsets(0, &e).await.unwrap();
        c.write_offsets(0, &e).await.unwrap(); // idempotent
        let mut other = e.clone();
        other.batch_timestamp_ms = 43;
        assert!(c.write_offsets(0, &other).await.is_err());
        assert_eq!(c.offsets(0).await.unwrap(), Some(e));
        c.write_commit(0, &CommitEntry { next_batch_watermark_ms: 0 }).await.unwrap();
        assert_eq!(c.latest().await.unwrap(), (Some(0), Some(0)));
        assert_eq!(c.init_metadata("abc").await.unwrap(), "abc");
        assert_eq!(c.init_metadata("def").await.unwrap(), "abc");
        std::fs::remove_dir_all(dir).ok();
    }
}

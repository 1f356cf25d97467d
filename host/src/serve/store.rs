//! What `sluice serve` keeps under `--state-dir`, so submitted queries survive a restart:
//!
//! ```text
//! <state-dir>/queries/<id>/pipeline.toml   the pipeline as submitted
//! <state-dir>/queries/<id>/record.json     desired state, replaced plugins
//! <state-dir>/queries/<id>/files/…         uploaded files (relative paths in the pipeline resolve here)
//! <state-dir>/queries/<id>/checkpoint/     the checkpoint, when the pipeline names none
//! <state-dir>/events.jsonl                 every query's listener events
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::{PipelineSpec, StepRef};

/// What the server should do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Desired {
    /// Run it (and again after a server restart).
    Running,
    /// Leave it stopped.
    Stopped,
    /// It failed with an error a retry will not fix; leave it until restarted by hand.
    Failed,
}

/// `record.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) desired: Desired,
    /// Plugins replaced over the API: step (`source`, `sink`, `transform.N`) → component path.
    #[serde(default)]
    pub(crate) replaced: BTreeMap<String, PathBuf>,
    /// The error that stopped it, when `desired` is `failed`.
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// One query's directory.
#[derive(Debug, Clone)]
pub(crate) struct QueryDir {
    pub(crate) id: uuid::Uuid,
    pub(crate) dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

impl QueryDir {
    pub(crate) fn new(state_dir: &Path, id: uuid::Uuid) -> Self {
        QueryDir { id, dir: state_dir.join("queries").join(id.to_string()) }
    }

    /// Every query directory under the state dir.
    pub(crate) fn all(state_dir: &Path) -> Result<Vec<QueryDir>> {
        let root = state_dir.join("queries");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&root)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&root))?;
            let name = entry.file_name();
            match name.to_str().map(uuid::Uuid::parse_str) {
                Some(Ok(id)) if entry.path().join("record.json").exists() => out.push(QueryDir::new(state_dir, id)),
                _ => tracing::warn!("ignoring {} (not a query directory)", entry.path().display()),
            }
        }
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    pub(crate) fn files(&self) -> PathBuf {
        self.dir.join("files")
    }

    pub(crate) fn pipeline_text(&self) -> Result<String> {
        let p = self.dir.join("pipeline.toml");
        std::fs::read_to_string(&p).map_err(io(&p))
    }

    pub(crate) fn record(&self) -> Result<Record> {
        let p = self.dir.join("record.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", p.display())))
    }

    /// Writes `record.json` atomically (a temporary file renamed over it).
    pub(crate) fn save_record(&self, r: &Record) -> Result<()> {
        let p = self.dir.join("record.json");
        let tmp = self.dir.join("record.json.tmp");
        let text = serde_json::to_string_pretty(r).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))
    }

    /// Creates the directory with the pipeline text and uploaded files.
    pub(crate) fn create(&self, pipeline: &str, files: &[(PathBuf, bytes::Bytes)]) -> Result<()> {
        std::fs::create_dir_all(self.files()).map_err(io(&self.dir))?;
        for (rel, data) in files {
            self.put_file(rel, data)?;
        }
        let p = self.dir.join("pipeline.toml");
        std::fs::write(&p, pipeline).map_err(io(&p))
    }

    /// Stores an uploaded file under `files/`; returns its path.
    pub(crate) fn put_file(&self, rel: &Path, data: &[u8]) -> Result<PathBuf> {
        let path = self.files().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, data).map_err(io(&path))?;
        Ok(path)
    }

    /// The spec to run: the pipeline (relative paths under `files/`), a checkpoint under the
    /// query's directory when it names none (but for the socket source), and the plugins
    /// replaced since.
    pub(crate) fn spec(&self, text: &str, record: Option<&Record>) -> Result<PipelineSpec> {
        let mut spec = PipelineSpec::from_toml(text, "pipeline.toml", &self.files())?;
        // A socket source cannot replay, so a checkpoint could not make it exactly-once and is
        // refused with it: such a query runs without one, as `sluice run` would.
        if spec.checkpoint_location.is_none() && spec.source.format != "socket" {
            spec.checkpoint_location = Some(self.dir.join("checkpoint"));
        }
        for (step, path) in record.map(|r| &r.replaced).into_iter().flatten() {
            let at: StepRef = step.parse().map_err(Error::config)?;
            if let Some(p) = spec.plugin_at_mut(at) {
                p.path = path.clone();
            }
        }
        Ok(spec)
    }

    pub(crate) fn remove(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

/// A relative path from an upload, refused if it could leave the directory.
pub(crate) fn safe_relative(name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    let ok = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(Error::config(format!(
            "uploaded file name {name:?} must be a relative path without `..` (it is where the pipeline refers to it)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_stay_inside() {
        assert!(safe_relative("plugins/split.wasm").is_ok());
        for bad in ["", "../x.wasm", "/etc/passwd", "a/../../b", "./x"] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }
}

//! File sinks (`json`, `csv`, `parquet`): exactly-once through a commit log beside the output.
//!
//! Batch N writes its rows to `part-<N>-<i>.<ext>` (each file written atomically, names fixed by
//! the batch, so a re-run overwrites rather than duplicates), then creates
//! `<path>/_spark_metadata/<N>` listing those files, as Spark does. A batch already in the log
//! is skipped when it is run again after a failure. Readers that go through the log (Sluice's
//! own file source does) see only committed files.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::{OutputMode, Sink};
use crate::error::{Error, Result};
use crate::options::Options;

/// The commit-log directory inside a file sink's output.
pub(crate) const METADATA_DIR: &str = "_spark_metadata";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Parquet,
}

pub(crate) struct FileSink {
    format: Format,
    dir: PathBuf,
    csv_header: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically (temporary name, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The committed files of a file-sink output directory, in batch order, or `None` if `dir` has
/// no commit log.
pub(crate) fn committed_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let log = dir.join(METADATA_DIR);
    if !log.is_dir() {
        return Ok(None);
    }
    let mut batches: Vec<(u64, PathBuf)> = std::fs::read_dir(&log)
        .map_err(io(&log))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    batches.sort();
    let mut files = Vec::new();
    for (_, p) in batches {
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let mut lines = text.lines();
        if lines.next() != Some("v1") {
            return Err(Error::CorruptCheckpoint {
                path: p.display().to_string(),
                reason: "expected a v1 file-sink log".into(),
            });
        }
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| Error::CorruptCheckpoint { path: p.display().to_string(), reason: e.to_string() })?;
            if let Some(f) = v.get("path").and_then(|x| x.as_str()) {
                files.push(dir.join(f));
            }
        }
    }
    Ok(Some(files))
}

impl FileSink {
    pub(crate) fn try_new(format: &str, path: Option<&Path>, options: &Options) -> Result<Self> {
        let component = format!("{format} sink");
        let (format, valid): (Format, &[&str]) = match format {
            "json" => (Format::Json, &[]),
            "csv" => (Format::Csv, &["header"]),
            _ => (Format::Parquet, &[]),
        };
        options.check(&component, valid)?;
        let dir = path.ok_or_else(|| Error::MissingOption {
            component: component.clone(),
            key: "path".into(),
            hint: Some("the output directory".into()),
            location: options.location(),
        })?;
        std::fs::create_dir_all(dir.join(METADATA_DIR)).map_err(io(dir))?;
        Ok(FileSink { format, dir: dir.to_path_buf(), csv_header: options.bool_or(&component, "header", false)? })
    }

    fn encode(&self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        match self.format {
            Format::Json => {
                let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Format::Csv => {
                let mut w = arrow_csv::WriterBuilder::new().with_header(self.csv_header).build(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
            Format::Parquet => {
                let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), None)
                    .map_err(|e| Error::Sink { sink: "parquet".into(), message: e.to_string() })?;
                for b in batches {
                    w.write(b).map_err(|e| Error::Sink { sink: "parquet".into(), message: e.to_string() })?;
                }
                w.close().map_err(|e| Error::Sink { sink: "parquet".into(), message: e.to_string() })?;
            }
        }
        Ok(buf)
    }

    fn ext(&self) -> &'static str {
        match self.format {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn description(&self) -> String {
        format!("FileSink[{}]", self.dir.display())
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        data: Vec<RecordBatch>,
        _: OutputMode,
    ) -> Result<()> {
        let log = self.dir.join(METADATA_DIR).join(batch_id.to_string());
        if log.exists() {
            tracing::info!(batch_id, sink = %self.description(), "batch already committed to the sink; skipping");
            return Ok(());
        }
        let data: Vec<RecordBatch> = data.into_iter().filter(|b| b.num_rows() > 0).collect();
        let mut entries = vec!["v1".to_string()];
        if !data.is_empty() {
            let name = format!("part-{batch_id:05}-0000.{}", self.ext());
            let bytes = self.encode(schema, &data)?;
            let path = self.dir.join(&name);
            let size = bytes.len();
            tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                .await
                .map_err(|e| Error::Internal(format!("write task: {e}")))??;
            entries.push(serde_json::json!({ "path": name, "size": size, "action": "add" }).to_string());
        }
        let text = entries.join("\n") + "\n";
        tokio::task::spawn_blocking(move || write_atomic(&log, text.as_bytes()))
            .await
            .map_err(|e| Error::Internal(format!("write task: {e}")))??;
        Ok(())
    }
}

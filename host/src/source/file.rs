//! File sources (`text`, `json`, `csv`, `parquet`): a directory watched for new files.
//!
//! Files must appear atomically (written elsewhere, then renamed in), as in Spark; names that
//! start with `.` or `_` are ignored, so `.part` files and `_SUCCESS` markers are never read.
//! Each new file gets the next index in the source's file log; an offset is a count of files,
//! so a range of offsets always names the same files (replayable). `maxFilesPerTrigger` caps
//! the files per batch; `latestFirst` takes the newest new files first.
//!
//! `json` and `csv` follow Spark's malformed-record modes: `PERMISSIVE` (default) keeps the row
//! with null fields and the raw text in the `_corrupt_record` column if the schema has one
//! (`columnNameOfCorruptRecord` renames it), `DROPMALFORMED` drops the row, `FAILFAST` fails the
//! query naming the file and line.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};

use super::{Offset, Partitioned, ReadLimit, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::spec::SourceSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Permissive,
    DropMalformed,
    FailFast,
}

pub(crate) struct FileSource {
    dir: PathBuf,
    /// The full output schema (including a corrupt-record column if any).
    schema: SchemaRef,
    decoding: Arc<Decoding>,
    max_files: Option<usize>,
    latest_first: bool,
    log: Vec<PathBuf>,
    seen: HashSet<PathBuf>,
    bound: Option<u64>,
    /// Source times of the last `get_batch`: each file's modification time.
    times: super::SourceTimes,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// New complete files in `dir`, oldest first (by modification time, then name). A directory
/// written by a Sluice (or Spark) file sink is read through its commit log, so only committed
/// files are seen.
fn list(dir: &Path) -> Result<Vec<(std::time::SystemTime, PathBuf)>> {
    if let Some(files) = crate::sink::file::committed_files(dir)? {
        let t0 = std::time::UNIX_EPOCH;
        return Ok(files
            .into_iter()
            .enumerate()
            .map(|(i, p)| (t0 + std::time::Duration::from_nanos(i as u64), p))
            .collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        // Symbolic links are followed (as Spark's local file system does); one that cannot be
        // (dangling, a loop, no permission) is skipped with a warning, and a file deleted since
        // the listing is skipped.
        let path = entry.path();
        let link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if link => {
                tracing::warn!(file = %path.display(), "skipping a symbolic link that cannot be followed: {e}");
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if meta.is_file() {
            files.push((meta.modified().map_err(io(&path))?, path));
        }
    }
    files.sort();
    Ok(files)
}

impl FileSource {
    pub(crate) fn try_new(spec: &SourceSpec) -> Result<Self> {
        let format = match spec.format.as_str() {
            "text" => Format::Text,
            "json" => Format::Json,
            "csv" => Format::Csv,
            _ => Format::Parquet,
        };
        let component = format!("{} source", spec.format);
        let c = component.as_str();
        let o = &spec.options;
        let mut valid = vec!["maxFilesPerTrigger", "latestFirst"];
        match format {
            Format::Json => valid.extend(["mode", "columnNameOfCorruptRecord"]),
            Format::Csv => valid.extend(["mode", "columnNameOfCorruptRecord", "header", "sep", "delimiter"]),
            _ => {}
        }
        o.check(c, &valid)?;
        let dir = spec.path.clone().ok_or_else(|| Error::MissingOption {
            component: component.clone(),
            key: "path".into(),
            hint: Some("the directory to watch for new files".into()),
            location: spec.location.clone(),
        })?;
        if !dir.is_dir() {
            return Err(Error::Config {
                location: spec.location.clone(),
                message: format!("{c}: `path` {} is not a directory", dir.display()),
            });
        }
        let max_files: Option<usize> = o.parse(c, "maxFilesPerTrigger")?;
        if max_files == Some(0) {
            return Err(o.invalid(c, "maxFilesPerTrigger", "must be at least 1"));
        }
        let mode = match o.get("mode").map(|m| m.trim().to_ascii_uppercase()).as_deref() {
            None | Some("PERMISSIVE") => Mode::Permissive,
            Some("DROPMALFORMED") => Mode::DropMalformed,
            Some("FAILFAST") => Mode::FailFast,
            Some(_) => return Err(o.invalid(c, "mode", "expected PERMISSIVE, DROPMALFORMED or FAILFAST")),
        };
        let sep = o.get("sep").or(o.get("delimiter")).unwrap_or(",");
        let csv_sep = match sep.as_bytes() {
            [b] => *b,
            _ if sep == "\\t" => b'\t',
            _ => return Err(o.invalid(c, "sep", "must be a single character")),
        };

        let schema = match (format, &spec.schema) {
            (Format::Text, None) => Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, false)])),
            (Format::Text, Some(_)) => {
                return Err(Error::Config {
                    location: spec.location.clone(),
                    message: "the text source has a fixed schema (`value STRING`); remove `schema`".into(),
                });
            }
            (_, Some(ddl)) => crate::schema::parse_ddl(ddl).map_err(|e| e.at(spec.location.clone()))?,
            (Format::Parquet, None) => infer_parquet(&dir).map_err(|e| e.at(spec.location.clone()))?,
            (_, None) => {
                return Err(Error::MissingOption {
                    component: component.clone(),
                    key: "schema".into(),
                    hint: Some("a DDL string such as \"ts TIMESTAMP, user STRING, amount BIGINT\"; streaming file sources need a fixed schema, as in Spark".into()),
                    location: spec.location.clone(),
                });
            }
        };
        let corrupt_name = o.get("columnNameOfCorruptRecord").unwrap_or("_corrupt_record");
        let corrupt_column = match format {
            Format::Json | Format::Csv => schema.index_of(corrupt_name).ok(),
            _ => None,
        };
        if let Some(i) = corrupt_column
            && schema.field(i).data_type() != &DataType::Utf8
        {
            return Err(Error::Config {
                location: spec.location.clone(),
                message: format!("{c}: the corrupt-record column `{corrupt_name}` must be STRING"),
            });
        }
        let data_schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != corrupt_column)
                .map(|(_, f)| f.clone())
                .collect::<Vec<_>>(),
        ));
        let decoding = Arc::new(Decoding {
            format,
            name: format!("FileStreamSource[{}]", dir.display()),
            schema: schema.clone(),
            data_schema,
            corrupt_column,
            mode,
            csv_header: o.bool_or(c, "header", false)?,
            csv_sep,
        });
        Ok(FileSource {
            dir,
            schema,
            decoding,
            max_files,
            latest_first: o.bool_or(c, "latestFirst", false)?,
            log: Vec::new(),
            seen: HashSet::new(),
            bound: None,
            times: Vec::new(),
        })
    }

    fn err(&self, message: String, kind: ErrorKind) -> Error {
        Error::Source { source_name: self.description(), message, kind }
    }

    async fn refresh(&mut self) -> Result<()> {
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || list(&dir))
            .await
            .map_err(|e| Error::Internal(format!("listing task failed: {e}")))??;
        let mut new: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).filter(|p| !self.seen.contains(p)).collect();
        if self.latest_first {
            new.reverse();
        }
        for p in new {
            self.seen.insert(p.clone());
            self.log.push(p);
        }
        Ok(())
    }
}

/// How a file becomes rows: shared with the blocking tasks that decode a batch's files in
/// parallel.
struct Decoding {
    format: Format,
    /// The source's description, for errors.
    name: String,
    /// The full output schema (including a corrupt-record column if any).
    schema: SchemaRef,
    /// The schema parsed from the files (without the corrupt-record column).
    data_schema: SchemaRef,
    corrupt_column: Option<usize>,
    mode: Mode,
    csv_header: bool,
    csv_sep: u8,
}

impl Decoding {
    fn err(&self, message: String, kind: ErrorKind) -> Error {
        Error::Source { source_name: self.name.clone(), message, kind }
    }

    fn read_file(&self, path: &Path, bytes: Vec<u8>) -> Result<RecordBatch> {
        let data = match self.format {
            Format::Text => return text_batch(&self.schema, &bytes),
            Format::Parquet => {
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                        .and_then(|b| b.build())
                        .map_err(|e| self.err(format!("{}: {e}", path.display()), ErrorKind::User))?;
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                let mut out = Vec::new();
                for b in batches {
                    out.push(
                        project_to(&self.schema, &b)
                            .map_err(|m| self.err(format!("{}: {m}", path.display()), ErrorKind::User))?,
                    );
                }
                return Ok(arrow_select::concat::concat_batches(&self.schema, &out)?);
            }
            Format::Json => self.decode_rows(path, &bytes, |schema, chunk| {
                let mut d = arrow_json::ReaderBuilder::new(schema.clone()).with_batch_size(1 << 20).build_decoder()?;
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = d.decode(rest)?;
                    if n == 0 {
                        break;
                    }
                    rest = &rest[n..];
                }
                Ok(d.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
            })?,
            Format::Csv => {
                let (header, sep) = (self.csv_header, self.csv_sep);
                let body = if header { skip_line(&bytes) } else { &bytes[..] };
                self.decode_rows(path, body, |schema, chunk| {
                    let reader = arrow_csv::ReaderBuilder::new(schema.clone())
                        .with_header(false)
                        .with_delimiter(sep)
                        .with_batch_size(1 << 20)
                        .build(Cursor::new(chunk))?;
                    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                    arrow_select::concat::concat_batches(schema, &batches)
                })?
            }
        };
        Ok(data)
    }

    /// Decodes newline-delimited records; on a failure, falls back to one record at a time and
    /// applies the malformed-record mode.
    fn decode_rows(
        &self,
        path: &Path,
        bytes: &[u8],
        decode: impl Fn(&SchemaRef, &[u8]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError>,
    ) -> Result<RecordBatch> {
        let lines = || bytes.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty());
        let expected = lines().count();
        if let Ok(b) = decode(&self.data_schema, bytes)
            && b.num_rows() == expected
        {
            return self.with_corrupt(b, None);
        }
        let mut good = Vec::new();
        let mut corrupt = StringBuilder::new();
        for (i, line) in lines() {
            match decode(&self.data_schema, line) {
                Ok(b) if b.num_rows() == 1 => {
                    good.push(b);
                    corrupt.append_null();
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(b) => format!("{} records on one line", b.num_rows()),
                    };
                    match self.mode {
                        Mode::FailFast => {
                            return Err(self.err(
                                format!("malformed record in {} line {}: {why} (mode FAILFAST)", path.display(), i + 1),
                                ErrorKind::User,
                            ));
                        }
                        Mode::DropMalformed => {
                            tracing::debug!(file = %path.display(), line = i + 1, "dropping malformed record: {why}");
                        }
                        Mode::Permissive => {
                            let nulls: Vec<ArrayRef> =
                                self.data_schema.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
                            good.push(RecordBatch::try_new_with_options(
                                self.data_schema_nullable(),
                                nulls,
                                &arrow_array::RecordBatchOptions::new().with_row_count(Some(1)),
                            )?);
                            corrupt.append_value(String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)));
                        }
                    }
                }
            }
        }
        let good: Vec<RecordBatch> = good
            .into_iter()
            .map(|b| RecordBatch::try_new(self.data_schema_nullable(), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        let data = arrow_select::concat::concat_batches(&self.data_schema_nullable(), &good)?;
        let corrupt: ArrayRef = Arc::new(corrupt.finish());
        self.with_corrupt(data, Some(corrupt))
    }

    fn data_schema_nullable(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.data_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ))
    }

    fn with_corrupt(&self, data: RecordBatch, corrupt: Option<ArrayRef>) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = data.columns().to_vec();
        if let Some(i) = self.corrupt_column {
            let c = corrupt.unwrap_or_else(|| new_null_array(&DataType::Utf8, data.num_rows()));
            cols.insert(i, c);
        }
        let nullable = Arc::new(Schema::new(
            self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let b = RecordBatch::try_new_with_options(
            nullable,
            cols,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(data.num_rows())),
        )?;
        project_to(&self.schema, &b).map_err(|m| self.err(m, ErrorKind::User))
    }
}

fn skip_line(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => &bytes[i + 1..],
        None => &[],
    }
}

/// One row per line; `\r\n` and a final newline are handled like Spark's text source.
fn text_batch(schema: &SchemaRef, bytes: &[u8]) -> Result<RecordBatch> {
    // Valid UTF-8 (the usual case) is checked at memory speed; otherwise bad bytes become U+FFFD.
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let mut b = StringBuilder::with_capacity(text.len() / 40 + 1, text.len());
    for line in text.lines() {
        b.append_value(line);
    }
    Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(b.finish())])?)
}

/// Reorders and casts `batch` to `schema` (by column name), so files with extra columns or
/// compatible types still fit. Errors name the missing column.
fn project_to(schema: &SchemaRef, batch: &RecordBatch) -> std::result::Result<RecordBatch, String> {
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match batch.schema().index_of(f.name()) {
            Ok(i) => batch.column(i).clone(),
            Err(_) => new_null_array(f.data_type(), batch.num_rows()),
        };
        let col = if col.data_type() == f.data_type() {
            col
        } else {
            arrow_cast::cast(&col, f.data_type()).map_err(|e| format!("column `{}`: {e}", f.name()))?
        };
        cols.push(col);
    }
    let relaxed = Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new_with_options(
        relaxed,
        cols,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| e.to_string())
}

fn infer_parquet(dir: &Path) -> Result<SchemaRef> {
    let first = list(dir)?.into_iter().next().ok_or_else(|| {
        Error::config(format!(
            "parquet source: no `schema` given and no file in {} to take it from; set `schema`",
            dir.display()
        ))
    })?;
    let file = std::fs::File::open(&first.1).map_err(io(&first.1))?;
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::config(format!("parquet source: cannot read schema of {}: {e}", first.1.display())))?;
    Ok(b.schema().clone())
}

fn off(o: &Offset) -> Result<u64> {
    o.field_u64("file source", "logOffset")
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn log_entry(&self, start: Option<&Offset>, end: &Offset) -> Option<serde_json::Value> {
        let from = start.map(off).transpose().ok()?.unwrap_or(0) as usize;
        let to = off(end).ok()? as usize;
        let files: Vec<String> = self.log.get(from..to)?.iter().map(|p| p.display().to_string()).collect();
        Some(serde_json::json!({ "startIndex": from, "files": files }))
    }
    async fn restore(&mut self, log: Vec<(u64, serde_json::Value)>, _last: Option<&Offset>) -> Result<()> {
        self.log.clear();
        self.seen.clear();
        for (batch, entry) in log {
            let start = entry.get("startIndex").and_then(|v| v.as_u64());
            let files = entry.get("files").and_then(|v| v.as_array());
            let (Some(start), Some(files)) = (start, files) else {
                return Err(
                    self.err(format!("source log entry of batch {batch} is malformed: {entry}"), ErrorKind::External)
                );
            };
            if start as usize != self.log.len() {
                return Err(self.err(
                    format!(
                        "source log entry of batch {batch} starts at file {start} but {} files precede it",
                        self.log.len()
                    ),
                    ErrorKind::External,
                ));
            }
            for f in files {
                let p = PathBuf::from(f.as_str().unwrap_or_default());
                self.seen.insert(p.clone());
                self.log.push(p);
            }
        }
        Ok(())
    }
    fn description(&self) -> String {
        format!("FileStreamSource[{}]", self.dir.display())
    }
    fn schema(&self) -> SchemaRef {
        // File sources are nullable, as Spark forces them to be.
        Arc::new(Schema::new(
            self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ))
    }
    fn replayable(&self) -> bool {
        true
    }
    async fn prepare_available_now(&mut self) -> Result<()> {
        self.refresh().await?;
        self.bound = Some(self.log.len() as u64);
        Ok(())
    }
    async fn latest_offset(&mut self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        if self.bound.is_none() {
            self.refresh().await?;
        }
        let from = start.map(off).transpose()?.unwrap_or(0);
        let mut end = self.bound.unwrap_or(self.log.len() as u64).min(self.log.len() as u64);
        if let (ReadLimit::Default, Some(max)) = (limit, self.max_files) {
            end = end.min(from + max as u64);
        }
        Ok((end > from).then(|| Offset(serde_json::json!({ "logOffset": end }))))
    }
    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned> {
        let from = start.map(off).transpose()?.unwrap_or(0) as usize;
        let to = off(end)? as usize;
        let files = self.log.get(from..to).ok_or_else(|| {
            self.err(format!("offsets {from}..{to} are beyond the {} files seen", self.log.len()), ErrorKind::Internal)
        })?;
        // Files are read and decoded a few at a time (as many as there are cores), each on the
        // blocking pool, in file order.
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let read = files.iter().cloned().map(|path| {
            let decoding = self.decoding.clone();
            async move {
                let bytes = tokio::fs::read(&path).await.map_err(io(&path))?;
                let modified = tokio::fs::metadata(&path).await.and_then(|m| m.modified()).ok();
                let batch = tokio::task::spawn_blocking(move || decoding.read_file(&path, bytes))
                    .await
                    .map_err(|e| Error::Internal(format!("decoding a file: {e}")))??;
                Ok::<_, Error>((modified, batch))
            }
        });
        let decoded: Vec<_> = futures::stream::iter(read).buffered(parallel).try_collect().await?;
        self.times.clear();
        let mut out = Vec::with_capacity(decoded.len());
        for (modified, batch) in decoded {
            if let Some(ms) = modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
                super::push_time(&mut self.times, ms.as_millis() as i64, batch.num_rows() as u64);
            }
            for piece in pieces(batch) {
                out.push((out.len() as u32, piece));
            }
        }
        Ok(out)
    }
    fn take_source_times(&mut self) -> super::SourceTimes {
        std::mem::take(&mut self.times)
    }
}

/// Records of one file beyond which it becomes several partitions.
const PARTITION_ROWS: usize = 64 * 1024;

/// A file's records as partitions: one, or for more than [`PARTITION_ROWS`] records, equal
/// slices of at most that many, in order (zero-copy). So a batch of one large file still keeps
/// every plugin instance busy (a plugin step runs a partition on one instance), and a replayed
/// batch splits the same way (the split depends only on the file's records).
fn pieces(batch: RecordBatch) -> Vec<RecordBatch> {
    let n = batch.num_rows();
    let k = n.div_ceil(PARTITION_ROWS);
    if k <= 1 {
        return vec![batch];
    }
    let size = n.div_ceil(k);
    (0..n).step_by(size).map(|at| batch.slice(at, size.min(n - at))).collect()
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, StringArray};

    use super::*;

    fn lines(batch: &RecordBatch) -> Vec<String> {
        let c = batch.column(0).as_any().downcast_ref::<StringArray>().expect("a string column");
        (0..c.len()).map(|i| c.value(i).to_string()).collect()
    }

    /// Files decode in parallel but come back in file order, one partition each (a large one,
    /// several); symbolic links are followed and dangling ones skipped; bad UTF-8 becomes U+FFFD.
    #[tokio::test]
    async fn text_files_in_order_through_symlinks() {
        let root = std::env::temp_dir().join(format!("sluice-file-src-{}", uuid::Uuid::new_v4()));
        let (dir, elsewhere) = (root.join("in"), root.join("elsewhere"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::create_dir_all(&elsewhere).expect("dir");
        for i in 0..5 {
            let text = (0..1000).map(|j| format!("file {i} line {j}\n")).collect::<String>();
            std::fs::write(dir.join(format!("f{i}.txt")), text).expect("write");
            // Distinct modification times keep the file order by name.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        std::fs::write(elsewhere.join("linked.txt"), b"ok\xff\xfeok\r\nlast").expect("write");
        std::os::unix::fs::symlink(elsewhere.join("linked.txt"), dir.join("g-link.txt")).expect("symlink");
        std::os::unix::fs::symlink(elsewhere.join("missing.txt"), dir.join("h-dangling.txt")).expect("symlink");
        std::os::unix::fs::symlink(dir.join("i-loop.txt"), dir.join("i-loop.txt")).expect("symlink");
        let mut spec = SourceSpec::new("text");
        spec.path = Some(dir.clone());
        let mut src = FileSource::try_new(&spec).expect("source");
        let end = src.latest_offset(None, ReadLimit::Default).await.expect("offset").expect("files");
        let parts = src.get_batch(None, &end).await.expect("batch");
        assert_eq!(parts.len(), 6, "five files and the linked one; the dangling link and the loop are skipped");
        for (i, (p, b)) in parts.iter().take(5).enumerate() {
            assert_eq!(*p as usize, i);
            let l = lines(b);
            assert_eq!(l.len(), 1000);
            assert_eq!(l[0], format!("file {i} line 0"));
            assert_eq!(l[999], format!("file {i} line 999"));
        }
        assert_eq!(lines(&parts[5].1), vec!["ok\u{fffd}\u{fffd}ok".to_string(), "last".to_string()]);

        // A file of more than 64 k lines: equal partitions of at most 64 k lines, in order, numbered
        // after the files before it.
        let text = (0..150_001).map(|j| format!("{j}\n")).collect::<String>();
        std::fs::write(dir.join("j-large.txt"), text).expect("write");
        let next = src.latest_offset(Some(&end), ReadLimit::Default).await.expect("offset").expect("the new file");
        let parts = src.get_batch(Some(&end), &next).await.expect("batch");
        let sizes: Vec<usize> = parts.iter().map(|(_, b)| b.num_rows()).collect();
        assert_eq!(sizes, vec![50_001, 50_001, 49_999]);
        assert_eq!(parts.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1, 2]);
        let all: Vec<String> = parts.iter().flat_map(|(_, b)| lines(b)).collect();
        assert_eq!(all.len(), 150_001);
        assert!(all.iter().enumerate().all(|(j, l)| *l == j.to_string()), "lines in file order");
        std::fs::remove_dir_all(root).ok();
    }
}

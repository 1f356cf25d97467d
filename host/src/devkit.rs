//! Plugin tooling behind `sluice plugin new | build | test`: a ready-to-build crate for any
//! world, built outside this repository (the SDK and WIT it needs ship inside the `sluice`
//! binary and are unpacked into the cache), and a way to run a component on sample rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::error::{Error, Result};
use crate::plugin::source::PluginReadLimit;
use crate::plugin::{CallContext, Role};
use crate::session::Session;
use crate::spec::{PluginConfig, PluginSpec};

/// The SDK's files, embedded so a plugin crate builds anywhere `sluice` runs.
const SDK_FILES: &[(&str, &str)] = &[
    ("README.md", include_str!("../../sdk/rust/README.md")),
    ("src/lib.rs", include_str!("../../sdk/rust/src/lib.rs")),
    ("src/wire.rs", include_str!("../../sdk/rust/src/wire.rs")),
    ("src/wire/flat.rs", include_str!("../../sdk/rust/src/wire/flat.rs")),
    ("src/filter.rs", include_str!("../../sdk/rust/src/filter.rs")),
    ("src/bindings.rs", include_str!("../../sdk/rust/src/bindings.rs")),
    ("src/transform.rs", include_str!("../../sdk/rust/src/transform.rs")),
    ("src/source.rs", include_str!("../../sdk/rust/src/source.rs")),
    ("src/sink.rs", include_str!("../../sdk/rust/src/sink.rs")),
    ("src/http.rs", include_str!("../../sdk/rust/src/http.rs")),
    ("wit/0.2.0/sluice.wit", include_str!("../../wit/0.2.0/sluice.wit")),
    ("wit/0.1.0/sluice.wit", include_str!("../../wit/0.1.0/sluice.wit")),
];

/// The SDK's manifest outside the workspace: the same dependencies, versions written out.
const SDK_MANIFEST: &str = r#"[package]
name = "sluice-sdk"
version = "0.2.0"
edition = "2024"
rust-version = "1.95"
license = "Apache-2.0"
publish = false
readme = "README.md"

[features]
default = ["bindings"]
bindings = ["dep:wit-bindgen"]
http = ["dep:wasip2"]

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc"], optional = true }
wasip2 = { version = "2.0.1", optional = true }
arrow-array = { version = "59", default-features = false }
arrow-schema = { version = "59", default-features = false }
arrow-ipc = { version = "59", default-features = false }
arrow-buffer = { version = "59", default-features = false }
arrow-data = { version = "59", default-features = false }
arrow-select = { version = "59", default-features = false }
flatbuffers = { version = "25", default-features = false }
"#;

/// The world names `sluice plugin new --world` takes.
pub const WORLDS: &[&str] = &["transform", "source", "batch-sink", "foreach-sink"];

/// The role a `--world` name stands for.
pub fn role_of(world: &str) -> Result<Role> {
    match world {
        "transform" | "transform-plugin" => Ok(Role::Transform),
        "source" | "source-plugin" => Ok(Role::Source),
        "batch-sink" | "foreach-batch" | "batch-sink-plugin" => Ok(Role::BatchSink),
        "foreach-sink" | "foreach" | "foreach-sink-plugin" => Ok(Role::ForeachSink),
        other => Err(Error::config(format!("unknown world `{other}`; valid worlds: {}", WORLDS.join(", ")))),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Unpacks the embedded SDK into `cache/sdk/<hash>` (once) and returns its directory.
pub fn unpack_sdk(cache: &Path) -> Result<PathBuf> {
    let mut h = blake3::Hasher::new();
    h.update(SDK_MANIFEST.as_bytes());
    for (name, text) in SDK_FILES {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
    }
    let dir = cache.join("sdk").join(format!("sluice-sdk-{}", &h.finalize().to_hex()[..16]));
    if dir.join("Cargo.toml").exists() {
        return Ok(dir);
    }
    let tmp = cache.join("sdk").join(format!(".unpack-{}", std::process::id()));
    for (name, text) in SDK_FILES {
        let p = tmp.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    std::fs::write(tmp.join("Cargo.toml"), SDK_MANIFEST).map_err(io(&tmp))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process unpacked it first.
        Err(_) if dir.join("Cargo.toml").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::Io { path: dir, source: e }),
    }
}

fn template(role: Role, name: &str) -> String {
    let ty: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    let body = match role {
        Role::Transform => TRANSFORM_TEMPLATE,
        Role::Source => SOURCE_TEMPLATE,
        Role::BatchSink => BATCH_SINK_TEMPLATE,
        Role::ForeachSink => FOREACH_SINK_TEMPLATE,
    };
    body.replace("PluginName", &ty).replace("plugin-name", name)
}

/// Creates a plugin crate `name` of `world` in `parent/name`, depending on the unpacked SDK.
pub fn new_plugin(name: &str, world: &str, parent: &Path, cache: &Path) -> Result<PathBuf> {
    let role = role_of(world)?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        return Err(Error::config(format!(
            "plugin name `{name}` must start with a lower-case letter and hold only a-z, 0-9, _ and -"
        )));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(Error::config(format!("{} already exists", dir.display())));
    }
    let sdk = unpack_sdk(cache)?;
    std::fs::create_dir_all(dir.join("src")).map_err(io(&dir))?;
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nsluice-sdk = {{ path = {sdk:?} }}\n\n[profile.release]\nopt-level = 3\nstrip = true\n\n# A crate of its own, even inside another workspace.\n[workspace]\n",
        sdk = sdk.display().to_string()
    );
    let files = [
        ("Cargo.toml", manifest),
        ("src/lib.rs", template(role, name)),
        (".gitignore", "/target\n*.wasm\n".to_string()),
        (
            "README.md",
            format!(
                "# {name}\n\nA Sluice plugin of the `{}` world.\n\n```sh\ncargo test                     # unit tests, natively\nsluice plugin build            # -> {}.wasm\nsluice plugin test {}.wasm --input rows.jsonl\n```\n",
                role.world(),
                name.replace('-', "_"),
                name.replace('-', "_")
            ),
        ),
    ];
    for (file, text) in files {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(dir)
}

/// Runs a command to completion on the blocking pool; its output goes to the terminal.
async fn run(mut cmd: std::process::Command, what: &str) -> Result<()> {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let status = cmd.status().map_err(|e| Error::config(format!("cannot run {what}: {e}; is it installed?")))?;
        if !status.success() {
            return Err(Error::config(format!("{what} failed ({status})")));
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Internal(format!("command task: {e}")))?
}

fn command(program: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.args(args);
    c
}

/// The `[package] name` (or `[lib] name`) of the crate in `dir`, as the library file names it.
fn lib_name(dir: &Path) -> Result<String> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let manifest: toml::Table = toml::from_str(&text)
        .map_err(|e| Error::Config { location: Some(path.display().to_string()), message: e.to_string() })?;
    let name = manifest
        .get("lib")
        .and_then(|l| l.get("name"))
        .or_else(|| manifest.get("package").and_then(|p| p.get("name")))
        .and_then(|n| n.as_str())
        .ok_or_else(|| Error::Config {
            location: Some(path.display().to_string()),
            message: "no package name".into(),
        })?;
    Ok(name.replace('-', "_"))
}

/// Builds the plugin crate in `dir` for `wasm32-wasip2` (adding the target if missing) with a
/// target directory shared by all plugins in the cache, and copies the component to `out`
/// (default: `dir`). Returns the component's path.
pub async fn build_plugin(dir: &Path, out: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    let installed = tokio::task::spawn_blocking(|| {
        command("rustup", &["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"))
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if !installed {
        run(command("rustup", &["target", "add", "wasm32-wasip2"]), "rustup target add wasm32-wasip2").await?;
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| cache.join("plugin-target"));
    let mut build = command("cargo", &["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"]);
    build.arg(dir.join("Cargo.toml")).env("CARGO_TARGET_DIR", &target_dir);
    run(build, "cargo build").await?;
    let lib = lib_name(dir)?;
    let built = target_dir.join("wasm32-wasip2/release").join(format!("{lib}.wasm"));
    let out = out.unwrap_or(dir);
    std::fs::create_dir_all(out).map_err(io(out))?;
    let dest = out.join(format!("{lib}.wasm"));
    std::fs::copy(&built, &dest).map_err(io(&built))?;
    Ok(dest)
}

/// What `sluice plugin test` runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginTest {
    /// The component.
    pub plugin: PluginSpec,
    /// Rows as JSON lines (transforms and sinks).
    pub input: Option<PathBuf>,
    /// The input schema as a DDL string; inferred from the rows when absent.
    pub schema: Option<String>,
    /// Batches to read (sources).
    pub batches: usize,
}

impl PluginTest {
    /// A test of the component at `path` with `config`.
    pub fn new(path: &Path, config: PluginConfig) -> Self {
        let mut plugin = PluginSpec::new(path);
        plugin.config = config;
        PluginTest { plugin, input: None, schema: None, batches: 3 }
    }
}

fn read_rows(path: &Path, ddl: Option<&str>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let schema: SchemaRef = match ddl {
        Some(d) => crate::schema::parse_ddl(d)?,
        None => {
            let (s, _) = arrow_json::reader::infer_json_schema(std::io::BufReader::new(&file), None)?;
            Arc::new(s)
        }
    };
    let file = std::fs::File::open(path).map_err(io(path))?;
    let reader = arrow_json::ReaderBuilder::new(schema.clone()).build(std::io::BufReader::new(file))?;
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

fn table(batches: &[RecordBatch]) -> Result<String> {
    Ok(arrow_cast::pretty::pretty_format_batches(batches)?.to_string())
}

fn ctx(batch: u64, partition: u32) -> CallContext {
    CallContext {
        query_id: Arc::from("plugin-test"),
        batch_id: batch,
        attempt: 0,
        partition,
        num_partitions: 1,
        watermark_ms: None,
        batch_timestamp_ms: chrono::Utc::now().timestamp_millis(),
    }
}

/// Runs a component on sample rows (or, for a source, reads a few batches) and returns what
/// to print.
pub async fn test_plugin(session: &Session, t: &PluginTest) -> Result<String> {
    let runtime = session.runtime();
    let report = runtime.inspect(&t.plugin.path, t.plugin.config.clone()).await?;
    let role = report.role.ok_or_else(|| Error::config(format!("{} plays no Sluice role", t.plugin.path.display())))?;
    let component = runtime.load(&t.plugin, role).await?;
    crate::plugin::requirements::check(&t.plugin.name, "the test's grants", &report.requirements, &t.plugin.grants)?;
    let started = Instant::now();
    let mut out = format!("{} ({}, {})\n", t.plugin.name, role.world(), report.contract);
    let input = || -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let path = t.input.as_deref().ok_or_else(|| Error::config("this plugin needs --input rows.jsonl"))?;
        read_rows(path, t.schema.as_deref())
    };
    match role {
        Role::Transform => {
            let (schema, rows) = input()?;
            let mut inst = component.transformer("plugin-test", &schema).await?;
            let c = ctx(0, 0);
            let mut result = inst.process(&c, &schema, &rows).await?;
            result.extend(inst.finish_batch(&c).await?);
            let n: usize = result.iter().map(|b| b.num_rows()).sum();
            out += &format!(
                "{} rows in, {n} rows out:\n{}\n",
                rows.iter().map(|b| b.num_rows()).sum::<usize>(),
                table(&result)?
            );
        }
        Role::Source => {
            let mut stream = component.source_stream("plugin-test").await?;
            let mut offset = stream.initial_offset().await?;
            out += &format!(
                "schema: {:?}\ninitial offset: {offset}\n",
                stream.schema().fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>()
            );
            for b in 0..t.batches {
                let end = stream.latest_offset(&offset, PluginReadLimit::Default).await?;
                if end == offset {
                    out += "no new data\n";
                    break;
                }
                let mut rows = Vec::new();
                for (p, part) in stream.partitions(&offset, &end).await?.iter().enumerate() {
                    rows.extend(stream.read_partition(&ctx(b as u64, p as u32), part).await?);
                }
                let n: usize = rows.iter().map(|r| r.num_rows()).sum();
                let shown: Vec<RecordBatch> = rows.iter().take(1).map(|r| r.slice(0, r.num_rows().min(10))).collect();
                out += &format!("batch {b}: offsets {offset} -> {end}, {n} rows (first 10):\n{}\n", table(&shown)?);
                offset = end;
            }
        }
        Role::BatchSink => {
            let (schema, rows) = input()?;
            let mut w = component.batch_writer("plugin-test", &schema).await?;
            let c = ctx(0, 0);
            w.begin_batch(&c, false).await?;
            w.write(&c, &rows).await?;
            w.commit_batch(&c).await?;
            out += &format!("wrote batch 0: {} rows\n", rows.iter().map(|b| b.num_rows()).sum::<usize>());
        }
        Role::ForeachSink => {
            let (schema, rows) = input()?;
            let mut w = component.foreach_writer("plugin-test", &schema).await?;
            let c = ctx(0, 0);
            match w.open(&c).await? {
                Some(pw) => {
                    w.process(&c, pw, &rows).await?;
                    w.close(&c, pw, None).await?;
                    out += &format!(
                        "wrote partition 0 of batch 0: {} rows\n",
                        rows.iter().map(|b| b.num_rows()).sum::<usize>()
                    );
                }
                None => out += "the plugin skipped partition 0 of batch 0\n",
            }
        }
    }
    out += &format!("done in {:.1} ms\n", started.elapsed().as_secs_f64() * 1e3);
    Ok(out)
}

const TRANSFORM_TEMPLATE: &str = r#"//! plugin-name: a Sluice transform. It upper-cases the string column `column` (default
//! `value`). Replace `process` with your logic.

use std::sync::Arc;

use sluice_sdk::arrow_array::{Array, RecordBatch, StringArray};
use sluice_sdk::arrow_schema::{DataType, Schema, SchemaRef};
use sluice_sdk::{BatchContext, Config, Error, Transform, util};

pub struct PluginName {
    column: String,
}

impl Transform for PluginName {
    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["column"])?;
        Ok(PluginName { column: config.str_or("column", "value")?.to_string() })
    }

    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error> {
        let i = util::column_index(input, &self.column)?;
        if input.field(i).data_type() != &DataType::Utf8 {
            return Err(Error::InvalidInput(format!("`{}` must be a string column", self.column)));
        }
        Ok(Arc::new(input.clone()))
    }

    fn process(&mut self, _ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        let i = util::column_index(&input.schema(), &self.column)?;
        let col = input.column(i).as_any().downcast_ref::<StringArray>()
            .ok_or_else(|| Error::InvalidInput(format!("`{}` must be a string column", self.column)))?;
        let upper: StringArray = col.iter().map(|v| v.map(str::to_uppercase)).collect();
        let mut columns = input.columns().to_vec();
        columns[i] = Arc::new(upper);
        Ok(RecordBatch::try_new(input.schema(), columns)?)
    }
}

sluice_sdk::export_transform!(PluginName);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::arrow_schema::Field;

    #[test]
    fn upper_cases_the_column() {
        let mut t = PluginName::create(Config::default()).expect("config");
        let schema = util::schema(vec![Field::new("value", DataType::Utf8, true)]);
        t.output_schema(&schema).expect("schema");
        let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![Some("a"), None]))]).expect("batch");
        let out = t.process(&BatchContext::for_batch(0), batch).expect("process");
        let col = out.column(0).as_any().downcast_ref::<StringArray>().expect("strings");
        assert_eq!(col.iter().collect::<Vec<_>>(), vec![Some("A"), None]);
    }
}
"#;

const SOURCE_TEMPLATE: &str = r#"//! plugin-name: a Sluice source. It counts up from 0, `step` numbers per batch (column `n`).
//! Replace it with your reader: offsets are JSON text; reading a range again must give the
//! same rows.

use std::sync::Arc;

use sluice_sdk::arrow_array::{Int64Array, RecordBatch};
use sluice_sdk::arrow_schema::{DataType, Field, SchemaRef};
use sluice_sdk::{Config, Error, PartitionReader, ReadLimit, Source, util};

pub struct PluginName {
    step: u64,
    schema: SchemaRef,
}

pub struct Range {
    from: u64,
    to: u64,
    schema: SchemaRef,
}

fn number(text: &str) -> Result<u64, Error> {
    text.trim().parse().map_err(|_| Error::Failed(format!("`{text}` is not a number")))
}

impl Source for PluginName {
    type Reader = Range;

    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["step"])?;
        let step = config.int_or("step", 100)?;
        if step < 1 {
            return Err(Error::InvalidConfig("`step` must be at least 1".into()));
        }
        Ok(PluginName { step: step as u64, schema: util::schema(vec![Field::new("n", DataType::Int64, false)]) })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn initial_offset(&mut self) -> Result<String, Error> {
        Ok("0".into())
    }

    fn latest_offset(&mut self, start: &str, limit: ReadLimit) -> Result<String, Error> {
        let n = match limit {
            ReadLimit::MaxRows(m) => m.min(self.step),
            _ => self.step,
        };
        Ok((number(start)? + n).to_string())
    }

    fn partitions(&mut self, start: &str, end: &str) -> Result<Vec<String>, Error> {
        Ok(vec![format!("[{start},{end}]")])
    }

    fn open(&mut self, partition: &str) -> Result<Range, Error> {
        let inner = partition.trim_matches(|c| c == '[' || c == ']');
        let (a, b) = inner.split_once(',').ok_or_else(|| Error::Failed(format!("bad partition {partition}")))?;
        Ok(Range { from: number(a)?, to: number(b)?, schema: self.schema.clone() })
    }
}

impl PartitionReader for Range {
    fn next(&mut self) -> Result<Option<RecordBatch>, Error> {
        if self.from >= self.to {
            return Ok(None);
        }
        let values: Int64Array = (self.from..self.to).map(|v| v as i64).collect();
        self.from = self.to;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(values)])?))
    }
}

sluice_sdk::export_source!(PluginName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_replays_the_same_rows() {
        let mut s = PluginName::create(Config::new([("step", 5)])).expect("config");
        let end = s.latest_offset("0", ReadLimit::Default).expect("latest");
        assert_eq!(end, "5");
        let p = s.partitions("0", &end).expect("partitions");
        let a = s.open(&p[0]).expect("open").next().expect("read");
        let b = s.open(&p[0]).expect("open").next().expect("read");
        assert_eq!(a, b);
        assert_eq!(a.map(|b| b.num_rows()), Some(5));
    }
}
"#;

const BATCH_SINK_TEMPLATE: &str = r#"//! plugin-name: a Sluice foreachBatch sink. It logs how many rows each batch has. Replace
//! it with your writer: write batch `ctx.batch_id` idempotently (a re-run replaces it) and the
//! output is exactly-once.

use sluice_sdk::arrow_array::RecordBatch;
use sluice_sdk::arrow_schema::SchemaRef;
use sluice_sdk::{BatchContext, BatchSink, Config, Error, Level, log};

pub struct PluginName {
    batch: u64,
    rows: usize,
}

impl BatchSink for PluginName {
    fn create(config: Config, _schema: SchemaRef) -> Result<Self, Error> {
        config.check_keys(&[])?;
        Ok(PluginName { batch: 0, rows: 0 })
    }

    fn begin_batch(&mut self, ctx: &BatchContext, _rerun: bool) -> Result<(), Error> {
        self.batch = ctx.batch_id;
        self.rows = 0;
        Ok(())
    }

    fn write(&mut self, chunk: RecordBatch) -> Result<(), Error> {
        self.rows += chunk.num_rows();
        Ok(())
    }

    fn commit_batch(&mut self) -> Result<(), Error> {
        log(Level::Info, &format!("batch {}: {} rows", self.batch, self.rows));
        Ok(())
    }
}

sluice_sdk::export_batch_sink!(PluginName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_per_batch() {
        let mut s = PluginName::create(Config::default(), sluice_sdk::util::schema(vec![])).expect("config");
        s.begin_batch(&BatchContext::for_batch(3), false).expect("begin");
        s.commit_batch().expect("commit");
        assert_eq!((s.batch, s.rows), (3, 0));
    }
}
"#;

const FOREACH_SINK_TEMPLATE: &str = r#"//! plugin-name: a Sluice foreach sink (Spark's ForeachWriter, handed Arrow chunks). It logs
//! each partition's row count. Replace it with your writer; dedupe by (partition, epoch) for
//! exactly-once.

use sluice_sdk::arrow_array::RecordBatch;
use sluice_sdk::arrow_schema::SchemaRef;
use sluice_sdk::{BatchContext, Config, Error, ForeachSink, Level, PartitionWriter, log};

pub struct PluginName;

pub struct Writer {
    partition: u32,
    epoch: u64,
    rows: usize,
}

impl ForeachSink for PluginName {
    type Writer = Writer;

    fn create(config: Config, _schema: SchemaRef) -> Result<Self, Error> {
        config.check_keys(&[])?;
        Ok(PluginName)
    }

    fn open(&mut self, ctx: &BatchContext) -> Result<Option<Writer>, Error> {
        Ok(Some(Writer { partition: ctx.partition, epoch: ctx.batch_id, rows: 0 }))
    }
}

impl PartitionWriter for Writer {
    fn process(&mut self, chunk: RecordBatch) -> Result<(), Error> {
        self.rows += chunk.num_rows();
        Ok(())
    }

    fn close(&mut self, error: Option<&str>) -> Result<(), Error> {
        log(Level::Info, &format!("partition {} of epoch {}: {} rows ({error:?})", self.partition, self.epoch, self.rows));
        Ok(())
    }
}

sluice_sdk::export_foreach_sink!(PluginName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_every_partition() {
        let mut s = PluginName::create(Config::default(), sluice_sdk::util::schema(vec![])).expect("config");
        let w = s.open(&BatchContext::for_batch(1)).expect("open").expect("a writer");
        assert_eq!((w.partition, w.epoch), (0, 1));
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source file of the SDK ships inside the binary, and the embedded manifest names
    /// every dependency of the real one: a crate made by `sluice plugin new` builds.
    #[test]
    fn the_embedded_sdk_is_the_whole_sdk() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust");
        let mut files = Vec::new();
        let mut dirs = vec![root.join("src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("the SDK's sources").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p.strip_prefix(&root).expect("under the SDK").to_string_lossy().into_owned());
                }
            }
        }
        assert!(files.len() >= 8, "found the SDK's sources: {files:?}");
        for f in &files {
            assert!(SDK_FILES.iter().any(|(n, _)| n == f), "{f} is not embedded in SDK_FILES");
        }
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the SDK's manifest");
        let deps = manifest.split("[dependencies]").nth(1).expect("a [dependencies] table");
        let deps = deps.split("\n[").next().unwrap_or_default();
        for line in deps.lines().filter(|l| l.contains('=') && !l.trim_start().starts_with('#')) {
            let name = line.split('=').next().unwrap_or_default().trim();
            assert!(SDK_MANIFEST.contains(&format!("\n{name} =")), "dependency `{name}` is missing from SDK_MANIFEST");
        }
    }
}

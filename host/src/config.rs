//! The pipeline file: TOML in, a validated [`PipelineSpec`] out.
//!
//! Parsing is two steps, raw then validated: serde with `deny_unknown_fields` rejects unknown
//! keys (naming the key, the line and the valid choices), then [`PipelineSpec::from_toml`]
//! checks what serde cannot (exactly one of `plugin`/`sql`, known trigger, durations, sizes,
//! grants). Sources and sinks check their own `options` when the query is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::options::{Options, parse_bytes, parse_duration};
use crate::spec::{
    ClockGrant, ConfigValue, DirGrant, Grants, OnError, OutputMode, PipelineSpec, PluginLimits, PluginSpec, SinkSpec,
    SourceSpec, TransformSpec,
};
use crate::trigger::Trigger;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    checkpoint_location: Option<String>,
    source: Spanned<RawSource>,
    #[serde(default)]
    transform: Vec<Spanned<RawTransform>>,
    sink: Spanned<RawSink>,
    trigger: Option<Spanned<RawTrigger>>,
}

/// The keys every plugin section (source, transform or sink) may carry. (Written out in each
/// section's struct: serde cannot deny unknown fields through `flatten`.)
struct RawPlugin {
    plugin: Option<Spanned<String>>,
    name: Option<String>,
    config: BTreeMap<String, toml::Value>,
    grants: Option<Spanned<RawGrants>>,
    limits: Option<RawLimits>,
    on_error: Option<Spanned<toml::Value>>,
}

impl RawPlugin {
    fn is_empty(&self) -> bool {
        self.plugin.is_none()
            && self.name.is_none()
            && self.config.is_empty()
            && self.grants.is_none()
            && self.limits.is_none()
            && self.on_error.is_none()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    format: Spanned<String>,
    #[serde(default)]
    options: BTreeMap<String, Spanned<toml::Value>>,
    path: Option<String>,
    schema: Option<String>,
    plugin: Option<Spanned<String>>,
    name: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    grants: Option<Spanned<RawGrants>>,
    limits: Option<RawLimits>,
    on_error: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    sql: Option<String>,
    watermark: Option<Spanned<RawWatermark>>,
    drop_duplicates: Option<RawDedup>,
    plugin: Option<Spanned<String>>,
    name: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    grants: Option<Spanned<RawGrants>>,
    limits: Option<RawLimits>,
    on_error: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatermark {
    column: String,
    delay: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDedup {
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    within_watermark: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    instances: Option<Spanned<i64>>,
    fuel: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    dirs: Vec<Spanned<RawDir>>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    sockets: Vec<Spanned<String>>,
    clock: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    host: String,
    guest: String,
    #[serde(default = "yes")]
    read_only: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    format: Spanned<String>,
    output_mode: Option<Spanned<String>>,
    #[serde(default)]
    options: BTreeMap<String, Spanned<toml::Value>>,
    path: Option<String>,
    plugin: Option<Spanned<String>>,
    name: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    grants: Option<Spanned<RawGrants>>,
    limits: Option<RawLimits>,
    on_error: Option<Spanned<toml::Value>>,
}

macro_rules! take_plugin {
    ($raw:expr) => {
        RawPlugin {
            plugin: $raw.plugin,
            name: $raw.name,
            config: $raw.config,
            grants: $raw.grants,
            limits: $raw.limits,
            on_error: $raw.on_error,
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    processing_time: Option<Spanned<String>>,
    available_now: Option<bool>,
    once: Option<bool>,
    continuous: Option<Spanned<String>>,
}

/// Maps byte offsets in the file to `file:line:column`, and relative paths to the file's
/// directory.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
}

impl Locator<'_> {
    fn at(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map(|p| offset - p).unwrap_or(offset + 1);
        format!("{}:{line}:{col}", self.file)
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> Error {
        Error::Config { location: Some(self.at(offset)), message: message.into() }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let url = p.contains("://");
        let path = PathBuf::from(p);
        if path.is_absolute() || url { path } else { self.base.join(path) }
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        _ => None,
    }
}

fn options(loc: &Locator<'_>, raw: BTreeMap<String, Spanned<toml::Value>>, at: Option<String>) -> Result<Options> {
    let mut o = Options::default();
    o.set_location(at);
    for (k, v) in raw {
        let value = scalar(v.get_ref())
            .ok_or_else(|| loc.err(v.span().start, format!("option `{k}` must be a string, number or boolean")))?;
        o.insert(k, value, Some(loc.at(v.span().start)));
    }
    Ok(o)
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::from(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::from(*b),
        toml::Value::Datetime(d) => serde_json::Value::from(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
        }
    }
}

/// A TOML value as a typed plugin config value.
fn config_value(v: &toml::Value) -> ConfigValue {
    match v {
        toml::Value::String(s) => ConfigValue::Str(s.clone()),
        toml::Value::Integer(i) => ConfigValue::Int(*i),
        toml::Value::Float(f) => ConfigValue::Float(*f),
        toml::Value::Boolean(b) => ConfigValue::Bool(*b),
        toml::Value::Datetime(d) => ConfigValue::Str(d.to_string()),
        toml::Value::Array(items)
            if items.iter().all(|i| !matches!(i, toml::Value::Array(_) | toml::Value::Table(_))) =>
        {
            ConfigValue::List(items.iter().map(config_value).collect())
        }
        other => ConfigValue::Json(toml_to_json(other).to_string()),
    }
}

/// Parses a `key=value` config argument (`sluice plugin inspect|test --config`): the value is
/// read as TOML (`3`, `true`, `[1, 2]`, `"text"`), and as a plain string when it is not TOML.
pub fn parse_config_arg(arg: &str) -> Result<(String, ConfigValue)> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| Error::Config { location: None, message: format!("`--config {arg}`: expected key=value") })?;
    let parsed = toml::from_str::<BTreeMap<String, toml::Value>>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .map(|v| config_value(&v))
        .unwrap_or_else(|| ConfigValue::Str(value.to_string()));
    Ok((key.trim().to_string(), parsed))
}

fn limits(loc: &Locator<'_>, raw: RawLimits) -> Result<PluginLimits> {
    let mut limits = PluginLimits::default();
    if let Some(m) = raw.memory {
        limits.memory_bytes =
            parse_bytes(m.get_ref()).map_err(|e| loc.err(m.span().start, format!("limits.memory: {e}")))?;
    }
    if let Some(d) = raw.timeout {
        limits.timeout =
            parse_duration(d.get_ref()).map_err(|e| loc.err(d.span().start, format!("limits.timeout: {e}")))?;
    }
    if let Some(n) = raw.instances {
        if *n.get_ref() < 1 || *n.get_ref() > 1024 {
            return Err(loc.err(n.span().start, "limits.instances must be between 1 and 1024"));
        }
        limits.instances = Some(*n.get_ref() as usize);
    }
    if let Some(f) = raw.fuel {
        if *f.get_ref() < 1 {
            return Err(loc.err(f.span().start, "limits.fuel must be positive"));
        }
        limits.fuel = Some(*f.get_ref() as u64);
    }
    Ok(limits)
}

fn check_host_port(loc: &Locator<'_>, s: &Spanned<String>, what: &str) -> Result<String> {
    let text = s.get_ref().trim();
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(text.to_string()),
        _ => Err(
            loc.err(s.span().start, format!("grants.{what}: `{text}` must be `host:port`, e.g. `api.example.com:443`"))
        ),
    }
}

fn grants(loc: &Locator<'_>, raw: Spanned<RawGrants>) -> Result<Grants> {
    let at = raw.span().start;
    let raw = raw.into_inner();
    let mut g = Grants::default();
    for d in raw.dirs {
        let start = d.span().start;
        let d = d.into_inner();
        if !d.guest.starts_with('/') {
            return Err(loc.err(start, format!("grants.dirs: guest path `{}` must be absolute, e.g. `/data`", d.guest)));
        }
        g.dirs.push(DirGrant { host: loc.resolve(&d.host), guest: d.guest, read_only: d.read_only });
    }
    g.env = raw.env;
    for h in &raw.http {
        g.http.push(check_host_port(loc, h, "http")?);
    }
    for s in &raw.sockets {
        g.sockets.push(check_host_port(loc, s, "sockets")?);
    }
    if let Some(c) = raw.clock {
        g.clock = match c.get_ref().trim().to_ascii_lowercase().as_str() {
            "real" => ClockGrant::Real,
            "batch" => ClockGrant::Batch,
            other => {
                return Err(
                    loc.err(c.span().start, format!("grants.clock: unknown clock `{other}`; valid: batch, real"))
                );
            }
        };
    }
    let _ = at;
    Ok(g)
}

fn on_error(loc: &Locator<'_>, raw: Spanned<toml::Value>) -> Result<OnError> {
    let at = raw.span().start;
    let bad = || {
        loc.err(
            at,
            "on_error must be \"fail\", { retry = N } or { dead_letter = { format = \"json\", path = \"dlq\" } }",
        )
    };
    match raw.get_ref() {
        toml::Value::String(s) if s.eq_ignore_ascii_case("fail") => Ok(OnError::Fail),
        toml::Value::Table(t) if t.len() == 1 => {
            if let Some(n) = t.get("retry") {
                let n = n
                    .as_integer()
                    .filter(|n| (0..=100).contains(n))
                    .ok_or_else(|| loc.err(at, "on_error.retry must be a number of retries between 0 and 100"))?;
                return Ok(OnError::Retry { attempts: n as u32 });
            }
            if let Some(toml::Value::Table(d)) = t.get("dead_letter") {
                let mut sink = SinkSpec::new(d.get("format").and_then(|f| f.as_str()).ok_or_else(bad)?);
                sink.location = Some(loc.at(at));
                for (k, v) in d {
                    match k.as_str() {
                        "format" => {}
                        "path" => sink.path = Some(loc.resolve(v.as_str().ok_or_else(bad)?)),
                        "options" => {
                            let table = v.as_table().ok_or_else(bad)?;
                            for (ok, ov) in table {
                                let value = scalar(ov).ok_or_else(bad)?;
                                sink.options.insert(ok.clone(), value, Some(loc.at(at)));
                            }
                        }
                        other => {
                            return Err(loc.err(
                                at,
                                format!(
                                    "unknown key `{other}` in on_error.dead_letter; valid keys: format, path, options"
                                ),
                            ));
                        }
                    }
                }
                return Ok(OnError::DeadLetter(Box::new(sink)));
            }
            Err(bad())
        }
        _ => Err(bad()),
    }
}

/// A plugin section, if its `plugin` key is set; `what` names the section in errors.
fn plugin(loc: &Locator<'_>, raw: RawPlugin, what: &str, at: usize) -> Result<Option<PluginSpec>> {
    let Some(path) = raw.plugin else {
        if !raw.is_empty() {
            return Err(loc.err(
                at,
                format!(
                    "{what}: `name`, `config`, `grants`, `limits` and `on_error` are for plugins; set `plugin` too{}",
                    if what.starts_with("transform") { " (or write the step as `sql` without them)" } else { "" }
                ),
            ));
        }
        return Ok(None);
    };
    let mut spec = PluginSpec::new(loc.resolve(path.get_ref()));
    spec.location = Some(loc.at(path.span().start));
    if let Some(n) = raw.name {
        spec.name = n;
    }
    spec.config = raw.config.iter().map(|(k, v)| (k.clone(), config_value(v))).collect();
    if let Some(g) = raw.grants {
        spec.grants = grants(loc, g)?;
    }
    if let Some(l) = raw.limits {
        spec.limits = limits(loc, l)?;
    }
    if let Some(e) = raw.on_error {
        spec.on_error = on_error(loc, e)?;
    }
    Ok(Some(spec))
}

fn trigger(loc: &Locator<'_>, raw: Option<Spanned<RawTrigger>>) -> Result<Trigger> {
    let Some(t) = raw else { return Ok(Trigger::Default) };
    let at = t.span().start;
    let t = t.into_inner();
    let mut chosen = Vec::new();
    if let Some(p) = &t.processing_time {
        let d = parse_duration(p.get_ref())
            .map_err(|e| loc.err(p.span().start, format!("trigger.processing_time: {e}")))?;
        chosen.push(Trigger::ProcessingTime(d));
    }
    if t.available_now == Some(true) {
        chosen.push(Trigger::AvailableNow);
    }
    if t.once == Some(true) {
        chosen.push(Trigger::Once);
    }
    if let Some(c) = &t.continuous {
        let d = parse_duration(c.get_ref()).map_err(|e| loc.err(c.span().start, format!("trigger.continuous: {e}")))?;
        if d < std::time::Duration::from_millis(10) {
            return Err(loc.err(
                c.span().start,
                "trigger.continuous is the epoch (checkpoint) interval and must be at least 10ms; rows flow as they arrive whatever it is",
            ));
        }
        chosen.push(Trigger::Continuous(d));
    }
    match chosen.len() {
        0 => Ok(Trigger::Default),
        1 => Ok(chosen[0]),
        _ => Err(loc.err(at, "[trigger] takes one of processing_time, available_now, once or continuous")),
    }
}

impl PipelineSpec {
    /// Reads and validates a pipeline file. Relative paths in it are relative to its directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &path.display().to_string(), &base)
    }

    /// Validates a pipeline given as TOML text; `file` names it in errors, `base` anchors
    /// relative paths.
    pub fn from_toml(text: &str, file: &str, base: &Path) -> Result<Self> {
        let raw: RawPipeline = toml::from_str(text).map_err(|e| {
            let location = e.span().map(|s| Locator { file, text, base }.at(s.start));
            Error::Config { location, message: e.message().trim().to_string() }
        })?;
        let loc = Locator { file, text, base };

        let src_at = raw.source.span().start;
        let src = raw.source.into_inner();
        let mut source = SourceSpec::new(src.format.get_ref());
        source.options = options(&loc, src.options, Some(loc.at(src_at)))?;
        source.path = src.path.as_deref().map(|p| loc.resolve(p));
        source.schema = src.schema;
        source.location = Some(loc.at(src.format.span().start));
        source.plugin = plugin(&loc, take_plugin!(src), "[source]", src_at)?;

        let mut transforms = Vec::new();
        for (i, t) in raw.transform.into_iter().enumerate() {
            let at = t.span().start;
            let t = t.into_inner();
            let what = format!("transform {i}");
            let (sql, watermark, dedup) = (t.sql, t.watermark, t.drop_duplicates);
            let one_of = || {
                loc.err(
                    at,
                    format!(
                        "{what} needs exactly one of `plugin` (a .wasm path), `sql` (a query over `input`), `watermark` (`{{ column = \"ts\", delay = \"10 minutes\" }}`) or `drop_duplicates` (`{{ columns = [\"id\"] }}`)"
                    ),
                )
            };
            let plugin = plugin(&loc, take_plugin!(t), &what, at)?;
            let step = match (sql, watermark, plugin, dedup) {
                (None, None, Some(p), None) => TransformSpec::Plugin(p),
                (Some(query), None, None, None) => TransformSpec::Sql { query },
                (None, None, None, Some(d)) => {
                    TransformSpec::DropDuplicates { columns: d.columns, within_watermark: d.within_watermark }
                }
                (None, Some(w), None, None) => {
                    let w = w.into_inner();
                    crate::spec::watermark_delay_ms(w.delay.get_ref())
                        .map_err(|message| loc.err(w.delay.span().start, message))?;
                    TransformSpec::Watermark { column: w.column, delay: w.delay.into_inner() }
                }
                _ => return Err(one_of()),
            };
            transforms.push(step);
        }

        let sink_at = raw.sink.span().start;
        let sk = raw.sink.into_inner();
        let mut sink = SinkSpec::new(sk.format.get_ref());
        if let Some(m) = &sk.output_mode {
            sink.output_mode = m.get_ref().parse::<OutputMode>().map_err(|message| loc.err(m.span().start, message))?;
        }
        sink.options = options(&loc, sk.options, Some(loc.at(sink_at)))?;
        sink.path = sk.path.as_deref().map(|p| loc.resolve(p));
        sink.location = Some(loc.at(sk.format.span().start));
        sink.plugin = plugin(&loc, take_plugin!(sk), "[sink]", sink_at)?;

        Ok(PipelineSpec {
            name: raw.name,
            checkpoint_location: raw.checkpoint_location.as_deref().map(|p| loc.resolve(p)),
            source,
            transforms,
            sink,
            trigger: trigger(&loc, raw.trigger)?,
        })
    }
}

#[cfg(test)]
mod tests;

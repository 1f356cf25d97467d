//! The pipeline file: TOML in, a validated [`PipelineSpec`] out.
//!
//! Parsing is two steps, raw then validated: serde with `deny_unknown_fields` rejects unknown
//! keys (naming the key, the line and the valid choices), then [`PipelineSpec::from_toml`]
//! checks what serde cannot (exactly one of `plugin`/`sql`, known trigger, durations, sizes).
//! Sources and sinks check their own `options` when the query is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::options::{Options, parse_bytes, parse_duration};
use crate::plugin::PluginLimits;
use crate::sink::OutputMode;
use crate::trigger::Trigger;

/// A validated pipeline: what `sluice run` runs and what the Rust API builds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PipelineSpec {
    /// The query name (unique among running queries; names the memory sink's table).
    pub name: Option<String>,
    /// Where offsets, commits and state are kept.
    pub checkpoint_location: Option<PathBuf>,
    /// Step 1: the input source.
    pub source: SourceSpec,
    /// Step 2: transformations, in order.
    pub transforms: Vec<TransformSpec>,
    /// Step 3: sink and output mode.
    pub sink: SinkSpec,
    /// Step 4: the trigger.
    pub trigger: Trigger,
}

/// The input source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceSpec {
    /// `socket`, `rate`, `text`, `json`, `csv`, `parquet`.
    pub format: String,
    /// Spark-style options.
    pub options: Options,
    /// Directory for file sources.
    pub path: Option<PathBuf>,
    /// User schema as a DDL string (`"ts TIMESTAMP, user STRING"`).
    pub schema: Option<String>,
    pub(crate) location: Option<String>,
}

/// One transformation step.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransformSpec {
    /// A Wasm component of the `transform` world.
    Plugin {
        /// Path of the `.wasm` component.
        path: PathBuf,
        /// Name used in logs, errors and progress (defaults to the file stem).
        name: String,
        /// The `config` table passed to the plugin's `init`.
        config: Vec<(String, String)>,
        /// Memory and time limits.
        limits: PluginLimits,
    },
    /// A SQL query over the previous step's output, visible as table `input`.
    Sql {
        /// The query.
        query: String,
    },
}

/// The sink.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SinkSpec {
    /// `console`, `memory`, `noop`.
    pub format: String,
    /// Append, update or complete.
    pub output_mode: OutputMode,
    /// Spark-style options.
    pub options: Options,
    /// Output directory for file sinks.
    pub path: Option<PathBuf>,
    pub(crate) location: Option<String>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    format: Spanned<String>,
    #[serde(default)]
    options: BTreeMap<String, Spanned<toml::Value>>,
    path: Option<String>,
    schema: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    plugin: Option<String>,
    sql: Option<String>,
    name: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    format: Spanned<String>,
    output_mode: Option<Spanned<String>>,
    #[serde(default)]
    options: BTreeMap<String, Spanned<toml::Value>>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    processing_time: Option<Spanned<String>>,
    available_now: Option<bool>,
    once: Option<bool>,
    continuous: Option<Spanned<String>>,
}

/// Maps byte offsets in the file to `file:line:column`.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map(|p| offset - p).unwrap_or(offset + 1);
        format!("{}:{line}:{col}", self.file)
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn options(loc: &Locator<'_>, raw: BTreeMap<String, Spanned<toml::Value>>, at: Option<String>) -> Result<Options> {
    let mut o = Options::default();
    o.set_location(at);
    for (k, v) in raw {
        let where_ = loc.at(v.span().start);
        let value = scalar(v.get_ref()).ok_or_else(|| Error::Config {
            location: Some(where_.clone()),
            message: format!("option `{k}` must be a string, number or boolean"),
        })?;
        o.insert(k, value, Some(where_));
    }
    Ok(o)
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
            let location = e.span().map(|s| Locator { file, text }.at(s.start));
            Error::Config { location, message: e.message().trim().to_string() }
        })?;
        let loc = Locator { file, text };
        let resolve = |p: &str| {
            let url = p.contains("://");
            let p = PathBuf::from(p);
            if p.is_absolute() || url { p } else { base.join(p) }
        };

        let src_at = Some(loc.at(raw.source.span().start));
        let src = raw.source.into_inner();
        let source = SourceSpec {
            format: src.format.get_ref().trim().to_ascii_lowercase(),
            options: options(&loc, src.options, src_at.clone())?,
            path: src.path.as_deref().map(resolve),
            schema: src.schema,
            location: Some(loc.at(src.format.span().start)),
        };

        let mut transforms = Vec::new();
        for (i, t) in raw.transform.into_iter().enumerate() {
            let at = Some(loc.at(t.span().start));
            let t = t.into_inner();
            let step = match (t.plugin, t.sql) {
                (Some(p), None) => {
                    let path = resolve(&p);
                    let name = t.name.unwrap_or_else(|| {
                        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| format!("step{i}"))
                    });
                    let mut config = Vec::new();
                    for (k, v) in t.config {
                        let v = scalar(&v).ok_or_else(|| Error::Config {
                            location: at.clone(),
                            message: format!("transform {i}: config `{k}` must be a string, number or boolean"),
                        })?;
                        config.push((k, v));
                    }
                    let mut limits = PluginLimits::default();
                    if let Some(l) = t.limits {
                        if let Some(m) = l.memory {
                            limits.memory_bytes = parse_bytes(m.get_ref()).map_err(|message| Error::Config {
                                location: Some(loc.at(m.span().start)),
                                message: format!("limits.memory: {message}"),
                            })?;
                        }
                        if let Some(d) = l.timeout {
                            limits.timeout = parse_duration(d.get_ref()).map_err(|message| Error::Config {
                                location: Some(loc.at(d.span().start)),
                                message: format!("limits.timeout: {message}"),
                            })?;
                        }
                    }
                    TransformSpec::Plugin { path, name, config, limits }
                }
                (None, Some(query)) => {
                    if !t.config.is_empty() || t.limits.is_some() {
                        return Err(Error::Config {
                            location: at,
                            message: format!("transform {i}: `config` and `limits` are for plugin steps, not `sql`"),
                        });
                    }
                    TransformSpec::Sql { query }
                }
                _ => {
                    return Err(Error::Config {
                        location: at,
                        message: format!(
                            "transform {i} needs exactly one of `plugin` (a .wasm path) or `sql` (a query over `input`)"
                        ),
                    });
                }
            };
            transforms.push(step);
        }

        let sink_at = Some(loc.at(raw.sink.span().start));
        let sk = raw.sink.into_inner();
        let output_mode = match &sk.output_mode {
            None => OutputMode::Append,
            Some(m) => m
                .get_ref()
                .parse()
                .map_err(|message: String| Error::Config { location: Some(loc.at(m.span().start)), message })?,
        };
        let sink = SinkSpec {
            format: sk.format.get_ref().trim().to_ascii_lowercase(),
            output_mode,
            options: options(&loc, sk.options, sink_at)?,
            path: sk.path.as_deref().map(resolve),
            location: Some(loc.at(sk.format.span().start)),
        };

        let trigger = match raw.trigger {
            None => Trigger::Default,
            Some(t) => {
                let at = Some(loc.at(t.span().start));
                let t = t.into_inner();
                let mut chosen = Vec::new();
                if let Some(p) = &t.processing_time {
                    let d: Duration = parse_duration(p.get_ref()).map_err(|message| Error::Config {
                        location: Some(loc.at(p.span().start)),
                        message: format!("trigger.processing_time: {message}"),
                    })?;
                    chosen.push(Trigger::ProcessingTime(d));
                }
                if t.available_now == Some(true) {
                    chosen.push(Trigger::AvailableNow);
                }
                if t.once == Some(true) {
                    chosen.push(Trigger::Once);
                }
                if let Some(c) = &t.continuous {
                    return Err(Error::Config {
                        location: Some(loc.at(c.span().start)),
                        message: "trigger.continuous is not supported yet; use processing_time, available_now or once"
                            .into(),
                    });
                }
                match chosen.len() {
                    0 => Trigger::Default,
                    1 => chosen[0],
                    _ => {
                        return Err(Error::Config {
                            location: at,
                            message: "[trigger] takes one of processing_time, available_now or once".into(),
                        });
                    }
                }
            }
        };

        Ok(PipelineSpec {
            name: raw.name,
            checkpoint_location: raw.checkpoint_location.as_deref().map(resolve),
            source,
            transforms,
            sink,
            trigger,
        })
    }
}

#[cfg(test)]
mod tests;

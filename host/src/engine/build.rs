//! Building a query from its spec: the source and sink from the connector registries, plugins
//! loaded and checked against their grants, SQL planned, output mode checked against the
//! query's shape (Spark's `UnsupportedOperationChecker`).

use std::collections::BTreeMap;

use super::reload::{ReloadContext, StepInfo};
use super::step::{PluginStep, Policy, Step, dead_letter_schema};
use super::watermark::WatermarkStep;
use super::{Query, parallelism};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::plugin::{PluginRuntime, Role};
use crate::sink::{Delivery, MemoryTables, SinkContext};
use crate::source::SourceContext;
use crate::spec::{OnError, OutputMode, PipelineSpec, PluginSpec, StepRef, TransformSpec};
use crate::sql::{DedupStep, SqlStep};

/// The query id a checkpoint holds, if it has one.
async fn checkpoint_id(checkpoint: &Option<Checkpoint>) -> Result<Option<uuid::Uuid>> {
    let Some(c) = checkpoint else { return Ok(None) };
    let Some(m) = c.metadata().await? else { return Ok(None) };
    uuid::Uuid::parse_str(&m.id)
        .map(Some)
        .map_err(|e| Error::CorruptCheckpoint { path: c.name("metadata"), reason: format!("bad query id: {e}") })
}

/// The `on_error` policy of a plugin step; a dead-letter sink is built here.
pub(super) async fn policy(
    p: &PluginSpec,
    input: &arrow_schema::SchemaRef,
    checkpoint: bool,
    cx: &SinkContext<'_>,
) -> Result<Policy> {
    Ok(match &p.on_error {
        OnError::Fail => Policy::Fail,
        OnError::Retry { attempts } => Policy::Retry(*attempts),
        OnError::DeadLetter(spec) => {
            let provider = crate::sink::provider(spec)?;
            if provider.needs_checkpoint(spec) && !checkpoint {
                return Err(Error::MissingOption {
                    component: format!("dead-letter {} sink of plugin `{}`", spec.format, p.name),
                    key: "checkpoint_location".into(),
                    hint: Some("a file sink is exactly-once through the query's checkpoint".into()),
                    location: spec.location.clone(),
                });
            }
            let schema = dead_letter_schema(input);
            let sink = crate::sink::build(spec, cx).await?;
            sink.check_schema(&schema)?;
            Policy::DeadLetter { sink, schema }
        }
    })
}

impl Query {
    /// Builds every part of `spec`, loading plugins and planning SQL, and checks the output mode
    /// against the query's shape.
    pub(crate) async fn build(spec: &PipelineSpec, runtime: &PluginRuntime, tables: &MemoryTables) -> Result<Query> {
        Self::build_with_id(spec, runtime, tables, None).await
    }

    /// Like [`Query::build`]; a query whose checkpoint has no id yet gets `id` (a new one if `None`).
    pub(crate) async fn build_with_id(
        spec: &PipelineSpec,
        runtime: &PluginRuntime,
        tables: &MemoryTables,
        id: Option<uuid::Uuid>,
    ) -> Result<Query> {
        let checkpoint = spec.checkpoint_location.as_deref().map(Checkpoint::open).transpose()?;
        let id = checkpoint_id(&checkpoint).await?.or(id).unwrap_or_else(uuid::Uuid::new_v4);
        let query_id = id.to_string();
        let parallelism = parallelism();
        let sink_provider = crate::sink::provider(&spec.sink)?;
        if checkpoint.is_none() && sink_provider.needs_checkpoint(&spec.sink) {
            return Err(Error::MissingOption {
                component: format!("{} sink", spec.sink.format),
                key: "checkpoint_location".into(),
                hint: Some(format!(
                    "the {} sink is exactly-once: it needs a checkpoint for its offsets",
                    spec.sink.format
                )),
                location: spec.sink.location.clone(),
            });
        }
        let source =
            crate::source::build(&spec.source, &SourceContext { runtime, query_id: &query_id, parallelism }).await?;
        if checkpoint.is_some() && !source.replayable() && !source.accepts_at_most_once() {
            return Err(Error::Config {
                location: spec.source.location.clone(),
                message: format!(
                    "{} cannot replay data, so a checkpoint cannot make it exactly-once; set source option atMostOnce = \"true\" to accept losing uncommitted data on a crash, or drop checkpoint_location",
                    source.description()
                ),
            });
        }
        let sink_cx =
            SinkContext { runtime, tables, query_id: &query_id, query_name: spec.name.as_deref(), parallelism };
        let mode = spec.sink.output_mode;
        let mut schema = source.schema();
        let mut steps = Vec::new();
        let mut stateful: Option<(usize, bool)> = None;
        let mut watermark: Option<(String, i64)> = None;
        for (i, t) in spec.transforms.iter().enumerate() {
            match t {
                TransformSpec::Plugin(p) => {
                    let component = runtime.load(p, Role::Transform).await?;
                    crate::plugin::requirements::check(
                        &p.name,
                        &format!("[[transform]] {i}"),
                        &component.requirements().await?,
                        &p.grants,
                    )?;
                    let policy = policy(p, &schema, checkpoint.is_some(), &sink_cx).await?;
                    let step = PluginStep::try_new(component, &query_id, schema.clone(), parallelism, policy).await?;
                    schema = step.output_schema();
                    steps.push(Step::Plugin(step));
                }
                TransformSpec::Watermark { column, delay } => {
                    if watermark.is_some() {
                        return Err(Error::Unsupported {
                            step: i,
                            message: "a query has one watermark; this one already defines it in an earlier step".into(),
                        });
                    }
                    let step = WatermarkStep::try_new(i, column, delay, &schema)?;
                    watermark = Some((step.column.clone(), step.delay_ms));
                    steps.push(Step::Watermark(step));
                }
                TransformSpec::DropDuplicates { columns, within_watermark } => {
                    let wm = watermark.as_ref().map(|(c, d)| (c.as_str(), *d));
                    steps.push(Step::Dedup(DedupStep::try_new(i, &schema, columns, *within_watermark, wm)?));
                }
                TransformSpec::Sql { query } => {
                    // The watermark's column, if this step still sees it.
                    let event_time = watermark
                        .as_ref()
                        .map(|(c, _)| c.as_str())
                        .filter(|c| schema.fields().iter().any(|f| f.name().as_str() == *c));
                    let step = SqlStep::try_new(i, query, schema.clone(), mode, event_time).await?;
                    if step.is_stateful() {
                        if let Some((first, _)) = stateful {
                            return Err(Error::Unsupported {
                                step: i,
                                message: format!(
                                    "step {first} already aggregates; chaining aggregations needs append mode with watermarks, which this build does not have yet"
                                ),
                            });
                        }
                        stateful = Some((i, step.has_event_time_key()));
                    }
                    schema = step.output_schema();
                    steps.push(Step::Sql(step));
                }
            }
        }
        if let crate::trigger::Trigger::Continuous(interval) = spec.trigger {
            check_continuous(&steps, interval)?;
        }
        check_output_mode(stateful, watermark.as_ref().map(|(c, _)| c.as_str()), mode)?;
        let sink = crate::sink::build(&spec.sink, &sink_cx).await?;
        sink.check_schema(&schema)?;
        let mut conf = BTreeMap::new();
        conf.insert("sluice.sources".to_string(), "1".to_string());
        conf.insert("sluice.source.0.format".to_string(), spec.source.format.clone());
        for (i, step) in steps.iter().enumerate() {
            let fp = match step {
                Step::Sql(s) => s.state_fingerprint(),
                Step::Dedup(d) => Some(d.fingerprint()),
                _ => None,
            };
            if let Some(fp) = fp {
                conf.insert(format!("sluice.state.{i}"), fp);
            }
        }
        let mut infos = BTreeMap::new();
        let mut input = source.schema();
        for (i, step) in steps.iter().enumerate() {
            let output = match step {
                Step::Plugin(p) => {
                    let info = StepInfo {
                        input: input.clone(),
                        output: p.output_schema(),
                        role: Role::Transform,
                        version: p.component.version.clone(),
                    };
                    infos.insert(StepRef::Transform(i), info);
                    p.output_schema()
                }
                Step::Sql(s) => s.output_schema(),
                Step::Watermark(_) | Step::Dedup(_) => input.clone(),
            };
            input = output;
        }
        if let Some(c) = sink.plugin() {
            let info =
                StepInfo { input: schema.clone(), output: schema.clone(), role: c.role, version: c.version.clone() };
            infos.insert(StepRef::Sink, info);
        }
        if let Some(c) = source.plugin() {
            let info =
                StepInfo { input: source.schema(), output: source.schema(), role: c.role, version: c.version.clone() };
            infos.insert(StepRef::Source, info);
        }
        let (reload, reload_rx) = ReloadContext::new(
            runtime.clone(),
            tables.clone(),
            query_id.clone(),
            parallelism,
            checkpoint.is_some(),
            infos,
        );
        let guarantee = guarantee(
            crate::source::provider(&spec.source)?.replayable() && source.replayable(),
            checkpoint.is_some(),
            sink_provider.delivery(&spec.sink),
            &spec.sink.format,
        );
        Ok(Query {
            name: spec.name.clone(),
            trigger: spec.trigger,
            mode,
            source,
            steps,
            sink,
            output_schema: schema,
            checkpoint,
            id,
            conf,
            guarantee,
            reload,
            reload_rx,
        })
    }
}

/// Spark's output-mode matrix for the shapes this build supports. `stateful`: the aggregation
/// step, and whether it groups by the watermark's event time.
fn check_output_mode(stateful: Option<(usize, bool)>, watermark: Option<&str>, mode: OutputMode) -> Result<()> {
    match (stateful, mode) {
        (None, OutputMode::Complete) => Err(Error::OutputMode {
            mode: mode.to_string(),
            reason: "when there are no streaming aggregations (complete mode re-emits a whole result table, which only an aggregation has)".into(),
            allowed: vec!["append".into(), "update".into()],
        }),
        (Some((i, false)), OutputMode::Append) => Err(Error::OutputMode {
            mode: mode.to_string(),
            reason: match watermark {
                None => format!(
                    "for the streaming aggregation in step {i} without a watermark (its rows can change with every batch); add a step `watermark = {{ column = \"ts\", delay = \"10 minutes\" }}` before it and group by window(ts, ...)"
                ),
                Some(c) => format!(
                    "for the streaming aggregation in step {i}: it does not group by the watermark's column `{c}` or a window(`{c}`, ...) of it, so no group ever closes"
                ),
            },
            allowed: vec!["update".into(), "complete".into()],
        }),
        _ => Ok(()),
    }
}

/// The continuous trigger runs stateless queries only, as Spark's continuous processing does:
/// rows flow through as they arrive, and no state is kept between epochs.
fn check_continuous(steps: &[Step], interval: std::time::Duration) -> Result<()> {
    if interval < crate::trigger::MIN_EPOCH {
        return Err(Error::config(format!(
            "the continuous trigger's epoch (checkpoint) interval must be at least {} ms, not {} ms; rows flow as they arrive whatever it is",
            crate::trigger::MIN_EPOCH.as_millis(),
            interval.as_millis()
        )));
    }
    for (i, step) in steps.iter().enumerate() {
        let what = match step {
            Step::Sql(s) if s.is_stateful() => "an aggregation",
            Step::Dedup(_) => "drop_duplicates",
            Step::Watermark(_) => "a watermark",
            _ => continue,
        };
        return Err(Error::Unsupported {
            step: i,
            message: format!(
                "the continuous trigger runs stateless queries only (projections, filters, plugin transforms), and step {i} is {what}, which keeps state across batches; use the default trigger or processing_time for it"
            ),
        });
    }
    Ok(())
}

/// The end-to-end delivery guarantee of a query, as `sluice validate` states it.
fn guarantee(replayable: bool, checkpoint: bool, sink: Delivery, format: &str) -> String {
    match (replayable, checkpoint, sink) {
        (false, _, _) => "at-most-once: the source cannot replay what a crash loses".into(),
        (true, false, _) => "at-least-once within this run; no checkpoint, so a restart begins anew".into(),
        (true, true, Delivery::ExactlyOnce) => {
            format!("exactly-once (a replayable source, a checkpoint and the exactly-once {format} sink)")
        }
        (true, true, Delivery::AtLeastOnce) if format.starts_with("foreach") => {
            format!("at-least-once; exactly-once if the {format} sink writes idempotently by batch id (and partition)")
        }
        (true, true, Delivery::AtLeastOnce) => {
            format!("at-least-once (the {format} sink may repeat a batch after a crash)")
        }
    }
}

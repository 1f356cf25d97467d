//! Hot reload: a plugin replaced while its query runs, at a batch boundary, keeping offsets and
//! state.
//!
//! The new version is loaded, checked against its grants and created (its config validated,
//! its output schema planned) off the loop, by whoever asks ([`ReloadContext::prepare`]); only a
//! version that is ready and keeps the step's output schema reaches the loop, which swaps it in
//! between two batches. If anything fails, the old version keeps running and the reason is
//! logged and reported in the next progress.
//!
//! Every batch logs the version of each plugin in `offsets/N` (a field of its own, not `conf`,
//! which would refuse every plugin change), and the checkpoint keeps a copy of every version it
//! ran (`plugins/<version>.wasm` and `.json`). A batch re-run after a crash runs with the
//! versions its offsets name, so recovery stays exactly-once across a swap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow_schema::SchemaRef;
use tokio::sync::{mpsc, oneshot};

use super::step::PluginStep;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::plugin::{PluginComponent, PluginRuntime, Role};
use crate::sink::plugin::{BatchSinkPlugin, ForeachSinkPlugin};
use crate::sink::{MemoryTables, Sink, SinkContext};
use crate::spec::{ConfigValue, PluginSpec, StepRef};

/// What a step looks like to a reload: the schema it gets and the one it must keep producing.
#[derive(Debug, Clone)]
pub(super) struct StepInfo {
    pub(super) input: SchemaRef,
    pub(super) output: SchemaRef,
    pub(super) role: Role,
    pub(super) version: String,
}

/// A new version, ready to swap in.
#[allow(clippy::large_enum_variant, reason = "one at a time, moved once")]
pub(super) enum Prepared {
    Transform(PluginStep),
    Sink(Box<dyn Sink>),
}

/// A request to the loop: swap this in at the next batch boundary, then reply.
pub(super) struct Swap {
    pub(super) at: StepRef,
    pub(super) prepared: Prepared,
    pub(super) version: String,
    pub(super) reply: oneshot::Sender<()>,
}

/// Everything preparing a new version needs, shared by the query's handles.
pub(super) struct ReloadContext {
    runtime: PluginRuntime,
    tables: MemoryTables,
    query_id: String,
    parallelism: usize,
    checkpoint: bool,
    steps: Mutex<BTreeMap<StepRef, StepInfo>>,
    pub(super) tx: mpsc::Sender<Swap>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fields(s: &SchemaRef) -> Vec<(String, String)> {
    s.fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect()
}

impl ReloadContext {
    pub(super) fn new(
        runtime: PluginRuntime,
        tables: MemoryTables,
        query_id: String,
        parallelism: usize,
        checkpoint: bool,
        steps: BTreeMap<StepRef, StepInfo>,
    ) -> (Arc<Self>, mpsc::Receiver<Swap>) {
        let (tx, rx) = mpsc::channel(4);
        let ctx = ReloadContext { runtime, tables, query_id, parallelism, checkpoint, steps: Mutex::new(steps), tx };
        (Arc::new(ctx), rx)
    }

    /// The version running at `at`, if it is a plugin step.
    pub(super) fn version(&self, at: StepRef) -> Option<String> {
        lock(&self.steps).get(&at).map(|i| i.version.clone())
    }

    pub(super) fn set_version(&self, at: StepRef, version: &str) {
        if let Some(i) = lock(&self.steps).get_mut(&at) {
            i.version = version.to_string();
        }
    }

    /// Loads `spec` for step `at` and makes it ready to run: loaded, its grants checked, created
    /// and planned; a transform must keep the step's output schema.
    pub(super) async fn prepare(&self, at: StepRef, spec: &PluginSpec) -> Result<(Prepared, String)> {
        let info = lock(&self.steps).get(&at).cloned().ok_or_else(|| {
            Error::config(format!("{at} is not a plugin step of this query, so it cannot be replaced"))
        })?;
        let component = self.runtime.load(spec, info.role).await?;
        self.prepare_component(at, &info, component).await
    }

    /// Like [`Self::prepare`], for a component already loaded (a version kept in a checkpoint).
    async fn prepare_component(
        &self,
        at: StepRef,
        info: &StepInfo,
        component: PluginComponent,
    ) -> Result<(Prepared, String)> {
        let spec = component.spec.clone();
        let section = match at {
            StepRef::Transform(i) => format!("[[transform]] {i}"),
            other => format!("[{other}]"),
        };
        crate::plugin::requirements::check(&spec.name, &section, &component.requirements().await?, &spec.grants)?;
        let version = component.version.clone();
        let cx = SinkContext {
            runtime: &self.runtime,
            tables: &self.tables,
            query_id: &self.query_id,
            query_name: None,
            parallelism: self.parallelism,
        };
        let prepared = match at {
            StepRef::Transform(_) => {
                let policy = super::build::policy(&spec, &info.input, self.checkpoint, &cx).await?;
                let step = PluginStep::try_new(component, &self.query_id, info.input.clone(), self.parallelism, policy)
                    .await?;
                if fields(&step.output_schema()) != fields(&info.output) {
                    return Err(Error::config(format!(
                        "the new version of plugin `{}` outputs {:?}, but the step outputs {:?}; a change of output schema needs a restart",
                        spec.name,
                        fields(&step.output_schema()),
                        fields(&info.output)
                    )));
                }
                Prepared::Transform(step)
            }
            StepRef::Sink => {
                // Created once here so a bad config fails now, not at the next batch.
                let sink: Box<dyn Sink> = match info.role {
                    Role::BatchSink => {
                        component.batch_writer(&self.query_id, &info.input).await?;
                        Box::new(BatchSinkPlugin::new(component, &self.query_id))
                    }
                    _ => {
                        component.foreach_writer(&self.query_id, &info.input).await?;
                        Box::new(ForeachSinkPlugin::new(component, &self.query_id, self.parallelism))
                    }
                };
                Prepared::Sink(sink)
            }
            StepRef::Source => {
                return Err(Error::config(
                    "a source plugin cannot be replaced while the query runs (its offsets are its own): restart the query",
                ));
            }
        };
        Ok((prepared, version))
    }

    /// The version `version` of step `at` as the checkpoint kept it, ready to run: what a
    /// re-run batch needs when the current version differs from the one its offsets name.
    pub(super) async fn prepare_logged(
        &self,
        ckpt: &Checkpoint,
        at: StepRef,
        current: &PluginSpec,
        version: &str,
    ) -> Result<Prepared> {
        let info = lock(&self.steps).get(&at).cloned().ok_or_else(|| Error::Internal(format!("no step {at}")))?;
        let (spec, bytes) = load_version(ckpt, current, version).await?;
        let component = self.runtime.load_bytes(&spec, info.role, Arc::new(bytes)).await?;
        if component.version != version {
            return Err(Error::CorruptCheckpoint {
                path: ckpt.name(&format!("plugins/{version}.wasm")),
                reason: format!("it is version {}, not {version}", component.version),
            });
        }
        Ok(self.prepare_component(at, &info, component).await?.0)
    }
}

/// Keeps a copy of a plugin version in the checkpoint: its component and its config.
pub(super) async fn save_version(ckpt: &Checkpoint, component: &PluginComponent) -> Result<()> {
    let v = &component.version;
    ckpt.create(&format!("plugins/{v}.wasm"), bytes::Bytes::from(component.bytes.as_ref().clone())).await?;
    let meta = serde_json::json!({
        "name": component.spec.name,
        "path": component.spec.path.display().to_string(),
        "blake3": component.hash,
        "config": serde_json::from_str::<serde_json::Value>(&component.spec.config_json()).unwrap_or_default(),
    });
    ckpt.create(&format!("plugins/{v}.json"), bytes::Bytes::from(meta.to_string())).await?;
    Ok(())
}

/// A version kept in the checkpoint: `current`'s spec with the logged config, and the bytes.
async fn load_version(ckpt: &Checkpoint, current: &PluginSpec, version: &str) -> Result<(PluginSpec, Vec<u8>)> {
    let missing = |what: &str| Error::CorruptCheckpoint {
        path: ckpt.name(&format!("plugins/{version}.{what}")),
        reason: format!("the batch to re-run names plugin version {version}, but its copy is missing"),
    };
    let bytes = ckpt.read(&format!("plugins/{version}.wasm")).await?.ok_or_else(|| missing("wasm"))?;
    let meta = ckpt.read(&format!("plugins/{version}.json")).await?.ok_or_else(|| missing("json"))?;
    let meta: serde_json::Value = serde_json::from_slice(&meta).map_err(|e| Error::CorruptCheckpoint {
        path: ckpt.name(&format!("plugins/{version}.json")),
        reason: e.to_string(),
    })?;
    let mut spec = current.clone();
    spec.config = meta["config"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| Some((e.get(0)?.as_str()?.to_string(), ConfigValue::from_json(e.get(1)?))))
                .collect()
        })
        .unwrap_or_default();
    Ok((spec, bytes.to_vec()))
}

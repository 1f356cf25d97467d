//! The plugin runtime: Wasm components of the `transform` world, sandboxed.
//!
//! **Architecture Invariant:** this is the only module that names `wasmtime`.
//!
//! - One [`PluginRuntime`] (one `wasmtime::Engine`) per process. Components are compiled once
//!   and cached on disk by wasmtime's own cache (keyed by content hash and engine settings), so
//!   a restart loads the compiled form instead of compiling again.
//! - One `Store` per [`PluginInstance`]; the host state in it holds the WASI context (no files,
//!   network or environment granted), a memory limiter and the deadline of the current call.
//! - Every call has a memory cap ([`PluginLimits::memory_bytes`], default 256 MiB) and a time
//!   limit ([`PluginLimits::timeout`], default 30 s) enforced by epoch interruption: a ticker
//!   bumps the epoch every 10 ms, and the epoch callback traps the call once its deadline has
//!   passed (yielding to the async runtime on every tick before that).
//! - A trap, a timeout or a limit hit becomes a typed [`Error`] naming the plugin, with the
//!   tail of the plugin's stderr (where a Rust panic message goes); the instance is poisoned
//!   and never called again. The host process stays up.
//! - Plugin output is validated (well-formed Arrow IPC, the declared schema) before use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use tokio_util::task::AbortOnDropHandle;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::error::{Error, Limit, Result};

mod bindings {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit",
        exports: { default: async },
    });
}

use bindings::sluice::plugin::{log as wit_log, types as wit};

/// How often the epoch advances; the granularity of plugin time limits.
const TICK: Duration = Duration::from_millis(10);
/// How much of a plugin's stderr is kept to explain a trap.
const STDERR_CAPACITY: usize = 16 << 10;
/// Log lines a plugin may emit per call before the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 1000;

/// Memory and time limits for one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginLimits {
    /// Linear-memory cap per instance. Default 256 MiB.
    pub memory_bytes: u64,
    /// Wall-clock limit per call (`init`, `output-schema`, one `process`). Default 30 s.
    pub timeout: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { memory_bytes: 256 << 20, timeout: Duration::from_secs(30) }
    }
}

/// The process-wide Wasm engine and compiled-component cache.
#[derive(Clone)]
pub(crate) struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    _ticker: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("cache_dir", &self.inner.cache_dir).finish()
    }
}

/// The default compiled-component cache: `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`,
/// else `$HOME/.cache/sluice`, else `.sluice-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("sluice");
    }
    if let Some(d) = std::env::var_os("HOME") {
        return PathBuf::from(d).join(".cache").join("sluice");
    }
    PathBuf::from(".sluice-cache")
}

fn load_err(plugin: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::PluginLoad { plugin: plugin.to_string(), path: path.to_path_buf(), message: e.to_string() }
}

impl PluginRuntime {
    /// Creates the engine, with compiled components cached under `cache_dir`.
    /// Must be called inside a tokio runtime (it starts the epoch ticker).
    pub(crate) fn try_new(cache_dir: &Path) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let mut cache_config = wasmtime::CacheConfig::new();
        cache_config.with_directory(cache_dir.join("wasmtime"));
        let cache = wasmtime::Cache::new(cache_config).map_err(|e| load_err("*", cache_dir, e))?;
        config.cache(Some(cache));
        let engine = Engine::new(&config).map_err(|e| Error::Internal(format!("wasm engine: {e}")))?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Internal(format!("linking WASI: {e}")))?;
        bindings::Transform::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("linking sluice:plugin: {e}")))?;

        let ticking = engine.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticking.increment_epoch();
            }
        });
        Ok(PluginRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache_dir: cache_dir.to_path_buf(),
                _ticker: AbortOnDropHandle::new(ticker),
            }),
        })
    }

    /// Loads (compiling, or taking the cached compiled form) the component at `path`.
    pub(crate) async fn load(&self, name: &str, path: &Path) -> Result<PluginComponent> {
        let bytes = tokio::fs::read(path).await.map_err(|e| load_err(name, path, e))?;
        let engine = self.inner.engine.clone();
        let (n, p) = (name.to_string(), path.to_path_buf());
        let started = Instant::now();
        // Compilation is CPU-bound and can take seconds; keep it off the async workers' hot loop
        // by running it as a blocking section of this task.
        let component = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
            .await
            .map_err(|e| load_err(name, path, e))?
            .map_err(|e| load_err(&n, &p, format!("not a valid sluice:plugin component: {e:#}")))?;
        let pre = self.inner.linker.instantiate_pre(&component).and_then(bindings::TransformPre::new).map_err(|e| {
            load_err(name, path, format!("does not match the `transform` world of sluice:plugin@0.1.0: {e:#}"))
        })?;
        tracing::debug!(plugin = name, elapsed_ms = started.elapsed().as_millis() as u64, "component loaded");
        Ok(PluginComponent { runtime: self.clone(), name: name.to_string(), path: path.to_path_buf(), pre })
    }
}

/// A loaded component, ready to instantiate.
#[derive(Clone)]
pub(crate) struct PluginComponent {
    runtime: PluginRuntime,
    name: String,
    path: PathBuf,
    pre: bindings::TransformPre<HostState>,
}

/// The per-store host state.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: String,
    batch: Option<u64>,
    deadline: Instant,
    timed_out: bool,
    log_lines: u32,
}

struct MemoryLimiter {
    cap: usize,
    hit: Option<usize>,
    peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit: growing to {desired} bytes exceeds the cap of {} bytes",
                self.cap
            ));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for HostState {}

impl wit_log::Host for HostState {
    fn log(&mut self, level: wit_log::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let (plugin, batch) = (self.plugin.as_str(), self.batch);
        match level {
            wit_log::Level::Trace => tracing::trace!(plugin, batch, "{message}"),
            wit_log::Level::Debug => tracing::debug!(plugin, batch, "{message}"),
            wit_log::Level::Info => tracing::info!(plugin, batch, "{message}"),
            wit_log::Level::Warn => tracing::warn!(plugin, batch, "{message}"),
            wit_log::Level::Error => tracing::error!(plugin, batch, "{message}"),
        }
    }
}

/// The context of one `process` call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallContext {
    pub(crate) batch_id: u64,
    pub(crate) partition: u32,
    pub(crate) watermark_ms: Option<i64>,
    pub(crate) batch_timestamp_ms: i64,
}

/// One sandboxed instance of a plugin, with its own store and memory.
pub(crate) struct PluginInstance {
    name: String,
    store: Store<HostState>,
    bindings: bindings::Transform,
    stderr: MemoryOutputPipe,
    limits: PluginLimits,
    output_schema: Option<SchemaRef>,
    poisoned: bool,
    /// Total time spent in calls.
    pub(crate) busy: Duration,
}

impl PluginComponent {
    /// A new instance, initialised with `config`.
    pub(crate) async fn instantiate(
        &self,
        config: &[(String, String)],
        limits: PluginLimits,
    ) -> Result<PluginInstance> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().stderr(stderr.clone()).stdout(stderr.clone()).build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { cap: limits.memory_bytes as usize, hit: None, peak: 0 },
            plugin: self.name.clone(),
            batch: None,
            deadline: Instant::now() + limits.timeout,
            timed_out: false,
            log_lines: 0,
        };
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if Instant::now() >= s.deadline {
                s.timed_out = true;
                return Err(wasmtime::format_err!("time limit"));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        let bindings = self.pre.instantiate_async(&mut store).await.map_err(|e| Error::PluginLoad {
            plugin: self.name.clone(),
            path: self.path.clone(),
            message: format!("cannot instantiate: {e:#}"),
        })?;
        let mut instance = PluginInstance {
            name: self.name.clone(),
            store,
            bindings,
            stderr,
            limits,
            output_schema: None,
            poisoned: false,
            busy: Duration::ZERO,
        };
        let cfg = config.to_vec();
        instance.call("init", None, |b, s| Box::pin(async move { b.call_init(s, &cfg).await })).await?;
        Ok(instance)
    }
}

type CallFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<Result<T, wit::PluginError>>> + Send + 'a>>;

impl PluginInstance {
    /// Peak linear memory of this instance, in bytes.
    pub(crate) fn memory_peak(&self) -> usize {
        self.store.data().limiter.peak
    }

    async fn call<T>(
        &mut self,
        call: &'static str,
        batch: Option<u64>,
        f: impl for<'a> FnOnce(&'a bindings::Transform, &'a mut Store<HostState>) -> CallFuture<'a, T>,
    ) -> Result<T> {
        if self.poisoned {
            return Err(Error::Plugin {
                plugin: self.name.clone(),
                call,
                batch,
                message: "the instance trapped earlier and cannot be used again".into(),
            });
        }
        {
            let s = self.store.data_mut();
            s.batch = batch;
            s.deadline = Instant::now() + self.limits.timeout;
            s.timed_out = false;
            s.log_lines = 0;
        }
        self.store.set_epoch_deadline(1);
        let started = Instant::now();
        let result = f(&self.bindings, &mut self.store).await;
        self.busy += started.elapsed();
        let plugin = self.name.clone();
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let message = match e {
                    wit::PluginError::InvalidConfig(m) => format!("invalid config: {m}"),
                    wit::PluginError::InvalidInput(m) => format!("invalid input: {m}"),
                    wit::PluginError::Failed(m) => m,
                };
                Err(Error::Plugin { plugin, call, batch, message })
            }
            Err(trap) => {
                self.poisoned = true;
                let state = self.store.data();
                if state.timed_out {
                    return Err(Error::PluginLimit {
                        plugin,
                        call,
                        batch,
                        limit: Limit::Time,
                        detail: format!("{} ms", self.limits.timeout.as_millis()),
                    });
                }
                if let Some(wanted) = state.limiter.hit {
                    return Err(Error::PluginLimit {
                        plugin,
                        call,
                        batch,
                        limit: Limit::Memory,
                        detail: format!("{} bytes; it asked for {wanted}", self.limits.memory_bytes),
                    });
                }
                let stderr = self.stderr.contents();
                let stderr = String::from_utf8_lossy(&stderr);
                let tail: String = stderr
                    .trim()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                let root = trap.root_cause().to_string();
                let message = if tail.is_empty() { root } else { format!("{root}; plugin stderr: {tail}") };
                Err(Error::PluginTrap { plugin, call, batch, message })
            }
        }
    }

    /// Asks the plugin for its output schema given `input` (planning time) and remembers it.
    pub(crate) async fn output_schema(&mut self, input: &SchemaRef) -> Result<SchemaRef> {
        let ipc = encode_ipc(input, &[])?;
        let bytes = self
            .call("output-schema", None, |b, s| Box::pin(async move { b.call_output_schema(s, &ipc).await }))
            .await?;
        let (schema, _) = decode_ipc(bytes).map_err(|e| Error::Plugin {
            plugin: self.name.clone(),
            call: "output-schema",
            batch: None,
            message: format!("returned invalid Arrow IPC: {e}"),
        })?;
        self.output_schema = Some(schema.clone());
        Ok(schema)
    }

    /// Transforms `input`; the output is checked against the declared output schema.
    pub(crate) async fn process(
        &mut self,
        ctx: CallContext,
        input: &[RecordBatch],
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let ipc = encode_ipc(schema, input)?;
        let wctx = wit::BatchContext {
            batch_id: ctx.batch_id,
            partition: ctx.partition,
            watermark_ms: ctx.watermark_ms,
            batch_timestamp_ms: ctx.batch_timestamp_ms,
        };
        let bytes = self
            .call("process", Some(ctx.batch_id), |b, s| Box::pin(async move { b.call_process(s, wctx, &ipc).await }))
            .await?;
        let contract = |message: String| Error::Plugin {
            plugin: self.name.clone(),
            call: "process",
            batch: Some(ctx.batch_id),
            message,
        };
        let (got, batches) = decode_ipc(bytes).map_err(|e| contract(format!("returned invalid Arrow IPC: {e}")))?;
        if let Some(expected) = &self.output_schema {
            if !same_fields(expected, &got) {
                return Err(contract(format!(
                    "returned a batch whose schema {} differs from its declared output schema {}",
                    fields_text(&got),
                    fields_text(expected)
                )));
            }
        }
        Ok(batches)
    }
}

fn same_fields(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

fn fields_text(s: &Schema) -> String {
    let f: Vec<String> = s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
    format!("({})", f.join(", "))
}

/// Encodes batches as one Arrow IPC stream (the wire format of the WIT boundary).
pub(crate) fn encode_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    // The bytes the batches' rows occupy (not the buffers they may be slices of: batches
    // decoded without copying all point into one big buffer).
    let size: usize =
        batches.iter().flat_map(|b| b.columns()).map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::with_capacity(size + 1024), schema)?;
    for b in batches {
        w.write(b)?;
    }
    Ok(w.into_inner()?)
}

/// Decodes one Arrow IPC stream, validating it. Array data points into `bytes` (no copy)
/// where it is aligned.
pub(crate) fn decode_ipc(
    bytes: Vec<u8>,
) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), arrow_schema::ArrowError> {
    let mut buf = arrow_buffer::Buffer::from_vec(bytes);
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut batches = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf)? {
            Some(b) => batches.push(b),
            None if buf.is_empty() => break,
            None => {}
        }
    }
    decoder.finish()?;
    let schema = decoder
        .schema()
        .ok_or_else(|| arrow_schema::ArrowError::IpcError("the stream has no schema message".into()))?;
    Ok((schema, batches))
}

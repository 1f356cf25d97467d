//! The plugin runtime: Wasm components in every role, sandboxed.
//!
//! **Architecture Invariant:** this is the only module that names `wasmtime`.
//!
//! - One [`PluginRuntime`] (one `wasmtime::Engine`, one `Linker`) per process. Components are
//!   compiled once and cached on disk by wasmtime's own cache (keyed by content hash and
//!   engine settings), so a restart loads the compiled form instead of compiling again.
//! - A loaded [`PluginComponent`] knows its contract (`sluice:plugin@0.1.0` or `@0.2.0`, read
//!   from its exports) and its [`Role`]; the role modules (`transform`, `source`, `sink`)
//!   create instances of it.
//! - Every instance is a [`Sandboxed`] store of its own (see `sandbox` for what it may touch)
//!   and every call goes through [`Sandboxed::call`], which owns the limits: a deadline on the
//!   whole call (so time spent waiting in a host call counts too), epoch yields every 10 ms so
//!   the deadline can fire, optional fuel, memory accounting; and which turns a trap, a
//!   timeout or a limit hit into a typed [`Error`] naming the plugin, with the last lines of
//!   its output. A trapped or timed-out instance is poisoned: its owner makes a new one.
//! - What a plugin returns is validated (well-formed Arrow IPC, the declared schema) before use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::error::{Error, Limit, PluginFault, Result};
use crate::spec::{PluginConfig, PluginSpec};

mod bindings;
pub(crate) mod inspect;
pub(crate) mod requirements;
mod sandbox;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod transform;
pub(crate) mod wire;

use bindings::{v0_1, v0_2};
pub use requirements::Requirement;
use sandbox::{Budget, HostState, LimitHit};

/// How often the epoch advances: plugin code yields to the async runtime at least this often,
/// so call deadlines can fire.
const TICK: Duration = Duration::from_millis(10);
/// Log lines a plugin may emit per call before the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 1000;
/// Fuel given to a call without a fuel limit when fuel metering is on (effectively unlimited).
const UNLIMITED_FUEL: u64 = u64::MAX / 4;

/// The default process-wide memory budget for all plugin instances together.
pub const DEFAULT_MEMORY_BUDGET: u64 = 8 << 30;

/// The role a component plays, from the interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A batch-to-batch transform.
    Transform,
    /// A custom source.
    Source,
    /// A foreachBatch sink.
    BatchSink,
    /// A foreach sink.
    ForeachSink,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

impl Role {
    /// The world a component of this role targets.
    pub fn world(self) -> &'static str {
        match self {
            Role::Transform => "transform-plugin",
            Role::Source => "source-plugin",
            Role::BatchSink => "batch-sink-plugin",
            Role::ForeachSink => "foreach-sink-plugin",
        }
    }

    fn interface(self) -> &'static str {
        match self {
            Role::Transform => "sluice:plugin/transform@0.2.0",
            Role::Source => "sluice:plugin/source@0.2.0",
            Role::BatchSink => "sluice:plugin/batch-sink@0.2.0",
            Role::ForeachSink => "sluice:plugin/foreach-sink@0.2.0",
        }
    }

    const ALL: [Role; 4] = [Role::Transform, Role::Source, Role::BatchSink, Role::ForeachSink];
}

/// The contract version a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contract {
    /// `sluice:plugin@0.1.0` (world-level transform functions, string config).
    V0_1,
    /// `sluice:plugin@0.2.0`.
    V0_2,
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Contract::V0_1 => "sluice:plugin@0.1.0",
            Contract::V0_2 => "sluice:plugin@0.2.0",
        })
    }
}

/// Settings of the plugin runtime, fixed for the process.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Memory all plugin instances may hold together. Default [`DEFAULT_MEMORY_BUDGET`].
    pub memory_budget: u64,
    /// Fuel metering: counts the Wasm instructions of every call (reported in progress) and
    /// enables `limits.fuel`. Costs some speed; off by default.
    pub fuel: bool,
}

impl RuntimeConfig {
    /// Defaults, with compiled components cached in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Self {
        RuntimeConfig { cache_dir: cache_dir.to_path_buf(), memory_budget: DEFAULT_MEMORY_BUDGET, fuel: false }
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
    config: RuntimeConfig,
    budget: Arc<Budget>,
    _ticker: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("config", &self.inner.config).finish()
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
    /// Creates the engine. Must be called inside a tokio runtime (it starts the epoch ticker).
    pub(crate) fn try_new(config: RuntimeConfig) -> Result<Self> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true).consume_fuel(config.fuel);
        // The Wasm stack: deep recursion traps as a stack overflow well before the host's
        // stack is at risk.
        wasm.max_wasm_stack(1 << 20);
        // Plugins are WASI 0.2 components called one call at a time: without the component
        // model's concurrency support (wasmtime's default), a call skips its task bookkeeping.
        wasm.concurrency_support(false);
        // `SLUICE_PERF_MAP=1`: name plugin functions for `perf` (wasmtime writes
        // /tmp/perf-<pid>.map; build the plugin without `strip` to get its own function names).
        // `=jitdump`: also their machine code, for `perf annotate` (`perf record -k 1`, then
        // `perf inject --jit`).
        match std::env::var("SLUICE_PERF_MAP").as_deref() {
            Ok("1") => _ = wasm.profiler(wasmtime::ProfilingStrategy::PerfMap),
            Ok("jitdump") => _ = wasm.profiler(wasmtime::ProfilingStrategy::JitDump),
            _ => {}
        }
        let mut cache_config = wasmtime::CacheConfig::new();
        cache_config.with_directory(config.cache_dir.join("wasmtime"));
        let cache = wasmtime::Cache::new(cache_config).map_err(|e| load_err("*", &config.cache_dir, e))?;
        wasm.cache(Some(cache));
        let engine = Engine::new(&wasm).map_err(|e| Error::Internal(format!("wasm engine: {e}")))?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Internal(format!("linking WASI: {e}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| Error::Internal(format!("linking wasi:http: {e}")))?;
        v0_1::sluice::plugin::log::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("linking sluice:plugin@0.1.0: {e}")))?;
        v0_2::sluice::plugin::log::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("linking sluice:plugin@0.2.0: {e}")))?;

        let ticking = engine.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticking.increment_epoch();
            }
        });
        let budget = Budget::new(config.memory_budget);
        Ok(PluginRuntime {
            inner: Arc::new(RuntimeInner { engine, linker, config, budget, _ticker: AbortOnDropHandle::new(ticker) }),
        })
    }

    /// Bytes of plugin memory held by all instances now, and the budget.
    pub(crate) fn memory_in_use(&self) -> (u64, u64) {
        (self.inner.budget.used(), self.inner.budget.limit())
    }

    /// Compiles `bytes` (or takes the cached compiled form) as a component.
    async fn compile(&self, name: &str, path: &Path, bytes: Arc<Vec<u8>>) -> Result<Component> {
        let engine = self.inner.engine.clone();
        let started = Instant::now();
        // Compilation is CPU-bound and can take seconds; it runs on the blocking pool so the
        // async workers stay responsive.
        let component = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
            .await
            .map_err(|e| load_err(name, path, e))?
            .map_err(|e| load_err(name, path, format!("not a valid Wasm component: {e:#}")))?;
        tracing::debug!(plugin = name, elapsed_ms = started.elapsed().as_millis() as u64, "component loaded");
        Ok(component)
    }

    /// Loads the component of `spec`, which must play `role`.
    pub(crate) async fn load(&self, spec: &PluginSpec, role: Role) -> Result<PluginComponent> {
        let bytes = tokio::fs::read(&spec.path).await.map_err(|e| load_err(&spec.name, &spec.path, e))?;
        self.load_bytes(spec, role, Arc::new(bytes)).await
    }

    /// Loads a component from its bytes (e.g. a copy kept in a checkpoint).
    pub(crate) async fn load_bytes(
        &self,
        spec: &PluginSpec,
        role: Role,
        bytes: Arc<Vec<u8>>,
    ) -> Result<PluginComponent> {
        let (name, path) = (spec.name.as_str(), spec.path.as_path());
        if spec.limits.fuel.is_some() && !self.inner.config.fuel {
            return Err(Error::config(format!(
                "plugin `{name}` sets limits.fuel, but fuel metering is off in this runtime: set \
                 `RuntimeConfig::fuel = true` (`sluice run` and `sluice validate` turn it on when a \
                 pipeline sets limits.fuel)"
            )));
        }
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let component = self.compile(name, path, bytes.clone()).await?;
        let (contract, roles) = exported_roles(&self.inner.engine, &component);
        if !roles.contains(&role) {
            let found = if roles.is_empty() {
                "it exports no Sluice role".to_string()
            } else {
                let r: Vec<String> = roles.iter().map(|r| format!("{r} ({contract})")).collect();
                format!("it is a {} component", r.join(", "))
            };
            return Err(load_err(
                name,
                path,
                format!(
                    "this step needs a component of the `{}` world of sluice:plugin@0.2.0, but {found}; exports: {}",
                    role.world(),
                    export_names(&self.inner.engine, &component).join(", ")
                ),
            ));
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(name, path, format!("imports something this host does not provide: {e:#}")))?;
        let mut h = blake3::Hasher::new();
        h.update(hash.as_bytes());
        h.update(spec.config_json().as_bytes());
        let version = h.finalize().to_hex()[..16].to_string();
        Ok(PluginComponent { runtime: self.clone(), spec: spec.clone(), role, contract, pre, hash, version, bytes })
    }
}

fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    component.component_type().exports(engine).map(|(n, _)| n.to_string()).collect()
}

/// The contract and the roles a component exports.
fn exported_roles(engine: &Engine, component: &Component) -> (Contract, Vec<Role>) {
    let ty = component.component_type();
    let names: Vec<(String, bool)> =
        ty.exports(engine).map(|(n, e)| (n.to_string(), matches!(e.ty, ComponentItem::ComponentInstance(_)))).collect();
    let roles: Vec<Role> =
        Role::ALL.into_iter().filter(|r| names.iter().any(|(n, inst)| *inst && n == r.interface())).collect();
    if !roles.is_empty() {
        return (Contract::V0_2, roles);
    }
    let v1 = ["init", "output-schema", "process"].iter().all(|f| names.iter().any(|(n, inst)| !inst && n == f));
    if v1 { (Contract::V0_1, vec![Role::Transform]) } else { (Contract::V0_2, Vec::new()) }
}

/// A loaded component, ready to instantiate in its role.
#[derive(Clone)]
pub(crate) struct PluginComponent {
    runtime: PluginRuntime,
    pub(crate) spec: PluginSpec,
    pub(crate) role: Role,
    pub(crate) contract: Contract,
    pre: InstancePre<HostState>,
    /// blake3 of the component's bytes.
    pub(crate) hash: String,
    /// The plugin's version: a hash of the component and its config, as `offsets/N` logs it.
    pub(crate) version: String,
    pub(crate) bytes: Arc<Vec<u8>>,
}

impl std::fmt::Debug for PluginComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginComponent").field("name", &self.spec.name).field("role", &self.role).finish()
    }
}

/// A guest's own error, before the host names the plugin and the call.
pub(crate) struct GuestError {
    fault: PluginFault,
    message: String,
}

impl From<v0_1::sluice::plugin::types::PluginError> for GuestError {
    fn from(e: v0_1::sluice::plugin::types::PluginError) -> Self {
        use v0_1::sluice::plugin::types::PluginError as E;
        match e {
            E::InvalidConfig(m) => {
                GuestError { fault: PluginFault::InvalidConfig, message: format!("invalid config: {m}") }
            }
            E::InvalidInput(m) => {
                GuestError { fault: PluginFault::InvalidInput, message: format!("invalid input: {m}") }
            }
            E::Failed(m) => GuestError { fault: PluginFault::Failed, message: m },
        }
    }
}

impl From<v0_2::sluice::plugin::types::PluginError> for GuestError {
    fn from(e: v0_2::sluice::plugin::types::PluginError) -> Self {
        use v0_2::sluice::plugin::types::PluginError as E;
        match e {
            E::InvalidConfig(m) => {
                GuestError { fault: PluginFault::InvalidConfig, message: format!("invalid config: {m}") }
            }
            E::InvalidInput(m) => {
                GuestError { fault: PluginFault::InvalidInput, message: format!("invalid input: {m}") }
            }
            E::Retryable(m) => GuestError { fault: PluginFault::Retryable, message: format!("retryable: {m}") },
            E::Failed(m) => GuestError { fault: PluginFault::Failed, message: m },
        }
    }
}

/// Where a call sits in the stream (the WIT `batch-context`).
#[derive(Debug, Clone)]
pub(crate) struct CallContext {
    pub(crate) query_id: Arc<str>,
    pub(crate) batch_id: u64,
    pub(crate) attempt: u32,
    pub(crate) partition: u32,
    pub(crate) num_partitions: u32,
    pub(crate) watermark_ms: Option<i64>,
    pub(crate) batch_timestamp_ms: i64,
}

impl CallContext {
    fn to_v0_2(&self) -> v0_2::sluice::plugin::types::BatchContext {
        v0_2::sluice::plugin::types::BatchContext {
            query_id: self.query_id.to_string(),
            batch_id: self.batch_id,
            attempt: self.attempt,
            partition: self.partition,
            num_partitions: self.num_partitions,
            watermark_ms: self.watermark_ms,
            batch_timestamp_ms: self.batch_timestamp_ms,
        }
    }
}

/// Figures of one instance's calls, for progress.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallStats {
    pub(crate) calls: u64,
    pub(crate) busy: Duration,
    /// Fuel burnt (Wasm instructions, roughly), when fuel metering is on.
    pub(crate) fuel: u64,
}

fn config_v0_1(config: &PluginConfig) -> Vec<(String, String)> {
    config.iter().map(|(k, v)| (k.clone(), v.to_text())).collect()
}

fn config_v0_2(config: &PluginConfig) -> Vec<(String, v0_2::sluice::plugin::types::Value)> {
    use crate::spec::ConfigValue as C;
    use v0_2::sluice::plugin::types::{Scalar as S, Value as V};
    let scalar = |v: &C| match v {
        C::Str(s) => S::Str(s.clone()),
        C::Bool(b) => S::Boolean(*b),
        C::Int(i) => S::Int(*i),
        C::Float(f) => S::Float(*f),
        other => S::Str(other.to_text()),
    };
    config
        .iter()
        .map(|(k, v)| {
            let value = match v {
                C::Str(s) => V::Str(s.clone()),
                C::Bool(b) => V::Boolean(*b),
                C::Int(i) => V::Int(*i),
                C::Float(f) => V::Float(*f),
                C::List(items) => V::List(items.iter().map(scalar).collect()),
                C::Json(j) => V::Json(j.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

type CallFuture<'a, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = wasmtime::Result<std::result::Result<T, GuestError>>> + Send + 'a>,
>;

/// One sandboxed instance: a store of its own and the component instantiated in it.
pub(crate) struct Sandboxed {
    name: Arc<str>,
    store: Store<HostState>,
    instance: wasmtime::component::Instance,
    limits: crate::spec::PluginLimits,
    fuel: bool,
    query_id: Arc<str>,
    /// The (batch, partition) whose random stream the instance is in.
    seeded: Option<(u64, u32)>,
    created_ms: i64,
    poisoned: bool,
    pub(crate) stats: CallStats,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl PluginComponent {
    /// A new sandboxed instance with this component's grants (or none, for `requirements` calls).
    async fn sandbox(&self, query_id: &str, grants: bool) -> Result<Sandboxed> {
        let spec = &self.spec;
        let empty = crate::spec::Grants::default();
        let g = if grants { &spec.grants } else { &empty };
        let state = sandbox::host_state(&spec.name, g, spec.limits.memory_bytes, self.runtime.inner.budget.clone())
            .map_err(|m| load_err(&spec.name, &spec.path, m))?;
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel = self.runtime.inner.config.fuel;
        if fuel {
            store.set_fuel(UNLIMITED_FUEL).map_err(|e| Error::Internal(format!("fuel: {e}")))?;
        }
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);
        let instantiated = tokio::time::timeout(spec.limits.timeout, self.pre.instantiate_async(&mut store)).await;
        let instance = match instantiated {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                let hit = store.data().limiter.hit;
                return Err(match hit {
                    Some(h) => limit_error(&spec.name, "instantiate", None, h, spec.limits.memory_bytes),
                    None => load_err(&spec.name, &spec.path, format!("cannot instantiate: {e:#}")),
                });
            }
            Err(_) => {
                return Err(Error::PluginLimit {
                    plugin: spec.name.clone(),
                    call: "instantiate",
                    batch: None,
                    limit: Limit::Time,
                    detail: format!("{} ms", spec.limits.timeout.as_millis()),
                });
            }
        };
        Ok(Sandboxed {
            name: Arc::from(spec.name.as_str()),
            store,
            instance,
            limits: spec.limits,
            fuel,
            query_id: Arc::from(query_id),
            seeded: None,
            created_ms: now_ms(),
            poisoned: false,
            stats: CallStats::default(),
        })
    }

    /// What the plugin declares it needs for its config (its role's `requirements`), asked of a
    /// fresh instance that is granted nothing. Components of 0.1.0 declare nothing (and get
    /// nothing).
    pub(crate) async fn requirements(&self) -> Result<Vec<Requirement>> {
        if self.contract == Contract::V0_1 {
            return Ok(Vec::new());
        }
        let mut sb = self.sandbox("requirements", false).await?;
        let bind = |e: wasmtime::Error| load_err(&self.spec.name, &self.spec.path, format!("cannot bind: {e:#}"));
        macro_rules! ask {
            ($iface:ident) => {{
                let guest = v0_2::exports::sluice::plugin::$iface::GuestIndices::new(&self.pre)
                    .and_then(|i| i.load(&mut sb.store, &sb.instance))
                    .map_err(bind)?;
                let config = config_v0_2(&self.spec.config);
                sb.call(&guest, "requirements", None, move |g, s| {
                    Box::pin(async move { g.call_requirements(s, &config).await.map(|r| r.map_err(GuestError::from)) })
                })
                .await?
            }};
        }
        let declared = match self.role {
            Role::Transform => ask!(transform),
            Role::Source => ask!(source),
            Role::BatchSink => ask!(batch_sink),
            Role::ForeachSink => ask!(foreach_sink),
        };
        use v0_2::sluice::plugin::types::Requirement as R;
        Ok(declared
            .into_iter()
            .map(|r| match r {
                R::Dir(d) => Requirement::Dir { guest: d.guest_path, writable: d.writable },
                R::Http(h) => Requirement::Http(h),
                R::Socket(s) => Requirement::Socket(s),
                R::Env(e) => Requirement::Env(e),
                R::WallClock => Requirement::WallClock,
            })
            .collect())
    }
}

fn limit_error(plugin: &str, call: &'static str, batch: Option<u64>, hit: LimitHit, cap: u64) -> Error {
    let (limit, detail) = match hit {
        LimitHit::Instance(wanted) => {
            (Limit::Memory, format!("{cap} bytes; it asked for {wanted} over all its memories and tables"))
        }
        LimitHit::Process(budget) => {
            (Limit::ProcessMemory, format!("{budget} bytes for all plugin instances together"))
        }
        LimitHit::Table(n) => (Limit::Table, format!("{} elements; it asked for {n}", sandbox::MAX_TABLE_ELEMENTS)),
    };
    Error::PluginLimit { plugin: plugin.to_string(), call, batch, limit, detail }
}

impl Sandboxed {
    /// Peak memory of this instance over all its memories and tables, in bytes.
    pub(crate) fn memory_peak(&self) -> u64 {
        self.store.data().limiter.peak
    }

    /// Whether the instance trapped or timed out and must be replaced.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn contract_error(&self, call: &'static str, batch: Option<u64>, message: String) -> Error {
        Error::Plugin { plugin: self.name.to_string(), call, batch, fault: PluginFault::Contract, message }
    }

    /// Runs one call into the guest under the instance's limits. `ctx` sets the batch the call
    /// belongs to, the wall clock the plugin sees and its random seed.
    pub(crate) async fn call<G, T>(
        &mut self,
        guest: &G,
        call: &'static str,
        ctx: Option<&CallContext>,
        f: impl for<'a> FnOnce(&'a G, &'a mut Store<HostState>) -> CallFuture<'a, T>,
    ) -> Result<T> {
        let batch = ctx.map(|c| c.batch_id);
        if self.poisoned {
            return Err(self.contract_error(
                call,
                batch,
                "the instance trapped earlier and cannot be used again".into(),
            ));
        }
        let (clock, seed) = match ctx {
            Some(c) => {
                let key = (c.batch_id, c.partition);
                let seed = (self.seeded != Some(key)).then(|| sandbox::seed(&c.query_id, c.batch_id, c.partition));
                self.seeded = Some(key);
                (c.batch_timestamp_ms, seed)
            }
            None => {
                let seed = self.seeded.is_some() || self.stats.calls == 0;
                self.seeded = None;
                (self.created_ms, seed.then(|| sandbox::seed(&self.query_id, u64::MAX, 0)))
            }
        };
        {
            let data = self.store.data_mut();
            data.call.begin(batch, clock, seed);
            data.log_lines = 0;
        }
        let fuel_before = if self.fuel {
            let budget = self.limits.fuel.unwrap_or(UNLIMITED_FUEL);
            self.store.set_fuel(budget).map_err(|e| Error::Internal(format!("fuel: {e}")))?;
            budget
        } else {
            0
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.limits.timeout, f(guest, &mut self.store)).await;
        self.stats.busy += started.elapsed();
        self.stats.calls += 1;
        if self.fuel {
            self.stats.fuel += fuel_before.saturating_sub(self.store.get_fuel().unwrap_or(0));
        }
        self.store.data().call.end();
        // Named as a `String` only when the call failed (an allocation per call otherwise).
        let name = Arc::clone(&self.name);
        match result {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => {
                Err(Error::Plugin { plugin: name.to_string(), call, batch, fault: e.fault, message: e.message })
            }
            Err(_) => {
                self.poisoned = true;
                Err(Error::PluginLimit {
                    plugin: name.to_string(),
                    call,
                    batch,
                    limit: Limit::Time,
                    detail: format!("{} ms", self.limits.timeout.as_millis()),
                })
            }
            Ok(Err(trap)) => {
                self.poisoned = true;
                if let Some(hit) = self.store.data().limiter.hit {
                    return Err(limit_error(&name, call, batch, hit, self.limits.memory_bytes));
                }
                let code = trap.downcast_ref::<wasmtime::Trap>().copied();
                if code == Some(wasmtime::Trap::OutOfFuel) {
                    return Err(Error::PluginLimit {
                        plugin: name.to_string(),
                        call,
                        batch,
                        limit: Limit::Fuel,
                        detail: format!("{} units", self.limits.fuel.unwrap_or(UNLIMITED_FUEL)),
                    });
                }
                let root = match code {
                    Some(wasmtime::Trap::StackOverflow) => "stack overflow (too deep a recursion)".to_string(),
                    Some(wasmtime::Trap::MemoryOutOfBounds) => {
                        "out of bounds memory access (a bug in the plugin, or its stack overflowed into its data)"
                            .to_string()
                    }
                    _ => trap.root_cause().to_string(),
                };
                let tail = self.store.data().call.tail().join("\n");
                let message = if tail.is_empty() { root } else { format!("{root}; plugin output: {tail}") };
                Err(Error::PluginTrap { plugin: name.to_string(), call, batch, message })
            }
        }
    }

    /// Drops a guest resource; failures (a trapped store) only mean the store goes soon.
    async fn drop_resource(&mut self, res: wasmtime::component::ResourceAny) {
        if !self.poisoned {
            let _ = tokio::time::timeout(self.limits.timeout, res.resource_drop_async(&mut self.store)).await;
        }
    }
}

impl v0_1::sluice::plugin::types::Host for HostState {}
impl v0_2::sluice::plugin::types::Host for HostState {}

fn log_line(state: &mut HostState, level: u8, message: &str) {
    state.log_lines += 1;
    if state.log_lines > MAX_LOG_LINES_PER_CALL {
        return;
    }
    let message = if message.len() > sandbox::MAX_LINE_BYTES {
        let mut end = sandbox::MAX_LINE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        &message[..end]
    } else {
        message
    };
    let plugin = state.call.plugin.as_str();
    let batch = state.call.batch();
    match level {
        0 => tracing::trace!(plugin, batch, "{message}"),
        1 => tracing::debug!(plugin, batch, "{message}"),
        2 => tracing::info!(plugin, batch, "{message}"),
        3 => tracing::warn!(plugin, batch, "{message}"),
        _ => tracing::error!(plugin, batch, "{message}"),
    }
}

/// The `log` import of each contract version: the same levels, one generated type per version.
macro_rules! log_host {
    ($v:ident) => {
        impl $v::sluice::plugin::log::Host for HostState {
            fn log(&mut self, level: $v::sluice::plugin::log::Level, message: String) {
                use $v::sluice::plugin::log::Level as L;
                let l = match level {
                    L::Trace => 0,
                    L::Debug => 1,
                    L::Info => 2,
                    L::Warn => 3,
                    L::Error => 4,
                };
                log_line(self, l, &message);
            }
        }
    };
}
log_host!(v0_1);
log_host!(v0_2);

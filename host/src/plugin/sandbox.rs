//! What a plugin instance may touch: the per-store host state, built from its grants.
//!
//! - Deny by default: no preopened directories, no environment, no sockets, no outbound HTTP.
//!   Each grant opens exactly one thing: a directory at a guest path (read-only or read-write),
//!   a named environment variable, a socket address, an HTTP `host:port` (checked on every
//!   request in [`HttpAllowList`], since wasi:http connects by itself).
//! - Determinism: unless the real clock is granted, the wall clock reads the batch timestamp;
//!   random numbers (secure and insecure) come from a generator seeded per (query, batch,
//!   partition), so a replayed batch sees the same values. The monotonic clock is real.
//! - Memory is accounted per instance over all its memories and tables ([`Limiter`]) and
//!   against a process-wide [`Budget`] shared by every instance of every query.
//! - stdout and stderr never fail: complete lines go to `tracing` with plugin and batch (at
//!   most [`MAX_OUTPUT_LINES_PER_CALL`] per call), and the last lines are kept to explain a trap.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, HostWallClock, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpHooks, WasiHttpView};

use crate::spec::{ClockGrant, Grants};

/// Lines of plugin output forwarded to the logs per call; the rest are counted, not logged.
pub(crate) const MAX_OUTPUT_LINES_PER_CALL: u32 = 200;
/// Lines of output kept to attach to a trap error.
const TAIL_LINES: usize = 8;
/// Longest output or log line kept; longer ones are cut.
pub(crate) const MAX_LINE_BYTES: usize = 4096;
/// Table elements an instance may hold over all its tables.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Bytes charged per table element.
const TABLE_ELEMENT_BYTES: usize = 8;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The memory all plugin instances of the process may hold together.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget { limit, used: AtomicU64::new(0) })
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_add(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok()
    }

    fn release(&self, n: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
    }
}

/// Which limit a growth hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The instance's own memory cap; the bytes it asked for in all.
    Instance(u64),
    /// The process-wide budget; its size.
    Process(u64),
    /// The table-element cap.
    Table(usize),
}

/// Memory accounting for one instance: all linear memories and tables together.
pub(crate) struct Limiter {
    cap: u64,
    used: u64,
    table_elements: usize,
    pub(crate) peak: u64,
    pub(crate) hit: Option<LimitHit>,
    budget: Arc<Budget>,
}

impl Limiter {
    pub(crate) fn new(cap: u64, budget: Arc<Budget>) -> Self {
        Limiter { cap, used: 0, table_elements: 0, peak: 0, hit: None, budget }
    }

    fn grow(&mut self, delta: u64) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(delta);
        if total > self.cap {
            self.hit = Some(LimitHit::Instance(total));
            return Err(wasmtime::format_err!("memory limit: {total} bytes exceed the cap of {} bytes", self.cap));
        }
        if !self.budget.try_add(delta) {
            self.hit = Some(LimitHit::Process(self.budget.limit));
            return Err(wasmtime::format_err!("the process-wide plugin memory budget is exhausted"));
        }
        self.used = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.release(self.used);
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current) as u64)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let added = desired.saturating_sub(current);
        let elements = self.table_elements.saturating_add(added);
        if elements > MAX_TABLE_ELEMENTS {
            self.hit = Some(LimitHit::Table(elements));
            return Err(wasmtime::format_err!("table limit: {elements} elements exceed {MAX_TABLE_ELEMENTS}"));
        }
        let ok = self.grow((added * TABLE_ELEMENT_BYTES) as u64)?;
        self.table_elements = elements;
        Ok(ok)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// What the current call is: shared by the clock, the random generator and the output
/// streams of one instance.
pub(crate) struct CallState {
    pub(crate) plugin: String,
    batch: AtomicI64,
    clock_ms: AtomicI64,
    rng: Mutex<u64>,
    output: Mutex<Output>,
}

#[derive(Default)]
struct Output {
    partial: [Vec<u8>; 2],
    tail: VecDeque<String>,
    logged: u32,
    suppressed: u64,
}

impl CallState {
    pub(crate) fn new(plugin: &str) -> Arc<Self> {
        Arc::new(CallState {
            plugin: plugin.to_string(),
            batch: AtomicI64::new(-1),
            clock_ms: AtomicI64::new(0),
            rng: Mutex::new(0),
            output: Mutex::new(Output::default()),
        })
    }

    /// Starts a call: the batch it belongs to, the time the plugin's wall clock reads, and
    /// the seed of its random numbers (set only when it changes, so the chunks of one
    /// partition continue one random stream).
    pub(crate) fn begin(&self, batch: Option<u64>, clock_ms: i64, seed: Option<u64>) {
        self.batch.store(batch.map(|b| b as i64).unwrap_or(-1), Ordering::Relaxed);
        self.clock_ms.store(clock_ms, Ordering::Relaxed);
        if let Some(s) = seed {
            *lock(&self.rng) = s;
        }
        let mut o = lock(&self.output);
        o.logged = 0;
        o.suppressed = 0;
    }

    /// Ends a call: flushes partial lines and reports suppressed output.
    pub(crate) fn end(&self) {
        for stream in 0..2 {
            let rest = std::mem::take(&mut lock(&self.output).partial[stream]);
            if !rest.is_empty() {
                self.line(stream, &rest);
            }
        }
        let suppressed = std::mem::take(&mut lock(&self.output).suppressed);
        if suppressed > 0 {
            tracing::warn!(plugin = %self.plugin, batch = self.batch(), suppressed, "plugin output beyond {MAX_OUTPUT_LINES_PER_CALL} lines in one call was not logged");
        }
    }

    pub(crate) fn batch(&self) -> Option<u64> {
        u64::try_from(self.batch.load(Ordering::Relaxed)).ok()
    }

    /// The last lines the plugin printed, oldest first.
    pub(crate) fn tail(&self) -> Vec<String> {
        lock(&self.output).tail.iter().cloned().collect()
    }

    fn line(&self, stream: usize, bytes: &[u8]) {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LINE_BYTES)]).trim_end().to_string();
        let log_it = {
            let mut o = lock(&self.output);
            if o.tail.len() == TAIL_LINES {
                o.tail.pop_front();
            }
            o.tail.push_back(text.clone());
            if o.logged < MAX_OUTPUT_LINES_PER_CALL {
                o.logged += 1;
                true
            } else {
                o.suppressed += 1;
                false
            }
        };
        if log_it {
            let name = if stream == 0 { "stdout" } else { "stderr" };
            tracing::info!(plugin = %self.plugin, batch = self.batch(), stream = name, "{text}");
        }
    }

    fn write(&self, stream: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|b| *b == b'\n');
            let (chunk, rest) = match newline {
                Some(i) => (&data[..i], &data[i + 1..]),
                None => (data, &data[data.len()..]),
            };
            let complete = {
                let mut o = lock(&self.output);
                let buf = &mut o.partial[stream];
                let room = MAX_LINE_BYTES.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if newline.is_some() || buf.len() >= MAX_LINE_BYTES { Some(std::mem::take(buf)) } else { None }
            };
            if let Some(line) = complete {
                self.line(stream, &line);
            }
            data = rest;
        }
    }

    fn next_random(&self) -> u64 {
        // SplitMix64: small, fast and good enough for a deterministic stream.
        let mut s = lock(&self.rng);
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The seed of a call's random numbers: a hash of query, batch and partition.
pub(crate) fn seed(query_id: &str, batch: u64, partition: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(query_id.as_bytes());
    h.update(&batch.to_le_bytes());
    h.update(&partition.to_le_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// The wall clock of a plugin without the real-clock grant: the batch timestamp.
struct BatchClock(Arc<CallState>);

impl HostWallClock for BatchClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.clock_ms.load(Ordering::Relaxed).max(0) as u64)
    }
}

/// Random numbers seeded per call (see [`seed`]).
struct SeededRandom(Arc<CallState>);

impl rand_core::TryRng for SeededRandom {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_random() as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_random())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.0.next_random().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

/// stdout (0) or stderr (1) of an instance.
#[derive(Clone)]
struct OutputSink {
    call: Arc<CallState>,
    stream: usize,
}

impl IsTerminal for OutputSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputSink {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputSink {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.call.write(self.stream, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for OutputSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.call.write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Outbound HTTP: only to granted `host:port`s.
pub(crate) struct HttpAllowList {
    allowed: Vec<(String, u16)>,
    plugin: String,
}

impl HttpAllowList {
    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allowed.iter().any(|(h, p)| {
            *p == port && (*h == host || h.strip_prefix("*.").is_some_and(|d| host.ends_with(&format!(".{d}"))))
        })
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpAllowList {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        if !self.allows(&host, port) {
            tracing::warn!(plugin = %self.plugin, host, port, "outbound HTTP denied: not granted");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

/// The per-store host state.
pub(crate) struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpAllowList,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) call: Arc<CallState>,
    pub(crate) log_lines: u32,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.trim().rsplit_once(':')?;
    Some((h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(), p.parse().ok()?))
}

/// Builds an instance's host state from its grants. A granted directory that does not exist is
/// an error naming it.
pub(crate) fn host_state(
    plugin: &str,
    grants: &Grants,
    memory_cap: u64,
    budget: Arc<Budget>,
) -> Result<HostState, String> {
    let call = CallState::new(plugin);
    let mut b = WasiCtx::builder();
    b.stdout(OutputSink { call: call.clone(), stream: 0 }).stderr(OutputSink { call: call.clone(), stream: 1 });
    for d in &grants.dirs {
        let perms = if d.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        if !d.read_only && !d.host.exists() {
            // A read-write grant is an output directory: make it, as file sinks do.
            std::fs::create_dir_all(&d.host)
                .map_err(|e| format!("cannot create granted directory {}: {e}", d.host.display()))?;
        }
        b.preopened_dir(&d.host, &d.guest, perms)
            .map_err(|e| format!("cannot grant directory {} as {}: {e:#}", d.host.display(), d.guest))?;
    }
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            b.env(name, value);
        }
    }
    if !grants.sockets.is_empty() {
        let mut allowed: Vec<SocketAddr> = Vec::new();
        for s in &grants.sockets {
            let addrs = s.to_socket_addrs().map_err(|e| format!("cannot resolve granted socket `{s}`: {e}"))?;
            allowed.extend(addrs);
        }
        let allowed = Arc::new(allowed);
        b.allow_tcp(true).allow_udp(true).allow_ip_name_lookup(true);
        b.socket_addr_check(move |addr, use_| {
            let ok = match use_ {
                // Binding a local, unspecified address (what connecting needs) is fine.
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
                SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                    allowed.contains(&addr)
                }
                _ => false,
            };
            Box::pin(async move { ok })
        });
    }
    if grants.clock == ClockGrant::Batch {
        b.wall_clock(BatchClock(call.clone()));
    }
    b.secure_random(SeededRandom(call.clone()));
    b.insecure_random(SeededRandom(call.clone()));
    b.insecure_random_seed(0x5eed_5eed_5eed_5eed);
    let allowed = grants.http.iter().filter_map(|h| split_host_port(h)).collect();
    Ok(HostState {
        wasi: b.build(),
        http: WasiHttpCtx::new(),
        hooks: HttpAllowList { allowed, plugin: plugin.to_string() },
        table: ResourceTable::new(),
        limiter: Limiter::new(memory_cap, budget),
        call,
        log_lines: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_allow_list_matches_host_port_and_subdomains() {
        let l = HttpAllowList {
            allowed: vec![("api.example.com".into(), 443), ("*.corp.net".into(), 8080)],
            plugin: "p".into(),
        };
        assert!(l.allows("api.example.com", 443));
        assert!(l.allows("API.example.com", 443));
        assert!(!l.allows("api.example.com", 80));
        assert!(!l.allows("evil.com", 443));
        assert!(l.allows("a.corp.net", 8080));
        assert!(!l.allows("corp.net.evil.com", 8080));
    }

    #[test]
    fn budget_refuses_past_its_limit_and_limiter_releases_on_drop() {
        let b = Budget::new(100);
        let mut l = Limiter::new(80, b.clone());
        assert!(l.grow(60).is_ok());
        assert!(l.grow(30).is_err()); // over the instance cap
        assert_eq!(l.hit, Some(LimitHit::Instance(90)));
        let mut other = Limiter::new(80, b.clone());
        assert!(other.grow(50).is_err()); // over the process budget
        assert_eq!(other.hit, Some(LimitHit::Process(100)));
        drop(l);
        assert_eq!(b.used(), 0);
        assert!(other.grow(50).is_ok());
    }

    #[test]
    fn output_is_split_into_lines_and_the_tail_is_kept() {
        let c = CallState::new("p");
        c.begin(Some(3), 0, None);
        c.write(1, b"one\ntw");
        c.write(1, b"o\nthree");
        c.end();
        assert_eq!(c.tail(), vec!["one", "two", "three"]);
        for i in 0..1000 {
            c.write(0, format!("noise {i}\n").as_bytes());
        }
        assert_eq!(c.tail().len(), TAIL_LINES);
        assert_eq!(c.tail().last().map(String::as_str), Some("noise 999"));
    }

    #[test]
    fn seeds_differ_by_batch_and_partition_and_repeat() {
        assert_eq!(seed("q", 1, 0), seed("q", 1, 0));
        assert_ne!(seed("q", 1, 0), seed("q", 2, 0));
        assert_ne!(seed("q", 1, 0), seed("q", 1, 1));
    }
}

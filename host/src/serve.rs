//! `sluice serve`: a long-running server that runs many queries, loads, replaces and stops
//! them over an HTTP JSON API, keeps them across restarts (`--state-dir`), exposes Prometheus
//! metrics and a live dashboard.
//!
//! Routes (all behind `--token` when one is set: `Authorization: Bearer T` or `?token=T`):
//! `GET /` (dashboard), `GET /metrics`, `GET|POST /api/queries`, `GET|DELETE /api/queries/{id}`,
//! `GET /api/queries/{id}/progress`, `GET /api/queries/{id}/events`,
//! `POST /api/queries/{id}/stop`, `POST /api/queries/{id}/restart`,
//! `PUT /api/queries/{id}/plugins/{step}`.
//!
//! Modules: `store` (the state dir), `supervisor` (one query, the restart policy).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path as UrlPath, Query as UrlQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::listener::JsonLinesListener;
use crate::metrics::Metrics;
use crate::session::Session;
use crate::spec::StepRef;

mod store;
mod supervisor;

use store::{Desired, QueryDir, Record, safe_relative};
use supervisor::{Managed, State as QState};

const DASHBOARD: &str = include_str!("serve/dashboard.html");
/// Largest request body (a pipeline with its plugins).
const MAX_BODY: usize = 256 << 20;

/// How `sluice serve` runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Where to listen; a non-loopback address needs a token.
    pub listen: SocketAddr,
    /// Where submitted queries, their files and default checkpoints live.
    pub state_dir: PathBuf,
    /// A bearer token guarding every route.
    pub token: Option<String>,
    /// A URL every listener event is POSTed to.
    pub webhook: Option<String>,
    /// Spark's `noDataProgressEventInterval` (default 10 s).
    pub idle_event_interval: Option<Duration>,
}

impl ServeOptions {
    /// Options with the defaults: no token, no webhook.
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> Self {
        ServeOptions { listen, state_dir, token: None, webhook: None, idle_event_interval: None }
    }
}

struct Server {
    session: Session,
    state_dir: PathBuf,
    queries: Mutex<BTreeMap<Uuid, Arc<Managed>>>,
    metrics: Arc<Metrics>,
    token: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the server until `shutdown` completes (then stops every query, keeping its desired
/// state for the next start).
pub async fn serve(opts: ServeOptions, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    if !opts.listen.ip().is_loopback() && opts.token.is_none() {
        return Err(Error::config(format!(
            "refusing to listen on {} without --token (or SLUICE_TOKEN): only loopback addresses may go unguarded",
            opts.listen
        )));
    }
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| Error::Io { path: opts.state_dir.clone(), source })?;
    let mut config = crate::plugin::RuntimeConfig::new(&crate::plugin::default_cache_dir());
    // Submitted plugins may carry fuel limits; metering is on for all of them.
    config.fuel = true;
    let session = Session::with_config(config)?;
    if let Some(i) = opts.idle_event_interval {
        session.streams().set_idle_event_interval(i);
    }
    let metrics = Arc::new(Metrics::new());
    session.streams().add_listener(metrics.clone());
    session.streams().add_listener(Arc::new(JsonLinesListener::new(&opts.state_dir.join("events.jsonl"))?));
    if let Some(url) = &opts.webhook {
        session.streams().add_listener(Arc::new(crate::listener::WebhookListener::new(url)?));
    }
    let server = Arc::new(Server {
        session,
        state_dir: opts.state_dir.clone(),
        queries: Mutex::default(),
        metrics,
        token: opts.token.clone(),
    });
    server.resume()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Io { path: PathBuf::from(opts.listen.to_string()), source })?;
    let addr = listener.local_addr().map_err(|source| Error::Io { path: PathBuf::from("listener"), source })?;
    tracing::info!("sluice serve listening on http://{addr} (state in {})", opts.state_dir.display());
    eprintln!("sluice serve: listening on http://{addr}");
    axum::serve(listener, router(server.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Io { path: PathBuf::from(addr.to_string()), source })?;
    let all: Vec<_> = lock(&server.queries).values().cloned().collect();
    for m in all {
        m.stop().await;
    }
    Ok(())
}

/// Serves only `GET /metrics` for the queries `metrics` listens to (`sluice run --metrics`).
pub async fn serve_metrics(listen: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new().route("/metrics", get(move || async move { metrics_response(&metrics) }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Io { path: PathBuf::from(listen.to_string()), source })?;
    axum::serve(listener, app).await.map_err(|source| Error::Io { path: PathBuf::from(listen.to_string()), source })
}

fn metrics_response(metrics: &Metrics) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], metrics.render()).into_response()
}

fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/metrics", get(|State(s): State<Arc<Server>>| async move { metrics_response(&s.metrics) }))
        .route("/api/queries", get(list).post(submit))
        .route("/api/queries/{id}", get(one).delete(remove))
        .route("/api/queries/{id}/progress", get(progress))
        .route("/api/queries/{id}/events", get(events))
        .route("/api/queries/{id}/stop", post(stop))
        .route("/api/queries/{id}/restart", post(restart))
        .route("/api/queries/{id}/plugins/{step}", put(replace_plugin))
        .layer(axum::middleware::from_fn_with_state(server.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(server)
}

/// An error answer: a status and the same message `sluice validate` prints.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::User | ErrorKind::Plugin | ErrorKind::ResourceLimit => StatusCode::BAD_REQUEST,
            ErrorKind::External => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

async fn auth(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let in_query = UrlQuery::<BTreeMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|UrlQuery(mut q)| q.remove("token"));
        let ok = [bearer, in_query.as_deref()].into_iter().flatten().any(|t| same(t, token));
        if !ok {
            return ApiError(StatusCode::UNAUTHORIZED, "a valid token is required (Authorization: Bearer …)".into())
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first differing byte.
fn same(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

impl Server {
    /// Loads the queries under the state dir and starts those that were running.
    fn resume(&self) -> Result<()> {
        for dir in QueryDir::all(&self.state_dir)? {
            // One unreadable query directory must not keep the others from running.
            let record = match dir.record() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("skipping query {}: {e}", dir.id);
                    continue;
                }
            };
            let name = dir.pipeline_text().ok().and_then(|t| dir.spec(&t, None).ok()).and_then(|s| s.name);
            let desired = record.desired;
            let m = Managed::new(dir.clone(), name, record);
            if desired == Desired::Running {
                tracing::info!("resuming query {} ({})", dir.id, m.label());
                m.launch(self.session.clone(), self.metrics.clone());
            }
            lock(&self.queries).insert(dir.id, m);
        }
        Ok(())
    }

    fn get(&self, id: &str) -> ApiResult<Arc<Managed>> {
        let id = Uuid::parse_str(id).map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no query {id:?}")))?;
        lock(&self.queries).get(&id).cloned().ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no query {id}")))
    }

    /// Refuses a name another live query of the server has.
    fn check_name(&self, name: Option<&str>, except: Uuid) -> ApiResult<()> {
        let Some(name) = name else { return Ok(()) };
        let live = [QState::Starting, QState::Running, QState::Retrying];
        let taken = lock(&self.queries)
            .values()
            .any(|m| m.dir.id != except && m.name.as_deref() == Some(name) && live.contains(&m.state()));
        if taken {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("cannot start query with name {name} as a query with that name is already active"),
            ));
        }
        Ok(())
    }
}

async fn list(State(s): State<Arc<Server>>) -> impl IntoResponse {
    let all: Vec<_> = lock(&s.queries).values().cloned().collect();
    let views: Vec<_> = all.iter().map(|m| m.view(false)).collect();
    axum::Json(serde_json::json!({ "queries": views }))
}

async fn one(State(s): State<Arc<Server>>, UrlPath(id): UrlPath<String>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(s.get(&id)?.view(true)))
}

async fn progress(State(s): State<Arc<Server>>, UrlPath(id): UrlPath<String>) -> ApiResult<impl IntoResponse> {
    let m = s.get(&id)?;
    let progress = m.query().map(|q| q.recent_progress()).unwrap_or_default();
    Ok(axum::Json(serde_json::json!({ "progress": progress })))
}

#[derive(Deserialize)]
struct EventsQuery {
    n: Option<usize>,
}

/// The query's last `n` (default 100) listener events, from `events.jsonl`.
async fn events(
    State(s): State<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    UrlQuery(q): UrlQuery<EventsQuery>,
) -> ApiResult<impl IntoResponse> {
    let m = s.get(&id)?;
    let path = s.state_dir.join("events.jsonl");
    let id = m.dir.id.to_string();
    let n = q.n.unwrap_or(100);
    let lines = tokio::task::spawn_blocking(move || tail_events(&path, &id, n))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let events: Vec<serde_json::Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok(axum::Json(serde_json::json!({ "events": events })))
}

/// The last `n` lines about query `id` in the last 8 MiB of the events file.
fn tail_events(path: &Path, id: &str, n: usize) -> Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
    };
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let len = f.metadata().map_err(io)?.len();
    let start = len.saturating_sub(8 << 20);
    f.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io)?;
    let needle = format!("\"id\":\"{id}\"");
    let mine: Vec<String> = text.lines().filter(|l| l.contains(&needle)).map(str::to_string).collect();
    Ok(mine[mine.len().saturating_sub(n)..].to_vec())
}

/// `POST /api/queries`: a pipeline file as the body (`application/toml`), or `multipart/form-data`
/// with a `pipeline` part and one part per file it refers to by a relative path (the part's name).
async fn submit(State(s): State<Arc<Server>>, req: Request) -> ApiResult<impl IntoResponse> {
    let (pipeline, files) = read_submission(req, &s).await?;
    let id = Uuid::new_v4();
    let dir = QueryDir::new(&s.state_dir, id);
    dir.create(&pipeline, &files)?;
    match check_submission(&s, &dir, &pipeline).await {
        Ok(name) => {
            let record = Record { desired: Desired::Running, replaced: BTreeMap::new(), error: None };
            dir.save_record(&record)?;
            let m = Managed::new(dir, name, record);
            lock(&s.queries).insert(id, m.clone());
            m.launch(s.session.clone(), s.metrics.clone());
            wait_started(&m).await;
            Ok((StatusCode::CREATED, axum::Json(m.view(false))))
        }
        Err(e) => {
            let _ = dir.remove();
            Err(e)
        }
    }
}

/// Validates a submission as `sluice validate` would; returns the query's name.
async fn check_submission(s: &Server, dir: &QueryDir, pipeline: &str) -> ApiResult<Option<String>> {
    let spec = dir.spec(pipeline, None)?;
    s.check_name(spec.name.as_deref(), dir.id)?;
    s.session.check(&spec).await?;
    Ok(spec.name)
}

async fn read_submission(req: Request, s: &Arc<Server>) -> ApiResult<(String, Vec<(PathBuf, Bytes)>)> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let body = Bytes::from_request(req, s).await.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "the pipeline is not UTF-8 text".into()))?;
        return Ok((text, Vec::new()));
    }
    let mut form =
        Multipart::from_request(req, s).await.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (mut pipeline, mut files) = (None, Vec::new());
    while let Some(field) = form.next_field().await.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))? {
        let name = field.name().map(str::to_string).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "a form part has no plain `name` (its name is the path the pipeline uses, sent unencoded)".into(),
            )
        })?;
        let data = field.bytes().await.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
        if name == "pipeline" {
            pipeline = Some(
                String::from_utf8(data.to_vec())
                    .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "the pipeline is not UTF-8 text".into()))?,
            );
        } else {
            files.push((safe_relative(&name)?, data));
        }
    }
    let pipeline =
        pipeline.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "no `pipeline` part in the form".into()))?;
    Ok((pipeline, files))
}

/// Waits (up to 10 s) until a launched query runs or fails, so the answer shows which.
async fn wait_started(m: &Managed) {
    for _ in 0..200 {
        if m.state() != QState::Starting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(State(s): State<Arc<Server>>, UrlPath(id): UrlPath<String>) -> ApiResult<impl IntoResponse> {
    let m = s.get(&id)?;
    m.stop().await;
    m.update_record(|r| {
        if r.desired == Desired::Running {
            r.desired = Desired::Stopped;
        }
    })?;
    Ok(axum::Json(m.view(false)))
}

async fn restart(State(s): State<Arc<Server>>, UrlPath(id): UrlPath<String>) -> ApiResult<impl IntoResponse> {
    let m = s.get(&id)?;
    m.stop().await;
    s.check_name(m.name.as_deref(), m.dir.id)?;
    m.update_record(|r| {
        r.desired = Desired::Running;
        r.error = None;
    })?;
    m.launch(s.session.clone(), s.metrics.clone());
    wait_started(&m).await;
    Ok(axum::Json(m.view(false)))
}

async fn remove(State(s): State<Arc<Server>>, UrlPath(id): UrlPath<String>) -> ApiResult<impl IntoResponse> {
    let m = s.get(&id)?;
    m.stop().await;
    lock(&s.queries).remove(&m.dir.id);
    m.dir.remove()?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PluginPath {
    path: PathBuf,
}

/// `PUT /api/queries/{id}/plugins/{step}`: a new component for the plugin at `step` (the body:
/// the component's bytes, or `{"path": "…"}` naming one on the server), swapped in at the next
/// batch boundary with the same config and grants; answers with the new version once it runs.
async fn replace_plugin(
    State(s): State<Arc<Server>>,
    UrlPath((id, step)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let m = s.get(&id)?;
    let at: StepRef = step.parse().map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))?;
    let query = m
        .query()
        .filter(|q| q.is_active())
        .ok_or_else(|| ApiError(StatusCode::CONFLICT, format!("query {id} is not running")))?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let path = if json {
        let p: PluginPath = serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))?;
        if p.path.is_absolute() { p.path } else { m.dir.files().join(p.path) }
    } else {
        let hash = blake3::hash(&body).to_hex();
        let rel = PathBuf::from(format!("replaced/{at}-{}.wasm", &hash.as_str()[..16]));
        m.dir.put_file(&rel, &body)?
    };
    let mut spec = m.dir.spec(&m.dir.pipeline_text()?, Some(&m.record()))?;
    let plugin = spec
        .plugin_at_mut(at)
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, format!("step {at} of query {id} is not a plugin")))?;
    plugin.path = path.clone();
    let plugin = plugin.clone();
    let version = query.replace_plugin(at, plugin).await?;
    m.update_record(|r| {
        r.replaced.insert(at.to_string(), path);
    })?;
    Ok(axum::Json(serde_json::json!({ "step": at.to_string(), "version": version })))
}

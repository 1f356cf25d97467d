//! One supervised query of `sluice serve`, and the restart policy.
//!
//! **Restart policy.** A query that fails with an *external* error (a broker or a file system
//! that failed; [`ErrorKind::External`]) is started again from its checkpoint after a back-off
//! of 1 s, doubling up to 60 s; the back-off starts over once a run has lasted 60 s. Any other
//! error (the pipeline, a plugin, a resource limit, a bug) stops it with its message, as state
//! `failed`, until it is restarted by hand. Starting is retried under the same rule, so a query
//! whose broker is down at server start waits for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use super::store::{Desired, QueryDir, Record};
use crate::engine::StreamingQuery;
use crate::error::{ErrorKind, Result};
use crate::metrics::Metrics;
use crate::progress::{StreamingQueryProgress, StreamingQueryStatus};
use crate::session::Session;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The states a supervised query can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Starting,
    Running,
    Retrying,
    Stopped,
    Failed,
}

struct Inner {
    state: State,
    query: Option<StreamingQuery>,
    /// The last error, and for `retrying` when the next attempt is.
    exception: Option<String>,
    next_retry: Option<Instant>,
    restarts: u64,
    record: Record,
    supervisor: Option<AbortOnDropHandle<()>>,
}

/// A query the server runs.
pub(crate) struct Managed {
    pub(crate) dir: QueryDir,
    pub(crate) name: Option<String>,
    /// The pipeline's steps (source, transforms, sink), for showing plugin versions.
    steps: Vec<crate::spec::StepRef>,
    inner: Mutex<Inner>,
    stop: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the API shows of a query.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryView {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) state: State,
    pub(crate) is_active: bool,
    pub(crate) run_id: Option<String>,
    pub(crate) status: Option<StreamingQueryStatus>,
    pub(crate) last_progress: Option<StreamingQueryProgress>,
    pub(crate) exception: Option<String>,
    pub(crate) restarts: u64,
    /// Milliseconds until the next attempt, when retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_retry_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pipeline: Option<String>,
    /// Plugins by step (`source`, `transform.N`, `sink`) → running version.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub(crate) plugins: std::collections::BTreeMap<String, String>,
}

impl Managed {
    pub(crate) fn new(dir: QueryDir, name: Option<String>, record: Record) -> Arc<Self> {
        let steps = steps_of(&dir);
        Arc::new(Managed {
            dir,
            name,
            steps,
            inner: Mutex::new(Inner {
                state: State::Stopped,
                query: None,
                exception: record.error.clone(),
                next_retry: None,
                restarts: 0,
                record,
                supervisor: None,
            }),
            stop: Notify::new(),
        })
    }

    pub(crate) fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.dir.id.to_string())
    }

    pub(crate) fn query(&self) -> Option<StreamingQuery> {
        lock(&self.inner).query.clone()
    }

    pub(crate) fn record(&self) -> Record {
        lock(&self.inner).record.clone()
    }

    pub(crate) fn state(&self) -> State {
        lock(&self.inner).state
    }

    /// Updates and saves the record.
    pub(crate) fn update_record(&self, f: impl FnOnce(&mut Record)) -> Result<()> {
        let mut i = lock(&self.inner);
        f(&mut i.record);
        self.dir.save_record(&i.record)
    }

    pub(crate) fn view(&self, with_pipeline: bool) -> QueryView {
        let i = lock(&self.inner);
        let q = i.query.as_ref();
        let mut plugins = std::collections::BTreeMap::new();
        if let Some(q) = q {
            for &step in &self.steps {
                if let Some(v) = q.plugin_version(step) {
                    plugins.insert(step.to_string(), v);
                }
            }
        }
        QueryView {
            id: self.dir.id.to_string(),
            name: self.name.clone(),
            state: i.state,
            is_active: q.is_some_and(|q| q.is_active()),
            run_id: q.map(|q| q.run_id().to_string()),
            status: q.map(|q| q.status()),
            last_progress: q.and_then(|q| q.last_progress()),
            exception: i.exception.clone(),
            restarts: i.restarts,
            next_retry_ms: i.next_retry.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            pipeline: with_pipeline.then(|| self.dir.pipeline_text().unwrap_or_default()),
            plugins,
        }
    }

    /// Starts supervising: runs the query until it is stopped, restarting it under the policy.
    pub(crate) fn launch(self: &Arc<Self>, session: Session, metrics: Arc<Metrics>) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.supervise(session, metrics).await });
        let mut i = lock(&self.inner);
        i.state = State::Starting;
        i.exception = None;
        i.supervisor = Some(AbortOnDropHandle::new(task));
    }

    /// Stops the query (and its supervision) and waits for it.
    pub(crate) async fn stop(&self) {
        let (query, task) = {
            let mut i = lock(&self.inner);
            (i.query.clone(), i.supervisor.take())
        };
        self.stop.notify_waiters();
        if let Some(q) = query {
            q.stop().await;
        }
        drop(task);
        let mut i = lock(&self.inner);
        if i.state != State::Failed {
            i.state = State::Stopped;
        }
        i.next_retry = None;
    }

    async fn supervise(self: Arc<Self>, session: Session, metrics: Arc<Metrics>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let ended = self.run_once(&session).await;
            let error = match ended {
                Ok(()) => {
                    self.set(State::Stopped, None, None);
                    return;
                }
                Err(e) => e,
            };
            if error.kind() != ErrorKind::External {
                tracing::error!(query = %self.label(), "query failed; not restarted ({:?} error): {error}", error.kind());
                let message = error.to_string();
                let _ = self.update_record(|r| {
                    r.desired = Desired::Failed;
                    r.error = Some(message.clone());
                });
                self.set(State::Failed, Some(message), None);
                return;
            }
            if started.elapsed() >= MAX_BACKOFF {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(query = %self.label(), "query failed; restarting in {backoff:?}: {error}");
            metrics.set_retrying(&self.label(), true);
            self.set(State::Retrying, Some(error.to_string()), Some(Instant::now() + backoff));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.notified() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            lock(&self.inner).restarts += 1;
            metrics.query_restarted(&self.label());
            metrics.set_retrying(&self.label(), false);
        }
    }

    /// Starts the query and waits for it to end.
    async fn run_once(&self, session: &Session) -> Result<()> {
        let text = self.dir.pipeline_text()?;
        let record = self.record();
        let spec = self.dir.spec(&text, Some(&record))?;
        let query = session.start_with_id(&spec, self.dir.id).await?;
        {
            let mut i = lock(&self.inner);
            i.query = Some(query.clone());
            i.state = State::Running;
            i.next_retry = None;
        }
        query.await_termination().await
    }

    fn set(&self, state: State, exception: Option<String>, next_retry: Option<Instant>) {
        let mut i = lock(&self.inner);
        i.state = state;
        if exception.is_some() || state == State::Stopped {
            i.exception = exception;
        }
        i.next_retry = next_retry;
    }
}

/// The steps of the query's pipeline, read once when it is loaded.
fn steps_of(dir: &QueryDir) -> Vec<crate::spec::StepRef> {
    let n = dir.pipeline_text().ok().and_then(|t| dir.spec(&t, None).ok()).map(|s| s.transforms.len());
    let mut v = vec![crate::spec::StepRef::Source, crate::spec::StepRef::Sink];
    v.extend((0..n.unwrap_or(0)).map(crate::spec::StepRef::Transform));
    v
}

//! [`StreamingQuery`]: the handle `start()` returns at once, like Spark's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::manager::ManagerInner;
use crate::error::{Error, Result};
use crate::listener::{QueryEvent, QueryIdleEvent, QueryStartedEvent, QueryTerminatedEvent};
use crate::progress::{StreamingQueryProgress, StreamingQueryStatus};

/// How many progress reports a query keeps (Spark's `numRecentProgressUpdates`).
const RECENT_PROGRESS: usize = 100;

/// State shared between the running loop and its handles.
pub(crate) struct Shared {
    pub(crate) id: Uuid,
    pub(crate) run_id: Uuid,
    pub(crate) name: Option<String>,
    progress: Mutex<VecDeque<StreamingQueryProgress>>,
    status: Mutex<StreamingQueryStatus>,
    exception: Mutex<Option<Arc<Error>>>,
    /// Counts the loop's checks that found no new data.
    idle: watch::Sender<u64>,
    /// Becomes true when the loop has ended.
    terminated: watch::Sender<bool>,
    /// What the next progress report tells (reloads, their failures).
    events: Mutex<Vec<String>>,
    /// Preparing and swapping in new plugin versions.
    pub(super) reload: Mutex<Option<Arc<super::reload::ReloadContext>>>,
    /// The session's manager: its listener bus, and who to tell when the query ends.
    manager: Weak<ManagerInner>,
    /// When the query last reported progress or idleness (none yet: the first idle check reports).
    last_report: Mutex<Option<Instant>>,
    idle_interval: Duration,
}

fn timestamp_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn new(name: Option<String>, id: Option<Uuid>, manager: Weak<ManagerInner>) -> Self {
        let idle_interval =
            manager.upgrade().map(|m| m.idle_interval()).unwrap_or(super::manager::DEFAULT_IDLE_EVENT_INTERVAL);
        Shared {
            id: id.unwrap_or_else(Uuid::new_v4),
            run_id: Uuid::new_v4(),
            name,
            progress: Mutex::new(VecDeque::new()),
            status: Mutex::new(StreamingQueryStatus {
                message: "Initializing".into(),
                is_data_available: false,
                is_trigger_active: false,
            }),
            exception: Mutex::new(None),
            idle: watch::channel(0).0,
            terminated: watch::channel(false).0,
            events: Mutex::new(Vec::new()),
            reload: Mutex::new(None),
            manager,
            last_report: Mutex::new(None),
            idle_interval,
        }
    }

    fn post(&self, e: QueryEvent) {
        if let Some(m) = self.manager.upgrade() {
            m.bus.post(e);
        }
    }

    pub(crate) fn set_status(&self, message: &str, data: bool, active: bool) {
        let mut s = lock(&self.status);
        s.message = message.to_string();
        s.is_data_available = data;
        s.is_trigger_active = active;
    }

    pub(crate) fn push_progress(&self, p: StreamingQueryProgress) {
        *lock(&self.last_report) = Some(Instant::now());
        self.post(QueryEvent::Progress { progress: Box::new(p.clone()) });
        let mut q = lock(&self.progress);
        q.push_back(p);
        while q.len() > RECENT_PROGRESS {
            q.pop_front();
        }
    }

    /// Records an event for the next progress report, and logs it.
    pub(crate) fn event(&self, text: String) {
        tracing::info!(query = ?self.name, "{text}");
        lock(&self.events).push(text);
    }

    pub(crate) fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// A check found no new data: counts it, and posts a `QueryIdleEvent` when the query has
    /// reported nothing for the idle interval (at once for the first check, as Spark does).
    pub(crate) fn note_idle(&self) {
        self.idle.send_modify(|n| *n += 1);
        let now = Instant::now();
        let mut last = lock(&self.last_report);
        if last.is_none_or(|t| now.duration_since(t) >= self.idle_interval) {
            *last = Some(now);
            drop(last);
            self.post(QueryEvent::Idle(QueryIdleEvent {
                id: self.id.to_string(),
                run_id: self.run_id.to_string(),
                timestamp: timestamp_now(),
            }));
        }
    }

    pub(crate) fn finish(&self, result: Result<()>) {
        let error = match result {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(query = ?self.name, "query failed: {e}");
                self.set_status(&format!("Terminated with exception: {e}"), false, false);
                let e = Arc::new(e);
                *lock(&self.exception) = Some(e.clone());
                Some(e)
            }
        };
        self.post(QueryEvent::Terminated(QueryTerminatedEvent {
            id: self.id.to_string(),
            run_id: self.run_id.to_string(),
            exception: error.as_ref().map(|e| e.to_string()),
            error_class_on_exception: error.as_ref().map(|e| format!("{:?}", e.kind())),
        }));
        if let Some(m) = self.manager.upgrade() {
            m.on_terminated(self.id, self.run_id, error);
        }
        self.terminated.send_replace(true);
    }
}

/// A handle to a running query. Cloning it gives another handle to the same query; the query
/// keeps running until it ends, is stopped, or the last handle is dropped.
#[derive(Clone)]
pub struct StreamingQuery {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _task: Arc<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for StreamingQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingQuery").field("id", &self.shared.id).field("name", &self.shared.name).finish()
    }
}

impl StreamingQuery {
    pub(crate) fn start(query: super::Query, manager: Weak<ManagerInner>) -> Self {
        let shared = Arc::new(Shared::new(query.name.clone(), Some(query.id), manager));
        *lock(&shared.reload) = Some(query.reload_context());
        shared.post(QueryEvent::Started(QueryStartedEvent {
            id: shared.id.to_string(),
            run_id: shared.run_id.to_string(),
            name: shared.name.clone(),
            timestamp: timestamp_now(),
        }));
        let cancel = CancellationToken::new();
        let (s, c) = (shared.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            use futures::FutureExt;
            // A bug that panics ends the query with an error instead of leaving it hanging.
            let result = std::panic::AssertUnwindSafe(super::run(query, s.clone(), c))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|m| m.to_string()))
                        .unwrap_or_default();
                    Err(Error::Internal(format!("the query's loop panicked: {why}")))
                });
            s.finish(result);
        });
        StreamingQuery { shared, cancel, _task: Arc::new(AbortOnDropHandle::new(task)) }
    }

    pub(super) fn parts(&self) -> (Arc<Shared>, CancellationToken, Weak<AbortOnDropHandle<()>>) {
        (self.shared.clone(), self.cancel.clone(), Arc::downgrade(&self._task))
    }

    pub(super) fn from_parts(shared: Arc<Shared>, cancel: CancellationToken, task: Arc<AbortOnDropHandle<()>>) -> Self {
        StreamingQuery { shared, cancel, _task: task }
    }

    /// The query's id.
    pub fn id(&self) -> Uuid {
        self.shared.id
    }

    /// The id of this run.
    pub fn run_id(&self) -> Uuid {
        self.shared.run_id
    }

    /// The query's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Whether the query is still running.
    pub fn is_active(&self) -> bool {
        !*self.shared.terminated.borrow()
    }

    /// The error that ended the query, if it failed.
    pub fn exception(&self) -> Option<Arc<Error>> {
        lock(&self.shared.exception).clone()
    }

    /// The most recent progress report.
    pub fn last_progress(&self) -> Option<StreamingQueryProgress> {
        lock(&self.shared.progress).back().cloned()
    }

    /// The last (up to 100) progress reports, oldest first.
    pub fn recent_progress(&self) -> Vec<StreamingQueryProgress> {
        lock(&self.shared.progress).iter().cloned().collect()
    }

    /// What the query is doing now.
    pub fn status(&self) -> StreamingQueryStatus {
        lock(&self.shared.status).clone()
    }

    /// Stops the query and waits until it has stopped.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let _ = self.await_termination().await;
    }

    /// Waits until the query ends; fails with its exception if it failed.
    pub async fn await_termination(&self) -> Result<()> {
        let mut rx = self.shared.terminated.subscribe();
        let _ = rx.wait_for(|t| *t).await;
        match self.exception() {
            Some(e) => Err(Error::Failed(e)),
            None => Ok(()),
        }
    }

    /// Like [`StreamingQuery::await_termination`], giving up after `timeout`; returns whether
    /// the query ended.
    pub async fn await_termination_timeout(&self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.await_termination()).await {
            Ok(r) => r.map(|_| true),
            Err(_) => Ok(false),
        }
    }

    /// Replaces the plugin at `step` with `plugin` (hot reload), keeping offsets and state: the
    /// new version is loaded, checked and created here, then swapped in at the next batch
    /// boundary; returns its version once it runs. If it cannot be prepared (it fails to load or
    /// create, its grants do not cover it, it would change the step's output schema), the old
    /// version keeps running and the error says why.
    pub async fn replace_plugin(&self, step: crate::spec::StepRef, plugin: crate::spec::PluginSpec) -> Result<String> {
        let ctx = lock(&self.shared.reload).clone().ok_or_else(|| Error::Internal("no reload context".into()))?;
        let old = ctx.version(step).unwrap_or_default();
        let (prepared, version) = match ctx.prepare(step, &plugin).await {
            Ok(p) => p,
            Err(e) => {
                self.shared
                    .event(format!("reload of {step} (`{}`) failed; version {old} keeps running: {e}", plugin.name));
                return Err(e);
            }
        };
        if version == old {
            return Ok(version);
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        let swap = super::reload::Swap { at: step, prepared, version: version.clone(), reply };
        ctx.tx.send(swap).await.map_err(|_| Error::config("the query has stopped"))?;
        done.await.map_err(|_| Error::config("the query stopped before the new version ran"))?;
        Ok(version)
    }

    /// Records an event for the query's next progress report (and logs it).
    pub(crate) fn note_event(&self, text: String) {
        self.shared.event(text);
    }

    /// The version (a hash of the component and its config) of the plugin at `step`, if any.
    pub fn plugin_version(&self, step: crate::spec::StepRef) -> Option<String> {
        lock(&self.shared.reload).as_ref().and_then(|c| c.version(step))
    }

    /// Waits until every row available at the time of the call is processed and committed
    /// (for tests, as in Spark). Fails if the query fails meanwhile.
    pub async fn process_all_available(&self) -> Result<()> {
        let mut idle = self.shared.idle.subscribe();
        let start = *idle.borrow_and_update();
        let mut term = self.shared.terminated.subscribe();
        tokio::select! {
            // Two idle checks after the call: the second one began after the call.
            _ = idle.wait_for(|n| *n >= start + 2) => {}
            _ = term.wait_for(|t| *t) => {}
        }
        match self.exception() {
            Some(e) => Err(Error::Failed(e)),
            None => Ok(()),
        }
    }
}

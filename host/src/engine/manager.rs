//! [`StreamingQueryManager`]: Spark's `spark.streams` — the active queries of a session,
//! waiting for any of them to end, and the session's listeners.
//!
//! The manager does not keep a query alive: it holds the query's shared state and a weak
//! reference to its task, so dropping every [`StreamingQuery`] handle still stops the query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::query::{Shared, StreamingQuery};
use crate::error::{Error, Result};
use crate::listener::{Bus, ListenerId, StreamingQueryListener};

/// Spark's `spark.sql.streaming.noDataProgressEventInterval` default.
pub const DEFAULT_IDLE_EVENT_INTERVAL: Duration = Duration::from_secs(10);

struct Entry {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Weak<AbortOnDropHandle<()>>,
}

#[derive(Default)]
struct Registry {
    active: HashMap<Uuid, Entry>,
    /// Queries that ended since the last `reset_terminated`, with their errors.
    terminated: Vec<(Uuid, Option<Arc<Error>>)>,
}

pub(crate) struct ManagerInner {
    registry: Mutex<Registry>,
    /// Bumped whenever a query ends.
    ended: watch::Sender<u64>,
    pub(crate) bus: Bus,
    idle_interval: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ManagerInner {
    /// Called by a query's loop when it ends.
    pub(crate) fn on_terminated(&self, id: Uuid, run_id: Uuid, error: Option<Arc<Error>>) {
        let mut r = lock(&self.registry);
        // A newer run of the same query may have taken the slot: remove only our own.
        if r.active.get(&id).is_some_and(|e| e.shared.run_id == run_id) {
            r.active.remove(&id);
        }
        r.terminated.push((id, error));
        drop(r);
        self.ended.send_modify(|n| *n += 1);
    }

    pub(crate) fn idle_interval(&self) -> Duration {
        *lock(&self.idle_interval)
    }
}

/// The queries of a session (Spark's `StreamingQueryManager`), from [`Session::streams`](crate::Session::streams).
#[derive(Clone)]
pub struct StreamingQueryManager {
    inner: Arc<ManagerInner>,
}

impl std::fmt::Debug for StreamingQueryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingQueryManager").field("active", &lock(&self.inner.registry).active.len()).finish()
    }
}

impl Default for StreamingQueryManager {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamingQueryManager {
    pub(crate) fn new() -> Self {
        StreamingQueryManager {
            inner: Arc::new(ManagerInner {
                registry: Mutex::default(),
                ended: watch::channel(0).0,
                bus: Bus::new(),
                idle_interval: Mutex::new(DEFAULT_IDLE_EVENT_INTERVAL),
            }),
        }
    }

    /// Starts a built query, refusing a name or an id (checkpoint) an active query has.
    pub(crate) fn start(&self, q: super::Query) -> Result<StreamingQuery> {
        let mut r = lock(&self.inner.registry);
        r.active.retain(|_, e| e.task.strong_count() > 0);
        if let Some(name) = &q.name
            && let Some(other) = r.active.values().find(|e| e.shared.name.as_deref() == Some(name.as_str()))
        {
            return Err(Error::config(format!(
                "cannot start query with name {name} as a query with that name is already active in this session (id {})",
                other.shared.id
            )));
        }
        if r.active.contains_key(&q.id) {
            return Err(Error::config(format!(
                "cannot start query with id {} as another query with the same id (the same checkpoint location) is already active",
                q.id
            )));
        }
        let query = StreamingQuery::start(q, Arc::downgrade(&self.inner));
        let (shared, cancel, task) = query.parts();
        r.active.insert(shared.id, Entry { shared, cancel, task });
        Ok(query)
    }

    /// The queries running now.
    pub fn active(&self) -> Vec<StreamingQuery> {
        let r = lock(&self.inner.registry);
        let mut out: Vec<StreamingQuery> = r.active.values().filter_map(to_query).filter(|q| q.is_active()).collect();
        out.sort_by_key(|q| q.id());
        out
    }

    /// The active query with this id.
    pub fn get(&self, id: Uuid) -> Option<StreamingQuery> {
        lock(&self.inner.registry).active.get(&id).and_then(to_query).filter(|q| q.is_active())
    }

    /// Waits until any query of the session has ended since the manager was made or
    /// [`Self::reset_terminated`] was last called; fails with its error if it failed.
    pub async fn await_any_termination(&self) -> Result<()> {
        let mut rx = self.inner.ended.subscribe();
        loop {
            if let Some(r) = self.first_terminated() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Like [`Self::await_any_termination`], giving up after `timeout`; returns whether a query ended.
    pub async fn await_any_termination_timeout(&self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.await_any_termination()).await {
            Ok(r) => r.map(|_| true),
            Err(_) => Ok(false),
        }
    }

    fn first_terminated(&self) -> Option<Result<()>> {
        let r = lock(&self.inner.registry);
        let (_, err) = r.terminated.first()?;
        // Spark reports a failed one in preference.
        let failed = r.terminated.iter().find_map(|(_, e)| e.clone()).or_else(|| err.clone());
        Some(match failed {
            Some(e) => Err(Error::Failed(e)),
            None => Ok(()),
        })
    }

    /// Forgets the queries that have ended, so [`Self::await_any_termination`] waits for a new one.
    pub fn reset_terminated(&self) {
        lock(&self.inner.registry).terminated.clear();
    }

    /// Adds a listener for the events of every query of the session, from now on.
    pub fn add_listener(&self, listener: Arc<dyn StreamingQueryListener>) -> ListenerId {
        self.inner.bus.add(listener)
    }

    /// Removes a listener; returns whether it was there.
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        self.inner.bus.remove(id)
    }

    /// How long a query finds no new data before it posts a `QueryIdleEvent` (and then again
    /// each time as long): Spark's `spark.sql.streaming.noDataProgressEventInterval`, 10 s by
    /// default. Applies to queries started afterwards.
    pub fn set_idle_event_interval(&self, interval: Duration) {
        *lock(&self.inner.idle_interval) = interval;
    }
}

fn to_query(e: &Entry) -> Option<StreamingQuery> {
    let task = e.task.upgrade()?;
    Some(StreamingQuery::from_parts(e.shared.clone(), e.cancel.clone(), task))
}

//! Spark's `StreamingQueryListener`: the events of a query's life (started, progress, idle,
//! terminated) delivered in order, off the query's loop, to Rust callbacks, a JSON-lines file
//! or a webhook.
//!
//! Queries post events to a bounded queue; one thread (`sluice-listeners`, like Spark's
//! listener bus) hands them to every listener in order. A full queue drops events with a
//! warning rather than slowing a query. Listeners that do I/O keep it off that thread when it
//! can block for long (the webhook posts from a task of its own).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::StreamingQueryProgress;

/// How many events may wait for the listeners before new ones are dropped.
const QUEUE: usize = 10_000;

/// Spark's `QueryStartedEvent`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QueryStartedEvent {
    /// The query's id (stable across restarts with a checkpoint).
    pub id: String,
    /// This run's id.
    pub run_id: String,
    /// The query's name.
    pub name: Option<String>,
    /// When it started, ISO-8601 UTC.
    pub timestamp: String,
}

/// Spark's `QueryIdleEvent`: the query found no new data for `noDataProgressEventInterval`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QueryIdleEvent {
    /// The query's id.
    pub id: String,
    /// This run's id.
    pub run_id: String,
    /// When, ISO-8601 UTC.
    pub timestamp: String,
}

/// Spark's `QueryTerminatedEvent`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QueryTerminatedEvent {
    /// The query's id.
    pub id: String,
    /// This run's id.
    pub run_id: String,
    /// The error that ended it, if it failed.
    pub exception: Option<String>,
    /// The error's kind (`User`, `External`, `Plugin`, `ResourceLimit`, `Internal`), if it
    /// failed (Spark's `errorClassOnException`).
    pub error_class_on_exception: Option<String>,
}

/// One event of a query's life, as a JSON object with an `event` field naming Spark's class.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event")]
#[non_exhaustive]
pub enum QueryEvent {
    /// The query started (posted by `start()` before it returns).
    #[serde(rename = "QueryStartedEvent")]
    Started(QueryStartedEvent),
    /// A batch finished.
    #[serde(rename = "QueryProgressEvent")]
    Progress {
        /// The batch's progress.
        progress: Box<StreamingQueryProgress>,
    },
    /// No new data for a while.
    #[serde(rename = "QueryIdleEvent")]
    Idle(QueryIdleEvent),
    /// The query ended.
    #[serde(rename = "QueryTerminatedEvent")]
    Terminated(QueryTerminatedEvent),
}

impl QueryEvent {
    /// The id of the query the event is about.
    pub fn query_id(&self) -> &str {
        match self {
            QueryEvent::Started(e) => &e.id,
            QueryEvent::Progress { progress } => &progress.id,
            QueryEvent::Idle(e) => &e.id,
            QueryEvent::Terminated(e) => &e.id,
        }
    }

    /// The event as one line of JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"event\":\"unserializable\",\"error\":\"{e}\"}}"))
    }
}

/// Spark's `StreamingQueryListener`: called in order for the events of every query of a
/// session, on the listener thread (never on a query's loop). Each method has a default that
/// does nothing.
pub trait StreamingQueryListener: Send + Sync {
    /// A query started.
    fn on_query_started(&self, _event: &QueryStartedEvent) {}
    /// A batch finished.
    fn on_query_progress(&self, _progress: &StreamingQueryProgress) {}
    /// A query found no new data for `noDataProgressEventInterval`.
    fn on_query_idle(&self, _event: &QueryIdleEvent) {}
    /// A query ended.
    fn on_query_terminated(&self, _event: &QueryTerminatedEvent) {}
    /// Every event, in order: by default, the method for its kind. Listeners that treat all
    /// events alike (a file, a webhook) override this one instead.
    fn on_event(&self, event: &QueryEvent) {
        match event {
            QueryEvent::Started(s) => self.on_query_started(s),
            QueryEvent::Progress { progress } => self.on_query_progress(progress),
            QueryEvent::Idle(i) => self.on_query_idle(i),
            QueryEvent::Terminated(t) => self.on_query_terminated(t),
        }
    }
}

/// Calls `f` for every event: the quickest way to a listener from a closure.
pub struct FnListener<F>(pub F);

impl<F: Fn(&QueryEvent) + Send + Sync> StreamingQueryListener for FnListener<F> {
    fn on_event(&self, e: &QueryEvent) {
        (self.0)(e)
    }
}

/// Identifies a listener added to a session, for removing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

type Listeners = Arc<Mutex<Vec<(ListenerId, Arc<dyn StreamingQueryListener>)>>>;

/// The listener bus of a session: queries post, one thread delivers.
#[derive(Clone)]
pub(crate) struct Bus {
    tx: std::sync::mpsc::SyncSender<QueryEvent>,
    listeners: Listeners,
    next: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("dropped", &self.dropped.load(Ordering::Relaxed)).finish()
    }
}

impl Bus {
    pub(crate) fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<QueryEvent>(QUEUE);
        let listeners: Listeners = Arc::default();
        let ls = listeners.clone();
        let spawned = std::thread::Builder::new().name("sluice-listeners".into()).spawn(move || {
            while let Ok(event) = rx.recv() {
                let now: Vec<_> = ls.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, l)| l.clone()).collect();
                for l in now {
                    // A listener that panics loses that event, not the bus.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.on_event(&event)));
                    if r.is_err() {
                        tracing::warn!("a query listener panicked on {}", event.json());
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the listener thread: {e}; listeners get no events");
        }
        Bus { tx, listeners, next: Arc::new(AtomicU64::new(1)), dropped: Arc::new(AtomicU64::new(0)) }
    }

    pub(crate) fn add(&self, l: Arc<dyn StreamingQueryListener>) -> ListenerId {
        let id = ListenerId(self.next.fetch_add(1, Ordering::Relaxed));
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).push((id, l));
        id
    }

    pub(crate) fn remove(&self, id: ListenerId) -> bool {
        let mut ls = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let before = ls.len();
        ls.retain(|(i, _)| *i != id);
        ls.len() != before
    }

    /// Queues an event; never blocks (a full queue drops it, with a warning).
    pub(crate) fn post(&self, e: QueryEvent) {
        if let Err(std::sync::mpsc::TrySendError::Full(e)) = self.tx.try_send(e) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "listener queue full: dropped {} for query {}", kind(&e), e.query_id());
            }
        }
    }
}

fn kind(e: &QueryEvent) -> &'static str {
    match e {
        QueryEvent::Started(_) => "QueryStartedEvent",
        QueryEvent::Progress { .. } => "QueryProgressEvent",
        QueryEvent::Idle(_) => "QueryIdleEvent",
        QueryEvent::Terminated(_) => "QueryTerminatedEvent",
    }
}

/// Appends every event as a line of JSON to a file (created if missing).
pub struct JsonLinesListener {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl JsonLinesListener {
    /// Opens `path` for appending.
    pub fn new(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Ok(JsonLinesListener { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    fn write(&self, e: &QueryEvent) {
        let mut line = e.json();
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = f.write_all(line.as_bytes()) {
            tracing::warn!("cannot write a query event to {}: {err}", self.path.display());
        }
    }
}

impl StreamingQueryListener for JsonLinesListener {
    fn on_event(&self, e: &QueryEvent) {
        self.write(e)
    }
}

/// POSTs every event as JSON (`Content-Type: application/json`) to a URL, in order, from a
/// task of its own: a slow or failing endpoint delays only later posts (each tried 3 times,
/// 5 s timeout each; up to 1000 may wait, then new ones are dropped with a warning).
pub struct WebhookListener {
    tx: tokio::sync::mpsc::Sender<String>,
    url: String,
}

impl WebhookListener {
    /// A webhook posting to `url` (`http://` or `https://`). Needs a tokio runtime.
    pub fn new(url: &str) -> Result<Self> {
        let parsed: http::Uri =
            url.parse().map_err(|e| Error::config(format!("webhook URL {url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) {
            return Err(Error::config(format!("webhook URL {url:?} must start with http:// or https://")));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::config(format!("cannot make an HTTP client for the webhook: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1000);
        let target = url.to_string();
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                for attempt in 1..=3u32 {
                    let sent = client
                        .post(&target)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .and_then(|r| r.error_for_status());
                    match sent {
                        Ok(_) => break,
                        Err(e) if attempt == 3 => tracing::warn!("webhook {target}: event dropped after 3 tries: {e}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
                    }
                }
            }
        });
        Ok(WebhookListener { tx, url: url.to_string() })
    }

    fn send(&self, e: &QueryEvent) {
        if self.tx.try_send(e.json()).is_err() {
            tracing::warn!("webhook {}: queue full, {} dropped", self.url, kind(e));
        }
    }
}

impl StreamingQueryListener for WebhookListener {
    fn on_event(&self, e: &QueryEvent) {
        self.send(e)
    }
}

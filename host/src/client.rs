//! The CLI's side of `sluice serve`: `sluice submit | status | stop | logs --server URL`
//! (token from `SLUICE_TOKEN`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::spec::PipelineSpec;

/// A server to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn external(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Http { context: what.to_string(), message: e.to_string() }
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder().build().map_err(|e| external("cannot make an HTTP client", e))?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| external(&format!("cannot reach {}", self.base), e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| external("reading the answer", e))?;
        let body: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            let message =
                body.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| body.to_string());
            return Err(Error::config(format!("server answered {status}: {message}")));
        }
        Ok(body)
    }

    /// Submits a pipeline file, uploading the files it names by relative paths (plugins).
    pub async fn submit(&self, file: &Path) -> Result<Value> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Io { path: file.to_path_buf(), source })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let spec = PipelineSpec::from_toml(&text, &file.display().to_string(), &base)?;
        let mut form = reqwest::multipart::Form::new().percent_encode_noop().text("pipeline", text);
        for path in spec.plugins().map(|p| p.path.clone()) {
            let Some(rel) = relative_to(&path, &base) else { continue };
            let data = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            form = form.part(rel, reqwest::multipart::Part::bytes(data).file_name("plugin.wasm"));
        }
        self.send(self.http.post(format!("{}/api/queries", self.base)).multipart(form)).await
    }

    /// `GET /api/queries` or `GET /api/queries/{id}`.
    pub async fn status(&self, id: Option<&str>) -> Result<Value> {
        let url = match id {
            Some(id) => format!("{}/api/queries/{id}", self.base),
            None => format!("{}/api/queries", self.base),
        };
        self.send(self.http.get(url)).await
    }

    /// Stops a query.
    pub async fn stop(&self, id: &str) -> Result<Value> {
        self.send(self.http.post(format!("{}/api/queries/{id}/stop", self.base))).await
    }

    /// The query's last `n` listener events.
    pub async fn events(&self, id: &str, n: usize) -> Result<Vec<Value>> {
        let v = self.send(self.http.get(format!("{}/api/queries/{id}/events?n={n}", self.base))).await?;
        Ok(v.get("events").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// Resolves a query name or id prefix to an id.
    pub async fn resolve(&self, name_or_id: &str) -> Result<String> {
        let all = self.status(None).await?;
        let queries = all.get("queries").and_then(Value::as_array).cloned().unwrap_or_default();
        let hits: Vec<String> = queries
            .iter()
            .filter(|q| {
                q.get("name").and_then(Value::as_str) == Some(name_or_id)
                    || q.get("id").and_then(Value::as_str).is_some_and(|i| i.starts_with(name_or_id))
            })
            .filter_map(|q| q.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::config(format!("no query named or with an id starting {name_or_id:?} on the server"))),
            _ => Err(Error::config(format!("{name_or_id:?} matches {} queries; give more of the id", hits.len()))),
        }
    }
}

/// `path` relative to `base`, as a `/`-separated string, when it is under it.
fn relative_to(path: &Path, base: &Path) -> Option<String> {
    let rel: PathBuf = path.strip_prefix(base).ok()?.to_path_buf();
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// One line per query: id, name, state, rates, batch, message.
pub fn format_queries(v: &Value) -> String {
    let empty = Vec::new();
    let queries = v.get("queries").and_then(Value::as_array).unwrap_or(&empty);
    let mut out = format!(
        "{:<36}  {:<20}  {:<8}  {:>10}  {:>10}  {:>7}  status\n",
        "id", "name", "state", "in rows/s", "proc rows/s", "batch"
    );
    for q in queries {
        out.push_str(&format_query(q));
        out.push('\n');
    }
    out
}

/// One query's line.
pub fn format_query(q: &Value) -> String {
    let s = |k: &str| q.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let p = q.get("lastProgress");
    let num =
        |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_f64).map(|x| format!("{x:.1}")).unwrap_or("-".into());
    let batch = p.and_then(|p| p.get("batchId")).and_then(Value::as_u64).map(|b| b.to_string()).unwrap_or("-".into());
    let message = q
        .get("exception")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("status").and_then(|s| s.get("message")).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    format!(
        "{:<36}  {:<20}  {:<8}  {:>10}  {:>10}  {:>7}  {message}",
        s("id"),
        s("name"),
        s("state"),
        num("inputRowsPerSecond"),
        num("processedRowsPerSecond"),
        batch
    )
}

//! Outbound HTTP from a plugin (feature `http`), over the standard `wasi:http` interface.
//!
//! The host lets a request through only to a `host:port` the pipeline grants
//! (`grants = { http = ["api.example.com:443"] }`); declare it from your config in the role
//! trait's `requirements` (as [`crate::Requirement::Http`]) so a missing grant is refused
//! before the query starts. A request the host refuses fails with [`HttpError::Denied`].

use std::io::Write as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused it: the destination is not granted.
    Denied,
    /// The URL could not be used.
    BadUrl(String),
    /// The request failed on the way (connection refused, timeout, ...).
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied => f.write_str("the host denied the request (its destination is not granted)"),
            HttpError::BadUrl(m) => write!(f, "bad URL: {m}"),
            HttpError::Failed(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// The parts of an `http://` or `https://` URL a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Whether the scheme is `https`.
    pub https: bool,
    /// The host.
    pub host: String,
    /// The port (80 or 443 when the URL has none).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http[s]://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(HttpError::BadUrl(format!("`{url}` must start with http:// or https://")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| HttpError::BadUrl(format!("bad port in `{url}`")))?),
            None => (authority, if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(HttpError::BadUrl(format!("no host in `{url}`")));
        }
        Ok(Url { https, host: host.to_string(), port, path: path.to_string() })
    }

    /// `host:port`, as a grant names it.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn code(e: ErrorCode) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        other => HttpError::Failed(format!("{other:?}")),
    }
}

fn failed(what: &str) -> HttpError {
    HttpError::Failed(what.to_string())
}

/// Sends `body` to `url` with `method` (`GET`, `POST`, `PUT`) and returns the status code.
pub fn send(method: &str, url: &str, content_type: &str, body: &[u8]) -> Result<u16, HttpError> {
    send_with_headers(method, url, content_type, &[], body)
}

/// Like [`send`], with extra request headers.
pub fn send_with_headers(
    method: &str,
    url: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<u16, HttpError> {
    let u = Url::parse(url)?;
    let mut list = vec![
        ("content-type".to_string(), content_type.as_bytes().to_vec()),
        // A known length (not chunked encoding): every HTTP/1.1 server reads it.
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ];
    list.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
    let headers = Fields::from_list(&list).map_err(|e| failed(&format!("headers: {e:?}")))?;
    let req = OutgoingRequest::new(headers);
    let m = match method {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        _ => Method::Post,
    };
    req.set_method(&m).map_err(|()| failed("method"))?;
    req.set_scheme(Some(&if u.https { Scheme::Https } else { Scheme::Http })).map_err(|()| failed("scheme"))?;
    req.set_authority(Some(&u.host_port())).map_err(|()| failed("authority"))?;
    req.set_path_with_query(Some(&u.path)).map_err(|()| failed("path"))?;
    let out = req.body().map_err(|()| failed("body"))?;
    let response = outgoing_handler::handle(req, None).map_err(code)?;
    {
        let mut stream = out.write().map_err(|()| failed("body stream"))?;
        stream.write_all(body).map_err(|e| failed(&e.to_string()))?;
        stream.flush().map_err(|e| failed(&e.to_string()))?;
    }
    OutgoingBody::finish(out, None).map_err(code)?;
    response.subscribe().block();
    let r =
        response.get().ok_or_else(|| failed("no response"))?.map_err(|()| failed("response taken"))?.map_err(code)?;
    Ok(r.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        let u = Url::parse("http://127.0.0.1:8080/hook?x=1").expect("url");
        assert_eq!((u.https, u.host.as_str(), u.port, u.path.as_str()), (false, "127.0.0.1", 8080, "/hook?x=1"));
        assert_eq!(Url::parse("https://api.example.com").expect("url").host_port(), "api.example.com:443");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://:80/").is_err());
    }
}

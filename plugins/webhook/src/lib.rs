//! `webhook`: a foreach sink (the `foreach-sink-plugin` world) that POSTs each chunk of rows
//! as JSON lines to a URL.
//!
//! Config: `url` (required, `http://` or `https://`). The plugin declares it needs outbound
//! HTTP to the URL's `host:port`, so the pipeline must grant it
//! (`grants = { http = ["hooks.example.com:443"] }`) or the query does not start.
//!
//! Each request carries `X-Sluice-Batch`, `X-Sluice-Partition` and `X-Sluice-Query` headers so
//! a receiver can drop a repeated (batch, partition) after a failure: foreach is at-least-once,
//! exactly-once when the receiver dedupes. A 5xx answer is a retryable error, any other non-2xx
//! a failure.

use sluice_sdk::arrow_array::RecordBatch;
use sluice_sdk::arrow_schema::SchemaRef;
use sluice_sdk::http::{HttpError, Url};
use sluice_sdk::{BatchContext, Config, Error, ForeachSink, PartitionWriter, Requirement};

pub struct Webhook {
    url: String,
}

pub struct Post {
    url: String,
    headers: Vec<(String, String)>,
}

fn url(config: &Config) -> Result<Url, Error> {
    Url::parse(config.require_str("url")?).map_err(|e| Error::InvalidConfig(format!("`url`: {e}")))
}

impl ForeachSink for Webhook {
    type Writer = Post;

    fn create(config: Config, _schema: SchemaRef) -> Result<Self, Error> {
        config.check_keys(&["url"])?;
        url(&config)?;
        Ok(Webhook { url: config.require_str("url")?.to_string() })
    }

    fn requirements(config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(vec![Requirement::Http(url(config)?.host_port())])
    }

    fn open(&mut self, ctx: &BatchContext) -> Result<Option<Post>, Error> {
        Ok(Some(Post {
            url: self.url.clone(),
            headers: vec![
                ("x-sluice-batch".into(), ctx.batch_id.to_string()),
                ("x-sluice-partition".into(), ctx.partition.to_string()),
                ("x-sluice-query".into(), ctx.query_id.clone()),
            ],
        }))
    }
}

impl PartitionWriter for Post {
    fn process(&mut self, chunk: RecordBatch) -> Result<(), Error> {
        let mut body = Vec::new();
        let mut w = arrow_json::LineDelimitedWriter::new(&mut body);
        w.write(&chunk)?;
        w.finish()?;
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match sluice_sdk::http::send_with_headers("POST", &self.url, "application/x-ndjson", &headers, &body) {
            Ok(s) if (200..300).contains(&s) => Ok(()),
            Ok(s) if s >= 500 => Err(Error::Retryable(format!("{} answered {s}", self.url))),
            Ok(s) => Err(Error::Failed(format!("{} answered {s}", self.url))),
            Err(HttpError::Denied) => Err(Error::Failed(format!("the host denied the request to {}", self.url))),
            Err(e) => Err(Error::Retryable(format!("POST {}: {e}", self.url))),
        }
    }

    fn close(&mut self, _error: Option<&str>) -> Result<(), Error> {
        Ok(())
    }
}

sluice_sdk::export_foreach_sink!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_host_is_declared_and_bad_urls_are_refused() {
        let c = Config::new([("url", "http://127.0.0.1:8080/hook")]);
        assert_eq!(Webhook::requirements(&c).expect("req"), vec![Requirement::Http("127.0.0.1:8080".into())]);
        let schema = sluice_sdk::util::schema(vec![]);
        assert!(Webhook::create(Config::new([("url", "ftp://x")]), schema.clone()).is_err());
        assert!(Webhook::create(Config::new([("uri", "http://x")]), schema).is_err());
    }
}

//! Source-plugin instances: the `stream` resource of `sluice:plugin/source@0.2.0` and the
//! partition readers it opens.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::bindings::v0_2::exports::sluice::plugin::source as wit;
use super::{CallContext, CallStats, GuestError, PluginComponent, Sandboxed, config_v0_2, wire};
use crate::error::{Error, Result};

/// How much one micro-batch may take (the WIT `read-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PluginReadLimit {
    All,
    MaxRows(u64),
    Default,
}

/// One instance of a source plugin's `stream`.
pub(crate) struct SourceStream {
    sb: Sandboxed,
    guest: wit::Guest,
    res: wasmtime::component::ResourceAny,
    schema: SchemaRef,
}

impl PluginComponent {
    /// A new stream instance, created with the config, its schema asked.
    pub(crate) async fn source_stream(&self, query_id: &str) -> Result<SourceStream> {
        let mut sb = self.sandbox(query_id, true).await?;
        let guest = wit::GuestIndices::new(&self.pre)
            .and_then(|i| i.load(&mut sb.store, &sb.instance))
            .map_err(|e| Error::Internal(format!("binding plugin `{}`: {e:#}", self.spec.name)))?;
        let config = config_v0_2(&self.spec.config);
        let res = sb
            .call(&guest, "create", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream().call_create(s, &config).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await?;
        let bytes = sb
            .call(&guest, "schema", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream().call_schema(s, res).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await?;
        let schema = wire::decode_schema(bytes)
            .map_err(|e| sb.contract_error("schema", None, format!("returned an invalid schema: {e}")))?;
        Ok(SourceStream { sb, guest, res, schema })
    }
}

impl SourceStream {
    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub(crate) fn stats(&self) -> CallStats {
        self.sb.stats
    }

    pub(crate) fn memory_peak(&self) -> u64 {
        self.sb.memory_peak()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.sb.is_poisoned()
    }

    pub(crate) async fn initial_offset(&mut self) -> Result<String> {
        let res = self.res;
        self.sb
            .call(&self.guest, "initial-offset", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream().call_initial_offset(s, res).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    pub(crate) async fn latest_offset(&mut self, start: &str, limit: PluginReadLimit) -> Result<String> {
        let res = self.res;
        let start = start.to_string();
        let limit = match limit {
            PluginReadLimit::All => wit::ReadLimit::AllAvailable,
            PluginReadLimit::MaxRows(n) => wit::ReadLimit::MaxRows(n),
            PluginReadLimit::Default => wit::ReadLimit::DefaultLimit,
        };
        self.sb
            .call(&self.guest, "latest-offset", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream()
                        .call_latest_offset(s, res, &start, limit)
                        .await
                        .map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    pub(crate) async fn prepare_available_now(&mut self) -> Result<()> {
        let res = self.res;
        self.sb
            .call(&self.guest, "prepare-available-now", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream().call_prepare_available_now(s, res).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    pub(crate) async fn partitions(&mut self, start: &str, end: &str) -> Result<Vec<String>> {
        let res = self.res;
        let (start, end) = (start.to_string(), end.to_string());
        self.sb
            .call(&self.guest, "partitions", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream()
                        .call_partitions(s, res, &start, &end)
                        .await
                        .map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    pub(crate) async fn commit(&mut self, end: &str) -> Result<()> {
        let res = self.res;
        let end = end.to_string();
        self.sb
            .call(&self.guest, "commit", None, move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream().call_commit(s, res, &end).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    /// Reads one input partition to its end: `open`, then `next` until none.
    pub(crate) async fn read_partition(&mut self, ctx: &CallContext, partition: &str) -> Result<Vec<RecordBatch>> {
        let res = self.res;
        let p = partition.to_string();
        let reader = self
            .sb
            .call(&self.guest, "open", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.micro_batch_stream().call_open(s, res, &p).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await?;
        let mut out = Vec::new();
        loop {
            let next = self
                .sb
                .call(&self.guest, "next", Some(ctx), move |g, s| {
                    Box::pin(async move {
                        g.partition_reader().call_next(s, reader).await.map(|r| r.map_err(GuestError::from))
                    })
                })
                .await;
            match next {
                Ok(Some(bytes)) => {
                    let batches = wire::decode_batch(&self.schema, bytes).map_err(|e| {
                        self.sb.contract_error(
                            "next",
                            Some(ctx.batch_id),
                            format!("returned a batch that is not valid Arrow IPC for its schema: {e}"),
                        )
                    })?;
                    out.extend(batches);
                }
                Ok(None) => break,
                Err(e) => {
                    self.sb.drop_resource(reader).await;
                    return Err(e);
                }
            }
        }
        self.sb.drop_resource(reader).await;
        Ok(out)
    }
}

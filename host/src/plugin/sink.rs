//! Sink-plugin instances: `batch-writer` (foreachBatch) and `sink` / `partition-writer`
//! (foreach) of `sluice:plugin@0.2.0`.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::bindings::v0_2::exports::sluice::plugin::{batch_sink, foreach_sink};
use super::{CallContext, CallStats, GuestError, PluginComponent, Sandboxed, config_v0_2, wire};
use crate::error::{Error, Result};

/// One instance of a foreachBatch plugin.
pub(crate) struct BatchWriter {
    sb: Sandboxed,
    guest: batch_sink::Guest,
    res: wasmtime::component::ResourceAny,
}

/// One instance of a foreach plugin.
pub(crate) struct ForeachWriter {
    sb: Sandboxed,
    guest: foreach_sink::Guest,
    res: wasmtime::component::ResourceAny,
}

/// An open partition of a foreach plugin (a `partition-writer`).
#[derive(Clone, Copy)]
pub(crate) struct PartitionWriter(wasmtime::component::ResourceAny);

fn bind_err(plugin: &str, e: wasmtime::Error) -> Error {
    Error::Internal(format!("binding plugin `{plugin}`: {e:#}"))
}

impl PluginComponent {
    /// A new foreachBatch instance for batches of `schema`.
    pub(crate) async fn batch_writer(&self, query_id: &str, schema: &SchemaRef) -> Result<BatchWriter> {
        let mut sb = self.sandbox(query_id, true).await?;
        let guest = batch_sink::GuestIndices::new(&self.pre)
            .and_then(|i| i.load(&mut sb.store, &sb.instance))
            .map_err(|e| bind_err(&self.spec.name, e))?;
        let config = config_v0_2(&self.spec.config);
        let schema = wire::encode_schema(schema);
        let res = sb
            .call(&guest, "create", None, move |g, s| {
                Box::pin(async move {
                    g.batch_writer().call_create(s, &config, &schema).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await?;
        Ok(BatchWriter { sb, guest, res })
    }

    /// A new foreach instance for chunks of `schema`.
    pub(crate) async fn foreach_writer(&self, query_id: &str, schema: &SchemaRef) -> Result<ForeachWriter> {
        let mut sb = self.sandbox(query_id, true).await?;
        let guest = foreach_sink::GuestIndices::new(&self.pre)
            .and_then(|i| i.load(&mut sb.store, &sb.instance))
            .map_err(|e| bind_err(&self.spec.name, e))?;
        let config = config_v0_2(&self.spec.config);
        let schema = wire::encode_schema(schema);
        let res = sb
            .call(&guest, "create", None, move |g, s| {
                Box::pin(
                    async move { g.sink().call_create(s, &config, &schema).await.map(|r| r.map_err(GuestError::from)) },
                )
            })
            .await?;
        Ok(ForeachWriter { sb, guest, res })
    }
}

impl BatchWriter {
    pub(crate) fn stats(&self) -> CallStats {
        self.sb.stats
    }

    pub(crate) fn memory_peak(&self) -> u64 {
        self.sb.memory_peak()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.sb.is_poisoned()
    }

    pub(crate) async fn begin_batch(&mut self, ctx: &CallContext, rerun: bool) -> Result<()> {
        let (res, wctx) = (self.res, ctx.to_v0_2());
        self.sb
            .call(&self.guest, "begin-batch", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.batch_writer().call_begin_batch(s, res, &wctx, rerun).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    pub(crate) async fn write(&mut self, ctx: &CallContext, chunk: &[RecordBatch]) -> Result<()> {
        let res = self.res;
        let bytes = wire::encode_batch(chunk)?;
        self.sb
            .call(&self.guest, "write", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.batch_writer().call_write(s, res, &bytes).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    pub(crate) async fn commit_batch(&mut self, ctx: &CallContext) -> Result<()> {
        let res = self.res;
        self.sb
            .call(&self.guest, "commit-batch", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.batch_writer().call_commit_batch(s, res).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }
}

impl ForeachWriter {
    pub(crate) fn stats(&self) -> CallStats {
        self.sb.stats
    }

    pub(crate) fn memory_peak(&self) -> u64 {
        self.sb.memory_peak()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.sb.is_poisoned()
    }

    /// Opens a partition of a batch; `None`: the plugin skips it (already written).
    pub(crate) async fn open(&mut self, ctx: &CallContext) -> Result<Option<PartitionWriter>> {
        let (res, wctx) = (self.res, ctx.to_v0_2());
        let w = self
            .sb
            .call(&self.guest, "open", Some(ctx), move |g, s| {
                Box::pin(async move { g.sink().call_open(s, res, &wctx).await.map(|r| r.map_err(GuestError::from)) })
            })
            .await?;
        Ok(w.map(PartitionWriter))
    }

    pub(crate) async fn process(&mut self, ctx: &CallContext, w: PartitionWriter, chunk: &[RecordBatch]) -> Result<()> {
        let bytes = wire::encode_batch(chunk)?;
        self.sb
            .call(&self.guest, "process", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.partition_writer().call_process(s, w.0, &bytes).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await
    }

    /// Closes a partition (with the error that ended it, if any) and drops the writer.
    pub(crate) async fn close(&mut self, ctx: &CallContext, w: PartitionWriter, error: Option<String>) -> Result<()> {
        let r = self
            .sb
            .call(&self.guest, "close", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.partition_writer().call_close(s, w.0, error.as_deref()).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await;
        self.sb.drop_resource(w.0).await;
        r
    }
}

//! Transform instances: `sluice:plugin@0.1.0`'s world-level functions or `@0.2.0`'s
//! `transformer` resource, behind one type.

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};

use super::bindings::{v0_1, v0_2};
use super::{CallContext, CallStats, Contract, GuestError, PluginComponent, Sandboxed, config_v0_1, config_v0_2, wire};
use crate::error::{Error, Result};

enum Kind {
    V1(v0_1::Transform),
    V2 { guest: v0_2::exports::sluice::plugin::transform::Guest, res: wasmtime::component::ResourceAny },
}

/// One instance of a transform plugin, created and planned (its output schema known).
pub(crate) struct Transformer {
    sb: Sandboxed,
    kind: Kind,
    output_schema: SchemaRef,
}

fn fields_text(s: &Schema) -> String {
    let f: Vec<String> = s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
    format!("({})", f.join(", "))
}

impl PluginComponent {
    /// A new instance: created with the config (which it validates), then asked for its output
    /// schema given `input`.
    pub(crate) async fn transformer(&self, query_id: &str, input: &SchemaRef) -> Result<Transformer> {
        let mut sb = self.sandbox(query_id, true).await?;
        let load = |e: wasmtime::Error| Error::Internal(format!("binding plugin `{}`: {e:#}", self.spec.name));
        let (kind, out) = match self.contract {
            Contract::V0_1 => {
                let b = v0_1::TransformIndices::new(&self.pre)
                    .and_then(|i| i.load(&mut sb.store, &sb.instance))
                    .map_err(load)?;
                let config = config_v0_1(&self.spec.config);
                sb.call(&b, "init", None, move |g, s| {
                    Box::pin(async move { g.call_init(s, &config).await.map(|r| r.map_err(GuestError::from)) })
                })
                .await?;
                let ipc = wire::encode_stream(input, &[])?;
                let bytes = sb
                    .call(&b, "output-schema", None, move |g, s| {
                        Box::pin(
                            async move { g.call_output_schema(s, &ipc).await.map(|r| r.map_err(GuestError::from)) },
                        )
                    })
                    .await?;
                let out = wire::decode_stream(bytes).map(|(schema, _)| schema).map_err(|e| {
                    sb.contract_error("output-schema", None, format!("returned invalid Arrow IPC: {e}"))
                })?;
                (Kind::V1(b), out)
            }
            Contract::V0_2 => {
                let guest = v0_2::exports::sluice::plugin::transform::GuestIndices::new(&self.pre)
                    .and_then(|i| i.load(&mut sb.store, &sb.instance))
                    .map_err(load)?;
                let config = config_v0_2(&self.spec.config);
                let res = sb
                    .call(&guest, "create", None, move |g, s| {
                        Box::pin(async move {
                            g.transformer().call_create(s, &config).await.map(|r| r.map_err(GuestError::from))
                        })
                    })
                    .await?;
                let schema = wire::encode_schema(input);
                let bytes = sb
                    .call(&guest, "output-schema", None, move |g, s| {
                        Box::pin(async move {
                            g.transformer()
                                .call_output_schema(s, res, &schema)
                                .await
                                .map(|r| r.map_err(GuestError::from))
                        })
                    })
                    .await?;
                let out = wire::decode_schema(bytes).map_err(|e| {
                    sb.contract_error("output-schema", None, format!("returned an invalid schema: {e}"))
                })?;
                (Kind::V2 { guest, res }, out)
            }
        };
        Ok(Transformer { sb, kind, output_schema: out })
    }
}

impl Transformer {
    /// The schema every output batch has.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
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

    fn check_output(&self, batch: Option<u64>, got: &Schema) -> Result<()> {
        let expected = &self.output_schema;
        let same = expected.fields().len() == got.fields().len()
            && expected
                .fields()
                .iter()
                .zip(got.fields())
                .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type());
        if same {
            return Ok(());
        }
        Err(self.sb.contract_error(
            "process",
            batch,
            format!(
                "returned a batch whose schema {} differs from its declared output schema {}",
                fields_text(got),
                fields_text(expected)
            ),
        ))
    }

    fn decode_output(&self, call: &'static str, batch: u64, bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
        wire::decode_batch(&self.output_schema, bytes).map_err(|e| {
            self.sb.contract_error(
                call,
                Some(batch),
                format!(
                    "returned a batch that is not valid Arrow IPC for its declared output schema {}: {e}",
                    fields_text(&self.output_schema)
                ),
            )
        })
    }

    /// Transforms one chunk (rows of one logical partition); the output is checked against the
    /// declared output schema.
    pub(crate) async fn process(
        &mut self,
        ctx: &CallContext,
        schema: &SchemaRef,
        input: &[RecordBatch],
    ) -> Result<Vec<RecordBatch>> {
        match &self.kind {
            Kind::V1(b) => {
                let ipc = wire::encode_stream(schema, input)?;
                let wctx = v0_1::sluice::plugin::types::BatchContext {
                    batch_id: ctx.batch_id,
                    partition: ctx.partition,
                    watermark_ms: ctx.watermark_ms,
                    batch_timestamp_ms: ctx.batch_timestamp_ms,
                };
                let bytes = self
                    .sb
                    .call(b, "process", Some(ctx), move |g, s| {
                        Box::pin(
                            async move { g.call_process(s, wctx, &ipc).await.map(|r| r.map_err(GuestError::from)) },
                        )
                    })
                    .await?;
                let (got, batches) = wire::decode_stream(bytes).map_err(|e| {
                    self.sb.contract_error("process", Some(ctx.batch_id), format!("returned invalid Arrow IPC: {e}"))
                })?;
                self.check_output(Some(ctx.batch_id), &got)?;
                Ok(batches)
            }
            Kind::V2 { guest, res } => {
                let res = *res;
                let bytes = wire::encode_batch(input)?;
                let wctx = ctx.to_v0_2();
                let out = self
                    .sb
                    .call(guest, "process", Some(ctx), move |g, s| {
                        Box::pin(async move {
                            g.transformer()
                                .call_process(s, res, &wctx, &bytes)
                                .await
                                .map(|r| r.map_err(GuestError::from))
                        })
                    })
                    .await?;
                self.decode_output("process", ctx.batch_id, out)
            }
        }
    }

    /// The end of a micro-batch for this instance: what a buffering transform kept.
    pub(crate) async fn finish_batch(&mut self, ctx: &CallContext) -> Result<Vec<RecordBatch>> {
        let Kind::V2 { guest, res } = &self.kind else { return Ok(Vec::new()) };
        let res = *res;
        let wctx = ctx.to_v0_2();
        let out = self
            .sb
            .call(guest, "finish-batch", Some(ctx), move |g, s| {
                Box::pin(async move {
                    g.transformer().call_finish_batch(s, res, &wctx).await.map(|r| r.map_err(GuestError::from))
                })
            })
            .await?;
        match out {
            Some(bytes) => self.decode_output("finish-batch", ctx.batch_id, bytes),
            None => Ok(Vec::new()),
        }
    }
}

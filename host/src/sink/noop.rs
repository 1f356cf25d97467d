//! The `noop` sink: runs the query and discards the output, for benchmarks.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::{OutputMode, Sink};
use crate::error::Result;

pub(crate) struct NoopSink;

#[async_trait::async_trait]
impl Sink for NoopSink {
    fn description(&self) -> String {
        "NoopSink".into()
    }
    async fn add_batch(&mut self, _: u64, _: &SchemaRef, _: Vec<RecordBatch>, _: OutputMode) -> Result<()> {
        Ok(())
    }
    fn streams_chunks(&self) -> bool {
        true
    }
    async fn write_chunk(&mut self, _: &super::BatchMeta, _: crate::source::Partitioned) -> Result<bool> {
        Ok(true)
    }
}

//! `foreach_batch` / `foreach` with Rust code from the API (`.foreach_batch(..)`, `.foreach(..)`):
//! trusted, not sandboxed, run on tokio's blocking pool so it may block on I/O.

use std::sync::Arc;

use arrow_array::RecordBatch;
use tokio::task::JoinSet;

use super::{BatchMeta, Sink};
use crate::error::{Error, Result};
use crate::foreach::{BatchInfo, ForeachBatchFn, ForeachWriterFactory};
use crate::source::Partitioned;
use crate::spec::NativeSink;

pub(crate) fn build(native: NativeSink) -> Box<dyn Sink> {
    match native {
        NativeSink::ForeachBatch(f) => Box::new(NativeForeachBatch(f)),
        NativeSink::Foreach(w) => Box::new(NativeForeach(w)),
    }
}

fn info(meta: &BatchMeta) -> BatchInfo {
    BatchInfo {
        query_id: meta.query_id.to_string(),
        batch_id: meta.batch_id,
        rerun: meta.rerun,
        watermark_ms: meta.watermark_ms,
    }
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Sink { sink: "foreach".into(), message: format!("the function panicked or was cancelled: {e}") }
}

struct NativeForeachBatch(Arc<dyn ForeachBatchFn>);

#[async_trait::async_trait]
impl Sink for NativeForeachBatch {
    fn description(&self) -> String {
        "ForeachBatchSink".into()
    }

    async fn write_batch(&mut self, meta: &BatchMeta, data: Partitioned) -> Result<()> {
        let f = self.0.clone();
        let info = info(meta);
        let rows: Vec<RecordBatch> = data.into_iter().map(|(_, b)| b).filter(|b| b.num_rows() > 0).collect();
        tokio::task::spawn_blocking(move || f.call(&info, rows)).await.map_err(join_err)?
    }
}

struct NativeForeach(Arc<dyn ForeachWriterFactory>);

#[async_trait::async_trait]
impl Sink for NativeForeach {
    fn description(&self) -> String {
        "ForeachSink".into()
    }

    async fn write_batch(&mut self, meta: &BatchMeta, data: Partitioned) -> Result<()> {
        let parts = meta.num_partitions.max(1);
        let mut by_partition: Vec<Vec<RecordBatch>> = vec![Vec::new(); parts as usize];
        for (p, b) in data {
            if b.num_rows() > 0 {
                by_partition[(p % parts) as usize].push(b);
            }
        }
        let mut set = JoinSet::new();
        for (p, batches) in by_partition.into_iter().enumerate() {
            let factory = self.0.clone();
            let epoch = meta.batch_id;
            set.spawn_blocking(move || {
                let mut w = factory.create();
                if !w.open(p as u32, epoch)? {
                    return Ok(());
                }
                let mut result = Ok(());
                for b in &batches {
                    if let Err(e) = w.process(b) {
                        result = Err(e);
                        break;
                    }
                }
                match result {
                    Ok(()) => w.close(None),
                    Err(e) => {
                        let _ = w.close(Some(&e));
                        Err(e)
                    }
                }
            });
        }
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.map_err(join_err).and_then(|r| r) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

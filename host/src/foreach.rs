//! Spark's `foreachBatch` and `foreach` for Rust code: trusted functions the host runs without
//! a sandbox, on the same engine path as the plugin sinks of the same names.
//!
//! ```no_run
//! # async fn demo() -> sluice::Result<()> {
//! use sluice::{BatchInfo, OutputMode, Session, Trigger};
//! let session = Session::try_new()?;
//! let query = session
//!     .read_stream().format("rate").option("rowsPerSecond", 100).load()
//!     .write_stream()
//!     .foreach_batch(|info: &BatchInfo, batches: Vec<sluice::RecordBatch>| {
//!         let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
//!         println!("batch {} (rerun: {}): {rows} rows", info.batch_id, info.rerun);
//!         Ok(())
//!     })
//!     .start().await?;
//! # Ok(()) }
//! ```
//!
//! The functions run on tokio's blocking pool, so they may do blocking I/O.

use arrow_array::RecordBatch;

use crate::error::{Error, Result};

/// Which micro-batch a foreach / foreachBatch call belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchInfo {
    /// The query's id.
    pub query_id: String,
    /// The micro-batch id (Spark's `batchId`, `epochId` for foreach).
    pub batch_id: u64,
    /// True when this batch may have been handed to the sink before (a re-run after a crash
    /// or a retry): replace what it wrote instead of adding to it.
    pub rerun: bool,
    /// The event-time watermark the batch ran with (ms since the Unix epoch), if the query has
    /// one.
    pub watermark_ms: Option<i64>,
}

/// A foreachBatch function: called once per micro-batch with all its rows. At-least-once;
/// exactly-once when it writes idempotently by `batch_id` (as Spark documents).
pub trait ForeachBatchFn: Send + Sync + 'static {
    /// Writes one micro-batch.
    fn call(&self, info: &BatchInfo, batches: Vec<RecordBatch>) -> Result<()>;
}

impl<F> ForeachBatchFn for F
where
    F: Fn(&BatchInfo, Vec<RecordBatch>) -> Result<()> + Send + Sync + 'static,
{
    fn call(&self, info: &BatchInfo, batches: Vec<RecordBatch>) -> Result<()> {
        self(info, batches)
    }
}

/// Spark's `ForeachWriter`, handed Arrow batches instead of single rows: for each partition of
/// each micro-batch, `open(partition, epoch)`; if it returns true, `process` per chunk; then
/// `close` with the error, if any.
pub trait ForeachWriter: Send + 'static {
    /// Opens `partition` of micro-batch `epoch`; false skips it (already written).
    fn open(&mut self, partition: u32, epoch: u64) -> Result<bool>;
    /// Writes one chunk of the partition's rows.
    fn process(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Ends the partition; `error` is set when processing failed.
    fn close(&mut self, error: Option<&Error>) -> Result<()>;
}

/// Makes one [`ForeachWriter`] per partition and micro-batch (Spark serialises the writer to
/// each task; here it is cloned).
pub trait ForeachWriterFactory: Send + Sync + 'static {
    /// A fresh writer.
    fn create(&self) -> Box<dyn ForeachWriter>;
}

impl<W: ForeachWriter + Clone + Sync> ForeachWriterFactory for W {
    fn create(&self) -> Box<dyn ForeachWriter> {
        Box::new(self.clone())
    }
}

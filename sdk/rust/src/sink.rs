//! The sink roles: foreachBatch ([`BatchSink`]) and foreach ([`ForeachSink`]).
//!
//! A foreachBatch sink sees each micro-batch whole, in chunks: `begin_batch(ctx, rerun)`,
//! `write` per chunk, `commit_batch`. The host logs the batch as committed only after
//! `commit_batch` returns, so after a crash the same batch id comes again with `rerun = true`:
//! replace what you wrote for that id and the output is exactly-once.
//!
//! ```rust
//! use sluice_sdk::arrow_array::RecordBatch;
//! use sluice_sdk::arrow_schema::SchemaRef;
//! use sluice_sdk::{BatchContext, BatchSink, Config, Error, log, Level};
//!
//! /// Counts rows per batch and logs them.
//! struct CountRows { rows: usize, batch: u64 }
//!
//! impl BatchSink for CountRows {
//!     fn create(config: Config, _schema: SchemaRef) -> Result<Self, Error> {
//!         config.check_keys(&[])?;
//!         Ok(CountRows { rows: 0, batch: 0 })
//!     }
//!     fn begin_batch(&mut self, ctx: &BatchContext, _rerun: bool) -> Result<(), Error> {
//!         self.rows = 0;
//!         self.batch = ctx.batch_id;
//!         Ok(())
//!     }
//!     fn write(&mut self, chunk: RecordBatch) -> Result<(), Error> {
//!         self.rows += chunk.num_rows();
//!         Ok(())
//!     }
//!     fn commit_batch(&mut self) -> Result<(), Error> {
//!         log(Level::Info, &format!("batch {}: {} rows", self.batch, self.rows));
//!         Ok(())
//!     }
//! }
//!
//! sluice_sdk::export_batch_sink!(CountRows);
//!
//! // Natively, as the host would call it:
//! let schema = sluice_sdk::util::schema(vec![]);
//! let mut sink = CountRows::create(Config::new(Vec::<(String, String)>::new()), schema.clone()).unwrap();
//! sink.begin_batch(&BatchContext::for_batch(7), false).unwrap();
//! sink.write(RecordBatch::new_empty(schema)).unwrap();
//! sink.commit_batch().unwrap();
//! assert_eq!((sink.batch, sink.rows), (7, 0));
//! ```
//!
//! A foreach sink is Spark's `ForeachWriter`, handed Arrow chunks: for each logical partition of
//! each batch, [`ForeachSink::open`] returns a [`PartitionWriter`] (or `None` to skip the
//! partition), which gets `process` per chunk and then `close`.

use std::cell::RefCell;
use std::marker::PhantomData;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::bindings::{config, context, requirements, wit};
use crate::{BatchContext, Config, Error, Requirement, wire};

/// A foreachBatch sink.
pub trait BatchSink: Sized + 'static {
    /// Builds the sink from its configuration; `schema` is the schema of every batch.
    fn create(config: Config, schema: SchemaRef) -> Result<Self, Error>;
    /// What this configuration needs from the host. Default: nothing.
    fn requirements(_config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(Vec::new())
    }
    /// Starts micro-batch `ctx.batch_id`; `rerun`: it may have been written before (replace it).
    fn begin_batch(&mut self, ctx: &BatchContext, rerun: bool) -> Result<(), Error>;
    /// One chunk of the batch (at most 16 k rows), in order.
    fn write(&mut self, chunk: RecordBatch) -> Result<(), Error>;
    /// The batch is complete: make it durable.
    fn commit_batch(&mut self) -> Result<(), Error>;
}

/// A foreach sink: one [`PartitionWriter`] per logical partition and batch.
pub trait ForeachSink: Sized + 'static {
    /// Writes one partition of one batch.
    type Writer: PartitionWriter;
    /// Builds the sink from its configuration; `schema` is the schema of every chunk.
    fn create(config: Config, schema: SchemaRef) -> Result<Self, Error>;
    /// What this configuration needs from the host. Default: nothing.
    fn requirements(_config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(Vec::new())
    }
    /// Opens partition `ctx.partition` of batch (epoch) `ctx.batch_id`; `None` skips it.
    fn open(&mut self, ctx: &BatchContext) -> Result<Option<Self::Writer>, Error>;
}

/// Writes the rows of one partition of one batch.
pub trait PartitionWriter: 'static {
    /// One chunk of the partition's rows.
    fn process(&mut self, chunk: RecordBatch) -> Result<(), Error>;
    /// The end of the partition; `error` is set when processing failed.
    fn close(&mut self, error: Option<&str>) -> Result<(), Error>;
}

mod batch {
    use super::*;
    use crate::bindings::batch_sink_plugin::exports::sluice::plugin::batch_sink as wit_sink;

    /// The adapter from a [`BatchSink`] to the WIT world.
    #[doc(hidden)]
    pub struct Export<S>(PhantomData<S>);

    /// The `batch-writer` resource.
    #[doc(hidden)]
    pub struct Writer<S> {
        inner: RefCell<S>,
        schema: SchemaRef,
    }

    impl<S: BatchSink> wit_sink::Guest for Export<S> {
        type BatchWriter = Writer<S>;

        fn requirements(config_: wit::Config) -> Result<Vec<wit::Requirement>, wit::PluginError> {
            requirements(S::requirements(&config(config_)))
        }
    }

    impl<S: BatchSink> wit_sink::GuestBatchWriter for Writer<S> {
        fn create(config_: wit::Config, input: Vec<u8>) -> Result<wit_sink::BatchWriter, wit::PluginError> {
            let schema = wire::decode_schema(input).map_err(Error::from)?;
            let s = S::create(config(config_), schema.clone())?;
            Ok(wit_sink::BatchWriter::new(Writer { inner: RefCell::new(s), schema }))
        }

        fn begin_batch(&self, ctx: wit::BatchContext, rerun: bool) -> Result<(), wit::PluginError> {
            Ok(self.inner.borrow_mut().begin_batch(&context(ctx), rerun)?)
        }

        fn write(&self, chunk: Vec<u8>) -> Result<(), wit::PluginError> {
            let batches = wire::decode_batch_from_host(&self.schema, chunk).map_err(Error::from)?;
            let mut s = self.inner.borrow_mut();
            for b in batches {
                s.write(b)?;
            }
            Ok(())
        }

        fn commit_batch(&self) -> Result<(), wit::PluginError> {
            Ok(self.inner.borrow_mut().commit_batch()?)
        }
    }
}

mod foreach {
    use super::*;
    use crate::bindings::foreach_sink_plugin::exports::sluice::plugin::foreach_sink as wit_sink;

    /// The adapter from a [`ForeachSink`] to the WIT world.
    #[doc(hidden)]
    pub struct Export<S>(PhantomData<S>);

    /// The `sink` resource.
    #[doc(hidden)]
    pub struct Sink<S> {
        inner: RefCell<S>,
        schema: SchemaRef,
    }

    /// The `partition-writer` resource.
    #[doc(hidden)]
    pub struct Writer<W> {
        inner: RefCell<W>,
        schema: SchemaRef,
    }

    impl<S: ForeachSink> wit_sink::Guest for Export<S> {
        type Sink = Sink<S>;
        type PartitionWriter = Writer<S::Writer>;

        fn requirements(config_: wit::Config) -> Result<Vec<wit::Requirement>, wit::PluginError> {
            requirements(S::requirements(&config(config_)))
        }
    }

    impl<S: ForeachSink> wit_sink::GuestSink for Sink<S> {
        fn create(config_: wit::Config, input: Vec<u8>) -> Result<wit_sink::Sink, wit::PluginError> {
            let schema = wire::decode_schema(input).map_err(Error::from)?;
            let s = S::create(config(config_), schema.clone())?;
            Ok(wit_sink::Sink::new(Sink { inner: RefCell::new(s), schema }))
        }

        fn open(&self, ctx: wit::BatchContext) -> Result<Option<wit_sink::PartitionWriter>, wit::PluginError> {
            let w = self.inner.borrow_mut().open(&context(ctx))?;
            Ok(w.map(|w| {
                wit_sink::PartitionWriter::new(Writer { inner: RefCell::new(w), schema: self.schema.clone() })
            }))
        }
    }

    impl<W: PartitionWriter> wit_sink::GuestPartitionWriter for Writer<W> {
        fn process(&self, chunk: Vec<u8>) -> Result<(), wit::PluginError> {
            let batches = wire::decode_batch_from_host(&self.schema, chunk).map_err(Error::from)?;
            let mut w = self.inner.borrow_mut();
            for b in batches {
                w.process(b)?;
            }
            Ok(())
        }

        fn close(&self, error: Option<String>) -> Result<(), wit::PluginError> {
            Ok(self.inner.borrow_mut().close(error.as_deref())?)
        }
    }
}

#[doc(hidden)]
pub use batch::Export as BatchExport;
#[doc(hidden)]
pub use foreach::Export as ForeachExport;

/// Exports a [`BatchSink`] as the component's `batch-sink-plugin` world (foreachBatch).
#[macro_export]
macro_rules! export_batch_sink {
    ($s:ty) => {
        #[cfg(target_arch = "wasm32")]
        type __SluiceBatchSinkExport = $crate::sink::BatchExport<$s>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::batch_sink_plugin::__export_batch_sink_plugin!(
            __SluiceBatchSinkExport with_types_in $crate::bindings::batch_sink_plugin
        );
    };
}

/// Exports a [`ForeachSink`] as the component's `foreach-sink-plugin` world (foreach).
#[macro_export]
macro_rules! export_foreach_sink {
    ($s:ty) => {
        #[cfg(target_arch = "wasm32")]
        type __SluiceForeachSinkExport = $crate::sink::ForeachExport<$s>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::foreach_sink_plugin::__export_foreach_sink_plugin!(
            __SluiceForeachSinkExport with_types_in $crate::bindings::foreach_sink_plugin
        );
    };
}

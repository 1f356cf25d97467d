//! The source role, modelled on Spark's DataSource V2 `MicroBatchStream` and PySpark's
//! `DataSourceStreamReader`.
//!
//! The host asks the stream for offsets (JSON text it logs before each batch), splits a range
//! into input partitions, and reads each partition with a [`PartitionReader`], in parallel on
//! several instances. Reading the same range again must give the same rows: that is what makes
//! recovery exactly-once.
//!
//! ```rust
//! use std::sync::Arc;
//! use sluice_sdk::arrow_array::{Int64Array, RecordBatch};
//! use sluice_sdk::arrow_schema::{DataType, Field, SchemaRef};
//! use sluice_sdk::{Config, Error, PartitionReader, ReadLimit, Source, util};
//!
//! /// Counts up from 0, `step` numbers per batch.
//! struct Counter { step: u64, schema: SchemaRef }
//! struct Range { from: u64, to: u64, schema: SchemaRef }
//!
//! impl Source for Counter {
//!     type Reader = Range;
//!     fn create(config: Config) -> Result<Self, Error> {
//!         config.check_keys(&["step"])?;
//!         let step = config.int_or("step", 100)? as u64;
//!         Ok(Counter { step, schema: util::schema(vec![Field::new("n", DataType::Int64, false)]) })
//!     }
//!     fn schema(&self) -> SchemaRef { self.schema.clone() }
//!     fn initial_offset(&mut self) -> Result<String, Error> { Ok("0".into()) }
//!     fn latest_offset(&mut self, start: &str, limit: ReadLimit) -> Result<String, Error> {
//!         let start: u64 = start.parse().map_err(|_| Error::Failed(format!("bad offset {start}")))?;
//!         let n = match limit { ReadLimit::MaxRows(m) => m.min(self.step), _ => self.step };
//!         Ok((start + n).to_string())
//!     }
//!     fn partitions(&mut self, start: &str, end: &str) -> Result<Vec<String>, Error> {
//!         Ok(vec![format!("{start}-{end}")])
//!     }
//!     fn open(&mut self, partition: &str) -> Result<Range, Error> {
//!         let (a, b) = partition.split_once('-').ok_or_else(|| Error::Failed(partition.into()))?;
//!         let parse = |s: &str| s.parse::<u64>().map_err(|_| Error::Failed(partition.into()));
//!         Ok(Range { from: parse(a)?, to: parse(b)?, schema: self.schema.clone() })
//!     }
//! }
//!
//! impl PartitionReader for Range {
//!     fn next(&mut self) -> Result<Option<RecordBatch>, Error> {
//!         if self.from >= self.to { return Ok(None) }
//!         let values: Int64Array = (self.from..self.to).map(|v| v as i64).collect();
//!         self.from = self.to;
//!         Ok(Some(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(values)])?))
//!     }
//! }
//!
//! sluice_sdk::export_source!(Counter);
//!
//! // Natively: plan a batch and read it, as the host would.
//! let mut c = Counter::create(Config::new([("step", 5i64)])).unwrap();
//! let start = c.initial_offset().unwrap();
//! let end = c.latest_offset(&start, ReadLimit::MaxRows(3)).unwrap();
//! assert_eq!(end, "3");
//! let parts = c.partitions(&start, &end).unwrap();
//! let mut reader = c.open(&parts[0]).unwrap();
//! assert_eq!(reader.next().unwrap().map(|b| b.num_rows()), Some(3));
//! assert!(reader.next().unwrap().is_none());
//! ```

use std::cell::RefCell;
use std::marker::PhantomData;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::bindings::source_plugin::exports::sluice::plugin::source as wit_source;
use crate::bindings::{config, requirements, wit};
use crate::{Config, Error, Requirement, wire};

/// How much one micro-batch may take (Spark's `ReadLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Everything available (trigger `once`).
    AllAvailable,
    /// At most this many rows (the source option `maxRowsPerTrigger`).
    MaxRows(u64),
    /// The source's own limit, from its configuration.
    Default,
}

/// A streaming source. Offsets are JSON text (a number is valid JSON).
pub trait Source: Sized + 'static {
    /// Reads one input partition.
    type Reader: PartitionReader;
    /// Builds the stream from its configuration. Validate everything here.
    fn create(config: Config) -> Result<Self, Error>;
    /// What this configuration needs from the host. Default: nothing.
    fn requirements(_config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(Vec::new())
    }
    /// The schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// Where a new query starts.
    fn initial_offset(&mut self) -> Result<String, Error>;
    /// The end of the next micro-batch starting at `start`, within `limit`; `start` itself
    /// when there is no new data.
    fn latest_offset(&mut self, start: &str, limit: ReadLimit) -> Result<String, Error>;
    /// For trigger `available_now`: fix the end of what is available now. Default: nothing.
    fn prepare_available_now(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// Splits (`start`, `end`] into input partitions (JSON text each); deterministic.
    fn partitions(&mut self, start: &str, end: &str) -> Result<Vec<String>, Error>;
    /// Opens one partition for reading.
    fn open(&mut self, partition: &str) -> Result<Self::Reader, Error>;
    /// Everything up to `end` is committed; forget it. Default: nothing.
    fn commit(&mut self, _end: &str) -> Result<(), Error> {
        Ok(())
    }
}

/// Reads one input partition: `next` until it returns `None`. Deterministic.
pub trait PartitionReader: 'static {
    /// The next chunk of rows, or `None` at the end.
    fn next(&mut self) -> Result<Option<RecordBatch>, Error>;
}

/// The adapter from a [`Source`] to the WIT world; used by [`crate::export_source!`].
#[doc(hidden)]
pub struct Export<S>(PhantomData<S>);

/// The `micro-batch-stream` resource around a [`Source`].
#[doc(hidden)]
pub struct Stream<S>(RefCell<S>);

/// The `partition-reader` resource around a [`PartitionReader`].
#[doc(hidden)]
pub struct Reader<R>(RefCell<R>);

impl<S: Source> wit_source::Guest for Export<S> {
    type MicroBatchStream = Stream<S>;
    type PartitionReader = Reader<S::Reader>;

    fn requirements(config_: wit::Config) -> Result<Vec<wit::Requirement>, wit::PluginError> {
        requirements(S::requirements(&config(config_)))
    }
}

impl<S: Source> wit_source::GuestMicroBatchStream for Stream<S> {
    fn create(config_: wit::Config) -> Result<wit_source::MicroBatchStream, wit::PluginError> {
        Ok(wit_source::MicroBatchStream::new(Stream(RefCell::new(S::create(config(config_))?))))
    }

    fn schema(&self) -> Result<Vec<u8>, wit::PluginError> {
        Ok(wire::encode_schema(&self.0.borrow().schema()))
    }

    fn initial_offset(&self) -> Result<String, wit::PluginError> {
        Ok(self.0.borrow_mut().initial_offset()?)
    }

    fn latest_offset(&self, start: String, limit: wit_source::ReadLimit) -> Result<String, wit::PluginError> {
        let limit = match limit {
            wit_source::ReadLimit::AllAvailable => ReadLimit::AllAvailable,
            wit_source::ReadLimit::MaxRows(n) => ReadLimit::MaxRows(n),
            wit_source::ReadLimit::DefaultLimit => ReadLimit::Default,
        };
        Ok(self.0.borrow_mut().latest_offset(&start, limit)?)
    }

    fn prepare_available_now(&self) -> Result<(), wit::PluginError> {
        Ok(self.0.borrow_mut().prepare_available_now()?)
    }

    fn partitions(&self, start: String, end: String) -> Result<Vec<String>, wit::PluginError> {
        Ok(self.0.borrow_mut().partitions(&start, &end)?)
    }

    fn open(&self, partition: String) -> Result<wit_source::PartitionReader, wit::PluginError> {
        let r = self.0.borrow_mut().open(&partition)?;
        Ok(wit_source::PartitionReader::new(Reader(RefCell::new(r))))
    }

    fn commit(&self, end: String) -> Result<(), wit::PluginError> {
        Ok(self.0.borrow_mut().commit(&end)?)
    }
}

impl<R: PartitionReader> wit_source::GuestPartitionReader for Reader<R> {
    fn next(&self) -> Result<Option<Vec<u8>>, wit::PluginError> {
        match self.0.borrow_mut().next()? {
            Some(b) => Ok(Some(wire::encode_batch(&[b]).map_err(Error::from)?)),
            None => Ok(None),
        }
    }
}

/// Exports a [`Source`] as the component's `source-plugin` world.
#[macro_export]
macro_rules! export_source {
    ($s:ty) => {
        #[cfg(target_arch = "wasm32")]
        type __SluiceSourceExport = $crate::source::Export<$s>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::source_plugin::__export_source_plugin!(
            __SluiceSourceExport with_types_in $crate::bindings::source_plugin
        );
    };
}

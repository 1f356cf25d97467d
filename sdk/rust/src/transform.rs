//! The transform role: a batch-to-batch function (map, flat-map, filter, enrich, parse).
//!
//! ```rust
//! use std::sync::Arc;
//! use sluice_sdk::arrow_array::{Array, RecordBatch, StringArray};
//! use sluice_sdk::arrow_schema::{DataType, Field, Schema, SchemaRef};
//! use sluice_sdk::{BatchContext, Config, Error, Transform, util};
//!
//! /// Upper-cases one string column.
//! struct Upper { column: String }
//!
//! impl Transform for Upper {
//!     fn create(config: Config) -> Result<Self, Error> {
//!         config.check_keys(&["column"])?;
//!         Ok(Upper { column: config.str_or("column", "value")?.to_string() })
//!     }
//!     fn output_schema(&mut self, _input: &Schema) -> Result<SchemaRef, Error> {
//!         Ok(util::schema(vec![Field::new(&self.column, DataType::Utf8, true)]))
//!     }
//!     fn process(&mut self, _ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
//!         let i = util::column_index(&input.schema(), &self.column)?;
//!         let col = input.column(i).as_any().downcast_ref::<StringArray>()
//!             .ok_or_else(|| Error::InvalidInput(format!("`{}` must be a string", self.column)))?;
//!         let upper: StringArray = col.iter().map(|v| v.map(str::to_uppercase)).collect();
//!         let schema = self.output_schema(&input.schema())?;
//!         Ok(RecordBatch::try_new(schema, vec![Arc::new(upper)])?)
//!     }
//! }
//!
//! sluice_sdk::export_transform!(Upper);
//!
//! // Natively, the same code runs in the plugin's unit tests:
//! let mut t = Upper::create(Config::new([("column", "value")])).unwrap();
//! let input = util::schema(vec![Field::new("value", DataType::Utf8, true)]);
//! let batch = RecordBatch::try_new(input, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
//! let out = t.process(&BatchContext::for_batch(0), batch).unwrap();
//! assert_eq!(out.column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0), "A");
//! ```

use std::cell::RefCell;
use std::marker::PhantomData;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};

use crate::bindings::transform_plugin::exports::sluice::plugin::transform as wit_transform;
use crate::bindings::{config, context, requirements, wit};
use crate::{BatchContext, Config, Error, Requirement, wire};

/// A batch-to-batch transform.
///
/// The host creates one instance per parallel slot with [`Transform::create`], asks it for its
/// [`Transform::output_schema`] once at planning time, then calls [`Transform::process`] for
/// each chunk (at most 16 k rows, all of one logical partition), and
/// [`Transform::finish_batch`] after the last chunk of each partition of a micro-batch.
pub trait Transform: Sized + 'static {
    /// Builds the instance from its configuration. Validate everything here.
    fn create(config: Config) -> Result<Self, Error>;
    /// What this configuration needs from the host (directories, HTTP hosts, ...). Default:
    /// nothing.
    fn requirements(_config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(Vec::new())
    }
    /// The schema of the output for a given input schema. Checked by the host on every batch.
    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error>;
    /// Transforms one chunk. The output must have the schema `output_schema` gave.
    fn process(&mut self, ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error>;
    /// The end of one logical partition of a micro-batch: a transform that buffers returns what
    /// it kept. Default: nothing.
    fn finish_batch(&mut self, _ctx: &BatchContext) -> Result<Option<RecordBatch>, Error> {
        Ok(None)
    }
}

/// The adapter from a [`Transform`] to the WIT world; used by [`crate::export_transform!`].
#[doc(hidden)]
pub struct Export<T>(PhantomData<T>);

/// The `transformer` resource around a [`Transform`].
#[doc(hidden)]
pub struct Instance<T> {
    inner: RefCell<T>,
    input: RefCell<Option<SchemaRef>>,
    output: RefCell<Option<SchemaRef>>,
}

impl<T: Transform> wit_transform::Guest for Export<T> {
    type Transformer = Instance<T>;

    fn requirements(config_: wit::Config) -> Result<Vec<wit::Requirement>, wit::PluginError> {
        requirements(T::requirements(&config(config_)))
    }
}

impl<T: Transform> Instance<T> {
    fn schemas(&self) -> Result<(SchemaRef, SchemaRef), Error> {
        match (&*self.input.borrow(), &*self.output.borrow()) {
            (Some(i), Some(o)) => Ok((i.clone(), o.clone())),
            _ => Err(Error::Failed("process called before output-schema".into())),
        }
    }

    fn run(&self, ctx: wit::BatchContext, input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let ctx = context(ctx);
        let (input_schema, _) = self.schemas()?;
        let batches = wire::decode_batch_from_host(&input_schema, input)?;
        let mut t = self.inner.borrow_mut();
        // Collected in place (no second vector).
        let out = batches.into_iter().map(|b| t.process(&ctx, b)).collect::<Result<Vec<_>, _>>()?;
        Ok(wire::encode_batch(&out)?)
    }
}

impl<T: Transform> wit_transform::GuestTransformer for Instance<T> {
    fn create(config_: wit::Config) -> Result<wit_transform::Transformer, wit::PluginError> {
        let t = T::create(config(config_))?;
        Ok(wit_transform::Transformer::new(Instance {
            inner: RefCell::new(t),
            input: RefCell::new(None),
            output: RefCell::new(None),
        }))
    }

    fn output_schema(&self, input: Vec<u8>) -> Result<Vec<u8>, wit::PluginError> {
        let schema = wire::decode_schema(input).map_err(Error::from)?;
        let out = self.inner.borrow_mut().output_schema(&schema)?;
        let bytes = wire::encode_schema(&out);
        *self.input.borrow_mut() = Some(schema);
        *self.output.borrow_mut() = Some(out);
        Ok(bytes)
    }

    fn process(&self, ctx: wit::BatchContext, input: Vec<u8>) -> Result<Vec<u8>, wit::PluginError> {
        Ok(self.run(ctx, input)?)
    }

    fn finish_batch(&self, ctx: wit::BatchContext) -> Result<Option<Vec<u8>>, wit::PluginError> {
        let ctx = context(ctx);
        match self.inner.borrow_mut().finish_batch(&ctx)? {
            Some(b) => Ok(Some(wire::encode_batch(&[b]).map_err(Error::from)?)),
            None => Ok(None),
        }
    }
}

/// Exports a [`Transform`] as the component's `transform-plugin` world (on Wasm; off Wasm it
/// expands to nothing, so the crate links natively for `cargo test`).
///
/// ```rust,ignore
/// struct Upper;
/// impl sluice_sdk::Transform for Upper { /* ... */ }
/// sluice_sdk::export_transform!(Upper);
/// ```
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        type __SluiceTransformExport = $crate::transform::Export<$t>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::transform_plugin::__export_transform_plugin!(
            __SluiceTransformExport with_types_in $crate::bindings::transform_plugin
        );
    };
}

//! `identity`: returns its input unchanged. It measures the cost of crossing the Wasm boundary
//! (IPC encode, copy in, decode, encode, copy out, decode) and nothing else.

use std::sync::Arc;

use sluice_sdk::arrow_array::RecordBatch;
use sluice_sdk::arrow_schema::{Schema, SchemaRef};
use sluice_sdk::{BatchContext, Config, Error, Transform};

struct Identity;

impl Transform for Identity {
    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&[])?;
        Ok(Identity)
    }
    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error> {
        Ok(Arc::new(input.clone()))
    }
    fn process(&mut self, _ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        Ok(input)
    }
}

sluice_sdk::export_transform!(Identity);

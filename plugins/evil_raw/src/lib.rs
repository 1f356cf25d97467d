//! `evil_raw`: a hostile transform written against the WIT directly (no SDK), so it can return
//! bytes the SDK would never produce. Never use it in a real pipeline.
//!
//! Config `mode`: `garbage` (`process` returns random bytes), `truncated` (a valid batch cut in
//! half), `schema_in_batch` (a schema message where a batch belongs), `bad_schema`
//! (`output-schema` returns garbage).
#![allow(missing_docs, reason = "a test fixture")]

wit_bindgen::generate!({
    world: "transform-plugin",
    path: "../../wit/0.2.0",
});

use std::cell::RefCell;

use exports::sluice::plugin::transform::{self, Transformer};
use sluice::plugin::types::{BatchContext, Config, PluginError, Requirement, Value};

struct EvilRaw;

struct Instance {
    mode: String,
    schema: RefCell<Vec<u8>>,
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl transform::Guest for EvilRaw {
    type Transformer = Instance;

    fn requirements(_config: Config) -> Result<Vec<Requirement>, PluginError> {
        Ok(Vec::new())
    }
}

impl transform::GuestTransformer for Instance {
    fn create(config: Config) -> Result<Transformer, PluginError> {
        let mode = config
            .iter()
            .find(|(k, _)| k == "mode")
            .and_then(|(_, v)| match v {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            })
            .ok_or_else(|| PluginError::InvalidConfig("`mode` is required".into()))?;
        Ok(Transformer::new(Instance { mode, schema: RefCell::new(Vec::new()) }))
    }

    fn output_schema(&self, input: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        if self.mode == "bad_schema" {
            return Ok(noise(300, 7));
        }
        *self.schema.borrow_mut() = input.clone();
        Ok(input)
    }

    fn process(&self, ctx: BatchContext, input: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        Ok(match self.mode.as_str() {
            "garbage" => noise(4096, ctx.batch_id + 1),
            "truncated" => input[..input.len() / 2].to_vec(),
            "schema_in_batch" => self.schema.borrow().clone(),
            _ => input,
        })
    }

    fn finish_batch(&self, _ctx: BatchContext) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(None)
    }
}

// Exported on Wasm only: a native cdylib cannot carry the component's export names.
#[cfg(target_arch = "wasm32")]
export!(EvilRaw);

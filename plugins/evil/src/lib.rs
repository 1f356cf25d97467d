//! `evil`: a hostile plugin for testing the sandbox. Never use it in a real pipeline.
//!
//! `mode` chooses the misbehaviour on `process`: `panic` (traps with a message), `loop` (never
//! returns), `alloc` (allocates without bound), `wrong_schema` (returns a batch that does not
//! match its declared output schema), `error` (returns a plugin error), `none` (passes input
//! through). `after` (default 0) lets that many batches pass through first.

use sluice_sdk::arrow_array::{Int64Array, RecordBatch};
use sluice_sdk::arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sdk::{BatchContext, Config, Error, Transform, util};
use std::sync::Arc;

struct Evil {
    mode: String,
    after: u64,
    seen: u64,
    hoard: Vec<Vec<u8>>,
}

impl Transform for Evil {
    fn init(config: Config) -> Result<Self, Error> {
        config.check_keys(&["mode", "after"])?;
        let mode = config.require("mode")?.to_string();
        const MODES: [&str; 6] = ["panic", "loop", "alloc", "wrong_schema", "error", "none"];
        if !MODES.contains(&mode.as_str()) {
            return Err(Error::InvalidConfig(format!("`mode` must be one of {}, got {mode:?}", MODES.join(", "))));
        }
        let after = config.get_or("after", "0").parse().map_err(|e| Error::InvalidConfig(format!("`after`: {e}")))?;
        Ok(Evil { mode, after, seen: 0, hoard: Vec::new() })
    }

    fn output_schema(&self, input: &Schema) -> Result<SchemaRef, Error> {
        Ok(Arc::new(input.clone()))
    }

    fn process(&mut self, _ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        self.seen += 1;
        if self.seen <= self.after {
            return Ok(input);
        }
        match self.mode.as_str() {
            "panic" => panic!("evil plugin panics on purpose"),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if x == 42 {
                        break;
                    }
                }
                Ok(input)
            }
            "alloc" => loop {
                let mut chunk = vec![0u8; 16 << 20];
                chunk[0] = self.hoard.len() as u8;
                self.hoard.push(chunk);
            },
            "wrong_schema" => {
                let schema = util::schema(vec![Field::new("nope", DataType::Int64, false)]);
                Ok(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1i64]))])?)
            }
            "error" => Err(Error::Failed("evil plugin refuses this batch".into())),
            _ => Ok(input),
        }
    }
}

sluice_sdk::export_transform!(Evil);

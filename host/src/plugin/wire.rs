//! Batches on the wire between host and guest: the SDK's codec (`sluice_sdk::wire`), so host
//! and Rust guests run the same code. `sluice:plugin@0.1.0` sends a whole IPC stream per call;
//! `@0.2.0` sends the schema once and then schema-less IPC messages per batch.

pub(crate) use sluice_sdk::wire::{
    decode_batch, decode_schema, decode_stream, encode_batch, encode_schema, encode_stream,
};

//! Batches on the wire between host and guest: the reference codec of the boundary, used by
//! this SDK and by the Sluice host alike.
//!
//! - `sluice:plugin@0.1.0`: one whole Arrow IPC *stream* per call (schema message, record
//!   batches, end-of-stream marker): [`encode_stream`] / [`decode_stream`].
//! - `sluice:plugin@0.2.0`: the schema crosses once, as one encapsulated IPC schema message
//!   ([`encode_schema`] / [`decode_schema`]); each batch payload is then the encapsulated IPC
//!   messages of zero or more record batches, with the dictionary batches they need before
//!   them (as in a stream: a dictionary holds for the rest of the payload until replaced), with
//!   no schema and no end-of-stream marker ([`encode_batch`] / [`decode_batch`]). A schema
//!   followed by a payload is a valid IPC stream.
//!
//! Decoding never trusts its input: every message is length-checked, the flatbuffers are
//! verified, buffers are bounds-checked and arrays validated by arrow-ipc, compressed buffers
//! are refused; array data points into the received bytes (no copy) where it is aligned.
//! Flat schemas (primitive, boolean, string and binary columns) take a faster path that
//! writes and reads the same messages (`flat.rs`). The one exception to validation: a plugin's
//! bindings read the input of a call, which the host encoded from arrays it had validated,
//! without verifying its flatbuffers or validating its arrays again (on Wasm only; see
//! `message_at` and `read_from_host`; lengths and buffer bounds are still checked).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions, StreamEncoder};
use arrow_schema::{ArrowError, Schema, SchemaRef};

mod flat;

const CONTINUATION: [u8; 4] = [0xff; 4];

fn ipc_err(message: impl Into<String>) -> ArrowError {
    ArrowError::IpcError(message.into())
}

/// The bytes the rows of `batches` occupy (not the buffers they may be slices of).
fn payload_size(batches: &[RecordBatch]) -> usize {
    batches.iter().flat_map(|b| b.columns()).map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum()
}

/// Encodes batches as one Arrow IPC stream (0.1.0).
pub fn encode_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::with_capacity(payload_size(batches) + 1024), schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.into_inner()
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

/// Runs a decoder, turning a panic into an error: arrow-ipc validates most of what it reads,
/// but some damaged inputs (a validity bitmap shorter than its array) trip an assertion inside
/// it instead. The host never trusts plugin output, so it must not crash on it either. (On
/// Wasm, where panics abort, this changes nothing.)
fn guarded<T>(f: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, ArrowError> {
    // The panic is expected and handled: keep it out of stderr (other panics still print).
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(ipc_err(format!("malformed Arrow IPC ({why})")))
    })
}

/// Decodes one Arrow IPC stream (0.1.0), validating it.
pub fn decode_stream(bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    guarded(|| decode_stream_unguarded(bytes))
}

fn decode_stream_unguarded(bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let mut buf = Buffer::from_vec(bytes);
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut batches = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf)? {
            Some(b) => batches.push(b),
            None if buf.is_empty() => break,
            None => {}
        }
    }
    decoder.finish()?;
    let schema = decoder.schema().ok_or_else(|| ipc_err("the stream has no schema message"))?;
    Ok((schema, batches))
}

/// Writes an encapsulated message's prefix: continuation marker, metadata length (the
/// flatbuffer padded so the body starts on an 8-byte boundary), flatbuffer, padding.
fn write_header(out: &mut Vec<u8>, message: &[u8]) {
    let padded = (message.len() + 8).div_ceil(8) * 8 - 8;
    out.extend_from_slice(&CONTINUATION);
    out.extend_from_slice(&(padded as i32).to_le_bytes());
    out.extend_from_slice(message);
    out.resize(out.len() + padded - message.len(), 0);
}

fn write_encapsulated(out: &mut Vec<u8>, message: &[u8], body: &[u8]) {
    write_header(out, message);
    out.extend_from_slice(body);
}

/// Encodes a schema as one encapsulated IPC schema message (0.2.0).
pub fn encode_schema(schema: &Schema) -> Vec<u8> {
    let mut tracker = DictionaryTracker::new(false);
    let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
        schema,
        &mut tracker,
        &IpcWriteOptions::default(),
    );
    let mut out = Vec::with_capacity(encoded.ipc_message.len() + 16);
    write_encapsulated(&mut out, &encoded.ipc_message, &[]);
    out
}

/// Encodes `batches` (each a record batch message, with its dictionaries before it) against a
/// schema the reader already has (0.2.0).
pub fn encode_batch(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    if flat::is_flat(&first.schema()) {
        // Each message reserves what it writes.
        let mut out = Vec::new();
        for b in batches {
            flat::encode(b, &mut out)?;
        }
        return Ok(out);
    }
    let out = Vec::with_capacity(payload_size(batches) + 512 * batches.len());
    encode_batch_ipc(first, batches, out)
}

/// [`encode_batch`] by arrow-ipc's encoder (any schema).
fn encode_batch_ipc(first: &RecordBatch, batches: &[RecordBatch], mut out: Vec<u8>) -> Result<Vec<u8>, ArrowError> {
    // arrow-ipc's stream encoder writes each buffer once, straight from the arrays (no
    // intermediate body copy); its first message is the schema, which the reader already has,
    // so it is skipped. One encoder per payload: a dictionary goes once per payload, and the
    // payload decodes on its own.
    let mut encoder = StreamEncoder::try_new(&first.schema())?;
    let mut skip: Option<usize> = None;
    for b in batches {
        for buf in encoder.encode(b)? {
            let bytes = buf.as_slice();
            let at = match skip {
                None => {
                    // The schema message: continuation, length, flatbuffer (no body).
                    let len = bytes.get(4..8).map(|l| i32::from_le_bytes([l[0], l[1], l[2], l[3]])).unwrap_or(0);
                    let total = 8 + usize::try_from(len).map_err(|_| ipc_err("bad schema message"))?;
                    skip = Some(total.saturating_sub(bytes.len()));
                    total.min(bytes.len())
                }
                Some(0) => 0,
                Some(n) => {
                    let here = n.min(bytes.len());
                    skip = Some(n - here);
                    here
                }
            };
            out.extend_from_slice(&bytes[at..]);
        }
    }
    Ok(out)
}

/// Splits `buf` into its encapsulated messages, in order: each message's flatbuffer, read (and
/// verified, unless `from_host`) once, and its body, zero-copy.
fn messages(buf: &Buffer, from_host: bool) -> Result<Vec<(arrow_ipc::Message<'_>, Buffer)>, ArrowError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some((message, body, end)) = message_at(buf, pos, from_host)? {
        out.push((message, body));
        pos = end;
    }
    Ok(out)
}

/// The message at byte `pos` of `buf`, its body and where the next one starts (`None`: the end,
/// or the end-of-stream marker).
fn message_at(
    buf: &Buffer,
    pos: usize,
    from_host: bool,
) -> Result<Option<(arrow_ipc::Message<'_>, Buffer, usize)>, ArrowError> {
    let bytes = buf.as_slice();
    if pos >= bytes.len() {
        return Ok(None);
    }
    let rest = &bytes[pos..];
    let (len_at, skip) = if rest.len() >= 4 && rest[..4] == CONTINUATION { (4, 8) } else { (0, 4) };
    if rest.len() < len_at + 4 {
        return Err(ipc_err(format!("truncated message header at byte {pos}")));
    }
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&rest[len_at..len_at + 4]);
    let meta_len = i32::from_le_bytes(len_bytes);
    if meta_len == 0 {
        return Ok(None); // end-of-stream marker
    }
    let meta_len = usize::try_from(meta_len).map_err(|_| ipc_err(format!("negative message length at byte {pos}")))?;
    let meta_start = pos + skip;
    let meta_end = meta_start
        .checked_add(meta_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| ipc_err(format!("message at byte {pos} claims {meta_len} bytes of metadata beyond the end")))?;
    let meta = &bytes[meta_start..meta_end];
    let message = match from_host {
        // SAFETY: a plugin reading what the host encoded: flatbuffers the host's encoder built
        // (the same trust as `read_from_host`; any harm would stay in the plugin's sandbox).
        // Verifying them was a fifth of a small call's guest-side decode.
        #[allow(unsafe_code, reason = "the host's own messages, read in the sandbox")]
        true => unsafe { arrow_ipc::root_as_message_unchecked(meta) },
        false => arrow_ipc::root_as_message(meta)
            .map_err(|e| ipc_err(format!("invalid message flatbuffer at byte {pos}: {e}")))?,
    };
    let body_len =
        usize::try_from(message.bodyLength()).map_err(|_| ipc_err(format!("negative body length at byte {pos}")))?;
    let body_end = meta_end
        .checked_add(body_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| ipc_err(format!("message at byte {pos} claims a {body_len}-byte body beyond the end")))?;
    Ok(Some((message, buf.slice_with_length(meta_end, body_len), body_end)))
}

/// Every buffer a record batch message names must lie inside its body.
fn check_buffers(b: &arrow_ipc::RecordBatch<'_>, body: usize) -> Result<(), ArrowError> {
    for buf in b.buffers().into_iter().flatten() {
        let (offset, len) = (buf.offset(), buf.length());
        let end = offset.checked_add(len);
        if offset < 0 || len < 0 || end.is_none_or(|e| e as u64 > body as u64) {
            return Err(ipc_err(format!("a buffer at {offset}+{len} lies outside the {body}-byte body")));
        }
    }
    Ok(())
}

/// Decodes an encapsulated IPC schema message (0.2.0).
pub fn decode_schema(bytes: Vec<u8>) -> Result<SchemaRef, ArrowError> {
    guarded(|| decode_schema_unguarded(bytes))
}

fn decode_schema_unguarded(bytes: Vec<u8>) -> Result<SchemaRef, ArrowError> {
    let buf = Buffer::from_vec(bytes);
    let msgs = messages(&buf, false)?;
    let [(message, _)] = msgs.as_slice() else {
        return Err(ipc_err(format!("expected one schema message, got {} messages", msgs.len())));
    };
    let ipc_schema = message.header_as_schema().ok_or_else(|| ipc_err("the message is not a schema"))?;
    Ok(Arc::new(arrow_ipc::convert::fb_to_schema(ipc_schema)))
}

/// Reads a record batch the host sent to a plugin, without validating its arrays again (for
/// schemas the flat path does not take; a flat batch takes `flat::decode` with `trusted`).
///
/// Only a plugin's bindings (on Wasm) decode this way, and only the input of a call
/// ([`decode_batch_from_host`]; [`decode_batch`] always validates): it comes from the host, which encoded
/// arrays it had built and validated itself, and re-checking every string's UTF-8 and offsets
/// was the largest cost of a small call. Were the bytes ever invalid, the harm would stay
/// inside the plugin's own sandboxed memory. The host always validates what plugins return.
#[allow(unsafe_code, reason = "skipping arrow's validation of data the trusted host produced")]
fn read_from_host(
    body: &Buffer,
    b: arrow_ipc::RecordBatch<'_>,
    schema: &SchemaRef,
    dictionaries: &HashMap<i64, ArrayRef>,
    version: &arrow_ipc::MetadataVersion,
) -> Result<RecordBatch, ArrowError> {
    let mut skip = arrow_data::UnsafeFlag::new();
    // SAFETY: the payload is the host's encoding of valid arrays (see above).
    unsafe { skip.set(true) };
    arrow_ipc::reader::RecordBatchDecoder::try_new(body, b, schema.clone(), dictionaries, version)?
        .with_skip_validation(skip)
        .read_record_batch()
}

/// Decodes the record batches of a batch payload (0.2.0) against `schema`, validating them.
pub fn decode_batch(schema: &SchemaRef, bytes: Vec<u8>) -> Result<Vec<RecordBatch>, ArrowError> {
    guarded(|| decode_batch_unguarded(schema, bytes, false))
}

/// [`decode_batch`] for the payload the host passed to a plugin call: on Wasm, without
/// re-validating the arrays (see `read_from_host`); natively (a plugin's own tests), validated.
#[cfg(any(feature = "bindings", test))]
pub(crate) fn decode_batch_from_host(schema: &SchemaRef, bytes: Vec<u8>) -> Result<Vec<RecordBatch>, ArrowError> {
    guarded(|| decode_batch_unguarded(schema, bytes, cfg!(target_arch = "wasm32")))
}

fn decode_batch_unguarded(schema: &SchemaRef, bytes: Vec<u8>, from_host: bool) -> Result<Vec<RecordBatch>, ArrowError> {
    let buf = Buffer::from_vec(bytes);
    let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
    let mut out = Vec::new();
    let flat = flat::is_flat(schema);
    for (message, body) in messages(&buf, from_host)? {
        let version = message.version();
        match message.header_type() {
            arrow_ipc::MessageHeader::DictionaryBatch => {
                let d = message.header_as_dictionary_batch().ok_or_else(|| ipc_err("bad dictionary batch"))?;
                arrow_ipc::reader::read_dictionary(&body, d, schema, &mut dictionaries, &version)?;
            }
            arrow_ipc::MessageHeader::RecordBatch => {
                let b = message.header_as_record_batch().ok_or_else(|| ipc_err("bad record batch"))?;
                if b.compression().is_some() {
                    return Err(ipc_err("compressed IPC buffers are refused at the plugin boundary"));
                }
                check_buffers(&b, body.len())?;
                out.push(if flat {
                    flat::decode(schema, b, &body, from_host)?
                } else if from_host {
                    read_from_host(&body, b, schema, &dictionaries, &version)?
                } else {
                    arrow_ipc::reader::read_record_batch(&body, b, schema.clone(), &dictionaries, None, &version)?
                });
            }
            arrow_ipc::MessageHeader::Schema => {
                return Err(ipc_err("a batch payload must not carry a schema message (the schema crossed once)"));
            }
            other => return Err(ipc_err(format!("unexpected IPC message {other:?} in a batch payload"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{DictionaryArray, Int64Array, StringArray, types::Int32Type};
    use arrow_schema::{DataType, Field};

    fn sample() -> RecordBatch {
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a", "c"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])),
                Arc::new(StringArray::from(vec![Some("x"), Some("yy"), None, Some("zzz")])),
                Arc::new(dict),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn messages_round_trip_with_dictionaries_and_slices() {
        let b = sample();
        let schema = decode_schema(encode_schema(&b.schema())).expect("schema");
        assert_eq!(schema.fields(), b.schema().fields());
        let bytes = encode_batch(&[b.clone(), b.slice(1, 2)]).expect("encode");
        let back = decode_batch(&schema, bytes).expect("decode");
        assert_eq!(back, vec![b.clone(), b.slice(1, 2)]);
        assert!(decode_batch(&schema, Vec::new()).expect("empty").is_empty());
        // A schema followed by a batch is a valid IPC stream.
        let mut stream = encode_schema(&b.schema());
        stream.extend(encode_batch(std::slice::from_ref(&b)).expect("encode"));
        let (_, batches) = decode_stream(stream).expect("a stream");
        assert_eq!(batches, vec![b]);
    }

    /// Every flat type, with nulls, as a batch and two slices of it (nonzero offsets, bit
    /// offsets that are not byte-aligned).
    fn flat_samples() -> Vec<RecordBatch> {
        use arrow_array::{BinaryArray, BooleanArray, Float64Array, LargeStringArray, TimestampMillisecondArray};
        let n = 37;
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("l", DataType::LargeUtf8, true),
            Field::new("x", DataType::Binary, true),
            Field::new("t", DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into())), true),
        ]));
        let some = |i: usize| i % 3 != 1;
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(Float64Array::from_iter((0..n).map(|i| some(i).then_some(i as f64 / 3.0)))),
                Arc::new(BooleanArray::from_iter((0..n).map(|i| some(i).then_some(i % 2 == 0)))),
                Arc::new(StringArray::from_iter((0..n).map(|i| some(i).then(|| "é".repeat(i % 4) + "x")))),
                Arc::new(LargeStringArray::from_iter((0..n).map(|i| (i % 5 != 0).then(|| format!("{i}"))))),
                Arc::new(BinaryArray::from_iter((0..n).map(|i| some(i).then(|| vec![i as u8; i % 3])))),
                Arc::new(
                    TimestampMillisecondArray::from_iter((0..n).map(|i| some(i).then_some(i as i64 * 1000)))
                        .with_timezone("UTC"),
                ),
            ],
        )
        .expect("batch");
        vec![b.clone(), b.slice(3, 20), b.slice(13, 0)]
    }

    #[test]
    fn flat_batches_match_arrow_ipc_both_ways() {
        let samples = flat_samples();
        let schema = samples[0].schema();
        assert!(flat::is_flat(&schema));
        // Ours, read by arrow-ipc's stream reader: the same batches.
        let mut stream = encode_schema(&schema);
        stream.extend(encode_batch(&samples).expect("encode"));
        let (_, theirs) = decode_stream(stream).expect("arrow-ipc reads the fast path's messages");
        assert_eq!(theirs, samples);
        // arrow-ipc's, read by ours: the same batches.
        let ipc = encode_batch_ipc(&samples[0], &samples, Vec::new()).expect("arrow-ipc encodes");
        let ours = decode_batch_unguarded(&schema, ipc, false).expect("the fast path reads arrow-ipc's messages");
        assert_eq!(ours, samples);
        // And ours round trip.
        let back = decode_batch_unguarded(&schema, encode_batch(&samples).expect("encode"), false).expect("decode");
        assert_eq!(back, samples);
        // A plugin's unvalidated reads of what the host sent (arrow-ipc's, and the fast path's
        // as a plugin on Wasm reads it): the same batches.
        let buf = Buffer::from_vec(encode_batch(&samples).expect("encode"));
        let mut trusted = Vec::new();
        for (m, body) in messages(&buf, false).expect("messages") {
            let b = m.header_as_record_batch().expect("a record batch");
            trusted.push(read_from_host(&body, b, &schema, &HashMap::new(), &m.version()).expect("read"));
        }
        assert_eq!(trusted, samples);
        let from_host = decode_batch_unguarded(&schema, encode_batch(&samples).expect("encode"), true).expect("read");
        assert_eq!(from_host, samples);
    }

    #[test]
    fn flat_decoding_refuses_damage_without_panicking() {
        let samples = flat_samples();
        let schema = samples[0].schema();
        let bytes = encode_batch(&samples[..1]).expect("encode");
        // Unguarded: a panic here fails the test.
        for cut in 0..bytes.len() {
            let _ = decode_batch_unguarded(&schema, bytes[..cut].to_vec(), false);
        }
        let mut accepted_changes = 0;
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = bytes.clone();
                m[i] ^= flip;
                if let Ok(got) = decode_batch_unguarded(&schema, m, false) {
                    // Whatever is accepted is a valid batch of the schema.
                    for b in &got {
                        for c in b.columns() {
                            c.to_data().validate_full().expect("accepted data is valid");
                        }
                    }
                    accepted_changes += 1;
                }
            }
        }
        assert!(accepted_changes > 0, "some value bytes can change and stay valid");
        // Specific damage: invalid UTF-8 in a string, decreasing offsets, a wrong null count.
        let s = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let good =
            RecordBatch::try_new(s.clone(), vec![Arc::new(StringArray::from(vec![Some("ab"), None, Some("c")]))])
                .expect("batch");
        let bytes = encode_batch(&[good]).expect("encode");
        let at = bytes.windows(3).position(|w| w == b"abc").expect("values in the body");
        let mut bad = bytes.clone();
        bad[at] = 0xc3; // a lone lead byte
        let e = decode_batch_unguarded(&s, bad, false).expect_err("invalid UTF-8");
        assert!(e.to_string().contains("column `s`"), "{e}");
        // Valid UTF-8 ("éé" and "x"), but the first value's end moved into the middle of an
        // "é": each value would be invalid, though the whole buffer is not.
        let good = RecordBatch::try_new(s.clone(), vec![Arc::new(StringArray::from(vec!["éé", "x"]))]).expect("batch");
        let bytes = encode_batch(&[good]).expect("encode");
        let mut bad = bytes.clone();
        let at = bytes.windows(12).position(|w| w == [0, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]).expect("the offsets");
        bad[at + 4] = 3;
        let e = decode_batch_unguarded(&s, bad, false).expect_err("an offset inside a character");
        assert!(e.to_string().contains("splits a UTF-8 character"), "{e}");
        // Offsets past the end of the values.
        let mut beyond = bytes.clone();
        beyond[at + 8] = 200;
        let e = decode_batch_unguarded(&s, beyond, false).expect_err("offsets beyond the values");
        assert!(e.to_string().contains("offsets reach byte 200"), "{e}");
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let b = sample();
        let schema = b.schema();
        let bytes = encode_batch(&[b]).expect("encode");
        for cut in 0..bytes.len() {
            let _ = decode_batch(&schema, bytes[..cut].to_vec());
        }
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x5a;
            let _ = decode_batch(&schema, m);
        }
        assert!(decode_batch(&schema, vec![0xff, 0xff, 0xff, 0xff, 0x40, 0, 0, 0]).is_err());
        assert!(decode_schema(vec![1, 2, 3]).is_err());
    }
}

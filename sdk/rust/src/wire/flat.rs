//! The fast path of the batch codec for flat schemas: every column a fixed-width primitive,
//! a boolean, or a UTF-8 / binary column with 32- or 64-bit offsets (what most plugins
//! exchange). It writes and reads the same Arrow IPC record batch messages arrow-ipc does,
//! with less work per call:
//!
//! - encoding builds one flatbuffer (a reused builder) and copies each buffer once into the
//!   payload (arrow-ipc also encodes a schema per encoder and allocates per buffer);
//! - decoding checks what arrow's constructors check — offsets in bounds and never
//!   decreasing, UTF-8 with every offset at a character boundary, bitmap lengths, null
//!   counts — in one pass each (an ASCII values buffer passes the UTF-8 checks at once), where
//!   `try_new` loops over the offsets twice more and `ArrayData::validate_full` is slower
//!   still; it never trusts the message either. A plugin reading the host's input (`trusted`)
//!   skips the order of the offsets and UTF-8, never the buffers' bounds (its message
//!   flatbuffer is not verified either: see `wire::message_at`).
//!
//! Any other schema (nested, dictionary, view, union, ...) takes arrow-ipc's path.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{ByteArrayType, GenericBinaryType, GenericStringType};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, GenericByteArray, OffsetSizeTrait, PrimitiveArray, RecordBatch,
    RecordBatchOptions, downcast_primitive,
};
use arrow_buffer::{ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

use super::{ipc_err, write_header};

/// Whether the fast path handles a column of this type.
fn flat_type(t: &DataType) -> bool {
    t.primitive_width().is_some()
        || matches!(
            t,
            DataType::Boolean | DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary
        )
}

/// Whether every column of `schema` takes the fast path.
pub(super) fn is_flat(schema: &Schema) -> bool {
    schema.fields().iter().all(|f| flat_type(f.data_type()))
}

/// Body buffers start on 8-byte boundaries (the IPC format's minimum).
const ALIGN: usize = 8;

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A string or binary column's values (the range its offsets span) and offsets (starting at 0),
/// as the body parts `encode` writes.
fn byte_buffers<T: ByteArrayType>(
    a: Option<&GenericByteArray<T>>,
) -> Result<(Option<Buffer>, Option<Buffer>), ArrowError> {
    let a = a.ok_or_else(|| ipc_err("a column does not match its data type"))?;
    let offs = a.offsets();
    let (first, last) = (offs[0], offs[offs.len() - 1]);
    let offsets = match first.as_usize() {
        0 => offs.inner().inner().clone(),
        _ => Buffer::from_vec(offs.iter().map(|o| *o - first).collect::<Vec<T::Offset>>()),
    };
    Ok((Some(a.values().slice_with_length(first.as_usize(), (last - first).as_usize())), Some(offsets)))
}

/// A fixed-width column's values (exactly its rows').
macro_rules! primitive_values {
    ($t:ty, $col:expr) => {
        $col.as_primitive_opt::<$t>().map(|a| a.values().inner().clone())
    };
}

thread_local! {
    /// The message flatbuffer's builder, reused (its buffers stay allocated between calls).
    static BUILDER: std::cell::RefCell<flatbuffers::FlatBufferBuilder<'static>> =
        std::cell::RefCell::new(flatbuffers::FlatBufferBuilder::with_capacity(1024));
}

/// The bytes of a part of a message body (`None`: no bytes).
fn part_bytes(part: &Option<Buffer>) -> &[u8] {
    part.as_ref().map_or(&[], |b| b.as_slice())
}

/// Appends one record batch message for `batch` (whose schema is flat) to `out`.
pub(super) fn encode(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let columns = batch.columns();
    // The buffers to write, in order, each with its place in the body; `None` is an empty one
    // (no validity bitmap). Read from the arrays themselves: `to_data` would allocate.
    let mut parts: Vec<(Option<Buffer>, usize)> = Vec::with_capacity(columns.len() * 3);
    let mut at = 0usize;
    let mut push = |part: Option<Buffer>| {
        let n = part_bytes(&part).len();
        parts.push((part, at));
        at += padded(n);
    };
    for col in columns {
        push(match col.nulls() {
            Some(n) if n.null_count() > 0 => Some(n.inner().sliced()),
            _ => None,
        });
        let any = col.as_any();
        let (values, offsets) = match col.data_type() {
            DataType::Boolean => (col.as_boolean_opt().map(|b| b.values().sliced()), None),
            DataType::Utf8 => byte_buffers::<GenericStringType<i32>>(any.downcast_ref())?,
            DataType::LargeUtf8 => byte_buffers::<GenericStringType<i64>>(any.downcast_ref())?,
            DataType::Binary => byte_buffers::<GenericBinaryType<i32>>(any.downcast_ref())?,
            DataType::LargeBinary => byte_buffers::<GenericBinaryType<i64>>(any.downcast_ref())?,
            t => (downcast_primitive! { t => (primitive_values, col), _ => None }, None),
        };
        let values = values.ok_or_else(|| ipc_err(format!("{} is not a flat type", col.data_type())))?;
        if offsets.is_some() {
            push(offsets);
        }
        push(Some(values));
    }
    let nodes = columns.iter().map(|c| arrow_ipc::FieldNode::new(c.len() as i64, c.null_count() as i64));
    let specs = parts.iter().map(|(p, at)| arrow_ipc::Buffer::new(*at as i64, part_bytes(p).len() as i64));
    BUILDER.with_borrow_mut(|fbb| {
        fbb.reset();
        let nodes = fbb.create_vector_from_iter(nodes);
        let buffers = fbb.create_vector_from_iter(specs);
        let mut rb = arrow_ipc::RecordBatchBuilder::new(fbb);
        rb.add_length(batch.num_rows() as i64);
        rb.add_nodes(nodes);
        rb.add_buffers(buffers);
        let header = rb.finish().as_union_value();
        let mut m = arrow_ipc::MessageBuilder::new(fbb);
        m.add_version(arrow_ipc::MetadataVersion::V5);
        m.add_header_type(arrow_ipc::MessageHeader::RecordBatch);
        m.add_bodyLength(at as i64);
        m.add_header(header);
        let m = m.finish();
        fbb.finish(m, None);
        out.reserve(fbb.finished_data().len() + 16 + at);
        write_header(out, fbb.finished_data());
    });
    for (p, _) in &parts {
        let b = part_bytes(p);
        out.extend_from_slice(b);
        out.resize(out.len() + padded(b.len()) - b.len(), 0);
    }
    Ok(())
}

/// `buf`, copied if it does not start on an `align`-byte boundary (array constructors need
/// their values aligned to their type).
fn aligned(buf: Buffer, align: usize) -> Buffer {
    if (buf.as_ptr() as usize).is_multiple_of(align) { buf } else { Buffer::from_slice_ref(buf.as_slice()) }
}

/// The `len + 1` offsets at the start of `buf`, checked: non-negative and never decreasing
/// (`trusted`: the first only).
fn offsets<O: OffsetSizeTrait>(
    buf: Buffer,
    len: usize,
    column: &str,
    trusted: bool,
) -> Result<ScalarBuffer<O>, ArrowError> {
    let width = std::mem::size_of::<O>();
    let need = len
        .checked_add(1)
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| ipc_err(format!("column `{column}`: too many rows")))?;
    if buf.len() < need {
        if len == 0 {
            return Ok(ScalarBuffer::from(vec![O::usize_as(0)]));
        }
        return Err(ipc_err(format!("column `{column}`: {} bytes of offsets for {len} rows", buf.len())));
    }
    let s = ScalarBuffer::<O>::new(aligned(buf.slice_with_length(0, need), width), 0, len + 1);
    // Branch-free, so it vectorises.
    let increasing = trusted || s.windows(2).fold(true, |ok, w| ok & (w[0] <= w[1]));
    if s[0] < O::usize_as(0) || !increasing {
        return Err(ipc_err(format!("column `{column}`: offsets are negative or decreasing")));
    }
    Ok(s)
}

/// Checks that `values` is UTF-8 and every offset falls on a character boundary: at once when
/// it is ASCII (the common case, checked a word at a time), else byte by byte.
fn check_utf8<O: OffsetSizeTrait>(offsets: &[O], values: &[u8], column: &str) -> Result<(), ArrowError> {
    if values.is_ascii() {
        return Ok(());
    }
    std::str::from_utf8(values).map_err(|e| ipc_err(format!("column `{column}`: {e}")))?;
    // A continuation byte is 0b10xx_xxxx; the end of the values is a boundary.
    let on_boundaries =
        offsets.iter().fold(true, |ok, o| ok & values.get(o.as_usize()).is_none_or(|b| (*b as i8) >= -0x40));
    match on_boundaries {
        true => Ok(()),
        false => Err(ipc_err(format!("column `{column}`: an offset splits a UTF-8 character"))),
    }
}

fn bytes<T: ByteArrayType>(
    offs: Buffer,
    values: Buffer,
    len: usize,
    nulls: Option<NullBuffer>,
    column: &str,
    trusted: bool,
) -> Result<ArrayRef, ArrowError> {
    let offsets = offsets::<T::Offset>(offs, len, column, trusted)?;
    // Compared in the offsets' own type (a 64-bit offset must not be truncated on a 32-bit
    // target): then every offset, never above the last, fits in `usize`.
    let last = offsets.last().copied().unwrap_or_default();
    if T::Offset::from_usize(values.len()).is_some_and(|n| last > n) {
        return Err(ipc_err(format!(
            "column `{column}`: offsets reach byte {last:?} of {} bytes of values",
            values.len()
        )));
    }
    let end = last.as_usize();
    let values = values.slice_with_length(0, end);
    if nulls.as_ref().is_some_and(|n| n.len() != len) {
        return Err(ipc_err(format!("column `{column}`: a validity bitmap of the wrong length")));
    }
    if matches!(T::DATA_TYPE, DataType::Utf8 | DataType::LargeUtf8) && !trusted {
        check_utf8(&offsets, values.as_slice(), column)?;
    }
    // SAFETY: what `OffsetBuffer::new` and `try_new` check, checked above, faster: the offsets
    // start at 0 or more and never decrease (`offsets`), end within `values`, the bitmap has a
    // bit per row, and for strings the values are UTF-8 with every offset on a character
    // boundary. Unless `trusted`: a plugin reading the host's own encoding of valid arrays,
    // where any harm would stay in the plugin's sandbox (see `wire::read_from_host`).
    #[allow(unsafe_code, reason = "the array's invariants are checked above")]
    let a = unsafe { GenericByteArray::<T>::new_unchecked(OffsetBuffer::new_unchecked(offsets), values, nulls) };
    Ok(Arc::new(a))
}

/// A fixed-width column of type `$t` over `values`, built straight from its buffer (copied
/// first if it is not aligned for the type).
macro_rules! primitive_array {
    ($t:ty, $values:expr, $rows:expr, $nulls:expr, $data_type:expr) => {{
        let values = aligned($values, std::mem::align_of::<<$t as ArrowPrimitiveType>::Native>());
        let a = PrimitiveArray::<$t>::try_new(ScalarBuffer::new(values, 0, $rows), $nulls)?;
        Arc::new(a.with_data_type($data_type.clone())) as ArrayRef
    }};
}

/// A fixed-width column of `rows` values (`values` holds exactly their bytes): without an
/// `ArrayData`, which would allocate and check the buffer again.
fn primitive(t: &DataType, values: Buffer, rows: usize, nulls: Option<NullBuffer>) -> Result<ArrayRef, ArrowError> {
    Ok(downcast_primitive! {
        t => (primitive_array, values, rows, nulls, t),
        // Only invalid types (say `Time32(Microsecond)`) have a width and no array type.
        _ => return Err(ipc_err(format!("{t} is not a valid column type"))),
    })
}

/// Decodes one record batch message whose schema is flat (see [`is_flat`]), validating it;
/// `trusted` (a plugin reading what the host sent) skips the order of string offsets and UTF-8.
pub(super) fn decode(
    schema: &SchemaRef,
    b: arrow_ipc::RecordBatch<'_>,
    body: &Buffer,
    trusted: bool,
) -> Result<RecordBatch, ArrowError> {
    let rows = usize::try_from(b.length()).map_err(|_| ipc_err("negative row count"))?;
    let nodes = b.nodes().ok_or_else(|| ipc_err("a record batch without field nodes"))?;
    let specs = b.buffers().ok_or_else(|| ipc_err("a record batch without buffers"))?;
    let fields = schema.fields();
    if nodes.len() != fields.len() {
        return Err(ipc_err(format!("{} field nodes for {} columns", nodes.len(), fields.len())));
    }
    if b.variadicBufferCounts().is_some_and(|v| !v.is_empty()) {
        return Err(ipc_err("variadic buffer counts in a batch without view columns"));
    }
    let mut next = 0usize;
    let mut buffer = || -> Result<Buffer, ArrowError> {
        if next >= specs.len() {
            return Err(ipc_err(format!(
                "the record batch names {} buffers, fewer than its columns need",
                specs.len()
            )));
        }
        let s = specs.get(next);
        next += 1;
        let (at, len) = (usize::try_from(s.offset()), usize::try_from(s.length()));
        match (at, len) {
            (Ok(at), Ok(len)) if at.checked_add(len).is_some_and(|e| e <= body.len()) => {
                Ok(body.slice_with_length(at, len))
            }
            _ => Err(ipc_err(format!(
                "a buffer at {}+{} lies outside the {}-byte body",
                s.offset(),
                s.length(),
                body.len()
            ))),
        }
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
    for (i, field) in fields.iter().enumerate() {
        let name = field.name();
        let node = nodes.get(i);
        if usize::try_from(node.length()).ok() != Some(rows) {
            return Err(ipc_err(format!("column `{name}` has {} rows in a batch of {rows}", node.length())));
        }
        let validity = buffer()?;
        let nulls = match node.null_count() {
            0 => None,
            n => {
                if validity.len().saturating_mul(8) < rows {
                    return Err(ipc_err(format!("column `{name}`: a validity bitmap too short for {rows} rows")));
                }
                let nb = NullBuffer::new(BooleanBuffer::new(validity, 0, rows));
                if i64::try_from(nb.null_count()).ok() != Some(n) {
                    return Err(ipc_err(format!(
                        "column `{name}` declares {n} nulls, its bitmap has {}",
                        nb.null_count()
                    )));
                }
                Some(nb)
            }
        };
        let col: ArrayRef = match field.data_type() {
            DataType::Boolean => {
                let v = buffer()?;
                if v.len().saturating_mul(8) < rows {
                    return Err(ipc_err(format!("column `{name}`: a boolean buffer too short for {rows} rows")));
                }
                Arc::new(BooleanArray::new(BooleanBuffer::new(v, 0, rows), nulls))
            }
            DataType::Utf8 => bytes::<GenericStringType<i32>>(buffer()?, buffer()?, rows, nulls, name, trusted)?,
            DataType::LargeUtf8 => bytes::<GenericStringType<i64>>(buffer()?, buffer()?, rows, nulls, name, trusted)?,
            DataType::Binary => bytes::<GenericBinaryType<i32>>(buffer()?, buffer()?, rows, nulls, name, trusted)?,
            DataType::LargeBinary => bytes::<GenericBinaryType<i64>>(buffer()?, buffer()?, rows, nulls, name, trusted)?,
            t => {
                let w = t.primitive_width().ok_or_else(|| ipc_err(format!("column `{name}`: {t} is not flat")))?;
                let v = buffer()?;
                let need = rows.checked_mul(w).filter(|n| *n <= v.len()).ok_or_else(|| {
                    ipc_err(format!("column `{name}`: {} bytes of values for {rows} rows of {t}", v.len()))
                })?;
                primitive(t, v.slice_with_length(0, need), rows, nulls)
                    .map_err(|e| ipc_err(format!("column `{name}`: {e}")))?
            }
        };
        columns.push(col);
    }
    RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(rows)))
}

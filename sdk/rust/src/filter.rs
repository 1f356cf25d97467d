//! Filtering a record batch by a boolean mask, tuned for plugins.
//!
//! Arrow's `filter_record_batch` copies each kept string with a copy of that string's length.
//! Natively that is a short inlined `memcpy`; compiled to Wasm it is a `memory.copy`
//! instruction, which the runtime carries out as a call per row, and it makes a filter over
//! short strings twice as slow in a plugin as natively. [`filter_record_batch`] moves strings
//! and binaries of up to 16 bytes as one fixed 16-byte block (plain loads and stores in Wasm)
//! and builds the output without validating it again (it is made of whole values of a valid
//! array). The kept rows' indices are collected once per batch and shared by every string,
//! binary and primitive column (walking a bitmap is what costs most in Wasm); other columns
//! go through arrow's kernel.

use std::sync::Arc;

use arrow_array::types::{ByteArrayType, GenericBinaryType, GenericStringType};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, GenericByteArray, PrimitiveArray, RecordBatch,
    RecordBatchOptions, downcast_primitive_array,
};
use arrow_buffer::{ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType};
use arrow_select::filter::{FilterBuilder, FilterPredicate};

/// Values of at most this many bytes are copied as one block.
const BLOCK: usize = 16;

/// The rows of `batch` where `predicate` is true (a null counts as false), as arrow's
/// `filter_record_batch` returns them.
pub fn filter_record_batch(batch: &RecordBatch, predicate: &BooleanArray) -> Result<RecordBatch, ArrowError> {
    if predicate.len() != batch.num_rows() {
        return Err(ArrowError::InvalidArgumentError(format!(
            "a filter of {} rows for a batch of {} rows",
            predicate.len(),
            batch.num_rows()
        )));
    }
    let mask = match predicate.nulls() {
        Some(n) if n.null_count() > 0 => predicate.values() & n.inner(),
        _ => predicate.values().clone(),
    };
    let kept = mask.count_set_bits();
    if kept == batch.num_rows() {
        return Ok(batch.clone());
    }
    let indices = kept_indices(&mask, kept);
    let mut predicate: Option<FilterPredicate> = None;
    let mut columns = Vec::with_capacity(batch.num_columns());
    for column in batch.columns() {
        let array: &dyn Array = column.as_ref();
        let any = array.as_any();
        let out: ArrayRef = downcast_primitive_array!(
            array => primitive(array, &indices),
            DataType::Utf8 => bytes::<GenericStringType<i32>>(any.downcast_ref(), &indices)?,
            DataType::LargeUtf8 => bytes::<GenericStringType<i64>>(any.downcast_ref(), &indices)?,
            DataType::Binary => bytes::<GenericBinaryType<i32>>(any.downcast_ref(), &indices)?,
            DataType::LargeBinary => bytes::<GenericBinaryType<i64>>(any.downcast_ref(), &indices)?,
            _ => predicate
                .get_or_insert_with(|| FilterBuilder::new(&BooleanArray::new(mask.clone(), None)).optimize().build())
                .filter(column)?,
        );
        columns.push(out);
    }
    RecordBatch::try_new_with_options(batch.schema(), columns, &RecordBatchOptions::new().with_row_count(Some(kept)))
}

/// The positions of the `kept` set bits of `mask`, in order (strictly increasing, as
/// `copy_kept` requires).
///
/// Written into place rather than pushed (in Wasm a `Vec` grown by `push` keeps its length in
/// linear memory and stores it every row): each 64-bit word of the mask fills the next slots,
/// as many as it has set bits, without a bounds check per slot, in a function of its own
/// (small enough for the runtime's compiler to keep its loop in registers).
///
/// It takes four bits a turn (and `primitive`'s gather eight values): the runtime checks the
/// call's deadline (an epoch check) at the head of every loop turn, which cost a filter plugin
/// 18% of its time at one value a turn.
#[inline(never)]
fn kept_indices(mask: &BooleanBuffer, kept: usize) -> Vec<usize> {
    let mut indices = vec![0usize; kept];
    let mut k = 0;
    for (n, mut word) in mask.inner().bit_chunks(mask.offset(), mask.len()).iter_padded().enumerate() {
        let base = n * 64;
        let ones = word.count_ones() as usize;
        // `kept` counts the same bits, so this holds (checked below).
        let Some(slots) = indices.get_mut(k..k + ones) else { break };
        k += ones;
        let mut fours = slots.chunks_exact_mut(4);
        for four in &mut fours {
            for slot in four {
                *slot = base + word.trailing_zeros() as usize;
                word &= word - 1;
            }
        }
        for slot in fours.into_remainder() {
            *slot = base + word.trailing_zeros() as usize;
            word &= word - 1;
        }
    }
    // Every slot filled, so the indices strictly increase (`copy_kept` relies on it).
    assert_eq!(k, kept, "the mask's set bits and their count disagree");
    indices
}

/// The validity of the kept rows, when one of them is null (as arrow's filter: `None` otherwise).
fn kept_nulls(nulls: Option<&NullBuffer>, indices: &[usize]) -> Option<NullBuffer> {
    let nulls = nulls.filter(|n| n.null_count() > 0)?;
    let kept = NullBuffer::new(BooleanBuffer::collect_bool(indices.len(), |k| nulls.is_valid(indices[k])));
    (kept.null_count() > 0).then_some(kept)
}

/// The kept values of a fixed-width column.
#[inline(never)]
fn primitive<T: ArrowPrimitiveType>(array: &PrimitiveArray<T>, indices: &[usize]) -> ArrayRef {
    let values = array.values();
    let mut kept = vec![T::Native::default(); indices.len()];
    // Eight a turn (see `kept_indices`).
    let (mut to, mut from) = (kept.chunks_exact_mut(8), indices.chunks_exact(8));
    for (to, from) in (&mut to).zip(&mut from) {
        for j in 0..8 {
            to[j] = values[from[j]];
        }
    }
    for (to, &i) in to.into_remainder().iter_mut().zip(from.remainder()) {
        *to = values[i];
    }
    let kept = ScalarBuffer::from(kept);
    // Same type (a timestamp keeps its time zone, a decimal its precision).
    Arc::new(
        PrimitiveArray::<T>::new(kept, kept_nulls(array.nulls(), indices)).with_data_type(array.data_type().clone()),
    )
}

/// The kept values of a string or binary column.
fn bytes<T: ByteArrayType>(array: Option<&GenericByteArray<T>>, indices: &[usize]) -> Result<ArrayRef, ArrowError> {
    let Some(array) = array else {
        return Err(ArrowError::InvalidArgumentError("a column does not match its data type".into()));
    };
    let nulls = kept_nulls(array.nulls(), indices);
    // SAFETY: `indices` comes from `kept_indices`, which makes it strictly increasing.
    #[allow(unsafe_code, reason = "see copy_kept")]
    let (offsets, values) = unsafe { copy_kept(array, indices) };
    // SAFETY: each output value is a whole value of `array` (valid: UTF-8 for strings), copied
    // in order at the offsets just computed, which start at 0, never decrease and end at the
    // length of `values`; `nulls`, when set, has one bit per kept row. (`OffsetBuffer::new`
    // would check the offsets again, a loop of a row a turn: 2% of a filter plugin's time.)
    #[allow(unsafe_code, reason = "the output is made of whole values of a valid array")]
    let out = unsafe {
        let offsets = OffsetBuffer::new_unchecked(ScalarBuffer::from(offsets));
        GenericByteArray::<T>::new_unchecked(offsets, Buffer::from_vec(values), nulls)
    };
    Ok(Arc::new(out))
}

/// The offsets (from 0) and concatenated bytes of the rows at `indices`, in one pass.
///
/// Without bounds checks, two rows a turn: in Wasm the checked loop kept its slices' lengths
/// and the write position in memory (too many live values for the runtime's registers) and
/// checked the deadline every row; it took 2.3x its native time, a third of a filter plugin's.
///
/// # Safety
///
/// `indices` must be strictly increasing (the last is checked against the array's length).
#[inline(never)]
#[allow(unsafe_code, reason = "an unchecked copy loop; its bounds are argued below")]
unsafe fn copy_kept<T: ByteArrayType>(array: &GenericByteArray<T>, indices: &[usize]) -> (Vec<T::Offset>, Vec<u8>) {
    let mut offsets = vec![T::Offset::usize_as(0); indices.len() + 1];
    let (Some(&first), Some(&last)) = (indices.first(), indices.last()) else {
        return (offsets, Vec::new());
    };
    assert!(last < array.len(), "a kept row past the end of the array");
    let (offs, src) = (array.value_offsets(), array.values().as_slice());
    // Room for the bytes from the first kept value to the end of the last (valid offsets never
    // decrease), and a block's overhang.
    let mut values = vec![0u8; offs[last + 1].as_usize() - offs[first].as_usize() + BLOCK];
    let (offs, src_len, src, dst) = (offs.as_ptr(), src.len(), src.as_ptr(), values.as_mut_ptr());
    let mut out = offsets.as_mut_ptr();
    let mut at = 0usize;
    // SAFETY: every index is at most `last` < len, so `i + 1` indexes the len + 1 offsets; a
    // valid array's offsets never decrease and end within its values, so `start..end` lies in
    // `src`, and a block is read only when `start + BLOCK` does too. The indices increase, so
    // the kept values total at most `offs[last + 1] - offs[first]` bytes and each write, a
    // block's overhang included, stays within `values`. `out` steps over `offsets[1..]`, one
    // slot per index.
    macro_rules! one {
        ($i:expr) => {{
            let i: usize = $i;
            let (start, end) = unsafe { ((*offs.add(i)).as_usize(), (*offs.add(i + 1)).as_usize()) };
            let len = end - start;
            unsafe {
                if len <= BLOCK && start + BLOCK <= src_len {
                    // A fixed-size copy: plain loads and stores, no call. (As a `copy` of
                    // `BLOCK` bytes, the compiler merged it with the other branch's into one
                    // copy of a variable length: a call again.)
                    let block = src.add(start).cast::<u128>().read_unaligned();
                    dst.add(at).cast::<u128>().write_unaligned(block);
                } else {
                    std::ptr::copy_nonoverlapping(src.add(start), dst.add(at), len);
                }
                at += len;
                out = out.add(1);
                *out = T::Offset::usize_as(at);
            }
        }};
    }
    let mut pairs = indices.chunks_exact(2);
    for pair in &mut pairs {
        one!(pair[0]);
        one!(pair[1]);
    }
    if let [i] = pairs.remainder() {
        one!(*i);
    }
    values.truncate(at);
    // A selective filter kept a small part of the room: give the rest back.
    if values.capacity() > 2 * at + 4096 {
        values.shrink_to_fit();
    }
    (offsets, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        BinaryArray, Decimal128Array, Float64Array, Int32Array, Int64Array, LargeStringArray, StringArray,
        TimestampMillisecondArray,
    };
    use arrow_schema::{Field, Schema, TimeUnit};

    #[test]
    fn matches_arrows_filter_on_strings_binaries_primitives_nulls_and_slices() -> Result<(), ArrowError> {
        let long = "a string longer than sixteen bytes, with ünïcödé";
        let words: Vec<Option<String>> = (0..300)
            .map(|i| match i % 7 {
                0 => None,
                1 => Some(long.to_string()),
                2 => Some(String::new()),
                _ => Some(format!("w{i}é")),
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("l", DataType::LargeUtf8, true),
            Field::new("b", DataType::Binary, true),
            Field::new("i", DataType::Int32, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())), true),
            Field::new("d", DataType::Decimal128(10, 2), false),
            Field::new("f", DataType::Float64, false),
            Field::new("flag", DataType::Boolean, true),
        ]));
        let maybe = |i: i64| (i % 5 != 0).then_some(i);
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..300)),
                Arc::new(words.iter().cloned().collect::<StringArray>()),
                Arc::new(words.iter().cloned().collect::<LargeStringArray>()),
                Arc::new(BinaryArray::from_iter(words.iter().map(|w| w.as_ref().map(|s| s.as_bytes())))),
                Arc::new(Int32Array::from_iter((0..300).map(|i| maybe(i).map(|v| v as i32)))),
                Arc::new(TimestampMillisecondArray::from_iter((0..300).map(maybe)).with_timezone("+02:00")),
                Arc::new(
                    Decimal128Array::from_iter_values((0..300).map(|i| i as i128 * 7))
                        .with_precision_and_scale(10, 2)?,
                ),
                Arc::new(Float64Array::from_iter_values((0..300).map(|i| i as f64 / 3.0))),
                Arc::new(BooleanArray::from_iter((0..300).map(|i| (i % 4 != 0).then_some(i % 3 == 0)))),
            ],
        )
        .expect("batch");
        // A slice (offsets not starting at 0), and a mask with nulls.
        let batch = batch.slice(5, 290);
        let masks = [
            BooleanArray::from_iter((0..290).map(|i| Some(i % 3 != 1))),
            BooleanArray::from_iter((0..290).map(|i| if i % 11 == 0 { None } else { Some(i % 2 == 0) })),
            BooleanArray::from(vec![false; 290]),
            BooleanArray::from(vec![true; 290]),
            // A mask that is itself a slice (its bits start mid-byte).
            BooleanArray::from_iter((0..300).map(|i| Some(i % 5 < 3))).slice(3, 290),
            // Only rows that are valid in every column: no validity bitmaps, as arrow's.
            BooleanArray::from_iter((0..290).map(|i| Some((i + 5) % 140 == 1))),
        ];
        for mask in masks {
            let want = arrow_select::filter::filter_record_batch(&batch, &mask).expect("arrow filters");
            let got = filter_record_batch(&batch, &mask).expect("filters");
            assert_eq!(got, want);
            for (g, w) in got.columns().iter().zip(want.columns()) {
                assert_eq!(g.nulls().is_some(), w.nulls().is_some(), "{:?}", g.data_type());
            }
            for c in got.columns() {
                c.to_data().validate_full().expect("a valid array");
            }
        }
        // Short values at the very end of the values buffer (no 16-byte block to read there),
        // long ones, and empty ones, kept in every combination.
        let tail = StringArray::from(vec!["x", "", "a value longer than sixteen bytes", "yz", "é"]);
        let tail = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)])),
            vec![Arc::new(tail)],
        )?;
        for bits in 0..32u32 {
            let mask = BooleanArray::from_iter((0..5).map(|i| Some(bits & (1 << i) != 0)));
            let want = arrow_select::filter::filter_record_batch(&tail, &mask)?;
            assert_eq!(filter_record_batch(&tail, &mask)?, want, "mask {bits:05b}");
        }
        let short = BooleanArray::from(vec![true; 3]);
        assert!(filter_record_batch(&batch, &short).is_err());
        Ok(())
    }
}

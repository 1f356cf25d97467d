//! Filtering a record batch by a boolean mask, tuned for plugins.
//!
//! Arrow's `filter_record_batch` copies each kept string with a copy of that string's length.
//! Natively that is a short inlined `memcpy`; compiled to Wasm it is a `memory.copy`
//! instruction, which the runtime carries out as a call per row, and it makes a filter over
//! short strings twice as slow in a plugin as natively. [`filter_record_batch`] moves strings
//! and binaries of up to 16 bytes as one fixed 16-byte block (plain loads and stores in Wasm)
//! and builds the output without validating it again (it is made of whole values of a valid
//! array). Other columns go through arrow's kernel.

use std::sync::Arc;

use arrow_array::types::{ByteArrayType, GenericBinaryType, GenericStringType};
use arrow_array::{Array, ArrayRef, BooleanArray, GenericByteArray, OffsetSizeTrait, RecordBatch, RecordBatchOptions};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
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
    let mut predicate: Option<FilterPredicate> = None;
    let mut by_arrow = |column: &ArrayRef| -> Result<ArrayRef, ArrowError> {
        let p = predicate
            .get_or_insert_with(|| FilterBuilder::new(&BooleanArray::new(mask.clone(), None)).optimize().build());
        p.filter(column)
    };
    let mut columns = Vec::with_capacity(batch.num_columns());
    for column in batch.columns() {
        let any = column.as_any();
        let out: ArrayRef = match column.data_type() {
            DataType::Utf8 => bytes::<GenericStringType<i32>>(any.downcast_ref(), &mask, kept, &mut by_arrow)?,
            DataType::LargeUtf8 => bytes::<GenericStringType<i64>>(any.downcast_ref(), &mask, kept, &mut by_arrow)?,
            DataType::Binary => bytes::<GenericBinaryType<i32>>(any.downcast_ref(), &mask, kept, &mut by_arrow)?,
            DataType::LargeBinary => bytes::<GenericBinaryType<i64>>(any.downcast_ref(), &mask, kept, &mut by_arrow)?,
            _ => by_arrow(column)?,
        };
        columns.push(out);
    }
    RecordBatch::try_new_with_options(batch.schema(), columns, &RecordBatchOptions::new().with_row_count(Some(kept)))
}

/// The kept values of a string or binary column.
fn bytes<T: ByteArrayType>(
    array: Option<&GenericByteArray<T>>,
    mask: &BooleanBuffer,
    kept: usize,
    by_arrow: &mut impl FnMut(&ArrayRef) -> Result<ArrayRef, ArrowError>,
) -> Result<ArrayRef, ArrowError> {
    let Some(array) = array else {
        return Err(ArrowError::InvalidArgumentError("a column does not match its data type".into()));
    };
    let nulls = match array.nulls() {
        Some(n) if n.null_count() > 0 => {
            let valid = by_arrow(&(Arc::new(BooleanArray::new(n.inner().clone(), None)) as ArrayRef))?;
            let valid = valid.as_any().downcast_ref::<BooleanArray>().map(|v| v.values().clone());
            valid.map(NullBuffer::new)
        }
        _ => None,
    };
    let (offsets, values) = copy_kept::<T::Offset>(array.value_offsets(), array.values().as_slice(), mask, kept);
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    // SAFETY: each output value is a whole value of `array` (valid: UTF-8 for strings), copied
    // in order at the offsets just computed, which start at 0, never decrease and end at the
    // length of `values`; `nulls`, when set, has one bit per kept row.
    #[allow(unsafe_code, reason = "the output is made of whole values of a valid array")]
    let out = unsafe { GenericByteArray::<T>::new_unchecked(offsets, Buffer::from_vec(values), nulls) };
    Ok(Arc::new(out))
}

/// The offsets (from 0) and concatenated bytes of the rows `mask` keeps.
fn copy_kept<O: OffsetSizeTrait>(offs: &[O], src: &[u8], mask: &BooleanBuffer, kept: usize) -> (Vec<O>, Vec<u8>) {
    let mut offsets = Vec::with_capacity(kept + 1);
    let mut total = 0usize;
    offsets.push(O::usize_as(0));
    for i in mask.set_indices() {
        total += (offs[i + 1] - offs[i]).as_usize();
        offsets.push(O::usize_as(total));
    }
    let mut values = vec![0u8; total + BLOCK];
    let mut at = 0usize;
    for i in mask.set_indices() {
        let (start, end) = (offs[i].as_usize(), offs[i + 1].as_usize());
        let len = end - start;
        if len <= BLOCK && start + BLOCK <= src.len() {
            // A fixed-size copy: plain loads and stores, no call.
            values[at..at + BLOCK].copy_from_slice(&src[start..start + BLOCK]);
        } else {
            values[at..at + len].copy_from_slice(&src[start..end]);
        }
        at += len;
    }
    values.truncate(total);
    (offsets, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BinaryArray, Int64Array, LargeStringArray, StringArray};
    use arrow_schema::{Field, Schema};

    #[test]
    fn matches_arrows_filter_on_strings_binaries_nulls_and_slices() {
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
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..300)),
                Arc::new(words.iter().cloned().collect::<StringArray>()),
                Arc::new(words.iter().cloned().collect::<LargeStringArray>()),
                Arc::new(BinaryArray::from_iter(words.iter().map(|w| w.as_ref().map(|s| s.as_bytes())))),
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
        ];
        for mask in masks {
            let want = arrow_select::filter::filter_record_batch(&batch, &mask).expect("arrow filters");
            let got = filter_record_batch(&batch, &mask).expect("filters");
            assert_eq!(got, want);
            for c in got.columns() {
                c.to_data().validate_full().expect("a valid array");
            }
        }
        let short = BooleanArray::from(vec![true; 3]);
        assert!(filter_record_batch(&batch, &short).is_err());
    }
}

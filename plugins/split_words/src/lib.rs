//! `split_words`: the word count's `explode(split(value, "\\s+"))` as a plugin.
//!
//! Reads the string column `column` (default `value`) and emits one row per word in a column
//! named `output` (default `word`). Words are separated by Unicode white space; empty tokens
//! are dropped. With `lowercase = true` words are lower-cased.

use std::sync::Arc;

use sluice_sdk::arrow_array::{Array, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use sluice_sdk::arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use sluice_sdk::arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sdk::{BatchContext, Config, Error, Transform, util};

struct SplitWords {
    column: String,
    schema: SchemaRef,
    lowercase: bool,
}

impl Transform for SplitWords {
    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["column", "output", "lowercase"])?;
        let lowercase = config.bool_or("lowercase", false)?;
        let output = config.str_or("output", "word")?;
        Ok(SplitWords {
            column: config.str_or("column", "value")?.to_string(),
            schema: util::schema(vec![Field::new(output, DataType::Utf8, false)]),
            lowercase,
        })
    }

    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error> {
        let idx = util::column_index(input, &self.column)?;
        match input.field(idx).data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(self.schema.clone()),
            other => Err(Error::InvalidInput(format!("column `{}` must be a string, found {other}", self.column))),
        }
    }

    fn process(&mut self, _ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        let idx = util::column_index(&input.schema(), &self.column)?;
        let col = input.column(idx);
        let mut words = Words {
            values: Vec::with_capacity(col.get_buffer_memory_size()),
            ends: Vec::with_capacity(col.len() * 8 + 1),
            lowercase: self.lowercase,
        };
        words.ends.push(0);
        if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            words.split_all(a.iter().flatten());
        } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
            words.split_all(a.iter().flatten());
        } else if let Some(a) = col.as_any().downcast_ref::<StringViewArray>() {
            words.split_all(a.iter().flatten());
        } else {
            return Err(Error::InvalidInput(format!("column `{}` must be a string", self.column)));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(words.finish()?)])?)
    }
}

/// The words of a call's lines, as a string array's bytes and offsets.
struct Words {
    values: Vec<u8>,
    /// Offsets: 0, then where each word ends in `values`.
    ends: Vec<i32>,
    lowercase: bool,
}

impl Words {
    /// Appends the words of `lines`, as `str::split_whitespace` splits each line (lower-cased
    /// as `str::to_lowercase` does, when asked).
    fn split_all<'a>(&mut self, lines: impl Iterator<Item = &'a str> + Clone) {
        let (mut bytes, mut count, mut ascii) = (0, 0, true);
        for line in lines.clone() {
            bytes += line.len();
            count += 1;
            ascii &= line.is_ascii();
        }
        match (ascii, self.lowercase) {
            (true, false) => self.split_ascii::<false>(lines, bytes, count),
            (true, true) => self.split_ascii::<true>(lines, bytes, count),
            (false, _) => lines.for_each(|line| self.split(line)),
        }
    }

    /// ASCII lines (`bytes` long in all, `count` of them), the common case: one pass, a byte at
    /// a time, without branches — every byte is written and the write position moves past it
    /// only if it is not white space; a word's end is written and kept only where one ends. ASCII
    /// white space is exactly the space and `\t`..=`\r` (what `char::is_whitespace` says of
    /// ASCII; it includes the vertical tab, which `u8::is_ascii_whitespace` leaves out).
    fn split_ascii<'a, const LOWER: bool>(&mut self, lines: impl Iterator<Item = &'a str>, bytes: usize, count: usize) {
        let (mut w, mut e) = (self.values.len(), self.ends.len());
        // A line of n bytes holds at most n / 2 + 1 words.
        self.values.resize(w + bytes, 0);
        self.ends.resize(e + bytes / 2 + count, 0);
        let (out, ends) = (&mut self.values[..], &mut self.ends[..]);
        for line in lines {
            let mut in_word = false;
            for &b in line.as_bytes() {
                let space = b == b' ' || b.wrapping_sub(b'\t') < 5;
                out[w] = if LOWER { b | (u8::from(b.wrapping_sub(b'A') < 26) << 5) } else { b };
                w += usize::from(!space);
                ends[e] = w as i32;
                e += usize::from(space & in_word);
                in_word = !space;
            }
            ends[e] = w as i32;
            e += usize::from(in_word);
        }
        self.values.truncate(w);
        self.ends.truncate(e);
    }

    /// Appends the words of any `line`.
    fn split(&mut self, line: &str) {
        for w in line.split_whitespace() {
            if self.lowercase {
                self.values.extend_from_slice(w.to_lowercase().as_bytes());
            } else {
                self.values.extend_from_slice(w.as_bytes());
            }
            self.ends.push(self.values.len() as i32);
        }
    }

    /// The words as a string array (checked: offsets in order, valid UTF-8).
    fn finish(self) -> Result<StringArray, Error> {
        if i32::try_from(self.values.len()).is_err() {
            return Err(Error::InvalidInput(format!(
                "a call's words take {} bytes, more than a string array holds (2 GiB): send smaller batches",
                self.values.len()
            )));
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.ends));
        Ok(StringArray::try_new(offsets, Buffer::from_vec(self.values), None)?)
    }
}

sluice_sdk::export_transform!(SplitWords);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_white_space_and_lower_cases() {
        let mut t = SplitWords::create(Config::new([("lowercase", true)])).expect("config");
        let input = util::schema(vec![Field::new("value", DataType::Utf8, true)]);
        t.output_schema(&input).expect("schema");
        let batch =
            RecordBatch::try_new(input, vec![Arc::new(StringArray::from(vec![Some("A b  c"), None, Some("")]))])
                .expect("batch");
        let out = t.process(&BatchContext::for_batch(0), batch).expect("process");
        let words = out.column(0).as_any().downcast_ref::<StringArray>().expect("strings");
        assert_eq!(words.iter().flatten().collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert!(SplitWords::create(Config::new([("colum", "x")])).is_err());
    }

    /// Words split (and lower-case) exactly as `split_whitespace` and `to_lowercase` do, on
    /// every mix of ASCII white space (the vertical tab too), other control bytes, letters and
    /// non-ASCII text.
    #[test]
    fn words_split_as_split_whitespace_does() {
        let pieces =
            ["a", "bC", " ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\u{1c}", "é", "\u{a0}", "\u{2003}", "ΣΑΣ", "Q"];
        let mut seed = 1u64;
        for lowercase in [false, true] {
            let mut words = Words { values: Vec::new(), ends: vec![0], lowercase };
            let mut want: Vec<String> = Vec::new();
            let mut lines = Vec::new();
            for line in 0..20_000 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let mut text = String::new();
                for k in 0..(seed >> 60) as usize {
                    let piece = pieces[(seed >> (k * 4 % 56)) as usize % pieces.len()];
                    // Nineteen lines in twenty stay ASCII, so calls take both paths.
                    if line % 20 != 0 && !piece.is_ascii() {
                        continue;
                    }
                    text.push_str(piece);
                }
                lines.push(text.clone());
                want.extend(text.split_whitespace().map(|w| if lowercase { w.to_lowercase() } else { w.to_string() }));
            }
            // In calls of 7 lines: some all ASCII, some not.
            for call in lines.chunks(7) {
                words.split_all(call.iter().map(String::as_str));
            }
            let got = words.finish().expect("valid words");
            assert_eq!(got.iter().flatten().collect::<Vec<_>>(), want, "lowercase = {lowercase}");
        }
    }
}

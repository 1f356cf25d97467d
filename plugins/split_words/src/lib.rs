//! `split_words`: the word count's `explode(split(value, "\\s+"))` as a plugin.
//!
//! Reads the string column `column` (default `value`) and emits one row per word in a column
//! named `output` (default `word`). Words are separated by Unicode white space; empty tokens
//! are dropped. With `lowercase = true` words are lower-cased.

use std::sync::Arc;

use sluice_sdk::arrow_array::builder::StringBuilder;
use sluice_sdk::arrow_array::{Array, LargeStringArray, RecordBatch, StringArray, StringViewArray};
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
        let mut out = StringBuilder::with_capacity(col.len() * 8, col.get_buffer_memory_size());
        let mut push = |line: &str| {
            for w in line.split_whitespace() {
                if self.lowercase {
                    out.append_value(w.to_lowercase());
                } else {
                    out.append_value(w);
                }
            }
        };
        if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            a.iter().flatten().for_each(&mut push);
        } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
            a.iter().flatten().for_each(&mut push);
        } else if let Some(a) = col.as_any().downcast_ref::<StringViewArray>() {
            a.iter().flatten().for_each(&mut push);
        } else {
            return Err(Error::InvalidInput(format!("column `{}` must be a string", self.column)));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(out.finish())])?)
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
}

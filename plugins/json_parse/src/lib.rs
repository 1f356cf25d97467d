//! `json_parse`: parses a string column of JSON objects into typed columns.
//!
//! Config:
//! - `schema` (required): the output columns as a DDL string, as in Spark:
//!   `"user STRING, amount BIGINT, price DOUBLE, ok BOOLEAN, ts TIMESTAMP"`.
//!   Types: STRING, BIGINT/LONG, INT/INTEGER, DOUBLE, FLOAT, BOOLEAN, TIMESTAMP, DATE.
//! - `column` (default `value`): the input column holding one JSON object per row
//!   (string or binary, so Kafka's `value` works as is).
//! - `mode` (default `PERMISSIVE`): Spark's malformed-record modes. `PERMISSIVE` keeps the row
//!   with null fields (and the raw text in `corrupt_column` if set), `DROPMALFORMED` drops it,
//!   `FAILFAST` fails the batch naming the row.
//! - `corrupt_column`: name of an extra string column for malformed rows (PERMISSIVE only).
//! - `keep`: comma-separated input columns to carry over in front of the parsed ones.

use std::sync::Arc;

use sluice_sdk::arrow_array::builder::StringBuilder;
use sluice_sdk::arrow_array::{
    Array, ArrayRef, BinaryArray, LargeBinaryArray, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    new_null_array,
};
use sluice_sdk::arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_sdk::{BatchContext, Config, Error, Transform, util};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Permissive,
    DropMalformed,
    FailFast,
}

struct JsonParse {
    column: String,
    parsed: SchemaRef,
    mode: Mode,
    corrupt: Option<String>,
    keep: Vec<String>,
}

fn parse_type(t: &str) -> Result<DataType, Error> {
    Ok(match t.to_ascii_uppercase().as_str() {
        "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
        "BIGINT" | "LONG" | "INT64" => DataType::Int64,
        "INT" | "INTEGER" | "INT32" => DataType::Int32,
        "DOUBLE" | "FLOAT64" => DataType::Float64,
        "FLOAT" | "REAL" | "FLOAT32" => DataType::Float32,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "DATE" => DataType::Date32,
        other => {
            return Err(Error::InvalidConfig(format!(
                "unknown type `{other}` in `schema`; valid types: STRING, BIGINT, INT, DOUBLE, FLOAT, BOOLEAN, TIMESTAMP, DATE"
            )));
        }
    })
}

fn parse_ddl(ddl: &str) -> Result<Vec<Field>, Error> {
    let mut fields = Vec::new();
    for part in ddl.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = part.split_whitespace();
        let (Some(name), Some(ty), None) = (it.next(), it.next(), it.next()) else {
            return Err(Error::InvalidConfig(format!("`schema`: expected `name TYPE`, got `{part}`")));
        };
        fields.push(Field::new(name.trim_matches('`'), parse_type(ty)?, true));
    }
    if fields.is_empty() {
        return Err(Error::InvalidConfig("`schema` has no columns".into()));
    }
    Ok(fields)
}

/// The rows of a string or binary column as byte slices (None = null).
fn rows(col: &ArrayRef) -> Result<Vec<Option<&[u8]>>, Error> {
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Ok(a.iter().map(|v| v.map(str::as_bytes)).collect());
    }
    if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        return Ok(a.iter().map(|v| v.map(str::as_bytes)).collect());
    }
    if let Some(a) = any.downcast_ref::<StringViewArray>() {
        return Ok(a.iter().map(|v| v.map(str::as_bytes)).collect());
    }
    if let Some(a) = any.downcast_ref::<BinaryArray>() {
        return Ok(a.iter().collect());
    }
    if let Some(a) = any.downcast_ref::<LargeBinaryArray>() {
        return Ok(a.iter().collect());
    }
    Err(Error::InvalidInput(format!("expected a string or binary column, found {}", col.data_type())))
}

impl JsonParse {
    fn decode_one(&self, row: &[u8]) -> Result<RecordBatch, String> {
        let mut decoder =
            arrow_json::ReaderBuilder::new(self.parsed.clone()).build_decoder().map_err(|e| e.to_string())?;
        let trimmed = row.trim_ascii();
        if !trimmed.starts_with(b"{") {
            return Err("not a JSON object".into());
        }
        let used = decoder.decode(trimmed).map_err(|e| e.to_string())?;
        if used != trimmed.len() {
            return Err("trailing data after the JSON object".into());
        }
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(b) if b.num_rows() == 1 => Ok(b),
            _ => Err("not exactly one JSON object".into()),
        }
    }
}

impl Transform for JsonParse {
    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["schema", "column", "mode", "corrupt_column", "keep"])?;
        let parsed = Arc::new(Schema::new(parse_ddl(config.require_str("schema")?)?));
        let mode = match config.str_or("mode", "PERMISSIVE")?.to_ascii_uppercase().as_str() {
            "PERMISSIVE" => Mode::Permissive,
            "DROPMALFORMED" => Mode::DropMalformed,
            "FAILFAST" => Mode::FailFast,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "`mode` must be PERMISSIVE, DROPMALFORMED or FAILFAST, got `{other}`"
                )));
            }
        };
        // `keep`: a list of column names, or one comma-separated string.
        let keep = match config.str_list("keep") {
            Ok(list) => list.unwrap_or_default(),
            Err(_) => {
                config.require_str("keep")?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
        };
        Ok(JsonParse {
            column: config.str_or("column", "value")?.to_string(),
            parsed,
            mode,
            corrupt: config.str("corrupt_column")?.map(str::to_string),
            keep,
        })
    }

    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error> {
        util::column_index(input, &self.column)?;
        let mut fields = Vec::new();
        for k in &self.keep {
            fields.push(input.field(util::column_index(input, k)?).clone());
        }
        fields.extend(self.parsed.fields().iter().map(|f| f.as_ref().clone()));
        if let (Some(c), Mode::Permissive) = (&self.corrupt, self.mode) {
            fields.push(Field::new(c, DataType::Utf8, true));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn process(&mut self, ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        let schema = self.output_schema(&input.schema())?;
        let col = input.column(util::column_index(&input.schema(), &self.column)?);
        let rows = rows(col)?;

        // Fast path: the whole column at once. Slow path (only when some row is bad): row by row.
        let mut whole = Vec::with_capacity(col.get_buffer_memory_size() + rows.len());
        let mut all_objects = true;
        for r in &rows {
            match r {
                Some(b) if b.trim_ascii().starts_with(b"{") => {
                    whole.extend_from_slice(b);
                    whole.push(b'\n');
                }
                _ => all_objects = false,
            }
        }
        let fast = if all_objects {
            arrow_json::ReaderBuilder::new(self.parsed.clone())
                .with_batch_size(rows.len().max(1))
                .build_decoder()
                .and_then(|mut d| {
                    d.decode(&whole)?;
                    d.flush()
                })
                .ok()
                .flatten()
                .filter(|b| b.num_rows() == rows.len())
        } else {
            None
        };

        let (parsed, keep_rows, corrupt): (RecordBatch, Vec<u32>, Option<ArrayRef>) = match fast {
            Some(b) => ((b), (0..rows.len() as u32).collect(), None),
            None => {
                let mut good = Vec::new();
                let mut keep_rows = Vec::new();
                let mut corrupt = StringBuilder::new();
                for (i, r) in rows.iter().enumerate() {
                    let decoded = match r {
                        Some(b) => self.decode_one(b),
                        None => Err("null".into()),
                    };
                    match (decoded, self.mode) {
                        (Ok(b), _) => {
                            good.push(b);
                            keep_rows.push(i as u32);
                            corrupt.append_null();
                        }
                        (Err(e), Mode::FailFast) => {
                            return Err(Error::InvalidInput(format!(
                                "malformed JSON in batch {} row {i}: {e} (mode FAILFAST)",
                                ctx.batch_id
                            )));
                        }
                        (Err(_), Mode::DropMalformed) => {}
                        (Err(_), Mode::Permissive) => {
                            let nulls: Vec<ArrayRef> =
                                self.parsed.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
                            good.push(RecordBatch::try_new(self.parsed.clone(), nulls)?);
                            keep_rows.push(i as u32);
                            corrupt.append_value(String::from_utf8_lossy(r.unwrap_or_default()));
                        }
                    }
                }
                let parsed = sluice_sdk::arrow_select::concat::concat_batches(&self.parsed, &good)?;
                (parsed, keep_rows, Some(Arc::new(corrupt.finish())))
            }
        };

        let indices = sluice_sdk::arrow_array::UInt32Array::from(keep_rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for k in &self.keep {
            let c = input.column(util::column_index(&input.schema(), k)?);
            columns.push(sluice_sdk::arrow_select::take::take(c.as_ref(), &indices, None)?);
        }
        columns.extend(parsed.columns().iter().cloned());
        if let (Some(_), Mode::Permissive) = (&self.corrupt, self.mode) {
            columns.push(corrupt.unwrap_or_else(|| new_null_array(&DataType::Utf8, parsed.num_rows())));
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

sluice_sdk::export_transform!(JsonParse);

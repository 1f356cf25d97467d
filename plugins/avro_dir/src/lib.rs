//! `avro_dir`: a source (the `source-plugin` world) over a directory of Avro Object Container
//! Files, a format Sluice has no built-in reader for. Pure Rust (`apache-avro`), sandboxed.
//!
//! Config: `dir` (default `/data`): a path inside the sandbox, declared read-only, so the
//! pipeline grants it, e.g. `grants = { dirs = [{ host = "data/avro", guest = "/data" }] }`;
//! `maxFilesPerTrigger` (default 10); `schema` (optional, an Avro record schema as JSON: by
//! default the schema of the first file, in name order).
//!
//! Files are taken in name order, like a log: the offset is the name of the last file
//! consumed (`{"file": "part-0003.avro"}`), a batch reads the files after it, one input
//! partition per file. Name files so new ones sort last (a file that sorts before the offset
//! when it appears is never read). Only complete files should appear (write, then rename).
//!
//! Types: null, boolean, int, long, float, double, string, bytes, enum (as string), unions of
//! null and one type (nullable), `date`, `timestamp-millis`/`-micros`; other types are refused
//! at start with the field's name.

use std::sync::Arc;

use apache_avro::Schema as Avro;
use apache_avro::types::Value;
use sluice_sdk::arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
};
use sluice_sdk::arrow_array::{ArrayRef, RecordBatch};
use sluice_sdk::arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use sluice_sdk::{Config, Error, PartitionReader, ReadLimit, Requirement, Source, util};

pub struct AvroDir {
    dir: String,
    max_files: usize,
    schema: SchemaRef,
    /// `available_now`: the last file that existed when it was prepared.
    cap: Option<String>,
}

pub struct FileReader {
    path: String,
    schema: SchemaRef,
    done: bool,
}

fn dir(config: &Config) -> Result<String, Error> {
    let d = config.str_or("dir", "/data")?.trim_end_matches('/').to_string();
    if !d.starts_with('/') {
        return Err(Error::InvalidConfig(format!("`dir` must be an absolute path inside the sandbox, got `{d}`")));
    }
    Ok(d)
}

/// An Avro field type as an Arrow type; unions of null and one type are nullable.
fn arrow_type(name: &str, s: &Avro) -> Result<(DataType, bool), Error> {
    let t = match s {
        Avro::Boolean => DataType::Boolean,
        Avro::Int => DataType::Int32,
        Avro::Long => DataType::Int64,
        Avro::Float => DataType::Float32,
        Avro::Double => DataType::Float64,
        Avro::String | Avro::Enum(_) | Avro::Uuid(_) => DataType::Utf8,
        Avro::Bytes => DataType::Binary,
        Avro::Date => DataType::Date32,
        Avro::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Avro::TimestampMicros => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Avro::Union(u) => {
            let others: Vec<&Avro> = u.variants().iter().filter(|v| !matches!(v, Avro::Null)).collect();
            return match others.as_slice() {
                [one] => Ok((arrow_type(name, one)?.0, true)),
                _ => {
                    Err(Error::InvalidConfig(format!("field `{name}`: only unions of null and one type are supported")))
                }
            };
        }
        other => {
            return Err(Error::InvalidConfig(format!("field `{name}`: Avro type {other:?} is not supported")));
        }
    };
    Ok((t, false))
}

fn arrow_schema(s: &Avro) -> Result<SchemaRef, Error> {
    let Avro::Record(r) = s else {
        return Err(Error::InvalidConfig("the Avro schema must be a record".into()));
    };
    let mut fields = Vec::new();
    for f in &r.fields {
        let (t, nullable) = arrow_type(&f.name, &f.schema)?;
        fields.push(Field::new(&f.name, t, nullable));
    }
    Ok(util::schema(fields))
}

fn io(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{what}: {e}"))
}

impl AvroDir {
    /// The `.avro` files in the directory, in name order.
    fn files(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| io(&format!("listing {}", self.dir), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".avro") && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn last_file(offset: &str) -> Result<Option<String>, Error> {
    if offset.trim() == "null" {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(offset).map_err(|e| io("offset", e))?;
    Ok(v.get("file").and_then(|f| f.as_str()).map(str::to_string))
}

fn offset_of(file: Option<&str>) -> String {
    match file {
        Some(f) => serde_json::json!({ "file": f }).to_string(),
        None => "null".into(),
    }
}

impl Source for AvroDir {
    type Reader = FileReader;

    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["dir", "maxFilesPerTrigger", "schema"])?;
        let max_files = config.int_or("maxFilesPerTrigger", 10)?;
        if max_files < 1 {
            return Err(Error::InvalidConfig("`maxFilesPerTrigger` must be at least 1".into()));
        }
        let mut s =
            AvroDir { dir: dir(&config)?, max_files: max_files as usize, schema: util::schema(vec![]), cap: None };
        s.schema = match config.str("schema")? {
            Some(text) => {
                arrow_schema(&Avro::parse_str(text).map_err(|e| Error::InvalidConfig(format!("`schema`: {e}")))?)?
            }
            None => {
                let first = s.files()?.into_iter().next().ok_or_else(|| {
                    Error::InvalidConfig(format!("no .avro file in {} to take the schema from; set `schema`", s.dir))
                })?;
                let path = format!("{}/{first}", s.dir);
                let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
                let reader = apache_avro::Reader::new(&bytes[..]).map_err(|e| io(&path, e))?;
                arrow_schema(reader.writer_schema())?
            }
        };
        Ok(s)
    }

    fn requirements(config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(vec![Requirement::Dir { guest: dir(config)?, writable: false }])
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn initial_offset(&mut self) -> Result<String, Error> {
        Ok(offset_of(None))
    }

    fn latest_offset(&mut self, start: &str, limit: ReadLimit) -> Result<String, Error> {
        let after = last_file(start)?;
        let mut new: Vec<String> = self.files()?.into_iter().filter(|f| after.as_ref().is_none_or(|a| f > a)).collect();
        if let Some(cap) = &self.cap {
            new.retain(|f| f <= cap);
        }
        let take = match limit {
            ReadLimit::AllAvailable => new.len(),
            _ => self.max_files.min(new.len()),
        };
        Ok(match take {
            0 => start.to_string(),
            n => offset_of(Some(&new[n - 1])),
        })
    }

    fn prepare_available_now(&mut self) -> Result<(), Error> {
        self.cap = self.files()?.pop();
        Ok(())
    }

    fn partitions(&mut self, start: &str, end: &str) -> Result<Vec<String>, Error> {
        let (after, upto) = (last_file(start)?, last_file(end)?);
        Ok(self
            .files()?
            .into_iter()
            .filter(|f| after.as_ref().is_none_or(|a| f > a) && upto.as_ref().is_some_and(|u| f <= u))
            .collect())
    }

    fn open(&mut self, partition: &str) -> Result<FileReader, Error> {
        Ok(FileReader { path: format!("{}/{partition}", self.dir), schema: self.schema.clone(), done: false })
    }
}

/// Appends Avro values of one column to an Arrow builder.
enum Column {
    Bool(BooleanBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Date(Date32Builder),
    Millis(TimestampMillisecondBuilder),
    Micros(TimestampMicrosecondBuilder),
}

impl Column {
    fn new(t: &DataType) -> Self {
        match t {
            DataType::Boolean => Column::Bool(BooleanBuilder::new()),
            DataType::Int32 => Column::I32(Int32Builder::new()),
            DataType::Int64 => Column::I64(Int64Builder::new()),
            DataType::Float32 => Column::F32(Float32Builder::new()),
            DataType::Float64 => Column::F64(Float64Builder::new()),
            DataType::Binary => Column::Bin(BinaryBuilder::new()),
            DataType::Date32 => Column::Date(Date32Builder::new()),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Column::Millis(TimestampMillisecondBuilder::new()),
            DataType::Timestamp(_, _) => Column::Micros(TimestampMicrosecondBuilder::new()),
            _ => Column::Str(StringBuilder::new()),
        }
    }

    /// Appends `v`; false if it does not fit the column's type.
    fn push(&mut self, v: &Value) -> bool {
        let v = match v {
            Value::Union(_, inner) => inner.as_ref(),
            other => other,
        };
        match (self, v) {
            (Column::Bool(b), Value::Null) => b.append_null(),
            (Column::I32(b), Value::Null) => b.append_null(),
            (Column::I64(b), Value::Null) => b.append_null(),
            (Column::F32(b), Value::Null) => b.append_null(),
            (Column::F64(b), Value::Null) => b.append_null(),
            (Column::Str(b), Value::Null) => b.append_null(),
            (Column::Bin(b), Value::Null) => b.append_null(),
            (Column::Date(b), Value::Null) => b.append_null(),
            (Column::Millis(b), Value::Null) => b.append_null(),
            (Column::Micros(b), Value::Null) => b.append_null(),
            (Column::Bool(b), Value::Boolean(x)) => b.append_value(*x),
            (Column::I32(b), Value::Int(x)) => b.append_value(*x),
            (Column::I64(b), Value::Long(x)) => b.append_value(*x),
            (Column::I64(b), Value::Int(x)) => b.append_value(i64::from(*x)),
            (Column::F32(b), Value::Float(x)) => b.append_value(*x),
            (Column::F64(b), Value::Double(x)) => b.append_value(*x),
            (Column::F64(b), Value::Float(x)) => b.append_value(f64::from(*x)),
            (Column::Str(b), Value::String(x)) => b.append_value(x),
            (Column::Str(b), Value::Enum(_, x)) => b.append_value(x),
            (Column::Str(b), Value::Uuid(x)) => b.append_value(x.to_string()),
            (Column::Bin(b), Value::Bytes(x)) => b.append_value(x),
            (Column::Date(b), Value::Date(x)) => b.append_value(*x),
            (Column::Millis(b), Value::TimestampMillis(x)) => b.append_value(*x),
            (Column::Micros(b), Value::TimestampMicros(x)) => b.append_value(*x),
            _ => return false,
        }
        true
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::I32(mut b) => Arc::new(b.finish()),
            Column::I64(mut b) => Arc::new(b.finish()),
            Column::F32(mut b) => Arc::new(b.finish()),
            Column::F64(mut b) => Arc::new(b.finish()),
            Column::Str(mut b) => Arc::new(b.finish()),
            Column::Bin(mut b) => Arc::new(b.finish()),
            Column::Date(mut b) => Arc::new(b.finish()),
            Column::Millis(mut b) => Arc::new(b.finish().with_timezone("UTC")),
            Column::Micros(mut b) => Arc::new(b.finish().with_timezone("UTC")),
        }
    }
}

impl PartitionReader for FileReader {
    fn next(&mut self) -> Result<Option<RecordBatch>, Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let bytes = std::fs::read(&self.path).map_err(|e| io(&self.path, e))?;
        let reader = apache_avro::Reader::new(&bytes[..]).map_err(|e| io(&self.path, e))?;
        let mut columns: Vec<Column> = self.schema.fields().iter().map(|f| Column::new(f.data_type())).collect();
        for (row, record) in reader.enumerate() {
            let record = record.map_err(|e| io(&format!("{} record {row}", self.path), e))?;
            let Value::Record(fields) = record else {
                return Err(Error::InvalidInput(format!("{} record {row} is not a record", self.path)));
            };
            for (i, f) in self.schema.fields().iter().enumerate() {
                let v = fields.iter().find(|(n, _)| n == f.name()).map(|(_, v)| v).unwrap_or(&Value::Null);
                if matches!(v, Value::Null) && !f.is_nullable() || !columns[i].push(v) {
                    return Err(Error::InvalidInput(format!(
                        "{} record {row}: field `{}` holds {v:?}, which does not fit {}",
                        self.path,
                        f.name(),
                        f.data_type()
                    )));
                }
            }
        }
        let arrays: Vec<ArrayRef> = columns.into_iter().map(Column::finish).collect();
        Ok(Some(RecordBatch::try_new(self.schema.clone(), arrays)?))
    }
}

sluice_sdk::export_source!(AvroDir);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::arrow_array::{Int64Array, StringArray};

    const SCHEMA: &str = r#"{"type":"record","name":"Event","fields":[
        {"name":"id","type":"long"},{"name":"user","type":["null","string"]},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

    fn write_file(dir: &std::path::Path, name: &str, rows: &[(i64, Option<&str>)]) {
        let schema = Avro::parse_str(SCHEMA).expect("schema");
        let mut w = apache_avro::Writer::new(&schema, Vec::new()).expect("writer");
        for (id, user) in rows {
            let user = match user {
                Some(u) => Value::Union(1, Box::new(Value::String(u.to_string()))),
                None => Value::Union(0, Box::new(Value::Null)),
            };
            let r = Value::Record(vec![
                ("id".into(), Value::Long(*id)),
                ("user".into(), user),
                ("ts".into(), Value::TimestampMillis(1_700_000_000_000 + id)),
            ]);
            w.append_value(r).expect("append");
        }
        std::fs::write(dir.join(name), w.into_inner().expect("bytes")).expect("write");
    }

    #[test]
    fn reads_files_in_name_order_one_partition_each() {
        let dir = std::env::temp_dir().join(format!("avro_dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_file(&dir, "a.avro", &[(1, Some("ann")), (2, None)]);
        write_file(&dir, "b.avro", &[(3, Some("bob"))]);
        let d = dir.display().to_string();
        let mut s = AvroDir::create(Config::new([
            ("dir", sluice_sdk::Value::from(d.as_str())),
            ("maxFilesPerTrigger", sluice_sdk::Value::Int(1)),
        ]))
        .expect("create");
        assert_eq!(s.schema().field(2).data_type(), &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())));
        let start = s.initial_offset().expect("initial");
        let end = s.latest_offset(&start, ReadLimit::Default).expect("latest");
        assert_eq!(end, r#"{"file":"a.avro"}"#);
        let parts = s.partitions(&start, &end).expect("partitions");
        assert_eq!(parts, vec!["a.avro"]);
        let b = s.open(&parts[0]).expect("open").next().expect("read").expect("a batch");
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
        assert_eq!(ids.values().to_vec(), vec![1, 2]);
        let users = b.column(1).as_any().downcast_ref::<StringArray>().expect("users");
        assert_eq!(users.iter().collect::<Vec<_>>(), vec![Some("ann"), None]);
        let end2 = s.latest_offset(&end, ReadLimit::AllAvailable).expect("latest");
        assert_eq!(s.partitions(&end, &end2).expect("partitions"), vec!["b.avro"]);
        assert_eq!(s.latest_offset(&end2, ReadLimit::Default).expect("latest"), end2);
        let _ = std::fs::remove_dir_all(dir);
    }
}

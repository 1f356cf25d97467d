//! Schemas written as Spark DDL strings: `"ts TIMESTAMP, user STRING, amount BIGINT"`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

const TYPES: &str =
    "STRING, BINARY, BOOLEAN, TINYINT, SMALLINT, INT, BIGINT, FLOAT, DOUBLE, DECIMAL(p,s), DATE, TIMESTAMP";

fn parse_type(t: &str) -> Option<DataType> {
    let upper = t.trim().to_ascii_uppercase();
    if let Some(args) = upper.strip_prefix("DECIMAL(").and_then(|r| r.strip_suffix(')')) {
        let mut it = args.split(',').map(str::trim);
        let p: u8 = it.next()?.parse().ok()?;
        let s: i8 = it.next().unwrap_or("0").parse().ok()?;
        return (1..=38).contains(&p).then_some(DataType::Decimal128(p, s));
    }
    Some(match upper.as_str() {
        "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
        "BINARY" => DataType::Binary,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" | "BYTE" => DataType::Int8,
        "SMALLINT" | "SHORT" => DataType::Int16,
        "INT" | "INTEGER" => DataType::Int32,
        "BIGINT" | "LONG" => DataType::Int64,
        "FLOAT" | "REAL" => DataType::Float32,
        "DOUBLE" => DataType::Float64,
        "DECIMAL" => DataType::Decimal128(10, 0),
        "DATE" => DataType::Date32,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "TIMESTAMP_NTZ" => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => return None,
    })
}

/// Splits on commas that are not inside parentheses (so `DECIMAL(10,2)` stays whole).
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses a DDL schema string. Columns are nullable unless followed by `NOT NULL`.
pub fn parse_ddl(ddl: &str) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for part in split_top_level(ddl).into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rest) = if let Some(stripped) = part.strip_prefix('`') {
            let end = stripped.find('`').ok_or_else(|| Error::config(format!("schema: unclosed ` in `{part}`")))?;
            (&stripped[..end], stripped[end + 1..].trim())
        } else {
            part.split_once(char::is_whitespace).map(|(n, r)| (n, r.trim())).unwrap_or((part, ""))
        };
        let (ty, nullable) = match rest.to_ascii_uppercase().strip_suffix("NOT NULL") {
            Some(t) => (rest[..t.len()].trim(), false),
            None => (rest, true),
        };
        if ty.is_empty() {
            return Err(Error::config(format!("schema: column `{name}` has no type; expected `name TYPE`")));
        }
        let dt = parse_type(ty).ok_or_else(|| {
            Error::config(format!("schema: unknown type `{ty}` for column `{name}`; valid types: {TYPES}"))
        })?;
        fields.push(Field::new(name, dt, nullable));
    }
    if fields.is_empty() {
        return Err(Error::config("schema: no columns; expected e.g. \"ts TIMESTAMP, user STRING\""));
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spark_ddl() {
        let s = parse_ddl("ts TIMESTAMP, `user name` STRING NOT NULL, amount DECIMAL(10,2), n bigint").unwrap();
        assert_eq!(s.fields().len(), 4);
        assert_eq!(s.field(1).name(), "user name");
        assert!(!s.field(1).is_nullable());
        assert_eq!(s.field(2).data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(s.field(3).data_type(), &DataType::Int64);
    }

    #[test]
    fn names_the_bad_type() {
        let e = parse_ddl("a STRNG").unwrap_err().to_string();
        assert!(e.contains("STRNG") && e.contains("BIGINT"), "{e}");
    }
}

//! Source and sink options: Spark-style string key/value pairs, matched case-insensitively as
//! Spark does, each remembering where in the pipeline file it was written so an error can name
//! the line.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: String,
    location: Option<String>,
}

/// Options for one source or sink, keyed case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct Options {
    entries: BTreeMap<String, Entry>,
    /// Where the options table itself was written, for "missing option" errors.
    location: Option<String>,
}

impl Options {
    /// Options from key/value pairs (the Rust API).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut o = Options::default();
        for (k, v) in pairs {
            o.insert(k.into(), v.into(), None);
        }
        o
    }

    /// Sets `key` to `value` (keys match case-insensitively).
    pub fn set(&mut self, key: &str, value: impl ToString) {
        self.insert(key.to_string(), value.to_string(), None);
    }

    pub(crate) fn insert(&mut self, key: String, value: String, location: Option<String>) {
        self.entries.insert(key.to_ascii_lowercase(), Entry { key, value, location });
    }

    pub(crate) fn set_location(&mut self, location: Option<String>) {
        self.location = location;
    }

    /// Every option as (lower-case key, value), in key order: for comparing two option sets.
    pub(crate) fn pairs(&self) -> Vec<(&str, &str)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e.value.as_str())).collect()
    }

    /// Errors naming the first option that is not in `valid` (compared case-insensitively).
    pub(crate) fn check(&self, component: &str, valid: &[&str]) -> Result<()> {
        for (lower, e) in &self.entries {
            let known = valid.iter().any(|v| v.eq_ignore_ascii_case(lower))
                || valid.iter().any(|v| v.ends_with('*') && lower.starts_with(&v[..v.len() - 1].to_ascii_lowercase()));
            if !known {
                return Err(Error::UnknownOption {
                    component: component.to_string(),
                    key: e.key.clone(),
                    valid: valid.iter().map(|s| s.to_string()).collect(),
                    location: e.location.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every option whose key starts with `prefix` (case-insensitively), with the prefix removed
    /// and the rest of the key as written: `kafka.linger.ms` → `linger.ms`.
    pub(crate) fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let lower = prefix.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(move |(k, _)| k.starts_with(&lower))
            .map(move |(_, e)| (&e.key[prefix.len()..], e.value.as_str()))
    }

    /// The raw value of `key`, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(&key.to_ascii_lowercase()).map(|e| e.value.as_str())
    }

    /// The value of `key`, or a [`Error::MissingOption`].
    pub(crate) fn require(&self, component: &str, key: &str, hint: Option<&str>) -> Result<&str> {
        self.get(key).ok_or_else(|| self.missing(component, key, hint))
    }

    /// The error for a missing option `key`.
    pub(crate) fn missing(&self, component: &str, key: &str, hint: Option<&str>) -> Error {
        Error::MissingOption {
            component: component.to_string(),
            key: key.to_string(),
            hint: hint.map(str::to_string),
            location: self.location.clone(),
        }
    }

    /// Parses `key` with `FromStr`, or returns `default` when it is not set.
    pub(crate) fn parse_or<T>(&self, component: &str, key: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.parse(component, key)? {
            Some(v) => Ok(v),
            None => Ok(default),
        }
    }

    /// Parses `key` with `FromStr` if it is set.
    pub(crate) fn parse<T>(&self, component: &str, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let Some(e) = self.entries.get(&key.to_ascii_lowercase()) else { return Ok(None) };
        e.value.trim().parse::<T>().map(Some).map_err(|err| self.invalid(component, key, &err.to_string()))
    }

    /// A boolean option (`true`/`false`, case-insensitive).
    pub(crate) fn bool_or(&self, component: &str, key: &str, default: bool) -> Result<bool> {
        match self.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" => Ok(true),
            Some(v) if v == "false" => Ok(false),
            Some(_) => Err(self.invalid(component, key, "expected true or false")),
        }
    }

    /// An [`Error::InvalidOption`] for `key`.
    pub(crate) fn invalid(&self, component: &str, key: &str, reason: &str) -> Error {
        let e = self.entries.get(&key.to_ascii_lowercase());
        Error::InvalidOption {
            component: component.to_string(),
            key: e.map(|e| e.key.clone()).unwrap_or_else(|| key.to_string()),
            value: e.map(|e| e.value.clone()).unwrap_or_default(),
            reason: reason.to_string(),
            location: e.and_then(|e| e.location.clone()).or_else(|| self.location.clone()),
        }
    }

    /// Where the options were written, if known.
    pub(crate) fn location(&self) -> Option<String> {
        self.location.clone()
    }
}

/// Parses a human duration: `500ms`, `1s`, `2 seconds`, `1.5 minutes`, `1h`.
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{text}` is not a duration like `500ms`, `1s`, `2 minutes`"))?;
    let secs = match unit.trim() {
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => n / 1000.0,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86400.0,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use ms, s, minutes, hours or days")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses a Spark duration string (`"10 minutes"`, `"1 hour 30 minutes"`, `"interval 5
/// seconds"`, `"100 milliseconds"`) into microseconds. Months and years have no fixed length
/// and are refused, as Spark refuses them for windows and watermarks.
pub(crate) fn parse_interval_us(text: &str) -> std::result::Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let body = lower.strip_prefix("interval").unwrap_or(&lower).trim();
    let words: Vec<&str> = body.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(format!("`{text}` is not a duration; write e.g. \"10 minutes\" or \"1 hour 30 minutes\""));
    }
    let mut total: i64 = 0;
    for pair in words.chunks(2) {
        let n: i64 = pair[0].parse().map_err(|_| format!("`{text}`: `{}` is not a whole number", pair[0]))?;
        let unit: i64 = match pair[1].trim_end_matches('s') {
            "microsecond" | "us" => 1,
            "millisecond" | "ms" => 1_000,
            "second" | "sec" => 1_000_000,
            "minute" | "min" => 60_000_000,
            "hour" => 3_600_000_000,
            "day" => 86_400_000_000,
            "week" => 7 * 86_400_000_000,
            "month" | "year" => {
                return Err(format!("`{text}`: months and years have no fixed length; use days or weeks"));
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}`; use microseconds, milliseconds, seconds, minutes, hours, days or weeks"
                ));
            }
        };
        total =
            n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("`{text}` is too long"))?;
    }
    Ok(total)
}

/// Parses a byte size: `64MiB`, `512KiB`, `1GiB`, `1000000`.
pub(crate) fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not a size like `64MiB`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_spark() {
        assert_eq!(parse_interval_us("10 minutes"), Ok(10 * 60_000_000));
        assert_eq!(parse_interval_us("interval 1 hour 30 minutes"), Ok(90 * 60_000_000));
        assert_eq!(parse_interval_us("1 second"), Ok(1_000_000));
        assert_eq!(parse_interval_us("250 milliseconds"), Ok(250_000));
        assert!(parse_interval_us("1 month").unwrap_err().contains("no fixed length"));
        assert!(parse_interval_us("ten minutes").is_err());
        assert!(parse_interval_us("10 fortnights").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2 seconds").unwrap().as_secs(), 2);
        assert_eq!(parse_duration("1.5 minutes").unwrap().as_secs(), 90);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 fortnights").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn options_are_case_insensitive_and_checked() {
        let o = Options::from_pairs([("rowsPerSecond", "10")]);
        assert_eq!(o.parse_or::<u64>("rate", "rowspersecond", 1).unwrap(), 10);
        assert!(o.check("rate", &["rowsPerSecond"]).is_ok());
        let err = o.check("rate", &["numPartitions"]).unwrap_err().to_string();
        assert!(err.contains("rowsPerSecond") && err.contains("numPartitions"), "{err}");
    }
}

//! `sequence`: a deterministic source (the `source-plugin` world). Columns `id BIGINT`, each
//! value exactly once over the whole stream, and `value STRING` (`"value-<id>"`).
//!
//! Config: `rows_per_batch` (default 1000: the rows one micro-batch takes), `start` (first id,
//! default 0), `end` (optional, exclusive: once reached the source reports no new data, so an
//! `available_now` or `once` query ends), `partitions` (default 1: each batch's ids are split
//! into that many contiguous input partitions, read in parallel).
//!
//! Offsets are the next id as a JSON number; a partition is `{"from": a, "to": b}`. Reading a
//! range again gives the same rows, so recovery is exactly-once.

use std::sync::Arc;

use sluice_sdk::arrow_array::{Int64Array, RecordBatch, StringArray};
use sluice_sdk::arrow_schema::{DataType, Field, SchemaRef};
use sluice_sdk::{Config, Error, PartitionReader, ReadLimit, Source, util};

/// Rows per chunk a reader hands out.
const CHUNK: u64 = 64 * 1024;

pub struct Sequence {
    rows_per_batch: u64,
    start: u64,
    end: Option<u64>,
    partitions: u64,
    schema: SchemaRef,
    /// `available_now`: no offset past this.
    cap: Option<u64>,
    available_now: bool,
}

pub struct Range {
    next: u64,
    to: u64,
    schema: SchemaRef,
}

fn positive(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let v = config.int_or(key, default)?;
    if v < 1 {
        return Err(Error::InvalidConfig(format!("`{key}` must be at least 1, got {v}")));
    }
    Ok(v as u64)
}

fn parse_offset(text: &str) -> Result<u64, Error> {
    text.trim().parse().map_err(|_| Error::Failed(format!("offset `{text}` is not a number")))
}

impl Source for Sequence {
    type Reader = Range;

    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["rows_per_batch", "start", "end", "partitions"])?;
        let start = config.int_or("start", 0)?;
        if start < 0 {
            return Err(Error::InvalidConfig(format!("`start` must not be negative, got {start}")));
        }
        let end = match config.int("end")? {
            Some(e) if e < start => {
                return Err(Error::InvalidConfig(format!("`end` ({e}) must not be below `start` ({start})")));
            }
            e => e.map(|e| e as u64),
        };
        Ok(Sequence {
            rows_per_batch: positive(&config, "rows_per_batch", 1000)?,
            start: start as u64,
            end,
            partitions: positive(&config, "partitions", 1)?,
            schema: util::schema(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("value", DataType::Utf8, false),
            ]),
            cap: None,
            available_now: false,
        })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn initial_offset(&mut self) -> Result<String, Error> {
        Ok(self.start.to_string())
    }

    fn latest_offset(&mut self, start: &str, limit: ReadLimit) -> Result<String, Error> {
        let from = parse_offset(start)?;
        if self.available_now && self.cap.is_none() {
            // Without an end, "everything available now" is one batch's worth.
            self.cap = Some(self.end.unwrap_or(from + self.rows_per_batch));
        }
        let wanted = match limit {
            ReadLimit::AllAvailable => match self.end {
                Some(e) => e.saturating_sub(from),
                None => self.rows_per_batch,
            },
            ReadLimit::MaxRows(n) => n,
            ReadLimit::Default => self.rows_per_batch,
        };
        let mut to = from.saturating_add(wanted);
        for bound in [self.end, self.cap].into_iter().flatten() {
            to = to.min(bound.max(from));
        }
        Ok(to.to_string())
    }

    fn prepare_available_now(&mut self) -> Result<(), Error> {
        self.available_now = true;
        Ok(())
    }

    fn partitions(&mut self, start: &str, end: &str) -> Result<Vec<String>, Error> {
        let (from, to) = (parse_offset(start)?, parse_offset(end)?);
        let n = to.saturating_sub(from);
        let parts = self.partitions.min(n.max(1));
        Ok((0..parts)
            .map(|i| {
                let a = from + n * i / parts;
                let b = from + n * (i + 1) / parts;
                format!("{{\"from\":{a},\"to\":{b}}}")
            })
            .collect())
    }

    fn open(&mut self, partition: &str) -> Result<Range, Error> {
        let field = |key: &str| -> Result<u64, Error> {
            let at = partition
                .find(&format!("\"{key}\":"))
                .ok_or_else(|| Error::Failed(format!("bad partition {partition}")))?;
            let rest = &partition[at + key.len() + 3..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().map_err(|_| Error::Failed(format!("bad partition {partition}")))
        };
        Ok(Range { next: field("from")?, to: field("to")?, schema: self.schema.clone() })
    }
}

impl PartitionReader for Range {
    fn next(&mut self) -> Result<Option<RecordBatch>, Error> {
        if self.next >= self.to {
            return Ok(None);
        }
        let upto = self.to.min(self.next + CHUNK);
        let ids: Int64Array = (self.next..upto).map(|i| i as i64).collect();
        let values: StringArray = (self.next..upto).map(|i| Some(format!("value-{i}"))).collect();
        self.next = upto;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(ids), Arc::new(values)])?))
    }
}

sluice_sdk::export_source!(Sequence);

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &mut Sequence, start: &str, end: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for p in s.partitions(start, end).expect("partitions") {
            let mut r = s.open(&p).expect("open");
            while let Some(b) = r.next().expect("next") {
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
                out.extend(col.values().iter().copied());
            }
        }
        out
    }

    #[test]
    fn every_id_once_in_order_and_the_end_stops_it() {
        let mut s =
            Sequence::create(Config::new([("rows_per_batch", 7), ("end", 20), ("partitions", 3)])).expect("config");
        let mut offset = s.initial_offset().expect("initial");
        let mut all = Vec::new();
        loop {
            let end = s.latest_offset(&offset, ReadLimit::Default).expect("latest");
            if end == offset {
                break;
            }
            all.extend(ids(&mut s, &offset, &end));
            offset = end;
        }
        assert_eq!(all, (0..20).collect::<Vec<i64>>());
        // Replaying a range gives the same rows.
        assert_eq!(ids(&mut s, "7", "14"), (7..14).collect::<Vec<i64>>());
        assert_eq!(s.latest_offset("0", ReadLimit::MaxRows(3)).expect("limit"), "3");
        assert!(Sequence::create(Config::new([("rows_per_batch", 0)])).is_err());
        assert!(Sequence::create(Config::new([("rows", 5)])).is_err());
    }
}

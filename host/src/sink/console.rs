//! The `console` sink: prints each batch (or each continuous chunk) as a table, like Spark's
//! (`numRows`, `truncate`).

use std::io::Write;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};

use super::{OutputMode, Sink};
use crate::error::{Error, Result};
use crate::options::Options;

pub(crate) struct ConsoleSink {
    num_rows: usize,
    truncate: bool,
}

impl ConsoleSink {
    pub(crate) fn try_new(options: &Options) -> Result<Self> {
        const C: &str = "console sink";
        options.check(C, &["numRows", "truncate"])?;
        Ok(ConsoleSink {
            num_rows: options.parse_or(C, "numRows", 20)?,
            truncate: options.bool_or(C, "truncate", true)?,
        })
    }
}

/// Renders the first `num_rows` rows like Spark's `show()`.
pub(crate) fn render(
    batch_id: u64,
    schema: &SchemaRef,
    data: &[RecordBatch],
    num_rows: usize,
    truncate: bool,
) -> Result<String> {
    let total: usize = data.iter().map(RecordBatch::num_rows).sum();
    let all = arrow_select::concat::concat_batches(schema, data)?;
    let shown = all.slice(0, num_rows.min(total));
    let shown = if truncate { truncate_strings(&shown)? } else { shown };
    let table = arrow_cast::pretty::pretty_format_batches(&[shown])?;
    let mut out = format!(
        "-------------------------------------------\nBatch: {batch_id}\n-------------------------------------------\n{table}\n"
    );
    if total > num_rows {
        out.push_str(&format!("only showing top {num_rows} row{}\n", if num_rows == 1 { "" } else { "s" }));
    }
    Ok(out)
}

fn truncate_strings(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| -> Result<ArrayRef> {
            if !matches!(c.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                return Ok(c.clone());
            }
            let s = arrow_cast::cast(c, &DataType::Utf8)?;
            let s = s.as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::Internal("cast to Utf8".into()))?;
            let t: StringArray = s
                .iter()
                .map(|v| {
                    v.map(|v| {
                        if v.chars().count() > 20 {
                            format!("{}...", v.chars().take(17).collect::<String>())
                        } else {
                            v.to_string()
                        }
                    })
                })
                .collect();
            Ok(Arc::new(t))
        })
        .collect::<Result<Vec<_>>>()?;
    let fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    Ok(RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns)?)
}

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    fn description(&self) -> String {
        "ConsoleSink".into()
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        data: Vec<RecordBatch>,
        _: OutputMode,
    ) -> Result<()> {
        let text = render(batch_id, schema, &data, self.num_rows, self.truncate)?;
        print(&text)
    }

    fn streams_chunks(&self) -> bool {
        true
    }

    /// Continuous trigger: each chunk with rows is printed as it comes, under its epoch's
    /// `Batch: N` header (an epoch may print several tables; an empty epoch prints none).
    async fn write_chunk(&mut self, meta: &super::BatchMeta, data: crate::source::Partitioned) -> Result<bool> {
        let data: Vec<RecordBatch> = data.into_iter().map(|(_, b)| b).filter(|b| b.num_rows() > 0).collect();
        if !data.is_empty() {
            print(&render(meta.batch_id, &meta.schema, &data, self.num_rows, self.truncate)?)?;
        }
        Ok(true)
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::Sink { sink: "console".into(), message: e.to_string() })
}

//! `filter`: keeps the rows whose integer column `column` (default `value`) satisfies
//! `value % modulo == remainder` (defaults 2 and 0: the even rows). Vectorised over the column,
//! as a plugin should be.

use std::sync::Arc;

use sluice_sdk::arrow_array::{Array, BooleanArray, Int64Array, RecordBatch};
use sluice_sdk::arrow_schema::{DataType, Schema, SchemaRef};
use sluice_sdk::{BatchContext, Config, Error, Transform, util};

struct Filter {
    column: String,
    modulo: i64,
    remainder: i64,
}

impl Transform for Filter {
    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["column", "modulo", "remainder"])?;
        let modulo = config.int_or("modulo", 2)?;
        if modulo == 0 {
            return Err(Error::InvalidConfig("`modulo` must not be 0".into()));
        }
        Ok(Filter {
            column: config.str_or("column", "value")?.to_string(),
            modulo,
            remainder: config.int_or("remainder", 0)?,
        })
    }

    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error> {
        let i = util::column_index(input, &self.column)?;
        if input.field(i).data_type() != &DataType::Int64 {
            return Err(Error::InvalidInput(format!("column `{}` must be BIGINT", self.column)));
        }
        Ok(Arc::new(input.clone()))
    }

    fn process(&mut self, _ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        let i = util::column_index(&input.schema(), &self.column)?;
        let col = input
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::InvalidInput(format!("column `{}` must be BIGINT", self.column)))?;
        let (m, r) = (self.modulo, self.remainder);
        // One bit per row, computed straight into a bitmap (null slots too, whatever they hold:
        // `wrapping_rem` cannot overflow); a null row stays null, which the filter drops.
        let keep = BooleanArray::from_unary(col, |v| v.wrapping_rem(m) == r);
        // The SDK's filter: arrow's result, but short strings are copied without a call per row.
        Ok(sluice_sdk::filter::filter_record_batch(&input, &keep)?)
    }
}

sluice_sdk::export_transform!(Filter);

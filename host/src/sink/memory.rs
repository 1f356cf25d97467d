//! The `memory` sink: collects output into a named in-memory table that the Rust API and tests
//! can read (Spark's `format("memory").queryName("t")`). Append adds rows; complete replaces
//! them; update (a Sluice extension: Spark allows append and complete only) appends each batch's
//! changed rows, so the last row per key is its current value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::{OutputMode, Sink};
use crate::error::{Error, Result};
use crate::options::Options;

/// The in-memory tables written by `memory` sinks, by query name.
#[derive(Debug, Clone, Default)]
pub struct MemoryTables {
    inner: Arc<Mutex<HashMap<String, Table>>>,
}

/// One table: its schema and its rows.
type Table = (SchemaRef, Vec<RecordBatch>);

impl MemoryTables {
    /// The rows of table `name`, if a memory sink has created it.
    pub fn get(&self, name: &str) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SchemaRef, Vec<RecordBatch>)>> {
        // A poisoned lock only means a writer panicked mid-update of a Vec; the data is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct MemorySink {
    name: String,
    tables: MemoryTables,
}

impl MemorySink {
    pub(crate) fn try_new(options: &Options, query_name: Option<&str>, tables: MemoryTables) -> Result<Self> {
        options.check("memory sink", &[])?;
        let name = query_name.ok_or_else(|| Error::Config {
            location: options.location(),
            message: "the memory sink needs a query name (`name = \"...\"` in the file, `.query_name(..)` in the API): it names the table".into(),
        })?;
        Ok(MemorySink { name: name.to_string(), tables })
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    fn description(&self) -> String {
        format!("MemorySink[{}]", self.name)
    }

    async fn add_batch(&mut self, _: u64, schema: &SchemaRef, data: Vec<RecordBatch>, mode: OutputMode) -> Result<()> {
        let mut t = self.tables.lock();
        let entry = t.entry(self.name.clone()).or_insert_with(|| (schema.clone(), Vec::new()));
        if mode == OutputMode::Complete {
            entry.1.clear();
        }
        entry.0 = schema.clone();
        entry.1.extend(data.into_iter().filter(|b| b.num_rows() > 0));
        Ok(())
    }
}

//! `jsonl_dir`: a foreachBatch sink (the `batch-sink-plugin` world) writing each micro-batch to
//! `<dir>/batch-<id>.jsonl`, one JSON object per row.
//!
//! Config: `dir` (default `/out`), a path inside the sandbox: the plugin declares it needs it
//! read-write, so the pipeline must grant it, e.g.
//! `grants = { dirs = [{ host = "out", guest = "/out", read_only = false }] }`.
//!
//! A batch is written to a hidden temporary file and renamed into place on `commit_batch`; a
//! re-run of a batch (after a crash between the sink and the host's commit log) writes the same
//! name again, replacing it. So the files hold every row exactly once.

use std::fs::File;
use std::io::BufWriter;

use sluice_sdk::arrow_array::RecordBatch;
use sluice_sdk::arrow_schema::SchemaRef;
use sluice_sdk::{BatchContext, BatchSink, Config, Error, Requirement};

pub struct JsonlDir {
    dir: String,
    current: Option<(u64, BufWriter<File>)>,
}

fn dir(config: &Config) -> Result<String, Error> {
    let d = config.str_or("dir", "/out")?.trim_end_matches('/').to_string();
    if !d.starts_with('/') {
        return Err(Error::InvalidConfig(format!("`dir` must be an absolute path inside the sandbox, got `{d}`")));
    }
    Ok(d)
}

impl JsonlDir {
    fn paths(&self, batch: u64) -> (String, String) {
        (format!("{}/.batch-{batch}.jsonl.tmp", self.dir), format!("{}/batch-{batch}.jsonl", self.dir))
    }
}

impl BatchSink for JsonlDir {
    fn create(config: Config, _schema: SchemaRef) -> Result<Self, Error> {
        config.check_keys(&["dir"])?;
        Ok(JsonlDir { dir: dir(&config)?, current: None })
    }

    fn requirements(config: &Config) -> Result<Vec<Requirement>, Error> {
        Ok(vec![Requirement::Dir { guest: dir(config)?, writable: true }])
    }

    fn begin_batch(&mut self, ctx: &BatchContext, _rerun: bool) -> Result<(), Error> {
        // A re-run simply writes the batch again under the same name.
        let (tmp, _) = self.paths(ctx.batch_id);
        let file = File::create(&tmp).map_err(|e| Error::Failed(format!("cannot create {tmp}: {e}")))?;
        self.current = Some((ctx.batch_id, BufWriter::new(file)));
        Ok(())
    }

    fn write(&mut self, chunk: RecordBatch) -> Result<(), Error> {
        let (_, out) = self.current.as_mut().ok_or_else(|| Error::Failed("write before begin_batch".into()))?;
        let mut w = arrow_json::LineDelimitedWriter::new(out);
        w.write(&chunk)?;
        w.finish()?;
        Ok(())
    }

    fn commit_batch(&mut self) -> Result<(), Error> {
        let (batch, out) = self.current.take().ok_or_else(|| Error::Failed("commit before begin_batch".into()))?;
        let file = out.into_inner().map_err(|e| Error::Failed(format!("flushing batch {batch}: {e}")))?;
        file.sync_all()?;
        drop(file);
        let (tmp, done) = self.paths(batch);
        std::fs::rename(&tmp, &done).map_err(|e| Error::Failed(format!("cannot rename {tmp} to {done}: {e}")))?;
        Ok(())
    }
}

sluice_sdk::export_batch_sink!(JsonlDir);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use sluice_sdk::arrow_array::Int64Array;
    use sluice_sdk::arrow_schema::{DataType, Field};

    #[test]
    fn a_batch_is_one_file_and_a_rerun_replaces_it() {
        let dir = std::env::temp_dir().join(format!("jsonl_dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let schema = sluice_sdk::util::schema(vec![Field::new("id", DataType::Int64, false)]);
        let batch =
            |v: Vec<i64>| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).expect("batch");
        let d = dir.display().to_string();
        let mut s = JsonlDir::create(Config::new([("dir", d.as_str())]), schema.clone()).expect("create");
        for (rerun, rows) in [(false, vec![1, 2]), (true, vec![1, 2])] {
            s.begin_batch(&BatchContext::for_batch(4), rerun).expect("begin");
            s.write(batch(rows)).expect("write");
            s.commit_batch().expect("commit");
        }
        let text = std::fs::read_to_string(dir.join("batch-4.jsonl")).expect("file");
        assert_eq!(text, "{\"id\":1}\n{\"id\":2}\n");
        assert_eq!(
            JsonlDir::requirements(&Config::new([("dir", "/x")])).expect("req"),
            vec![Requirement::Dir { guest: "/x".into(), writable: true }]
        );
        assert!(JsonlDir::create(Config::new([("dir", "rel")]), schema).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The one integration-test binary: real Wasm components built from `plugins/`, real files
//! and real TCP sockets, through the engine, as a user would run them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};

mod checkpoints;
mod config_errors;
mod continuous;
mod devkit;
mod event_time;
mod hostile;
mod kafka;
mod properties;
mod recovery;
mod reload;
mod roles;
mod sandbox;
mod serve;
mod sources;
mod spark_functions;
mod wordcount;

/// A plugin built by `scripts/build-plugins.sh`; fails the test, saying how to build it, if
/// it is missing.
pub fn plugin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "plugin {} is missing: build the plugins first with scripts/build-plugins.sh (scripts/test.sh does it)",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A session sharing one compiled-plugin cache across tests.
pub fn session() -> sluice::Session {
    let dir = std::env::temp_dir().join("sluice-test-cache");
    sluice::Session::with_cache_dir(&dir).expect("session")
}

/// A fresh temporary directory.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-it-{tag}-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

pub fn uuid_like() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Writes `name` atomically into `dir` (write a hidden temp file, then rename), as a file
/// source expects.
pub fn put_file(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// Reads a (string, count) table into a map.
pub fn counts(batches: &[RecordBatch], key: &str, value: &str) -> HashMap<String, i64> {
    let mut m = HashMap::new();
    for b in batches {
        let k = b.column(b.schema().index_of(key).expect("key column"));
        let k = arrow_cast::cast(k, &arrow_schema::DataType::Utf8).expect("cast");
        let k = k.as_any().downcast_ref::<StringArray>().expect("strings");
        let v = b.column(b.schema().index_of(value).expect("value column"));
        let v = arrow_cast::cast(v, &arrow_schema::DataType::Int64).expect("cast");
        let v = v.as_any().downcast_ref::<Int64Array>().expect("ints");
        for i in 0..b.num_rows() {
            m.insert(k.value(i).to_string(), v.value(i));
        }
    }
    m
}

/// Word counts computed the obvious way, to compare the engine against.
pub fn expected_counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> HashMap<String, i64> {
    let mut m = HashMap::new();
    for l in lines {
        for w in l.split_whitespace() {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// Deterministic pseudo-random text.
pub fn gen_lines(n: usize, seed: u64) -> Vec<String> {
    const WORDS: [&str; 16] = [
        "spark",
        "stream",
        "wasm",
        "arrow",
        "batch",
        "offset",
        "state",
        "sink",
        "source",
        "plugin",
        "query",
        "window",
        "watermark",
        "kafka",
        "delta",
        "rust",
    ];
    let mut x = seed.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = 1 + (x % 9) as usize;
            (0..k).map(|j| WORDS[((x >> (j * 4)) % 16) as usize]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

pub fn total_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[allow(dead_code, reason = "used by some test modules only")]
pub fn column_strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = b.column(b.schema().index_of(name).expect("column"));
    let c = arrow_cast::cast(c, &arrow_schema::DataType::Utf8).expect("cast");
    let c = c.as_any().downcast_ref::<StringArray>().expect("strings");
    (0..c.len()).map(|i| (!c.is_null(i)).then(|| c.value(i).to_string())).collect()
}

//! Bad pipeline files: each error names the key, the line and the valid choices.

use sluice::PipelineSpec;

use crate::*;

async fn validate(toml: &str) -> String {
    let base = repo().join("examples");
    match PipelineSpec::from_toml(toml, "bad.toml", &base) {
        Err(e) => e.to_string(),
        Ok(spec) => match session().validate(&spec).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("pipeline was accepted:\n{toml}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_top_level_key() {
    let e =
        validate("name = \"q\"\nchekpoint = \"x\"\n[source]\nformat = \"rate\"\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("bad.toml:2:") && e.contains("chekpoint") && e.contains("checkpoint_location"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_a_table() {
    let e = validate("[source]\nformat = \"rate\"\nopts = {}\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("bad.toml:3:") && e.contains("opts") && e.contains("options"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_format() {
    let e = validate("[source]\nformat = \"kafak\"\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("bad.toml:2:") && e.contains("kafak") && e.contains("socket") && e.contains("parquet"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_option() {
    let e =
        validate("[source]\nformat = \"rate\"\noptions = { rowsPerSec = \"5\" }\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("bad.toml:3:") && e.contains("rowsPerSec") && e.contains("rowsPerSecond"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_option() {
    let e =
        validate("[source]\nformat = \"socket\"\noptions = { host = \"localhost\" }\n[sink]\nformat = \"console\"\n")
            .await;
    assert!(e.contains("bad.toml:1:") && e.contains("port"), "{e}");
    let e = validate("[source]\nformat = \"json\"\npath = \".\"\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("schema") && e.contains("DDL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_option_value() {
    let e =
        validate("[source]\nformat = \"rate\"\noptions = { rowsPerSecond = \"fast\" }\n[sink]\nformat = \"console\"\n")
            .await;
    assert!(e.contains("bad.toml:3:") && e.contains("rowsPerSecond") && e.contains("fast"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_output_modes() {
    // An aggregation in append mode (no watermark).
    let e = validate(
        "[source]\nformat = \"rate\"\n[[transform]]\nsql = \"SELECT value % 2 AS k, count(*) AS n FROM input GROUP BY 1\"\n[sink]\nformat = \"console\"\noutput_mode = \"append\"\n",
    )
    .await;
    assert!(e.contains("append") && e.contains("update, complete") && e.contains("aggregation"), "{e}");
    // Complete mode with no aggregation.
    let e = validate("[source]\nformat = \"rate\"\n[sink]\nformat = \"console\"\noutput_mode = \"complete\"\n").await;
    assert!(e.contains("complete") && e.contains("append, update"), "{e}");
    // A misspelt mode.
    let e = validate("[source]\nformat = \"rate\"\n[sink]\nformat = \"console\"\noutput_mode = \"upsert\"\n").await;
    assert!(e.contains("bad.toml:5:") && e.contains("upsert") && e.contains("append, update, complete"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_stream_queries() {
    let e = validate("[source]\nformat = \"rate\"\n[[transform]]\nsql = \"SELECT * FROM input ORDER BY value\"\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("ORDER BY") && e.contains("aggregation"), "{e}");
    let e = validate("[source]\nformat = \"rate\"\n[[transform]]\nsql = \"SELECT nosuch FROM input\"\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("SQL step 0") && e.contains("nosuch"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_needs_plugin_or_sql_and_a_real_plugin() {
    let e = validate("[source]\nformat = \"rate\"\n[[transform]]\nname = \"x\"\n[sink]\nformat = \"console\"\n").await;
    assert!(e.contains("bad.toml:3:") && e.contains("plugin") && e.contains("sql"), "{e}");
    let e =
        validate("[source]\nformat = \"rate\"\n[[transform]]\nplugin = \"nope.wasm\"\n[sink]\nformat = \"console\"\n")
            .await;
    assert!(e.contains("nope.wasm"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_pipeline_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            let spec = PipelineSpec::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if spec.source.format == "socket" {
                // Validation does not connect; the socket source is checked at start.
            }
            session().validate(&spec).await.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "expected example pipelines, found {n}");
}

use super::*;

fn parse(text: &str) -> Result<PipelineSpec> {
    PipelineSpec::from_toml(text, "p.toml", Path::new("/base"))
}

#[test]
fn a_full_pipeline_parses() {
    let spec = parse(
        r#"
name = "wc"
[source]
format = "Text"
path = "in"
options = { maxFilesPerTrigger = 2 }
[[transform]]
plugin = "plugins/split_words.wasm"
config = { column = "value" }
limits = { memory = "64MiB", timeout = "2s" }
[[transform]]
sql = "SELECT word, count(*) FROM input GROUP BY word"
[sink]
format = "console"
output_mode = "complete"
options = { numRows = 5 }
[trigger]
processing_time = "500ms"
"#,
    )
    .expect("parses");
    assert_eq!(spec.name.as_deref(), Some("wc"));
    assert_eq!(spec.source.format, "text");
    assert_eq!(spec.source.path, Some(PathBuf::from("/base/in")));
    assert_eq!(spec.source.options.get("maxfilespertrigger"), Some("2"));
    assert_eq!(spec.transforms.len(), 2);
    match &spec.transforms[0] {
        TransformSpec::Plugin { name, path, limits, .. } => {
            assert_eq!(name, "split_words");
            assert_eq!(path, &PathBuf::from("/base/plugins/split_words.wasm"));
            assert_eq!(limits.memory_bytes, 64 << 20);
            assert_eq!(limits.timeout, Duration::from_secs(2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(spec.sink.output_mode, OutputMode::Complete);
    assert_eq!(spec.trigger, Trigger::ProcessingTime(Duration::from_millis(500)));
}

#[test]
fn unknown_keys_name_the_line_and_the_choices() {
    let e = parse("[source]\nformat = \"rate\"\n[sink]\nformat = \"console\"\nmode = \"complete\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("p.toml:5:"), "{e}");
    assert!(e.contains("`mode`") && e.contains("output_mode"), "{e}");
}

#[test]
fn bad_durations_and_triggers_are_errors() {
    let e = parse("[source]\nformat = \"rate\"\n[sink]\nformat = \"console\"\n[trigger]\nprocessing_time = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.toml:6:") && e.contains("soon"), "{e}");
    let e = parse(
        "[source]\nformat = \"rate\"\n[sink]\nformat = \"console\"\n[trigger]\nonce = true\navailable_now = true\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("one of"), "{e}");
}

#[test]
fn a_transform_is_either_plugin_or_sql() {
    let e = parse("[source]\nformat = \"rate\"\n[[transform]]\nplugin = \"a.wasm\"\nsql = \"SELECT 1\"\n[sink]\nformat = \"console\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.toml:3:") && e.contains("exactly one"), "{e}");
}

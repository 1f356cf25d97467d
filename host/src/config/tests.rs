use std::time::Duration;

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
        TransformSpec::Plugin(p) => {
            assert_eq!(p.name, "split_words");
            assert_eq!(p.path, PathBuf::from("/base/plugins/split_words.wasm"));
            assert_eq!(p.limits.memory_bytes, 64 << 20);
            assert_eq!(p.limits.timeout, Duration::from_secs(2));
            assert_eq!(p.config, vec![("column".to_string(), ConfigValue::Str("value".into()))]);
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

#[test]
fn plugin_sources_and_sinks_take_typed_config_grants_limits_and_a_policy() {
    let spec = parse(
        r#"
[source]
format = "plugin"
plugin = "seq.wasm"
config = { rows_per_batch = 10, ratio = 0.5, on = true, tags = ["a", "b"], nested = { k = 1 } }
limits = { memory = "32MiB", instances = 2, fuel = 1000 }
[[transform]]
plugin = "t.wasm"
on_error = { retry = 3 }
[[transform]]
plugin = "u.wasm"
on_error = { dead_letter = { format = "json", path = "dlq" } }
[sink]
format = "foreach_batch"
plugin = "out.wasm"
grants = { dirs = [{ host = "out", guest = "/out", read_only = false }], env = ["TZ"], http = ["api.example.com:443"], sockets = ["127.0.0.1:5432"], clock = "real" }
"#,
    )
    .expect("parses");
    let src = spec.source.plugin.expect("source plugin");
    assert_eq!(src.path, PathBuf::from("/base/seq.wasm"));
    let get = |k: &str| src.config.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("rows_per_batch"), Some(ConfigValue::Int(10)));
    assert_eq!(get("ratio"), Some(ConfigValue::Float(0.5)));
    assert_eq!(get("on"), Some(ConfigValue::Bool(true)));
    assert_eq!(get("tags"), Some(ConfigValue::List(vec![ConfigValue::Str("a".into()), ConfigValue::Str("b".into())])));
    assert_eq!(get("nested"), Some(ConfigValue::Json("{\"k\":1}".into())));
    assert_eq!((src.limits.memory_bytes, src.limits.instances, src.limits.fuel), (32 << 20, Some(2), Some(1000)));
    assert!(
        matches!(&spec.transforms[0], TransformSpec::Plugin(p) if matches!(p.on_error, OnError::Retry { attempts: 3 }))
    );
    match &spec.transforms[1] {
        TransformSpec::Plugin(p) => match &p.on_error {
            OnError::DeadLetter(s) => {
                assert_eq!((s.format.as_str(), s.path.clone()), ("json", Some(PathBuf::from("/base/dlq"))))
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let g = spec.sink.plugin.expect("sink plugin").grants;
    assert_eq!(g.dirs, vec![DirGrant::new("/base/out", "/out", false)]);
    assert_eq!(
        (g.env, g.http, g.sockets, g.clock),
        (vec!["TZ".into()], vec!["api.example.com:443".into()], vec!["127.0.0.1:5432".into()], ClockGrant::Real)
    );
}

#[test]
fn bad_grants_and_plugin_keys_without_a_plugin_are_errors() {
    let e = parse("[source]\nformat = \"rate\"\n[sink]\nformat = \"foreach\"\nplugin = \"w.wasm\"\ngrants = { http = [\"no-port\"] }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.toml:6:") && e.contains("host:port"), "{e}");
    let e = parse("[source]\nformat = \"rate\"\n[sink]\nformat = \"foreach\"\nplugin = \"w.wasm\"\ngrants = { dirs = [{ host = \"x\", guest = \"rel\" }] }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("absolute"), "{e}");
    let e = parse("[source]\nformat = \"rate\"\nconfig = { a = 1 }\n[sink]\nformat = \"console\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("set `plugin` too"), "{e}");
    let e = parse("[source]\nformat = \"rate\"\n[sink]\nformat = \"foreach\"\nplugin = \"w.wasm\"\ngrants = { clock = \"atomic\" }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("atomic") && e.contains("real"), "{e}");
    let e = parse("[source]\nformat = \"rate\"\n[[transform]]\nplugin = \"t.wasm\"\non_error = \"ignore\"\n[sink]\nformat = \"console\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("on_error"), "{e}");
}

#[test]
fn config_arguments_are_read_as_toml() {
    assert_eq!(parse_config_arg("n=3").expect("arg"), ("n".to_string(), ConfigValue::Int(3)));
    assert_eq!(
        parse_config_arg("s=hello world").expect("arg"),
        ("s".to_string(), ConfigValue::Str("hello world".into()))
    );
    assert_eq!(parse_config_arg("b=true").expect("arg"), ("b".to_string(), ConfigValue::Bool(true)));
    assert!(parse_config_arg("novalue").is_err());
}

#[test]
fn event_time_steps_parse_and_a_bad_delay_names_its_line() {
    let spec = parse(
        r#"
[source]
format = "json"
path = "in"
schema = "ts TIMESTAMP, id STRING"
[[transform]]
watermark = { column = "ts", delay = "10 minutes" }
[[transform]]
drop_duplicates = { columns = ["id"], within_watermark = true }
[[transform]]
drop_duplicates = {}
[sink]
format = "console"
"#,
    )
    .expect("parses");
    assert!(
        matches!(&spec.transforms[0], TransformSpec::Watermark { column, delay } if column == "ts" && delay == "10 minutes")
    );
    assert!(
        matches!(&spec.transforms[1], TransformSpec::DropDuplicates { columns, within_watermark: true } if columns == &["id"])
    );
    assert!(
        matches!(&spec.transforms[2], TransformSpec::DropDuplicates { columns, within_watermark: false } if columns.is_empty())
    );
    let err = parse(
        "[source]\nformat = \"rate\"\n[[transform]]\nwatermark = { column = \"timestamp\", delay = \"1 month\" }\n[sink]\nformat = \"console\"\n",
    )
    .expect_err("months have no fixed length")
    .to_string();
    assert!(err.contains("p.toml:4:") && err.contains("no fixed length"), "{err}");
    let err = parse(
        "[source]\nformat = \"rate\"\n[[transform]]\nwatermark = { column = \"timestamp\", delay = \"1 minute\" }\nsql = \"SELECT 1\"\n[sink]\nformat = \"console\"\n",
    )
    .expect_err("two kinds in one step")
    .to_string();
    assert!(err.contains("exactly one of"), "{err}");
}

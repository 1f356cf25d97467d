//! Property tests over what a hostile party controls - the pipeline file, the bytes a plugin
//! returns, the checkpoint's files - with random and mutated inputs: never a panic, always a
//! typed error (or a correct result). Each test prints how many cases it ran.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::*;

/// A byte-level mutation: flip bits, cut, insert, or overwrite a span.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Overwrite(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
    ]
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % n] ^= b;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % n),
            Mutation::Insert(i, v) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Overwrite(i, v) => {
                for (k, b) in v.iter().enumerate() {
                    if let Some(x) = bytes.get_mut((i + k) % n) {
                        *x = *b;
                    }
                }
            }
        }
    }
    bytes
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[test]
fn pipeline_files_random_or_mutated_parse_or_fail_with_a_located_error() {
    let examples: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .expect("examples")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    let base = repo().join("examples");
    let cases = 2000;
    let strategy = (0..examples.len(), proptest::collection::vec(mutation(), 1..6));
    runner(cases)
        .run(&strategy, |(i, ms)| {
            let text = String::from_utf8_lossy(&mutate(examples[i].clone().into_bytes(), &ms)).into_owned();
            if let Err(e) = sluice::PipelineSpec::from_toml(&text, "fuzz.toml", &base) {
                let kind_ok = e.kind() == sluice::ErrorKind::User;
                prop_assert!(kind_ok, "a bad file is a user error: {e:?}");
            }
            Ok(())
        })
        .expect("property");
    runner(cases)
        .run(&".{0,400}", |text| {
            let _ = sluice::PipelineSpec::from_toml(&text, "fuzz.toml", &base);
            Ok(())
        })
        .expect("property");
    eprintln!("pipeline files: {} mutated + {} random cases", cases, cases);
}

fn sample() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("l", DataType::List(Arc::new(Field::new("item", DataType::Int64, true))), true),
    ]));
    let list = arrow_array::ListArray::from_iter_primitive::<arrow_array::types::Int64Type, _, _>(vec![
        Some(vec![Some(1), None]),
        None,
        Some(vec![]),
    ]);
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            Arc::new(StringArray::from(vec![Some("a"), Some("bb"), None])),
            Arc::new(list),
        ],
    )
    .expect("batch")
}

#[test]
fn bytes_a_plugin_returns_decode_or_fail_never_panic() {
    use sluice_sdk::wire;
    let b = sample();
    let schema = b.schema();
    let payload = wire::encode_batch(std::slice::from_ref(&b)).expect("encode");
    let schema_msg = wire::encode_schema(&schema);
    let stream = wire::encode_stream(&schema, std::slice::from_ref(&b)).expect("encode");
    assert_eq!(wire::decode_batch(&schema, payload.clone()).expect("round trip"), vec![b.clone()]);
    let cases = 3000;
    runner(cases)
        .run(&proptest::collection::vec(mutation(), 1..8), |ms| {
            // Whatever comes back is an error or valid batches of the schema: never a panic.
            if let Ok(batches) = wire::decode_batch(&schema, mutate(payload.clone(), &ms)) {
                for x in batches {
                    prop_assert_eq!(x.schema(), schema.clone());
                }
            }
            let _ = wire::decode_schema(mutate(schema_msg.clone(), &ms));
            let _ = wire::decode_stream(mutate(stream.clone(), &ms));
            Ok(())
        })
        .expect("property");
    runner(cases)
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            let _ = wire::decode_batch(&schema, bytes.clone());
            let _ = wire::decode_schema(bytes.clone());
            let _ = wire::decode_stream(bytes);
            Ok(())
        })
        .expect("property");
    eprintln!("plugin output bytes: {} mutated + {} random cases (x3 decoders)", cases, cases);
}

/// Files of a real checkpoint (offsets, commits, metadata, source log, state), relative paths.
fn checkpoint_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                out.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn damaged_checkpoint_files_give_typed_errors_never_panics() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempdir("prop-ckpt");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for f in 0..3 {
        put_file(&input, &format!("f{f}.txt"), &(gen_lines(50, f).join("\n") + "\n"));
    }
    let clean = dir.join("clean");
    let run = |ckpt: std::path::PathBuf| {
        let input = input.clone();
        async move {
            let q = session()
                .read_stream()
                .format("text")
                .option("maxFilesPerTrigger", 1)
                .load_path(&input)
                .sql("SELECT value AS word, count(*) AS n FROM input GROUP BY value")
                .write_stream()
                .format("noop")
                .output_mode(sluice::OutputMode::Update)
                .option("checkpointLocation", ckpt.display())
                .trigger(sluice::Trigger::AvailableNow)
                .start()
                .await?;
            q.await_termination().await
        }
    };
    rt.block_on(run(clean.clone())).expect("a clean run");
    let files = checkpoint_files(&clean);
    assert!(files.iter().any(|f| f.starts_with("state")), "{files:?}");
    let cases = 150;
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    runner(cases)
        .run(&(0..files.len(), proptest::collection::vec(mutation(), 1..4)), |(i, ms)| {
            let copy = dir.join(format!("case-{}", uuid_like()));
            for f in &files {
                let to = copy.join(f);
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(clean.join(f), &to).expect("copy");
            }
            let target = copy.join(&files[i]);
            let bytes = std::fs::read(&target).expect("read");
            std::fs::write(&target, mutate(bytes, &ms)).expect("write");
            let inspected = rt.block_on(sluice::inspect_checkpoint(&copy));
            let state = rt.block_on(sluice::read_state(&copy, None, None));
            let restarted = rt.block_on(run(copy.clone()));
            for r in [inspected.err(), state.err(), restarted.err()].into_iter().flatten() {
                let kind = r.kind();
                prop_assert!(kind != sluice::ErrorKind::Internal, "a damaged file must not look like a bug: {r}");
                *outcomes.borrow_mut().entry(format!("{kind:?}")).or_default() += 1;
            }
            let _ = std::fs::remove_dir_all(&copy);
            Ok(())
        })
        .expect("property");
    eprintln!("checkpoint files: {cases} cases over {} files; errors by kind: {:?}", files.len(), outcomes.borrow());

    // A case proptest once found (it aborted the process: arrow-ipc allocates a block's stated
    // size before reading it): a state file whose footer claims a block of petabytes.
    let state_files: Vec<_> = files.iter().filter(|f| f.starts_with("state") && f.extension().is_some()).collect();
    let mut patched = 0;
    for f in state_files {
        let copy = dir.join(format!("huge-{}", uuid_like()));
        for g in &files {
            let to = copy.join(g);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(clean.join(g), &to).expect("copy");
        }
        let mut bytes = std::fs::read(copy.join(f)).expect("read");
        if patch_block_lengths(&mut bytes) == 0 {
            continue;
        }
        patched += 1;
        std::fs::write(copy.join(f), bytes).expect("write");
        let e = rt.block_on(sluice::read_state(&copy, None, None)).expect_err("a huge block is refused");
        assert!(e.to_string().contains("lies outside the file"), "{e}");
        let _ = std::fs::remove_dir_all(&copy);
    }
    assert!(patched > 0, "no state file had a block to patch");
}

/// Sets the body length of every Arrow IPC file block (offset i64, metadata length i32 + pad,
/// body length i64, 8-aligned in the footer) to 2^53; returns how many it patched.
fn patch_block_lengths(bytes: &mut [u8]) -> usize {
    let n = bytes.len();
    let footer_len = i32::from_le_bytes(bytes[n - 10..n - 6].try_into().expect("4 bytes")) as usize;
    let footer_at = n - 10 - footer_len;
    let i64_at = |b: &[u8], p: usize| i64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"));
    let mut count = 0;
    let mut p = footer_at.div_ceil(8) * 8;
    while p + 24 <= n - 10 {
        let (offset, meta, body) = (i64_at(bytes, p), i64_at(bytes, p + 8) as i32 as i64, i64_at(bytes, p + 16));
        if offset >= 8
            && offset % 8 == 0
            && meta > 0
            && meta % 8 == 0
            && body >= 0
            && offset + meta + body <= footer_at as i64
        {
            bytes[p + 16..p + 24].copy_from_slice(&(1i64 << 53).to_le_bytes());
            count += 1;
            p += 24;
        } else {
            p += 8;
        }
    }
    count
}

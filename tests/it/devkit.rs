//! Plugin tooling as a user runs it: `sluice plugin new` → `build` → `test` of a fresh plugin,
//! outside this repository, timed.

use std::process::Command;
use std::time::Instant;

use crate::recovery::sluice_bin;
use crate::*;

fn sluice(args: &[&str], envs: &[(&str, &std::path::Path)]) -> String {
    let mut c = Command::new(sluice_bin());
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("run sluice");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sluice {args:?} failed:\n{text}");
    text
}

#[test]
fn a_new_plugin_is_created_built_and_tested_outside_the_repository() {
    let dir = tempdir("devkit");
    // A target directory of its own (the one `cargo test` uses is locked while it runs), kept
    // between runs so a second run is warm.
    let target = std::env::temp_dir().join("sluice-devkit-target");
    let env = [("CARGO_TARGET_DIR", target.as_path())];
    let started = Instant::now();
    sluice(&["plugin", "new", "shout", "--world", "transform", "--dir", &dir.display().to_string()], &env);
    let crate_dir = dir.join("shout");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("manifest");
    assert!(
        !manifest.contains("/work/") || !manifest.contains("sdk/rust"),
        "the SDK comes from the binary, not a checkout: {manifest}"
    );
    let built = sluice(&["plugin", "build", &crate_dir.display().to_string()], &env);
    let wasm = crate_dir.join("shout.wasm");
    assert!(wasm.exists(), "{built}");
    let rows = dir.join("rows.jsonl");
    std::fs::write(&rows, "{\"value\":\"hello\",\"n\":1}\n{\"value\":\"world\",\"n\":2}\n").expect("rows");
    let out = sluice(&["plugin", "test", &wasm.display().to_string(), "--input", &rows.display().to_string()], &env);
    assert!(out.contains("HELLO") && out.contains("WORLD") && out.contains("2 rows out"), "{out}");
    eprintln!("sluice plugin new -> build -> test: {:.1} s", started.elapsed().as_secs_f64());
    // The other worlds' templates build and pass their own tests too (natively, `cargo test`).
    for world in ["source", "batch-sink", "foreach-sink"] {
        let name = format!("t_{}", world.replace('-', "_"));
        sluice(&["plugin", "new", &name, "--world", world, "--dir", &dir.display().to_string()], &env);
        let test = Command::new("cargo")
            .args(["test", "--quiet", "--manifest-path"])
            .arg(dir.join(&name).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cargo test");
        assert!(test.status.success(), "{world}: {}", String::from_utf8_lossy(&test.stderr));
    }
    // A bad name and an unknown world are refused with a clear message.
    let bad = Command::new(sluice_bin()).args(["plugin", "new", "Bad Name"]).output().expect("run");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("lower-case"));
    let bad = Command::new(sluice_bin())
        .args(["plugin", "new", "x", "--world", "mapper", "--dir", &dir.display().to_string()])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("valid worlds"));
}

//! Hot reload under load: a checkpointed query (`sluice run --watch`) has its plugin file
//! replaced while it runs; every batch runs one version, logged in its offsets; a version whose
//! creation fails is rolled back; a SIGKILL right after a swap recovers with the version the
//! offset log names; the output stays exactly-once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::recovery::{committed_output, last_counts, sluice_bin};
use crate::*;

/// The version of `transform.0` in each `offsets/N` written so far.
fn versions(ckpt: &Path) -> Vec<(u64, String)> {
    let Ok(dir) = std::fs::read_dir(ckpt.join("offsets")) else { return Vec::new() };
    let mut out: Vec<(u64, String)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let entry: serde_json::Value = serde_json::from_str(text.lines().nth(1)?).ok()?;
            Some((n, entry["plugins"]["transform.0"].as_str()?.to_string()))
        })
        .collect();
    out.sort();
    out
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces `target` with `source` atomically (copy, then rename), as a deploy does.
fn replace(target: &Path, source: &Path) {
    let tmp = target.with_extension("tmp");
    std::fs::copy(source, &tmp).expect("copy");
    std::fs::rename(&tmp, target).expect("rename");
}

fn spawn(file: &Path, log: &Path, watch: bool) -> Child {
    let mut c = Command::new(sluice_bin());
    c.arg("run").arg(file);
    if watch {
        c.arg("--watch");
    }
    c.env("SLUICE_TEST_PAUSE_MS", "120")
        .env("SLUICE_LOG", "warn,sluice=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn sluice")
}

#[test]
fn a_plugin_swapped_live_and_a_sigkill_after_a_swap_stay_exactly_once() {
    let dir = tempdir("reload");
    let (input, out, ckpt) = (dir.join("in"), dir.join("out"), dir.join("ckpt"));
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut lines = Vec::new();
    // Enough batches for three reloads while the query runs: each compiles a component in the
    // background (~5 s on a slow 2-core VM, where a batch takes ~370 ms with the pauses).
    const FILES: usize = 80;
    for f in 0..FILES {
        let l = gen_lines(150, 500 + f as u64);
        put_file(&input, &format!("f{f:03}.txt"), &(l.join("\n") + "\n"));
        lines.extend(l);
    }
    let live = dir.join("p.wasm");
    let v010: PathBuf = repo().join("tests/fixtures/split_words-0.1.0.wasm");
    std::fs::copy(plugin("split_words"), &live).expect("copy");
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            r#"checkpoint_location = "{ckpt}"
[source]
format = "text"
path = "{input}"
options = {{ maxFilesPerTrigger = 1 }}
[[transform]]
plugin = "p.wasm"
config = {{ column = "value" }}
[[transform]]
sql = "SELECT word, count(*) AS count FROM input GROUP BY word"
[sink]
format = "json"
path = "{out}"
output_mode = "update"
[trigger]
available_now = true
"#,
            ckpt = ckpt.display(),
            input = input.display(),
            out = out.display()
        ),
    )
    .expect("pipeline");

    let log = dir.join("run1.log");
    let mut child = spawn(&file, &log, true);
    wait_for("batch 2", Duration::from_secs(60), || versions(&ckpt).len() >= 3);
    let first = versions(&ckpt)[0].1.clone();

    // 1. A good version: the 0.1.0 build of the same plugin.
    replace(&live, &v010);
    wait_for("the swap", Duration::from_secs(30), || versions(&ckpt).iter().any(|(_, v)| *v != first));
    let v = versions(&ckpt);
    let at = v.iter().position(|(_, x)| *x != first).expect("swapped");
    let second = v[at].1.clone();
    assert!(v[..at].iter().all(|(_, x)| *x == first) && v[at..].iter().all(|(_, x)| *x == second), "{v:?}");
    assert!(at >= 3, "the swap took effect at a later batch boundary: {v:?}");

    // 2. A version whose creation fails (evil needs `mode`): rolled back, the running one stays.
    replace(&live, &plugin("evil"));
    let before = versions(&ckpt).len();
    wait_for("two more batches", Duration::from_secs(30), || versions(&ckpt).len() >= before + 2);
    assert!(versions(&ckpt).iter().skip(at).all(|(_, x)| *x == second), "{:?}", versions(&ckpt));
    wait_for("the failure in the log", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("reload failed")
    });

    // 3. The first version again, and a SIGKILL right after the swap.
    replace(&live, &plugin("split_words"));
    wait_for("the swap back", Duration::from_secs(30), || versions(&ckpt).last().is_some_and(|(_, x)| *x == first));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let (last, logged) = versions(&ckpt).last().cloned().expect("a batch");
    assert_eq!(logged, first);
    // The crash lands between the offsets and the commit of that batch (as the pauses make
    // likely; forced if the commit made it).
    let _ = std::fs::remove_file(ckpt.join(format!("commits/{last}")));

    // Restart with the file at another version: the re-run batch uses the logged one.
    replace(&live, &v010);
    let log2 = dir.join("run2.log");
    let mut child = spawn(&file, &log2, false);
    let status = child.wait().expect("wait");
    let text = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(status.success(), "the restart failed: {text}");
    assert!(
        text.contains(&format!("batch {last} re-runs with transform.0 at the version its offsets name, {first}")),
        "{text}"
    );
    let v = versions(&ckpt);
    assert_eq!(v.len(), FILES, "one batch per file: {v:?}");
    assert!(
        v[last as usize + 1..].iter().all(|(_, x)| *x == second),
        "after the re-run the current version runs: {v:?}"
    );
    assert!(
        ckpt.join(format!("plugins/{first}.wasm")).exists() && ckpt.join(format!("plugins/{second}.wasm")).exists()
    );

    // Exactly once: the final counts are the counts of all the input.
    let got: HashMap<String, i64> = last_counts(&committed_output(&out));
    assert_eq!(got, expected_counts(lines.iter().map(String::as_str)));
}

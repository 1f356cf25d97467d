//! `sluice run --watch`: a running query follows its pipeline file and plugin files.
//!
//! A changed plugin file, or a changed plugin path, config, grants, limits or failure policy in
//! the pipeline file, is hot-reloaded at the next batch boundary
//! ([`StreamingQuery::replace_plugin`]); any other change to the file is reported as needing a
//! restart. Files are compared by content (blake3), polled twice a second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::StreamingQuery;
use crate::spec::{PipelineSpec, PluginSpec, SinkSpec, SourceSpec, StepRef, TransformSpec};

fn hash_file(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|b| blake3::hash(&b).to_hex().to_string())
}

/// The files a spec depends on: the pipeline file and every plugin's component.
fn files(file: &Path, spec: &PipelineSpec) -> BTreeMap<PathBuf, Option<String>> {
    let mut paths = vec![file.to_path_buf()];
    paths.extend(spec.source.plugin.iter().map(|p| p.path.clone()));
    for t in &spec.transforms {
        if let TransformSpec::Plugin(p) = t {
            paths.push(p.path.clone());
        }
    }
    paths.extend(spec.sink.plugin.iter().map(|p| p.path.clone()));
    paths.into_iter().map(|p| (p.clone(), hash_file(&p))).collect()
}

/// [`files`] on the blocking pool (hashing components reads megabytes); `None` if that task
/// panicked.
async fn files_off_loop(file: &Path, spec: &PipelineSpec) -> Option<BTreeMap<PathBuf, Option<String>>> {
    let (file, spec) = (file.to_path_buf(), spec.clone());
    tokio::task::spawn_blocking(move || files(&file, &spec)).await.ok()
}

fn source_shape(s: &SourceSpec) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?}",
        s.format,
        s.options.pairs(),
        s.path,
        s.schema,
        s.plugin.as_ref().map(|p| (&p.path, &p.config))
    )
}

fn sink_shape(s: &SinkSpec) -> String {
    format!("{} {} {:?} {:?}", s.format, s.output_mode, s.options.pairs(), s.path)
}

/// What a new version of the pipeline file asks for: plugins to reload in place, and the changes
/// that need a restart (in words). `changed` holds the component files whose content changed.
pub(crate) fn diff(
    old: &PipelineSpec,
    new: &PipelineSpec,
    changed: &BTreeSet<PathBuf>,
) -> (Vec<(StepRef, PluginSpec)>, Vec<String>) {
    let mut reloads = Vec::new();
    let mut restart = Vec::new();
    if old.name != new.name || old.checkpoint_location != new.checkpoint_location {
        restart.push("the query's name or checkpoint location changed".to_string());
    }
    if old.trigger != new.trigger {
        restart.push(format!("the trigger changed ({} to {})", old.trigger, new.trigger));
    }
    if source_shape(&old.source) != source_shape(&new.source)
        || new.source.plugin.as_ref().is_some_and(|p| changed.contains(&p.path))
    {
        restart.push("the source changed".to_string());
    }
    if old.transforms.len() != new.transforms.len() {
        restart.push(format!("the number of steps changed ({} to {})", old.transforms.len(), new.transforms.len()));
    } else {
        for (i, (a, b)) in old.transforms.iter().zip(&new.transforms).enumerate() {
            match (a, b) {
                (TransformSpec::Sql { query: x }, TransformSpec::Sql { query: y }) if x != y => {
                    restart.push(format!("the SQL of step {i} changed"));
                }
                (TransformSpec::Plugin(x), TransformSpec::Plugin(y)) => {
                    if !x.same_as(y) || changed.contains(&y.path) {
                        reloads.push((StepRef::Transform(i), y.clone()));
                    }
                }
                (TransformSpec::Sql { .. }, TransformSpec::Sql { .. }) => {}
                (
                    TransformSpec::Watermark { column: c1, delay: d1 },
                    TransformSpec::Watermark { column: c2, delay: d2 },
                ) => {
                    if c1 != c2 || d1 != d2 {
                        restart.push(format!("the watermark of step {i} changed"));
                    }
                }
                (
                    TransformSpec::DropDuplicates { columns: c1, within_watermark: w1 },
                    TransformSpec::DropDuplicates { columns: c2, within_watermark: w2 },
                ) => {
                    if c1 != c2 || w1 != w2 {
                        restart.push(format!("the deduplication of step {i} changed"));
                    }
                }
                _ => restart.push(format!("step {i} changed its kind (SQL, plugin, watermark or drop_duplicates)")),
            }
        }
    }
    if sink_shape(&old.sink) != sink_shape(&new.sink) {
        restart.push("the sink changed".to_string());
    } else if let (Some(x), Some(y)) = (&old.sink.plugin, &new.sink.plugin)
        && (!x.same_as(y) || changed.contains(&y.path))
    {
        reloads.push((StepRef::Sink, y.clone()));
    }
    (reloads, restart)
}

/// Follows `file` (the pipeline `applied` came from) until the query ends, reloading plugins as
/// their files or settings change.
pub async fn watch(query: StreamingQuery, file: PathBuf, mut applied: PipelineSpec) {
    let mut seen = files_off_loop(&file, &applied).await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = query.await_termination() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Some(now) = files_off_loop(&file, &applied).await else { continue };
        if now == seen {
            continue;
        }
        let path = file.clone();
        let spec = match tokio::task::spawn_blocking(move || PipelineSpec::from_file(&path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(file = %file.display(), "the pipeline file does not parse; nothing reloaded: {e}");
                seen = now;
                continue;
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), "reading the pipeline file failed: {e}");
                continue;
            }
        };
        let Some(fresh) = files_off_loop(&file, &spec).await else { continue };
        let changed: BTreeSet<PathBuf> =
            fresh.iter().filter(|(p, h)| seen.get(*p) != Some(*h)).map(|(p, _)| p.clone()).collect();
        let (reloads, restart) = diff(&applied, &spec, &changed);
        for reason in restart {
            query.note_event(format!("{reason}: restart the query to apply it (plugins are reloaded live)"));
        }
        for (at, plugin) in reloads {
            let name = plugin.name.clone();
            match query.replace_plugin(at, plugin).await {
                Ok(v) => tracing::info!(step = %at, plugin = %name, version = %v, "plugin reloaded"),
                Err(e) => tracing::error!(step = %at, plugin = %name, "reload failed; the running version stays: {e}"),
            }
        }
        applied = spec;
        seen = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> PipelineSpec {
        PipelineSpec::from_toml(text, "p.toml", Path::new("/b")).expect("parses")
    }

    const BASE: &str = "[source]\nformat = \"rate\"\n[[transform]]\nplugin = \"a.wasm\"\nconfig = { x = 1 }\n[[transform]]\nsql = \"SELECT * FROM input\"\n[sink]\nformat = \"foreach\"\nplugin = \"s.wasm\"\n";

    #[test]
    fn plugin_changes_reload_and_other_changes_need_a_restart() {
        let old = spec(BASE);
        let none = BTreeSet::new();
        let (r, x) = diff(&old, &old, &none);
        assert!(r.is_empty() && x.is_empty(), "no change, nothing to do: {x:?}");
        // A changed config, and a changed component file, reload in place.
        let (r, x) = diff(&old, &spec(&BASE.replace("x = 1", "x = 2")), &none);
        assert_eq!((r.len(), r[0].0, x.len()), (1, StepRef::Transform(0), 0));
        let (r, _) = diff(&old, &old, &BTreeSet::from([PathBuf::from("/b/s.wasm")]));
        assert_eq!(r.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![StepRef::Sink]);
        let (r, _) = diff(&old, &spec(&BASE.replace("a.wasm", "b.wasm")), &none);
        assert_eq!(r[0].1.path, PathBuf::from("/b/b.wasm"));
        // SQL, the source, the sink format: restart.
        let (r, x) = diff(&old, &spec(&BASE.replace("SELECT *", "SELECT value")), &none);
        assert!(r.is_empty() && x[0].contains("SQL of step 1"), "{x:?}");
        let (_, x) = diff(&old, &spec(&BASE.replace("\"rate\"", "\"socket\"")), &none);
        assert!(x[0].contains("source"), "{x:?}");
        let (_, x) = diff(&old, &spec(&BASE.replace("\"foreach\"", "\"foreach_batch\"")), &none);
        assert!(x[0].contains("sink"), "{x:?}");
    }
}

#!/usr/bin/env bash
# Runs every test: builds the plugins (installing the wasm32-wasip2 target if needed), then the
# unit and integration tests, then the example pipelines end to end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh

echo "==> starting a local S3-compatible server (moto) for the checkpoint tests"
eval "$(scripts/s3-server.sh start)"
trap 'scripts/s3-server.sh stop' EXIT

echo "==> unit and integration tests (the crash tests run the sluice binary)"
cargo build --release -p sluice
cargo test --release -p sluice -p sluice-sdk -p sluice-tests

echo "==> example pipelines"
bin="${CARGO_TARGET_DIR:-target}/release/sluice"
for f in examples/*.toml; do
  "$bin" validate "$f"
done
out="$("$bin" run examples/wordcount_files.toml)"
echo "$out" | tail -n 20
# The files example must count 'the' correctly: computed here independently.
expected=$(cat examples/data/words/*.txt | tr 'A-Z' 'a-z' | tr -s '[:space:]' '\n' | grep -cx 'the')
echo "$out" | grep -Eq "^\| the +\| $expected +\|$" || { echo "error: wordcount_files did not report the=$expected" >&2; exit 1; }
"$bin" run examples/wordcount_sql.toml > /dev/null
"$bin" run examples/events_json.toml > /dev/null
"$bin" run examples/json_plugin.toml > /dev/null
rm -rf examples/ckpt/wordcount examples/out/wordcount
"$bin" run examples/wordcount_checkpoint.toml
"$bin" checkpoint inspect examples/ckpt/wordcount
"$bin" checkpoint state examples/ckpt/wordcount --num-rows 5
echo "examples: OK"

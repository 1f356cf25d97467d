#!/usr/bin/env bash
# Builds every plugin in plugins/ for wasm32-wasip2 and copies the components to
# examples/plugins/<name>.wasm, where the example pipelines and the tests find them.
# Installs the wasm32-wasip2 target first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/wasm-target.sh

plugins=()
for dir in plugins/*/; do
  plugins+=("-p" "$(basename "$dir")")
done
echo "==> building plugins: ${plugins[*]}"
cargo build --profile plugin --target wasm32-wasip2 "${plugins[@]}"

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p examples/plugins
for dir in plugins/*/; do
  name="$(basename "$dir")"
  cp "$target_dir/wasm32-wasip2/plugin/$name.wasm" "examples/plugins/$name.wasm"
done
ls -l examples/plugins/*.wasm
